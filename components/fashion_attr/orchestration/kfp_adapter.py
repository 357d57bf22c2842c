"""The KFP adapter: pipeline parameters and artifacts in, step configs and results out.

Each component in ``pipelines/components.py`` calls the function of its name
here. This module never imports kfp: an artifact is anything with ``.path``
and ``.metadata`` (and ``log_metric`` for metrics), as KFP passes at run time.
A function resolves the step's config (preset + overrides), calls the step's
``run`` (training steps through :func:`~fashion_attr.orchestration.executor.execute`)
inside :func:`~fashion_attr.orchestration.executor.task_attempt` (clean message, exit
code 2 or 3, user errors not retried), and stores the typed result in its
output artifact, where the next step reads it: no file name is guessed.

Large outputs live under ``storage_uri``: ``datasets/<version>/`` and
``runs/<step>/<key>/``, ``key`` a hash of the step's inputs and resolved config
(a retried pod resumes from its own checkpoint; new data gets a new folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

from fashion_attr import storage
from fashion_attr.config import (
    ClassifierConfig,
    EvaluateConfig,
    GanConfig,
    PreprocessConfig,
    RegisterConfig,
)
from fashion_attr.orchestration.executor import Placement, execute, task_attempt
from fashion_attr.orchestration.params import config, names, optional, overrides
from fashion_attr.steps import evaluate, preprocess, register
from fashion_attr.steps.train_classifier import TrainClassifierResult
from fashion_attr.steps.train_gan import TrainGanResult


class Artifact(Protocol):
    """The part of a KFP artifact this module uses."""

    uri: str
    path: str
    metadata: dict[str, Any]


def _out(storage_uri: str, step: str, **inputs: Any) -> str:
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return storage.join(storage_uri, "runs", step, key[:16])


def _store(artifact: Artifact, result: Any) -> Any:
    """Keep a step's result in its output artifact (metadata for the UI + the artifact file)."""
    data = json.loads(result.model_dump_json())
    artifact.metadata.update({k: v for k, v in data.items() if isinstance(v, str | int | float)})
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(result.model_dump_json(indent=1))
    return result


def _load(artifact: Artifact, result_type: type) -> Any:
    try:
        return result_type.model_validate_json(Path(artifact.path).read_text())
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(
            f"input artifact {artifact.path} is not a {result_type.step} result ({exc}). Fix: "
            "run the pipeline from the start with this version of the project"
        ) from None


def validation(*, storage_uri: str, pipeline_run: str, **params: Any) -> list[int]:
    """Check every input before any work (:mod:`.preflight`); plan the ingest fan-out."""
    from fashion_attr.orchestration.preflight import check_pipeline_inputs

    with task_attempt("validation", storage_uri, pipeline_run):
        for key in ("gan_overrides", "classifier_overrides"):
            params[key] = overrides(params[key])
        params["gate_metrics"] = names(params["gate_metrics"])
        inputs = {k: optional(v) for k, v in params.items()}
        plan = check_pipeline_inputs(storage_uri=storage_uri, **inputs)
        print(f"validation: every input checks out; ingest in {len(plan.parts)} part(s)")
        return plan.parts


def _ingest(part: int | None, p: dict[str, Any]) -> Any:
    base = optional(p["base_version"])
    if part is not None and (base or p["parts"] <= 1):
        return None  # catalog batches and unsplit ingests: all the work is in `ingest`
    split = p["parts"] > 1 and not base
    return preprocess.run(
        config(PreprocessConfig, p["preset"], workers=max(p["workers"], 1)),
        storage.join(p["storage_uri"], "datasets"),
        source=optional(p["source_uri"]),
        base=base,
        batch=optional(p["batch_uri"]),
        part=part if split else None,
        parts=p["parts"] if split else None,
        merge=split and part is None,
        progress=True,  # lines in the task's log (no terminal): images/s and ETA
    )


def ingest_part(*, part: int, pipeline_run: str, **params: Any) -> None:
    """One part of a fanned-out full ingest."""
    with task_attempt(f"ingest-part-{part}", params["storage_uri"], pipeline_run):
        _ingest(part, params)


