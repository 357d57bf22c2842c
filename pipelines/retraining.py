"""The ``fashion-attr-retraining`` DAG and where each step runs.

::

    validation -> ingest_part x N (ParallelFor) -> ingest -> gan_training (GPU)
        -> classifier_training (GPU, frozen generator) -> evaluation (GPU) -> registration (CPU)

``validation`` checks every parameter, override, URI and credential in seconds
(:mod:`fashion_attr.orchestration.preflight`) and plans the ingest fan-out: the loop iterates
over its typed ``list[int]`` output, and the loop body receives the part count as a
plain integer (the KFP driver removes the iterated list from the loop body's
inputs, and types untyped list items as strings).

Placement (kfp-kubernetes) is declared here beside each task and nowhere else,
from compile-time settings: the KFP backend cannot read an accelerator count
that is a pipeline parameter (it resolves it to "" and sets no GPU limit), so
``FA_GPUS_PER_STEP`` and ``FA_TRAIN_NODES`` are fixed when the pipeline is
compiled, like the image. GPU steps request ``nvidia.com/gpu``, select the GPU
node pool, tolerate the ``nvidia.com/gpu`` NoSchedule taint, mount a
memory-backed ``/dev/shm`` and retry within a window longer than the longest
training step. With ``FA_TRAIN_NODES`` > 1 the training tasks only launch and
watch a cluster training job, so they request no GPU themselves (a launcher
holding a GPU could starve its own job on a small pool). S3 and MLflow
credentials come from Kubernetes secrets as environment variables, never from
parameters. Caching is on for training and evaluation, whose inputs include the
dataset artifact (which names the dataset version); validation, ingest and
registration always run.

Supported KFP backends: 2.15.0 to 2.17.x (kfp-kubernetes 2.17 writes the
``optional`` field of secret and config-map environment variables, which
backends before 2.15.0 reject or ignore). ``tests/test_kfp_backend_rules.py``
checks the compiled YAML against the backend's run-time rules.

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

#: Compile-time placement (environment variables read when this module is imported).
GPU_NODE_LABEL_KEY = os.environ.get("FA_GPU_NODE_LABEL_KEY", "node-pool")
GPU_NODE_LABEL_VALUE = os.environ.get("FA_GPU_NODE_LABEL_VALUE", "gpu")
#: GPUs per training pod (torchrun over all of them when > 1); 0 trains on the CPU.
GPUS_PER_STEP = int(os.environ.get("FA_GPUS_PER_STEP", "1"))
#: GPU nodes per training step; > 1 launches a TrainJob/PyTorchJob (needs s3:// storage).
TRAIN_NODES = int(os.environ.get("FA_TRAIN_NODES", "1"))
#: The job kind when TRAIN_NODES > 1: trainjob (Kubeflow Trainer) or pytorchjob.
TRAIN_JOB_KIND = os.environ.get("FA_TRAIN_JOB_KIND", "trainjob")
#: The Kubeflow Trainer release of the cluster (2.1, 2.2 or 2.3) for launchers that may not
#: read its CRD (no cluster-scoped RBAC); empty: the launcher reads the CRD.
TRAINER_RELEASE = os.environ.get("FA_TRAINER_RELEASE", "")
SHM_SIZE = os.environ.get("FA_SHM_SIZE", "16Gi")
OBJECT_STORE_SECRET = os.environ.get("FA_OBJECT_STORE_SECRET", "object-store-credentials")
MLFLOW_SECRET = os.environ.get("FA_MLFLOW_SECRET", "mlflow-credentials")
OBJECT_STORE_CONFIG = os.environ.get("FA_OBJECT_STORE_CONFIG", "object-store-config")
PIPELINE_CONFIG = os.environ.get("FA_PIPELINE_CONFIG", "pipeline-config")

#: Labels the NetworkPolicies in k8s/ use to let pipeline pods reach MLflow and the store.
POD_LABELS = {"app.kubernetes.io/part-of": "fashion-attr-pipeline"}

#: The longest a task may run, in seconds (paper-size steps on one GPU, with margin).
#: Argo's retry window (backoff max duration) counts from the first attempt's start, and
#: a retried pod is killed when it closes: it must outlast the step plus its waits.
LONGEST_TASK_S = {
    "ingest-part": 6 * 3600,
    "ingest": 6 * 3600,
    "gan-training": 24 * 3600,
    "classifier-training": 24 * 3600,
    "evaluation": 2 * 3600,
    "registration": 2 * 3600,
}
RETRY_WINDOW_S = 72 * 3600
#: Retries at all (FA_RETRIES=0: none; ``pipelines.run_local`` compiles so: no preemption there).
RETRIES = os.environ.get("FA_RETRIES", "1") != "0"


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


def _retry(task: dsl.PipelineTask, retries: int, backoff_s: int) -> None:
    if not RETRIES:
        return
    # Integer factor: Argo (KFP >= 2.14) cannot parse "1.5" and fails the node instead.
    task.set_retry(
        num_retries=retries,
        backoff_duration=f"{backoff_s}s",
        backoff_factor=2,
        backoff_max_duration=f"{RETRY_WINDOW_S}s",
    )


def _on_gpu(task: dsl.PipelineTask, gpus: int, memory: str = "64Gi", cpu: str = "8") -> None:
    """Place a task on the GPU pool with shared memory and preemption retries."""
    if gpus > 0:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
        kubernetes.add_node_selector(task, GPU_NODE_LABEL_KEY, GPU_NODE_LABEL_VALUE)
        kubernetes.add_toleration(
            task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"
        )
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
    )
    # Preemptible GPU nodes: retry; the step resumes from its last checkpoint.
    _retry(task, 3, 60)


def _on_cpu(task: dsl.PipelineTask, memory: str = "4Gi", cpu: str = "2", retries: int = 2) -> None:
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    if retries:
        _retry(task, retries, 30)


def _training(task: dsl.PipelineTask, name: str) -> None:
    task.set_display_name(name)
    task.set_caching_options(True)
    _credentials(task, mlflow=True)
    if TRAIN_NODES > 1:  # a launcher: the training job's pods hold the GPUs
        _on_cpu(task, memory="2Gi", cpu="1", retries=3)
        if TRAINER_RELEASE:
            task.set_env_variable("FA_TRAINER_RELEASE", TRAINER_RELEASE)
    else:
        _on_gpu(task, GPUS_PER_STEP)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description=(
        "Retrain the fashion attribute classifier (Ye et al., HABP + MR-GAN + Deact): check "
        "the inputs, ingest DeepFashion-C or new catalog batches into versioned shards, train "
        "MR-GAN with decorrelation, train the classifier with HABP + Deact, evaluate, register "
        "in MLflow and gate the champion on the same test split."
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
    ingest_parts: int = 1,
    ingest_workers: int = 4,
    model_name: str = "fashion-attr",
    gate_metrics: str = "attr_recall@3/all,attr_recall@3/tail,cat_top3_acc",
    gate_tolerance: float = 0.005,
) -> str:
    """Run the whole retraining DAG.

    Args:
        source_uri: DeepFashion-C root (local path or s3://bucket/prefix); the default
            demo://?images=600&seed=0 generates the embedded demo dataset.
        storage_uri: Where dataset versions and step outputs are written (s3:// or a path).
        batch_uri: New catalog data: one .jsonl batch, a DeepFashion-C-layout folder, or a
            drop prefix of *.jsonl batches (every pending one is folded in), or "none".
        base_version: Dataset version the batches extend (id or URI), "latest", or "none".
        preset: Configuration preset: tiny, mnist, paper or paper-cb.
        gan_overrides: train_gan overrides, JSON list or comma-separated key=value, or "none".
        classifier_overrides: train_classifier overrides, same format, or "none".
        reuse_generator: URI of an existing generator.pt to skip GAN training, or "none".
        ingest_parts: Pods a full ingest is split over (1 or more).
        ingest_workers: Decode/encode processes per ingest pod.
        model_name: MLflow registered model name.
        gate_metrics: Comma-separated metrics the challenger must not lose on.
        gate_tolerance: Allowed drop per gated metric (fraction, e.g. 0.005 = 0.5 points).

    Returns:
        The registration result (JSON): model name, version, alias, gate decision.
    """
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    check = c.validation(
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
        train_nodes=TRAIN_NODES,
        pipeline_run=run_id,
    )
    check.set_display_name("validate inputs")
    check.set_caching_options(False)
    _credentials(check, mlflow=True)
    _on_cpu(check, memory="2Gi", cpu="1", retries=0)  # a user error is not worth a retry

    ingest_args = {
        "source_uri": source_uri,
        "storage_uri": storage_uri,
        "preset": preset,
        "parts": ingest_parts,
        "batch_uri": batch_uri,
        "base_version": base_version,
        "workers": ingest_workers,
        "pipeline_run": run_id,
    }
    with dsl.ParallelFor(items=check.output, name="ingest-parts") as part:
        part_task = c.ingest_part(part=part, **ingest_args)
        part_task.set_display_name("ingest (part)")
        part_task.set_caching_options(False)  # source content may change under one URI
        _credentials(part_task)
        _on_cpu(part_task, memory="8Gi", cpu="4")

    data = c.ingest(**ingest_args).after(part_task)
    data.set_display_name("ingest (publish version)")
    data.set_caching_options(False)
    _credentials(data)
    _on_cpu(data)

    placement = {"nodes": TRAIN_NODES, "job_kind": TRAIN_JOB_KIND, "image": c.BASE_IMAGE}
    gan = c.gan_training(
        dataset=data.outputs["dataset"],
        storage_uri=storage_uri,
        preset=preset,
        overrides=gan_overrides,
        reuse_generator=reuse_generator,
        gpus=GPUS_PER_STEP,
        **placement,
    )
    _training(gan, "train MR-GAN")

    clf = c.classifier_training(
        dataset=data.outputs["dataset"],
        generator=gan.outputs["generator"],
        storage_uri=storage_uri,
        preset=preset,
        overrides=classifier_overrides,
        gpus=GPUS_PER_STEP,
        **placement,
    )
    _training(clf, "train classifier (HABP + Deact)")

    ev = c.evaluation(
        dataset=data.outputs["dataset"],
        model=clf.outputs["model"],
        storage_uri=storage_uri,
        preset=preset,
    )
    ev.set_display_name("evaluate")
    ev.set_caching_options(True)
    _credentials(ev, mlflow=True)
    _on_gpu(ev, min(GPUS_PER_STEP, 1), memory="32Gi", cpu="8")

    reg = c.registration(
        dataset=data.outputs["dataset"],
        model=clf.outputs["model"],
        evaluation=ev.outputs["result"],
        storage_uri=storage_uri,
        pipeline_run=run_id,
        preset=preset,
        model_name=model_name,
        gate_metrics=gate_metrics,
        gate_tolerance=gate_tolerance,
    )
    reg.set_display_name("register + gate (paired)")
    reg.set_caching_options(False)  # the champion may have changed since
    _credentials(reg, mlflow=True)
    _on_gpu(reg, min(GPUS_PER_STEP, 1), memory="16Gi", cpu="4")  # scores the champion too
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
