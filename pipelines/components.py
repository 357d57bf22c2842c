"""The thin KFP components of the retraining pipeline.

Each is a lightweight ``@dsl.component`` on the project image whose body is one
import and one call into :mod:`fashion_attr.orchestration.kfp_adapter`: lightweight (not
container) components are what ``kfp.local.SubprocessRunner`` runs, so the very
same DAG runs on a laptop and on the cluster. The image already holds kfp and
the package, so nothing is pip-installed at run time.

Steps pass their typed results along as artifacts (the result JSON is the
artifact's file): the dataset, the generator and the model. Training and
evaluation inputs include the dataset artifact, whose content names the
dataset version, so KFP's cache never serves a stale step for new data.
Component names are nouns (``classifier_training``), so that the only thing
called ``train_classifier`` is the step module.
"""

import os

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

#: The project image (docker/Dockerfile). Override at compile time with FA_IMAGE.
BASE_IMAGE = os.environ.get("FA_IMAGE", "fashion-attr:0.1.0")


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
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


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
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
):
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


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
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


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gan_training(
    dataset: Input[Dataset],
    storage_uri: str,
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
        preset=preset,
        overrides=overrides,
        reuse_generator=reuse_generator,
        gpus=gpus,
        nodes=nodes,
        job_kind=job_kind,
        image=image,
        generator=generator,
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def classifier_training(
    dataset: Input[Dataset],
    generator: Input[Model],
    storage_uri: str,
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
        preset=preset,
        overrides=overrides,
        gpus=gpus,
        nodes=nodes,
        job_kind=job_kind,
        image=image,
        model=model,
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluation(
    dataset: Input[Dataset],
    model: Input[Model],
    storage_uri: str,
    preset: str,
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
        preset=preset,
        metrics=metrics,
        report=report,
        plots=plots,
        result=result,
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
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
        result=result,
    )
