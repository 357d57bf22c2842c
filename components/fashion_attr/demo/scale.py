"""Annotation files at DeepFashion-C scale (no images), for checks of the readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fashion_attr.data.annotations import (
    ATTR_CLOTH,
    ATTR_IMG,
    BBOX,
    CATEGORY_CLOTH,
    CATEGORY_IMG,
    EVAL_PARTITION,
    HEADERS,
    write_annotation_file,
)
from fashion_attr.demo.catalog import DEMO_CATEGORIES


def write_scale_annotations(
    root: str | Path,
    images: int = 289_222,
    attributes: int = 1000,
    mean_positives: float = 3.3,
    seed: int = 0,
) -> Path:
    """Write the six annotation files at DeepFashion-C scale, without images.

    For memory and speed checks of the readers: ``list_attr_img.txt`` holds
    ``images x attributes`` labels in the shipped fixed-width layout (about
    870 MB at the defaults), with Poisson(``mean_positives``) positives per
    image drawn from a long-tailed attribute distribution.

    Args:
        root: Dataset root to write ``Anno/`` and ``Eval/`` into.
        images: Number of image records.
        attributes: Number of attributes.
        mean_positives: Mean positives per image (the paper reports about 3.3).
        seed: Random seed.

    Returns:
        The dataset root.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"img/Scale_Item_{i // 4 + 1:06d}/img_{i % 4 + 1:08d}.jpg" for i in range(images)]
    write_annotation_file(
        root / CATEGORY_CLOTH, HEADERS[CATEGORY_CLOTH], [[n, t] for n, t in DEMO_CATEGORIES]
    )
    write_annotation_file(
        root / ATTR_CLOTH,
        HEADERS[ATTR_CLOTH],
        [[f"synthetic attribute {j + 1}", j % 5 + 1] for j in range(attributes)],
    )
    cats = rng.integers(1, 47, size=images)
    write_annotation_file(
        root / CATEGORY_IMG,
        HEADERS[CATEGORY_IMG],
        ([n, int(c)] for n, c in zip(names, cats, strict=True)),
    )
    xy = rng.integers(0, 60, size=(images, 2))
    wh = rng.integers(40, 200, size=(images, 2))
    write_annotation_file(
        root / BBOX,
        HEADERS[BBOX],
        (
            [n, int(x), int(y), int(x + w), int(y + h)]
            for n, (x, y), (w, h) in zip(names, xy, wh, strict=True)
        ),
    )
    n_val = n_test = round(images * 40_000 / 289_222)
    splits = ["train"] * (images - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    write_annotation_file(
        root / EVAL_PARTITION,
        HEADERS[EVAL_PARTITION],
        ([n, s] for n, s in zip(names, splits, strict=True)),
    )
    _write_attr_img(root / ATTR_IMG, names, attributes, mean_positives, rng)
    return root


def _write_attr_img(
    path: Path,
    names: list[str],
    attributes: int,
    mean_positives: float,
    rng: np.random.Generator,
) -> None:
    """Stream list_attr_img.txt: "-1" everywhere, " 1" at the positives ("%2d" fields)."""
    images = len(names)
    pmf = np.arange(1, attributes + 1, dtype=np.float64) ** -0.8
    pmf /= pmf.sum()
    counts = np.minimum(rng.poisson(mean_positives, size=images), attributes)
    picks = rng.choice(attributes, size=int(counts.sum()), p=pmf)
    ends = np.cumsum(counts)
    template = np.frombuffer(b"-1 " * attributes, dtype=np.uint8)
    width = max(len(n) for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(f"{images}\n{HEADERS[ATTR_IMG]}\n".encode())
        chunk: list[bytes] = []
        start = 0
        for i, name in enumerate(names):
            seg = template.copy()
            seg[3 * picks[start : ends[i]]] = 32  # "-1" -> " 1"
            start = ends[i]
            chunk.append(name.ljust(width).encode() + b" " + seg[:-1].tobytes() + b"\n")
            if len(chunk) == 2000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
    tmp.replace(path)
