"""The KFP adapter: pipeline parameters and artifacts in, step configs and results out.

Each component in ``pipelines/components.py`` calls the function of its name here. This
module never imports kfp: an artifact is anything with ``.path`` and ``.metadata`` (and
``log_metric`` for metrics), as KFP passes at run time. A function resolves the step's
config (preset + overrides), calls the step's ``run`` (training steps through
:func:`~fashion_attr.orchestration.executor.execute`) inside
:func:`~fashion_attr.orchestration.executor.task_attempt` (clean message, exit code 2,
3 or 130, a user error not retried with the same inputs), and stores the typed result in
its output artifact, where the next step reads it: no file name is guessed.

Large outputs live under ``storage_uri``: ``datasets/<version>/`` and
``runs/<step>/<key>/``, ``key`` naming everything that changes the step's result
(:func:`~fashion_attr.orchestration.identity.output_key`: data, resolved config, code
version and image, placement). A retried pod resumes from its own checkpoint; new data,
new code or another GPU count get a new folder; identical inputs find the finished
result. KFP's cache is not relied upon: :func:`plan` decides before any GPU task whether
there is anything new to train (the DAG skips the GPU tasks when there is not).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel

from fashion_attr import storage
from fashion_attr.config import (
    ClassifierConfig,
    EvaluateConfig,
    GanConfig,
    PreprocessConfig,
    RegisterConfig,
    config_to_dict,
)
from fashion_attr.orchestration.executor import check_gpus, execute, task_attempt
from fashion_attr.orchestration.identity import Placement, output_key, training_key
from fashion_attr.orchestration.params import config, names, optional, overrides
from fashion_attr.results import (
    AuditResult,
    EvaluateResult,
    PreprocessResult,
    StepResult,
    TrainClassifierResult,
    TrainGanResult,
)
from fashion_attr.steps import evaluate, preprocess, register
from fashion_attr.version import code_version

#: ``plan``'s decisions.
TRAIN, UNCHANGED = "train", "unchanged"

R = TypeVar("R", bound=StepResult)


class Artifact(Protocol):
    """The part of a KFP artifact this module uses."""

    uri: str
    path: str
    metadata: dict[str, Any]


def _out(storage_uri: str, step: str, placement: Placement | None = None, **parts: Any) -> str:
    return storage.join(storage_uri, "runs", step, output_key(placement=placement, **parts))


def _store(artifact: Artifact, result: R) -> R:
    """Keep a step's result in its output artifact (metadata for the UI + the artifact file)."""
    data = json.loads(result.model_dump_json())
    artifact.metadata.update({k: v for k, v in data.items() if isinstance(v, str | int | float)})
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(result.model_dump_json(indent=1))
    return result


def _load(artifact: Artifact, result_type: type[R]) -> R:
    try:
        return result_type.model_validate_json(Path(artifact.path).read_text())
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(
            f"input artifact {artifact.path} is not a {result_type.step} result ({exc}). Fix: "
            "run the pipeline from the start with this version of the project"
        ) from None


def _nest_under(pipeline_run: str) -> None:
    """Steps log their MLflow runs nested under the pipeline run's parent (``Tracker``)."""
    os.environ["FA_PIPELINE_RUN"] = pipeline_run


def _source_files(source: str | None) -> list[str]:
    """What of a source a fix is made in (annotations, partition), for retry fingerprints."""
    if not source or source.startswith("demo://"):
        return []
    return [storage.join(source, "Anno"), storage.join(source, "Eval")]


def validation(*, storage_uri: str, pipeline_run: str, **params: Any) -> list[int]:
    """Check every input before any work (:mod:`.preflight`); plan the ingest fan-out."""
    from fashion_attr.orchestration.preflight import check_pipeline_inputs

    # No attempt record (scope ""): the task is never retried automatically, and a person's
    # "Retry" after a fix must check again.
    with task_attempt("validation", storage_uri, ""):
        for key in ("gan_overrides", "classifier_overrides"):
            params[key] = overrides(params[key])
        params["gate_metrics"] = names(params["gate_metrics"])
        inputs = {k: optional(v) for k, v in params.items()}
        checked = check_pipeline_inputs(storage_uri=storage_uri, **inputs)
        for note in checked.notes:
            print(f"validation: {note}")
        if int(inputs.get("train_nodes") or 1) > 1:
            _reap_orphaned_jobs()
        print(f"validation: every input checks out; ingest in {len(checked.parts)} part(s)")
        return checked.parts


