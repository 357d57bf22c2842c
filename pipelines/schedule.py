r"""Scheduled retraining on new catalog data: a KFP recurring run, or one run now.

Usage::

    # create or update the nightly recurring run
    python -m pipelines.schedule schedule --host https://kfp.example.com \\
        --catalog-uri s3://fashion-attr/catalog/ --storage-uri s3://fashion-attr \\
        --source-uri s3://fashion-attr/deepfashion-c --cron "0 0 2 * * *"

    # submit one run of the same configuration; any other parameter with --param (typed as
    # the pipeline declares it; unknown names are refused before the API is called)
    python -m pipelines.schedule submit --host ... --catalog-uri ... --storage-uri ... \\
        --param ingest_parts=4 --param gate_tolerance=0.01

Multi-user KFP (default): runs go to the Profile namespace ``--namespace`` as
``pipeline-runner``. Standalone KFP (``--kfp-mode standalone``): runs go to KFP's own
namespace as its ``pipeline-runner`` (apply ``k8s/overlays/kfp-standalone``). The
backend's version (2.15.0 or newer) and mode are checked before anything is uploaded.

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
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipelines.retraining import PIPELINE_NAME, compile_pipeline

DEFAULT_JOB = "fashion-attr-nightly"


#: The oldest KFP backend the compiled pipeline runs on (tests/test_kfp_backend_rules.py).
MIN_BACKEND = (2, 15, 0)


def pipeline_parameters() -> dict[str, str]:
    """The pipeline's parameters and their types as the compiled spec declares them."""
    package = compile_pipeline(Path(tempfile.mkdtemp()) / f"{PIPELINE_NAME}.yaml")
    spec = next(yaml.safe_load_all(package.read_text()))
    return {
        name: p["parameterType"]
        for name, p in spec["root"]["inputDefinitions"]["parameters"].items()
    }


def _typed(name: str, text: str, kind: str) -> Any:
    """``text`` as the value type the KFP API expects for a parameter of type ``kind``."""
    try:
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if kind in ("LIST", "STRUCT"):
            value = json.loads(text)
            if not isinstance(value, list if kind == "LIST" else dict):
                raise ValueError(text)
            return value
    except ValueError:
        raise SystemExit(
            f"schedule: error: --param {name}={text}: {name} is {kind}, and {text!r} is not "
            f"one. Fix: e.g. --param {name}="
            + {"NUMBER_INTEGER": "2", "NUMBER_DOUBLE": "0.01", "BOOLEAN": "true"}.get(kind, "[...]")
        ) from None
    return text


def pipeline_arguments(
    args: argparse.Namespace, declared: dict[str, str] | None = None
) -> dict[str, Any]:
    """The pipeline parameters of a scheduled (or submitted) run, typed as the spec declares.

    Raises:
        SystemExit: an unknown parameter name or a value of the wrong type (exit 2), before
            anything is sent to the KFP API (which rejects "2" for an integer parameter).
    """
    declared = declared if declared is not None else pipeline_parameters()
    params: dict[str, Any] = {
        "source_uri": args.source_uri,
        "storage_uri": args.storage_uri,
        "batch_uri": args.catalog_uri,
        "base_version": "latest",
        "preset": args.preset,
        "model_name": args.model_name,
    }
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep or key not in declared:
            known = ", ".join(sorted(declared))
            raise SystemExit(
                f"schedule: error: --param {item!r}: {key!r} is not a parameter of "
                f"{PIPELINE_NAME}. Fix: use KEY=VALUE with one of: {known}"
            )
        params[key] = _typed(key, value, declared[key])
    return params


def check_backend(client: Any, mode: str) -> dict[str, Any]:
    """The KFP API server's version and mode; refuse a backend or mode that cannot work.

    Raises:
        SystemExit: a backend older than 2.15.0, or a multi-user/standalone mismatch.
    """
    healthz = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    info = json.loads(healthz.data)
    tag = str(info.get("tag_name", "unknown"))
    numbers = tuple(int(n) for n in re.findall(r"\d+", tag)[:3])
    if len(numbers) == 3 and numbers < MIN_BACKEND:
        raise SystemExit(
            f"schedule: error: the KFP backend is {tag}; this pipeline needs "
            f"{'.'.join(map(str, MIN_BACKEND))} or newer (its secret and config-map environment "
            "variables use the `optional` field). Fix: upgrade Kubeflow Pipelines"
        )
    multi_user = bool(info.get("multi_user"))
    if multi_user != (mode == "multi-user"):
        actual = "multi-user" if multi_user else "standalone"
        raise SystemExit(
            f"schedule: error: the KFP backend runs in {actual} mode, not {mode}. Fix: pass "
            f"--kfp-mode {actual} (and apply the matching k8s overlay, see k8s/README.md)"
        )
    return info


def _namespace(args: argparse.Namespace) -> str | None:
    # Standalone KFP has no user namespaces: runs go to its own (kubeflow).
    return None if args.kfp_mode == "standalone" else args.namespace


def _client(args: argparse.Namespace) -> Any:
    import kfp

    client = kfp.Client(host=args.host, namespace=_namespace(args))
    check_backend(client, args.kfp_mode)
    return client


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
    params = pipeline_arguments(args)  # refuses bad parameters before any API call
    client = client or _client(args)
    package = compile_pipeline(Path(tempfile.mkdtemp()) / f"{PIPELINE_NAME}.yaml")
    experiment_id = _experiment_id(client, args.experiment, _namespace(args))
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
        params=params,
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
    params = pipeline_arguments(args)
    client = client or _client(args)
    package = compile_pipeline(Path(tempfile.mkdtemp()) / f"{PIPELINE_NAME}.yaml")
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=params,
        run_name=f"{args.job_name}-manual-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}",
        experiment_name=args.experiment,
        namespace=_namespace(args),
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
    parser.add_argument(
        "--kfp-mode",
        choices=("multi-user", "standalone"),
        default="multi-user",
        help="multi-user: runs in --namespace (a Profile); standalone: in KFP's own namespace",
    )
    parser.add_argument("--namespace", default="fashion-attr", help="the Profile (multi-user)")
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
