"""Run a training step over several GPU nodes as a Kubeflow TrainJob or PyTorchJob.

The single-node path (``steps.pipeline_entry._run_step``) runs a step in the
KFP pod itself, under ``torchrun`` over the node's GPUs. For more nodes, the
KFP pod becomes a launcher: it fills in one of the templates shipped in
``fashion_attr/k8s_templates`` (exact copies of ``k8s/training/*.yaml``),
submits it with the Kubernetes API, waits until it is terminal and reports the
outcome. Two APIs are supported:

- ``trainjob``: Kubeflow Trainer v2 (``trainer.kubeflow.org/v1alpha1``
  TrainJob, runtime ``torch-distributed``). The runtime's torch plugin sets
  ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` on every node,
  which ``torchrun`` reads as defaults for its flags.
- ``pytorchjob``: Kubeflow Training Operator v1 (``kubeflow.org/v1``
  PyTorchJob, Master + ``nodes - 1`` Workers). The operator sets
  ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` (pods) and ``RANK`` (the
  pod's index, Master 0); Kubernetes expands ``$(RANK)`` etc. in the args.

Both get explicit ``--nnodes N --nproc_per_node G`` so the process layout never
depends on what a runtime infers from the resources.

Job names are derived from the step and its output key (``job_name_for``), so
a KFP pod retried after preemption finds the job its predecessor submitted and
attaches to it instead of starting a second copy. The step writes checkpoints
under its output URI, so a job that is re-created (after a failure) resumes.

Departures from the templates' comments and ``k8s/README.md``: the step
configuration travels as the step's own CLI flags (``--preset``, ``--set``),
not as a ConfigMap: the renderer removes the ``train-config`` volume and
mount, so no shared ConfigMap can be overwritten by a concurrent run and
nothing is left to clean up.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

__all__ = [
    "DEFAULT_NODE_SELECTOR",
    "TRAINING_SERVICE_ACCOUNT",
    "JobResult",
    "in_cluster_namespace",
    "job_name_for",
    "launch_and_wait",
    "render_job",
    "run_step_on_cluster",
]

logger = logging.getLogger(__name__)

JobKind = Literal["trainjob", "pytorchjob"]
Step = Literal["train_gan", "train_classifier"]

STEPS: tuple[str, ...] = ("train_gan", "train_classifier")
KINDS: tuple[str, ...] = ("trainjob", "pytorchjob")
#: The GPU pool of k8s/README.md ("GPU node pool").
DEFAULT_NODE_SELECTOR: dict[str, str] = {"node-pool": "gpu"}
#: Training pods' ServiceAccount (k8s/base/serviceaccounts.yaml): no API token, no RBAC.
TRAINING_SERVICE_ACCOUNT = "fashion-attr-training"
PART_OF = {"app.kubernetes.io/part-of": "fashion-attr-pipeline"}
#: Longest accepted job name. Pod and Service names append ``-node-0-<i>`` (TrainJob) or
#: ``-worker-<i>`` (PyTorchJob) and must stay DNS labels (<= 63 characters).
MAX_NAME_LENGTH = 45
# RFC 1035 label: the TrainJob webhook requires it (stricter than a DNS-1123 label).
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# The template mounts the step config from this ConfigMap; the launcher passes flags instead.
_CONFIG_VOLUME = "train-config"


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


# --------------------------------------------------------------------------- naming


def job_name_for(step: str, key: str) -> str:
    """A deterministic job name for one step output, so a retried launcher re-finds its job.

    Args:
        step: ``train_gan`` or ``train_classifier``.
        key: The step's output key: the last path part of its output URI (16 hex digits in
            ``pipeline_entry``); any other string is hashed.

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


def _template(kind: str) -> dict[str, Any]:
    text = resources.files("fashion_attr").joinpath("k8s_templates", f"{kind}.yaml").read_text()
    return yaml.safe_load(text)


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
) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is unknown. Fix: use one of {list(KINDS)}")
    _check_step(step)
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
    for arg in args:
        if arg == "--config" or arg.startswith("--config="):
            raise ValueError(
                f"args contain {arg!r}: a local config file does not exist in the training "
                "pods. Fix: pass the configuration as --preset and --set key=value"
            )
    for key, value in node_selector.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise ValueError(f"node_selector entry {key!r}: {value!r} must map strings to strings")


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


def _set_gpus(resources_: dict[str, Any], gpus: int) -> None:
    # Extended resources: requests must equal limits.
    for part in ("requests", "limits"):
        resources_.setdefault(part, {})["nvidia.com/gpu"] = str(gpus)


def _drop_config_volume(spec: dict[str, Any]) -> None:
    spec["volumes"] = [v for v in spec.get("volumes", []) if v.get("name") != _CONFIG_VOLUME]
    for container in spec.get("containers", []):
        mounts = [m for m in container.get("volumeMounts", []) if m.get("name") != _CONFIG_VOLUME]
        container["volumeMounts"] = mounts


