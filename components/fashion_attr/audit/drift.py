"""Drift: what a batch changes against its base version, each change with a test.

Labels (no model needed), the batch's labelled records against the base version's
train split (the counts its manifest keeps):

- **category mix**: a chi-square test of homogeneity over the categories either side
  has (:func:`scipy.stats.chi2_contingency`), and per category Fisher's exact test of
  its share (:func:`scipy.stats.fisher_exact`), Benjamini-Hochberg adjusted
  (:func:`scipy.stats.false_discovery_control`);
- **per attribute**: Fisher's exact test of its prevalence among known labels, BH
  adjusted over the attributes;
- **new labels**: a category or attribute the base never has that the batch has at
  least ``new_label_min_count`` times; **vanished**: one the base has and the batch
  lacks, significantly (BH q < alpha);
- **tail set**: the attributes with fewer train positives than the tail threshold,
  before (base) and after (the new version): which left the tail and which joined it
  (reported, not a flag: the tail moves as data grows).

Images, in the champion's feature space (its penultimate features): the batch's
images against the base's val and test images (held out from the champion's
training, so in-sample features do not pass for drift), standardised and projected
on the first ``feature_dims`` principal components of both together; the statistic is the
squared maximum mean discrepancy with a Gaussian kernel (median-distance bandwidth),
and its p-value a permutation test (:func:`scipy.stats.permutation_test`).

Products, not images. A catalog photographs each product several times and labels the
product, so its images are not independent observations: counted one by one they make
every test far too sure (measured on the demo catalog, about three images per product:
see docs/catalog-audit.md). The tests therefore count products (``groups``, see
:func:`~fashion_attr.audit.records.group_keys`): a batch product counts once in the
label tests (its first record's labels), the base's train counts are divided by its
mean images per product, and the image test permutes whole products.

``flagged`` is true when any test is significant at ``alpha`` (category mix, any
attribute after BH, image features) or a new label appears; ``reasons`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from scipy import stats

from fashion_attr.audit.records import AuditRecord
from fashion_attr.data.shards import Manifest

__all__ = ["drift_report", "feature_drift", "label_drift"]

#: Names listed in a reason before "and N more".
_LISTED = 5


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q), NaN kept where p is NaN."""
    q = np.full_like(p, np.nan, dtype=np.float64)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def _fisher(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher's exact p-value of the 2x2 table ``[[a, b], [c, d]]``."""
    if (a + c) == 0 or (b + d) == 0:
        return 1.0  # a label nobody has (or everybody has) on both sides: nothing to test
    return float(stats.fisher_exact([[a, b], [c, d]]).pvalue)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return f"{shown} and {len(names) - _LISTED} more" if len(names) > _LISTED else shown


def _f(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def label_drift(
    base: Manifest,
    records: Sequence[AuditRecord],
    *,
    groups: Sequence[str] | None = None,
    base_images_per_group: float = 1.0,
    new_manifest: Manifest | None = None,
    alpha: float = 0.01,
    new_label_min_count: int = 2,
    tail_threshold: int = 100,
) -> dict[str, Any]:
    """The batch's category and attribute distribution against the base's train split.

    Args:
        base: The base version's manifest (its train counts are the reference).
        records: The batch's records (unlabelled ones are skipped; unknown labels too).
        groups: The product of each record (None: every record its own); a product
            counts once, with its first labelled record's labels.
        base_images_per_group: The base train split's mean images per product; its
            counts are divided by it (so both sides count products).
        new_manifest: The new version's manifest (for the tail set after); None: skipped.
        alpha: Significance level of each test.
        new_label_min_count: Batch positives that make a label the base lacks "new".
        tail_threshold: Tail = fewer train positives than this.

    Returns:
        A JSON-able dict: ``categories``, ``attributes`` (per label: counts, shares,
        p and q), ``category_test``, ``new_labels``, ``vanished_labels``, ``tail``,
        ``records`` and the ``reasons`` it would flag.
    """
    cat_names = [c.name for c in base.categories]
    attr_names = [a.name for a in base.attributes]
    labelled = [r for r in records if r.labelled]
    if groups is not None:
        first: dict[str, AuditRecord] = {}
        for r in labelled:
            first.setdefault(groups[r.index], r)
        labelled = list(first.values())
    n_batch = len(labelled)
    # A labelled record has a category.
    b_cat = np.bincount([int(cast(int, r.category)) for r in labelled], minlength=len(cat_names))
    scale = max(float(base_images_per_group), 1.0)

    def deflate(counts: Sequence[int]) -> np.ndarray:
        # Images -> products; a label the base has at all keeps at least one product.
        c = np.asarray(counts, np.float64)
        return np.where(c > 0, np.maximum(np.rint(c / scale), 1), 0).astype(np.int64)

    base_cat = deflate(base.train_category_counts)
    n_base = int(base_cat.sum())

    # Attribute counts among known labels.
    b_pos = np.zeros(len(attr_names), np.int64)
    b_known = np.zeros(len(attr_names), np.int64)
    for r in labelled:
        if r.positives:
            b_pos[list(r.positives)] += 1
        known = np.ones(len(attr_names), bool)
        if r.unknown:
            known[list(r.unknown)] = False
        b_known += known
    b_neg = b_known - b_pos
    base_pos = deflate(base.train_attribute_counts.positive)
    base_neg = deflate(base.train_attribute_counts.negative)

    reasons: list[str] = []
    out: dict[str, Any] = {
        "records": len([r for r in records if r.labelled]),
        "products": n_batch,
        "base_train_products": n_base,
        "base_images_per_product": round(scale, 3),
    }
    if n_batch == 0:
        out.update(
            categories=[],
            attributes=[],
            category_test=None,
            new_labels=[],
            vanished_labels=[],
            tail=None,
            reasons=[],
            note="no labelled record in the batch: label drift not tested",
        )
        return out

    # -- categories ----------------------------------------------------------------------
    present = (b_cat + base_cat) > 0
    table = np.stack([b_cat[present], base_cat[present]])
    if present.sum() >= 2 and n_base > 0:
        chi2, p_cat, dof, _ = stats.chi2_contingency(table)
        category_test = {"chi2": float(chi2), "dof": int(dof), "p_value": float(p_cat)}
        if p_cat < alpha:
            reasons.append(f"category mix changed (chi-square p = {p_cat:.2g} < {alpha:g})")
    else:
        category_test = None
    p_each = np.array(
        [
            _fisher(
                int(b_cat[c]), n_batch - int(b_cat[c]), int(base_cat[c]), n_base - int(base_cat[c])
            )
            if present[c] and n_base > 0
            else np.nan
            for c in range(len(cat_names))
        ]
    )
    q_each = _bh(p_each)
    categories: list[dict[str, Any]] = [
        {
            "name": cat_names[c],
            "batch": int(b_cat[c]),
            "base": int(base_cat[c]),
            "batch_share": b_cat[c] / n_batch,
            "base_share": _f(base_cat[c] / n_base) if n_base else None,
            "p_value": _f(p_each[c]),
            "q_value": _f(q_each[c]),
        }
        for c in range(len(cat_names))
        if present[c]
    ]

    # -- attributes ----------------------------------------------------------------------
    p_attr = np.array(
        [
            _fisher(int(b_pos[j]), int(b_neg[j]), int(base_pos[j]), int(base_neg[j]))
            if (b_pos[j] + base_pos[j]) > 0 and b_known[j] > 0
            else np.nan
            for j in range(len(attr_names))
        ]
    )
    q_attr = _bh(p_attr)
    attributes: list[dict[str, Any]] = []
    for j, name in enumerate(attr_names):
        if not np.isfinite(p_attr[j]):
            continue
        attributes.append(
            {
                "name": name,
                "batch_positives": int(b_pos[j]),
                "batch_known": int(b_known[j]),
                "base_positives": int(base_pos[j]),
                "base_known": int(base_pos[j] + base_neg[j]),
                "batch_rate": _f(b_pos[j] / b_known[j]) if b_known[j] else None,
                "base_rate": _f(base_pos[j] / (base_pos[j] + base_neg[j]))
                if base_pos[j] + base_neg[j]
                else None,
                "p_value": _f(p_attr[j]),
                "q_value": _f(q_attr[j]),
            }
        )
    changed = sorted(
        (a for a in attributes if a["q_value"] is not None and a["q_value"] < alpha),
        key=lambda a: a["q_value"],
    )
    if changed:
        reasons.append(
            f"{len(changed)} attribute(s) changed prevalence (Fisher, BH q < {alpha:g}): "
            + _names([a["name"] for a in changed])
        )

    # -- new and vanished labels ---------------------------------------------------------
    raw_pos = np.asarray(base.train_attribute_counts.positive, np.int64)
    new_labels = [
        {"kind": "category", "name": cat_names[c], "batch": int(b_cat[c])}
        for c in range(len(cat_names))
        if base_cat[c] == 0 and b_cat[c] >= new_label_min_count
    ] + [
        {"kind": "attribute", "name": attr_names[j], "batch": int(b_pos[j])}
        for j in range(len(attr_names))
        if raw_pos[j] == 0 and b_pos[j] >= new_label_min_count
    ]
    if new_labels:
        reasons.append(
            f"{len(new_labels)} new label(s) the base never has: "
            + _names([f"{x['name']} ({x['batch']}x)" for x in new_labels])
        )
    vanished = [
        {"kind": "category", "name": c["name"], "base": c["base"], "q_value": c["q_value"]}
        for c in categories
        if c["batch"] == 0 and c["base"] > 0 and c["q_value"] is not None and c["q_value"] < alpha
    ] + [
        {
            "kind": "attribute",
            "name": a["name"],
            "base": a["base_positives"],
            "q_value": a["q_value"],
        }
        for a in attributes
        if a["batch_positives"] == 0 and a["base_positives"] > 0 and a["q_value"] < alpha
    ]

    # -- tail set ------------------------------------------------------------------------
    tail: dict[str, Any] | None = None
    before = {attr_names[j] for j in range(len(attr_names)) if raw_pos[j] < tail_threshold}
    if new_manifest is not None:
        after_pos = new_manifest.train_attribute_counts.positive
        after = {attr_names[j] for j in range(len(attr_names)) if after_pos[j] < tail_threshold}
        tail = {
            "threshold": tail_threshold,
            "before": len(before),
            "after": len(after),
            "left": sorted(before - after),
            "joined": sorted(after - before),
        }
    out.update(
        categories=categories,
        attributes=attributes,
        category_test=category_test,
        new_labels=new_labels,
        vanished_labels=vanished,
        tail=tail,
        reasons=reasons,
    )
    return out


def feature_drift(
    reference: np.ndarray,
    batch: np.ndarray,
    *,
    reference_groups: Sequence[str] | None = None,
    batch_groups: Sequence[str] | None = None,
    alpha: float = 0.01,
    dims: int = 32,
    permutations: int = 1000,
    max_images: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """MMD two-sample test of the batch's features against the reference's.

    Args:
        reference: ``[n, D]`` champion features of held-out base images.
        batch: ``[m, D]`` champion features of the batch's images.
        reference_groups: The product of each reference image (None: one per image).
        batch_groups: The product of each batch image (None: one per image). The
            permutations move whole products from side to side.
        alpha: Significance level.
        dims: Principal components of the reference kept.
        permutations: Resamples of the permutation test.
        max_images: Each side is subsampled (seeded) to at most this many images (the
            kernel matrix grows with the square of the images).
        seed: Seeds the subsample and the permutations.

    Returns:
        ``{"tested", "mmd2", "p_value", "reference", "batch", "dims", "bandwidth",
        "permutations", "flagged"}`` (``tested`` False with a ``note`` when a side has
        fewer than 10 images).
    """
    rng = np.random.default_rng(seed)
    ref_g = _group_ids(reference_groups, len(reference))
    new_g = _group_ids(batch_groups, len(batch))
    if len(reference) < 10 or len(batch) < 10 or ref_g.max() < 4 or new_g.max() < 4:
        return {
            "tested": False,
            "flagged": False,
            "reference": len(reference),
            "batch": len(batch),
            "note": "fewer than 10 images (or 5 products) on a side: image-feature drift "
            "not tested",
        }

    def sample(x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Whole products until max_images: the kernel matrix grows with the square.
        if len(x) <= max_images:
            return x, g
        keep, total = [], 0
        for group in rng.permutation(int(g.max()) + 1):
            members = np.flatnonzero(g == group)
            if total and total + len(members) > max_images:
                continue
            keep.append(members)
            total += len(members)
        idx = np.sort(np.concatenate(keep))
        return x[idx], np.unique(g[idx], return_inverse=True)[1]

    ref, ref_g = sample(reference.astype(np.float64), ref_g)
    new, new_g = sample(batch.astype(np.float64), new_g)
    # Standardise and project with statistics of the POOLED sample: fitted on the reference
    # alone, its top components would carry more of its own variance than of any other
    # sample's, a difference the test finds even between two draws of one distribution
    # (measured: p = 0.002 on every pure-noise draw). Pooled, the map is symmetric in the
    # two groups and the permutation test stays exact.
    pooled = np.concatenate([ref, new])
    mu, sd = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    pooled = (pooled - mu) / sd
    _, _, vt = np.linalg.svd(pooled, full_matrices=False)
    k = int(min(dims, vt.shape[0]))
    z = pooled @ vt[:k].T
    sq = (z * z).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), k=1)]
    bandwidth = float(np.median(off)) or 1.0
    kernel = np.exp(-d2 / bandwidth)
    n, m = len(ref), len(new)
    # Products of the pooled sample: reference ones first, then the batch's.
    g_ref, g_new = int(ref_g.max()) + 1, int(new_g.max()) + 1
    pooled_g = np.concatenate([ref_g, g_ref + new_g])
    member = np.zeros((g_ref + g_new, n + m))
    member[pooled_g, np.arange(n + m)] = 1.0

    def mmd2(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        # x, y: product ids on each side (batched over resamples). w'Kw with w = 1/n_x on
        # the images of x and -1/n_y on those of y is the (biased) squared MMD of that split.
        x = np.moveaxis(np.asarray(x), axis, -1).astype(np.int64)
        y = np.moveaxis(np.asarray(y), axis, -1).astype(np.int64)
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        rows = np.arange(flat_x.shape[0])[:, None]
        sx = np.zeros((flat_x.shape[0], g_ref + g_new))
        sy = np.zeros_like(sx)
        sx[rows, flat_x] = 1.0
        sy[rows, flat_y] = 1.0
        ax, ay = sx @ member, sy @ member
        w = ax / ax.sum(axis=1, keepdims=True) - ay / ay.sum(axis=1, keepdims=True)
        return cast(np.ndarray, ((w @ kernel) * w).sum(axis=1).reshape(x.shape[:-1]))

    test = stats.permutation_test(
        (np.arange(g_ref), np.arange(g_ref, g_ref + g_new)),
        mmd2,
        permutation_type="independent",
        vectorized=True,
        n_resamples=permutations,
        alternative="greater",
        batch=32,
        rng=np.random.default_rng(seed),
    )
    p = float(test.pvalue)
    return {
        "tested": True,
        "mmd2": float(test.statistic),
        "p_value": p,
        "reference": n,
        "batch": m,
        "reference_products": g_ref,
        "batch_products": g_new,
        "dims": k,
        "bandwidth": bandwidth,
        "permutations": permutations,
        "flagged": p < alpha,
    }


def _group_ids(groups: Sequence[str] | None, n: int) -> np.ndarray:
    """Dense ids ``0..G-1`` of the groups (each item its own when None)."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    keys = np.asarray(list(groups), dtype=object)
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


def drift_report(
    labels: dict[str, Any], features: dict[str, Any] | None, *, alpha: float
) -> dict[str, Any]:
    """The whole drift record (``drift.json``): labels, features, ``flagged`` and why."""
    reasons = list(labels.get("reasons", []))
    if features is not None and features.get("flagged"):
        reasons.append(
            f"image features drifted in the champion's feature space (MMD p = "
            f"{features['p_value']:.2g} < {alpha:g})"
        )
    return {
        "flagged": bool(reasons),
        "reasons": reasons,
        "alpha": alpha,
        "labels": labels,
        "features": features,
    }
