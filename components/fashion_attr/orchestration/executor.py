"""Run a training step where it belongs: in this process, under torchrun, or as a cluster job.

:func:`execute` is the one way the pipeline runs ``train_gan`` and
``train_classifier``, whatever the placement:

- **in this process** (one device): the step's ``run`` is called directly; its
  exceptions reach the caller unchanged;
- **torchrun over this node's GPUs** (``gpus > 1``): the resolved config is
  written to ``<out>/step_config.yaml`` and the step's CLI runs under
  ``python -m torch.distributed.run --standalone``;
- **a cluster training job** (``nodes > 1``): the same CLI in a Kubeflow
  Trainer TrainJob or Training Operator PyTorchJob over that many GPU nodes
  (:mod:`fashion_attr.cluster`); this process submits it and waits.

In the last two cases the result is read from ``<out>/result.json`` and a
failure from ``<out>/error.json`` (which the step's CLI writes, see
:mod:`fashion_attr.steps.contract`): the caller gets a :class:`StepError` with
the step's own message and exit code (2 user error, 3 fault), never a bare
"exit code 1". A step that asks for GPUs fails before any work when CUDA is
not usable; it never trains on the CPU instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any, cast

import yaml
from pydantic import BaseModel

from fashion_attr import cluster, storage
from fashion_attr.cluster.jobs import JobKind, Step
from fashion_attr.config import config_to_dict
from fashion_attr.orchestration.identity import Placement, attempt_fingerprint
from fashion_attr.orchestration.lease import OutputLease
from fashion_attr.steps import train_classifier, train_gan
from fashion_attr.steps.contract import (
    EXIT_FAULT,
    EXIT_INTERRUPTED,
    EXIT_USER,
    StepError,
    StepResult,
    clear_error,
    exit_code_for,
    read_error,
    skip_final_collections,
)

__all__ = ["STEPS", "Placement", "Terminated", "check_gpus", "execute", "task_attempt"]

log = logging.getLogger(__name__)

#: The steps :func:`execute` runs, by name: their module and result type.
STEPS: dict[str, tuple[ModuleType, type[StepResult]]] = {
    "train_gan": (train_gan, train_gan.TrainGanResult),
    "train_classifier": (train_classifier, train_classifier.TrainClassifierResult),
}
CONFIG_NAME = "step_config.yaml"


def check_gpus(step: str, wanted: int) -> None:
    """Fail loudly when ``wanted`` GPUs were requested but CUDA cannot use them.

    Raises:
        StepError: (a fault, exit 3) naming the step, what is visible and the likely cause.
    """
    if wanted < 1:
        return
    # torch loads only when a GPU is asked for: the CPU tasks start in a fraction of a second.
    from fashion_attr.runtime import GpuUnavailableError, require_gpus

    try:
        require_gpus(step, wanted)
    except GpuUnavailableError as exc:
        raise StepError(str(exc), EXIT_FAULT) from None


def _argv(data: str, out: str, config_uri: str, inputs: Mapping[str, Any]) -> list[str]:
    argv = ["--data", data, "--out", out, "--config", config_uri, "--record-error"]
    for key, value in inputs.items():
        flag = "--" + key.replace("_", "-")
        if key == "resume":
            argv += [] if value else ["--no-resume"]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def execute(
    step: str,
    cfg: BaseModel,
    *,
    data: str,
    out: str,
    placement: Placement | None = None,
    owner: str | None = None,
    **inputs: Any,
) -> StepResult:
    """Run training step ``step`` with ``cfg`` on ``data`` into ``out``, placed as asked.

    Args:
        step: ``train_gan`` or ``train_classifier``.
        cfg: the step's resolved config.
        data: the dataset version URI.
        out: the output URI (``s3://`` when ``placement.nodes > 1``).
        placement: GPUs, nodes, job kind and image.
        owner: the pipeline run this attempt belongs to (see
            :class:`~fashion_attr.orchestration.lease.OutputLease`).
        **inputs: the step's other inputs, as its ``run`` takes them (``generator``,
            ``cache_dir``, ``resume``, ``reuse_generator``).

    ``out`` is named by the inputs (:func:`~fashion_attr.orchestration.identity.output_key`):
    a finished result there is returned without training, and a run that is training the
    same inputs is waited for (:class:`~fashion_attr.orchestration.lease.OutputLease`), so
    two runs never write into one folder at once.

    Returns:
        The step's result.

    Raises:
        StepError: the step failed under torchrun or in the cluster job (its own message
            and exit code), or the GPUs asked for are not usable.
        ValueError: a placement that cannot work (names the fix).
    """
    if step not in STEPS:
        raise ValueError(f"unknown training step {step!r}. Fix: use one of {sorted(STEPS)}")
    placement = placement or Placement()
    if placement.nodes > 1:
        _check_cluster_placement(out, placement)
    module, result_type = STEPS[step]
    reuse = inputs.get("resume", True)  # --no-resume trains afresh, whatever is there
    finished = _finished(result_type, out) if reuse else None
    if finished is not None:
        log.info("%s: %s holds the finished result of these inputs; reusing it", step, out)
        return finished
    lease = OutputLease(out, owner or "local", on_wait=lambda held: _waiting(step, out, held))
    with lease:
        finished = _finished(result_type, out) if reuse and lease.waited else None
        if finished is not None:  # the run we waited for trained the same thing
            return finished
        if placement.nodes > 1:
            _on_cluster(step, cfg, data, out, placement, inputs)
            return result_type.read(out)
        check_gpus(step, placement.gpus)
        if placement.gpus <= 1:
            return cast(StepResult, module.run(cfg, data, out, **inputs))
        _under_torchrun(step, module.__name__, cfg, data, out, placement.gpus, inputs)
        return result_type.read(out)


def _finished(result_type: type[StepResult], out: str) -> StepResult | None:
    """The result a finished run left in ``out``, or None (missing or not a result)."""
    try:
        return result_type.read(out)
    except (FileNotFoundError, ValueError):
        return None


def _waiting(step: str, out: str, held: Mapping[str, Any]) -> None:
    print(
        f"{step}: run {held.get('owner')} ({held.get('holder')}) is training the same inputs "
        f"into {out}; waiting to reuse its result",
        file=sys.stderr,
        flush=True,
    )


def _write_config(cfg: BaseModel, out: str) -> str:
    uri = storage.join(out, CONFIG_NAME)
    storage.write_text(uri, yaml.safe_dump(config_to_dict(cfg), sort_keys=True))
    return uri


def _failure(step: str, out: str, default: str) -> StepError:
    recorded = read_error(out)
    if recorded is not None:
        return StepError(f"{step}: {recorded}", recorded.exit_code)
    return StepError(f"{step}: {default}", EXIT_FAULT)


def _under_torchrun(
    step: str,
    module: str,
    cfg: BaseModel,
    data: str,
    out: str,
    gpus: int,
    inputs: Mapping[str, Any],
) -> None:
    argv = _argv(data, out, _write_config(cfg, out), inputs)
    clear_error(out)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        module,
        *argv,
    ]
    log.info("running %s under torchrun over %d GPUs", step, gpus)
    code = subprocess.call(cmd)  # the ranks' output goes to this process's log as it comes
    if code != 0:
        raise _failure(step, out, f"torchrun exited with code {code} (see the log above)")


def _check_cluster_placement(out: str, placement: Placement) -> None:
    if not storage.is_s3(out):
        raise ValueError(
            f"multi-node training writes to {out!r}, which the other nodes cannot see. "
            "Fix: use an s3:// storage_uri with train_nodes > 1"
        )
    if not placement.image:
        raise ValueError(
            "multi-node training needs the project image. Fix: compile the pipeline with "
            "--image (FA_IMAGE)"
        )
    if placement.gpus < 1:
        raise ValueError(
            "multi-node training runs on GPU nodes. Fix: set the GPUs per step to 1 or more"
        )


def _on_cluster(
    step: str,
    cfg: BaseModel,
    data: str,
    out: str,
    placement: Placement,
    inputs: Mapping[str, Any],
) -> None:
    # Every pod checks CUDA before any work: nothing trains on the CPU by accident.
    argv = [
        *_argv(data, out, _write_config(cfg, out), inputs),
        "--require-gpus",
        str(placement.gpus),
    ]
    clear_error(out)
    # The job may run as long as this launcher's own pod (its deadline, FA_TASK_DEADLINE_S,
    # set at compile time), less a margin to delete the job before the pod is killed.
    deadline = float(os.environ.get("FA_TASK_DEADLINE_S", str(48 * 3600)))
    assert placement.image is not None  # _check_cluster_placement ran before (nodes > 1)
    try:
        cluster.run_step_on_cluster(
            cast(Step, step),  # one of STEPS (checked by execute)
            argv,
            key=out.rstrip("/").rsplit("/", 1)[-1],
            nodes=placement.nodes,
            gpus_per_node=placement.gpus,
            image=placement.image,
            kind=cast(JobKind, placement.job_kind),  # render_job checks it (ValueError)
            timeout_s=max(deadline - 300, 60),
        )
    except RuntimeError as exc:
        failure = _failure(step, out, str(exc))
        if failure.exit_code == EXIT_USER:
            raise failure from exc
        raise StepError(f"{failure} ({exc})", failure.exit_code) from exc


class _RepeatedUserError(StepError):
    """A retry that meets the user error an earlier attempt recorded."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USER)


