"""Ingest throughput: images/s, and per worker, of the preprocess step.

Usage::

    python bench/ingest.py [--images 2000] [--image-size 224] [--workers 1 2]

Generates the procedural demo dataset (DeepFashion-C layout, 160-320 px
JPEGs, like DeepFashion-C's ~300 px photos) in a temp folder and times
:func:`fashion_attr.data.ingest.ingest_full` into a fresh destination for
each worker count: wall time of the whole run (hash, parse, decode, crop,
resize, encode, shard, manifest), images/s, images/s per worker, and the
start-up time of the worker processes (to the first processed image), which
small runs are dominated by. This script imports no torch, so the spawned
workers start fast.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    from fashion_attr.data.ingest import engine, ingest_full
    from fashion_attr.demo import generate_demo_dataset

    first_result: list[float] = []
    original = engine._run_tasks

    def timed(tasks, settings, workers):
        start = time.perf_counter()
        for i, item in enumerate(original(tasks, settings, workers)):
            if i == 0:
                first_result.append(time.perf_counter() - start)
            yield item

    engine._run_tasks = timed
    print(f"CPUs: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_s:
        tmp = Path(tmp_s)
        src = generate_demo_dataset(tmp / "src", images=args.images, min_size=160, max_size=320)
        print(f"{args.images} images -> {args.image_size} px shards")
        for w in args.workers:
            first_result.clear()
            start = time.perf_counter()
            ingest_full(
                src, tmp / f"dest{w}", image_size=args.image_size, workers=w, progress=False
            )
            secs = time.perf_counter() - start
            rate = args.images / secs
            print(
                f"workers={w}: {secs:6.2f} s  {rate:7.1f} img/s  {rate / w:7.1f} img/s/worker  "
                f"(worker start-up {first_result[0]:.2f} s)"
            )


if __name__ == "__main__":
    main()
