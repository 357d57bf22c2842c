"""Tags for images without labels, and the queue that says which to label first.

**Tags** (``tags.jsonl``): what the champion says about each record the batch
brought without (all of) its labels, in the served model's answer format
(:mod:`fashion_attr.registry.pyfunc`): the category with its probability, per
attribute group the attributes at or above the threshold, the top k per group, plus
``top_k_all`` (the k most probable attributes overall, the ranking top-k recall
scores).

**Labelling queue** (``to_label.jsonl``): the same records ranked so that a team
labels what helps most first, by the champion's uncertainty weighted by the hardness
the hard-label memory tracks (:class:`fashion_attr.hardness.HardLabelMemory`,
docs/method.md section 3). With ``S_cat(c)`` and ``S_j(1)`` the memory's scores
scaled to mean 1 over the labels present:

- category term: the normalised entropy of the champion's category distribution,
  times ``S_cat`` of its top category (an uncertain guess about a category the
  classifier finds hard counts more);
- attribute term: the mean binary entropy of the attribute probabilities, weighted by
  ``S_j(1)`` (uncertainty about hard attributes counts more);
- ``priority = (category term + attribute term) / 2``.

The memory is the one training tracked, from the ``checkpoint.pt`` beside the
champion's ``model.pt`` when it is there; otherwise it is rebuilt by the same update
rule (EMA of ``|y - p| ** gamma`` per label, momentum 0.5) from the champion's
predictions on the base version's labelled val images (:func:`memory_from_predictions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fashion_attr.audit.records import AuditRecord
from fashion_attr.data.annotations import ATTRIBUTE_GROUPS
from fashion_attr.hardness import HardLabelMemory

__all__ = [
    "group_name",
    "labelling_queue",
    "memory_from_checkpoint",
    "memory_from_predictions",
    "tag_records",
]

_EPS = 1e-7


def group_name(group: int) -> str:
    """Readable name of attribute group ``group`` (as the served model names it)."""
    return ATTRIBUTE_GROUPS.get(int(group), f"group{int(group)}")


def _r(v: float) -> float:
    return round(float(v), 4)


def tag_records(
    records: Sequence[AuditRecord],
    cat_probs: np.ndarray,
    attr_probs: np.ndarray,
    *,
    category_names: Sequence[str],
    attribute_names: Sequence[str],
    attribute_groups: Sequence[int],
    threshold: float = 0.5,
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """One tag record per image, in the served model's answer format.

    Args:
        records: The records to tag (row ``i`` of the probabilities is record ``i``).
        cat_probs: ``[n, C]`` category probabilities.
        attr_probs: ``[n, N]`` attribute probabilities.
        category_names: Category names.
        attribute_names: Attribute names.
        attribute_groups: Group id per attribute.
        threshold: Attribute probability at which a tag is given.
        top_k: Attributes listed per group and overall.

    Returns:
        ``{"image", "labelled", "category", "category_prob", "attributes", "top_k",
        "top_k_all", "batch", "line", "key"}`` per record; ``labelled`` is ``"none"``
        or ``"category"`` (the record gave its category: that is kept as given).
    """
    groups: dict[str, list[int]] = {}
    for g in sorted(set(attribute_groups)):
        groups[group_name(g)] = [j for j, gj in enumerate(attribute_groups) if gj == g]
    out = []
    for i, rec in enumerate(records):
        p = attr_probs[i]
        if cat_probs.shape[1]:
            c = int(np.argmax(cat_probs[i]))
            category, category_prob = category_names[c], _r(cat_probs[i, c])
        else:
            category, category_prob = None, None
        if rec.labelled and rec.category is not None:  # the given category stands
            category, category_prob = category_names[rec.category], None
        attributes, top = {}, {}
        for name, idx in groups.items():
            ranked = sorted(idx, key=lambda j: -float(p[j]))
            items: list[dict[str, Any]] = [
                {"name": attribute_names[j], "prob": _r(p[j])} for j in ranked
            ]
            attributes[name] = [it for it in items if it["prob"] >= threshold]
            top[name] = items[:top_k]
        overall = np.argsort(-p, kind="stable")[:top_k]
        out.append(
            {
                "image": rec.image,
                "labelled": "category" if rec.labelled else "none",
                "category": category,
                "category_prob": category_prob,
                "attributes": attributes,
                "top_k": top,
                "top_k_all": [{"name": attribute_names[j], "prob": _r(p[j])} for j in overall],
                "batch": rec.batch,
                "line": rec.line,
                "key": rec.key,
            }
        )
    return out


def memory_from_checkpoint(
    state: dict[str, Any], num_attributes: int, num_categories: int
) -> HardLabelMemory | None:
    """The hard-label memory a training checkpoint holds, or None (Deact was off)."""
    saved = state.get("memory") if isinstance(state, dict) else None
    if not saved:
        return None
    memory = HardLabelMemory(num_attributes, num_categories)
    memory.load_state_dict(saved)
    return memory


def memory_from_predictions(
    cat_probs: np.ndarray,
    attr_probs: np.ndarray,
    categories: Sequence[int],
    targets: np.ndarray,
    known: np.ndarray,
    *,
    gamma: float,
    momentum: float = 0.5,
    batch_size: int = 64,
) -> HardLabelMemory:
    """Rebuild the hard-label memory from the champion's predictions on labelled images.

    The update training makes (EMA with the champion's ``momentum``, of the node hardness
    ``|y - p| ** gamma`` per label and value, docs/method.md section 3 step 3), run over
    the images in batches of ``batch_size``, in order.
    """
    n_attr, n_cat = attr_probs.shape[1], cat_probs.shape[1]
    present_a = torch.as_tensor((targets * known).sum(axis=0) > 0)
    present_c = torch.as_tensor(np.bincount(np.asarray(categories, np.int64), minlength=n_cat) > 0)
    memory = HardLabelMemory(
        n_attr,
        n_cat,
        momentum=momentum,
        present_attributes=present_a if n_attr else None,
        present_categories=present_c if n_cat else None,
    )
    for start in range(0, len(categories), batch_size):
        sl = slice(start, start + batch_size)
        p = torch.as_tensor(attr_probs[sl], dtype=torch.float32)
        y = torch.as_tensor(targets[sl], dtype=torch.float32)
        cat = torch.as_tensor(np.asarray(categories[sl], np.int64))
        h_attr = (y - p).abs().clamp_min(0).pow(gamma)
        pc = torch.as_tensor(cat_probs[sl], dtype=torch.float32)
        h_cat = (1.0 - pc.gather(1, cat[:, None]).squeeze(1)).clamp_min(0).pow(gamma)
        memory.update(
            h_attr if n_attr else None,
            y if n_attr else None,
            torch.as_tensor(known[sl]) if n_attr else None,
            h_cat if n_cat else None,
            cat if n_cat else None,
        )
    return memory


def _scaled(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to mean 1 over the positive ones (zeros, absent labels, stay 0)."""
    live = scores > 0
    if not live.any():
        return np.ones_like(scores)
    return np.where(live, scores / scores[live].mean(), 0.0)


