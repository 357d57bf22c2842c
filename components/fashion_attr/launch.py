"""Run a training step over several GPU nodes as a Kubeflow TrainJob or PyTorchJob.

The single-node path (:func:`fashion_attr.steps.executor.execute`) runs a step in the
KFP pod itself, under ``torchrun`` over the node's GPUs. For more nodes, the
KFP pod becomes a launcher: it builds the job with the upstream API models, submits it
with the Kubernetes API, waits until it is terminal and reports the outcome. Two APIs
are supported:

- ``trainjob``: Kubeflow Trainer v2 (``trainer.kubeflow.org/v1alpha1`` TrainJob,
  runtime ``torch-distributed``), built with the ``kubeflow-trainer-api`` models. The
  runtime's torch plugin sets ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
  ``PET_MASTER_PORT`` on every node, which ``torchrun`` reads as defaults for its flags.
- ``pytorchjob``: Kubeflow Training Operator v1 (``kubeflow.org/v1`` PyTorchJob, Master +
  ``nodes - 1`` Workers), built with the ``kubeflow-training`` models (their pod template
  is the ``kubernetes`` client's ``V1PodTemplateSpec``). The operator sets
  ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` (pods) and ``RANK`` (the pod's index,
  Master 0); Kubernetes expands ``$(RANK)`` etc. in the args.

Both get explicit ``--nnodes N --nproc_per_node G`` so the process layout never
depends on what a runtime infers from the resources.

Supported releases:

- Kubeflow Trainer v2.1.x: the per-pod settings (the pods' labels, ServiceAccount, GPU
  node selector and toleration, memory-backed ``/dev/shm``) go in
  ``spec.podTemplateOverrides``.
- Kubeflow Trainer v2.2.x and v2.3.x: they go in ``spec.runtimePatches`` (one entry,
  manager ``fashion-attr.io/launcher``); v2.2 removed ``podTemplateOverrides``.
- Kubeflow Trainer v2.0.x is refused: its ``spec.podSpecOverrides`` has no pod metadata,
  so the pods could not carry the labels the NetworkPolicies (``training-peers``,
  ``pipeline-egress``) select.
- Kubeflow Training Operator v1.7.x to v1.9.x: PyTorchJob (the same API in the three).

The models are pinned in the ``pipeline`` extra (``kubeflow-trainer-api==2.3.0``,
``kubeflow-training==1.9.4``). The v2.2/v2.3 TrainJob is made of the pinned models only;
the v2.1 one takes its ``podTemplateOverrides`` entry from the same models' pod metadata
and ``PodSpecPatch`` (whose fields used here are those of v2.1's
``PodTemplateSpecOverride``); tests/test_training_job_models.py passes each rendered job
through the models of its own release and through the release CRDs' schemas.

:func:`run_step_on_cluster` picks the Trainer release: ``FA_TRAINER_RELEASE`` (``2.1``,
``2.2`` or ``2.3``) if set, else the schema of the CRD ``trainjobs.trainer.kubeflow.org``
(which needs ``get`` on that ``customresourcedefinitions`` object, a cluster-scoped
permission). Jobs are created with ``fieldValidation=Strict``: the API server rejects a
job with a field its CRD does not declare instead of silently dropping it.

Job names are derived from the step and its output key (``job_name_for``), so
a KFP pod retried after preemption finds the job its predecessor submitted and
attaches to it instead of starting a second copy. The step writes checkpoints
under its output URI, so a job that is re-created (after a failure) resumes.

The step configuration travels as the step's own CLI flags (``--config s3://...``,
``--preset``, ``--set``), never as a ConfigMap: no shared ConfigMap can be overwritten by
a concurrent run and nothing is left to clean up. ``k8s/training/*.yaml`` are examples
rendered by ``scripts/render_training_jobs.py``; the launcher does not read them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

__all__ = [
    "DEFAULT_NODE_SELECTOR",
    "TRAINER_RELEASES",
    "TRAINING_SERVICE_ACCOUNT",
    "JobResult",
    "detect_trainer_release",
    "in_cluster_namespace",
    "job_name_for",
    "launch_and_wait",
    "render_job",
    "run_step_on_cluster",
    "trainer_release_from_crd",
]

logger = logging.getLogger(__name__)

JobKind = Literal["trainjob", "pytorchjob"]
Step = Literal["train_gan", "train_classifier"]
TrainerRelease = Literal["2.1", "2.2", "2.3"]

STEPS: tuple[str, ...] = ("train_gan", "train_classifier")
KINDS: tuple[str, ...] = ("trainjob", "pytorchjob")
#: Kubeflow Trainer releases whose TrainJob API the launcher writes (major.minor).
TRAINER_RELEASES: tuple[str, ...] = ("2.1", "2.2", "2.3")
#: The TrainJob field that carries the per-pod settings, per supported Trainer release.
TRAINER_POD_FIELD: dict[str, str] = {
    "2.1": "podTemplateOverrides",
    "2.2": "runtimePatches",
    "2.3": "runtimePatches",
}
#: Environment variable that names the cluster's Trainer release (skips the CRD lookup).
TRAINER_RELEASE_ENV = "FA_TRAINER_RELEASE"
TRAINJOB_CRD = "trainjobs.trainer.kubeflow.org"
#: The GPU pool of k8s/README.md ("GPU node pool").
DEFAULT_NODE_SELECTOR: dict[str, str] = {"node-pool": "gpu"}
#: Training pods' ServiceAccount (k8s/base/serviceaccounts.yaml): no API token, no RBAC.
TRAINING_SERVICE_ACCOUNT = "fashion-attr-training"
PART_OF = {"app.kubernetes.io/part-of": "fashion-attr-pipeline"}
#: Labels of every training pod: the NetworkPolicies training-peers and pipeline-egress.
POD_LABELS = {**PART_OF, "app.kubernetes.io/component": "training"}
#: Longest accepted job name. Pod and Service names append ``-node-0-<i>`` (TrainJob) or
#: ``-worker-<i>`` (PyTorchJob) and must stay DNS labels (<= 63 characters).
MAX_NAME_LENGTH = 45
#: ``trainer.args`` items a Trainer v2.2+ TrainJob may have (CRD ``maxItems``).
MAX_TRAINER_ARGS = 128
# RFC 1035 label: the TrainJob webhook requires it (stricter than a DNS-1123 label).
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_RELEASE_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?")

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
_RUN_POLICY = {"cleanPodPolicy": "None", "backoffLimit": 3, "ttlSecondsAfterFinished": 86400}
_V20_REFUSAL = (
    "Kubeflow Trainer v2.0 is not supported: its TrainJob API (spec.podSpecOverrides) cannot "
    "label the training pods, so the NetworkPolicies training-peers and pipeline-egress "
    "would cut them off. Fix: upgrade the Trainer to v2.1, v2.2 or v2.3, or run with "
    "train_job_kind=pytorchjob (Training Operator v1.7-v1.9)"
)


@dataclass(frozen=True)
class _Api:
    """Where a job kind lives in the Kubernetes API and how it reports its end."""

    group: str
    version: str
    plural: str
    kind: str
    success: str
    failure: str
    pod_selector: str  # label key whose value is the job name on every pod of the job


_APIS: dict[str, _Api] = {
    "trainjob": _Api(
        "trainer.kubeflow.org",
        "v1alpha1",
        "trainjobs",
        "TrainJob",
        success="Complete",
        failure="Failed",
        pod_selector="jobset.sigs.k8s.io/jobset-name",
    ),
    "pytorchjob": _Api(
        "kubeflow.org",
        "v1",
        "pytorchjobs",
        "PyTorchJob",
        success="Succeeded",
        failure="Failed",
        pod_selector="training.kubeflow.org/job-name",
    ),
}


_OPERATORS = {"trainjob": "Kubeflow Trainer v2", "pytorchjob": "the Kubeflow Training Operator v1"}


@dataclass(frozen=True)
class JobResult:
    """Outcome of a finished training job.

    Attributes:
        kind: ``"trainjob"`` or ``"pytorchjob"``.
        name: The job's name.
        namespace: The job's namespace.
        created: True if this call submitted the job, False if it attached to an existing one.
        condition: The terminal condition type (``Complete`` or ``Succeeded``).
        reason: That condition's reason, as the controller wrote it.
        message: That condition's message.
        elapsed_s: Seconds this call waited.
        logs_command: A ``kubectl`` command that prints the job's pod logs.
    """

    kind: str
    name: str
    namespace: str
    created: bool
    condition: str
    reason: str
    message: str
    elapsed_s: float
    logs_command: str


_REJECTED_FIX = {
    "trainjob": (
        f"unset {TRAINER_RELEASE_ENV} so that the launcher reads the release from the CRD, or "
        "set it to the installed one (2.1, 2.2 or 2.3); releases after v2.3 whose TrainJob "
        "API changed are not supported yet"
    ),
    "pytorchjob": "run Training Operator v1.7, v1.8 or v1.9",
}

# --------------------------------------------------------------------------- naming


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


# --------------------------------------------------------------------------- rendering


def _check_step(step: str) -> None:
    if step not in STEPS:
        raise ValueError(f"step {step!r} is not a training step. Fix: use one of {list(STEPS)}")


def _check_release(release: str) -> None:
    if release == "2.0":
        raise ValueError(_V20_REFUSAL)
    if release not in TRAINER_RELEASES:
        raise ValueError(
            f"trainer_release {release!r} is not supported. Fix: use one of "
            f"{list(TRAINER_RELEASES)} (Kubeflow Trainer v2.1.x, v2.2.x, v2.3.x)"
        )


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
        _check_release(trainer_release)
    for field, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field}={value!r} must be an integer >= 1")
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
    release: str,
    *,
    metadata: Mapping[str, Any],
    trainer_args: list[str],
    nodes: int,
    gpus: int,
    image: str,
    node_selector: Mapping[str, str],
    service_account: str,
) -> dict[str, Any]:
    """A TrainJob for Trainer ``release``, made of ``kubeflow_trainer_api`` models."""
    from kubeflow_trainer_api import models as m

    def quantities(amounts: Mapping[str, str]) -> dict[str, Any]:
        return {k: m.IoK8sApimachineryPkgApiResourceQuantity(v) for k, v in amounts.items()}

    env = [
        m.IoK8sApiCoreV1EnvVar(
            name=var,
            value_from=m.IoK8sApiCoreV1EnvVarSource(
                config_map_key_ref=m.IoK8sApiCoreV1ConfigMapKeySelector(
                    name=config_map, key=var, optional=True if optional else None
                )
            ),
        )
        for var, config_map, optional in _CONFIG_ENV
    ] + [
        m.IoK8sApiCoreV1EnvVar(
            name=var,
            value_from=m.IoK8sApiCoreV1EnvVarSource(
                secret_key_ref=m.IoK8sApiCoreV1SecretKeySelector(name=secret, key=var)
            ),
        )
        for var, secret in _SECRET_ENV
    ]
    resources = {part: quantities(amounts) for part, amounts in _resources(gpus).items()}
    trainer = m.TrainerV1alpha1Trainer(
        image=image,
        command=["torchrun"],
        # Node rank, master address and port: PET_* from the torch-distributed runtime.
        args=trainer_args,
        num_nodes=nodes,
        resources_per_node=m.IoK8sApiCoreV1ResourceRequirements(**resources),
        env=env,
    )
    # The per-pod settings. Trainer v2.2+ merges them (strategic merge) into the runtime's
    # pod template; v2.1 takes the same fields in its PodTemplateSpecOverride.
    pod_metadata = m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=dict(POD_LABELS))
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
    if TRAINER_POD_FIELD[release] == "runtimePatches":
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
    api = _APIS["trainjob"]
    job = m.TrainerV1alpha1TrainJob(
        api_version=f"{api.group}/{api.version}",
        kind=api.kind,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(**metadata),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(
                api_group=api.group, kind="ClusterTrainingRuntime", name=_RUNTIME
            ),
            trainer=trainer,
            runtime_patches=runtime_patches,
        ),
    ).to_dict()
    if TRAINER_POD_FIELD[release] == "podTemplateOverrides":
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
) -> dict[str, Any]:
    """A PyTorchJob made of ``kubeflow-training`` models (pods: ``kubernetes`` client models)."""
    from kubeflow.training import models as kt
    from kubernetes import client as k

    def pod_template() -> Any:
        # Master and Worker pods are identical on purpose: torchrun's rendezvous makes them peers.
        container = k.V1Container(
            name=_PYTORCH_CONTAINER,
            image=image,
            image_pull_policy="Always",
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
            ],
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
        return k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(labels=dict(POD_LABELS)), spec=spec)

    def replica(count: int) -> Any:
        return kt.KubeflowOrgV1ReplicaSpec(
            replicas=count, restart_policy="OnFailure", template=pod_template()
        )

    replicas = {"Master": replica(1)}
    if nodes > 1:
        replicas["Worker"] = replica(nodes - 1)
    api = _APIS["pytorchjob"]
    job = kt.KubeflowOrgV1PyTorchJob(
        api_version=f"{api.group}/{api.version}",
        kind=api.kind,
        metadata=k.V1ObjectMeta(**metadata),
        spec=kt.KubeflowOrgV1PyTorchJobSpec(
            run_policy=kt.KubeflowOrgV1RunPolicy(
                clean_pod_policy=_RUN_POLICY["cleanPodPolicy"],
                backoff_limit=_RUN_POLICY["backoffLimit"],
                ttl_seconds_after_finished=_RUN_POLICY["ttlSecondsAfterFinished"],
            ),
            pytorch_replica_specs=replicas,
        ),
    )
    return cast(dict[str, Any], k.ApiClient().sanitize_for_serialization(job))


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
    metadata = {
        "name": name,
        "namespace": namespace,
        "labels": {
            **POD_LABELS,
            "app.kubernetes.io/name": f"fashion-attr-{step.replace('_', '-')}",
            "app.kubernetes.io/instance": name,
        },
    }
    placement: dict[str, Any] = {
        "metadata": metadata,
        "nodes": nodes,
        "gpus": gpus_per_node,
        "image": image,
        "node_selector": selector,
        "service_account": service_account,
    }
    if kind == "trainjob":
        return _trainjob(
            trainer_release,
            trainer_args=_torchrun_args(step, args, nodes, gpus_per_node, ()),
            **placement,
        )
    rendezvous = (
        "--node_rank",
        "$(RANK)",
        "--master_addr",
        "$(MASTER_ADDR)",
        "--master_port",
        "$(MASTER_PORT)",
    )
    return _pytorchjob(
        trainer_args=_torchrun_args(step, args, nodes, gpus_per_node, rendezvous), **placement
    )


# --------------------------------------------------------------------------- Trainer release


def _release_from_env(value: str) -> TrainerRelease:
    """``FA_TRAINER_RELEASE`` (``2.3``, ``v2.3.0``...) as a supported major.minor."""
    match = _RELEASE_RE.fullmatch(value.strip())
    release = f"{match.group(1)}.{match.group(2)}" if match else value.strip()
    try:
        _check_release(release)
    except ValueError as exc:
        raise ValueError(f"{TRAINER_RELEASE_ENV}={value!r}: {exc}") from None
    return cast(TrainerRelease, release)


def trainer_release_from_crd(crd: Mapping[str, Any]) -> TrainerRelease:
    """The Kubeflow Trainer release whose TrainJob API a ``trainjobs`` CRD describes.

    The CRD carries no release number, so the schema of ``v1alpha1`` tells it: v2.2 and
    later have ``spec.runtimePatches`` (v2.3 added ``terminationGracePeriodSeconds`` to its
    pod patch), v2.1 ``spec.podTemplateOverrides``, v2.0 ``spec.podSpecOverrides``. A later
    release that keeps the v2.3 shape reads as ``"2.3"``; the strict field validation at
    submit time catches one that does not.

    Args:
        crd: The CustomResourceDefinition ``trainjobs.trainer.kubeflow.org`` as a dict
            (camelCase keys, as the API server returns it).

    Returns:
        ``"2.1"``, ``"2.2"`` or ``"2.3"``.

    Raises:
        RuntimeError: For Trainer v2.0, a CRD that does not serve ``v1alpha1``, or one with
            none of the known fields (naming the fields it has).
    """
    versions = (crd.get("spec") or {}).get("versions") or []
    served = [v for v in versions if v.get("name") == "v1alpha1" and v.get("served", True)]
    if not served:
        raise RuntimeError(
            f"the CRD {TRAINJOB_CRD} does not serve trainer.kubeflow.org/v1alpha1 (it serves "
            f"{[v.get('name') for v in versions if v.get('served', True)]}). Fix: install "
            "Kubeflow Trainer v2.1, v2.2 or v2.3, or run with train_job_kind=pytorchjob"
        )
    schema = served[0].get("schema", {}).get("openAPIV3Schema", {})
    fields = schema.get("properties", {}).get("spec", {}).get("properties", {})
    if "runtimePatches" in fields:
        pod_patch = _schema_at(
            fields["runtimePatches"],
            "items/trainingRuntimeSpec/template/spec/replicatedJobs/items/template/spec/"
            "template/spec",
        )
        return "2.3" if "terminationGracePeriodSeconds" in pod_patch else "2.2"
    if "podTemplateOverrides" in fields:
        return "2.1"
    if "podSpecOverrides" in fields:
        raise RuntimeError(_V20_REFUSAL)
    raise RuntimeError(
        f"the CRD {TRAINJOB_CRD} (v1alpha1) has none of runtimePatches, podTemplateOverrides, "
        f"podSpecOverrides in its TrainJob spec (it has {sorted(fields)}): not a Kubeflow "
        "Trainer release the launcher knows. Fix: install Kubeflow Trainer v2.1, v2.2 or "
        f"v2.3, set {TRAINER_RELEASE_ENV} if its TrainJob API is one of theirs, or run with "
        "train_job_kind=pytorchjob"
    )


def _schema_at(schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The ``properties`` of the sub-schema at ``path`` (``items`` steps into arrays)."""
    node: Mapping[str, Any] = schema
    for part in path.split("/"):
        node = (
            node.get("items", {}) if part == "items" else node.get("properties", {}).get(part, {})
        )
    return cast(Mapping[str, Any], node.get("properties", {}))


