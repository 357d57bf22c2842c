"""Throughput of the shard loader against a plain loose-JPEG dataset.

Usage::

    python bench/loader.py [--images 1200] [--image-size 224] [--workers 2] [--batch-size 64]

Generates the procedural demo dataset (DeepFashion-C layout, 160-320 px
images) in a temp folder, ingests it to ``--image-size`` shards, and reads the
train split:

* ours: ``make_loader`` over the version's shards (a local folder: no
  download; the page cache and the shard-index cache are warmed first), which
  yields ``uint8`` batches; measured as delivered (the trainer normalises on
  the GPU) and with ``normalize_on_device`` run on the CPU in the main process
  (the no-GPU worst case);
* baseline: the same JPEGs written out as loose files in ImageFolder layout
  (``<root>/<category>/<key>.jpg``), read with PIL + ``ToTensor`` + ``Normalize``
  in the workers.

Same machine, same run, same batch size, same number of DataLoader workers,
shuffled, best of ``--repeats`` epochs each (alternating). Prints images/s and
the ratios. Ingest throughput is in ``bench/ingest.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset


class LooseJpegFolder(Dataset):
    """ImageFolder-style baseline: one JPEG file per sample, class = folder name."""

    def __init__(self, root: Path) -> None:
        from torchvision import transforms

        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.items = [
            (path, i) for i, c in enumerate(classes) for path in sorted((root / c).glob("*.jpg"))
        ]
        self.transform = transforms.Compose(
            [
                transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[index]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label


def export_loose(version_uri: str, out: Path) -> int:
    """Write the train samples of a version as loose JPEGs under ``out/<category>/``."""
    from fashion_attr.data.shards import iter_shard_samples, load_manifest

    manifest = load_manifest(version_uri)
    n = 0
    for uri, _ in manifest.shard_uris(version_uri, "train"):
        for key, jpeg, meta in iter_shard_samples(uri):
            folder = out / f"{meta['category']:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{key}.jpg").write_bytes(jpeg)
            n += 1
    return n


def time_project(
    version: str, cache: Path, batch_size: int, workers: int, epoch: int, normalize: bool
) -> float:
    from fashion_attr.data.loader import make_loader, normalize_on_device

    loader = make_loader(
        version,
        "train",
        batch_size=batch_size,
        cache_dir=cache,
        seed=0,
        epoch=epoch,
        num_workers=workers,
        drop_last=False,
    )
    start = time.perf_counter()
    n = 0
    for images, _targets, _known, _category in loader:
        if normalize:
            # On the CPU here (NCHW, as the trainer uses channels_last only on CUDA).
            images = normalize_on_device(images, channels_last=False)
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def time_loose(root: Path, batch_size: int, workers: int, epoch: int) -> float:
    ds = LooseJpegFolder(root)
    g = torch.Generator().manual_seed(epoch)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, generator=g)
    start = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from fashion_attr.data.ingest import ingest_full
    from fashion_attr.demo import generate_demo_dataset

    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp_s:
        tmp = Path(tmp_s)
        src = generate_demo_dataset(tmp / "src", images=args.images, min_size=160, max_size=320)
        version = ingest_full(src, tmp / "dest", image_size=args.image_size, progress=False).uri
        loose = tmp / "loose"
        n = export_loose(version, loose)
        cache = tmp / "cache"
        print(f"{n} train images at {args.image_size} px, batch {args.batch_size}, "
              f"{args.workers} DataLoader workers, best of {args.repeats}")  # fmt: skip
        # Warm the page cache (and the loader's shard index cache) before timing.
        time_project(version, cache, args.batch_size, args.workers, 0, normalize=False)
        time_loose(loose, args.batch_size, args.workers, 0)
        ours, ours_norm, theirs = [], [], []
        for r in range(1, args.repeats + 1):
            ours.append(time_project(version, cache, args.batch_size, args.workers, r, False))
            ours_norm.append(time_project(version, cache, args.batch_size, args.workers, r, True))
            theirs.append(time_loose(loose, args.batch_size, args.workers, r))
        a, b, c = max(ours), max(ours_norm), max(theirs)
        print(f"shards + decode_jpeg, uint8 batches (as the trainer gets them): {a:8.1f} img/s")
        print(f"  ... + normalize_on_device on the CPU (no-GPU worst case):     {b:8.1f} img/s")
        print(f"loose JPEG files + PIL + ToTensor + Normalize:                   {c:8.1f} img/s")
        print(f"ratio ours/baseline: {a / c:.2f}x (uint8), {b / c:.2f}x (normalised on CPU)")


if __name__ == "__main__":
    main()
