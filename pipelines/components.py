"""The thin KFP components of the retraining pipeline.

Each is a lightweight ``@dsl.component`` on the project image whose body only
imports :mod:`fashion_attr.steps.pipeline_entry` and calls it: lightweight
(not container) components are what ``kfp.local.SubprocessRunner`` runs, so
the very same DAG runs on a laptop and on the cluster. The image already holds
kfp and the package, so nothing is pip-installed at run time.

Training and evaluation take the dataset as two *parameters* (URI and version
id), not as an input artifact: KFP's cache key then depends on the dataset
version, so unchanged data hits the cache and new catalog data never does.
"""

import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

#: The project image (docker/Dockerfile). Override at compile time with FA_IMAGE.
BASE_IMAGE = os.environ.get("FA_IMAGE", "ghcr.io/fashion-attr/fashion-attr:0.1.0")


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def preprocess_part(
    source_uri: str,
    storage_uri: str,
    preset: str,
    part: int,
    parts: list,
    batch_uri: str,
    base_version: str,
    workers: int,
) -> str:
    """Validate, crop and shard one part of DeepFashion-C (or of a new catalog batch)."""
    from fashion_attr.steps import pipeline_entry

    return pipeline_entry.preprocess(
        source_uri=source_uri,
        storage_uri=storage_uri,
        preset=preset,
        part=part,
        parts=parts,
        batch_uri=batch_uri,
        base_version=base_version,
        workers=workers,
        merge=False,
    )[0]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def preprocess_merge(
    source_uri: str,
    storage_uri: str,
    preset: str,
    parts: list,
    batch_uri: str,
    base_version: str,
    dataset: Output[Dataset],
) -> NamedTuple("DatasetRef", uri=str, version=str):
    """Publish the dataset version: write its manifest from the parts (component 1)."""
    from fashion_attr.steps import pipeline_entry

    return pipeline_entry.preprocess(
        source_uri=source_uri,
        storage_uri=storage_uri,
        preset=preset,
        part=0,
        parts=parts,
        batch_uri=batch_uri,
        base_version=base_version,
        merge=True,
        dataset=dataset,
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_gan(
    dataset_uri: str,
    dataset_version: str,
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
    from fashion_attr.steps import pipeline_entry

    return pipeline_entry.train_gan(
        dataset_uri=dataset_uri,
        dataset_version=dataset_version,
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
def train_classifier(
    dataset_uri: str,
    dataset_version: str,
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
    from fashion_attr.steps import pipeline_entry

    return pipeline_entry.train_classifier(
        dataset_uri=dataset_uri,
        dataset_version=dataset_version,
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
def evaluate(
    dataset_uri: str,
    dataset_version: str,
    model: Input[Model],
    storage_uri: str,
    preset: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
    plots: Output[HTML],
    evaluation: Output[Artifact],
) -> str:
    """Evaluate on the test split: metrics, Markdown report and plots (component 4a)."""
    from fashion_attr.steps import pipeline_entry

    return pipeline_entry.evaluate(
        dataset_uri=dataset_uri,
        dataset_version=dataset_version,
        model=model,
        storage_uri=storage_uri,
        preset=preset,
        metrics=metrics,
        report=report,
        plots=plots,
        evaluation=evaluation,
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    dataset_version: str,
    model: Input[Model],
    evaluation: Input[Artifact],
    pipeline_run: str,
    preset: str,
    model_name: str,
    gate_metrics: str,
    tolerance: float,
    registration: Output[Artifact],
) -> str:
    """Register in MLflow and apply the promotion gate (component 4b)."""
    from fashion_attr.steps import pipeline_entry

    return pipeline_entry.register(
        model=model,
        evaluation=evaluation,
        dataset_version=dataset_version,
        pipeline_run=pipeline_run,
        preset=preset,
        model_name=model_name,
        gate_metrics=gate_metrics,
        tolerance=tolerance,
        registration=registration,
    )
