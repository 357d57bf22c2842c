"""The ``fashion-attr-retraining`` DAG and where each step runs.

::

    validation -> ingest_part x N (ParallelFor) -> ingest -> plan (CPU)
        plan = "train":     audit (GPU: the champion scores the new batches) -> gan_training
                            (GPU) -> classifier_training (GPU, frozen generator)
                            -> evaluation (GPU) -> registration (GPU: scores the champion too)
        plan = "unchanged": unchanged (nothing new: no GPU task, no new model version)

``validation`` checks every parameter, override, URI and credential in seconds
(:mod:`fashion_attr.orchestration.preflight`) and plans the ingest fan-out: the loop
iterates over its typed ``list[int]`` output, and the loop body receives the part count
as a plain integer (the KFP driver removes the iterated list from the loop body's inputs,
and types untyped list items as strings). ``plan`` compares the run's training key
(dataset version, code version, resolved configs, placement) with the registered model
versions and the DAG skips the GPU tasks when one has it (``dsl.If``/``dsl.Else``; the
run's output is a parameter ``dsl.OneOf`` of the two branches, which backends 2.4 and
later resolve: kubeflow/pipelines backend/src/v2/driver/resolve.go ``ValueFromOneof``).

Placement (kfp-kubernetes) is declared here beside each task and nowhere else, from a
:class:`~pipelines.settings.CompileSettings` passed explicitly to :func:`build_pipeline`:
the KFP backend cannot read an accelerator count that is a pipeline parameter (it resolves
it to "" and sets no GPU limit). GPU steps request ``nvidia.com/gpu``, select the GPU node
pool, tolerate the ``nvidia.com/gpu`` NoSchedule taint, mount a memory-backed ``/dev/shm``
and retry within a window longer than the longest training step. Every task has a
deadline (pod ``activeDeadlineSeconds``, kfp-kubernetes ``set_timeout``: applied by the
driver of backends 2.15-2.17, backend/src/v2/driver/k8s.go), so one stuck night cannot
block the schedule (max concurrency 1). With more than one training node the training
tasks only launch and watch a cluster job, so they request no GPU themselves; they get
their own pod's name and uid (downward API) to make the job theirs (ownerReferences),
so Kubernetes deletes the job with the pod. S3 and MLflow credentials come from
Kubernetes secrets as environment variables, never from parameters. KFP's cache is off
for every task: its key holds the input artifacts' ids, new in every run
(backend/src/v2/cacheutils/cache.go), so it would never hit; ``plan`` and the output
folders named by their inputs do that job.

Supported KFP backends: 2.15.0 to 2.17.x (kfp-kubernetes 2.17 writes the ``optional``
field of secret and config-map environment variables, which backends before 2.15.0
reject or ignore). No ``dsl.PipelineConfig`` run deadline: backends before 2.17 cannot
parse it and would drop the whole Kubernetes platform spec (secrets, GPUs) without an
error. ``tests/test_kfp_backend_rules.py`` checks the compiled YAML against the backend's
run-time rules.

Compile with ``make compile`` (writes ``build/fashion-attr-retraining.yaml``) or
``python -m pipelines.retraining --output PATH [--image ...] [--gpus-per-step N] ...``.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from kfp import compiler, dsl, kubernetes

from pipelines.components import make_components
from pipelines.settings import (
    DEFAULT_IMAGE,
    ENV_NAMES,
    SETTINGS_MARKER,
    CompileSettings,
    SettingsError,
)

PIPELINE_NAME = "fashion-attr-retraining"

#: Labels the NetworkPolicies in k8s/ use to let pipeline pods reach MLflow and the store.
POD_LABELS = {"app.kubernetes.io/part-of": "fashion-attr-pipeline"}

#: The longest a task may take, in seconds (paper-size steps on one GPU, with margin),
#: all its attempts together: each attempt's pod deadline and the Argo retry window
#: (backoff max duration, counted from the first attempt's start; a retried pod is killed
#: when it closes). So a stuck task ends within it, and the next night runs.
LONGEST_TASK_S = {
    "validation": 15 * 60,
    "ingest-part": 6 * 3600,
    "ingest": 6 * 3600,
    "plan": 15 * 60,
    "unchanged": 15 * 60,
    "audit": 2 * 3600,
    "gan-training": 24 * 3600,
    "classifier-training": 24 * 3600,
    "evaluation": 2 * 3600,
    "registration": 2 * 3600,
}
#: The launcher pod's own identity, for the ownerReferences of the jobs it creates.
POD_FIELD_ENV = {
    "FA_POD_NAME": "metadata.name",
    "FA_POD_UID": "metadata.uid",
    "FA_POD_NAMESPACE": "metadata.namespace",
}


def build_pipeline(settings: CompileSettings) -> Any:
    """The retraining DAG for ``settings`` (a KFP pipeline function, ready to compile or run)."""
    c = make_components(settings.image)

    def credentials(task: dsl.PipelineTask, mlflow: bool = False) -> None:
        """Credentials from secrets and settings from config maps, as environment variables.

        Names match ``k8s/base`` (secrets ``object-store-credentials`` and
        ``mlflow-credentials``; config maps ``object-store-config`` and ``pipeline-config``).
        The S3 endpoint is a setting, not a secret: only S3-compatible stores (the MinIO
        overlay) set it.
        """
        kubernetes.use_secret_as_env(
            task,
            secret_name=settings.object_store_secret,
            secret_key_to_env={
                "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            },
        )
        kubernetes.use_config_map_as_env(
            task,
            config_map_name=settings.object_store_config,
            config_map_key_to_env={
                "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
                "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION",
            },
            optional=True,
        )
        if mlflow:
            kubernetes.use_secret_as_env(
                task,
                secret_name=settings.mlflow_secret,
                secret_key_to_env={
                    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
                },
            )
            kubernetes.use_config_map_as_env(
                task,
                config_map_name=settings.pipeline_config,
                config_map_key_to_env={
                    "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                    "MLFLOW_EXPERIMENT_NAME": "MLFLOW_EXPERIMENT_NAME",
                },
            )
        for key, value in POD_LABELS.items():
            kubernetes.add_pod_label(task, key, value)

    def deadline(name: str) -> int:
        return int(LONGEST_TASK_S[name] * settings.task_deadline_scale)

    def task_setup(task: dsl.PipelineTask, name: str, display: str, *, mlflow: bool) -> None:
        task.set_display_name(display)
        task.set_caching_options(False)  # see the module docstring
        credentials(task, mlflow=mlflow)
        kubernetes.set_timeout(task, deadline(name))

    def retry(task: dsl.PipelineTask, name: str, retries: int, backoff_s: int) -> None:
        if not settings.retries or not retries:
            return
        # Integer factor: Argo (KFP >= 2.14) cannot parse "1.5" and fails the node instead.
        # The window is the task's deadline: every attempt together within it. A pod killed
        # by its own deadline is Failed and Argo retries Failed nodes (OnFailure); with the
        # window equal to the deadline no retry follows a full-length (stuck) attempt, while
        # an attempt cut short by a preemption is retried within what is left.
        task.set_retry(
            num_retries=retries,
            backoff_duration=f"{backoff_s}s",
            backoff_factor=2,
            backoff_max_duration=f"{deadline(name)}s",
        )

    def on_gpu(
        task: dsl.PipelineTask, name: str, gpus: int, memory: str = "64Gi", cpu: str = "8"
    ) -> None:
        """Place a task on the GPU pool with shared memory and preemption retries."""
        if gpus > 0:
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
            kubernetes.add_node_selector(
                task, settings.gpu_node_label_key, settings.gpu_node_label_value
            )
            kubernetes.add_toleration(
                task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"
            )
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
        kubernetes.empty_dir_mount(
            task,
            volume_name="dshm",
            mount_path="/dev/shm",
            medium="Memory",
            size_limit=settings.shm_size,
        )
        # Preemptible GPU nodes: a failed attempt is retried and resumes from its checkpoint
        # (a pod deleted by a preemption is an Error, which Argo's default policy does not
        # retry: that run fails, and KFP's Retry resumes it).
        retry(task, name, 3, 60)

    def on_cpu(
        task: dsl.PipelineTask, name: str, memory: str = "4Gi", cpu: str = "2", retries: int = 2
    ) -> None:
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
        retry(task, name, retries, 30)

    def training(task: dsl.PipelineTask, name: str, display: str) -> None:
        task_setup(task, name, display, mlflow=True)
        if settings.train_nodes > 1:  # a launcher: the training job's pods hold the GPUs
            on_cpu(task, name, memory="2Gi", cpu="1", retries=3)
            if settings.trainer_release:
                task.set_env_variable("FA_TRAINER_RELEASE", settings.trainer_release)
            for env, field in POD_FIELD_ENV.items():
                kubernetes.use_field_path_as_env(task, env, field)
            # The launcher gives the job its own pod's deadline (less a margin to delete it).
            task.set_env_variable("FA_TASK_DEADLINE_S", str(deadline(name)))
        else:
            on_gpu(task, name, settings.gpus_per_step)

    placement = {
        "gpus": settings.gpus_per_step,
        "nodes": settings.train_nodes,
        "job_kind": settings.train_job_kind,
        "image": settings.image,
    }
    # Evaluation and registration score on one GPU of the pool (none for a CPU pipeline).
    scoring_gpus = min(settings.gpus_per_step, 1)

    @dsl.pipeline(  # type: ignore[untyped-decorator]  # kfp leaves dsl.pipeline unannotated
        name=PIPELINE_NAME,
        description=(
            "Retrain the fashion attribute classifier (Ye et al., HABP + MR-GAN + Deact): check "
            "the inputs, ingest DeepFashion-C or new catalog batches into versioned shards, "
            "skip the GPU steps when nothing is new, train MR-GAN with decorrelation, train "
            "the classifier with HABP + Deact, evaluate, register in MLflow and gate the "
            f"champion on the same test split. Compiled for: {settings.summary()}."
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
            gan_overrides: train_gan overrides, JSON list or comma-separated key=value, or
                "none".
            classifier_overrides: train_classifier overrides, same format, or "none".
            reuse_generator: URI of an existing generator.pt to skip GAN training, or "none".
            ingest_parts: Pods a full ingest is split over (1 or more).
            ingest_workers: Decode/encode processes per ingest pod.
            model_name: MLflow registered model name.
            gate_metrics: Comma-separated metrics the challenger must not lose on.
            gate_tolerance: Allowed drop per gated metric (fraction, e.g. 0.005 = 0.5 points).

        Returns:
            The registration result (JSON): model name, version, alias, gate decision; or,
            when nothing was new, the ``unchanged`` summary (``"skipped": true``).
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
            train_nodes=settings.train_nodes,
            pipeline_run=run_id,
        )
        task_setup(check, "validation", "validate inputs", mlflow=True)
        # A user error is not worth a retry.
        on_cpu(check, "validation", memory="2Gi", cpu="1", retries=0)

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
            task_setup(part_task, "ingest-part", "ingest (part)", mlflow=False)
            on_cpu(part_task, "ingest-part", memory="8Gi", cpu="4")

        data = c.ingest(**ingest_args).after(part_task)
        task_setup(data, "ingest", "ingest (publish version)", mlflow=False)
        on_cpu(data, "ingest")
        dataset = data.outputs["dataset"]

        decided = c.plan(
            dataset=dataset,
            storage_uri=storage_uri,
            pipeline_run=run_id,
            preset=preset,
            gan_overrides=gan_overrides,
            classifier_overrides=classifier_overrides,
            reuse_generator=reuse_generator,
            model_name=model_name,
            **placement,
        )
        task_setup(decided, "plan", "anything new? (plan)", mlflow=True)
        on_cpu(decided, "plan", memory="2Gi", cpu="1")

        with dsl.If(decided.outputs["decision"] == "train", name="something-new"):
            audited = c.audit(
                dataset=dataset,
                storage_uri=storage_uri,
                pipeline_run=run_id,
                preset=preset,
                model_name=model_name,
                gpus=scoring_gpus,
            )
            task_setup(audited, "audit", "audit new batches (champion)", mlflow=True)
            on_gpu(audited, "audit", scoring_gpus, memory="16Gi", cpu="4")
            dataset = audited.outputs["audited"]  # the version training reads

            gan = c.gan_training(
                dataset=dataset,
                storage_uri=storage_uri,
                pipeline_run=run_id,
                preset=preset,
                overrides=gan_overrides,
                reuse_generator=reuse_generator,
                **placement,
            )
            training(gan, "gan-training", "train MR-GAN")

            clf = c.classifier_training(
                dataset=dataset,
                generator=gan.outputs["generator"],
                storage_uri=storage_uri,
                pipeline_run=run_id,
                preset=preset,
                overrides=classifier_overrides,
                **placement,
            )
            training(clf, "classifier-training", "train classifier (HABP + Deact)")

            ev = c.evaluation(
                dataset=dataset,
                model=clf.outputs["model"],
                storage_uri=storage_uri,
                pipeline_run=run_id,
                preset=preset,
                gpus=scoring_gpus,
            )
            task_setup(ev, "evaluation", "evaluate", mlflow=True)
            on_gpu(ev, "evaluation", scoring_gpus, memory="32Gi", cpu="8")

            reg = c.registration(
                dataset=dataset,
                model=clf.outputs["model"],
                evaluation=ev.outputs["result"],
                storage_uri=storage_uri,
                pipeline_run=run_id,
                preset=preset,
                model_name=model_name,
                gate_metrics=gate_metrics,
                gate_tolerance=gate_tolerance,
                training_key=decided.outputs["training_key"],
                gpus=scoring_gpus,
                audit_result=audited.outputs["result"],
            )
            task_setup(reg, "registration", "register + gate (paired)", mlflow=True)
            # It scores the champion too.
            on_gpu(reg, "registration", scoring_gpus, memory="16Gi", cpu="4")
        with dsl.Else(name="nothing-new"):
            same = c.unchanged(
                plan_decision=decided.outputs["decision"],
                training_key=decided.outputs["training_key"],
                model_name=model_name,
            )
            task_setup(same, "unchanged", "nothing new: no training", mlflow=False)
            on_cpu(same, "unchanged", memory="1Gi", cpu="1", retries=0)
        # `-> str` is the pipeline output's type for KFP; the value here is its channel.
        return cast(str, dsl.OneOf(reg.outputs["Output"], same.output))

    return retraining


def compile_pipeline(output: str | Path, settings: CompileSettings | None = None) -> Path:
    """Compile the DAG for ``settings`` (default: :class:`CompileSettings`) to ``output``.

    The file's header records the settings (``# fashion-attr settings: {json}``), which
    ``pipelines.schedule`` reads back (:func:`pipelines.settings.read_settings`).
    """
    settings = settings or CompileSettings()
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_pipeline(settings), package_path=str(path), pipeline_name=PIPELINE_NAME
    )
    path.write_text(f"{SETTINGS_MARKER}{settings.to_json()}\n{path.read_text()}")
    return path


def _image_from_build(build: Path) -> str | None:
    """The image ``make image`` recorded (``build/image.json``): by digest when pushed."""
    record = build / "image.json"
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    return cast(str | None, data.get("pinned") or data.get("image"))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipelines.retraining --output build/fashion-attr-retraining.yaml``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.retraining",
        description="Compile the retraining pipeline to a KFP package (YAML). Every setting "
        "also reads its FA_* variable when the flag is not given: "
        + ", ".join(f"{f} ({e})" for f, e in ENV_NAMES.items()),
    )
    parser.add_argument("--output", default="build/fashion-attr-retraining.yaml")
    parser.add_argument(
        "--image",
        default=None,
        help="project image; default: build/image.json of `make image`, else "
        f"{DEFAULT_IMAGE} (local only)",
    )
    parser.add_argument("--gpus-per-step", type=int, default=None, help="0: a CPU-only cluster")
    parser.add_argument("--train-nodes", type=int, default=None)
    parser.add_argument("--train-job-kind", choices=("trainjob", "pytorchjob"), default=None)
    parser.add_argument("--trainer-release", choices=("2.1", "2.2", "2.3"), default=None)
    parser.add_argument(
        "--target",
        choices=("cluster", "local"),
        default="local",
        help="cluster: refuse an image no cluster can pull (not pinned by digest)",
    )
    args = parser.parse_args(argv)
    try:
        settings = CompileSettings.from_env(
            image=args.image or _image_from_build(Path(args.output).parent),
            gpus_per_step=args.gpus_per_step,
            train_nodes=args.train_nodes,
            train_job_kind=args.train_job_kind,
            trainer_release=args.trainer_release,
        )
        if args.target == "cluster":
            settings.check_for_cluster()
    except SettingsError as exc:
        print(f"compile: error: {exc}", file=sys.stderr)
        return 2
    path = compile_pipeline(args.output, settings)
    print(f"compiled {path}\n  {settings.summary()}")
    if not settings.pinned:
        print(
            f"  warning: the image {settings.image} is not pinned by digest, so no cluster "
            "can pull it as it is. For a cluster: `make image IMAGE=<registry>/fashion-attr:"
            "<tag> PUSH=1` then `make compile TARGET=cluster` (or --image <ref>@sha256:...)",
            file=sys.stderr,
        )
    if settings.gpu_tasks:
        print(
            f"  GPUs: {settings.gpu_tasks} tasks each request nvidia.com/gpu on the pool "
            f"{settings.gpu_node_label_key}={settings.gpu_node_label_value} (whatever the "
            "preset: the KFP backend cannot take a GPU count from a parameter); "
            "--gpus-per-step 0 compiles a CPU-only pipeline for the demo-sized run",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