def _reap_orphaned_jobs() -> None:
    """Free the GPUs of jobs whose launchers died (a cancelled night): see reap_orphans."""
    import logging

    from fashion_attr import cluster

    namespace = os.environ.get("FA_NAMESPACE") or cluster.in_cluster_namespace()
    try:
        for job in cluster.reap_orphans(namespace):
            print(f"validation: deleted the orphaned training job {job} (its launcher is gone)")
    except Exception as exc:  # a convenience: never a reason to fail the run
        logging.getLogger(__name__).warning("could not look for orphaned training jobs: %s", exc)


def _ingest(part: int | None, p: dict[str, Any]) -> PreprocessResult | None:
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


def _ingest_attempt(task: str, pipeline_run: str, params: dict[str, Any]) -> Any:
    stamped = [optional(params["batch_uri"]) or "", *_source_files(optional(params["source_uri"]))]
    return task_attempt(task, params["storage_uri"], pipeline_run, inputs=params, stamped=stamped)


def ingest_part(*, part: int, pipeline_run: str, **params: Any) -> None:
    """One part of a fanned-out full ingest."""
    with _ingest_attempt(f"ingest-part-{part}", pipeline_run, {**params, "part": part}):
        _ingest(part, params)


def ingest(*, pipeline_run: str, dataset: Artifact, **params: Any) -> str:
    """Publish the version: merge the parts, ingest whole, or fold pending catalog batches."""
    with _ingest_attempt("ingest", pipeline_run, params):
        ingested = _ingest(None, params)
        assert ingested is not None  # None only for a part of a fan-out
        result = _store(dataset, ingested)
        print(f"ingest: dataset version {result.version} ({result.status}) at {result.uri}")
        return result.version


def _placement(gpus: int, nodes: int, job_kind: str, image: str) -> Placement:
    return Placement(gpus, nodes, job_kind, optional(image))


def _training_parts(
    data: PreprocessResult,
    *,
    preset: str,
    gan_overrides: str,
    classifier_overrides: str,
    reuse_generator: str,
    placement: Placement,
) -> dict[str, Any]:
    """Everything a training's result depends on, but the code (see ``training_key``)."""
    return {
        "dataset": data.version,
        "gan": config_to_dict(config(GanConfig, preset, gan_overrides)),
        "classifier": config_to_dict(config(ClassifierConfig, preset, classifier_overrides)),
        "evaluate": config_to_dict(config(EvaluateConfig, preset)),
        "reuse_generator": optional(reuse_generator),
        "placement": placement.identity(),
    }


def plan(
    *,
    dataset: Artifact,
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    gan_overrides: str,
    classifier_overrides: str,
    reuse_generator: str,
    model_name: str,
    gpus: int,
    nodes: int,
    job_kind: str,
    image: str,
    report: Artifact,
) -> tuple[str, str]:
    """Decide, on the CPU, whether this run has anything new to train.

    The run's training key (dataset version, code version, resolved configs, placement)
    is looked up among the registered versions of ``model_name``
    (:func:`fashion_attr.registry.lineage.find_trained`). Found: nothing changed since
    that version was trained, so the DAG skips the GPU tasks and registers nothing. This
    does not depend on KFP's cache (whose key holds the input artifacts' ids, new in
    every run).

    Returns:
        ``("train" or "unchanged", training key)``; the reason is printed and written to
        the Markdown ``report`` (the KFP UI shows it).
    """
    from fashion_attr.registry.lineage import find_trained

    with task_attempt("plan", storage_uri, pipeline_run):
        data = _load(dataset, PreprocessResult)
        placement = _placement(gpus, nodes, job_kind, image)
        parts = _training_parts(
            data,
            preset=preset,
            gan_overrides=gan_overrides,
            classifier_overrides=classifier_overrides,
            reuse_generator=reuse_generator,
            placement=placement,
        )
        key = training_key(**parts)
        match = find_trained(model_name, key)
        if match is None:
            decision = TRAIN
            reason = (
                f"dataset {data.version} with code {code_version()} and these configs and "
                f"placement was never trained for {model_name}: training"
            )
        else:
            decision = UNCHANGED
            role = (
                "the champion"
                if match.champion
                else f"a challenger; the champion is version {match.champion_version}"
            )
            reason = (
                f"nothing new: dataset {data.version}, code {code_version()}, configs and "
                f"placement are those of {model_name} version {match.version} ({role}); no "
                "GPU task runs and no version is registered"
            )
        print(f"plan: {reason}")
        Path(report.path).parent.mkdir(parents=True, exist_ok=True)
        Path(report.path).write_text(f"# Plan: {decision}\n\n{reason}.\n\nTraining key `{key}`.\n")
        return decision, key


