"""Label issues: the batch records whose given labels the champion disputes.

The champion never saw the new batch, so its probabilities on it are out-of-sample,
which is what confident learning needs (Northcutt et al., 2021; cleanlab is the
reference implementation and does the statistics here):

- **category** (multi-class): :func:`cleanlab.filter.find_label_issues` on the
  categories given and the champion's softmax; a flagged record is a
  ``wrong_category`` issue whose suspected category is the champion's top one.
- **attributes** (multi-label, one-vs-rest per attribute as cleanlab's multi-label
  finder does): for each attribute, the same finder on its 0/1 labels and the
  champion's sigmoid. A flagged 0 is a ``missing_attributes`` issue (the champion is
  confident the attribute is there), a flagged 1 a ``spurious_attributes`` one.
  Unknown labels (a record that gave its category alone) are never judged.

Confident learning's per-class thresholds (the champion's mean probability of a class
on the examples labelled with it) are taken from the champion on the **base version's
val split** (:func:`thresholds_from_labelled`), not from the batch: a batch of a few
hundred records holds no example at all of most of 1,000 attributes, and cleanlab
cannot calibrate a class it has no example of (measured: it then flags nothing for
it). Where val has no example either, the batch's own mean is used, and a class with
neither is left out (counted in :attr:`IssueSearch.uncalibrated`).

A flag is kept only where the champion's own prediction differs from the given label (a
different top category; ``p >= 0.5`` for a missing attribute, ``p < 0.5`` for a spurious
one): an issue always names a label the champion would give instead.

A record's ``score`` is the champion's confidence that a given label is wrong:
``1 - p(given category)`` for a category, ``p`` for a missing attribute, ``1 - p`` for
a spurious one; the record's score is its largest, and records are ranked by it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fashion_attr.audit.records import AuditRecord

__all__ = [
    "ISSUE_KINDS",
    "IssueSearch",
    "LabelIssue",
    "Thresholds",
    "find_label_issues",
    "label_matrix",
    "thresholds_from_labelled",
]

#: The kinds of label issue, in the order a record's issues are listed.
ISSUE_KINDS = ("wrong_category", "missing_attributes", "spurious_attributes")


@dataclass(frozen=True)
class Thresholds:
    """Confident learning's per-class thresholds (NaN where no example calibrates one).

    Attributes:
        category: ``[C]`` mean ``p(c)`` over examples labelled ``c``.
        attr_pos: ``[N]`` mean ``p_j`` over examples labelled positive for ``j``.
        attr_neg: ``[N]`` mean ``1 - p_j`` over examples labelled negative for ``j``.
        source: Where they come from, in words.
    """

    category: np.ndarray
    attr_pos: np.ndarray
    attr_neg: np.ndarray
    source: str = ""


@dataclass
class LabelIssue:
    """One record whose labels the champion disputes (one line of ``label_issues.jsonl``)."""

    record: AuditRecord
    scores: dict[str, float]
    given_category: str
    given_attributes: list[str]
    suspected_category: str | None = None
    suspected_category_prob: float | None = None
    missing: list[dict[str, Any]] = field(default_factory=list)
    spurious: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> float:
        """The record's score: its most suspicious issue."""
        return max(self.scores.values())

    @property
    def issue(self) -> str:
        """The kind of its most suspicious issue."""
        return max(self.scores, key=lambda k: (self.scores[k], -ISSUE_KINDS.index(k)))

    def to_json(self, rank: int) -> dict[str, Any]:
        """The JSON line: the batch record's image, given and suspected labels, kind, score."""
        r = self.record
        suspected: dict[str, Any] = {}
        if "wrong_category" in self.scores:
            suspected["category"] = self.suspected_category
            suspected["category_prob"] = _round(self.suspected_category_prob)
        if self.missing:
            suspected["missing_attributes"] = self.missing
        if self.spurious:
            suspected["spurious_attributes"] = self.spurious
        return {
            "rank": rank,
            "image": r.image,
            "issue": self.issue,
            "score": _round(self.score),
            "issues": {k: _round(v) for k, v in self.scores.items()},
            "given": {"category": self.given_category, "attributes": self.given_attributes},
            "suspected": suspected,
            "split": r.split,
            "batch": r.batch,
            "line": r.line,
            "key": r.key,
            "version": r.version,
        }


