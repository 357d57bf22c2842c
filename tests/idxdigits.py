"""A synthetic, learnable digit set in MNIST's IDX format, for the MNIST bench scripts."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(folder: Path, count: int = 200) -> tuple[Path, Path]:
    """Write ``count`` 28x28 "digits" as MNIST's gzipped IDX3/IDX1 file names.

    Image i has label ``i % 10``: a bright bar whose row is the label, on noise.

    Args:
        folder: Where to write ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
        count: Number of images.

    Returns:
        ``(images path, labels path)``.
    """
    rng = np.random.default_rng(0)
    labels = (np.arange(count) % 10).astype(np.uint8)
    images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
    for i, lab in enumerate(labels):
        images[i, 2 + 2 * lab : 4 + 2 * lab, 4:24] = 255
    img_path = folder / "t10k-images-idx3-ubyte.gz"
    lab_path = folder / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(img_path, "wb") as fh:
        fh.write(struct.pack(">IIII", 0x00000803, count, 28, 28) + images.tobytes())
    with gzip.open(lab_path, "wb") as fh:
        fh.write(struct.pack(">II", 0x00000801, count) + labels.tobytes())
    return img_path, lab_path