def detect_trainer_release(
    api: Any, *, poll_s: float = 5, max_api_errors: int = 3
) -> TrainerRelease:
    """Read the CRD ``trainjobs.trainer.kubeflow.org`` and tell the Trainer release from it.

    Args:
        api: A ``kubernetes.client.CustomObjectsApi`` (the CRD is read as a cluster-scoped
            custom object of ``apiextensions.k8s.io/v1``, which returns plain JSON).
        poll_s: Seconds between retries of a transient API error.
        max_api_errors: Transient API errors (5xx, 429, network) tolerated.

    Returns:
        ``"2.1"``, ``"2.2"`` or ``"2.3"`` (see :func:`trainer_release_from_crd`).

    Raises:
        RuntimeError: If the Trainer is not installed (no CRD), the launcher may not read the
            CRD (naming the permission it needs), or the release is not supported.
    """
    errors = 0
    while True:
        try:
            crd = api.get_cluster_custom_object(
                "apiextensions.k8s.io", "v1", "customresourcedefinitions", TRAINJOB_CRD
            )
            break
        except Exception as exc:
            status = _status(exc)
            if status == 404:
                raise RuntimeError(
                    f"Kubeflow Trainer is not installed: the cluster has no CRD {TRAINJOB_CRD}, "
                    "so no TrainJob can run. Fix: install Kubeflow Trainer v2.1, v2.2 or v2.3, "
                    "or run with train_job_kind=pytorchjob (Training Operator v1.7-v1.9)"
                ) from exc
            if status in (401, 403):
                raise RuntimeError(
                    f"the launcher may not read the CRD {TRAINJOB_CRD}, which tells the "
                    "installed Trainer release. Fix: bind a ClusterRole with verb get on "
                    "apiextensions.k8s.io customresourcedefinitions (resourceNames: "
                    f"{TRAINJOB_CRD}) to the launcher's ServiceAccount (pipeline-runner), or "
                    f"set {TRAINER_RELEASE_ENV} to the installed release "
                    f"({', '.join(TRAINER_RELEASES)}) in the launcher's environment"
                ) from exc
            errors += 1
            if not _transient(exc) or errors > max_api_errors:
                raise
            logger.warning("reading the CRD %s failed (%s); retrying", TRAINJOB_CRD, exc)
            time.sleep(poll_s)
    release = trainer_release_from_crd(crd)
    logger.info(
        "Kubeflow Trainer v%s TrainJob API (spec.%s), read from the CRD %s",
        release,
        TRAINER_POD_FIELD[release],
        TRAINJOB_CRD,
    )
    return release


