"""Submit a training job (or attach to the one already there) and wait until it ends.

The single-node path (:func:`fashion_attr.orchestration.executor.execute`) runs a step in
the KFP pod itself, under ``torchrun`` over the node's GPUs. For more nodes the KFP pod
becomes a launcher: :func:`run_step_on_cluster` renders the job
(:mod:`~fashion_attr.cluster.jobs`), :func:`attach_or_submit` creates it with
``fieldValidation=Strict`` (a field the installed CRD does not declare fails the request
instead of being dropped) or attaches to the job of that name, and :func:`wait_for_job`
polls it until it is terminal. Job names derive from the step and its output key, so a
KFP pod retried after preemption finds the job its predecessor submitted; the step
writes checkpoints under its output URI, so a job created again resumes.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from fashion_attr.cluster.jobs import PART_OF, JobKind, Step, job_name_for, render_job
from fashion_attr.cluster.kube import (
    APIS,
    OPERATORS,
    JobApi,
    add_owner,
    api_message,
    api_of,
    check_secrets,
    default_api,
    delete_job,
    get_job_retrying,
    in_cluster_namespace,
    latest_condition,
    list_jobs,
    log_tails,
    logs_command,
    status_of,
    terminal_condition,
    wait_gone,
)
from fashion_attr.cluster.release import (
    TRAINER_RELEASE_ENV,
    TrainerRelease,
    detect_trainer_release,
    release_from_env,
)

__all__ = [
    "JobResult",
    "attach_or_submit",
    "launch_and_wait",
    "launcher_pod",
    "reap_orphans",
    "run_step_on_cluster",
    "wait_for_job",
]

logger = logging.getLogger(__name__)
#: The label selector of every job the launcher renders (cluster.jobs.PART_OF).
PART_OF_SELECTOR = ",".join(f"{k}={v}" for k, v in PART_OF.items())
#: The launcher's variables the training pods get too (the pipeline run the step's MLflow
#: run nests under).
PROPAGATED_ENV = ("FA_PIPELINE_RUN", "FA_MLFLOW_PARENT_RUN_ID")
#: Seconds the SIGTERM path gives its delete request: Argo's emissary exits about a second
#: after the launcher's process group got SIGTERM, and the container with it.
SIGTERM_DELETE_TIMEOUT_S = 1.0


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


REJECTED_FIX = {
    "trainjob": (
        f"unset {TRAINER_RELEASE_ENV} so that the launcher reads the release from the CRD, or "
        "set it to the installed one (2.1, 2.2 or 2.3); releases after v2.3 whose TrainJob "
        "API changed are not supported yet"
    ),
    "pytorchjob": "run Training Operator v1.7, v1.8 or v1.9",
}


def attach_or_submit(
    job: Mapping[str, Any],
    *,
    api: Any,
    core_api: Any | None = None,
    replace_failed: bool = True,
    poll_s: float = 30,
    max_api_errors: int = 10,
    deadline: float | None = None,
) -> bool:
    """Create ``job``, or attach to the job of that name that exists already.

    Idempotent by name: a running or finished job is left as it is (a KFP pod retried
    after preemption, or an earlier run with the same inputs). An existing *failed* job
    is deleted and created again when ``replace_failed`` is set, so a KFP retry really
    retries (the step resumes from its checkpoint), like the single-node path re-runs it.

    Args:
        job: A TrainJob or PyTorchJob from :func:`~fashion_attr.cluster.jobs.render_job`.
        api: A ``kubernetes.client.CustomObjectsApi`` (or a fake with its methods).
        core_api: A ``CoreV1Api`` to check the job's Secrets first; None skips the check.
        replace_failed: Delete and re-create a job found failed.
        poll_s: Seconds between reads while a replaced job is being deleted.
        max_api_errors: Consecutive transient API errors tolerated per read.
        deadline: ``time.monotonic()`` by which a replaced job must be gone.

    Returns:
        True if this call created the job, False if it attached to an existing one.

    Raises:
        ValueError: ``job`` is not a TrainJob or PyTorchJob with a name and namespace.
        RuntimeError: A Secret is missing, or the API server does not serve or rejects the
            job (naming the operator release and the fix).
    """
    kind, spec = api_of(job)
    name, namespace = _name_and_namespace(job)
    where = f"{spec.kind} {namespace}/{name}"
    existing = get_job_retrying(api, spec, namespace, name, poll_s, max_api_errors)
    if existing is not None:
        end = terminal_condition(existing, spec)
        if end is None or end["type"] != spec.failure or not replace_failed:
            logger.info("%s exists already: attaching to it instead of creating it", where)
            _adopt(api, spec, existing, job)
            return False
        logger.warning(
            "%s exists and failed (%s: %s); deleting it and submitting it again (the step "
            "resumes from its checkpoint)",
            where,
            end.get("reason"),
            end.get("message"),
        )
        delete_job(api, spec, namespace, name)
        wait_gone(api, spec, namespace, name, deadline or time.monotonic() + 600, poll_s)
    if core_api is not None:
        check_secrets(core_api, job, namespace)
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
    except Exception as exc:
        status = status_of(exc)
        if status == 409:  # another launcher created it in between: attach
            existing = get_job_retrying(api, spec, namespace, name, poll_s, max_api_errors)
            if existing is not None:
                _adopt(api, spec, existing, job)
            return False
        if status == 404:
            raise RuntimeError(
                f"the API server does not serve {spec.plural}.{spec.group}/{spec.version}, so "
                f"{where} cannot be created. Fix: install {OPERATORS[kind]} or choose the "
                "other job kind"
            ) from exc
        if status in (400, 422):
            raise RuntimeError(
                f"the API server rejected {where}: {api_message(exc)}. If it names an unknown "
                f"field, the installed {OPERATORS[kind]} release speaks another API version "
                f"than the job was built for. Fix: {REJECTED_FIX[kind]}"
            ) from exc
        raise
    logger.info("submitted %s; logs: %s", where, logs_command(spec, namespace, name))
    return True


def _adopt(api: Any, spec: JobApi, existing: Mapping[str, Any], job: Mapping[str, Any]) -> None:
    """Add this launcher's pod to the owners of a job it attaches to.

    The job may be owned by the pod of an earlier attempt or run with the same output key;
    when that pod is garbage-collected with its workflow, the job must not go with it while
    this launcher waits for it.
    """
    for ref in (job.get("metadata") or {}).get("ownerReferences") or []:
        try:
            add_owner(api, spec, existing, {"name": ref["name"], "uid": ref["uid"]})
        except Exception as exc:  # the job still runs; only its garbage collection differs
            logger.warning("could not add this pod as an owner of the job: %s", exc)


def wait_for_job(
    job: Mapping[str, Any],
    *,
    api: Any,
    core_api: Any | None = None,
    created: bool = False,
    timeout_s: float = 48 * 3600,
    poll_s: float = 30,
    delete_on_timeout: bool = True,
    max_api_errors: int = 10,
) -> JobResult:
    """Poll a submitted job until it succeeds, fails or ``timeout_s`` passes.

    Args:
        job: The job :func:`attach_or_submit` created or attached to.
        api: A ``CustomObjectsApi``.
        core_api: A ``CoreV1Api`` to copy the pods' last log lines on failure, or None.
        created: Whether this launcher created the job (reported in the result).
        timeout_s: Seconds to wait.
        poll_s: Seconds between status reads.
        delete_on_timeout: Delete the job (and free its GPUs) when ``timeout_s`` passes.
        max_api_errors: Consecutive transient API errors (5xx, 429, network) tolerated.

    Returns:
        The outcome, with the terminal condition's reason and message.

    Raises:
        RuntimeError: The job failed or was deleted (names the job, the reason, the message
            and how to read the logs).
        TimeoutError: It did not end within ``timeout_s``.
    """
    kind, spec = api_of(job)
    name, namespace = _name_and_namespace(job)
    logs = logs_command(spec, namespace, name)
    where = f"{spec.kind} {namespace}/{name}"
    start = time.monotonic()
    deadline = start + timeout_s
    seen: tuple[str, str] | None = None
    while True:
        obj = get_job_retrying(api, spec, namespace, name, poll_s, max_api_errors)
        if obj is None:
            raise RuntimeError(f"{where} was deleted while the launcher waited for it. {logs}")
        latest = latest_condition(obj)
        if latest is not None and latest != seen:
            logger.info("%s: %s (%s)", where, *latest)
            seen = latest
        end = terminal_condition(obj, spec)
        if end is not None:
            reason, message = str(end.get("reason", "")), str(end.get("message", ""))
            if end["type"] == spec.failure:
                if core_api is not None:
                    log_tails(core_api, spec, namespace, name)
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
                delete_job(api, spec, namespace, name)
            raise TimeoutError(
                f"{where} did not finish within {timeout_s:g} s"
                f"{' and was deleted' if delete_on_timeout else ''}. Logs: {logs}"
            )
        time.sleep(min(poll_s, remaining))


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

    :func:`attach_or_submit`, then :func:`wait_for_job`.

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
    api_of(job)
    _name_and_namespace(job)
    if api is None:
        api = default_api()
    if core_api is None and getattr(api, "api_client", None) is not None:
        from kubernetes import client

        core_api = client.CoreV1Api(cast(Any, api).api_client)  # it has one (checked above)
    created = attach_or_submit(
        job,
        api=api,
        core_api=core_api,
        replace_failed=replace_failed,
        poll_s=poll_s,
        max_api_errors=max_api_errors,
        deadline=time.monotonic() + timeout_s,
    )
    return wait_for_job(
        job,
        api=api,
        core_api=core_api,
        created=created,
        timeout_s=timeout_s,
        poll_s=poll_s,
        delete_on_timeout=delete_on_timeout,
        max_api_errors=max_api_errors,
    )


def _name_and_namespace(job: Mapping[str, Any]) -> tuple[str, str]:
    meta = job.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        raise ValueError("job metadata needs name and namespace. Fix: use render_job()")
    return str(name), str(namespace)


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
    """Render, submit and wait: the multi-node path of the executor (one call).

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
            release = release_from_env(configured)
            logger.info("Kubeflow Trainer v%s TrainJob API (%s)", release, TRAINER_RELEASE_ENV)
        else:
            if api is None:
                api = default_api()
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
        owner=launcher_pod(namespace),
        deadline_s=int(timeout_s),
        env={k: os.environ[k] for k in PROPAGATED_ENV if os.environ.get(k)},
    )
    try:
        return launch_and_wait(job, api=api, core_api=core_api, timeout_s=timeout_s, poll_s=poll_s)
    except KeyboardInterrupt:
        # SIGTERM (a cancelled run, the task's deadline, a drained node) or Ctrl-C: the
        # GPUs must not keep training for a run nobody waits for. Argo sends SIGTERM and
        # kills 30 s later (pod terminationGracePeriodSeconds): one delete call fits.
        _, spec = api_of(job)
        name = job["metadata"]["name"]
        logger.warning("stopping: deleting %s %s/%s", spec.kind, namespace, name)
        try:
            delete_job(
                api if api is not None else default_api(),
                spec,
                namespace,
                name,
                timeout_s=SIGTERM_DELETE_TIMEOUT_S,
            )
        except Exception as exc:  # the ownerReference is the backstop
            logger.error("could not delete %s %s: %s (its ownerReference still ties it to "
                         "this pod)", spec.kind, name, exc)  # fmt: skip
        raise