def unchanged(*, plan_decision: str, training_key: str, model_name: str) -> str:
    """The run's summary when :func:`plan` found nothing new (what registration returns)."""
    summary = {
        "name": model_name,
        "version": None,
        "alias": None,
        "skipped": True,
        "decision": plan_decision,
        "training_key": training_key,
        "reason": "nothing new since the registered version with this training key",
    }
    print(f"unchanged: {summary['reason']}; no model version registered")
    return json.dumps(summary)


def audit(
    *,
    dataset: Artifact,
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    model_name: str,
    gpus: int,
    audited: Artifact,
    result: Artifact,
    report: Artifact,
    report_html: Artifact,
    metrics: Any,
) -> str:
    """Audit the catalog batches this run folded in, with the champion, before training.

    Writes ``label_issues.jsonl``, ``drift.json``, ``tags.jsonl``, ``to_label.jsonl`` and the
    reports beside the dataset version (:mod:`fashion_attr.steps.audit`), fills the KFP
    Markdown, HTML and Metrics outputs, and hands training the version to train on
    (``audited``: the ingest's, or the one ``audit.label_issues=exclude|downweight``
    derived). A run that folded no batch (a full ingest, or a code change on old data) has
    nothing to audit and passes the version through.
    """
    from fashion_attr.config import AuditConfig
    from fashion_attr.steps import audit as audit_step

    _nest_under(pipeline_run)
    with task_attempt("audit", storage_uri, pipeline_run):
        check_gpus("audit", gpus)
        data = _load(dataset, PreprocessResult)
        if data.base is None or not data.chain:
            text = f"# Audit\n\nNothing to audit: {data.version} folds in no new catalog batch.\n"
            print(f"audit: nothing to audit in {data.version} (no batch folded in by this run)")
            done = None
        else:
            done = audit_step.run(
                config(AuditConfig, preset),
                data.uri,
                base=data.base,
                champion=f"models:/{model_name}@champion",
                dest=storage.join(storage_uri, "datasets"),
                progress=True,
            )
            text = storage.read_text(done.files["report_md"]) if "report_md" in done.files else ""
            html = done.files.get("report_html")
            if html:
                Path(report_html.path).parent.mkdir(parents=True, exist_ok=True)
                Path(report_html.path).write_text(storage.read_text(html))
            for name, value in sorted(done.metrics.items()):
                metrics.log_metric(name, value)
            print(
                f"audit: {done.status}: {done.label_issues} label issue(s), drift "
                f"{'flagged' if done.drift_flagged else 'not flagged'}, {done.tagged} tagged; "
                f"files in {done.out}"
            )
        Path(report.path).parent.mkdir(parents=True, exist_ok=True)
        Path(report.path).write_text(text)
        if done is not None:
            _store(result, done)
            data = data.model_copy(
                update={"version": done.dataset_version, "uri": done.dataset_uri}
            )
        else:
            Path(result.path).parent.mkdir(parents=True, exist_ok=True)
            Path(result.path).write_text("{}")
        return _store(audited, data).version


