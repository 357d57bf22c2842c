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

from collections.abc import Sequence
from pathlib import Path

from fashion_attr.config import GanConfig, load_config
from fashion_attr.resources import apply_cpu_budget
from fashion_attr.results import TrainGanResult
from fashion_attr.steps.contract import (
    add_training_args,
    is_rank0,
    run_cli,
    step_parser,
)

__all__ = ["TrainGanResult", "main", "run"]


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
    # Threads and workers sized to the container's CPU limit, not the node's cores.
    apply_cpu_budget()
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
        # torch loads only when a step runs: --help and a bad config answer in < 0.5 s.
        from fashion_attr.classifier.feature_space import classifier_space
        from fashion_attr.gan.trainer import train

        result = train(
            cfg,
            data,
            out,
            cache_dir=cache_dir,
            resume=resume,
            feature_space=classifier_space,
        )
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
        if args.require_gpus:
            from fashion_attr.runtime import require_gpus

            require_gpus("train_gan", args.require_gpus)
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