@dataclass
class IssueSearch:
    """The label issues found, most suspicious first, and what could not be judged.

    Attributes:
        issues: One per disputed record, ranked by score (highest first).
        records: Records judged on their category.
        attribute_records: Records judged on their attributes (known labels).
        uncalibrated: Attributes with a label in the batch that no example calibrates.
        thresholds: The thresholds used.
    """

    issues: list[LabelIssue]
    records: int
    attribute_records: int
    uncalibrated: list[str]
    thresholds: Thresholds

    def counts(self) -> dict[str, int]:
        """Issues per kind (a record may count under several kinds)."""
        out = dict.fromkeys(ISSUE_KINDS, 0)
        for issue in self.issues:
            for kind in issue.scores:
                out[kind] += 1
        return out


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def label_matrix(
    records: Sequence[AuditRecord], num_attributes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(targets [n, N] int8 0/1, known [n, N] bool)`` of the records' attribute labels."""
    y = np.zeros((len(records), num_attributes), np.int8)
    known = np.ones((len(records), num_attributes), bool)
    for i, r in enumerate(records):
        if r.positives:
            y[i, list(r.positives)] = 1
        if r.unknown:
            known[i, list(r.unknown)] = False
        if not r.labelled:
            known[i] = False
    return y, known


def _class_means(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-column mean of ``probs`` over the rows where ``mask`` is set; NaN where none."""
    count = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (probs * mask).sum(axis=0) / np.maximum(count, 1), np.nan)


def thresholds_from_labelled(
    cat_probs: np.ndarray,
    attr_probs: np.ndarray,
    categories: Sequence[int],
    targets: np.ndarray,
    known: np.ndarray,
    source: str,
) -> Thresholds:
    """Confident learning's per-class thresholds from labelled examples the champion scored.

    Args:
        cat_probs: ``[n, C]`` champion category probabilities.
        attr_probs: ``[n, N]`` champion attribute probabilities.
        categories: ``[n]`` given categories.
        targets: ``[n, N]`` 0/1 attribute labels.
        known: ``[n, N]`` known-label mask.
        source: What the examples are (recorded in the output).

    Returns:
        The :class:`Thresholds` (NaN where a class has no example).
    """
    c = cat_probs.shape[1]
    onehot = np.zeros((len(categories), c), bool)
    if len(categories):
        onehot[np.arange(len(categories)), np.asarray(categories, np.int64)] = True
    pos = known & (targets == 1)
    neg = known & (targets == 0)
    return Thresholds(
        category=_class_means(cat_probs, onehot),
        attr_pos=_class_means(attr_probs, pos),
        attr_neg=_class_means(1.0 - attr_probs, neg),
        source=source,
    )


def _cleanlab_flags(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, filter_by: str
) -> np.ndarray:
    """Run cleanlab's confident-learning filter with the given per-class thresholds."""
    from cleanlab.count import compute_confident_joint
    from cleanlab.filter import find_label_issues as cl_find

    with warnings.catch_warnings():
        # "too few examples in class k": expected for tail classes of a small batch.
        warnings.simplefilter("ignore", UserWarning)
        joint = compute_confident_joint(labels, probs, thresholds=thresholds)
        return np.asarray(
            cl_find(labels, probs, confident_joint=joint, filter_by=filter_by, n_jobs=1), bool
        )


def _fill(primary: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(primary), primary, fallback)


def find_label_issues(
    records: Sequence[AuditRecord],
    cat_probs: np.ndarray,
    attr_probs: np.ndarray,
    *,
    category_names: Sequence[str],
    attribute_names: Sequence[str],
    thresholds: Thresholds,
    filter_by: str = "prune_by_noise_rate",
) -> IssueSearch:
    """Find the labelled records whose labels the champion disputes.

    Args:
        records: The batch's records (unlabelled ones are ignored).
        cat_probs: ``[n, C]`` the champion's category probabilities, row per record.
        attr_probs: ``[n, N]`` its attribute probabilities.
        category_names: Names of the categories.
        attribute_names: Names of the attributes.
        thresholds: Per-class thresholds (:func:`thresholds_from_labelled` on base val).
        filter_by: cleanlab's filter (``prune_by_noise_rate``, ``prune_by_class``, ``both``).

    Returns:
        The :class:`IssueSearch`, issues ranked most suspicious first.
    """
    rows = [i for i, r in enumerate(records) if r.labelled]
    n_attr = len(attribute_names)
    found: dict[int, LabelIssue] = {}
    y, known = label_matrix(records, n_attr)

    def issue_of(i: int) -> LabelIssue:
        if i not in found:
            r = records[i]
            found[i] = LabelIssue(
                record=r,
                scores={},
                given_category=category_names[int(r.category or 0)],
                given_attributes=[attribute_names[j] for j in r.positives],
            )
        return found[i]

    # -- category ------------------------------------------------------------------------
    if len(rows) >= 2 and cat_probs.shape[1] >= 2:
        labels = np.asarray([records[i].category for i in rows], np.int64)
        probs = cat_probs[rows].astype(np.float64)
        probs = probs / probs.sum(axis=1, keepdims=True)
        batch_t = _class_means(probs, np.eye(probs.shape[1], dtype=bool)[labels])
        t = _fill(_fill(thresholds.category, batch_t), np.full(probs.shape[1], np.nan))
        # A class neither val nor the batch has: a typical confidence, so that a record the
        # champion puts there with that confidence still counts as confidently so.
        typical = float(np.nanmean(t)) if np.isfinite(t).any() else 0.5
        t = np.where(np.isfinite(t), t, typical)
        flags = _cleanlab_flags(labels, probs, t, filter_by)
        for k in np.flatnonzero(flags):
            i = rows[int(k)]
            top = int(np.argmax(probs[k]))
            if top == labels[k]:
                continue  # pruned by rank but the champion agrees: not a dispute to show
            issue = issue_of(i)
            issue.scores["wrong_category"] = float(1.0 - probs[k, labels[k]])
            issue.suspected_category = category_names[top]
            issue.suspected_category_prob = float(probs[k, top])

    # -- attributes (one-vs-rest) --------------------------------------------------------
    attr_rows = np.asarray([i for i in rows if records[i].attributes_labelled], np.int64)
    uncalibrated: list[str] = []
    if attr_rows.size >= 2 and n_attr:
        p = attr_probs[attr_rows].astype(np.float64)
        ya, ka = y[attr_rows], known[attr_rows]
        t_pos = _fill(thresholds.attr_pos, _class_means(p, ka & (ya == 1)))
        t_neg = _fill(thresholds.attr_neg, _class_means(1.0 - p, ka & (ya == 0)))
        for j in range(n_attr):
            kj = ka[:, j]
            if kj.sum() < 2:
                continue
            if not (math.isfinite(t_pos[j]) and math.isfinite(t_neg[j])):
                if (ya[kj, j] == 1).any() or (p[kj, j] >= 0.5).any():
                    uncalibrated.append(attribute_names[j])
                continue
            pj, yj = p[kj, j], ya[kj, j].astype(np.int64)
            # Only where some label is confidently off (the cheap check cleanlab would make).
            if not (
                ((yj == 0) & (pj >= t_pos[j])).any() or ((yj == 1) & (1 - pj >= t_neg[j])).any()
            ):
                continue
            flags = _cleanlab_flags(
                yj, np.stack([1.0 - pj, pj], axis=1), np.array([t_neg[j], t_pos[j]]), filter_by
            )
            sub = attr_rows[kj]
            for k in np.flatnonzero(flags):
                i, prob = int(sub[k]), float(pj[k])
                issue = issue_of(i)
                entry = {"name": attribute_names[j], "prob": round(prob, 4)}
                if yj[k] == 0 and prob >= 0.5:
                    issue.missing.append(entry)
                    issue.scores["missing_attributes"] = max(
                        issue.scores.get("missing_attributes", 0.0), prob
                    )
                elif yj[k] == 1 and prob < 0.5:
                    issue.spurious.append(entry)
                    issue.scores["spurious_attributes"] = max(
                        issue.scores.get("spurious_attributes", 0.0), 1.0 - prob
                    )
        for issue in found.values():
            issue.missing.sort(key=lambda e: -e["prob"])
            issue.spurious.sort(key=lambda e: e["prob"])
    issues = [v for v in found.values() if v.scores]
    issues.sort(key=lambda v: (-v.score, v.record.image))
    return IssueSearch(
        issues=issues,
        records=len(rows),
        attribute_records=int(attr_rows.size),
        uncalibrated=uncalibrated,
        thresholds=thresholds,
    )