def reap_orphans(
    namespace: str, *, api: Any | None = None, core_api: Any | None = None
) -> list[str]:
    """Delete the project's training jobs whose launcher pods are all gone or finished.

    A launcher killed before it could delete its job (Argo leaves about a second after
    SIGTERM) leaves a job training for nobody; its ownerReference deletes it only when the
    pod object goes, with its workflow, a day later by default. The ``validation`` task of
    every multi-node run calls this first, so a cancelled night's GPUs are freed by the next
    run at the latest. Jobs whose owner is a running or pending pod are left alone.

    Returns:
        The ``<kind>/<name>`` of the jobs deleted.
    """
    from kubernetes import client

    api = api if api is not None else default_api()
    core_api = core_api if core_api is not None else client.CoreV1Api(api.api_client)
    deleted = []
    for spec in APIS.values():
        try:
            jobs = list_jobs(api, spec, namespace, PART_OF_SELECTOR)
        except Exception as exc:  # the API (CRD) is not installed, or not ours to list
            logger.info("no %s to reap in %s (%s)", spec.plural, namespace, status_of(exc) or exc)
            continue
        for job in jobs:
            if terminal_condition(job, spec) is not None:
                continue
            owners = [
                r for r in job["metadata"].get("ownerReferences") or [] if r.get("kind") == "Pod"
            ]
            if owners and not any(_pod_alive(core_api, namespace, r) for r in owners):
                name = job["metadata"]["name"]
                delete_job(api, spec, namespace, name)
                deleted.append(f"{spec.kind}/{name}")
                logger.warning("deleted %s %s/%s: its launcher pods are gone", spec.kind,
                               namespace, name)  # fmt: skip
    return deleted


