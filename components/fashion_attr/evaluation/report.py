"""Evaluation report writer: JSON metrics, Markdown tables, per-attribute CSV and plots.

Takes the results of :class:`~fashion_attr.evaluation.metrics.AttributeMetrics` and
:class:`~fashion_attr.evaluation.metrics.CategoryMetrics` (a flat metrics dict, the
per-attribute records and the confusion matrix) and writes them to a local
directory; uploading to object storage or MLflow is the caller's job.

Conventions:

* Metric values are fractions in [0, 1]; tables print them as percentages with two
  decimals, like the paper's tables, and deltas in percentage points (pp).
* An undefined value (NaN, or a key that is absent) prints as ``n/a`` in Markdown,
  is an empty cell in the CSV, and is ``null`` in JSON (NaN is not valid JSON).
* Every file is written atomically (temporary file in the same folder, then
  ``os.replace``), so a reader never sees a half-written report.
* Plots use matplotlib's object API (``matplotlib.figure.Figure`` rendered by the
  Agg canvas); no pyplot state, no display, no global backend switch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashion_attr import storage
from fashion_attr.data.annotations import ATTRIBUTE_GROUPS
from fashion_attr.evaluation.metrics import ALL_GROUP, TAIL_GROUP

__all__ = [
    "markdown_report",
    "plot_confusion",
    "plot_group_recall",
    "plot_prob_vs_frequency",
    "plots_html",
    "read_metrics_json",
    "write_metrics_json",
    "write_per_attribute_csv",
    "write_report",
]

NA = "n/a"


# ----------------------------------------------------------------------------- helpers
def _atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`fashion_attr.storage.write_bytes`)."""
    storage.write_bytes(path, data)
    return Path(path)


def _atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return _atomic_write_bytes(path, text.encode("utf-8"))


def _to_float(value: Any) -> float:
    """Float value of a metric; NaN for None, missing or non-numeric values."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _pct(value: Any) -> str:
    v = _to_float(value)
    return f"{100.0 * v:.2f}" if math.isfinite(v) else NA


def _delta_pp(a: Any, b: Any) -> str:
    va, vb = _to_float(a), _to_float(b)
    if not (math.isfinite(va) and math.isfinite(vb)):
        return NA
    return f"{100.0 * (va - vb):+.2f}"


def _md_cell(text: Any) -> str:
    # A "|" inside a cell would split it; attribute names are free text.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def _group_list(group_names: Mapping[int, str] | None) -> list[str]:
    names = ATTRIBUTE_GROUPS if group_names is None else group_names
    return [names[g] for g in sorted(names)]


def _jsonable(value: Any) -> Any:
    """Recursively convert to JSON-safe values; non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(
        f"write_metrics_json: value {value!r} of type {type(value).__name__} is not JSON "
        "serialisable; pass numbers, strings, lists or dicts."
    )


