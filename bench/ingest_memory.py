"""Peak memory and time of a full-scale ingest (289,222 images x 1,000 attributes).

Usage::

    python bench/ingest_memory.py [--images 289222] [--attributes 1000] [--image-size 32]
                                  [--workers 1] [--keep DIR]

Writes the six annotation files at DeepFashion-C scale
(:func:`fashion_attr.demo.write_scale_annotations`, ~870 MB of
``list_attr_img.txt``), points every image name at one small JPEG (hard
links: no disk cost), and runs the whole ingest (hash, parse and validate,
shuffle, decode/crop/resize/encode, shard, index, manifest) in this process.
Parsing alone and the whole ingest (the CLI) each run in a fresh process;
prints their wall time, images/s and peak resident memory (``ru_maxrss`` of
the largest process: the main one, or a worker with ``--workers`` > 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return its wall time and the peak RSS (MB) of its largest process."""
    code = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter(); subprocess.run(sys.argv[1:], check=True);"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True)
    secs, kib = out.stdout.decode().split()[-2:]
    return float(secs), int(kib) / 1024  # Linux reports KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=289_222)
    p.add_argument("--attributes", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: temp)")
    args = p.parse_args()
    from fashion_attr.demo import write_scale_annotations
    from PIL import Image

    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench-ingest-mem-") if args.keep is None else None
    work = Path(tmp_ctx.name) if tmp_ctx is not None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        root = work / "src"
        t = time.perf_counter()
        if not (root / "Eval/list_eval_partition.txt").exists():
            write_scale_annotations(root, images=args.images, attributes=args.attributes)
        # Boxes of write_scale_annotations start below 60 px: a 64 px image never empties them.
        names = [ln.split()[0] for ln in (root / "Eval/list_eval_partition.txt").open()][2:]
        for i, name in enumerate(names):
            if i % 50_000 == 0:  # file systems cap the links per inode (ext4: 65,000)
                one = work / f"one-{i}.jpg"
                Image.new("RGB", (64, 64), (120, 80, 40)).save(one, quality=90)
            path = root / "Img" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.link(one, path)
        print(f"wrote {len(names)} records and image links in {time.perf_counter() - t:.1f} s")
        del names

        # Each measurement runs in a fresh process, so that ru_maxrss (a high-water
        # mark) holds that run alone and not the set-up above.
        parse = [sys.executable, "-c",
                 "import sys; from fashion_attr.data.annotations import load_annotations_from_dir;"
                 " load_annotations_from_dir(sys.argv[1])", str(root)]  # fmt: skip
        secs, rss = _child(parse)
        print(f"parse + validate alone (load_annotations): {secs:.1f} s, peak RSS {rss:.0f} MB")
        dest = work / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        cmd = [sys.executable, "-m", "fashion_attr.steps.preprocess", "--source", str(root),
               "--dest", str(dest), "--image-size", str(args.image_size),
               "--workers", str(args.workers), "--no-progress"]  # fmt: skip
        secs, rss = _child(cmd)
        n = args.images
        print(f"full ingest (CLI, {args.workers} worker(s)): {secs:.1f} s, "
              f"{n / secs:.0f} img/s incl. hashing and parsing, peak RSS {rss:.0f} MB "
              "(largest process)")  # fmt: skip
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
