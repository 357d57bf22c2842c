r"""Scheduled retraining on new catalog data: a KFP recurring run, or one run now.

Usage::

    # create or update the nightly recurring run
    python -m pipelines.schedule schedule --host https://kfp.example.com \\
        --catalog-uri s3://fashion-attr/catalog/ --storage-uri s3://fashion-attr \\
        --source-uri s3://fashion-attr/deepfashion-c --cron "0 0 2 * * *"

    # submit one run of the same configuration
    python -m pipelines.schedule submit --host ... --catalog-uri ... --storage-uri ...

Each run uses ``base_version=latest`` and ``batch_uri=<catalog-uri>``: it folds
every catalog batch (``*.jsonl``) that the latest dataset version does not yet
contain into a new version, retrains, evaluates and gates (see
:mod:`fashion_attr.data.versions`). The first run bootstraps
from ``--source-uri``. The recurring run has max concurrency 1 and no
catch-up, so a slow run never overlaps the next and a paused schedule does not
replay missed nights.

KFP's API has no update for recurring runs: "update" deletes the recurring run
of the same name and creates it again with the new pipeline version and
parameters (runs already started are not affected).
"""

import argparse
import datetime
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.retraining import PIPELINE_NAME, compile_pipeline

DEFAULT_JOB = "fashion-attr-nightly"


def pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline parameters of a scheduled (or submitted) run."""
    params: dict[str, Any] = {
        "source_uri": args.source_uri,
        "storage_uri": args.storage_uri,
        "batch_uri": args.catalog_uri,
        "base_version": "latest",
        "preset": args.preset,
        "model_name": args.model_name,
    }
    for item in args.param or []:
        key, _, value = item.partition("=")
        params[key] = json.loads(value) if value[:1] in "[{" else value
    return params


def _client(args: argparse.Namespace) -> Any:
    import kfp

    return kfp.Client(host=args.host, namespace=args.namespace)


def _experiment_id(client: Any, name: str, namespace: str | None) -> str:
    try:
        return client.get_experiment(experiment_name=name, namespace=namespace).experiment_id
    except Exception:
        return client.create_experiment(name, namespace=namespace).experiment_id


def _upload(client: Any, package: Path) -> tuple[str, str]:
    """Upload the compiled YAML as a new version of the pipeline (creating it if needed)."""
    version_name = f"{PIPELINE_NAME}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"
    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=PIPELINE_NAME)
        pipeline_id = pipeline.pipeline_id
    version = client.upload_pipeline_version(
        str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id
    )
    return pipeline_id, version.pipeline_version_id


def schedule(args: argparse.Namespace, client: Any | None = None) -> dict[str, Any]:
    """Create or replace the recurring run named ``args.job_name``."""
    client = client or _client(args)
    package = compile_pipeline(Path(tempfile.mkdtemp()) / f"{PIPELINE_NAME}.yaml")
    experiment_id = _experiment_id(client, args.experiment, args.namespace)
    pipeline_id, version_id = _upload(client, package)
    existing = client.list_recurring_runs(
        experiment_id=experiment_id,
        page_size=100,
        filter=json.dumps(
            {
                "predicates": [
                    {"key": "display_name", "operation": "EQUALS", "string_value": args.job_name}
                ]
            }
        ),
    )
    replaced = []
    for run in existing.recurring_runs or []:
        if run.display_name == args.job_name:
            client.delete_recurring_run(run.recurring_run_id)
            replaced.append(run.recurring_run_id)
    created = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=args.job_name,
        description="Nightly retraining on new catalog batches (fashion-attr).",
        cron_expression=args.cron,
        max_concurrency=1,
        no_catchup=True,
        params=pipeline_arguments(args),
        pipeline_id=pipeline_id,
        version_id=version_id,
        enabled=True,
        service_account=args.service_account,
    )
    return {
        "recurring_run_id": created.recurring_run_id,
        "replaced": replaced,
        "pipeline_id": pipeline_id,
        "version_id": version_id,
        "cron": args.cron,
    }


def submit(args: argparse.Namespace, client: Any | None = None) -> dict[str, Any]:
    """Submit one run with the scheduled configuration."""
    client = client or _client(args)
    package = compile_pipeline(Path(tempfile.mkdtemp()) / f"{PIPELINE_NAME}.yaml")
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=pipeline_arguments(args),
        run_name=f"{args.job_name}-manual-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}",
        experiment_name=args.experiment,
        namespace=args.namespace,
        service_account=args.service_account,
    )
    return {"run_id": result.run_id}


def build_parser() -> argparse.ArgumentParser:
    """The CLI of ``python -m pipelines.schedule``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=("schedule", "submit"))
    parser.add_argument("--host", default=None, help="KFP API endpoint (default: in-cluster).")
    parser.add_argument("--namespace", default="fashion-attr")
    parser.add_argument("--experiment", default="fashion-attr")
    parser.add_argument("--job-name", default=DEFAULT_JOB)
    parser.add_argument("--cron", default="0 0 2 * * *", help="KFP cron (with seconds).")
    parser.add_argument("--catalog-uri", required=True, help="Catalog drop: *.jsonl batches.")
    parser.add_argument("--storage-uri", required=True, help="Datasets and step outputs.")
    parser.add_argument(
        "--source-uri", default="demo://?images=600&seed=0", help="Bootstrap source (first run)."
    )
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--model-name", default="fashion-attr")
    parser.add_argument("--service-account", default="pipeline-runner")
    parser.add_argument(
        "--param", action="append", metavar="KEY=VALUE", help="Any other pipeline parameter."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    out = schedule(args) if args.command == "schedule" else submit(args)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
