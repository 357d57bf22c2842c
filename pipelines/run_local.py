"""Run the retraining DAG on this machine with ``kfp.local`` (the embedded default, ``make run``).

The very DAG that runs on the cluster (``pipelines.retraining``) runs here with
``kfp.local.SubprocessRunner`` (each step a subprocess of this virtualenv) or
``kfp.local.DockerRunner`` (each step in the project image; needs a Docker
engine). Storage is a local folder; MLflow is local too (SQLite backend,
artifacts on disk). Each run generates new demo catalog data (a new seed), so
running it again registers a new model version and applies the promotion gate.

Usage::

    python -m pipelines.run_local [--runner subprocess|docker] [--workdir .local_pipeline]
        [--images 2000] [--seed N] [--preset tiny]
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SUMMARY_KEYS = (
    "attr_recall@3/all",
    "attr_recall@5/all",
    "attr_recall@3/tail",
    "cat_top3_acc",
    "cat_top5_acc",
    "cb_acc/all",
    "map/all",
)


def _next_seed(workdir: Path) -> int:
    state = workdir / "state.json"
    seed = 0
    if state.exists():
        seed = int(json.loads(state.read_text()).get("next_seed", 0))
    return seed


def _save_seed(workdir: Path, seed: int) -> None:
    (workdir / "state.json").write_text(json.dumps({"next_seed": seed + 1}))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the DAG locally and print a summary."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess")
    parser.add_argument(
        "--workdir", default=".local_pipeline", help="Storage, MLflow and KFP outputs."
    )
    parser.add_argument("--images", type=int, default=2000, help="Demo images to generate.")
    parser.add_argument(
        "--seed", type=int, default=None, help="Demo seed (default: a new one per run)."
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model-name", default="fashion-attr-demo")
    parser.add_argument("--gan-overrides", default="none")
    parser.add_argument("--classifier-overrides", default="none")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else _next_seed(workdir)
    storage_dir = workdir / "storage"
    mlflow_db = workdir / "mlflow.db"
    artifacts = workdir / "mlartifacts"
    tracking_uri = f"sqlite:///{mlflow_db}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "fashion-attr-demo")
    os.environ["FA_CACHE_DIR"] = str(workdir / "cache")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")

    import mlflow
    from kfp import local

    # Artifacts on disk next to the database (the default would be ./mlruns in the cwd).
    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"]) is None:
        client.create_experiment(
            os.environ["MLFLOW_EXPERIMENT_NAME"], artifact_location=artifacts.as_uri()
        )

    if args.runner == "docker":
        runner = local.DockerRunner()
    else:
        runner = local.SubprocessRunner(use_venv=False)
    local.init(
        runner=runner,
        pipeline_root=str(workdir / "kfp"),
        raise_on_error=True,
    )
    from pipelines.retraining import retraining

    source = f"demo://?images={args.images}&seed={seed}"
    print(f"fashion-attr: running the retraining DAG locally ({args.runner} runner)")
    print(f"  source  {source}\n  storage {storage_dir}\n  mlflow  {tracking_uri}", flush=True)
    t0 = time.time()
    run = retraining(
        source_uri=source,
        storage_uri=str(storage_dir),
        preset=args.preset,
        model_name=args.model_name,
        gan_overrides=args.gan_overrides,
        classifier_overrides=args.classifier_overrides,
        ingest_parts=[0],
        ingest_workers=2,
        gpus_per_step=1,
    )
    elapsed = time.time() - t0
    _save_seed(workdir, seed)
    summary = json.loads(run.output)
    from fashion_attr import storage

    metrics = json.loads(storage.read_text(summary["metrics_uri"]))["metrics"]
    _print_summary(summary, metrics, elapsed, mlflow_db, artifacts)
    return 0


def _print_summary(
    summary: dict, metrics: dict, elapsed: float, mlflow_db: Path, artifacts: Path
) -> None:
    print("\n" + "=" * 72)
    print(f"Pipeline finished in {elapsed / 60:.1f} min")
    print(f"Dataset version : {summary.get('dataset_version')}")
    print("Test metrics    :")
    for key in SUMMARY_KEYS:
        value = metrics.get(key)
        shown = "n/a" if value is None else f"{100 * value:6.2f} %"
        print(f"    {key:<22} {shown}")
    print(f"Registered model: {summary['name']} version {summary['version']}")
    alias = summary.get("alias")
    print(f"Alias           : {alias} (champion is version {summary.get('champion_version')})")
    print(f"Gate decision   : {summary.get('reason')}")
    print("Open the MLflow UI with:")
    print(
        f"    .venv/bin/mlflow ui --backend-store-uri sqlite:///{mlflow_db} "
        f"--default-artifact-root {artifacts.as_uri()} --port 5000"
    )
    print("=" * 72)


if __name__ == "__main__":
    sys.exit(main())