def _pod_alive(core_api: Any, namespace: str, ref: Mapping[str, Any]) -> bool:
    try:
        pod = core_api.read_namespaced_pod(ref["name"], namespace)
    except Exception as exc:
        if status_of(exc) == 404:
            return False
        raise
    same = getattr(pod.metadata, "uid", None) == ref.get("uid")
    return bool(same and getattr(pod.status, "phase", "") in ("Pending", "Running"))


def launcher_pod(namespace: str) -> dict[str, str] | None:
    """This launcher pod's name and uid (downward API: ``FA_POD_NAME``/``FA_POD_UID``).

    None outside a pipeline pod, or when the job goes to another namespace than the pod's
    (an ownerReference cannot cross namespaces: Kubernetes would delete the job at once).
    """
    name, uid = os.environ.get("FA_POD_NAME"), os.environ.get("FA_POD_UID")
    pod_namespace = os.environ.get("FA_POD_NAMESPACE") or in_cluster_namespace("")
    if not name or not uid:
        return None
    if pod_namespace != namespace:
        logger.warning(
            "the job goes to namespace %s, the launcher pod runs in %s: no ownerReference "
            "(it cannot cross namespaces); a cancelled run's job is deleted on SIGTERM only",
            namespace,
            pod_namespace,
        )
        return None
    return {"name": name, "uid": uid}