# --------------------------------------------------------------------------- submitting


def _api_of(job: Mapping[str, Any]) -> tuple[str, _Api]:
    for kind, api in _APIS.items():
        if (job.get("kind"), job.get("apiVersion")) == (api.kind, f"{api.group}/{api.version}"):
            return kind, api
    raise ValueError(
        f"job has apiVersion {job.get('apiVersion')!r} kind {job.get('kind')!r}: not a TrainJob "
        "(trainer.kubeflow.org/v1alpha1) or PyTorchJob (kubeflow.org/v1). Fix: use render_job()"
    )


def _load_kube_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise RuntimeError(
                f"no Kubernetes API configuration ({exc}). Fix: run the launcher in a pod "
                "(service_account='pipeline-runner') or point KUBECONFIG at a kubeconfig"
            ) from exc


def _default_api() -> Any:
    """A CustomObjectsApi from the in-cluster configuration, else from the kubeconfig."""
    _load_kube_config()
    from kubernetes import client

    return client.CustomObjectsApi()


def _api_message(exc: BaseException) -> str:
    """The API server's own message from an ApiException's JSON body, else the exception."""
    try:
        message = json.loads(getattr(exc, "body", None) or "").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return str(message) if message else str(exc).strip()


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _transient(exc: BaseException) -> bool:
    """API errors worth retrying while polling: throttling, server errors, network errors."""
    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3")


