"""Training jobs for one step over several GPU nodes, built with the upstream API models.

:func:`render_job` builds a Kubeflow Trainer ``TrainJob`` or a Training Operator
``PyTorchJob`` through :data:`RENDERERS`, a ``(kind, release) -> renderer`` table:

- ``("trainjob", "2.1")``: the per-pod settings (the pods' labels, ServiceAccount, GPU node
  selector and toleration, memory-backed ``/dev/shm``) go in ``spec.podTemplateOverrides``;
- ``("trainjob", "2.2")`` and ``("trainjob", "2.3")``: they go in ``spec.runtimePatches``
  (one entry, manager ``fashion-attr.io/launcher``); v2.2 removed ``podTemplateOverrides``;
- ``("pytorchjob", None)``: Training Operator v1.7-v1.9 (``kubeflow.org/v1``, Master +
  ``nodes - 1`` Workers); the operator sets ``MASTER_ADDR``, ``MASTER_PORT``,
  ``WORLD_SIZE`` and ``RANK``, which Kubernetes expands in the args.

Trainer v2.0 is refused (its ``spec.podSpecOverrides`` has no pod metadata, so the pods
could not carry the labels the NetworkPolicies select). The Trainer's torch plugin sets
``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``, which ``torchrun`` reads
as defaults. Every job gets explicit ``--nnodes N --nproc_per_node G`` so the process
layout never depends on what a runtime infers from the resources.

The models are pinned in the ``pipeline`` extra (``kubeflow-trainer-api==2.3.0``,
``kubeflow-training==1.9.4``). The v2.2/v2.3 TrainJob is made of the pinned models only;
the v2.1 one takes its ``podTemplateOverrides`` entry from the same models' pod metadata
and ``PodSpecPatch`` (whose fields used here are those of v2.1's
``PodTemplateSpecOverride``); tests/test_training_job_models.py passes each rendered job
through the models of its own release and through the release CRDs' schemas.

The step configuration travels as the step's own CLI flags (``--config s3://...``,
``--preset``, ``--set``), never as a ConfigMap. ``k8s/training/*.yaml`` are examples
rendered by ``scripts/render_training_jobs.py``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any, Literal, cast

from fashion_attr.cluster.kube import APIS
from fashion_attr.cluster.release import TRAINER_POD_FIELD, TrainerRelease, check_release

__all__ = [
    "DEFAULT_NODE_SELECTOR",
    "KINDS",
    "MAX_NAME_LENGTH",
    "POD_LABELS",
    "POD_ONLY_LABELS",
    "RENDERERS",
    "STEPS",
    "TRAINING_SERVICE_ACCOUNT",
    "JobKind",
    "Step",
    "job_name_for",
    "render_job",
]

JobKind = Literal["trainjob", "pytorchjob"]


Step = Literal["train_gan", "train_classifier"]


STEPS: tuple[str, ...] = ("train_gan", "train_classifier")


KINDS: tuple[str, ...] = ("trainjob", "pytorchjob")


#: The GPU pool of k8s/README.md ("GPU node pool").
DEFAULT_NODE_SELECTOR: dict[str, str] = {"node-pool": "gpu"}


#: Training pods' ServiceAccount (k8s/base/serviceaccounts.yaml): no API token, no RBAC.
TRAINING_SERVICE_ACCOUNT = "fashion-attr-training"


PART_OF = {"app.kubernetes.io/part-of": "fashion-attr-pipeline"}


#: Labels of every training pod: the NetworkPolicies training-peers and pipeline-egress.
POD_LABELS = {**PART_OF, "app.kubernetes.io/component": "training"}
#: Only on the pods: no Istio sidecar. A sidecar keeps a finished pod running and sits in
#: the rendezvous' way (the Training Operator's docs ask for this label in a user
#: namespace); Istio's injector skips pods with the label (pkg/kube/inject/inject.go
#: injectRequired), and the label wins over the older annotation.
POD_ONLY_LABELS = {"sidecar.istio.io/inject": "false"}


#: Longest accepted job name. Pod and Service names append ``-node-0-<i>`` (TrainJob) or
#: ``-worker-<i>`` (PyTorchJob) and must stay DNS labels (<= 63 characters).
MAX_NAME_LENGTH = 45


#: ``trainer.args`` items a Trainer v2.2+ TrainJob may have (CRD ``maxItems``).
MAX_TRAINER_ARGS = 128


# RFC 1035 label: the TrainJob webhook requires it (stricter than a DNS-1123 label).
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


# What every training pod gets, whatever the API.
_GPU = "nvidia.com/gpu"


_CPU_MEMORY = {
    "requests": {"cpu": "8", "memory": "48Gi"},
    "limits": {"cpu": "16", "memory": "64Gi"},
}


# DataLoader workers share batches through /dev/shm; the container default is 64 MiB.
_SHM_VOLUME, _SHM_PATH, _SHM_SIZE = "dshm", "/dev/shm", "16Gi"


_UID = 10001  # the image's user (docker/Dockerfile)


# Trainer: runtime torch-distributed has one replicated job "node" whose container is "node".
_RUNTIME = "torch-distributed"


_RUNTIME_JOB = "node"


# Owner of the launcher's runtimePatches entry: a domain-prefixed path (Trainer webhook).
_PATCH_MANAGER = "fashion-attr.io/launcher"


# Fields of Trainer v2.1's PodTemplateSpecOverride and ContainerOverride (trainjob_types.go).
_V21_POD_FIELDS = frozenset(
    {
        "serviceAccountName",
        "nodeSelector",
        "affinity",
        "tolerations",
        "volumes",
        "initContainers",
        "containers",
        "schedulingGates",
        "imagePullSecrets",
    }
)


_V21_CONTAINER_FIELDS = frozenset({"name", "env", "volumeMounts"})


# Training Operator: the container it looks for, and its default rendezvous port.
_PYTORCH_CONTAINER = "pytorch"


_PYTORCH_PORT = 23456


# Credentials, from the Secrets of k8s/secrets/ (both kinds).
_SECRET_ENV: tuple[tuple[str, str], ...] = (
    ("AWS_ACCESS_KEY_ID", "object-store-credentials"),
    ("AWS_SECRET_ACCESS_KEY", "object-store-credentials"),
    ("MLFLOW_TRACKING_USERNAME", "mlflow-credentials"),
    ("MLFLOW_TRACKING_PASSWORD", "mlflow-credentials"),
)


# TrainJob: the Trainer API has no envFrom, so the ConfigMap keys are listed
# (name, ConfigMap, optional). AWS_ENDPOINT_URL is only set where the object store is not
# AWS S3 (the minio overlay).
_CONFIG_ENV: tuple[tuple[str, str, bool], ...] = (
    ("MLFLOW_TRACKING_URI", "pipeline-config", False),
    ("MLFLOW_EXPERIMENT_NAME", "pipeline-config", False),
    ("AWS_DEFAULT_REGION", "object-store-config", False),
    ("AWS_ENDPOINT_URL", "object-store-config", True),
)


# PyTorchJob: every key of these ConfigMaps (envFrom).
_CONFIG_MAPS = ("pipeline-config", "object-store-config")


# PyTorchJob: keep finished pods' logs for the launcher to read; delete the job a day later.
_PYTORCH_RENDEZVOUS = (
    "--node_rank",
    "$(RANK)",
    "--master_addr",
    "$(MASTER_ADDR)",
    "--master_port",
    "$(MASTER_PORT)",
)
_RUN_POLICY = {"cleanPodPolicy": "None", "backoffLimit": 3, "ttlSecondsAfterFinished": 86400}


def job_name_for(step: str, key: str) -> str:
    """A deterministic job name for one step output, so a retried launcher re-finds its job.

    Args:
        step: ``train_gan`` or ``train_classifier``.
        key: The step's output key: the last path part of its output URI (16 hex digits in
            the KFP adapter); any other string is hashed.

    Returns:
        ``fa-<step>-<key>``, e.g. ``fa-train-classifier-0123456789abcdef``: an RFC 1035 label
        of at most 36 characters.

    Raises:
        ValueError: If ``step`` is not a training step or ``key`` is empty.
    """
    _check_step(step)
    if not key:
        raise ValueError("job_name_for: key is empty. Fix: pass the step's output key")
    suffix = key if re.fullmatch(r"[a-z0-9]{1,16}", key) else _digest(key)
    return f"fa-{step.replace('_', '-')}-{suffix}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_step(step: str) -> None:
    if step not in STEPS:
        raise ValueError(f"step {step!r} is not a training step. Fix: use one of {list(STEPS)}")


def _check_inputs(
    kind: str,
    step: str,
    args: Sequence[str],
    nodes: int,
    gpus_per_node: int,
    image: str,
    namespace: str,
    name: str,
    node_selector: Mapping[str, str],
    service_account: str,
    trainer_release: str,
) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is unknown. Fix: use one of {list(KINDS)}")
    _check_step(step)
    if kind == "trainjob":
        check_release(trainer_release)
    for field, count in (("nodes", nodes), ("gpus_per_node", gpus_per_node)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{field}={count!r} must be an integer >= 1")
    if not (len(name) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(name)):
        raise ValueError(
            f"name {name!r} is not a valid job name: lower-case letters, digits and '-', "
            f"starting with a letter, ending with a letter or digit, at most {MAX_NAME_LENGTH} "
            "characters (pod and service names derive from it). Fix: use job_name_for()"
        )
    if not (len(namespace) <= 63 and _NAMESPACE_RE.fullmatch(namespace)):
        raise ValueError(f"namespace {namespace!r} is not a DNS-1123 label")
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} must be a non-empty image reference without spaces")
    if not service_account or not _NAMESPACE_RE.fullmatch(service_account):
        raise ValueError(f"service_account {service_account!r} is not a valid ServiceAccount name")
    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"args must be a list of strings (the step's CLI flags), got {args!r}")
    for flag, value in zip(args, [*args[1:], ""], strict=True):
        if flag == "--config" and not value.startswith("s3://"):
            raise ValueError(
                f"args pass --config {value!r}: a local file does not exist in the training "
                "pods. Fix: write the config to object storage (s3://...) or pass --preset "
                "and --set key=value"
            )
    for key, value in node_selector.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise ValueError(f"node_selector entry {key!r}: {value!r} must map strings to strings")
    # torchrun's own flags: --nnodes N --nproc_per_node G -m MODULE
    if kind == "trainjob" and trainer_release != "2.1" and len(args) + 6 > MAX_TRAINER_ARGS:
        raise ValueError(
            f"{len(args)} step args: a Trainer v{trainer_release} TrainJob takes at most "
            f"{MAX_TRAINER_ARGS} args, torchrun's 6 included. Fix: move settings into the "
            "config file (--config s3://...)"
        )


def _escape(arg: str) -> str:
    """Kubernetes expands ``$(VAR)`` in args and reduces ``$$`` to ``$``: keep user text literal."""
    return arg.replace("$", "$$")


def _torchrun_args(
    step: str, args: Sequence[str], nodes: int, gpus: int, rendezvous: Sequence[str]
) -> list[str]:
    return [
        "--nnodes",
        str(nodes),
        "--nproc_per_node",
        str(gpus),
        *rendezvous,
        "-m",
        f"fashion_attr.steps.{step}",
        *(_escape(a) for a in args),
    ]


def _resources(gpus: int) -> dict[str, dict[str, str]]:
    """CPU, memory and GPUs of one training pod; GPU requests equal limits (extended resource)."""
    return {part: {**amounts, _GPU: str(gpus)} for part, amounts in _CPU_MEMORY.items()}


def _trainjob(
    pod_field: str,
    *,
    metadata: Mapping[str, Any],
    trainer_args: list[str],
    nodes: int,
    gpus: int,
    image: str,
    node_selector: Mapping[str, str],
    service_account: str,
    deadline_s: int | None = None,
    env: Mapping[str, str] = MappingProxyType({}),
) -> dict[str, Any]:
    """A TrainJob made of ``kubeflow_trainer_api`` models, its pod settings in ``pod_field``.

    ``pod_field`` is ``runtimePatches`` (Trainer v2.2, v2.3) or ``podTemplateOverrides``
    (Trainer v2.1), see :data:`RENDERERS`. ``deadline_s`` becomes ``spec.activeDeadlineSeconds``
    where the release has it (v2.2 and later: pkg/apis/trainer/v1alpha1/trainjob_types.go;
    the controller fails the TrainJob and deletes its JobSet when it passes); v2.1 has no
    deadline field, and its jobs rely on the launcher and their ownerReference.
    """
    from kubeflow_trainer_api import models as m

    def quantities(amounts: Mapping[str, str]) -> dict[str, Any]:
        return {k: m.IoK8sApimachineryPkgApiResourceQuantity(v) for k, v in amounts.items()}

    env_vars = (
        [
            m.IoK8sApiCoreV1EnvVar(
                name=var,
                value_from=m.IoK8sApiCoreV1EnvVarSource(
                    config_map_key_ref=m.IoK8sApiCoreV1ConfigMapKeySelector(
                        name=config_map, key=var, optional=True if optional else None
                    )
                ),
            )
            for var, config_map, optional in _CONFIG_ENV
        ]
        + [
            m.IoK8sApiCoreV1EnvVar(
                name=var,
                value_from=m.IoK8sApiCoreV1EnvVarSource(
                    secret_key_ref=m.IoK8sApiCoreV1SecretKeySelector(name=secret, key=var)
                ),
            )
            for var, secret in _SECRET_ENV
        ]
        + [m.IoK8sApiCoreV1EnvVar(name=var, value=value) for var, value in sorted(env.items())]
    )
    resources = {part: quantities(amounts) for part, amounts in _resources(gpus).items()}
    trainer = m.TrainerV1alpha1Trainer(
        image=image,
        command=["torchrun"],
        # Node rank, master address and port: PET_* from the torch-distributed runtime.
        args=trainer_args,
        num_nodes=nodes,
        resources_per_node=m.IoK8sApiCoreV1ResourceRequirements(**resources),
        env=env_vars,
    )
    # The per-pod settings. Trainer v2.2+ merges them (strategic merge) into the runtime's
    # pod template; v2.1 takes the same fields in its PodTemplateSpecOverride.
    pod_metadata = m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
        labels={**POD_LABELS, **POD_ONLY_LABELS}
    )
    pod_spec = m.TrainerV1alpha1PodSpecPatch(
        service_account_name=service_account,
        node_selector=dict(node_selector) or None,
        tolerations=[m.IoK8sApiCoreV1Toleration(key=_GPU, operator="Exists", effect="NoSchedule")],
        volumes=[
            m.IoK8sApiCoreV1Volume(
                name=_SHM_VOLUME,
                empty_dir=m.IoK8sApiCoreV1EmptyDirVolumeSource(
                    medium="Memory", size_limit=m.IoK8sApimachineryPkgApiResourceQuantity(_SHM_SIZE)
                ),
            )
        ],
        containers=[
            m.TrainerV1alpha1ContainerPatch(
                name=_RUNTIME_JOB,
                volume_mounts=[m.IoK8sApiCoreV1VolumeMount(name=_SHM_VOLUME, mount_path=_SHM_PATH)],
            )
        ],
    )
    runtime_patches = None
    if pod_field == "runtimePatches":
        pod_patch = m.TrainerV1alpha1PodTemplatePatch(metadata=pod_metadata, spec=pod_spec)
        job_patch = m.TrainerV1alpha1ReplicatedJobPatch(
            name=_RUNTIME_JOB,
            template=m.TrainerV1alpha1JobTemplatePatch(
                spec=m.TrainerV1alpha1JobSpecPatch(template=pod_patch)
            ),
        )
        runtime_patches = [
            m.TrainerV1alpha1RuntimePatch(
                manager=_PATCH_MANAGER,
                training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
                    template=m.TrainerV1alpha1JobSetTemplatePatch(
                        spec=m.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[job_patch])
                    )
                ),
            )
        ]
    api = APIS["trainjob"]
    job: dict[str, Any] = m.TrainerV1alpha1TrainJob(
        api_version=f"{api.group}/{api.version}",
        kind=api.kind,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            **{k: v for k, v in metadata.items() if k != "owner_references"},
            owner_references=[
                m.IoK8sApimachineryPkgApisMetaV1OwnerReference(**ref)
                for ref in metadata.get("owner_references", [])
            ]
            or None,
        ),
        spec=m.TrainerV1alpha1TrainJobSpec(
            active_deadline_seconds=deadline_s if pod_field == "runtimePatches" else None,
            runtime_ref=m.TrainerV1alpha1RuntimeRef(
                api_group=api.group, kind="ClusterTrainingRuntime", name=_RUNTIME
            ),
            trainer=trainer,
            runtime_patches=runtime_patches,
        ),
    ).to_dict()
    if pod_field == "podTemplateOverrides":
        # The pinned models have no PodTemplateOverride (v2.1 only): its envelope is the one
        # piece written here, around model output restricted to fields v2.1 also has.
        spec = pod_spec.to_dict()
        extra = sorted(set(spec) - _V21_POD_FIELDS) + sorted(
            f"containers[].{key}"
            for container in spec.get("containers", [])
            for key in set(container) - _V21_CONTAINER_FIELDS
        )
        if extra:
            raise ValueError(f"Trainer v2.1 pod overrides have no field(s) {extra}")
        job["spec"]["podTemplateOverrides"] = [
            {
                "targetJobs": [{"name": _RUNTIME_JOB}],
                "metadata": pod_metadata.to_dict(),
                "spec": spec,
            }
        ]
    return job


def _pytorchjob(
    *,
    metadata: Mapping[str, Any],
    trainer_args: list[str],
    nodes: int,
    gpus: int,
    image: str,
    node_selector: Mapping[str, str],
    service_account: str,
    deadline_s: int | None = None,
    env: Mapping[str, str] = MappingProxyType({}),
) -> dict[str, Any]:
    """A PyTorchJob made of ``kubeflow-training`` models (pods: ``kubernetes`` client models).

    ``deadline_s`` becomes ``runPolicy.activeDeadlineSeconds`` (the operator deletes the
    pods and fails the job when it passes: pkg/controller.v1/common/job.go @v1.9.0).
    """
    from kubeflow.training import models as kt
    from kubernetes import client as k

    def pod_template() -> Any:
        # Master and Worker pods are identical on purpose: torchrun's rendezvous makes them peers.
        container = k.V1Container(
            name=_PYTORCH_CONTAINER,
            image=image,
            # A digest names one image for good; a tag may move, so every pod pulls it again.
            image_pull_policy="IfNotPresent" if _DIGEST.search(image) else "Always",
            command=["torchrun"],
            args=list(trainer_args),
            ports=[
                k.V1ContainerPort(
                    name="pytorchjob-port", container_port=_PYTORCH_PORT, protocol="TCP"
                )
            ],
            env_from=[
                k.V1EnvFromSource(config_map_ref=k.V1ConfigMapEnvSource(name=name))
                for name in _CONFIG_MAPS
            ],
            env=[
                k.V1EnvVar(
                    name=var,
                    value_from=k.V1EnvVarSource(
                        secret_key_ref=k.V1SecretKeySelector(name=secret, key=var)
                    ),
                )
                for var, secret in _SECRET_ENV
            ]
            + [k.V1EnvVar(name=var, value=value) for var, value in sorted(env.items())],
            resources=k.V1ResourceRequirements(**_resources(gpus)),
            volume_mounts=[
                k.V1VolumeMount(name=_SHM_VOLUME, mount_path=_SHM_PATH),
                k.V1VolumeMount(name="tmp", mount_path="/tmp"),
                k.V1VolumeMount(name="home", mount_path="/home/app"),
            ],
            security_context=k.V1SecurityContext(
                run_as_non_root=True,
                run_as_user=_UID,
                run_as_group=_UID,
                allow_privilege_escalation=False,
                read_only_root_filesystem=True,
                privileged=False,
                capabilities=k.V1Capabilities(drop=["ALL"]),
                seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"),
            ),
        )
        spec = k.V1PodSpec(
            service_account_name=service_account,
            automount_service_account_token=False,
            node_selector=dict(node_selector) or None,
            tolerations=[k.V1Toleration(key=_GPU, operator="Exists", effect="NoSchedule")],
            security_context=k.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=_UID,
                run_as_group=_UID,
                fs_group=_UID,
                seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"),
            ),
            containers=[container],
            volumes=[
                k.V1Volume(
                    name=_SHM_VOLUME,
                    empty_dir=k.V1EmptyDirVolumeSource(medium="Memory", size_limit=_SHM_SIZE),
                ),
                # The root filesystem is read-only: scratch space and a writable home.
                k.V1Volume(name="tmp", empty_dir=k.V1EmptyDirVolumeSource(size_limit="50Gi")),
                k.V1Volume(name="home", empty_dir=k.V1EmptyDirVolumeSource(size_limit="1Gi")),
            ],
        )
        labels = {**POD_LABELS, **POD_ONLY_LABELS}
        return k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(labels=labels), spec=spec)

    def replica(count: int) -> Any:
        return kt.KubeflowOrgV1ReplicaSpec(
            replicas=count, restart_policy="OnFailure", template=pod_template()
        )

    replicas = {"Master": replica(1)}
    if nodes > 1:
        replicas["Worker"] = replica(nodes - 1)
    api = APIS["pytorchjob"]
    job = kt.KubeflowOrgV1PyTorchJob(
        api_version=f"{api.group}/{api.version}",
        kind=api.kind,
        metadata=k.V1ObjectMeta(
            **{key: v for key, v in metadata.items() if key != "owner_references"},
            owner_references=[
                k.V1OwnerReference(**ref) for ref in metadata.get("owner_references", [])
            ]
            or None,
        ),
        spec=kt.KubeflowOrgV1PyTorchJobSpec(
            run_policy=kt.KubeflowOrgV1RunPolicy(
                active_deadline_seconds=deadline_s,
                clean_pod_policy=_RUN_POLICY["cleanPodPolicy"],
                backoff_limit=_RUN_POLICY["backoffLimit"],
                ttl_seconds_after_finished=_RUN_POLICY["ttlSecondsAfterFinished"],
            ),
            pytorch_replica_specs=replicas,
        ),
    )
    return cast(dict[str, Any], k.ApiClient().sanitize_for_serialization(job))


#: How each supported (job kind, Trainer release) is rendered; a PyTorchJob has no release.
RENDERERS: dict[tuple[str, str | None], Callable[..., dict[str, Any]]] = {
    ("trainjob", "2.1"): partial(_trainjob, TRAINER_POD_FIELD["2.1"]),
    ("trainjob", "2.2"): partial(_trainjob, TRAINER_POD_FIELD["2.2"]),
    ("trainjob", "2.3"): partial(_trainjob, TRAINER_POD_FIELD["2.3"]),
    ("pytorchjob", None): _pytorchjob,
}


def render_job(
    kind: JobKind,
    *,
    step: Step,
    args: Sequence[str],
    nodes: int,
    gpus_per_node: int,
    image: str,
    namespace: str,
    name: str,
    node_selector: Mapping[str, str] | None = None,
    service_account: str = TRAINING_SERVICE_ACCOUNT,
    trainer_release: TrainerRelease = "2.3",
    owner: Mapping[str, str] | None = None,
    deadline_s: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Build the TrainJob or PyTorchJob for one training step with the upstream API models.

    Every training pod gets: the image, ``torchrun`` with ``--nnodes``/``--nproc_per_node``
    (and, for a PyTorchJob, the operator's rendezvous variables), the GPUs (requests equal
    limits) with CPU and memory, the GPU node selector and toleration, a memory-backed
    ``/dev/shm``, the ServiceAccount, the NetworkPolicy labels, and the object store and
    MLflow settings from the ConfigMaps and Secrets of ``k8s/``. PyTorchJob pods are also
    locked down (non-root, read-only root filesystem, no capabilities, no API token); a
    TrainJob's pod security settings come from its ClusterTrainingRuntime.

    Args:
        kind: ``"trainjob"`` (Kubeflow Trainer v2) or ``"pytorchjob"`` (Training Operator v1).
        step: ``"train_gan"`` or ``"train_classifier"``.
        args: The step's CLI flags, e.g. ``["--data", uri, "--out", uri, "--config",
            "s3://.../step_config.yaml"]``. Passed literally (``$`` is escaped from
            Kubernetes expansion). A ``--config`` must be an ``s3://`` URI.
        nodes: Pods, one per GPU node (>= 1).
        gpus_per_node: GPUs per pod and ``torchrun`` processes per pod (>= 1).
        image: The project image (the same one the pipeline runs).
        namespace: Namespace of the job.
        name: Job name, an RFC 1035 label of at most 45 characters (see ``job_name_for``).
        node_selector: Labels of the GPU nodes; default ``{"node-pool": "gpu"}``; ``{}`` for
            none.
        service_account: ServiceAccount of the training pods. Default
            ``fashion-attr-training`` (no API token, no RBAC). The launcher's
            ``pipeline-runner`` (which may create jobs and read Secrets) is deliberately not
            the default: training code needs neither.
        trainer_release: The cluster's Kubeflow Trainer release (major.minor) for a
            TrainJob: ``"2.1"`` (``spec.podTemplateOverrides``), ``"2.2"`` or ``"2.3"``
            (``spec.runtimePatches``, the default: the pinned models' API). Ignored for a
            PyTorchJob. :func:`run_step_on_cluster` finds it out.
        owner: the launcher pod (``name``, ``uid``, in ``namespace``): the job gets an
            ownerReference to it, so Kubernetes' garbage collector deletes the job (and its
            pods) when the pod is deleted, e.g. with a cancelled run's workflow.
        deadline_s: the longest the job may run (where the API has a deadline field).
        env: more environment variables of the training pods (e.g. ``FA_PIPELINE_RUN``, so
            the step's MLflow run nests under the pipeline's).

    Returns:
        The job as a JSON-ready dict (camelCase keys), ready for ``launch_and_wait``.

    Raises:
        ValueError: For a bad input (Trainer v2.0 included), naming it and the fix.
    """
    selector = DEFAULT_NODE_SELECTOR if node_selector is None else node_selector
    _check_inputs(
        kind,
        step,
        args,
        nodes,
        gpus_per_node,
        image,
        namespace,
        name,
        selector,
        service_account,
        trainer_release,
    )
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {
            **POD_LABELS,
            "app.kubernetes.io/name": f"fashion-attr-{step.replace('_', '-')}",
            "app.kubernetes.io/instance": name,
        },
    }
    if owner is not None:
        # Not blockOwnerDeletion: that would need "delete" on the owner (API docs); the
        # garbage collector deletes dependents without it.
        metadata["owner_references"] = [
            {"api_version": "v1", "kind": "Pod", "name": owner["name"], "uid": owner["uid"]}
        ]
    placement: dict[str, Any] = {
        "metadata": metadata,
        "deadline_s": deadline_s,
        "env": dict(env or {}),
        "nodes": nodes,
        "gpus": gpus_per_node,
        "image": image,
        "node_selector": selector,
        "service_account": service_account,
    }
    render = RENDERERS[(kind, trainer_release if kind == "trainjob" else None)]
    # Trainer's torch plugin sets PET_* (torchrun's defaults); the Training Operator sets
    # RANK, MASTER_ADDR and MASTER_PORT, which Kubernetes expands in the args.
    rendezvous = _PYTORCH_RENDEZVOUS if kind == "pytorchjob" else ()
    trainer_args = _torchrun_args(step, args, nodes, gpus_per_node, rendezvous)
    return render(trainer_args=trainer_args, **placement)
