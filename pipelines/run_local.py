"""Run the retraining DAG on this machine with ``kfp.local`` (the embedded default, ``make run``).

The very DAG that runs on the cluster (``pipelines.retraining``) runs here with
``kfp.local.SubprocessRunner`` (each step a subprocess of this virtualenv) or
``kfp.local.DockerRunner`` (each step in its own container from the project
image, ``--runner docker``; ``make run RUNNER=docker``). Storage is a local
folder; MLflow is local too (SQLite backend, artifacts on disk). Each run
generates new demo catalog data (a new seed), so running it again registers a
new model version and applies the promotion gate. Training runs on the CPU
(the pipeline is compiled with 0 GPUs per step and no retries).

The pipeline's own inputs can be given: ``--source`` (a DeepFashion-C folder of your
own), ``--batch`` with ``--base`` (fold a catalog batch into a version, ``latest`` by
default), a fixed ``--seed`` (the same demo data again: a night with nothing new, which
trains nothing). A failed run says which step failed and why; the same command resumes
it.

Before anything runs, every input is checked (:mod:`fashion_attr.orchestration.preflight`).
The output shows each step's own progress and a final summary; KFP's executor
dumps are hidden unless ``--verbose``.

Usage::

    python -m pipelines.run_local [--runner subprocess|docker] [--workdir .local_pipeline]
        [--source DIR | --images 2000 --seed N] [--batch FILE_OR_DIR [--base latest]]
        [--preset tiny] [--gan-overrides k=v,...] [--classifier-overrides k=v,...] [--verbose]
"""

import argparse
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from fashion_attr.config import PRESETS as PRESET_CHOICES

from pipelines.retraining import build_pipeline
from pipelines.settings import DEFAULT_IMAGE, CompileSettings

SUMMARY_KEYS = (
    "attr_recall@3/all",
    "attr_recall@5/all",
    "attr_recall@3/tail",
    "cat_top3_acc",
    "cat_top5_acc",
    "cb_acc/all",
    "map/all",
    "whole/cat_top1_acc",
    "whole/attr_recall@3/all",
)
ROOT = Path(__file__).resolve().parents[1]
#: What the Makefile's serve, predict and mlflow-ui targets assume (MLFLOW_DB, MODEL).
DEFAULT_WORKDIR = ".local_pipeline"
DEFAULT_MODEL = "fashion-attr-demo"


class QuietKfpOutput:
    """A stdout filter that drops kfp.local's executor chatter and keeps the steps' own lines.

    Dropped: the ``[KFP Executor ...]`` log lines (the executor-input JSON dump is about
    80 lines per task) and kfp.local's own artifact listings; kept: every line a step
    prints (progress, results, errors) and the task status lines.
    """

    _EXECUTOR = re.compile(r"^(?P<indent>\s*)\[KFP Executor [^\]]*\]: ")
    _KEEP_LOCAL = ("Executing task", "finished with status", "Pipeline ")

    _FAILED = re.compile(r"^\s*(?P<task>[\w-]+): (?P<kind>error|failed|stopped): (?P<msg>.+)$")

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        #: ``(task, exit code, message)`` of each step failure line seen, oldest first.
        self.failures: list[tuple[str, int, str]] = []
        self._buffer = ""
        self._dump_end: str | None = None  # the line that closes an executor-input dump
        self._in_outputs = False  # kfp.local's listing of a finished task's outputs

    def write(self, text: str) -> int:
        """Filter complete lines; hold back a trailing partial line."""
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            failed = self._FAILED.match(line)
            if failed:
                code = {"error": 2, "stopped": 130}.get(failed.group("kind"), 3)
                self.failures.append((failed.group("task"), code, failed.group("msg")))
            if self._keep(line):
                self.stream.write(line + "\n")
        return len(text)

    def _keep(self, line: str) -> bool:
        if self._in_outputs:
            self._in_outputs = not line.startswith("-----")
            return not self._in_outputs
        if self._dump_end is not None:  # inside the JSON that follows "Got executor_input:"
            if line.rstrip() == self._dump_end:
                self._dump_end = None
            return False
        executor = self._EXECUTOR.match(line)
        if executor:
            if line.rstrip().endswith("Got executor_input:"):
                self._dump_end = executor.group("indent") + "}"
            return False
        if " - INFO - " in line and not any(k in line for k in self._KEEP_LOCAL):
            return False
        if "finished with status" in line:
            self._in_outputs = True  # the task's outputs follow, up to the separator line
        return bool(line.strip())

    def flush(self) -> None:
        """Flush the wrapped stream."""
        self.stream.flush()

    def isatty(self) -> bool:
        """Whether the wrapped stream is a terminal."""
        return self.stream.isatty()


