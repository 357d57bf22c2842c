"""Step 3: train the classifier with HABP + Deact using the frozen generator.

Usage::

    python -m fashion_attr.steps.train_classifier --data <dataset version URI> --out <URI> \
        [--generator <train_gan out>/generator.pt] [--preset ...] [--config ...] [--set k=v ...]

Run under ``torchrun --nproc_per_node N`` for DistributedDataParallel. Resumes
automatically from ``<out>/checkpoint.pt`` (``--no-resume`` starts over).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from fashion_attr.config import ClassifierConfig, load_config
from fashion_attr.steps.common import add_config_args, run_cli

__all__ = ["main", "run"]


def run(
    data: str,
    out: str,
    *,
    generator: str | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Resolve the config and train; returns the step summary."""
    from fashion_attr.classifier.engine import train_classifier

    cfg = load_config(ClassifierConfig, preset=preset, config_file=config_file, overrides=overrides)
    result = train_classifier(
        cfg, data, out, generator=generator or None, cache_dir=cache_dir, resume=resume
    )
    return {
        "model": result.model_uri,
        "steps": result.steps,
        "epochs": result.epochs,
        "deact_steps": result.deact_steps,
        "val_metrics": result.val_metrics,
        "resumed_from_step": result.resumed_from_step,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_attr.steps.train_classifier", description=__doc__
    )
    parser.add_argument("--data", required=True, help="Dataset version URI (has manifest.json).")
    parser.add_argument("--out", required=True, help="Output URI (local folder or s3://).")
    parser.add_argument("--generator", default=None, help="generator.pt from train_gan (Deact).")
    parser.add_argument("--cache-dir", default=None, help="Local shard cache.")
    parser.add_argument("--no-resume", action="store_true", help="Ignore an existing checkpoint.")
    add_config_args(parser)
    args = parser.parse_args(argv)
    return run_cli(
        "train_classifier",
        lambda: run(
            args.data,
            args.out,
            generator=args.generator,
            preset=args.preset,
            config_file=args.config,
            overrides=args.overrides,
            cache_dir=args.cache_dir,
            resume=not args.no_resume,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
