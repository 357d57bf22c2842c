"""A demo catalog as a catalog batch: one JSON Lines record per image, as a shop would drop it.

Scheduled retraining folds batches (``<drop>/<date>.jsonl``) into the latest dataset
version (docs/deepfashion-c-format.md, "Catalog batches"). :func:`write_catalog_batch` turns
a DeepFashion-C-layout folder (a generated demo catalog) into such a batch, so the whole
scenario (a new batch, its audit, the paired gate) runs locally with ``make run
BATCH=...``; a share of the records can be left without labels, as new products arrive.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from fashion_attr.data.annotations import load_annotations_from_dir

__all__ = ["write_catalog_batch"]


def write_catalog_batch(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    unlabelled_share: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write every image of the dataset at ``root`` as one JSON Lines catalog batch.

    Args:
        root: a DeepFashion-C-layout folder (``Anno/``, ``Eval/``, ``Img/``).
        out: the ``.jsonl`` file to write (its folder is created).
        unlabelled_share: the share of records written without labels (no ``category``,
            no ``attributes``): images the champion tags and a person may label.
        seed: which records lose their labels.

    Returns:
        The batch file.

    Raises:
        ValueError: ``unlabelled_share`` outside [0, 1].
    """
    if not 0.0 <= unlabelled_share <= 1.0:
        raise ValueError(f"unlabelled_share={unlabelled_share}. Fix: use a share in [0, 1]")
    base = Path(root).resolve()
    index = load_annotations_from_dir(base)
    categories = [c.name for c in index.categories]
    attributes = [a.name for a in index.attributes]
    rng = random.Random(seed)
    lines = []
    for rec in index.records:
        row: dict[str, object] = {
            "image": str(base / "Img" / rec.name),
            "bbox": list(rec.bbox),
            "split": rec.split,
        }
        if rng.random() >= unlabelled_share:
            row["category"] = categories[rec.category]
            row["attributes"] = [attributes[j] for j in rec.positives]
        lines.append(json.dumps(row))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # a drop folder never shows a half-written batch
    return path