def labelling_queue(
    records: Sequence[AuditRecord],
    cat_probs: np.ndarray,
    attr_probs: np.ndarray,
    *,
    category_names: Sequence[str],
    memory: HardLabelMemory | None,
    memory_source: str,
) -> list[dict[str, Any]]:
    """Rank records for labelling: uncertainty weighted by hardness (module docstring).

    Args:
        records: The records to rank (row ``i`` of the probabilities is record ``i``).
        cat_probs: ``[n, C]`` category probabilities.
        attr_probs: ``[n, N]`` attribute probabilities.
        category_names: Category names.
        memory: The hard-label memory (None: every label weighs 1).
        memory_source: Where the memory came from (recorded in each line).

    Returns:
        One dict per record, highest ``priority`` first, with its ``rank``.
    """
    n_cat, n_attr = cat_probs.shape[1], attr_probs.shape[1]
    if memory is not None:
        w_cat = _scaled(memory.cat_scores.cpu().numpy().astype(np.float64))
        w_attr = _scaled(memory.attr_scores[:, 1].cpu().numpy().astype(np.float64))
    else:
        w_cat, w_attr = np.ones(n_cat), np.ones(n_attr)
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        pc = np.clip(cat_probs[i].astype(np.float64), _EPS, 1.0)
        top = int(np.argmax(pc)) if n_cat else -1
        if n_cat > 1 and not rec.labelled:
            entropy = float(-(pc * np.log(pc)).sum() / math.log(n_cat))
            cat_term = entropy * float(w_cat[top])
        else:
            cat_term = 0.0  # a record that gave its category: only its attributes are asked
        pa = np.clip(attr_probs[i].astype(np.float64), _EPS, 1 - _EPS)
        h = -(pa * np.log2(pa) + (1 - pa) * np.log2(1 - pa))
        attr_term = float((h * w_attr).sum() / max(w_attr.sum(), _EPS)) if n_attr else 0.0
        rows.append(
            {
                "image": rec.image,
                "priority": (cat_term + attr_term) / (1 if rec.labelled else 2),
                "uncertainty": {"category": _r(cat_term), "attributes": _r(attr_term)},
                "guess": {
                    "category": category_names[top] if top >= 0 else None,
                    "category_prob": _r(pc[top]) if top >= 0 else None,
                },
                "labelled": "category" if rec.labelled else "none",
                "hardness": memory_source,
                "batch": rec.batch,
                "line": rec.line,
                "key": rec.key,
            }
        )
    rows.sort(key=lambda r: (-r["priority"], r["image"]))
    for rank, row in enumerate(rows, start=1):
        row["priority"] = _r(row["priority"])
        row["rank"] = rank
    return [{"rank": r.pop("rank"), **r} for r in rows]
