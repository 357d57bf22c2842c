"""Experiment tracking: a JSON Lines log beside every output, and MLflow when configured.

Every step writes its metrics to ``<out>/metrics.jsonl`` (always, so a run is
inspectable without any server). When ``MLFLOW_TRACKING_URI`` is set, the step
also logs to MLflow, in a run of its own:

- **checked first**: :func:`fashion_attr.endpoints.check_mlflow` reports a server that is
  down, a wrong URI or refused credentials in seconds, in one line naming the fix, and
  MLflow's own client is bounded (:func:`fashion_attr.endpoints.prepare_mlflow_client`);
- **nested under the pipeline's parent run**, the same way for every step (the trainers'
  :class:`Tracker`, ``evaluate``, ``register``; :func:`start_step_run`): the run named by
  ``FA_MLFLOW_PARENT_RUN_ID`` when set, else the run that groups the pipeline run
  ``FA_PIPELINE_RUN`` (found by the tag ``fashion_attr.pipeline_run``, or created:
  :func:`pipeline_parent_run`), else none;
- **never left RUNNING**: a step run ends FINISHED when the step closes it, FAILED when the
  step fails, KILLED when it is interrupted (Ctrl-C) or terminated (SIGTERM: the run is
  ended, then the process dies of the signal as before). Only a SIGKILL leaves a run
  RUNNING; the next attempt of the same step under the same parent marks it KILLED.

Credentials for MLflow come from the environment
(``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``) and are never logged:
:func:`fashion_attr.credentials.redact_params` drops anything that looks like a secret.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from fashion_attr.credentials import adopt_uri_credentials, redact_params, safe_uri
from fashion_attr.endpoints import check_mlflow, prepare_mlflow_client

__all__ = [
    "DEFAULT_EXPERIMENT",
    "PARENT_RUN_ENV",
    "PIPELINE_RUN_ENV",
    "PIPELINE_RUN_TAG",
    "STEP_TAG",
    "Tracker",
    "TrackingError",
    "end_open_runs",
    "experiment_id",
    "flatten",
    "guarded_run",
    "pipeline_parent_run",
    "run_status_for",
    "start_step_run",
]

log = logging.getLogger(__name__)

PIPELINE_RUN_TAG = "fashion_attr.pipeline_run"
ROLE_TAG = "fashion_attr.role"
STEP_TAG = "fashion_attr.step"
PARENT_TAG = "mlflow.parentRunId"
#: An MLflow run id: every step's run is nested under it (the pipeline's parent run).
PARENT_RUN_ENV = "FA_MLFLOW_PARENT_RUN_ID"
#: The pipeline run id (KFP run id): steps nest under the run tagged with it.
PIPELINE_RUN_ENV = "FA_PIPELINE_RUN"
DEFAULT_EXPERIMENT = "fashion-attr"


class TrackingError(RuntimeError):
    """MLflow failed while a step logged to it (a fault: exit 3; the message names the fix)."""

    retryable = True


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def pipeline_parent_run(client: Any, experiment_id: str, pipeline_run: str) -> str:
    """The MLflow run that groups one pipeline run's steps, found by tag or created.

    Every step of a pipeline run (the trainers' :class:`Tracker`, ``register``) nests its
    own run under this one, tagged ``fashion_attr.pipeline_run = <id>`` and
    ``fashion_attr.role = pipeline``.

    Args:
        client: an ``mlflow.MlflowClient``.
        experiment_id: the experiment the runs live in.
        pipeline_run: the pipeline run id (KFP run id).

    Returns:
        The parent run's id.
    """
    quoted = pipeline_run.replace("'", "\\'")
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{quoted}' and tags.`{ROLE_TAG}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return cast(str, found[0].info.run_id)
    parent = client.create_run(
        experiment_id,
        run_name=f"pipeline-{pipeline_run}",
        tags={PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "pipeline"},
    )
    client.set_terminated(parent.info.run_id)
    return cast(str, parent.info.run_id)


def experiment_id(client: Any, name: str | None = None) -> str:
    """The id of experiment ``name`` (default ``MLFLOW_EXPERIMENT_NAME``), created if missing."""
    from mlflow.exceptions import MlflowException

    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return cast(str, exp.experiment_id)
    try:
        return cast(str, client.create_experiment(name))
    except MlflowException as exc:  # created meanwhile by a concurrent step
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = client.get_experiment_by_name(name)
        assert exp is not None
        return cast(str, exp.experiment_id)


def _step_parent(client: Any, experiment: str, pipeline_run: str) -> tuple[str, str | None]:
    """``(experiment id, parent run id or None)`` of a step run (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    named = os.environ.get(PARENT_RUN_ENV, "").strip()
    if named:
        try:
            parent = client.get_run(named)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise ValueError(
                    f"{PARENT_RUN_ENV}={named} names no run on MLflow at "
                    f"{safe_uri(_tracking_uri())}. Fix: set it to the id of the pipeline's "
                    "parent run, or unset it"
                ) from None
            raise
        return parent.info.experiment_id, named
    if pipeline_run:
        return experiment, pipeline_parent_run(client, experiment, pipeline_run)
    return experiment, None


def _end_stale_attempts(client: Any, experiment: str, parent: str, step: str) -> None:
    """Mark KILLED the RUNNING runs of ``step`` under ``parent``: attempts that were SIGKILLed."""
    quoted = step.replace("'", "\\'")
    stale = client.search_runs(
        [experiment],
        filter_string=(
            f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{STEP_TAG}` = '{quoted}' "
            "and attributes.status = 'RUNNING'"
        ),
        max_results=100,
    )
    for run in stale:
        client.set_tag(run.info.run_id, "fashion_attr.ended_by", "a later attempt of the step")
        client.set_terminated(run.info.run_id, "KILLED")
        log.info("marked the unfinished run %s of %s as KILLED", run.info.run_id, step)


def start_step_run(
    client: Any,
    step: str,
    *,
    pipeline_run: str = "",
    experiment: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Any:
    """Create a step's MLflow run, nested under the pipeline's parent run when there is one.

    The parent is the run named by ``FA_MLFLOW_PARENT_RUN_ID`` (its experiment is used),
    else the run grouping ``pipeline_run`` (:func:`pipeline_parent_run`), else none.
    Earlier attempts of the same step under the same parent still marked RUNNING (a
    SIGKILLed pod) are marked KILLED first.

    Args:
        client: an ``mlflow.MlflowClient``.
        step: the step name (the run's name and its ``fashion_attr.step`` tag).
        pipeline_run: the pipeline run id, if any.
        experiment: the experiment id (default: :func:`experiment_id`).
        tags: more tags for the run.

    Returns:
        The created ``mlflow.entities.Run`` (status RUNNING).

    Raises:
        ValueError: ``FA_MLFLOW_PARENT_RUN_ID`` names no run.
    """
    experiment = experiment or experiment_id(client)
    experiment, parent = _step_parent(client, experiment, pipeline_run)
    all_tags = {STEP_TAG: step}
    if pipeline_run:
        all_tags[PIPELINE_RUN_TAG] = pipeline_run
    if parent:
        all_tags[PARENT_TAG] = parent
        _end_stale_attempts(client, experiment, parent, step)
    all_tags.update(tags or {})
    return client.create_run(experiment, run_name=step, tags=all_tags)


def _tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "")


# ----------------------------------------------------------------- runs never left RUNNING
def run_status_for(exc: BaseException | None) -> str:
    """The MLflow status a run ends with after ``exc``: FINISHED, KILLED or FAILED."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


class _OpenRun:
    """An MLflow run this process started and must end (see :func:`end_open_runs`)."""

    def __init__(self, client: Any, run_id: str, step: str) -> None:
        self.client = client
        self.run_id = run_id
        self.step = step
        self.status: str | None = None
        self._lock = threading.Lock()

    def end(self, status: str) -> None:
        """Set the run's final status (once; later calls do nothing). Never raises."""
        with self._lock:
            if self.status is not None:
                return
            self.status = status
        _unregister(self)
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # the step's own outcome is what matters
            log.warning(
                "could not mark the MLflow run %s of %s as %s: %s",
                self.run_id,
                self.step,
                status,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )


_open: list[_OpenRun] = []
_open_lock = threading.Lock()
_hooks: dict[str, Any] = {"installed": False, "interrupted": False}


def end_open_runs(status: str) -> int:
    """End every MLflow run this process still has open with ``status``; returns how many.

    What a process does when it fails, is interrupted or terminated; also run at exit
    (KILLED after Ctrl-C or SIGTERM, else FAILED: a step that ends normally has closed
    its runs).
    """
    with _open_lock:
        runs = list(_open)
    for run in runs:
        run.end(status)
    return len(runs)


def _register(run: _OpenRun) -> None:
    with _open_lock:
        _open.append(run)
    _install_hooks()


def _unregister(run: _OpenRun) -> None:
    with _open_lock:
        if run in _open:
            _open.remove(run)
        empty = not _open
    if empty:
        _uninstall_hooks()


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) does not own the parent's runs or handlers."""
    with contextlib.suppress(Exception):
        _open.clear()
        for name, signum in (("sigterm", signal.SIGTERM), ("sigint", signal.SIGINT)):
            previous = _hooks.pop(name, None)
            if previous is not None:
                signal.signal(signum, previous)
        _hooks["installed"] = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _on_sigterm(signum: int, frame: Any) -> None:
    _hooks["interrupted"] = True
    # In a thread with a bound wait: the main thread may hold a lock of the HTTP client.
    ender = threading.Thread(target=end_open_runs, args=("KILLED",), daemon=True)
    ender.start()
    ender.join(timeout=15)
    previous = _hooks.get("sigterm")
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # die of the signal, as without this handler


def _on_sigint(signum: int, frame: Any) -> None:
    _hooks["interrupted"] = True
    previous = _hooks.get("sigint")
    if callable(previous):
        previous(signum, frame)
    else:
        raise KeyboardInterrupt


def _at_exit() -> None:
    if os.getpid() == _hooks.get("pid"):
        end_open_runs("KILLED" if _hooks["interrupted"] else "FAILED")


def _install_hooks() -> None:
    if _hooks["installed"]:
        return
    _hooks["installed"] = True
    _hooks["pid"] = os.getpid()
    if not _hooks.get("atexit"):
        atexit.register(_at_exit)  # after MLflow's own (import time): runs before it
        _hooks["atexit"] = True
    if threading.current_thread() is not threading.main_thread():
        return
    term, intr = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    if term is not signal.SIG_IGN and term is not _on_sigterm:
        _hooks["sigterm"] = term
        signal.signal(signal.SIGTERM, _on_sigterm)
    if intr is not signal.SIG_IGN and intr is not _on_sigint:
        _hooks["sigint"] = intr
        signal.signal(signal.SIGINT, _on_sigint)


def _uninstall_hooks() -> None:
    if not _hooks["installed"] or threading.current_thread() is not threading.main_thread():
        return
    _hooks["installed"] = False
    for name, signum, ours in (
        ("sigterm", signal.SIGTERM, _on_sigterm),
        ("sigint", signal.SIGINT, _on_sigint),
    ):
        previous = _hooks.pop(name, None)
        if previous is not None and signal.getsignal(signum) is ours:
            signal.signal(signum, previous)


@contextlib.contextmanager
def guarded_run(
    client: Any, run_id: str, step: str, *, end_on_success: bool = True
) -> Iterator[None]:
    """End run ``run_id`` however the block ends: FINISHED, FAILED or KILLED.

    Also on SIGTERM while the block runs, and at exit if the block never ended.

    Args:
        client: an ``mlflow.MlflowClient``.
        run_id: the run.
        step: the step, for messages.
        end_on_success: end the run FINISHED when the block succeeds (False: leave that to
            the block, e.g. MLflow's fluent ``start_run`` context).
    """
    run = _OpenRun(client, run_id, step)
    _register(run)
    try:
        yield
    except BaseException as exc:
        run.end(run_status_for(exc))
        raise
    if end_on_success:
        run.end("FINISHED")
    else:
        run.status = "FINISHED"
        _unregister(run)


def _mlflow_name(key: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . / and space; '@' is not allowed.
    return key.replace("@", "_at_")


class Tracker:
    """Log params, metrics and artifacts of one step.

    Args:
        log_path: local JSON Lines file that always receives the metrics.
        step_name: the pipeline step (the MLflow run's name).
        pipeline_run: id shared by all steps of one pipeline run (KFP run id);
            defaults to ``FA_PIPELINE_RUN`` (none: the run is not nested, unless
            ``FA_MLFLOW_PARENT_RUN_ID`` names a parent).
        enabled: whether this process logs (False on non-zero DDP ranks).

    Raises:
        EndpointConfigError: the MLflow URI is wrong or the credentials are refused.
        EndpointUnreachableError: the MLflow server cannot be reached.
    """

    def __init__(
        self,
        log_path: str | os.PathLike[str] | None,
        step_name: str,
        pipeline_run: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.log_path = Path(log_path) if log_path else None
        self.step_name = step_name
        self.pipeline_run = pipeline_run or os.environ.get(PIPELINE_RUN_ENV) or ""
        self._client: Any = None
        self._run: _OpenRun | None = None
        if enabled and _tracking_uri():
            self._start_mlflow()

    # -- MLflow ---------------------------------------------------------------------------
    def _start_mlflow(self) -> None:
        # user:password@ in MLFLOW_TRACKING_URI would be printed in MLflow's run links:
        # move it into MLFLOW_TRACKING_USERNAME/PASSWORD first.
        adopt_uri_credentials()
        prepare_mlflow_client()
        check_mlflow()  # seconds, one line naming the fix (not MLflow's minutes of retries)
        from mlflow import MlflowClient

        with self._errors("starting the run"):
            client = MlflowClient()
            run = start_step_run(client, self.step_name, pipeline_run=self.pipeline_run)
        self._client = client
        self._run = _OpenRun(client, run.info.run_id, self.step_name)
        _register(self._run)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TrackingError(
                f"MLflow at {safe_uri(_tracking_uri())} failed while {doing} of "
                f"{self.step_name}: {text}. Fix: check that the tracking server is up (the "
                "step can be rerun; a training step resumes from its checkpoint)"
            ) from None

    @property
    def mlflow_run_id(self) -> str | None:
        """The step's MLflow run id, when logging to MLflow."""
        return self._run.run_id if self._run is not None else None

    @property
    def _live(self) -> bool:
        return self._run is not None and self._run.status is None

    # -- logging --------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (flattened, redacted) parameters."""
        if not self.enabled:
            return
        flat = redact_params(flatten(params))
        self._write({"type": "params", "params": flat})
        if self._live:
            from mlflow.entities import Param

            with self._errors("logging parameters"):
                self._client.log_batch(
                    self.mlflow_run_id, params=[Param(k[:250], v[:6000]) for k, v in flat.items()]
                )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the step run (dataset version, code version, ...)."""
        if not self.enabled:
            return
        self._write({"type": "tags", "tags": dict(tags)})
        if self._live:
            from mlflow.entities import RunTag

            with self._errors("tagging the run"):
                self._client.log_batch(
                    self.mlflow_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]
                )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics; non-finite values are kept in the JSONL as null."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        now = time.time()
        self._write(
            {
                "type": "metrics",
                "step": step,
                "time": now,
                "metrics": {k: (v if math.isfinite(v) else None) for k, v in clean.items()},
            }
        )
        if self._live:
            from mlflow.entities import Metric

            stamp = int(now * 1000)
            finite = [
                Metric(_mlflow_name(k), v, stamp, step or 0)
                for k, v in clean.items()
                if math.isfinite(v)
            ]
            if finite:
                with self._errors("logging metrics"):
                    self._client.log_batch(self.mlflow_run_id, metrics=finite)

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Attach a file (plot, report) to the MLflow run."""
        if self.enabled and self._live:
            with self._errors(f"uploading {Path(local_path).name}"):
                self._client.log_artifact(self.mlflow_run_id, str(local_path), artifact_path)

    def _write(self, record: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def close(self, status: str = "FINISHED") -> None:
        """End the step's MLflow run with ``status`` (FINISHED, FAILED or KILLED); once."""
        if self._run is not None:
            self._run.end(status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.close(run_status_for(exc))
