r"""Step 1b: audit the catalog batches a run folded in, before anything trains on them.

Usage::

    python -m fashion_attr.steps.audit --data <new version URI> --base <base id or URI> \
        [--champion <model.pt URI> | --champion models:/<name>@champion] [--dest <versions>] \
        [--out <URI>] [--tracking-uri URI] [--mlflow-run ID] [--model-version NAME/VERSION] \
        [--cache-dir DIR] [--no-progress] [--preset ...] [--config ...] [--set k=v ...]

``--data`` is the version the ingest step published (its result's ``uri``) and
``--base`` the version it started from (its result's ``base``). The champion scores the
records the run added (the GPU pool on a cluster; the CPU here) and the step writes,
beside the version (``<data>/audit/`` unless ``--out``): ``label_issues.jsonl``,
``drift.json``, ``tags.jsonl``, ``to_label.jsonl``, ``thumbnails/``, ``report.md`` and
``report.html`` (docs/catalog-audit.md says what each holds), then ``result.json``.

``--champion models:/<name>@champion`` resolves the alias through MLflow (the tracking
server is ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``) and downloads the version's
``model.pt``; a registered model without that alias, or none at all, means no champion
yet: the step then reports the label drift alone (status ``no-champion``).

``audit.label_issues=exclude|downweight`` (``--set label_issues=...``) publishes a
derived version without the flagged train records (or with their disputed labels
masked) and points ``<dest>/LATEST`` at it when it pointed at the audited version;
the result's ``dataset_version``/``dataset_uri`` is what training should read.

With a tracking server and ``--mlflow-run``, the figures and files are logged to that
run (artifacts under ``audit/``); ``--model-version NAME/VERSION`` also tags that
model version (``audit.*``; :func:`model_version_tags`). Prints the
:class:`AuditResult` as one line of JSON. Exit codes: 0 done, 2 bad input (a missing
version, a base that is not an ancestor, a champion of another label layout, bad
config), 3 a fault.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fashion_attr import storage
from fashion_attr.config import AuditConfig, EvaluateConfig, load_config
from fashion_attr.results import AuditResult
from fashion_attr.steps.contract import add_config_args, run_cli, step_parser

__all__ = ["AuditResult", "main", "model_version_tags", "resolve_champion", "run"]

MODELS_SCHEME = "models:/"


def resolve_champion(
    ref: str, *, tracking_uri: str | None = None, workdir: str | None = None
) -> str | None:
    """The local ``model.pt`` of ``models:/<name>@<alias>`` (or ``models:/<name>/<version>``).

    Reuses the registry's own alias lookup and download (what the promotion gate scores),
    so the audit reads exactly the model that serves.

    Args:
        ref: ``models:/<name>@champion`` (any alias) or ``models:/<name>/<version>``.
        tracking_uri: The MLflow server (default ``MLFLOW_TRACKING_URI``).
        workdir: Where to download (default: a temporary folder).

    Returns:
        The local path of the version's ``model.pt``, or None when the model or the
        alias does not exist yet (no champion).

    Raises:
        ValueError: no tracking server, or a malformed reference (names the fix).
        RegistryError: the server failed.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fashion_attr.registry.mlflow_registry import (
        _alias_version,
        _champion_model,
        _mlflow_errors,
        use_tracking_uri,
    )

    if not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ValueError(
            f"--champion {ref}: resolving a registered model needs an MLflow server. Fix: set "
            "MLFLOW_TRACKING_URI or pass --tracking-uri (or pass the model.pt URI itself)"
        )
    body = ref[len(MODELS_SCHEME) :]
    if "@" in body:
        name, alias, version = *body.split("@", 1), None
    elif "/" in body:
        name, version, alias = *body.split("/", 1), None
    else:
        name = alias = version = ""
    if not name or not (alias or version):
        raise ValueError(
            f"--champion {ref!r}: expected models:/<name>@<alias> or models:/<name>/<version>. "
            "Fix: e.g. models:/fashion-attr@champion"
        )
    work = Path(workdir or tempfile.mkdtemp(prefix="fa-audit-champion-"))
    with use_tracking_uri(tracking_uri), _mlflow_errors(f"resolving {ref}"):
        client = MlflowClient()
        try:
            mv = (
                _alias_version(client, name, alias)
                if alias
                else client.get_model_version(name, str(version))
            )
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None  # the first scheduled run: nothing registered yet
            raise
        if mv is None:
            return None
        return _champion_model(client, mv, work)


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def model_version_tags(result: AuditResult) -> dict[str, str]:
    """The ``audit.*`` tags that say, on a model version, what its training data's audit found.

    The register step can set them on the version it registers (the challenger trained on
    ``result.dataset_version``): ``client.set_model_version_tag(name, version, k, v)``.
    """
    tags = {
        "audit.status": result.status,
        "audit.audited_version": result.audited_version,
        "audit.dataset_version": result.dataset_version,
        "audit.label_issues": str(result.label_issues),
        "audit.policy": result.policy,
        "audit.excluded": str(result.excluded),
        "audit.masked": str(result.masked),
        "audit.drift_flagged": str(result.drift_flagged).lower(),
        "audit.drift_reasons": "; ".join(result.drift_reasons)[:4000],
        "audit.unlabelled": str(result.unlabelled),
    }
    if "report_md" in result.files:
        tags["audit.report"] = result.files["report_md"]
    return tags