def _secret_refs(obj: Any) -> Iterator[str]:
    """Names of the Secrets a job's pods need (non-optional references only)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                if not value.get("optional", False):
                    yield value["name"]
            else:
                yield from _secret_refs(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _secret_refs(item)


def _check_secrets(core_api: Any, job: Mapping[str, Any], namespace: str) -> None:
    """Fail before submitting if a Secret is missing: pods would hang in CreateContainerConfigError.

    Raises:
        RuntimeError: Naming every missing Secret (or the unreadable one) and the fix.
    """
    missing = []
    for secret in sorted(set(_secret_refs(job["spec"]))):
        try:
            core_api.read_namespaced_secret(secret, namespace)
        except Exception as exc:
            status = _status(exc)
            if status == 404:
                missing.append(secret)
                continue
            if status == 403:
                raise RuntimeError(
                    f"the launcher may not read Secret {secret} in namespace {namespace}. Fix: "
                    "run the pipeline with service_account='pipeline-runner' and apply the "
                    "Role in k8s/base/rbac.yaml"
                ) from exc
            raise
    if missing:
        raise RuntimeError(
            f"Secret(s) {', '.join(missing)} do not exist in namespace {namespace}; the "
            "training pods read credentials from them. Fix: create them (k8s/secrets/README.md, "
            "k8s/secrets/create-secrets.sh)"
        )


def _get(api: Any, spec: _Api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return api.get_namespaced_custom_object(
            spec.group, spec.version, namespace, spec.plural, name
        )
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise


def _get_retrying(
    api: Any, spec: _Api, namespace: str, name: str, poll: float, max_errors: int
) -> dict[str, Any] | None:
    """``_get`` that rides out API server restarts and throttling (a wait lasts hours)."""
    errors = 0
    while True:
        try:
            return _get(api, spec, namespace, name)
        except Exception as exc:
            errors += 1
            if not _transient(exc) or errors > max_errors:
                raise
            where = f"{spec.kind} {namespace}/{name}"
            logger.warning("reading %s failed (%s); retrying", where, exc)
            time.sleep(poll)


def _delete(api: Any, spec: _Api, namespace: str, name: str) -> None:
    try:
        # Foreground: the job disappears only after its pods, so a new one never overlaps it.
        api.delete_namespaced_custom_object(
            spec.group,
            spec.version,
            namespace,
            spec.plural,
            name,
            propagation_policy="Foreground",
        )
    except Exception as exc:
        if _status(exc) != 404:
            raise


def _terminal(obj: Mapping[str, Any], spec: _Api) -> dict[str, Any] | None:
    """The job's success or failure condition if it has one with status True."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in (spec.success, spec.failure) and cond.get("status") == "True":
            return dict(cond)
    return None


