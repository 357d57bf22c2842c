r"""Step 2: train the conditional MR-GAN with decorrelation (docs/method.md section 4).

Usage::

    python -m fashion_attr.steps.train_gan --data <dataset version URI> --out <URI> \
        [--preset tiny|mnist|paper|paper-cb] [--config file.yaml] [--set key=value ...]

    # pass an existing generator through instead of training (checked, not retrained)
    python -m fashion_attr.steps.train_gan --data ... --out ... --reuse-generator <generator.pt>

Run under ``torchrun --nproc_per_node N`` for data-parallel training. Resumes
automatically from ``<out>/checkpoint.pt`` (``--no-resume`` starts over); a
killed or interrupted run continues from its last checkpoint when rerun.
Prints the :class:`TrainGanResult` as one line of JSON and writes it to
``<out>/result.json``. Progress (step, images/s, losses, ETA) goes to stderr.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from fashion_attr.config import GanConfig, load_config
from fashion_attr.steps.contract import (
    StepResult,
    add_training_args,
    is_rank0,
    run_cli,
    step_parser,
)

__all__ = ["TrainGanResult", "main", "run"]


class TrainGanResult(StepResult):
    """What ``train_gan`` produced.

    Attributes:
        generator: the exported generator (``generator.pt``), what Deact loads.
        checkpoint: the last training checkpoint ("" when a generator was reused).
        config: the resolved config saved beside the outputs ("" when reused).
        metrics_log: the JSON Lines metrics log ("" when reused).
        samples: sample grids (plain and perturbed) per epoch end.
        dataset_version: the dataset the generator was trained on.
        steps: training steps in all.
        epochs: complete epochs.
        projection_msc: final mean squared cosine of the noise filters (paper Fig. 8).
        resumed_from_step: the checkpoint step this run resumed from, else None.
        quality: sample-quality figures (Frechet distances), when computed.
        reused: the generator was passed through (``--reuse-generator``), not trained.
    """

    step = "train_gan"

    generator: str
    checkpoint: str = ""
    config: str = ""
    metrics_log: str = ""
    samples: list[str] = Field(default_factory=list)
    dataset_version: str | None = None
    steps: int = 0
    epochs: int = 0
    projection_msc: float | None = None
    resumed_from_step: int | None = None
    quality: dict[str, float] = Field(default_factory=dict)
    reused: bool = False


def run(
    cfg: GanConfig,
    data: str,
    out: str,
    *,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    reuse_generator: str | None = None,
) -> TrainGanResult:
    """Train MR-GAN on ``data`` into ``out`` (or check and pass through a generator).

    Args:
        cfg: the resolved :class:`GanConfig`.
        data: the dataset version URI.
        out: the output URI.
        cache_dir: local shard cache.
        resume: continue from ``<out>/checkpoint.pt`` when there is one.
        reuse_generator: a ``generator.pt`` to pass through instead of training.

    Returns:
        The :class:`TrainGanResult` (also written to ``<out>/result.json``).

    Raises:
        ValueError: a reused file that is not a generator export.
        NonFiniteLossError: a loss became NaN/Inf (names the step and the terms).
    """
    if reuse_generator:
        from fashion_attr.gan.export import load_generator

        _, meta = load_generator(reuse_generator)  # checks the format (weights_only load)
        result = TrainGanResult(
            generator=reuse_generator,
            dataset_version=meta.get("dataset_version"),
            steps=int(meta.get("steps", 0)),
            reused=True,
        )
    else:
        from fashion_attr.gan.trainer import train

        outcome = train(cfg, data, out, cache_dir=cache_dir, resume=resume)
        result = TrainGanResult(**dataclasses.asdict(outcome))
    if is_rank0():
        result.write(out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the step from the command line (exit codes: :mod:`fashion_attr.steps.contract`)."""
    parser = step_parser("train_gan", __doc__)
    parser.add_argument(
        "--reuse-generator", default=None, help="pass this generator.pt through, do not train"
    )
    add_training_args(parser)
    args = parser.parse_args(argv)

    def body() -> TrainGanResult:
        cfg = load_config(
            GanConfig, preset=args.preset, config_file=args.config, overrides=args.overrides
        )
        return run(
            cfg,
            args.data,
            args.out,
            cache_dir=args.cache_dir,
            resume=not args.no_resume,
            reuse_generator=args.reuse_generator,
        )

    record = args.out if args.record_error else None
    return run_cli("train_gan", body, out=record, resumable=True)


if __name__ == "__main__":
    raise SystemExit(main())