def _metrics(result_fields: dict[str, Any]) -> dict[str, float]:
    kinds = result_fields.get("issues_by_kind", {})
    out = {
        "audit/records": result_fields["records"],
        "audit/unlabelled": result_fields["unlabelled"],
        "audit/label_issues": result_fields["label_issues"],
        "audit/excluded": result_fields["excluded"],
        "audit/masked": result_fields["masked"],
        "audit/drift_flagged": float(result_fields["drift_flagged"]),
        "audit/tagged": result_fields["tagged"],
        **{f"audit/issues/{k}": v for k, v in kinds.items()},
    }
    if result_fields.get("images_per_s") is not None:
        out["audit/images_per_s"] = result_fields["images_per_s"]
    return {k: float(v) for k, v in out.items()}


def _log_mlflow(
    result: AuditResult, run_id: str | None, model_version: str | None, tracking_uri: str | None
) -> str | None:
    """Log the audit to an MLflow run and tag a model version (when asked and configured)."""
    if not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")) or not (run_id or model_version):
        return None
    from mlflow.tracking import MlflowClient

    from fashion_attr.registry.mlflow_registry import _mlflow_errors, use_tracking_uri

    with use_tracking_uri(tracking_uri), _mlflow_errors("logging the audit"):
        client = MlflowClient()
        if run_id:
            for key, value in result.metrics.items():
                client.log_metric(run_id, key, value)
            client.set_tag(run_id, "audit.dataset_version", result.dataset_version)
            client.set_tag(run_id, "audit.drift_flagged", str(result.drift_flagged).lower())
            with tempfile.TemporaryDirectory(prefix="fa-audit-log-") as tmp:
                for uri in [*result.files.values(), *result.thumbnails]:
                    rel = uri[len(result.out) :].lstrip("/") if uri.startswith(result.out) else ""
                    local = Path(tmp) / (rel or Path(uri).name)
                    storage.download_file(uri, local)
                    folder = "audit" + (f"/{Path(rel).parent}" if "/" in rel else "")
                    client.log_artifact(run_id, str(local), folder)
        if model_version:
            name, _, version = model_version.rpartition("/")
            if not name or not version:
                raise ValueError(
                    f"--model-version {model_version!r}: expected NAME/VERSION, e.g. fashion-attr/7"
                )
            for key, tag in model_version_tags(result).items():
                client.set_model_version_tag(name, version, key, tag)
    return run_id