def ingest(*, pipeline_run: str, dataset: Artifact, **params: Any) -> str:
    """Publish the version: merge the parts, ingest whole, or fold pending catalog batches."""
    with task_attempt("ingest", params["storage_uri"], pipeline_run):
        result = _store(dataset, _ingest(None, params))
        print(f"ingest: dataset version {result.version} ({result.status}) at {result.uri}")
        return result.version


def _train(
    step: str,
    cfg_type: type,
    output: Artifact,
    *,
    dataset: Artifact,
    storage_uri: str,
    preset: str,
    overrides: str,
    gpus: int,
    nodes: int,
    job_kind: str,
    image: str,
    **inputs: Any,
) -> Any:
    # Passing a generator through needs no GPU and no cluster job.
    placement = Placement(gpus, nodes, job_kind, optional(image))
    if inputs.get("reuse_generator"):
        placement = Placement()
    with task_attempt(step, storage_uri, output.uri):
        data = _load(dataset, preprocess.PreprocessResult)
        cfg = config(cfg_type, preset, overrides)
        out = _out(storage_uri, step, data=data.uri, cfg=cfg.model_dump(mode="json"), **inputs)
        result = execute(step, cfg, data=data.uri, out=out, placement=placement, **inputs)
        return _store(output, result)


def gan_training(*, generator: Artifact, reuse_generator: str, **params: Any) -> str:
    """Train MR-GAN (or check and pass through ``reuse_generator``); returns its URI."""
    reuse = optional(reuse_generator)
    return _train("train_gan", GanConfig, generator, reuse_generator=reuse, **params).generator


def classifier_training(*, generator: Artifact, model: Artifact, **params: Any) -> str:
    """Train the classifier with HABP + Deact on the frozen generator; returns the model URI."""
    gen = _load(generator, TrainGanResult).generator
    return _train("train_classifier", ClassifierConfig, model, generator=gen, **params).model


def evaluation(
    *,
    dataset: Artifact,
    model: Artifact,
    storage_uri: str,
    preset: str,
    metrics: Any,
    report: Artifact,
    plots: Artifact,
    result: Artifact,
) -> str:
    """Evaluate on the test split; fill the KFP Metrics, Markdown and HTML artifacts."""
    from fashion_attr.evaluation.report import plots_html

    with task_attempt("evaluation", storage_uri, result.uri):
        data = _load(dataset, preprocess.PreprocessResult)
        trained = _load(model, TrainClassifierResult)
        cfg = config(EvaluateConfig, preset)
        key = {"data": data.uri, "model": trained.model, "cfg": cfg.model_dump(mode="json")}
        done = evaluate.run(cfg, trained.model, data.uri, _out(storage_uri, "evaluation", **key))
        for name, value in sorted(done.metrics.items()):
            metrics.log_metric(name.replace("@", "_at_").replace("/", "."), value)
        Path(report.path).write_text(storage.read_text(done.report))
        pngs = {Path(uri).name: storage.read_bytes(uri) for uri in done.plots}
        Path(plots.path).write_text(plots_html(pngs))
        return _store(result, done).metrics_uri


def registration(
    *,
    dataset: Artifact,
    model: Artifact,
    evaluation: Artifact,
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    model_name: str,
    gate_metrics: str,
    gate_tolerance: float,
    result: Artifact,
) -> str:
    """Register in MLflow and gate on paired figures (the champion scored on the same split)."""
    from fashion_attr import __version__

    with task_attempt("registration", storage_uri, pipeline_run):
        data = _load(dataset, preprocess.PreprocessResult)
        trained = _load(model, TrainClassifierResult)
        scored = _load(evaluation, evaluate.EvaluateResult)
        gate = {"tolerance": gate_tolerance, "gate_metrics": names(gate_metrics) or None}
        cfg = config(RegisterConfig, preset, model_name=model_name, **gate)
        done = register.run(
            cfg,
            trained.model,
            scored.metrics_uri,
            pipeline_run=pipeline_run,
            data=data.uri,
            evaluate_config=config(EvaluateConfig, preset),
            dataset_version=trained.dataset_version,
            code_version=os.environ.get("FA_CODE_VERSION", __version__),
            reports=[*scored.files, trained.metrics_log],
        )
        return _store(result, done).to_json()
