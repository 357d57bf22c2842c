"""Command line: ``python -m fashion_attr.demo --out DIR --images N --seed S [--batch F]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fashion_attr.data.annotations import load_annotations_from_dir
from fashion_attr.demo.batches import write_catalog_batch
from fashion_attr.demo.dataset import generate_demo_dataset


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m fashion_attr.demo --out DIR --images N --seed S``.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a bad argument or an occupied output folder.
    """
    p = argparse.ArgumentParser(
        prog="python -m fashion_attr.demo",
        description="Write a procedural demo dataset in the DeepFashion-C layout.",
    )
    p.add_argument("--out", required=True, type=Path, help="dataset root to create")
    p.add_argument("--images", type=int, default=600, help="number of images (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--min-size", type=int, default=96, help="smallest image side (px)")
    p.add_argument("--max-size", type=int, default=192, help="largest image side (px)")
    p.add_argument(
        "--unknown-rate",
        type=float,
        default=0.0,
        help="fraction of labels written as 0 = unknown (default 0)",
    )
    p.add_argument(
        "--batch",
        type=Path,
        default=None,
        help="also write the images as a catalog batch (.jsonl) to fold into a version",
    )
    p.add_argument(
        "--unlabelled",
        type=float,
        default=0.0,
        help="with --batch: the share of records written without labels (default 0)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        root = generate_demo_dataset(
            args.out,
            images=args.images,
            seed=args.seed,
            min_size=args.min_size,
            max_size=args.max_size,
            unknown_rate=args.unknown_rate,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    index = load_annotations_from_dir(root)
    counts = index.positive_counts()
    n = len(index.records)
    splits = {s: len(index.split_records(s)) for s in ("train", "val", "test")}
    print(f"wrote {n} images to {root} ({', '.join(f'{k} {v}' for k, v in splits.items())})")
    print(
        f"{len(index.attributes)} attributes, {counts.sum() / n:.2f} positives per image, "
        f"attribute frequency {counts.min() / n:.1%} .. {counts.max() / n:.1%}"
    )
    if args.batch is not None:
        try:
            batch = write_catalog_batch(
                root, args.batch, unlabelled_share=args.unlabelled, seed=args.seed
            )
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote the catalog batch {batch} (make run BATCH={batch} folds it in)")
    return 0
