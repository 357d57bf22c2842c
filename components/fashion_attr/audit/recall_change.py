"""Per-attribute recall change of the challenger against the champion, for the gate record.

The promotion gate compares a few aggregate metrics; a person deciding whether to trust
a promotion also wants to know which attributes got worse. Both models are scored on
the same (paired) test split, so per attribute the change in top-k recall (the share
of its test positives that the model ranks in an image's top k, docs/method.md
section 6) is like for like.

The register step can record it with one call (see :func:`paired_recall_change`), or,
having both :class:`~fashion_attr.classifier.scoring.Scores` at hand already, with
:func:`recall_change` and :func:`render_recall_change`. Either side may also be the
``per_attribute.csv`` the evaluate step wrote.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fashion_attr import storage

__all__ = [
    "paired_recall_change",
    "read_per_attribute_csv",
    "recall_change",
    "render_recall_change",
]

PerAttribute = Sequence[Mapping[str, Any]]


def read_per_attribute_csv(uri: str) -> list[dict[str, Any]]:
    """The records of a ``per_attribute.csv`` written by the evaluate step (numbers parsed)."""
    rows = []
    for row in csv.DictReader(io.StringIO(storage.read_text(uri))):
        parsed: dict[str, Any] = {}
        for k, v in row.items():
            if k == "name" or k == "group":
                parsed[k] = v
                continue
            try:
                parsed[k] = float(v) if v != "" else float("nan")
            except ValueError:
                parsed[k] = v
        rows.append(parsed)
    return rows


def _records(side: PerAttribute | str) -> Sequence[Mapping[str, Any]]:
    return read_per_attribute_csv(side) if isinstance(side, str) else list(side)


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def recall_change(
    challenger: PerAttribute | str,
    champion: PerAttribute | str,
    *,
    attribute_names: Sequence[str] | None = None,
    k: int = 3,
) -> list[dict[str, Any]]:
    """Per attribute: top-k recall of both models on the paired split, and the change.

    Args:
        challenger: The challenger's per-attribute records (``Scores.per_attribute``) or
            the URI of its ``per_attribute.csv``.
        champion: The champion's, on the same split.
        attribute_names: Names in index order (default: the records' ``name``).
        k: The k of top-k recall (the records must hold ``recall@k``).

    Returns:
        One row per attribute with test positives: ``name``, ``group``, ``is_tail``,
        ``test_positives``, ``challenger``, ``champion``, ``delta`` (challenger minus
        champion), worst change first.

    Raises:
        ValueError: the two sides differ in attributes (not paired).
    """
    a, b = _records(challenger), _records(champion)
    if len(a) != len(b):
        raise ValueError(
            f"recall_change: {len(a)} challenger attributes vs {len(b)} champion ones. Fix: "
            "score both models on the same dataset version (the gate's paired split)"
        )
    key = f"recall@{k}"
    rows: list[dict[str, Any]] = []
    for j, (x, y) in enumerate(zip(a, b, strict=True)):
        name = attribute_names[j] if attribute_names is not None else str(x.get("name", j))
        positives = _num(x.get("test_positives"))
        if _num(y.get("test_positives")) != positives:
            raise ValueError(
                f"recall_change: attribute {name!r} has {positives:g} test positives for the "
                f"challenger and {_num(y.get('test_positives')):g} for the champion: not the "
                "same split. Fix: score both on the challenger's test split"
            )
        if not positives or not math.isfinite(positives):
            continue
        ra, rb = _num(x.get(key)), _num(y.get(key))
        rows.append(
            {
                "name": name,
                "group": x.get("group"),
                "is_tail": bool(_num(x.get("is_tail")) == 1.0 or x.get("is_tail") is True),
                "test_positives": int(positives),
                "challenger": ra,
                "champion": rb,
                "delta": ra - rb,
            }
        )
    rows.sort(key=lambda r: (r["delta"] if math.isfinite(r["delta"]) else 0.0, r["name"]))
    return rows


def render_recall_change(rows: Sequence[Mapping[str, Any]], *, k: int = 3, top: int = 10) -> str:
    """Markdown: the ``top`` largest drops and gains of per-attribute top-k recall."""

    def pct(v: float) -> str:
        return f"{100 * v:.1f}" if math.isfinite(v) else "n/a"

    def table(sel: Sequence[Mapping[str, Any]]) -> list[str]:
        out = [
            f"| attribute | group | tail | test positives | champion recall@{k} % "
            f"| challenger recall@{k} % | change (pp) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sel:
            out.append(
                f"| {r['name']} | {r['group']} | {'yes' if r['is_tail'] else ''} | "
                f"{r['test_positives']} | {pct(r['champion'])} | {pct(r['challenger'])} | "
                f"{100 * r['delta']:+.1f} |"
            )
        return out

    drops = [r for r in rows if r["delta"] < 0][:top]
    gains = sorted((r for r in rows if r["delta"] > 0), key=lambda r: -r["delta"])[:top]
    worse, better = sum(r["delta"] < 0 for r in rows), sum(r["delta"] > 0 for r in rows)
    lines = [
        f"Per-attribute top-{k} recall, challenger vs champion on the paired test split: "
        f"{worse} attribute(s) worse, {better} better, {len(rows) - worse - better} unchanged.",
        "",
    ]
    if drops:
        lines += ["Largest drops:", "", *table(drops), ""]
    if gains:
        lines += ["Largest gains:", "", *table(gains), ""]
    return "\n".join(lines)


def paired_recall_change(
    eval_cfg: Any, challenger_model: str, champion_model: str, data: str, *, k: int | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Score both models on ``data``'s test split and compare them per attribute.

    Args:
        eval_cfg: The :class:`~fashion_attr.config.EvaluateConfig` of the evaluation.
        challenger_model: The challenger's ``model.pt``.
        champion_model: The champion's ``model.pt``.
        data: The dataset version the challenger was evaluated on.
        k: The k (default: the evaluation's first).

    Returns:
        ``(rows, markdown)``: :func:`recall_change` and :func:`render_recall_change`.
    """
    from fashion_attr.classifier.scoring import score_model

    k = k or int(eval_cfg.ks[0])
    cfg = eval_cfg.model_copy(update={"whole_images": 0})
    challenger = score_model(cfg, challenger_model, data)
    champion = score_model(cfg, champion_model, data)
    rows = recall_change(
        challenger.per_attribute,
        champion.per_attribute,
        attribute_names=challenger.attribute_names,
        k=k,
    )
    return rows, render_recall_change(rows, k=k)
