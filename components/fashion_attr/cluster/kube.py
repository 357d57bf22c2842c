"""Kubernetes API calls of the launcher: where each job kind lives, reads, deletes, secrets.

Nothing here renders a job (:mod:`~fashion_attr.cluster.jobs`) or decides how long to
wait (:mod:`~fashion_attr.cluster.submit`): these are the thin, retry-aware wrappers
around ``kubernetes.client`` that both use. Tests pass fakes with the same methods.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

__all__ = [
    "APIS",
    "OPERATORS",
    "JobApi",
    "add_owner",
    "api_message",
    "api_of",
    "check_secrets",
    "default_api",
    "delete_job",
    "get_job",
    "get_job_retrying",
    "in_cluster_namespace",
    "is_transient",
    "latest_condition",
    "list_jobs",
    "log_tails",
    "logs_command",
    "status_of",
    "terminal_condition",
    "wait_gone",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobApi:
    """Where a job kind lives in the Kubernetes API and how it reports its end."""

    group: str
    version: str
    plural: str
    kind: str
    success: str
    failure: str
    pod_selector: str  # label key whose value is the job name on every pod of the job


APIS: dict[str, JobApi] = {
    "trainjob": JobApi(
        "trainer.kubeflow.org",
        "v1alpha1",
        "trainjobs",
        "TrainJob",
        success="Complete",
        failure="Failed",
        pod_selector="jobset.sigs.k8s.io/jobset-name",
    ),
    "pytorchjob": JobApi(
        "kubeflow.org",
        "v1",
        "pytorchjobs",
        "PyTorchJob",
        success="Succeeded",
        failure="Failed",
        pod_selector="training.kubeflow.org/job-name",
    ),
}


OPERATORS = {"trainjob": "Kubeflow Trainer v2", "pytorchjob": "the Kubeflow Training Operator v1"}


def api_of(job: Mapping[str, Any]) -> tuple[str, JobApi]:
    """The kind and API of a rendered job (raises ValueError for anything else)."""
    for kind, api in APIS.items():
        if (job.get("kind"), job.get("apiVersion")) == (api.kind, f"{api.group}/{api.version}"):
            return kind, api
    raise ValueError(
        f"job has apiVersion {job.get('apiVersion')!r} kind {job.get('kind')!r}: not a TrainJob "
        "(trainer.kubeflow.org/v1alpha1) or PyTorchJob (kubeflow.org/v1). Fix: use render_job()"
    )


def load_kube_config() -> None:
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


def default_api() -> Any:
    """A CustomObjectsApi from the in-cluster configuration, else from the kubeconfig."""
    load_kube_config()
    from kubernetes import client

    return client.CustomObjectsApi()


def api_message(exc: BaseException) -> str:
    """The API server's own message from an ApiException's JSON body, else the exception."""
    try:
        message = json.loads(getattr(exc, "body", None) or "").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return str(message) if message else str(exc).strip()


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API exception, if it has one."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """API errors worth retrying while polling: throttling, server errors, network errors."""
    status = status_of(exc)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3")


def secret_refs(obj: Any) -> Iterator[str]:
    """Names of the Secrets a job's pods need (non-optional references only)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                if not value.get("optional", False):
                    yield value["name"]
            else:
                yield from secret_refs(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from secret_refs(item)


def check_secrets(core_api: Any, job: Mapping[str, Any], namespace: str) -> None:
    """Fail before submitting if a Secret is missing: pods would hang in CreateContainerConfigError.

    Raises:
        RuntimeError: Naming every missing Secret (or the unreadable one) and the fix.
    """
    missing = []
    for secret in sorted(set(secret_refs(job["spec"]))):
        try:
            core_api.read_namespaced_secret(secret, namespace)
        except Exception as exc:
            status = status_of(exc)
            if status == 404:
                missing.append(secret)
                continue
            if status == 403:
                raise RuntimeError(
                    f"the launcher may not read Secret {secret} in namespace {namespace}. Fix: "
                    "run the pipeline with service_account='pipeline-runner' and apply the "
                    "Role in k8s/pipeline/rbac.yaml"
                ) from exc
            raise
    if missing:
        raise RuntimeError(
            f"Secret(s) {', '.join(missing)} do not exist in namespace {namespace}; the "
            "training pods read credentials from them. Fix: create them (k8s/secrets/README.md, "
            "k8s/secrets/create-secrets.sh)"
        )


def get_job(api: Any, spec: JobApi, namespace: str, name: str) -> dict[str, Any] | None:
    """The job as the API server has it, or None when it does not exist."""
    try:
        return cast(
            dict[str, Any],
            api.get_namespaced_custom_object(
                spec.group, spec.version, namespace, spec.plural, name
            ),
        )
    except Exception as exc:
        if status_of(exc) == 404:
            return None
        raise


def get_job_retrying(
    api: Any, spec: JobApi, namespace: str, name: str, poll: float, max_errors: int
) -> dict[str, Any] | None:
    """``get_job`` that rides out API server restarts and throttling (a wait lasts hours)."""
    errors = 0
    while True:
        try:
            return get_job(api, spec, namespace, name)
        except Exception as exc:
            errors += 1
            if not is_transient(exc) or errors > max_errors:
                raise
            where = f"{spec.kind} {namespace}/{name}"
            logger.warning("reading %s failed (%s); retrying", where, exc)
            time.sleep(poll)


def delete_job(
    api: Any, spec: JobApi, namespace: str, name: str, *, timeout_s: float | None = None
) -> None:
    """Delete a job with its pods (a job that is gone already is fine).

    ``timeout_s`` bounds the request (the SIGTERM path has about a second: Argo's emissary
    exits as soon as KFP's launcher has, and the container with it).
    """
    extra = {"_request_timeout": timeout_s} if timeout_s else {}
    try:
        # Foreground: the job disappears only after its pods, so a new one never overlaps it.
        api.delete_namespaced_custom_object(
            spec.group,
            spec.version,
            namespace,
            spec.plural,
            name,
            propagation_policy="Foreground",
            **extra,
        )
    except Exception as exc:
        if status_of(exc) != 404:
            raise


def add_owner(api: Any, spec: JobApi, job: Mapping[str, Any], owner: Mapping[str, str]) -> None:
    """Make ``owner`` (a pod) an owner of an existing job too (a launcher that attached).

    The job keeps its earlier owners; Kubernetes deletes it only when all of them are gone.
    """
    meta = job.get("metadata") or {}
    refs = list(meta.get("ownerReferences") or [])
    if any(r.get("uid") == owner["uid"] for r in refs):
        return
    refs.append({"apiVersion": "v1", "kind": "Pod", "name": owner["name"], "uid": owner["uid"]})
    api.patch_namespaced_custom_object(
        spec.group,
        spec.version,
        meta["namespace"],
        spec.plural,
        meta["name"],
        {"metadata": {"ownerReferences": refs}},
    )


def list_jobs(api: Any, spec: JobApi, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The jobs of a kind in ``namespace`` with the label ``selector``."""
    found = api.list_namespaced_custom_object(
        spec.group, spec.version, namespace, spec.plural, label_selector=selector
    )
    return list(found.get("items", []))


def wait_gone(
    api: Any, spec: JobApi, namespace: str, name: str, deadline: float, poll: float
) -> None:
    """Wait until a deleted job is gone (``deadline`` is a ``time.monotonic()`` value)."""
    while get_job(api, spec, namespace, name) is not None:
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{spec.kind} {namespace}/{name} is still being deleted. Fix: check its pods' "
                f"finalizers (kubectl -n {namespace} get {spec.plural}/{name} -o yaml)"
            )
        time.sleep(poll)


def terminal_condition(obj: Mapping[str, Any], spec: JobApi) -> dict[str, Any] | None:
    """The job's success or failure condition if it has one with status True."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in (spec.success, spec.failure) and cond.get("status") == "True":
            return dict(cond)
    return None


def latest_condition(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(type, reason)`` of the job's last true condition, for progress lines."""
    conditions = [
        c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
    ]
    if not conditions:
        return None
    last = conditions[-1]
    return str(last.get("type", "")), str(last.get("reason", ""))


def logs_command(spec: JobApi, namespace: str, name: str) -> str:
    """The ``kubectl`` commands that show a job's pod logs and status."""
    return (
        f"kubectl -n {namespace} logs -l {spec.pod_selector}={name} --all-containers "
        f"--prefix --tail=200   (status: kubectl -n {namespace} describe {spec.plural}/{name})"
    )


def log_tails(core_api: Any, spec: JobApi, namespace: str, name: str, lines: int = 50) -> None:
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


SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def in_cluster_namespace(default: str = "fashion-attr") -> str:
    """The namespace this pod runs in (its ServiceAccount's), else ``default``."""
    try:
        with open(SA_NAMESPACE) as fh:
            return fh.read().strip() or default
    except OSError:
        return default
