"""Step 2: train the conditional MR-GAN with decorrelation (method.md section 4).

Usage::

    python -m fashion_attr.steps.train_gan --data <dataset version URI> --out <URI> \
        [--preset tiny|mnist|paper|paper-cb] [--config file.yaml] [--set key=value ...]

Run under ``torchrun --nproc_per_node N`` for data-parallel training. Resumes
automatically from ``<out>/checkpoint.pt`` (``--no-resume`` starts over).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from fashion_attr.config import GanConfig, load_config
from fashion_attr.steps.common import add_config_args, run_cli

__all__ = ["main", "run"]


def run(
    data: str,
    out: str,
    *,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Resolve the config and train; returns the step summary."""
    from fashion_attr.gan.training_loop import train_gan

    cfg = load_config(GanConfig, preset=preset, config_file=config_file, overrides=overrides)
    result = train_gan(cfg, data, out, cache_dir=cache_dir, resume=resume)
    return {
        "generator": result.generator_uri,
        "steps": result.steps,
        "epochs": result.epochs,
        "projection_msc": result.projection_msc,
        "resumed_from_step": result.resumed_from_step,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_attr.steps.train_gan", description=__doc__
    )
    parser.add_argument("--data", required=True, help="Dataset version URI (has manifest.json).")
    parser.add_argument("--out", required=True, help="Output URI (local folder or s3://).")
    parser.add_argument("--cache-dir", default=None, help="Local shard cache.")
    parser.add_argument("--no-resume", action="store_true", help="Ignore an existing checkpoint.")
    add_config_args(parser)
    args = parser.parse_args(argv)
    return run_cli(
        "train_gan",
        lambda: run(
            args.data,
            args.out,
            preset=args.preset,
            config_file=args.config,
            overrides=args.overrides,
            cache_dir=args.cache_dir,
            resume=not args.no_resume,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
