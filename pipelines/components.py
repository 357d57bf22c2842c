"""The thin KFP components of the retraining pipeline.

Each is a lightweight component on the project image whose body is one import and one
call into :mod:`fashion_attr.orchestration.kfp_adapter`: lightweight (not container)
components are what ``kfp.local.SubprocessRunner`` runs, so the very same DAG runs on a
laptop and on the cluster. The image already holds kfp and the package, so nothing is
pip-installed at run time.

The functions below are plain; :func:`make_components` turns them into components for
one image (a compile-time setting, :class:`pipelines.settings.CompileSettings`), so
nothing is read from the environment when this module is imported. Steps pass their
typed results along as artifacts (the result JSON is the artifact's file): the dataset,
the generator and the model. Component names are nouns (``classifier_training``), so
that the only thing called ``train_classifier`` is the step module.
"""

from types import SimpleNamespace
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def validation(
    source_uri: str,
    storage_uri: str,
    batch_uri: str,
    base_version: str,
    preset: str,
    gan_overrides: str,
    classifier_overrides: str,
    reuse_generator: str,
    ingest_parts: int,
    model_name: str,
    gate_metrics: str,
    gate_tolerance: float,
    train_nodes: int,
    pipeline_run: str,
) -> list[int]:
    """Check every parameter, override, URI and credential in seconds, before any work."""
    from fashion_attr.orchestration import kfp_adapter

    return kfp_adapter.validation(
        source_uri=source_uri,
        storage_uri=storage_uri,
        batch_uri=batch_uri,
        base_version=base_version,
        preset=preset,
        gan_overrides=gan_overrides,
        classifier_overrides=classifier_overrides,
        reuse_generator=reuse_generator,
        ingest_parts=ingest_parts,
        model_name=model_name,
        gate_metrics=gate_metrics,
        gate_tolerance=gate_tolerance,
        train_nodes=train_nodes,
        pipeline_run=pipeline_run,
    )


def ingest_part(
    source_uri: str,
    storage_uri: str,
    preset: str,
    part: int,
    parts: int,
    batch_uri: str,
    base_version: str,
    workers: int,
    pipeline_run: str,
) -> None:
    """Validate, crop and shard one part of DeepFashion-C (component 1, fanned out)."""
    from fashion_attr.orchestration import kfp_adapter

    kfp_adapter.ingest_part(
        source_uri=source_uri,
        storage_uri=storage_uri,
        preset=preset,
        part=part,
        parts=parts,
        batch_uri=batch_uri,
        base_version=base_version,
        workers=workers,
        pipeline_run=pipeline_run,
    )


def ingest(
    source_uri: str,
    storage_uri: str,
    preset: str,
    parts: int,
    batch_uri: str,
    base_version: str,
    workers: int,
    pipeline_run: str,
    dataset: Output[Dataset],
) -> str:
    """Publish the dataset version: merge the parts, or fold new catalog batches (component 1)."""
    from fashion_attr.orchestration import kfp_adapter

    return kfp_adapter.ingest(
        source_uri=source_uri,
        storage_uri=storage_uri,
        preset=preset,
        parts=parts,
        batch_uri=batch_uri,
        base_version=base_version,
        workers=workers,
        pipeline_run=pipeline_run,
        dataset=dataset,
    )


def plan(
    dataset: Input[Dataset],
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
    report: Output[Markdown],
) -> NamedTuple("PlanOutputs", [("decision", str), ("training_key", str)]):  # type: ignore[valid-type]  # KFP reads this call form
    """Decide on the CPU, before any GPU task, whether there is anything new to train."""
    from fashion_attr.orchestration import kfp_adapter

    decision, key = kfp_adapter.plan(
        dataset=dataset,
        storage_uri=storage_uri,
        pipeline_run=pipeline_run,
        preset=preset,
        gan_overrides=gan_overrides,
        classifier_overrides=classifier_overrides,
        reuse_generator=reuse_generator,
        model_name=model_name,
        gpus=gpus,
        nodes=nodes,
        job_kind=job_kind,
        image=image,
        report=report,
    )
    from collections import namedtuple

    PlanOutputs = namedtuple("PlanOutputs", ["decision", "training_key"])
    return PlanOutputs(decision, key)


