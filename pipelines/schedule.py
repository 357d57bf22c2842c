r"""Scheduled retraining on new catalog data: a KFP recurring run, or one run now.

Usage::

    make image IMAGE=registry.example.com/fashion-attr:0.1.0 PUSH=1   # records the digest
    make compile TARGET=cluster                                       # pins it in the package

    # create or update the nightly recurring run of that package
    python -m pipelines.schedule schedule --host https://kfp.example.com \\
        --catalog-uri s3://fashion-attr/catalog/ --storage-uri s3://fashion-attr \\
        --source-uri s3://fashion-attr/deepfashion-c --cron "0 0 2 * * *"

    # submit one run of the same configuration; any other parameter with --param (typed as
    # the package declares it; unknown names are refused before the API is called)
    python -m pipelines.schedule submit --host ... --catalog-uri ... --storage-uri ... \\
        --param ingest_parts=4 --param gate_tolerance=0.01

What is uploaded is the package ``make compile`` wrote (``--package``), never a pipeline
compiled again from this shell's environment: its image (pinned by digest, or refused),
GPU count and nodes are those recorded in the package (:func:`pipelines.settings.
read_settings`), and the command prints them. Multi-user KFP (default): runs go to the
Profile namespace ``--namespace`` as ``pipeline-runner``. Standalone KFP (``--kfp-mode
standalone``): runs go to KFP's own namespace as its ``pipeline-runner`` (apply
``k8s/overlays/kfp-standalone``). The backend's version (2.15.0 or newer) and mode are
checked before anything is uploaded; official API-server images before 2.16 report their
version as "unknown", and then a harmless request tells 2.15 from older releases
(:func:`check_backend`).

Each run uses ``base_version=latest`` and ``batch_uri=<catalog-uri>``: it folds every
catalog batch (``*.jsonl``) that the latest dataset version does not yet contain into a
new version; a night with nothing new trains nothing (the DAG's ``plan`` task). The first
run bootstraps from ``--source-uri``, which is required with the ``paper`` presets (a
``demo://`` source is refused there unless ``--allow-demo-source``). The recurring run
has max concurrency 1 and no catch-up, and every task has a deadline, so a stuck night
ends and the next one runs.

KFP's API has no update for recurring runs: "update" deletes the recurring run of the
same name and creates it again with the new pipeline version and parameters (runs already
started are not affected). Exit codes: 0 done, 2 a user error (a parameter, the package,
an unsupported backend), 3 the KFP API could not be reached or failed.
"""

import argparse
import datetime
import json
import re
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import yaml
from fashion_attr.config import PRESETS

from pipelines.retraining import PIPELINE_NAME
from pipelines.settings import CompileSettings, SettingsError, read_settings

DEFAULT_JOB = "fashion-attr-nightly"
DEFAULT_PACKAGE = f"build/{PIPELINE_NAME}.yaml"
DEMO_SOURCE = "demo://?images=600&seed=0"

#: The oldest KFP backend the compiled pipeline runs on (tests/test_kfp_backend_rules.py).
MIN_BACKEND = (2, 15, 0)
#: backend/src/apiserver/main.go @2.15.0: the artifact-read path is served by a plain HTTP
#: handler (run_artifact_server.go) whose errors are api.Error JSON (``error_message``);
#: up to 2.14.x it was a grpc-gateway route whose errors are ``{"code", "message"}``.
ARTIFACT_READ = "/apis/v2beta1/runs/{run_id}/nodes/{node_id}/artifacts/{artifact_name}:read"