def run(
    cfg: AuditConfig,
    data: str,
    *,
    base: str,
    champion: str | None = None,
    dest: str | None = None,
    out: str | None = None,
    cache_dir: str | None = None,
    tracking_uri: str | None = None,
    mlflow_run: str | None = None,
    model_version: str | None = None,
    tail_threshold: int | None = None,
    progress: bool = True,
) -> AuditResult:
    """Audit the records ``data`` added to ``base``; write the files beside ``data``.

    Args:
        cfg: The resolved :class:`AuditConfig`.
        data: The version the ingest published (folder or ``s3://`` URI).
        base: The version the run started from: an id (looked up under ``dest``) or a URI.
        champion: The champion: a ``model.pt`` URI, ``models:/<name>@champion``, or None
            (no champion yet: label drift only).
        dest: Where versions live (default: ``data``'s parent folder).
        out: Where the files go (default ``<data>/audit``).
        cache_dir: Local shard cache.
        tracking_uri: The MLflow server (default ``MLFLOW_TRACKING_URI``).
        mlflow_run: An MLflow run id to log the figures and files to.
        model_version: ``NAME/VERSION`` of a model version to tag with the audit.
        tail_threshold: Tail = fewer train positives than this (default
            ``cfg.tail_threshold``, else the evaluate step's default).
        progress: Rate and ETA lines on stderr.

    Returns:
        The :class:`AuditResult` (also written to ``<out>/result.json`` unless nothing
        was new).

    Raises:
        ManifestError: ``data`` or ``base`` has no manifest, or ``base`` is not an ancestor.
        ValueError: the champion is not a classifier export or has another label layout.
    """
    from fashion_attr.audit import audit_version
    from fashion_attr.data import versions

    data = data.rstrip("/")
    dest = dest or (data.rsplit("/", 1)[0] if "/" in data else ".")
    base_uri = versions.version_uri(dest, base)
    champion_file = champion
    if champion is not None and champion.startswith(MODELS_SCHEME):
        champion_file = resolve_champion(champion, tracking_uri=tracking_uri)
    threshold = tail_threshold or cfg.tail_threshold or EvaluateConfig().tail_threshold
    outcome = audit_version(
        cfg,
        data,
        base_uri,
        champion=champion_file,
        out=out,
        dest=dest,
        cache_dir=cache_dir,
        tail_threshold=threshold,
        progress=progress,
    )
    batch, policy, search = outcome.batch, outcome.policy, outcome.search
    assert policy is not None
    latest = None
    if policy.derived and versions.latest_version(dest) == batch.manifest.version:
        latest = versions.set_latest(dest, policy.version)
    fields: dict[str, Any] = {
        "status": outcome.status,
        "dataset_version": policy.version,
        "dataset_uri": policy.uri,
        "audited_version": batch.manifest.version,
        "audited_uri": batch.version_uri,
        "base_version": batch.base_manifest.version,
        "batches": batch.batches,
        "out": outcome.out,
        "files": outcome.files,
        "thumbnails": outcome.thumbnails,
        "champion": outcome.champion,
        "champion_ref": champion,
        "records": len(batch.records),
        "labelled": len(batch.labelled),
        "unlabelled": len(batch.unlabelled),
        "label_issues": len(search.issues) if search is not None else 0,
        "issues_by_kind": search.counts() if search is not None else {},
        "policy": policy.policy,
        "derived": policy.derived,
        "excluded": len(policy.excluded),
        "masked": len(policy.masked),
        "policy_record": policy.record,
        "drift_flagged": bool(outcome.drift.get("flagged", False)),
        "drift_reasons": list(outcome.drift.get("reasons", [])),
        "tagged": outcome.tags,
        "to_label": outcome.queue,
        "scored": outcome.scored,
        "images_per_s": _finite(outcome.images_per_s),
        "hardness": outcome.memory_source,
        "notes": outcome.notes,
        "latest": latest,
    }
    fields["metrics"] = _metrics(fields)
    result = AuditResult(**fields)
    logged = _log_mlflow(result, mlflow_run, model_version, tracking_uri)
    if logged:
        result = result.model_copy(update={"mlflow_run_id": logged})
    if outcome.status != "nothing-new":
        result.write(outcome.out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the step from the command line (exit codes: the module docstring)."""
    parser = step_parser("audit", __doc__)
    parser.add_argument("--data", required=True, help="the version the ingest published")
    parser.add_argument("--base", required=True, help="the version the run started from")
    parser.add_argument(
        "--champion",
        default=None,
        help="the champion's model.pt URI, or models:/<name>@champion (none: label drift only)",
    )
    parser.add_argument("--dest", default=None, help="where versions live (default: --data's)")
    parser.add_argument("--out", default=None, help="where the files go (default <data>/audit)")
    parser.add_argument("--cache-dir", default=None, help="local shard cache")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI")
    parser.add_argument("--mlflow-run", default=None, help="MLflow run id to log the audit to")
    parser.add_argument(
        "--model-version", default=None, help="NAME/VERSION of a model version to tag"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    add_config_args(parser)
    args = parser.parse_args(argv)

    def body() -> AuditResult:
        cfg = load_config(
            AuditConfig, preset=args.preset, config_file=args.config, overrides=args.overrides
        )
        evaluate = load_config(EvaluateConfig, preset=args.preset, config_file=args.config)
        return run(
            cfg,
            args.data,
            base=args.base,
            champion=args.champion,
            dest=args.dest,
            out=args.out,
            cache_dir=args.cache_dir,
            tracking_uri=args.tracking_uri,
            mlflow_run=args.mlflow_run,
            model_version=args.model_version,
            tail_threshold=cfg.tail_threshold or evaluate.tail_threshold,
            progress=not args.no_progress,
        )

    return run_cli("audit", body)


if __name__ == "__main__":
    raise SystemExit(main())