def _train(
    step: str,
    cfg_type: type[BaseModel],
    output: Artifact,
    *,
    dataset: Artifact,
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    overrides: str,
    gpus: int,
    nodes: int,
    job_kind: str,
    image: str,
    **inputs: Any,
) -> StepResult:
    placement = _placement(gpus, nodes, job_kind, image)
    _nest_under(pipeline_run)
    # Passing a generator through needs no GPU and no cluster job.
    run_on = Placement() if inputs.get("reuse_generator") else placement
    with task_attempt(step, storage_uri, pipeline_run, inputs={"overrides": overrides, **inputs}):
        data = _load(dataset, PreprocessResult)
        cfg = config(cfg_type, preset, overrides)
        out = _out(
            storage_uri,
            step,
            placement,
            data=data.uri,
            cfg=cfg.model_dump(mode="json"),
            **inputs,
        )
        result = execute(
            step, cfg, data=data.uri, out=out, placement=run_on, owner=pipeline_run, **inputs
        )
        return _store(output, result)


def gan_training(*, generator: Artifact, reuse_generator: str, **params: Any) -> str:
    """Train MR-GAN (or check and pass through ``reuse_generator``); returns its URI."""
    reuse = optional(reuse_generator)
    trained = _train("train_gan", GanConfig, generator, reuse_generator=reuse, **params)
    return cast(TrainGanResult, trained).generator


def classifier_training(*, generator: Artifact, model: Artifact, **params: Any) -> str:
    """Train the classifier with HABP + Deact on the frozen generator; returns the model URI."""
    gen = _load(generator, TrainGanResult).generator
    trained = _train("train_classifier", ClassifierConfig, model, generator=gen, **params)
    return cast(TrainClassifierResult, trained).model


def evaluation(
    *,
    dataset: Artifact,
    model: Artifact,
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    gpus: int,
    metrics: Any,
    report: Artifact,
    plots: Artifact,
    result: Artifact,
) -> str:
    """Evaluate on the test split; fill the KFP Metrics, Markdown and HTML artifacts."""
    from fashion_attr.evaluation.report import plots_html

    _nest_under(pipeline_run)
    with task_attempt("evaluation", storage_uri, pipeline_run):
        check_gpus("evaluation", gpus)
        data = _load(dataset, PreprocessResult)
        trained = _load(model, TrainClassifierResult)
        cfg = config(EvaluateConfig, preset)
        out = _out(
            storage_uri, "evaluation", data=data.uri, model=trained.model, cfg=cfg.model_dump()
        )
        try:
            done = EvaluateResult.read(out)  # these inputs were evaluated already
        except (FileNotFoundError, ValueError):
            done = evaluate.run(cfg, trained.model, data.uri, out)
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
    training_key: str,
    gpus: int,
    audit_result: Artifact,
    result: Artifact,
) -> str:
    """Register in MLflow and gate on paired figures (the champion scored on the same split)."""
    from fashion_attr.registry.lineage import TRAINING_KEY_TAG

    with task_attempt("registration", storage_uri, pipeline_run):
        check_gpus("registration", gpus)
        data = _load(dataset, PreprocessResult)
        trained = _load(model, TrainClassifierResult)
        scored = _load(evaluation, EvaluateResult)
        audited = Path(audit_result.path).read_text().strip()
        audit_done = AuditResult.model_validate_json(audited) if audited not in ("", "{}") else None
        gate: dict[str, Any] = {
            "tolerance": gate_tolerance,
            "gate_metrics": names(gate_metrics) or None,
        }
        cfg = config(RegisterConfig, preset, model_name=model_name, **gate)
        done = register.run(
            cfg,
            trained.model,
            scored.metrics_uri,
            pipeline_run=pipeline_run,
            data=data.uri,
            evaluate_config=config(EvaluateConfig, preset),
            dataset_version=trained.dataset_version,
            code_version=code_version(),
            reports=[*scored.files, trained.metrics_log],
            lineage_tags={TRAINING_KEY_TAG: training_key},
            per_attribute=scored.per_attribute,
            audit=audit_done,
        )
        return _store(result, done).to_json()