class ScheduleError(Exception):
    """A failure with its exit code (2 user error, 3 fault) and one-line message."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def package_parameters(package: Path) -> dict[str, str]:
    """The parameters and their types as the compiled package declares them."""
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
        example = {"NUMBER_INTEGER": "2", "NUMBER_DOUBLE": "0.01", "BOOLEAN": "true"}
        raise ScheduleError(
            f"--param {name}={text}: {name} is {kind}, and {text!r} is not one. Fix: e.g. "
            f"--param {name}={example.get(kind, '[...]')}"
        ) from None
    return text


def pipeline_arguments(args: argparse.Namespace, declared: dict[str, str]) -> dict[str, Any]:
    """The pipeline parameters of a scheduled (or submitted) run, typed as the package declares.

    Raises:
        ScheduleError: an unknown parameter name, a value of the wrong type, or a demo source
            with a paper preset (exit 2), before anything is sent to the KFP API.
    """
    demo = args.source_uri.startswith("demo://")
    if args.preset.startswith("paper") and demo and not args.allow_demo_source:
        raise ScheduleError(
            f"--preset {args.preset} with --source-uri {args.source_uri}: the first run "
            "would bootstrap the production model from the synthetic demo catalog. Fix: "
            "pass --source-uri s3://<bucket>/<DeepFashion-C root>, or --allow-demo-source "
            "to mean it"
        )
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
            raise ScheduleError(
                f"--param {item!r}: {key!r} is not a parameter of {PIPELINE_NAME}. Fix: use "
                f"KEY=VALUE with one of: {known}"
            )
        params[key] = _typed(key, value, declared[key])
    return params


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def _probe_pre_2_15(client: Any) -> bool | None:
    """Whether the backend is older than 2.15 (True), 2.15 or newer (False), or None."""
    api = client._run_api.api_client
    try:
        api.call_api(
            ARTIFACT_READ,
            "GET",
            path_params={"run_id": str(uuid.uuid4()), "node_id": "x", "artifact_name": "y"},
            header_params={"Accept": "application/json"},
            auth_settings=["Bearer"],
            _preload_content=False,
            _return_http_data_only=True,
        )
    except Exception as exc:
        body = getattr(exc, "body", None)
        try:
            data = json.loads(body or "")
        except (TypeError, ValueError):
            return None
        if isinstance(data, dict) and "error_message" in data:
            return False
        if isinstance(data, dict) and {"code", "message"} <= set(data):
            return True
    return None


def check_backend(client: Any, mode: str, declared_version: str | None = None) -> dict[str, Any]:
    """The KFP API server's version and mode; refuse a backend or mode that cannot work.

    The version is the healthz ``tag_name``; official images before 2.16 report "unknown"
    (they were built without the TAG_NAME build argument: .github/workflows in
    kubeflow/pipelines @2.15.0), and then the error format of the artifact-read endpoint
    tells 2.15 and later from 2.14 and earlier (see :data:`ARTIFACT_READ`).
    ``declared_version`` (``--backend-version``) replaces both.

    Raises:
        ScheduleError: a backend older than 2.15.0, one whose version cannot be told, or a
            multi-user/standalone mismatch (exit 2).
    """
    healthz = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    info: dict[str, Any] = json.loads(healthz.data)
    tag = declared_version or str(info.get("tag_name", "unknown"))
    numbers = _version(tag)
    minimum = ".".join(map(str, MIN_BACKEND))
    needs = (
        f"this pipeline needs KFP backend {minimum} or newer (its secret and config-map "
        "environment variables use the `optional` field)"
    )
    if len(numbers) == 3:
        if numbers < MIN_BACKEND:
            raise ScheduleError(
                f"the KFP backend is {tag}; {needs}. Fix: upgrade Kubeflow Pipelines"
            )
    else:
        older = _probe_pre_2_15(client)
        if older:
            raise ScheduleError(
                f"the KFP backend reports version {tag!r} and answers like 2.14 or older; "
                f"{needs}. Fix: upgrade Kubeflow Pipelines"
            )
        if older is None:
            raise ScheduleError(
                f"the KFP backend reports version {tag!r} and its version could not be probed; "
                f"{needs}. Fix: pass --backend-version <the installed release> (e.g. 2.15.0)"
            )
        info["probed"] = ">= 2.15"
    multi_user = bool(info.get("multi_user"))
    if multi_user != (mode == "multi-user"):
        actual = "multi-user" if multi_user else "standalone"
        raise ScheduleError(
            f"the KFP backend runs in {actual} mode, not {mode}. Fix: pass --kfp-mode {actual} "
            "(and apply the matching k8s overlay, see k8s/README.md)"
        )
    return info


def _namespace(args: argparse.Namespace) -> str | None:
    # Standalone KFP has no user namespaces: runs go to its own (kubeflow).
    return None if args.kfp_mode == "standalone" else args.namespace


def _client(args: argparse.Namespace) -> Any:
    import kfp

    client = kfp.Client(host=args.host, namespace=_namespace(args))
    check_backend(client, args.kfp_mode, args.backend_version)
    return client


def _experiment_id(client: Any, name: str, namespace: str | None) -> str:
    try:
        return cast(
            str, client.get_experiment(experiment_name=name, namespace=namespace).experiment_id
        )
    except Exception:
        return cast(str, client.create_experiment(name, namespace=namespace).experiment_id)


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


def compiled_package(args: argparse.Namespace) -> tuple[Path, CompileSettings, str]:
    """The package to submit, its settings and code version; refuse one no cluster can run.

    Raises:
        ScheduleError: no package, one from another project or version, or an image that
            is not pinned by digest (unless ``--allow-unpinned-image``).
    """
    package = Path(args.package)
    try:
        settings, code = read_settings(package)
        if not args.allow_unpinned_image:
            settings.check_for_cluster()
    except SettingsError as exc:
        raise ScheduleError(str(exc)) from None
    print(f"{args.command}: {package}: {settings.summary()}", file=sys.stderr)
    return package, settings, code


def schedule(args: argparse.Namespace, client: Any | None = None) -> dict[str, Any]:
    """Create or replace the recurring run named ``args.job_name``."""
    package, settings, code = compiled_package(args)
    params = pipeline_arguments(args, package_parameters(package))  # before any API call
    client = client or _client(args)
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
        description=f"Nightly retraining on new catalog batches (fashion-attr {code}).",
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
        "image": settings.image,
        "code_version": code,
    }


def submit(args: argparse.Namespace, client: Any | None = None) -> dict[str, Any]:
    """Submit one run of the compiled package with the scheduled configuration."""
    package, settings, code = compiled_package(args)
    params = pipeline_arguments(args, package_parameters(package))
    client = client or _client(args)
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=params,
        run_name=f"{args.job_name}-manual-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}",
        experiment_name=args.experiment,
        namespace=_namespace(args),
        service_account=args.service_account,
    )
    return {"run_id": result.run_id, "image": settings.image, "code_version": code}


def build_parser() -> argparse.ArgumentParser:
    """The CLI of ``python -m pipelines.schedule``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.schedule",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("command", choices=("schedule", "submit"))
    parser.add_argument("--host", default=None, help="KFP API endpoint (default: in-cluster).")
    parser.add_argument(
        "--package", default=DEFAULT_PACKAGE, help="the package `make compile` wrote."
    )
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
        "--source-uri", default=DEMO_SOURCE, help="Bootstrap source (the first run ingests it)."
    )
    parser.add_argument(
        "--allow-demo-source",
        action="store_true",
        help="let a paper preset bootstrap from the demo catalog (a test cluster)",
    )
    parser.add_argument("--preset", default="paper", choices=PRESETS)
    parser.add_argument("--model-name", default="fashion-attr")
    parser.add_argument("--service-account", default="pipeline-runner")
    parser.add_argument(
        "--backend-version",
        default=None,
        help="the installed KFP release, when its API server cannot tell (reports 'unknown')",
    )
    parser.add_argument(
        "--allow-unpinned-image",
        action="store_true",
        help="submit a package whose image is a tag, not a digest (a test cluster)",
    )
    parser.add_argument(
        "--param", action="append", metavar="KEY=VALUE", help="Any other pipeline parameter."
    )
    parser.add_argument("--verbose", action="store_true", help="tracebacks on failure")
    return parser


def _unreachable(exc: BaseException) -> str | None:
    """A one-line reason when ``exc`` means the KFP API could not be reached, else None."""
    chain = [exc, exc.__cause__, exc.__context__]
    names = " ".join(type(e).__name__ for e in chain if e is not None)
    if any(word in names for word in ("MaxRetryError", "NewConnectionError", "ConnectionError")):
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return text[:200]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: one line and exit code 2 or 3 on failure (``--verbose``: traceback)."""
    args = build_parser().parse_args(argv)
    try:
        out = schedule(args) if args.command == "schedule" else submit(args)
    except ScheduleError as exc:
        print(f"schedule: error: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        if args.verbose:
            raise
        reason = _unreachable(exc)
        host = args.host or "the in-cluster KFP API"
        if reason is not None:
            print(
                f"schedule: failed: cannot reach {host} ({reason}). Fix: check --host and that "
                "the KFP API server is up (kubectl -n kubeflow get pods -l app=ml-pipeline)",
                file=sys.stderr,
            )
        else:
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            print(
                f"schedule: failed: the KFP API at {host} answered {type(exc).__name__}: "
                f"{first[:300]}. Fix: see the API server's log; --verbose shows the traceback",
                file=sys.stderr,
            )
        return 3
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
