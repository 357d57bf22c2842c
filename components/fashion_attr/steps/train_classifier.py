r"""Step 3: train the classifier with HABP + Deact using the frozen generator.

Usage::

    python -m fashion_attr.steps.train_classifier --data <dataset version URI> --out <URI> \
        [--generator <generator.pt from train_gan>] [--preset ...] [--config ...] [--set k=v ...]

Run under ``torchrun --nproc_per_node N`` for DistributedDataParallel. Resumes
automatically from ``<out>/checkpoint.pt`` (``--no-resume`` starts over); a
killed or interrupted run continues from its last checkpoint when rerun.
Prints the :class:`TrainClassifierResult` as one line of JSON and writes it to
``<out>/result.json``. Progress (step, images/s, losses, ETA) goes to stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fashion_attr.config import ClassifierConfig, load_config
from fashion_attr.resources import apply_cpu_budget
from fashion_attr.results import TrainClassifierResult
from fashion_attr.steps.contract import (
    add_training_args,
    is_rank0,
    run_cli,
    step_parser,
)

__all__ = ["TrainClassifierResult", "main", "run"]


def run(
    cfg: ClassifierConfig,
    data: str,
    out: str,
    *,
    generator: str | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = True,
) -> TrainClassifierResult:
    """Train the classifier on ``data`` into ``out``.

    Args:
        cfg: the resolved :class:`ClassifierConfig`.
        data: the dataset version URI.
        out: the output URI.
        generator: ``generator.pt`` from ``train_gan`` (required when Deact is enabled).
        cache_dir: local shard cache.
        resume: continue from ``<out>/checkpoint.pt`` when there is one.

    Returns:
        The :class:`TrainClassifierResult` (also written to ``<out>/result.json``).

    Raises:
        ValueError: Deact without a generator, or one for another label layout.
        NonFiniteLossError: a loss became NaN/Inf (names the step and the terms).
    """
    # Threads and workers sized to the container's CPU limit, not the node's cores.
    apply_cpu_budget()
    from fashion_attr.classifier.trainer import train

    result = train(cfg, data, out, generator=generator or None, cache_dir=cache_dir, resume=resume)
    if is_rank0():
        result.write(out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the step from the command line (exit codes: :mod:`fashion_attr.steps.contract`)."""
    parser = step_parser("train_classifier", __doc__)
    parser.add_argument("--generator", default=None, help="generator.pt from train_gan (Deact)")
    add_training_args(parser)
    args = parser.parse_args(argv)

    def body() -> TrainClassifierResult:
        cfg = load_config(
            ClassifierConfig, preset=args.preset, config_file=args.config, overrides=args.overrides
        )
        if args.require_gpus:
            from fashion_attr.runtime import require_gpus

            require_gpus("train_classifier", args.require_gpus)
        return run(
            cfg,
            args.data,
            args.out,
            generator=args.generator,
            cache_dir=args.cache_dir,
            resume=not args.no_resume,
        )

    record = args.out if args.record_error else None
    return run_cli("train_classifier", body, out=record, resumable=True)


if __name__ == "__main__":
    raise SystemExit(main())
