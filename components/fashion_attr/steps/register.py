r"""Step 4b: register the classifier in MLflow and gate its promotion to ``champion``.

Usage::

    python -m fashion_attr.steps.register --model <model.pt URI> --metrics <metrics.json URI> \
        [--model-name NAME] [--pipeline-run ID] [--tracking-uri URI] [--dataset-version V] \
        [--code-version V] [--report FILE ...] [--data <dataset version>] [--out URI] \
        [--preset ...] [--set k=v ...]

The new version always gets alias ``challenger``; it gets ``champion`` when the
gate says so (:mod:`fashion_attr.registry.gate`). With ``--data`` (the dataset
version the challenger was evaluated on), the champion is scored now on the same
test split, with the same tail set, and the gate compares those paired figures;
both tables are recorded on the version. A champion that cannot be scored there
(another label layout, an unreadable artifact) is kept unless
``register.on_incomparable=promote``. Re-running with the same
``--pipeline-run`` reuses that run's version instead of registering a second one.
``--model-name`` overrides ``register.model_name`` of the config;
``--pipeline-run`` defaults to the variable ``FA_PIPELINE_RUN``. The tracking
server is ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` (one is required: MLflow
would otherwise create a store in the working folder); credentials come from
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``.

Prints the :class:`RegisterResult` as one line of JSON (and writes it to
``<out>/result.json`` when ``--out`` is given). Exit codes: 0 done (promoted or
not), 2 bad input (a metric missing or non-finite, a file that is not a
classifier export, bad config, no tracking URI, refused credentials), 3 MLflow
failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from fashion_attr.config import EvaluateConfig, RegisterConfig, load_config
from fashion_attr.resources import apply_cpu_budget
from fashion_attr.results import AuditResult, RegisterResult
from fashion_attr.steps.contract import add_config_args, run_cli, step_parser

__all__ = ["RegisterResult", "main", "run"]


def run(
    cfg: RegisterConfig,
    model: str,
    metrics: str,
    *,
    pipeline_run: str,
    data: str | None = None,
    evaluate_config: Any = None,
    tracking_uri: str | None = None,
    dataset_version: str | None = None,
    code_version: str | None = None,
    reports: Sequence[str] = (),
    out: str | None = None,
    lineage_tags: Mapping[str, str] | None = None,
    per_attribute: str | None = None,
    audit: AuditResult | None = None,
) -> RegisterResult:
    """Register ``model`` under ``cfg.model_name`` and apply the promotion gate.

    Args:
        cfg: the resolved :class:`RegisterConfig`.
        model: ``model.pt`` from ``train_classifier``.
        metrics: ``metrics.json`` from ``evaluate``.
        pipeline_run: the pipeline run id (makes the step idempotent).
        data: the dataset version the challenger was evaluated on; when given, the champion
            is evaluated on the same split (like-for-like gate).
        evaluate_config: the :class:`EvaluateConfig` the challenger was evaluated with.
        tracking_uri: the MLflow server; default ``MLFLOW_TRACKING_URI``.
        dataset_version: tag value; default the one recorded in ``model.pt``.
        code_version: tag value; default the package version.
        reports: files logged to the run under ``reports/``.
        out: where to write ``result.json`` (optional).
        lineage_tags: more version tags (the pipeline's training key).
        per_attribute: the challenger's ``per_attribute.csv``: with a champion scored on
            the same split, the gate table gains the per-attribute recall change.
        audit: the audit of the batches the challenger's data folded in: its figures become
            ``audit.*`` tags of the version.

    Returns:
        The :class:`RegisterResult`.

    Raises:
        ValueError: no tracking URI, or bad input (nothing is written to MLflow).
    """
    # Threads and workers sized to the container's CPU limit, not the node's cores.
    apply_cpu_budget()
    from fashion_attr.registry.mlflow_registry import register_and_gate

    score_champion = None
    champion_scores: list[Any] = []
    tags = dict(lineage_tags or {})
    if audit is not None:
        from fashion_attr.steps.audit import model_version_tags

        tags.update(model_version_tags(audit))
    if data is not None:
        from fashion_attr.classifier.scoring import score_model
        from fashion_attr.config import EvaluateConfig

        eval_cfg = evaluate_config if evaluate_config is not None else EvaluateConfig()

        def score_champion(model_path: str) -> Any:
            # Its metrics and per-image statistics (the gate's paired intervals).
            scores = score_model(eval_cfg, model_path, data)
            champion_scores.append(scores)
            return scores

    if not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ValueError(
            "register: no MLflow tracking server: MLFLOW_TRACKING_URI is not set (MLflow would "
            "silently create a store in the working folder). Fix: set MLFLOW_TRACKING_URI "
            "(e.g. http://mlflow:5000 or sqlite:///path/mlflow.db) or pass --tracking-uri"
        )
    done = register_and_gate(
        model,
        metrics,
        model_name=cfg.model_name,
        pipeline_run_id=pipeline_run,
        cfg=cfg,
        tracking_uri=tracking_uri,
        dataset_version=dataset_version,
        code_version=code_version,
        reports=reports,
        score_champion=score_champion,
        lineage_tags=tags,
    )
    table = done.table
    if per_attribute and champion_scores:
        from fashion_attr.audit.recall_change import recall_change, render_recall_change

        rows = recall_change(per_attribute, champion_scores[-1].per_attribute, k=3)
        table += "\n\n" + render_recall_change(rows, k=3)
    result = RegisterResult(
        name=done.name,
        version=done.version,
        model_uri=f"models:/{done.name}/{done.version}",
        alias="champion" if done.promoted else "challenger",
        promoted=done.promoted,
        champion_version=done.champion_version,
        previous_champion=done.previous_champion,
        reused=done.reused,
        reason=done.decision.reason,
        decision=done.decision.to_dict(),
        gate_table=table,
        run_id=done.run_id,
        metrics_uri=metrics,
        dataset_version=dataset_version,
        audit={}
        if audit is None
        else {
            "status": audit.status,
            "label_issues": audit.label_issues,
            "drift_flagged": audit.drift_flagged,
            "tagged": audit.tagged,
            "to_label": audit.to_label,
            "excluded": audit.excluded,
            "files": dict(audit.files),
        },
    )
    if out:
        result.write(out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the step from the command line (exit codes: the module docstring)."""
    parser = step_parser("register", __doc__)
    parser.add_argument("--model", required=True, help="model.pt from train_classifier")
    parser.add_argument("--metrics", required=True, help="metrics.json from evaluate")
    parser.add_argument("--model-name", default=None, help="registered model name")
    parser.add_argument(
        "--pipeline-run",
        default=None,
        help="pipeline run id (idempotency); default: the variable FA_PIPELINE_RUN",
    )
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI")
    parser.add_argument("--dataset-version", default=None, help="default: from model.pt")
    parser.add_argument("--code-version", default=None, help="default: the package version")
    parser.add_argument(
        "--report", dest="reports", action="append", default=[], help="file logged to the run"
    )
    parser.add_argument(
        "--data", default=None, help="dataset version evaluated on: score the champion there"
    )
    parser.add_argument("--out", default=None, help="where to write result.json (optional)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    pipeline_run = args.pipeline_run or os.environ.get("FA_PIPELINE_RUN")
    if not pipeline_run:
        parser.error("--pipeline-run is required when FA_PIPELINE_RUN is not set")

    def body() -> RegisterResult:
        cfg = load_config(
            RegisterConfig,
            preset=args.preset,
            config_file=args.config,
            overrides=args.overrides,
            extra={"model_name": args.model_name},
        )
        return run(
            cfg,
            args.model,
            args.metrics,
            pipeline_run=pipeline_run,
            tracking_uri=args.tracking_uri,
            dataset_version=args.dataset_version,
            code_version=args.code_version,
            reports=args.reports,
            data=args.data,
            evaluate_config=load_config(
                EvaluateConfig, preset=args.preset, config_file=args.config
            ),
            out=args.out,
        )

    return run_cli("register", body)


if __name__ == "__main__":
    raise SystemExit(main())