def unchanged(plan_decision: str, training_key: str, model_name: str) -> str:
    """Nothing new to train: say so, register nothing (the run's output)."""
    from fashion_attr.orchestration import kfp_adapter

    return kfp_adapter.unchanged(
        plan_decision=plan_decision, training_key=training_key, model_name=model_name
    )


def audit(
    dataset: Input[Dataset],
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    model_name: str,
    gpus: int,
    audited: Output[Dataset],
    result: Output[Artifact],
    report: Output[Markdown],
    report_html: Output[HTML],
    metrics: Output[Metrics],
) -> str:
    """Audit the new catalog batches with the champion: label issues, drift, tags (1b)."""
    from fashion_attr.orchestration import kfp_adapter

    return kfp_adapter.audit(
        dataset=dataset,
        storage_uri=storage_uri,
        pipeline_run=pipeline_run,
        preset=preset,
        model_name=model_name,
        gpus=gpus,
        audited=audited,
        result=result,
        report=report,
        report_html=report_html,
        metrics=metrics,
    )


def gan_training(
    dataset: Input[Dataset],
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    overrides: str,
    reuse_generator: str,
    gpus: int,
    nodes: int,
    job_kind: str,
    image: str,
    generator: Output[Model],
) -> str:
    """Train the conditional MR-GAN with decorrelation (component 2)."""
    from fashion_attr.orchestration import kfp_adapter

    return kfp_adapter.gan_training(
        dataset=dataset,
        storage_uri=storage_uri,
        pipeline_run=pipeline_run,
        preset=preset,
        overrides=overrides,
        reuse_generator=reuse_generator,
        gpus=gpus,
        nodes=nodes,
        job_kind=job_kind,
        image=image,
        generator=generator,
    )


def classifier_training(
    dataset: Input[Dataset],
    generator: Input[Model],
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    overrides: str,
    gpus: int,
    nodes: int,
    job_kind: str,
    image: str,
    model: Output[Model],
) -> str:
    """Train the classifier with HABP + Deact using the frozen generator (component 3)."""
    from fashion_attr.orchestration import kfp_adapter

    return kfp_adapter.classifier_training(
        dataset=dataset,
        generator=generator,
        storage_uri=storage_uri,
        pipeline_run=pipeline_run,
        preset=preset,
        overrides=overrides,
        gpus=gpus,
        nodes=nodes,
        job_kind=job_kind,
        image=image,
        model=model,
    )


def evaluation(
    dataset: Input[Dataset],
    model: Input[Model],
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    gpus: int,
    metrics: Output[Metrics],
    report: Output[Markdown],
    plots: Output[HTML],
    result: Output[Artifact],
) -> str:
    """Evaluate on the test split: metrics, Markdown report and plots (component 4a)."""
    from fashion_attr.orchestration import kfp_adapter

    return kfp_adapter.evaluation(
        dataset=dataset,
        model=model,
        storage_uri=storage_uri,
        pipeline_run=pipeline_run,
        preset=preset,
        gpus=gpus,
        metrics=metrics,
        report=report,
        plots=plots,
        result=result,
    )


def registration(
    dataset: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Artifact],
    storage_uri: str,
    pipeline_run: str,
    preset: str,
    model_name: str,
    gate_metrics: str,
    gate_tolerance: float,
    training_key: str,
    gpus: int,
    audit_result: Input[Artifact],
    result: Output[Artifact],
) -> str:
    """Register in MLflow and apply the like-for-like promotion gate (component 4b)."""
    from fashion_attr.orchestration import kfp_adapter

    return kfp_adapter.registration(
        dataset=dataset,
        model=model,
        evaluation=evaluation,
        storage_uri=storage_uri,
        pipeline_run=pipeline_run,
        preset=preset,
        model_name=model_name,
        gate_metrics=gate_metrics,
        gate_tolerance=gate_tolerance,
        training_key=training_key,
        gpus=gpus,
        audit_result=audit_result,
        result=result,
    )


#: Every component function, in DAG order.
FUNCTIONS = (
    validation,
    ingest_part,
    ingest,
    plan,
    unchanged,
    audit,
    gan_training,
    classifier_training,
    evaluation,
    registration,
)


def make_components(image: str) -> SimpleNamespace:
    """The components above as lightweight KFP components on ``image``, by name."""
    return SimpleNamespace(
        **{
            fn.__name__: dsl.component(base_image=image, install_kfp_package=False)(fn)
            for fn in FUNCTIONS
        }
    )
