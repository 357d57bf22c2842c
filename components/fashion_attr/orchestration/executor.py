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
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import yaml
from pydantic import BaseModel

from fashion_attr import cluster, storage
from fashion_attr.config import config_to_dict
from fashion_attr.steps import train_classifier, train_gan
from fashion_attr.steps.contract import (
    EXIT_FAULT,
    EXIT_USER,
    StepError,
    StepResult,
    clear_error,
    exit_code_for,
    read_error,
    skip_final_collections,
)

__all__ = ["STEPS", "Placement", "check_gpus", "execute", "task_attempt"]

log = logging.getLogger(__name__)

#: The steps :func:`execute` runs, by name: their module and result type.
STEPS: dict[str, tuple[ModuleType, type[StepResult]]] = {
    "train_gan": (train_gan, train_gan.TrainGanResult),
    "train_classifier": (train_classifier, train_classifier.TrainClassifierResult),
}
CONFIG_NAME = "step_config.yaml"


@dataclass(frozen=True)
class Placement:
    """Where a training step runs.

    Attributes:
        gpus: GPUs per node; 0 runs on what the config's ``device`` says (the CPU on a
            machine without CUDA); 1 needs CUDA; more run ``torchrun`` over them.
        nodes: GPU nodes; more than 1 submits a cluster training job.
        job_kind: ``trainjob`` (Kubeflow Trainer) or ``pytorchjob`` (Training Operator).
        image: the project image the job's pods run (needed with ``nodes > 1``).
    """

    gpus: int = 0
    nodes: int = 1
    job_kind: str = "trainjob"
    image: str | None = None


def check_gpus(step: str, wanted: int) -> None:
    """Fail loudly when ``wanted`` GPUs were requested but CUDA cannot use them.

    Raises:
        StepError: (a fault, exit 3) naming the step, what is visible and the likely cause.
    """
    if wanted < 1:
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available >= wanted:
        return
    why = ""
    try:
        torch.cuda.init()
    except Exception as exc:  # the driver's own words: too old, no device, ...
        why = f" CUDA says: {str(exc).splitlines()[0]}."
    raise StepError(
        f"{step} asked for {wanted} GPU(s) but CUDA can use {available}.{why} It will not "
        f"train on the CPU instead. Fix: run on a GPU node whose NVIDIA driver supports "
        f"CUDA {torch.version.cuda or '?'} (torch {torch.__version__}), or set the pipeline's "
        "GPU count to 0 for a CPU run",
        EXIT_FAULT,
    )


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
    placement: Placement = Placement(),
    **inputs: Any,
) -> StepResult:
    """Run training step ``step`` with ``cfg`` on ``data`` into ``out``, placed as asked.

    Args:
        step: ``train_gan`` or ``train_classifier``.
        cfg: the step's resolved config.
        data: the dataset version URI.
        out: the output URI (``s3://`` when ``placement.nodes > 1``).
        placement: GPUs, nodes, job kind and image.
        **inputs: the step's other inputs, as its ``run`` takes them (``generator``,
            ``cache_dir``, ``resume``, ``reuse_generator``).

    Returns:
        The step's result.

    Raises:
        StepError: the step failed under torchrun or in the cluster job (its own message
            and exit code), or the GPUs asked for are not usable.
        ValueError: a placement that cannot work (names the fix).
    """
    if step not in STEPS:
        raise ValueError(f"unknown training step {step!r}. Fix: use one of {sorted(STEPS)}")
    module, result_type = STEPS[step]
    if placement.nodes > 1:
        _on_cluster(step, cfg, data, out, placement, inputs)
        return result_type.read(out)
    check_gpus(step, placement.gpus)
    if placement.gpus <= 1:
        return module.run(cfg, data, out, **inputs)
    _under_torchrun(step, module.__name__, cfg, data, out, placement.gpus, inputs)
    return result_type.read(out)


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


def _on_cluster(
    step: str,
    cfg: BaseModel,
    data: str,
    out: str,
    placement: Placement,
    inputs: Mapping[str, Any],
) -> None:
    if not storage.is_s3(out):
        raise ValueError(
            f"multi-node training writes to {out!r}, which the other nodes cannot see. "
            "Fix: use an s3:// storage_uri with train_nodes > 1"
        )
    if not placement.image:
        raise ValueError("multi-node training needs the project image. Fix: set FA_IMAGE")
    if placement.gpus < 1:
        raise ValueError(
            "multi-node training runs on GPU nodes. Fix: set the GPUs per step to 1 or more"
        )
    argv = _argv(data, out, _write_config(cfg, out), inputs)
    clear_error(out)
    try:
        cluster.run_step_on_cluster(
            step,
            argv,
            key=out.rstrip("/").rsplit("/", 1)[-1],
            nodes=placement.nodes,
            gpus_per_node=placement.gpus,
            image=placement.image,
            kind=placement.job_kind,
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


@contextlib.contextmanager
def task_attempt(task: str, storage_uri: str, scope: str) -> Iterator[None]:
    """Run one pipeline task's body: a clean message and the right exit code on failure.

    On failure the message is printed as the step's CLI prints it (``<task>: error: ...``)
    and the process ends with exit code 2 (user error) or 3 (fault). Argo retries every
    failed attempt of a task, whatever its exit code; so a user error is also recorded
    under ``<storage_uri>/runs/attempts/``, keyed by ``scope``, and a retry with the same
    scope fails at once with the same message instead of redoing the work. The scope is
    what stays the same across the retries of one task in one pipeline run and differs
    otherwise: the pipeline run id, or, for cached tasks (whose inputs must not hold the
    run id), the URI KFP gave the task's output artifact.

    Args:
        task: the task's name, for messages and the record.
        storage_uri: the pipeline's storage root.
        scope: see above; empty turns the record off.

    Raises:
        SystemExit: with the exit code, after any failure.
    """
    key = hashlib.sha256(scope.encode()).hexdigest()[:16]
    record = storage.join(storage_uri, "runs", "attempts", key, f"{task}.json")
    try:
        if scope and storage.exists(record):
            earlier = json.loads(storage.read_text(record))["message"]
            raise _RepeatedUserError(
                f"{earlier} (not retried: an earlier attempt hit this user error)"
            )
        yield
        skip_final_collections()
    except BaseException as exc:
        code = exit_code_for(exc)
        print(f"{task}: {'error' if code == EXIT_USER else 'failed'}: {exc}", file=sys.stderr)
        if code == EXIT_USER and scope and not isinstance(exc, _RepeatedUserError):
            with contextlib.suppress(Exception):  # recording must never hide the error
                storage.write_text(record, json.dumps({"message": str(exc)}))
        raise SystemExit(code) from exc