def _latest(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    conditions = [
        c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
    ]
    if not conditions:
        return None
    last = conditions[-1]
    return str(last.get("type", "")), str(last.get("reason", ""))


def _logs_command(spec: _Api, namespace: str, name: str) -> str:
    return (
        f"kubectl -n {namespace} logs -l {spec.pod_selector}={name} --all-containers "
        f"--prefix --tail=200   (status: kubectl -n {namespace} describe {spec.plural}/{name})"
    )


def _log_tails(core_api: Any, spec: _Api, namespace: str, name: str, lines: int = 50) -> None:
    """Copy the end of each training pod's log into this (launcher) pod's log. Best effort."""
    try:
        pods = core_api.list_namespaced_pod(namespace, label_selector=f"{spec.pod_selector}={name}")
        for pod in pods.items:
            text = core_api.read_namespaced_pod_log(
                pod.metadata.name, namespace, tail_lines=lines, timestamps=False
            )
            logger.error("last %d log lines of pod %s:\n%s", lines, pod.metadata.name, text)
    except Exception as exc:  # logs are a convenience: the error below is what counts
        logger.warning("could not read the training pods' logs: %s", exc)


def _wait_gone(
    api: Any, spec: _Api, namespace: str, name: str, deadline: float, poll: float
) -> None:
    while _get(api, spec, namespace, name) is not None:
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{spec.kind} {namespace}/{name} is still being deleted. Fix: check its pods' "
                f"finalizers (kubectl -n {namespace} get {spec.plural}/{name} -o yaml)"
            )
        time.sleep(poll)