def _next_seed(workdir: Path) -> int:
    state = workdir / "state.json"
    return int(json.loads(state.read_text()).get("next_seed", 0)) if state.exists() else 0


def _save_seed(workdir: Path, seed: int) -> None:
    (workdir / "state.json").write_text(json.dumps({"next_seed": seed + 1}))


def _runner(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> Any:
    from kfp import local

    if args.runner == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    from docker.types import Mount

    import docker

    # Each step in its own container from the project image. The work folder (storage,
    # MLflow, the cache, the pipeline root) is mounted at the same path; the container runs
    # as this user, so what it writes stays ours (the image's own user, uid 10001, could not
    # write the folder), with HOME and caches in /tmp; it shares the host's network (no
    # bridge on machines like CI's; MLflow and object stores on the host stay reachable).
    try:
        docker.from_env().images.get(args.image)
    except docker.errors.ImageNotFound:
        raise SystemExit(
            f"run_local: error: the image {args.image} does not exist here. Fix: build it "
            "with `make image` (scripts/container-engine.sh prepares an engine)"
        ) from None
    except docker.errors.DockerException as exc:
        raise SystemExit(
            f"run_local: error: no Docker engine answers ({exc}). Fix: start one "
            "(scripts/container-engine.sh start) or use --runner subprocess"
        ) from None
    container_env = {**env, "HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache"}
    return local.DockerRunner(
        user=f"{os.getuid()}:{os.getgid()}",
        network_mode="host",
        environment=container_env,
        mounts=[Mount(target=str(workdir), source=str(workdir), type="bind")],
    )


def build_parser() -> argparse.ArgumentParser:
    """The CLI of ``python -m pipelines.run_local`` (``make run`` forwards its variables)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run_local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="storage, MLflow, KFP files")
    parser.add_argument(
        "--source",
        default=None,
        help="a DeepFashion-C root (folder or s3://) or demo://...; default: the demo catalog "
        "(--images, --seed)",
    )
    parser.add_argument("--images", type=int, default=2000, help="demo images to generate")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="demo seed (default: a new one after each successful run; a failed run's seed "
        "is kept, so rerunning resumes it)",
    )
    parser.add_argument(
        "--batch",
        default=None,
        help="a catalog batch (.jsonl or DeepFashion-C folder) or a drop folder of *.jsonl "
        "batches to fold into --base",
    )
    parser.add_argument(
        "--base",
        default=None,
        help="the dataset version the batch extends (v-..., or latest: the default with --batch)",
    )
    parser.add_argument("--preset", default="tiny", choices=PRESET_CHOICES)
    parser.add_argument("--model-name", default=DEFAULT_MODEL)
    parser.add_argument("--gan-overrides", default="none", help="key=value,... for train_gan")
    parser.add_argument(
        "--classifier-overrides", default="none", help="key=value,... for train_classifier"
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="project image (docker runner)")
    parser.add_argument("--verbose", action="store_true", help="keep KFP's logs and tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the DAG locally and print a summary."""
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    demo = args.source is None
    seed = args.seed if args.seed is not None else _next_seed(workdir)
    storage_dir, mlflow_db, artifacts = (
        workdir / "storage",
        workdir / "mlflow.db",
        workdir / "mlartifacts",
    )
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}",
        "MLFLOW_EXPERIMENT_NAME": os.environ.get("MLFLOW_EXPERIMENT_NAME", "fashion-attr-demo"),
        "FA_CACHE_DIR": str(workdir / "cache"),
        "PYTHONWARNINGS": "ignore",
        "FA_PROGRESS": "lines",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    os.environ.update(env)

    from fashion_attr.demo.sources import demo_uri
    from fashion_attr.orchestration.params import names, overrides
    from fashion_attr.orchestration.preflight import PreflightError, check_pipeline_inputs

    source = demo_uri(args.images, seed) if demo else _absolute(args.source)
    batch = _absolute(args.batch) if args.batch else None
    base = args.base or ("latest" if batch else None)
    settings = CompileSettings(
        image=args.image,
        gpus_per_step=0,  # train on this machine's CPU
        retries=False,  # no preemption here: a failure should end the run at once
    )
    pipeline = build_pipeline(settings)
    defaults = _pipeline_defaults(pipeline)
    try:
        check_pipeline_inputs(
            source_uri=source,
            storage_uri=str(storage_dir),
            batch_uri=batch,
            base_version=base,
            preset=args.preset,
            gan_overrides=overrides(args.gan_overrides),
            classifier_overrides=overrides(args.classifier_overrides),
            model_name=args.model_name,
            gate_metrics=names(defaults["gate_metrics"]),
        )
    except PreflightError as exc:
        print(f"run_local: {'failed' if exc.retryable else 'error'}: {exc}", file=sys.stderr)
        return 3 if exc.retryable else 2

    import mlflow
    from kfp import local

    # kfp.local warns, per task, that cluster-only settings (resources, display names) and
    # the project image mean nothing to a local runner: true, and not the user's concern.
    warnings.filterwarnings("ignore", module=r"kfp\.local")
    # Artifacts on disk next to the database (the default would be ./mlruns in the cwd).
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    if client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"]) is None:
        client.create_experiment(
            env["MLFLOW_EXPERIMENT_NAME"], artifact_location=artifacts.as_uri()
        )
    local.init(
        runner=_runner(args, workdir, env), pipeline_root=str(workdir / "kfp"), raise_on_error=True
    )

    print(f"fashion-attr: running the retraining DAG locally ({args.runner} runner)")
    print(f"  source  {source}")
    if batch:
        print(f"  batch   {batch} (folded into {base})")
    print(f"  storage {storage_dir}\n  mlflow  {env['MLFLOW_TRACKING_URI']}")
    if demo:
        print(
            f"  demo catalogs are cached in {workdir / 'cache' / 'demo'} (make clean removes them)"
        )
    t0 = time.time()
    real_stdout = sys.stdout
    quiet = QuietKfpOutput(real_stdout)
    if not args.verbose:
        sys.stdout = quiet
    try:
        run = pipeline(
            source_uri=source,
            storage_uri=str(storage_dir),
            batch_uri=batch or "none",
            base_version=base or "none",
            preset=args.preset,
            model_name=args.model_name,
            gan_overrides=args.gan_overrides,
            classifier_overrides=args.classifier_overrides,
            ingest_parts=1,
            ingest_workers=2,
        )
    except KeyboardInterrupt:
        sys.stdout = real_stdout
        print(
            "\nrun_local: interrupted. Everything finished so far is kept; rerun the same "
            "command to resume (finished steps are reused, training continues from its last "
            "checkpoint).",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        sys.stdout = real_stdout
        if args.verbose:
            raise
        print(_failure(exc, quiet.failures, argv), file=sys.stderr)
        return quiet.failures[-1][1] if quiet.failures else 3
    finally:
        sys.stdout = real_stdout
    if demo:
        _save_seed(workdir, seed)
    summary = json.loads(run.output)
    photo = _example_photo(source) if demo else None
    _print_summary(summary, time.time() - t0, workdir, args.model_name, photo)
    return 0


def _absolute(uri: str) -> str:
    """A local path made absolute (the steps run in other folders); URIs unchanged."""
    return uri if "://" in uri else str(Path(uri).resolve())


def _failure(exc: BaseException, failures: list[tuple[str, int, str]], argv: Any) -> str:
    """The one message a failed local run ends with: which step, why, and how to resume."""
    again = "python -m pipelines.run_local " + " ".join(argv or sys.argv[1:])
    if failures:
        task, code, message = failures[-1]
        what = f"the step {task} failed (exit {code}): {message}"
    else:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours its messages
        inner = re.search(r"Inner task failed: '([^']+)'", text)
        if inner:  # the step printed no error of its own: it was killed
            what = (
                f"the step {inner.group(1)} ended without a message of its own: it was killed "
                "(out of memory, or a kill -9?)"
            )
        else:
            what = f"the pipeline failed: {text.splitlines()[0] if text else repr(exc)}"
    return (
        f"run_local: {what}\nEverything finished so far is kept. Fix the cause, then rerun the "
        f"same command to resume (finished steps are reused, training continues from its last "
        f"checkpoint): {again.strip()}\nThe step's full log is above; --verbose keeps KFP's "
        "own logs."
    )


def _example_photo(source: str) -> tuple[Path, str] | None:
    """A test image of the demo catalog and its box (``x1,y1,x2,y2``), for the summary."""
    from fashion_attr.demo.sources import resolve_source

    root = Path(resolve_source(source))
    try:
        split = (root / "Eval" / "list_eval_partition.txt").read_text().splitlines()[2:]
        boxes = (root / "Anno" / "list_bbox.txt").read_text().splitlines()[2:]
    except OSError:
        return None
    tests = {f[0] for f in (line.split() for line in split) if len(f) == 2 and f[1] == "test"}
    for line in boxes:
        fields = line.split()
        if len(fields) == 5 and fields[0] in tests:
            return root / "Img" / fields[0], ",".join(fields[1:])
    return None


def _pipeline_defaults(pipeline: Any) -> dict[str, Any]:
    import inspect

    params = inspect.signature(pipeline.pipeline_func).parameters
    return {k: p.default for k, p in params.items()}


def _print_summary(
    summary: dict[str, Any],
    elapsed: float,
    workdir: Path,
    model_name: str,
    photo: tuple[Path, str] | None = None,
) -> None:
    from fashion_attr.evaluation.report import read_metrics_json

    if summary.get("skipped"):
        print("\n" + "=" * 72)
        print(f"Pipeline finished in {elapsed / 60:.1f} min: nothing new to train")
        print(
            "The dataset version, code, configs and placement equal those of a registered "
            f"version of {summary['name']}: no GPU step ran and no version was registered "
            f"(training key {summary['training_key']})."
        )
        print("=" * 72)
        return
    metrics = read_metrics_json(summary["metrics_uri"])
    print("\n" + "=" * 72)
    print(f"Pipeline finished in {elapsed / 60:.1f} min")
    print(f"Dataset version : {summary.get('dataset_version')}")
    print("Test metrics    :")
    for key in SUMMARY_KEYS:
        value = metrics.get(key)
        shown = "n/a" if value is None else f"{100 * value:6.2f} %"
        label = key.replace("whole/", "whole photo: ")
        print(f"    {label:<32} {shown}")
    print(f"Registered model: {summary['name']} version {summary['version']}")
    print(
        f"Alias           : {summary['alias']} (champion is version "
        f"{summary.get('champion_version')})"
    )
    print(f"Gate decision   : {summary.get('reason')}")
    if summary.get("gate_table"):
        print("\n" + summary["gate_table"])
    audit = summary.get("audit") or {}
    if audit.get("files"):
        print(
            f"\nAudit of the new batch ({audit['status']}): {audit['label_issues']} label "
            f"issue(s), drift {'FLAGGED' if audit['drift_flagged'] else 'not flagged'}, "
            f"{audit['tagged']} unlabelled image(s) tagged, {audit['to_label']} in the "
            "labelling queue:"
        )
        for name, uri in sorted(audit["files"].items()):
            print(f"    {name:<13} {uri}")
    # The make targets default to `make run`'s folder and model; name them otherwise.
    where = []
    if workdir != (ROOT / DEFAULT_WORKDIR).resolve():
        where.append(f"MLFLOW_DB={workdir / 'mlflow.db'}")
    if model_name != DEFAULT_MODEL:
        where.append(f"MODEL={model_name}")
    extra = "".join(f" {w}" for w in where)
    print("Browse runs and models (MLflow UI, http://127.0.0.1:5000):")
    print(f"    make mlflow-ui{extra}")
    print(f"Serve the champion (models:/{model_name}@champion, port 5001; Ctrl-C stops it):")
    print(f"    make serve{extra}")
    print("then, in another terminal, classify a demo test image (crop to its box, or whole):")
    if photo is not None:
        print(f"    make predict PHOTO={photo[0]} BBOX={photo[1]}")
        print(f"    make predict PHOTO={photo[0]}")
    else:
        print("    make predict PHOTO=path/to/photo.jpg [BBOX=x1,y1,x2,y2]")
    print("=" * 72)


if __name__ == "__main__":
    sys.exit(main())
