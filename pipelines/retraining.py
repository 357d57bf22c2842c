"""The ``fashion-attr-retraining`` DAG and where each step runs.

::

    preprocess_part x N (ParallelFor) -> preprocess_merge -> train_gan (GPU)
        -> train_classifier (GPU, frozen generator) -> evaluate (GPU) -> register (CPU)

Placement (kfp-kubernetes) is declared here beside each task and nowhere else:
GPU steps request ``nvidia.com/gpu``, select the GPU node pool, tolerate the
``nvidia.com/gpu`` NoSchedule taint, mount a memory-backed ``/dev/shm`` for
data loader workers and retry on preemption; CPU steps stay on the default
pool. S3 and MLflow credentials come from Kubernetes secrets as environment
variables, never from parameters. Caching is on for training and evaluation,
whose inputs include the dataset version; ingest and registration always run.

Compile with ``make compile`` (writes ``build/fashion-attr-retraining.yaml``)
or ``python -m pipelines.retraining --output PATH``.
"""

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from pipelines import components as c

PIPELINE_NAME = "fashion-attr-retraining"

#: Placement defaults; override at compile time with environment variables.
GPU_NODE_LABEL_KEY = os.environ.get("FA_GPU_NODE_LABEL_KEY", "node-pool")
GPU_NODE_LABEL_VALUE = os.environ.get("FA_GPU_NODE_LABEL_VALUE", "gpu")
GPUS_PER_STEP = int(os.environ.get("FA_GPUS_PER_STEP", "1"))
SHM_SIZE = os.environ.get("FA_SHM_SIZE", "16Gi")
OBJECT_STORE_SECRET = os.environ.get("FA_OBJECT_STORE_SECRET", "object-store-credentials")
MLFLOW_SECRET = os.environ.get("FA_MLFLOW_SECRET", "mlflow-credentials")
OBJECT_STORE_CONFIG = os.environ.get("FA_OBJECT_STORE_CONFIG", "object-store-config")
PIPELINE_CONFIG = os.environ.get("FA_PIPELINE_CONFIG", "pipeline-config")

#: Labels the NetworkPolicies in k8s/ use to let pipeline pods reach MLflow and the store.
POD_LABELS = {"app.kubernetes.io/part-of": "fashion-attr-pipeline"}


def _credentials(task: dsl.PipelineTask, mlflow: bool = False) -> None:
    """Credentials from secrets and settings from config maps, as environment variables.

    Names match ``k8s/base`` (secrets ``object-store-credentials`` and
    ``mlflow-credentials``; config maps ``object-store-config`` and
    ``pipeline-config``). The S3 endpoint is a setting, not a secret: only
    S3-compatible stores (the MinIO overlay) set it.
    """
    kubernetes.use_secret_as_env(
        task,
        secret_name=OBJECT_STORE_SECRET,
        secret_key_to_env={
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        },
    )
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=OBJECT_STORE_CONFIG,
        config_map_key_to_env={
            "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
        },
        optional=True,
    )
    if mlflow:
        kubernetes.use_secret_as_env(
            task,
            secret_name=MLFLOW_SECRET,
            secret_key_to_env={
                "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
            },
        )
        kubernetes.use_config_map_as_env(
            task,
            config_map_name=PIPELINE_CONFIG,
            config_map_key_to_env={
                "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                "MLFLOW_EXPERIMENT_NAME": "MLFLOW_EXPERIMENT_NAME",
            },
        )
    for key, value in POD_LABELS.items():
        kubernetes.add_pod_label(task, key, value)