def _save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return _atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------- JSON
def write_metrics_json(
    path: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"metrics": metrics, "extra": extra}`` as JSON.

    NaN and infinities are written as ``null`` (strict JSON has no NaN); numpy
    scalars and arrays become plain numbers and lists.

    Args:
        path: Output file.
        metrics: Flat metrics dict (from ``compute()``).
        extra: Anything else worth keeping next to the metrics (model name, dataset
            version, number of test images...). ``None`` writes ``{}``.

    Returns:
        The path written.

    Raises:
        TypeError: If a value cannot be represented in JSON.
    """
    doc = {"metrics": _jsonable(dict(metrics)), "extra": _jsonable(dict(extra or {}))}
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    return _atomic_write_text(path, text)


def read_metrics_json(uri: str | os.PathLike[str]) -> dict[str, float | None]:
    """Read the flat ``metrics`` of a ``metrics.json`` (:func:`write_metrics_json`).

    Local paths and ``s3://`` URIs both work. ``null`` stays None (a metric that could
    not be computed, or was not finite).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not JSON, or no ``metrics`` object of numbers/nulls (names the URI).
    """
    try:
        doc = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{uri}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). Fix: "
            "pass the metrics.json written by evaluate"
        ) from None
    metrics = doc.get("metrics") if isinstance(doc, dict) else None
    if not isinstance(metrics, dict):
        raise ValueError(
            f"{uri}: field 'metrics' is missing or not an object. Fix: pass the metrics.json "
            'written by evaluate ({"metrics": {"attr_recall@3/all": 0.5, ...}})'
        )
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(
                f"{uri}: metrics.{key} = {value!r} is not a number or null. Fix: re-run evaluate"
            )
        out[str(key)] = None if value is None else float(value)
    return out


# --------------------------------------------------------------------------- Markdown
def _table1(
    rows: Sequence[tuple[str, Mapping[str, Any]]], groups: Sequence[str], ks: Sequence[int]
) -> str:
    header = ["Model"] + [f"Category top-{k}" for k in ks]
    for g in [*groups, ALL_GROUP]:
        header += [f"{g.capitalize()} top-{k}" for k in ks]
    body = []
    for name, m in rows:
        row = [name] + [_pct(m.get(f"cat_top{k}_acc")) for k in ks]
        for g in [*groups, ALL_GROUP]:
            row += [_pct(m.get(f"attr_recall@{k}/{g}")) for k in ks]
        body.append(row)
    return _md_table(header, body)


def _table2(rows: Sequence[tuple[str, Mapping[str, Any]]], groups: Sequence[str]) -> str:
    cols = [*groups, ALL_GROUP]
    header = ["Model", "Metric"] + [g.capitalize() for g in cols]
    body = []
    for name, m in rows:
        body.append([name, "Class-balanced acc."] + [_pct(m.get(f"cb_acc/{g}")) for g in cols])
        body.append([name, "mAP"] + [_pct(m.get(f"map/{g}")) for g in cols])
    return _md_table(header, body)


def _tail_table(
    rows: Sequence[tuple[str, Mapping[str, Any]]], ks: Sequence[int], num_tail: int | None
) -> str:
    header = ["Model", "Attributes"] + [f"Top-{k} recall" for k in ks]
    header += ["Class-balanced acc.", "mAP"]
    body = []
    for name, m in rows:
        for g in (TAIL_GROUP, ALL_GROUP):
            label = g if g == ALL_GROUP or num_tail is None else f"tail ({num_tail})"
            row = [name, label] + [_pct(m.get(f"attr_recall@{k}/{g}")) for k in ks]
            row += [_pct(m.get(f"cb_acc/{g}")), _pct(m.get(f"map/{g}"))]
            body.append(row)
    return _md_table(header, body)


def _metric_order(groups: Sequence[str], ks: Sequence[int]) -> list[str]:
    keys = [f"cat_top{k}_acc" for k in dict.fromkeys((1, *ks))]  # ks may contain 1
    sets = [*groups, ALL_GROUP, TAIL_GROUP]
    for k in ks:
        keys += [f"attr_recall@{k}/{g}" for g in sets]
    keys += [f"cb_acc/{g}" for g in sets]
    keys += [f"map/{g}" for g in sets]
    return keys


def _attribute_label(rec: Mapping[str, Any], attribute_names: Sequence[str] | None) -> str:
    j = int(rec["index"])
    if attribute_names is not None and 0 <= j < len(attribute_names):
        return str(attribute_names[j])
    return str(j)


def _count_str(value: Any) -> str:
    return NA if value is None else str(value)


def markdown_report(
    metrics: Mapping[str, Any],
    per_attribute: Sequence[Mapping[str, Any]],
    category_names: Sequence[str],
    group_names: Mapping[int, str] | None = None,
    title: str = "Evaluation report",
    comparison: Mapping[str, Any] | None = None,
    *,
    model_name: str = "this model",
    comparison_name: str = "reference",
    confusion: np.ndarray | None = None,
    attribute_names: Sequence[str] | None = None,
    ks: Sequence[int] = (3, 5),
    num_hardest: int = 10,
    tail_threshold: int | None = 100,
) -> str:
    """Render the evaluation as Markdown.

    Sections: Table-1 style (category top-k accuracy and attribute top-k recall per
    group and over all attributes, the layout of the paper's Table 1); Table-2 style
    (class-balanced accuracy and mAP per group and over all attributes); tail
    attributes (the same metrics on the tail against all, plus the tail attributes
    with the lowest AP); per-category top-1 accuracy when ``confusion`` is given;
    and, when ``comparison`` is given, the other model's row in every table and a
    table of deltas in percentage points.

    Args:
        metrics: Flat metrics dict (attribute and category metrics merged).
        per_attribute: Records from ``AttributeMetrics.per_attribute()``.
        category_names: Name of each category (index order); used for the
            per-category table.
        group_names: Attribute group names by id (default: DeepFashion's five).
        title: The document's title.
        comparison: Another model's metrics dict (same keys), e.g. the production
            model or the paper's baseline.
        model_name: Row label of ``metrics``.
        comparison_name: Row label of ``comparison``.
        confusion: Top-1 confusion matrix ``[C, C]`` (rows true) for the per-category
            table; ``None`` leaves that table out.
        attribute_names: Attribute names (index order) for the hardest-tail list;
            ``None`` prints indices.
        ks: The k values shown in the top-k columns.
        num_hardest: How many tail attributes to list by lowest AP.
        tail_threshold: The tail threshold used by the metrics, quoted in the text
            (``None``: not quoted).

    Returns:
        The Markdown text.
    """
    groups = _group_list(group_names)
    ks = tuple(ks)
    rows: list[tuple[str, Mapping[str, Any]]] = [(model_name, metrics)]
    if comparison is not None:
        rows.append((comparison_name, comparison))
    tail_records = [r for r in per_attribute if r.get("is_tail")]
    have_train_counts = any(r.get("train_positives") is not None for r in per_attribute)
    num_tail = len(tail_records) if have_train_counts else None

    parts = [f"# {title}", ""]
    parts.append(
        "Values are percentages. Attribute top-k recall follows the DeepFashion evaluation "
        "protocol (per group: hits in each image's top k of that group, summed over the test "
        "set, over the group's positives). `n/a`: undefined (no attributes or no positives)."
    )
    parts += ["", "## Top-k (Table 1 layout)", "", _table1(rows, groups, ks), ""]
    parts += ["## Class-balanced accuracy and mAP (Table 2 layout)", ""]
    parts += [
        "Class-balanced accuracy: (TPR + TNR) / 2 at threshold 0.5, mean over the attributes "
        "that have both positives and negatives in the test set. mAP: mean AP over the "
        "attributes with test positives.",
        "",
        _table2(rows, groups),
        "",
    ]

    parts += ["## Tail attributes", ""]
    few = "few" if tail_threshold is None else f"fewer than {tail_threshold}"
    if num_tail is None:
        parts += ["No training positive counts were given, so no tail set is defined.", ""]
    else:
        parts += [
            f"Tail: the {num_tail} attributes with {few} training positives; for top-k recall "
            "each image ranks only its tail attributes (one more group).",
            "",
            _tail_table(rows, ks, num_tail),
            "",
        ]
        with_ap = [r for r in tail_records if math.isfinite(_to_float(r.get("ap")))]
        hardest = sorted(with_ap, key=lambda r: (_to_float(r["ap"]), int(r["index"])))
        if hardest and num_hardest > 0:
            k0 = ks[0]
            header = ["Attribute", "Group", "Train pos.", "Test pos.", "AP"]
            header += [f"Recall@{k0} (all ranking)", "Mean prob. on pos."]
            body = [
                [
                    _attribute_label(r, attribute_names),
                    r.get("group", NA),
                    _count_str(r.get("train_positives")),
                    _count_str(r.get("test_positives")),
                    _pct(r.get("ap")),
                    _pct(r.get(f"recall@{k0}")),
                    _pct(r.get("mean_prob_pos")),
                ]
                for r in hardest[:num_hardest]
            ]
            parts += [f"Tail attributes with the lowest AP (up to {num_hardest}):", ""]
            parts += [_md_table(header, body), ""]

    whole = _whole_image_table(metrics)
    if whole:
        parts += ["## Garment crops vs whole photos", ""]
        parts += [
            "Crops: the test images cut to their garment box, as training saw them (and as a "
            "served model sees a request with a `bbox`). Whole photos: the same images uncut, "
            "squashed to the model's input, as a served model sees a request without one.",
            "",
            whole,
            "",
        ]

    if confusion is not None:
        conf = np.asarray(confusion)
        support = conf.sum(axis=1)
        body = []
        for c in np.flatnonzero(support > 0).tolist():
            off = conf[c].copy()
            off[c] = 0
            worst = int(off.argmax())
            confused = (
                f"{_category_label(worst, category_names)} ({int(off[worst])})"
                if off[worst] > 0
                else "-"
            )
            acc = conf[c, c] / support[c]
            body.append([_category_label(c, category_names), int(support[c]), _pct(acc), confused])
        parts += ["## Per-category top-1 accuracy", ""]
        parts += [
            f"{len(body)} of {conf.shape[0]} categories occur in the test set.",
            "",
            _md_table(["Category", "Test images", "Top-1 acc.", "Most confused with"], body),
            "",
        ]

    if comparison is not None:
        keys = [k for k in _metric_order(groups, ks) if k in metrics or k in comparison]
        keys += sorted((set(metrics) | set(comparison)) - set(keys))
        body = [
            [
                k,
                _pct(metrics.get(k)),
                _pct(comparison.get(k)),
                _delta_pp(metrics.get(k), comparison.get(k)),
            ]
            for k in keys
        ]
        parts += [f"## Comparison: {model_name} vs {comparison_name}", ""]
        parts += [_md_table(["Metric", model_name, comparison_name, "Delta (pp)"], body), ""]
    return "\n".join(parts)


#: Metrics compared between crops and whole photos (when both were scored).
WHOLE_IMAGE_METRICS = (
    "cat_top1_acc",
    "cat_top3_acc",
    "attr_recall@3/all",
    "attr_recall@5/all",
    "map/all",
    "cb_acc/all",
)


def _whole_image_table(metrics: Mapping[str, Any]) -> str:
    keys = [k for k in WHOLE_IMAGE_METRICS if f"whole/{k}" in metrics and k in metrics]
    if not keys:
        return ""
    body = [[k, _pct(metrics.get(k)), _pct(metrics.get(f"whole/{k}"))] for k in keys]
    return _md_table(["Metric", "Garment crops", "Whole photos"], body)


def _category_label(c: int, category_names: Sequence[str]) -> str:
    return str(category_names[c]) if 0 <= c < len(category_names) else str(c)


# -------------------------------------------------------------------------------- CSV
def write_per_attribute_csv(
    path: str | os.PathLike[str],
    per_attribute: Sequence[Mapping[str, Any]],
    attribute_names: Sequence[str],
) -> Path:
    """Write one CSV row per attribute.

    Columns: ``index, name`` then every key of the records in their order
    (``group, group_id, is_tail, train_positives, test_positives, test_negatives,
    ap, recall@k..., mean_prob_pos, tpr, tnr, cb_acc``). Values are fractions;
    NaN and None are empty cells.

    Args:
        path: Output file.
        per_attribute: Records from ``AttributeMetrics.per_attribute()``.
        attribute_names: Name of each attribute, one per record.

    Returns:
        The path written.

    Raises:
        ValueError: If ``attribute_names`` and ``per_attribute`` differ in length.
    """
    if len(attribute_names) != len(per_attribute):
        raise ValueError(
            f"write_per_attribute_csv: {len(attribute_names)} attribute names for "
            f"{len(per_attribute)} per-attribute records; pass the names of the same "
            "attributes, in index order (list_attr_cloth.txt)."
        )
    keys: list[str] = []
    for rec in per_attribute:
        keys += [k for k in rec if k not in keys and k != "index"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "name", *keys])

    def cell(v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.6g}" if math.isfinite(float(v)) else ""
        return v

    for rec, name in zip(per_attribute, attribute_names, strict=True):
        writer.writerow([rec.get("index", ""), name, *(cell(rec.get(k)) for k in keys)])
    return _atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------ plots
def _new_figure(size: tuple[float, float]) -> Any:
    # The object API keeps plotting free of pyplot's global state and of any display.
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def plot_prob_vs_frequency(
    path: str | os.PathLike[str],
    per_attribute: Sequence[Mapping[str, Any]],
    tail_threshold: int | None = 100,
) -> Path:
    """Plot mean predicted probability on positives against training positives (paper Fig. 2).

    One point per attribute with a training count above 0 and at least one test
    positive, coloured by group, on a log x axis; a dashed line marks the tail
    threshold. With nothing to plot the figure says so.

    Args:
        path: Output PNG.
        per_attribute: Records from ``AttributeMetrics.per_attribute()``.
        tail_threshold: Where to draw the tail line; ``None`` draws none.

    Returns:
        The path written.
    """
    fig = _new_figure((7.0, 4.5))
    ax = fig.add_subplot()
    by_group: dict[str, tuple[list[float], list[float]]] = {}
    # Group-id order, so the legend lists texture ... style as the tables do.
    for r in sorted(per_attribute, key=lambda r: (_to_float(r.get("group_id")), r.get("index", 0))):
        x = _to_float(r.get("train_positives"))
        y = _to_float(r.get("mean_prob_pos"))
        if math.isfinite(x) and x > 0 and math.isfinite(y):
            xs, ys = by_group.setdefault(str(r.get("group", "?")), ([], []))
            xs.append(x)
            ys.append(y)
    if by_group:
        for group, (xs, ys) in by_group.items():
            ax.scatter(xs, ys, s=10, alpha=0.7, label=group)
        ax.set_xscale("log")
        if tail_threshold is not None:
            ax.axvline(tail_threshold, color="grey", linestyle="--", linewidth=1)
        ax.legend(fontsize=8, markerscale=1.5)
    else:
        ax.text(
            0.5,
            0.5,
            "no attribute with training counts and test positives",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("training positives (log scale)")
    ax.set_ylabel("mean predicted probability on test positives")
    ax.set_title("Confidence on positives vs attribute frequency")
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def plot_group_recall(
    path: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    group_names: Mapping[int, str] | None = None,
    ks: Sequence[int] = (3, 5),
) -> Path:
    """Plot grouped bars of attribute top-k recall per group, all and tail.

    Undefined values are drawn as empty bars labelled ``n/a``.

    Args:
        path: Output PNG.
        metrics: Flat metrics dict with ``attr_recall@{k}/{group}`` keys.
        group_names: Attribute group names by id (default: DeepFashion's five).
        ks: The k values, one bar per k in each group.

    Returns:
        The path written.
    """
    sets = [*_group_list(group_names), ALL_GROUP, TAIL_GROUP]
    ks = tuple(ks)
    fig = _new_figure((8.0, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(sets), dtype=np.float64)
    width = 0.8 / max(len(ks), 1)
    for i, k in enumerate(ks):
        vals = np.array([_to_float(metrics.get(f"attr_recall@{k}/{g}")) for g in sets])
        pos = x + (i - (len(ks) - 1) / 2) * width
        heights = np.where(np.isfinite(vals), 100.0 * vals, 0.0)
        bars = ax.bar(pos, heights, width, label=f"top-{k}")
        for bar, v in zip(bars, vals, strict=True):
            text = f"{100 * v:.1f}" if math.isfinite(v) else NA
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x)
    ax.set_xticklabels(sets)
    ax.set_ylim(0.0, 105.0)
    ax.set_ylabel("top-k recall (%)")
    ax.set_title("Attribute top-k recall per group")
    # Below the axes: bars reach 100 %, a legend inside would hide their labels.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=max(len(ks), 1))
    ax.grid(axis="y", alpha=0.3)
    return _save_figure(fig, path)


def plot_confusion(
    path: str | os.PathLike[str],
    confusion: np.ndarray,
    category_names: Sequence[str],
    drop_empty: bool = True,
) -> Path:
    """Plot the row-normalised category confusion matrix as a heatmap.

    Each row (true category) is divided by its count, so a cell is the fraction of
    that category's images predicted as the column's category. Rows with no image
    stay zero.

    Args:
        path: Output PNG.
        confusion: Int array ``[C, C]``, rows true, columns predicted.
        category_names: Name of each category (index order).
        drop_empty: Leave out categories with neither test images nor predictions
            (DeepFashion-C declares 50 categories, 46 occur).

    Returns:
        The path written.

    Raises:
        ValueError: If ``confusion`` is not square.
    """
    conf = np.asarray(confusion, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(
            f"plot_confusion: `confusion` must be a square [C, C] matrix; got {conf.shape}. "
            "Pass CategoryMetrics.confusion_matrix()."
        )
    keep = np.arange(conf.shape[0])
    if drop_empty:
        keep = np.flatnonzero((conf.sum(0) + conf.sum(1)) > 0)
    sub = conf[np.ix_(keep, keep)]
    rows = sub.sum(axis=1, keepdims=True)
    norm = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)
    n = len(keep)
    side = float(min(max(4.0, 0.22 * n + 2.0), 16.0))
    fig = _new_figure((side + 1.0, side))
    ax = fig.add_subplot()
    if n:
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true category")
        labels = [_category_label(int(c), category_names) for c in keep]
        fontsize = 8 if n <= 20 else 6
        ax.set_xticks(np.arange(n))
        ax.set_yticks(np.arange(n))
        ax.set_xticklabels(labels, rotation=90, fontsize=fontsize)
        ax.set_yticklabels(labels, fontsize=fontsize)
    else:
        ax.text(0.5, 0.5, "no test images", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("predicted category (top-1)")
    ax.set_ylabel("true category")
    ax.set_title("Category confusion (row-normalised)")
    return _save_figure(fig, path)


def plots_html(pngs: Mapping[str, bytes], title: str = "Evaluation plots") -> str:
    """One self-contained HTML page showing PNG images (``{name: png bytes}``), in order."""
    import base64
    import html

    parts = [f"<html><body><h2>{html.escape(title)}</h2>"]
    for name, data in pngs.items():
        encoded = base64.b64encode(data).decode()
        parts.append(f'<h3>{html.escape(name)}</h3><img src="data:image/png;base64,{encoded}"/>')
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- all files
def write_report(
    out_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    per_attribute: Sequence[Mapping[str, Any]],
    attribute_names: Sequence[str],
    category_names: Sequence[str],
    confusion: np.ndarray | None = None,
    *,
    group_names: Mapping[int, str] | None = None,
    title: str = "Evaluation report",
    extra: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
    model_name: str = "this model",
    comparison_name: str = "reference",
    ks: Sequence[int] = (3, 5),
    tail_threshold: int | None = 100,
) -> list[Path]:
    """Write the whole report to ``out_dir``.

    Files: ``metrics.json``, ``report.md``, ``per_attribute.csv``,
    ``prob_vs_frequency.png``, ``group_recall.png`` and, when ``confusion`` is
    given, ``confusion.png``.

    Args:
        out_dir: Output folder (created if missing).
        metrics: Flat metrics dict (attribute and category metrics merged).
        per_attribute: Records from ``AttributeMetrics.per_attribute()``.
        attribute_names: Name of each attribute, one per record.
        category_names: Name of each category (index order).
        confusion: ``CategoryMetrics.confusion_matrix()``, or ``None``.
        group_names: Attribute group names by id (default: DeepFashion's five).
        title: Report title.
        extra: Extra JSON fields (see :func:`write_metrics_json`).
        comparison: Another model's metrics dict for the comparison table.
        model_name: Label of this model in the tables.
        comparison_name: Label of the comparison model.
        ks: The k values of the top-k columns and bars.
        tail_threshold: The metrics' tail threshold: quoted in the report, drawn as a
            line on the frequency plot.

    Returns:
        The paths written, in the order listed above.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_report(
        metrics,
        per_attribute,
        category_names,
        group_names,
        title,
        comparison,
        model_name=model_name,
        comparison_name=comparison_name,
        confusion=confusion,
        attribute_names=attribute_names,
        ks=ks,
        tail_threshold=tail_threshold,
    )
    paths = [
        write_metrics_json(out / "metrics.json", metrics, extra),
        _atomic_write_text(out / "report.md", md),
        write_per_attribute_csv(out / "per_attribute.csv", per_attribute, attribute_names),
        plot_prob_vs_frequency(out / "prob_vs_frequency.png", per_attribute, tail_threshold),
        plot_group_recall(out / "group_recall.png", metrics, group_names, ks),
    ]
    if confusion is not None:
        paths.append(plot_confusion(out / "confusion.png", confusion, category_names))
    return paths
