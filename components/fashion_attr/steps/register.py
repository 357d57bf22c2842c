"""Step 4b: register the classifier in MLflow and gate its promotion to ``champion``.

Usage::

    python -m fashion_attr.steps.register --model <model.pt URI> --metrics <metrics.json URI> \
        --model-name NAME --pipeline-run ID [--tracking-uri URI] [--dataset-version V] \
        [--code-version V] [--report FILE ...] [--preset ...] [--config ...] [--set k=v ...]

The new version always gets alias ``challenger``; it gets ``champion`` when the
gate says so (:mod:`fashion_attr.registry.gate`). Re-running with the same
``--pipeline-run`` reuses that run's version instead of registering a second one.
``--model-name`` overrides ``register.model_name`` of the config;
``--pipeline-run`` defaults to ``FA_PIPELINE_RUN``. Credentials:
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` from the environment.

Exit codes: 0 done (promoted or not), 2 bad input (a gated metric missing or
non-finite, a file that is not a classifier export, bad config, refused
credentials), 3 MLflow failure.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from fashion_attr.config import RegisterConfig, load_config
from fashion_attr.steps.common import add_config_args, run_cli

__all__ = ["main", "run"]


def run(
    model: str,
    metrics: str,
    *,
    pipeline_run: str,
    model_name: str | None = None,
    tracking_uri: str | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    dataset_version: str | None = None,
    code_version: str | None = None,
    reports: Sequence[str] = (),
) -> dict[str, Any]:
    """Resolve the config, register and gate; returns the step summary.

    Returns:
        ``{"name", "version", "alias", "promoted", "champion_version",
        "previous_champion", "reused", "reason", "decision"}``; ``alias`` is
        ``"champion"`` when the version was promoted, else ``"challenger"``.
    """
    from fashion_attr.registry.mlflow_registry import register_and_gate

    cfg = load_config(
        RegisterConfig,
        preset=preset,
        config_file=config_file,
        overrides=overrides,
        extra={"model_name": model_name},
    )
    result = register_and_gate(
        model,
        metrics,
        model_name=cfg.model_name,
        pipeline_run_id=pipeline_run,
        cfg=cfg,
        tracking_uri=tracking_uri,
        dataset_version=dataset_version,
        code_version=code_version,
        reports=reports,
    )
    return {
        "name": result.name,
        "version": result.version,
        "alias": "champion" if result.promoted else "challenger",
        "promoted": result.promoted,
        "champion_version": result.champion_version,
        "previous_champion": result.previous_champion,
        "reused": result.reused,
        "reason": result.decision.reason,
        "decision": result.decision.to_dict(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_attr.steps.register",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model.pt from train_classifier.")
    parser.add_argument("--metrics", required=True, help="metrics.json from evaluate.")
    parser.add_argument("--model-name", default=None, help="Registered model name.")
    env_run = os.environ.get("FA_PIPELINE_RUN") or None
    parser.add_argument(
        "--pipeline-run",
        default=env_run,
        required=env_run is None,
        help="Pipeline run id (idempotency); default: FA_PIPELINE_RUN.",
    )
    parser.add_argument("--tracking-uri", default=None, help="Default: MLFLOW_TRACKING_URI.")
    parser.add_argument("--dataset-version", default=None, help="Default: from model.pt.")
    parser.add_argument("--code-version", default=None, help="Default: package version.")
    parser.add_argument(
        "--report", dest="reports", action="append", default=[], help="File logged to the run."
    )
    add_config_args(parser)
    args = parser.parse_args(argv)
    return run_cli(
        "register",
        lambda: run(
            args.model,
            args.metrics,
            pipeline_run=args.pipeline_run,
            model_name=args.model_name,
            tracking_uri=args.tracking_uri,
            preset=args.preset,
            config_file=args.config,
            overrides=args.overrides,
            dataset_version=args.dataset_version,
            code_version=args.code_version,
            reports=args.reports,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