def _on_gpu(task: dsl.PipelineTask, gpus: int, memory: str = "64Gi", cpu: str = "8") -> None:
    """Place a task on the GPU pool with shared memory and preemption retries."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.add_node_selector(task, GPU_NODE_LABEL_KEY, GPU_NODE_LABEL_VALUE)
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
    )
    # Preemptible GPU nodes: retry; the step resumes from its last checkpoint.
    task.set_retry(num_retries=3, backoff_duration="60s", backoff_factor=2.0)


def _on_cpu(task: dsl.PipelineTask, memory: str = "4Gi", cpu: str = "2") -> None:
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    task.set_retry(num_retries=2, backoff_duration="30s")


@dsl.pipeline(
    name=PIPELINE_NAME,
    description=(
        "Retrain the fashion attribute classifier (Ye et al., HABP + MR-GAN + Deact): ingest "
        "DeepFashion-C or a new catalog batch into versioned shards, train MR-GAN with "
        "decorrelation, train the classifier with HABP + Deact, evaluate, register in MLflow "
        "and gate the champion."
    ),
)
def retraining(
    source_uri: str = "demo://?images=600&seed=0",
    storage_uri: str = "s3://fashion-attr",
    batch_uri: str = "none",
    base_version: str = "none",
    preset: str = "tiny",
    gan_overrides: str = "none",
    classifier_overrides: str = "none",
    reuse_generator: str = "none",
    ingest_parts: list = [0],  # noqa: B006 - KFP reads the default from the signature
    ingest_workers: int = 4,
    gpus_per_step: int = GPUS_PER_STEP,
    train_nodes: int = 1,
    train_job_kind: str = "trainjob",
    model_name: str = "fashion-attr",
    gate_metrics: str = "attr_recall@3/all,attr_recall@3/tail,cat_top3_acc",
    gate_tolerance: float = 0.005,
) -> str:
    """Run the whole retraining DAG.

    Args:
        source_uri: DeepFashion-C root (local path or s3://bucket/prefix); the default
            demo://?images=600&seed=0 generates the embedded demo dataset.
        storage_uri: Where dataset versions and step outputs are written (s3:// or a path).
        batch_uri: New catalog batch (DeepFashion-C folder or .jsonl), or "none".
        base_version: Dataset version the batch extends (id or URI), or "none".
        preset: Configuration preset: tiny, mnist, paper or paper-cb.
        gan_overrides: train_gan overrides, JSON list or comma-separated key=value, or "none".
        classifier_overrides: train_classifier overrides, same format, or "none".
        reuse_generator: URI of an existing generator.pt to skip GAN training, or "none".
        ingest_parts: Part indices of a fanned-out ingest, e.g. [0, 1, 2, 3] for 4 pods.
        ingest_workers: Decode/encode processes per ingest pod.
        gpus_per_step: GPUs per training pod (torchrun over all of them when > 1).
        train_nodes: GPU nodes per training step; more than 1 launches a distributed
            training job (needs an s3:// storage_uri).
        train_job_kind: Job type when train_nodes > 1: trainjob (Kubeflow Trainer v2) or
            pytorchjob (Training Operator v1).
        model_name: MLflow registered model name.
        gate_metrics: Comma-separated metrics the challenger must not lose on.
        gate_tolerance: Allowed drop per gated metric (fraction, e.g. 0.005 = 0.5 points).

    Returns:
        The registration summary (JSON): model name, version, alias, gate decision.
    """
    with dsl.ParallelFor(items=ingest_parts, name="ingest-parts") as part:
        part_task = c.preprocess_part(
            source_uri=source_uri,
            storage_uri=storage_uri,
            preset=preset,
            part=part,
            parts=ingest_parts,
            batch_uri=batch_uri,
            base_version=base_version,
            workers=ingest_workers,
        )
        part_task.set_display_name("preprocess (part)")
        part_task.set_caching_options(False)  # source content may change under one URI
        _credentials(part_task)
        _on_cpu(part_task, memory="8Gi", cpu="4")

    merge = c.preprocess_merge(
        source_uri=source_uri,
        storage_uri=storage_uri,
        preset=preset,
        parts=ingest_parts,
        batch_uri=batch_uri,
        base_version=base_version,
    ).after(part_task)
    merge.set_display_name("preprocess (merge)")
    merge.set_caching_options(False)
    _credentials(merge)
    _on_cpu(merge)

    gan = c.train_gan(
        dataset_uri=merge.outputs["uri"],
        dataset_version=merge.outputs["version"],
        storage_uri=storage_uri,
        preset=preset,
        overrides=gan_overrides,
        reuse_generator=reuse_generator,
        gpus=gpus_per_step,
        nodes=train_nodes,
        job_kind=train_job_kind,
        image=c.BASE_IMAGE,
    )
    gan.set_display_name("train MR-GAN")
    gan.set_caching_options(True)
    _credentials(gan, mlflow=True)
    _on_gpu(gan, gpus_per_step)

    clf = c.train_classifier(
        dataset_uri=merge.outputs["uri"],
        dataset_version=merge.outputs["version"],
        generator=gan.outputs["generator"],
        storage_uri=storage_uri,
        preset=preset,
        overrides=classifier_overrides,
        gpus=gpus_per_step,
        nodes=train_nodes,
        job_kind=train_job_kind,
        image=c.BASE_IMAGE,
    )
    clf.set_display_name("train classifier (HABP + Deact)")
    clf.set_caching_options(True)
    _credentials(clf, mlflow=True)
    _on_gpu(clf, gpus_per_step)

    ev = c.evaluate(
        dataset_uri=merge.outputs["uri"],
        dataset_version=merge.outputs["version"],
        model=clf.outputs["model"],
        storage_uri=storage_uri,
        preset=preset,
    )
    ev.set_display_name("evaluate")
    ev.set_caching_options(True)
    _credentials(ev, mlflow=True)
    _on_gpu(ev, 1, memory="32Gi", cpu="8")

    reg = c.register(
        dataset_version=merge.outputs["version"],
        model=clf.outputs["model"],
        evaluation=ev.outputs["evaluation"],
        pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        preset=preset,
        model_name=model_name,
        gate_metrics=gate_metrics,
        tolerance=gate_tolerance,
    )
    reg.set_display_name("register + gate")
    reg.set_caching_options(False)  # the champion may have changed since
    _credentials(reg, mlflow=True)
    _on_cpu(reg)
    return reg.outputs["Output"]


def compile_pipeline(output: str | os.PathLike[str]) -> Path:
    """Compile the DAG to a KFP IR YAML file."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(retraining, package_path=str(path), pipeline_name=PIPELINE_NAME)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipelines.retraining --output build/fashion-attr-retraining.yaml``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="build/fashion-attr-retraining.yaml")
    args = parser.parse_args(argv)
    print(compile_pipeline(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
