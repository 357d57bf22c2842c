"""Experiment tracking: a JSON Lines log beside every output, and MLflow when configured.

Every step writes its metrics to ``<out>/metrics.jsonl`` (always, so a run is
inspectable without any server). When ``MLFLOW_TRACKING_URI`` is set, the step
also logs to MLflow: one parent run per pipeline run (found or created by the
tag ``fashion_attr.pipeline_run``), the step as a nested run with its params,
per-epoch metrics and artifacts. Credentials for MLflow come from the
environment (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``) and are
never logged: :func:`fashion_attr.credentials.redact_params` drops anything that looks
like a secret.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fashion_attr.credentials import adopt_uri_credentials, redact_params

__all__ = ["PIPELINE_RUN_TAG", "Tracker", "flatten", "pipeline_parent_run"]

PIPELINE_RUN_TAG = "fashion_attr.pipeline_run"
ROLE_TAG = "fashion_attr.role"


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
        return found[0].info.run_id
    parent = client.create_run(
        experiment_id,
        run_name=f"pipeline-{pipeline_run}",
        tags={PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "pipeline"},
    )
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def _mlflow_name(key: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . / and space; '@' is not allowed.
    return key.replace("@", "_at_")


class Tracker:
    """Log params, metrics and artifacts of one step.

    Args:
        log_path: local JSON Lines file that always receives the metrics.
        step_name: the pipeline step (used as the nested MLflow run name).
        pipeline_run: id shared by all steps of one pipeline run (KFP run id);
            defaults to ``FA_PIPELINE_RUN`` or a fresh id.
        enabled: whether this process logs (False on non-zero DDP ranks).
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
        self.pipeline_run = pipeline_run or os.environ.get("FA_PIPELINE_RUN") or ""
        self._mlflow = None
        self._run = None
        if enabled and os.environ.get("MLFLOW_TRACKING_URI"):
            self._start_mlflow()

    # -- MLflow ---------------------------------------------------------------------------
    def _start_mlflow(self) -> None:
        import mlflow

        # user:password@ in MLFLOW_TRACKING_URI would be printed in MLflow's run links:
        # move it into MLFLOW_TRACKING_USERNAME/PASSWORD first.
        adopt_uri_credentials()
        self._mlflow = mlflow
        experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "fashion-attr"))
        parent_id = None
        if self.pipeline_run:
            parent_id = pipeline_parent_run(
                mlflow.MlflowClient(), experiment.experiment_id, self.pipeline_run
            )
        if parent_id:
            mlflow.start_run(run_id=parent_id)
            self._run = mlflow.start_run(
                run_name=self.step_name,
                nested=True,
                tags={PIPELINE_RUN_TAG: self.pipeline_run, "fashion_attr.step": self.step_name},
            )
        else:
            self._run = mlflow.start_run(
                run_name=self.step_name, tags={"fashion_attr.step": self.step_name}
            )

    @property
    def mlflow_run_id(self) -> str | None:
        """The step's MLflow run id, when logging to MLflow."""
        return self._run.info.run_id if self._run is not None else None

    # -- logging --------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (flattened, redacted) parameters."""
        if not self.enabled:
            return
        flat = redact_params(flatten(params))
        self._write({"type": "params", "params": flat})
        if self._mlflow is not None:
            self._mlflow.log_params({k[:250]: v[:6000] for k, v in flat.items()})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the step run (dataset version, code version, ...)."""
        if not self.enabled:
            return
        self._write({"type": "tags", "tags": dict(tags)})
        if self._mlflow is not None:
            self._mlflow.set_tags(dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics; non-finite values are kept in the JSONL as null."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._write(
            {
                "type": "metrics",
                "step": step,
                "time": time.time(),
                "metrics": {k: (v if math.isfinite(v) else None) for k, v in clean.items()},
            }
        )
        if self._mlflow is not None:
            finite = {_mlflow_name(k): v for k, v in clean.items() if math.isfinite(v)}
            if finite:
                self._mlflow.log_metrics(finite, step=step)

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Attach a file (plot, report) to the MLflow run."""
        if self.enabled and self._mlflow is not None:
            self._mlflow.log_artifact(str(local_path), artifact_path)

    def _write(self, record: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow runs this tracker started."""
        if self._mlflow is not None:
            while self._mlflow.active_run() is not None:
                self._mlflow.end_run(status=status)
            self._mlflow = None
