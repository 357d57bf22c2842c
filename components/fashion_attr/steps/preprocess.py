r"""Pipeline step 1: ingest DeepFashion-C (or a catalog batch) into a versioned shard set.

Usage::

    # full ingest of a local folder or an S3 prefix
    python -m fashion_attr.steps.preprocess --source /data/DeepFashion-C --dest s3://bucket/shards

    # split over machines, then merge
    python -m fashion_attr.steps.preprocess --source ... --dest ... --part 0 --parts 4
    python -m fashion_attr.steps.preprocess --source ... --dest ... --merge --parts 4

    # incremental: a new version = base + new images of a batch (folder or .jsonl)
    python -m fashion_attr.steps.preprocess --dest s3://bucket/shards --base v-0123456789abcdef \
        --batch s3://bucket/incoming/2024-06.jsonl

Settings come from :class:`fashion_attr.config.PreprocessConfig` (defaults <
``--preset`` < ``--config`` < ``--set`` < the explicit flags below). An
incremental run takes ``image_size`` and ``jpeg_quality`` from its base
version unless they are set explicitly (and then they must match it).

On success the step prints one line of JSON on stdout (version, uri, status,
counts) and exits 0. Bad input (annotation errors, which name file and line;
bad arguments; a missing or invalid base manifest; missing parts) prints the
message on stderr and exits 2 with nothing published. See
:mod:`fashion_attr.data.ingest` for what a run does and
:mod:`fashion_attr.data.shards` for the output format.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from fashion_attr.config import PreprocessConfig, load_config
from fashion_attr.data.ingest import IngestResult, run_preprocess
from fashion_attr.steps.common import add_config_args, run_cli

__all__ = ["build_parser", "main", "run", "run_preprocess"]


def run(
    source: str | None,
    dest: str,
    *,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    settings: dict[str, Any] | None = None,
    part: int | None = None,
    parts: int | None = None,
    merge: bool = False,
    base: str | None = None,
    batch: str | None = None,
    progress: bool = True,
) -> IngestResult:
    """Resolve the configuration and run the ingest.

    Args:
        source: DeepFashion-C root (``None`` for an incremental run).
        dest: Where versions live.
        preset: A shipped preset name.
        config_file: A YAML config file.
        overrides: ``key=value`` overrides of :class:`PreprocessConfig` fields.
        settings: Explicit field values (highest precedence; ``None`` values ignored).
        part: This run's part (with ``parts``).
        parts: Number of parts.
        merge: Merge the part manifests.
        base: Incremental base version (URI or id).
        batch: Incremental batch (folder or ``.jsonl``).
        progress: Progress bar on stderr.

    Returns:
        The :class:`~fashion_attr.data.ingest.IngestResult`.
    """
    cfg = load_config(
        PreprocessConfig,
        preset=preset,
        config_file=config_file,
        overrides=overrides,
        extra=settings,
    )
    explicit = cfg.model_fields_set
    incremental = base is not None
    return run_preprocess(
        source,
        dest,
        # An incremental version inherits its base's image format unless one is asked for.
        image_size=cfg.image_size if not incremental or "image_size" in explicit else None,
        jpeg_quality=cfg.jpeg_quality if not incremental or "jpeg_quality" in explicit else None,
        shard_max_samples=cfg.shard_max_samples,
        shard_max_bytes=cfg.shard_max_bytes,
        workers=cfg.workers,
        seed=cfg.seed,
        part=part,
        parts=parts,
        merge=merge,
        base=base,
        batch=batch,
        progress=progress,
    )


def build_parser() -> argparse.ArgumentParser:
    """The step's command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m fashion_attr.steps.preprocess",
        description="Validate, crop and shard DeepFashion-C into a versioned dataset.",
    )
    p.add_argument("--source", help="DeepFashion-C root (folder or s3:// prefix)")
    p.add_argument("--dest", required=True, help="where versions live (folder or s3:// prefix)")
    p.add_argument("--image-size", type=int, default=None, help="output side in px")
    p.add_argument("--jpeg-quality", type=int, default=None, help="output JPEG quality")
    p.add_argument("--shard-max-samples", type=int, default=None, help="samples per shard")
    p.add_argument("--shard-max-bytes", type=int, default=None, help="bytes per shard")
    p.add_argument("--workers", type=int, default=None, help="decode/encode processes")
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (part of the version)")
    p.add_argument("--part", type=int, default=None, help="this run's part, 0 <= part < parts")
    p.add_argument("--parts", type=int, default=None, help="number of parts")
    p.add_argument("--merge", action="store_true", help="write the manifest from all parts")
    p.add_argument("--base", default=None, help="incremental: base version (URI or v-... id)")
    p.add_argument("--batch", default=None, help="incremental: batch folder or .jsonl file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_config_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ingest step from the command line.

    Args:
        argv: Arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on bad input (message on stderr, nothing published).
    """
    args = build_parser().parse_args(argv)
    settings = {
        "image_size": args.image_size,
        "jpeg_quality": args.jpeg_quality,
        "shard_max_samples": args.shard_max_samples,
        "shard_max_bytes": args.shard_max_bytes,
        "workers": args.workers,
        "seed": args.seed,
    }
    return run_cli(
        "preprocess",
        lambda: run(
            args.source,
            args.dest,
            preset=args.preset,
            config_file=args.config,
            overrides=args.overrides,
            settings=settings,
            part=args.part,
            parts=args.parts,
            merge=args.merge,
            base=args.base,
            batch=args.batch,
            progress=not args.no_progress,
        ).summary(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