def launch_and_wait(
    job: Mapping[str, Any],
    *,
    api: object | None = None,
    core_api: object | None = None,
    timeout_s: float = 48 * 3600,
    poll_s: float = 30,
    delete_on_timeout: bool = True,
    replace_failed: bool = True,
    max_api_errors: int = 10,
) -> JobResult:
    """Submit a job (or attach to the one of that name) and wait until it ends.

    Idempotent by name: if the job exists already (a KFP pod retried after preemption, or an
    earlier run with the same inputs) it is not created again: a running job is watched, a
    finished one returns at once. An existing *failed* job is deleted and created again when
    ``replace_failed`` is set, so a KFP retry really retries (the step resumes from its
    checkpoint), like the single-node path re-runs the step.

    Args:
        job: A TrainJob or PyTorchJob from ``render_job``.
        api: A ``kubernetes.client.CustomObjectsApi`` (tests pass a fake). Default: one built
            from the in-cluster configuration, else from the kubeconfig.
        core_api: A ``kubernetes.client.CoreV1Api`` to check the Secrets before submitting and
            to copy the pods' last log lines on failure. Default: one on ``api``'s client;
            skipped when ``api`` has none (a fake).
        timeout_s: Seconds to wait for the job to end.
        poll_s: Seconds between status reads.
        delete_on_timeout: Delete the job (and free its GPUs) when ``timeout_s`` passes.
        replace_failed: Delete and re-create a job found already failed.
        max_api_errors: Consecutive transient API errors (5xx, 429, network) tolerated while
            polling.

    Returns:
        The outcome, with the terminal condition's reason and message.

    Raises:
        ValueError: If ``job`` is not a TrainJob or PyTorchJob with a name and namespace.
        RuntimeError: If the job failed (names the job, the reason, the message and how to read
            the logs), or a Secret it needs is missing.
        TimeoutError: If it did not end within ``timeout_s``.
    """
    kind, spec = _api_of(job)
    meta = job.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        raise ValueError("job metadata needs name and namespace. Fix: use render_job()")
    if api is None:
        api = _default_api()
    if core_api is None and getattr(api, "api_client", None) is not None:
        from kubernetes import client

        core_api = client.CoreV1Api(api.api_client)
    logs = _logs_command(spec, namespace, name)
    where = f"{spec.kind} {namespace}/{name}"
    start = time.monotonic()
    deadline = start + timeout_s

    created = False
    existing = _get_retrying(api, spec, namespace, name, poll_s, max_api_errors)
    if existing is not None:
        end = _terminal(existing, spec)
        if end is not None and end["type"] == spec.failure and replace_failed:
            logger.warning(
                "%s exists and failed (%s: %s); deleting it and submitting it again (the "
                "step resumes from its checkpoint)",
                where,
                end.get("reason"),
                end.get("message"),
            )
            _delete(api, spec, namespace, name)
            _wait_gone(api, spec, namespace, name, deadline, poll_s)
            existing = None
        else:
            logger.info("%s exists already: attaching to it instead of creating it", where)
    if existing is None:
        if core_api is not None:
            _check_secrets(core_api, job, namespace)
        try:
            # Strict: a field the installed CRD does not declare fails the request instead
            # of being dropped (the default, Warn, drops it with a warning nobody reads).
            api.create_namespaced_custom_object(
                spec.group,
                spec.version,
                namespace,
                spec.plural,
                copy.deepcopy(dict(job)),
                field_validation="Strict",
            )
            created = True
            logger.info("submitted %s; logs: %s", where, logs)
        except Exception as exc:
            status = _status(exc)
            if status != 409:  # 409: another launcher created it in between: attach
                if status == 404:
                    operator = _OPERATORS[kind]
                    raise RuntimeError(
                        f"the API server does not serve {spec.plural}.{spec.group}/"
                        f"{spec.version}, so {where} cannot be created. Fix: install "
                        f"{operator} or choose the other job kind"
                    ) from exc
                if status in (400, 422):
                    raise RuntimeError(
                        f"the API server rejected {where}: {_api_message(exc)}. If it names an "
                        f"unknown field, the installed {_OPERATORS[kind]} release speaks "
                        f"another API version than the job was built for. Fix: "
                        f"{_REJECTED_FIX[kind]}"
                    ) from exc
                raise

    seen: tuple[str, str] | None = None
    while True:
        obj = _get_retrying(api, spec, namespace, name, poll_s, max_api_errors)
        if obj is None:
            raise RuntimeError(f"{where} was deleted while the launcher waited for it. {logs}")
        latest = _latest(obj)
        if latest is not None and latest != seen:
            logger.info("%s: %s (%s)", where, *latest)
            seen = latest
        end = _terminal(obj, spec)
        if end is not None:
            reason, message = str(end.get("reason", "")), str(end.get("message", ""))
            if end["type"] == spec.failure:
                if core_api is not None:
                    _log_tails(core_api, spec, namespace, name)
                raise RuntimeError(
                    f"{where} failed: reason {reason or '?'}: {message or 'no message'}. "
                    f"Logs: {logs}"
                )
            return JobResult(
                kind=kind,
                name=name,
                namespace=namespace,
                created=created,
                condition=str(end["type"]),
                reason=reason,
                message=message,
                elapsed_s=time.monotonic() - start,
                logs_command=logs,
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if delete_on_timeout:
                _delete(api, spec, namespace, name)
            raise TimeoutError(
                f"{where} did not finish within {timeout_s:g} s"
                f"{' and was deleted' if delete_on_timeout else ''}. Logs: {logs}"
            )
        time.sleep(min(poll_s, remaining))


# --------------------------------------------------------------------------- one call


_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def in_cluster_namespace(default: str = "fashion-attr") -> str:
    """The namespace this pod runs in (its ServiceAccount's), else ``default``."""
    try:
        with open(_SA_NAMESPACE) as fh:
            return fh.read().strip() or default
    except OSError:
        return default


def run_step_on_cluster(
    step: Step,
    args: Sequence[str],
    *,
    key: str,
    nodes: int,
    gpus_per_node: int,
    image: str,
    kind: JobKind = "trainjob",
    namespace: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    timeout_s: float = 48 * 3600,
    poll_s: float = 30,
    api: object | None = None,
    core_api: object | None = None,
) -> JobResult:
    """Render, submit and wait: the multi-node path of :func:`fashion_attr.steps.executor.execute`.

    For a TrainJob the Trainer release comes from ``FA_TRAINER_RELEASE`` if set (``2.1``,
    ``2.2``, ``2.3``; ``v2.3.0`` is read as ``2.3``), else from the cluster's CRD
    (:func:`detect_trainer_release`).

    Args:
        step: ``"train_gan"`` or ``"train_classifier"``.
        args: The step's CLI flags (as the executor builds them).
        key: The step's output key (last part of its output URI); names the job.
        nodes: GPU nodes.
        gpus_per_node: GPUs per node.
        image: The project image.
        kind: ``"trainjob"`` (Trainer v2) or ``"pytorchjob"`` (Training Operator v1).
        namespace: Default: the launcher pod's namespace (``FA_NAMESPACE`` overrides).
        node_selector: Labels of the GPU nodes (default ``{"node-pool": "gpu"}``).
        timeout_s: Seconds to wait.
        poll_s: Seconds between status reads.
        api: CustomObjectsApi (tests).
        core_api: CoreV1Api (tests).

    Returns:
        The job's outcome.

    Raises:
        ValueError: For a bad input or ``FA_TRAINER_RELEASE`` value.
        RuntimeError: If the Trainer is missing, unsupported or its CRD unreadable, a Secret
            is missing, or the job failed (see :func:`launch_and_wait`).
        TimeoutError: If the job did not end within ``timeout_s``.
    """
    namespace = namespace or os.environ.get("FA_NAMESPACE") or in_cluster_namespace()
    release: TrainerRelease = "2.3"
    if kind == "trainjob":
        configured = os.environ.get(TRAINER_RELEASE_ENV, "").strip()
        if configured:
            release = _release_from_env(configured)
            logger.info("Kubeflow Trainer v%s TrainJob API (%s)", release, TRAINER_RELEASE_ENV)
        else:
            if api is None:
                api = _default_api()
            release = detect_trainer_release(api, poll_s=min(poll_s, 5))
    job = render_job(
        kind,
        step=step,
        args=args,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        image=image,
        namespace=namespace,
        name=job_name_for(step, key),
        node_selector=node_selector,
        trainer_release=release,
    )
    return launch_and_wait(job, api=api, core_api=core_api, timeout_s=timeout_s, poll_s=poll_s)