def _place(spec: dict[str, Any], node_selector: Mapping[str, str], service_account: str) -> None:
    spec["serviceAccountName"] = service_account
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    else:
        spec.pop("nodeSelector", None)
    _drop_config_volume(spec)


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
) -> dict[str, Any]:
    """Fill in the TrainJob or PyTorchJob template for one training step.

    The templates bring everything that does not vary per run: the GPU toleration, the
    memory-backed ``/dev/shm``, the Secret and ConfigMap environment (object store, MLflow),
    the container security settings (PyTorchJob) and the NetworkPolicy labels.

    Args:
        kind: ``"trainjob"`` (Kubeflow Trainer v2) or ``"pytorchjob"`` (Training Operator v1).
        step: ``"train_gan"`` or ``"train_classifier"``.
        args: The step's CLI flags, e.g. ``["--data", uri, "--out", uri, "--preset", "paper",
            "--set", "k=v"]``. Passed literally (``$`` is escaped from Kubernetes expansion).
        nodes: Pods, one per GPU node (>= 1).
        gpus_per_node: GPUs per pod and ``torchrun`` processes per pod (>= 1).
        image: The project image (the same one the pipeline runs).
        namespace: Namespace of the job.
        name: Job name, an RFC 1035 label of at most 45 characters (see ``job_name_for``).
        node_selector: Labels of the GPU nodes; default ``{"node-pool": "gpu"}``; ``{}`` for
            none.
        service_account: ServiceAccount of the training pods. Default
            ``fashion-attr-training`` (no API token, no RBAC), as in the templates. The
            launcher's ``pipeline-runner`` (which may create jobs and read Secrets) is
            deliberately not the default: training code needs neither.

    Returns:
        The job as a dict, ready for ``launch_and_wait``.

    Raises:
        ValueError: For a bad input, naming it and the fix.
    """
    selector = DEFAULT_NODE_SELECTOR if node_selector is None else node_selector
    _check_inputs(
        kind, step, args, nodes, gpus_per_node, image, namespace, name, selector, service_account
    )
    job = _template(kind)
    api = _APIS[kind]
    if (job.get("kind"), job.get("apiVersion")) != (api.kind, f"{api.group}/{api.version}"):
        raise ValueError(
            f"k8s_templates/{kind}.yaml holds {job.get('apiVersion')} {job.get('kind')}, "
            f"expected {api.group}/{api.version} {api.kind}. Fix: restore the template"
        )
    labels = {
        **job["metadata"].get("labels", {}),
        **PART_OF,
        "app.kubernetes.io/name": f"fashion-attr-{step.replace('_', '-')}",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "training",
    }
    job["metadata"] = {"name": name, "namespace": namespace, "labels": labels}
    pod_labels = {**PART_OF, "app.kubernetes.io/component": "training"}
    if kind == "trainjob":
        trainer = job["spec"]["trainer"]
        trainer["image"] = image
        trainer["command"] = ["torchrun"]
        # Node rank, master address and port: PET_* from the torch-distributed runtime.
        trainer["args"] = _torchrun_args(step, args, nodes, gpus_per_node, ())
        trainer["numNodes"] = nodes
        _set_gpus(trainer.setdefault("resourcesPerNode", {}), gpus_per_node)
        for override in job["spec"]["podTemplateOverrides"]:
            meta = override.setdefault("metadata", {})
            meta["labels"] = {**meta.get("labels", {}), **pod_labels}
            _place(override.setdefault("spec", {}), selector, service_account)
    else:
        replicas = job["spec"]["pytorchReplicaSpecs"]
        rendezvous = (
            "--node_rank",
            "$(RANK)",
            "--master_addr",
            "$(MASTER_ADDR)",
            "--master_port",
            "$(MASTER_PORT)",
        )
        if nodes == 1:
            del replicas["Worker"]
        else:
            replicas["Worker"]["replicas"] = nodes - 1
        replicas["Master"]["replicas"] = 1
        for replica in replicas.values():
            template = replica["template"]
            meta = template.setdefault("metadata", {})
            meta["labels"] = {**meta.get("labels", {}), **pod_labels}
            spec = template["spec"]
            _place(spec, selector, service_account)
            (container,) = [c for c in spec["containers"] if c["name"] == "pytorch"]
            container["image"] = image
            container["command"] = ["torchrun"]
            container["args"] = _torchrun_args(step, args, nodes, gpus_per_node, rendezvous)
            _set_gpus(container.setdefault("resources", {}), gpus_per_node)
    return job


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
        _load_kube_config()
        from kubernetes import client

        api = client.CustomObjectsApi()
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
            api.create_namespaced_custom_object(
                spec.group, spec.version, namespace, spec.plural, copy.deepcopy(dict(job))
            )
            created = True
            logger.info("submitted %s; logs: %s", where, logs)
        except Exception as exc:
            if _status(exc) != 409:  # 409: another launcher created it in between: attach
                if _status(exc) == 404:
                    operator = _OPERATORS[kind]
                    raise RuntimeError(
                        f"the API server does not serve {spec.plural}.{spec.group}/"
                        f"{spec.version}, so {where} cannot be created. Fix: install "
                        f"{operator} or choose the other job kind"
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
    """Render, submit and wait: the multi-node counterpart of ``pipeline_entry._run_step``.

    Args:
        step: ``"train_gan"`` or ``"train_classifier"``.
        args: The step's CLI flags (as ``_run_step`` gets them).
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
    """
    namespace = namespace or os.environ.get("FA_NAMESPACE") or in_cluster_namespace()
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
    )
    return launch_and_wait(job, api=api, core_api=core_api, timeout_s=timeout_s, poll_s=poll_s)