class Terminated(KeyboardInterrupt):
    """SIGTERM: the pod is being stopped (a cancelled run, a deadline, a drained node)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"stopped by signal {signum}")


#: Seconds an exit-2 record blocks a retry with the same inputs (Argo's automatic retries
#: of a task come within minutes; a person's "Retry" after a fix usually later).
RETRY_BLOCK_S = 30 * 60


@contextlib.contextmanager
def task_attempt(
    task: str,
    storage_uri: str,
    scope: str,
    *,
    inputs: Mapping[str, Any] | None = None,
    stamped: Sequence[str] = (),
    block_s: float = RETRY_BLOCK_S,
) -> Iterator[None]:
    """Run one pipeline task's body: a clean message and the right exit code on failure.

    On failure the message is printed as the step's CLI prints it (``<task>: error: ...``)
    and the process ends with exit code 2 (user error), 3 (fault) or 130 (stopped). SIGTERM
    (a cancelled run, a pod deadline) unwinds the body like Ctrl-C, so what it holds (a
    lease, a cluster job, an MLflow run) is released.

    Argo retries every failed attempt of a task, whatever its exit code; so a user error is
    recorded under ``<storage_uri>/runs/attempts/<scope hash>/<task>.json`` with a
    fingerprint of the attempt's inputs (:func:`~.identity.attempt_fingerprint`: the
    parameters, a hash of the credentials, the stamps of ``stamped`` files), and a retry
    fails at once with the same message only while it has the same fingerprint and the
    record is younger than ``block_s``. A KFP "Retry" after the cause was fixed (a new
    secret, a corrected batch file) runs; so does one after ``block_s``.

    Args:
        task: the task's name, for messages and the record.
        storage_uri: the pipeline's storage root.
        scope: the pipeline run id (kept by retries), or, for cached tasks, the URI KFP
            gave the task's output artifact; empty turns the record off.
        inputs: the task's parameters (for the fingerprint).
        stamped: files or prefixes whose content the task reads (for the fingerprint).
        block_s: see above.

    Raises:
        SystemExit: with the exit code, after any failure.
    """
    key = hashlib.sha256(scope.encode()).hexdigest()[:16]
    record = storage.join(storage_uri, "runs", "attempts", key, f"{task}.json")
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    fingerprint = ""
    try:
        fingerprint = attempt_fingerprint(inputs or {}, stamped) if scope else ""
        if scope and storage.exists(record):
            earlier = json.loads(storage.read_text(record))
            same = earlier.get("fingerprint") == fingerprint
            recent = time.time() - float(earlier.get("time", 0)) < block_s
            if same and recent:
                raise _RepeatedUserError(
                    f"{earlier['message']} (not retried: an earlier attempt of this run hit "
                    "this user error with the same inputs; fix the cause and retry: a changed "
                    "parameter, file or credential reruns the task, or submit a new run)"
                )
            storage.delete(record)  # the inputs changed, or the block has lapsed: run again
        yield
        skip_final_collections()
    except BaseException as exc:
        code = exit_code_for(exc)
        print(f"{task}: {_kind(code)}: {exc}", file=sys.stderr)
        if code == EXIT_USER and scope and not isinstance(exc, _RepeatedUserError):
            entry = {"message": str(exc), "fingerprint": fingerprint, "time": time.time()}
            with contextlib.suppress(Exception):  # recording must never hide the error
                storage.write_text(record, json.dumps(entry))
        raise SystemExit(code) from exc
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _kind(code: int) -> str:
    return {EXIT_USER: "error", EXIT_INTERRUPTED: "stopped"}.get(code, "failed")
