"""Writing a demo dataset: images and the six annotation files."""

from __future__ import annotations

import shutil
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
from fashion_attr.demo.catalog import (
    DEMO_ATTRIBUTES,
    DEMO_CATEGORIES,
    DEMO_TAIL_ALPHA,
    DEMO_TOP_RATE,
    _folder_name,
    _Item,
    _labels,
    _make_items,
)
from fashion_attr.demo.render import _render

Rows = list[list[object]]


def generate_demo_dataset(
    out: str | Path,
    images: int = 600,
    seed: int = 0,
    min_size: int = 96,
    max_size: int = 192,
    unknown_rate: float = 0.0,
    top_rate: float = DEMO_TOP_RATE,
    tail_alpha: float = DEMO_TAIL_ALPHA,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a procedural dataset in the DeepFashion-C layout.

    Args:
        out: Dataset root to create (``Img/``, ``Anno/``, ``Eval/`` go inside).
        images: Number of images.
        seed: Random seed; the same arguments give byte-identical files.
        min_size: Smallest image side in pixels.
        max_size: Largest image side in pixels (each side drawn independently).
        unknown_rate: Fraction of labels written as 0 (unknown) instead of -1/1.
        top_rate: Per-item probability of the most popular attribute.
        tail_alpha: Power-law exponent of the attribute frequencies by rank.
        overwrite: Replace an existing dataset under ``out``; otherwise refuse.
        progress: Show a progress bar.

    Returns:
        The dataset root.

    Raises:
        ValueError: For an argument out of range (the message names it).
        FileExistsError: If ``out`` already holds a dataset and ``overwrite`` is False.
    """
    _check_arguments(images, min_size, max_size, unknown_rate, top_rate, tail_alpha)
    root = Path(out)
    _clear(root, overwrite)
    rng = np.random.default_rng(seed)
    items = _make_items(images, rng, top_rate, tail_alpha)
    taken: dict[str, int] = {}
    for it in items:
        it.folder = _folder_name(it.garment, it.attrs, taken)
    items.sort(key=lambda it: it.folder)  # files list items folder by folder, like the real one
    rows = _write_images(root, items, seed, min_size, max_size, unknown_rate, progress)
    _write_annotations(root, *rows)
    return root


def _check_arguments(
    images: int,
    min_size: int,
    max_size: int,
    unknown_rate: float,
    top_rate: float,
    tail_alpha: float,
) -> None:
    """Raise ValueError, naming the argument, for one out of range."""
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if not 32 <= min_size <= max_size:
        raise ValueError(
            f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}"
        )
    if not 0.0 <= unknown_rate < 1.0:
        raise ValueError(f"unknown_rate must be in [0, 1), got {unknown_rate}")
    if not 0.0 < top_rate <= 1.0 or tail_alpha < 0:
        raise ValueError(
            f"need 0 < top_rate <= 1 and tail_alpha >= 0, got {top_rate}, {tail_alpha}"
        )


def _clear(root: Path, overwrite: bool) -> None:
    """Remove a dataset already under ``root`` if ``overwrite``, else refuse."""
    existing = [root / p for p in ("Img", "Anno", "Eval") if (root / p).exists()]
    if existing:
        if not overwrite:
            raise FileExistsError(
                f"{root} already holds a dataset ({', '.join(p.name for p in existing)}); "
                "choose an empty folder or pass overwrite=True (--overwrite)"
            )
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _write_images(
    root: Path,
    items: list[_Item],
    seed: int,
    min_size: int,
    max_size: int,
    unknown_rate: float,
    progress: bool,
) -> tuple[Rows, Rows, Rows, Rows]:
    """Render and save every view; return the category, attribute, box and split rows."""
    label_rng = np.random.default_rng([seed, 1])
    cat_rows: Rows = []
    attr_rows: Rows = []
    bbox_rows: Rows = []
    part_rows: Rows = []
    cat_index = {n: i for i, (n, _) in enumerate(DEMO_CATEGORIES)}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(it.views for it in items), desc="demo images", unit="img")
    for it in items:
        folder = root / "Img" / "img" / it.folder
        folder.mkdir(parents=True, exist_ok=True)
        labels = _labels(it)
        for v in range(it.views):
            view_rng = np.random.default_rng([seed, 2, it.index, v])
            w = int(view_rng.integers(min_size, max_size + 1))
            h = int(view_rng.integers(min_size, max_size + 1))
            img, box = _render(it, view_rng, w, h)
            rel = f"img/{it.folder}/img_{v + 1:08d}.jpg"
            img.save(root / "Img" / rel, format="JPEG", quality=90)
            lab = labels.copy()
            if unknown_rate > 0:
                lab[label_rng.random(lab.size) < unknown_rate] = 0
            cat_rows.append([rel, cat_index[it.garment] + 1])
            attr_rows.append([rel, *(f"{x:2d}" for x in lab.tolist())])
            bbox_rows.append([rel, *box])
            part_rows.append([rel, it.split])
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return cat_rows, attr_rows, bbox_rows, part_rows


def _write_annotations(
    root: Path, cat_rows: Rows, attr_rows: Rows, bbox_rows: Rows, part_rows: Rows
) -> None:
    """Write the six annotation files, the partition last (a crash leaves no valid dataset)."""
    write_annotation_file(
        root / CATEGORY_CLOTH, HEADERS[CATEGORY_CLOTH], [[n, t] for n, t in DEMO_CATEGORIES]
    )
    write_annotation_file(
        root / ATTR_CLOTH, HEADERS[ATTR_CLOTH], [[n, g] for n, g in DEMO_ATTRIBUTES]
    )
    write_annotation_file(root / CATEGORY_IMG, HEADERS[CATEGORY_IMG], cat_rows)
    write_annotation_file(root / ATTR_IMG, HEADERS[ATTR_IMG], attr_rows)
    write_annotation_file(root / BBOX, HEADERS[BBOX], bbox_rows)
    write_annotation_file(root / EVAL_PARTITION, HEADERS[EVAL_PARTITION], part_rows)
