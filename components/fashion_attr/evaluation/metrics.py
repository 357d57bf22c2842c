"""Streaming evaluation metrics for fashion attribute and category prediction.

This module is the one home of the metrics of docs/method.md section 6:

* attribute top-k recall (k = 3, 5) per attribute group and over all attributes,
  following the protocol of the public DeepFashion evaluation code;
* category top-k accuracy;
* class-balanced accuracy, (TPR + TNR) / 2 at threshold 0.5;
* beyond the paper: per-attribute average precision (AP) and mAP, and every
  attribute metric restricted to the tail attributes (fewer than 100 training
  positives).

Both accumulators are streaming: call ``update`` once per batch (tensors on any
device), then ``compute``; ``reset`` starts over. Each also keeps, per image, what its
top-k figures are sums of (``per_image()``: the top-k hits and positives of every ranking
set, the category top-k hits): :class:`PerImageStats` holds them, and
:func:`paired_bootstrap` resamples the images two models were scored on to give a
confidence interval of their difference. Per batch, the counting is done
on the tensors' device and one small vector of counts is moved to the CPU. Only
AP needs every score: with ``compute_ap=True`` the logits are kept as compact CPU
chunks (float32 by default, 4 bytes per node, e.g. 160 MB for the 40,000 x 1,000
DeepFashion-C test split, plus 1 byte per node for the labels).

Readings this module takes (each is also stated where it applies):

* Scores are ranked on the logits, not on the probabilities: the order is the
  same (the sigmoid is monotone) but float32 sigmoids saturate to exactly 1.0
  for logits above about 17, which would turn distinct scores into ties.
* Ties are broken deterministically: equal scores keep attribute-index order
  (the lower index ranks first) in top-k; AP groups tied scores into one
  threshold, as scikit-learn's ``average_precision_score`` does.
* An unknown label (``known == False``) is never a positive: it adds nothing to
  the positives, to the hits, to class-balanced accuracy or to AP. It still
  takes its slot in the top-k ranking, because the model ranks attributes
  without knowing which labels are unknown.
* The tail attributes (``train_pos_counts < tail_threshold``) form one more
  attribute group, ``"tail"``: for top-k recall each image ranks only its tail
  attributes, exactly as it ranks a named group's attributes.
* Averages over attributes (class-balanced accuracy, mAP) are plain means over
  the attributes where the per-attribute value is defined; the ``"all"`` value
  averages every such attribute (it is not the mean of the group means).
* A value that is undefined (a group with no attributes or no test positives, no
  tail attributes, no updates yet) is ``float("nan")``; it stays NaN in
  ``compute()`` and the report writer prints it as "n/a" and writes JSON null.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from fashion_attr.data.annotations import ATTRIBUTE_GROUPS

__all__ = [
    "ALL_GROUP",
    "PER_IMAGE_NAME",
    "TAIL_GROUP",
    "AttributeMetrics",
    "CategoryMetrics",
    "NaNScoresError",
    "PerImageStats",
    "average_precision",
    "metric_names",
    "paired_bootstrap",
]

#: Name of the pseudo-group holding every attribute.
ALL_GROUP = "all"
#: Name of the pseudo-group holding the tail attributes.
TAIL_GROUP = "tail"


class NaNScoresError(ValueError):
    """A model's scores hold NaN: the model diverged, or its input was corrupt."""


def metric_names(
    ks: Sequence[int] = (3, 5), group_names: Mapping[int, str] | None = None
) -> list[str]:
    """Every metric name an evaluation with ``ks`` reports (gate metrics must be among them).

    Args:
        ks: the k values of top-k recall and accuracy.
        group_names: attribute group names (default: DeepFashion-C's five).

    Returns:
        ``attr_recall@{k}/{set}``, ``cb_acc/{set}``, ``map/{set}`` for each group, ``all``
        and ``tail``, then ``cat_top{k}_acc`` for k = 1 and each k.
    """
    sets = [*(group_names or ATTRIBUTE_GROUPS).values(), ALL_GROUP, TAIL_GROUP]
    names = [f"attr_recall@{k}/{s}" for k in ks for s in sets]
    names += [f"cb_acc/{s}" for s in sets] + [f"map/{s}" for s in sets]
    return names + [f"cat_top{k}_acc" for k in dict.fromkeys((1, *ks))]


# Largest number of stored scores processed at once when computing AP (about 120 MB of
# temporaries): bounds memory on the full test split without a Python loop per attribute.
_AP_BLOCK_ELEMENTS = 1 << 21


def _nan() -> float:
    return float("nan")


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else _nan()


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries of ``values``; NaN when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else _nan()


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-column average precision, scikit-learn style, with unknown labels ignored.

    For one column, ``AP = sum_n (R_n - R_{n-1}) * P_n`` over the distinct score
    thresholds in decreasing order (``R``/``P`` recall and precision of the
    prediction "score >= threshold"). Without ties this is the mean, over the
    positives, of the precision at each positive's rank. Tied scores form one
    threshold, so every positive in a tie shares the precision at the tie's end;
    the result does not depend on the order of tied entries.

    Args:
        scores: Array ``[M, B]`` of scores (higher means more likely positive).
            Must not contain NaN.
        labels: Integer array ``[M, B]``: 1 positive, 0 negative, -1 unknown.
            Unknown entries count neither as positives nor as negatives.

    Returns:
        Float64 array ``[B]``; NaN for columns with no positive.

    Raises:
        ValueError: If the shapes differ or are not two-dimensional.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(
            "average_precision: `scores` and `labels` must be 2-D arrays of the same shape "
            f"[M, B]; got {scores.shape} and {labels.shape}. Pass one column per attribute."
        )
    num_rows, num_cols = scores.shape
    out = np.full(num_cols, np.nan, dtype=np.float64)
    if num_rows == 0 or num_cols == 0:
        return out
    block = max(1, _AP_BLOCK_ELEMENTS // num_rows)
    cols = np.arange(num_rows)[None, :]
    for start in range(0, num_cols, block):
        # One row per attribute, contiguous: sorting along the last axis is much faster.
        s = np.ascontiguousarray(scores[:, start : start + block].T)
        lab = np.ascontiguousarray(labels[:, start : start + block].T)
        # Stable sort on the negated scores: descending order, ties in input order
        # (the order of ties does not change the result, see below).
        order = np.argsort(-s, axis=1, kind="stable")
        s_sorted = np.take_along_axis(s, order, axis=1)
        lab_sorted = np.take_along_axis(lab, order, axis=1)
        is_pos = lab_sorted == 1
        tp = np.cumsum(is_pos, axis=1, dtype=np.int64)
        fp = np.cumsum(lab_sorted == 0, axis=1, dtype=np.int64)
        # Entry i ends its tie group when the next score differs (or i is last). Every
        # entry takes the precision at the end of its tie group: thresholds sit between
        # distinct scores only, as in scikit-learn.
        is_end = np.ones_like(s_sorted, dtype=bool)
        is_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
        end_pos = np.where(is_end, cols, num_rows)
        next_end = np.minimum.accumulate(end_pos[:, ::-1], axis=1)[:, ::-1]
        tp_end = np.take_along_axis(tp, next_end, axis=1)
        fp_end = np.take_along_axis(fp, next_end, axis=1)
        # Each positive contributes the precision of its tie group's threshold.
        precision = np.where(is_pos, tp_end / np.maximum(tp_end + fp_end, 1), 0.0)
        num_pos = tp[:, -1]
        summed = precision.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + block] = np.where(num_pos > 0, summed / num_pos, np.nan)
    return out


def _as_2d_float(name: str, value: Any, width: int | None, batch: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"update #{batch}: `{name}` must be a torch.Tensor of shape [M, N]; got "
            f"{type(value).__name__}. Convert it with torch.as_tensor first."
        )
    if value.ndim != 2 or (width is not None and value.shape[1] != width):
        want = f"[M, {width}]" if width is not None else "[M, N]"
        raise ValueError(
            f"update #{batch}: `{name}` must have shape {want}; got {tuple(value.shape)}. "
            "Pass one row per image and one column per attribute, in the order of `groups`."
        )
    return value.detach()


class AttributeMetrics:
    """Streaming attribute metrics: top-k recall, class-balanced accuracy, AP (method sec. 6).

    Top-k recall follows the public DeepFashion evaluation code (not the
    per-attribute mean that some toolkits report under the same name): for each
    image and each group, rank that group's attribute scores, take the top k and
    count how many are (known) positives; the group's recall is the sum of those
    counts over the test set divided by the sum of the group's positives over the
    test set. ``"all"`` ranks all N attributes at once; ``"tail"`` ranks the tail
    attributes (``train_pos_counts < tail_threshold``) as if they were one more
    group. Images with no positive in a group add nothing to either sum. When k
    exceeds a group's size, the whole group is taken.

    Class-balanced accuracy of attribute j is ``(TPR_j + TNR_j) / 2`` with the
    prediction ``sigmoid(s) >= threshold`` over its known labels. It is defined
    only when the attribute has at least one known positive and one known
    negative in the test set; other attributes are left out of the group, tail
    and overall means (their TPR or TNR alone is still reported per attribute).

    AP is computed per attribute over its known labels (see
    :func:`average_precision`); attributes with no test positive are left out of
    mAP. mAP is the mean AP over a group's attributes, over all attributes
    (``"all"``) and over the tail attributes.

    Args:
        groups: Group id of each attribute (length N), e.g. the ``attribute_type``
            column of ``list_attr_cloth.txt`` (1 texture ... 5 style). N may be 0.
        group_names: Name of each group id; the metric keys use these names.
        train_pos_counts: Training positives per attribute (length N), used to pick
            the tail attributes. ``None``: no tail, tail metrics are NaN.
        tail_threshold: An attribute is in the tail when its training positive
            count is below this (docs/method.md: 100).
        ks: The k values of top-k recall.
        threshold: Probability threshold of class-balanced accuracy (0.5).
        compute_ap: Keep the scores for AP/mAP. ``False`` saves the memory; the AP
            entries are then NaN.
        ap_dtype: Storage type of the kept logits, ``torch.float32`` or
            ``torch.float16`` (half the memory, but nearby logits become ties).

    Raises:
        ValueError: If an argument is out of range; the message names it.

    Example:
        >>> m = AttributeMetrics(groups=[1, 1, 2], ks=(1,))
        >>> m.update(torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1, 0, 1]]))
        >>> m.compute()["attr_recall@1/all"]
        0.5
    """

    def __init__(
        self,
        groups: Sequence[int],
        group_names: Mapping[int, str] | None = None,
        train_pos_counts: Sequence[int] | None = None,
        tail_threshold: int = 100,
        ks: Sequence[int] = (3, 5),
        threshold: float = 0.5,
        compute_ap: bool = True,
        ap_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.group_names: dict[int, str] = dict(
            ATTRIBUTE_GROUPS if group_names is None else group_names
        )
        reserved = {ALL_GROUP, TAIL_GROUP}
        if reserved & set(self.group_names.values()):
            raise ValueError(
                f"group_names: the names {sorted(reserved)} are reserved for the pseudo-groups; "
                f"got {self.group_names}. Rename those groups."
            )
        self.groups = np.asarray(list(groups), dtype=np.int64).reshape(-1)
        for j, g in enumerate(self.groups.tolist()):
            if g not in self.group_names:
                raise ValueError(
                    f"groups[{j}] = {g} is not a known group id; allowed: "
                    f"{sorted(self.group_names)}. Fix the attribute type of attribute {j} "
                    "(list_attr_cloth.txt, last field) or pass `group_names`."
                )
        self.num_attributes = int(self.groups.size)
        if train_pos_counts is not None:
            counts = np.asarray(list(train_pos_counts), dtype=np.int64).reshape(-1)
            if counts.size != self.num_attributes:
                raise ValueError(
                    f"train_pos_counts has {counts.size} entries but `groups` has "
                    f"{self.num_attributes}; pass one training positive count per attribute."
                )
            if (counts < 0).any():
                j = int(np.flatnonzero(counts < 0)[0])
                raise ValueError(
                    f"train_pos_counts[{j}] = {counts[j]} is negative; counts must be >= 0."
                )
            self.train_pos_counts: np.ndarray | None = counts
            self.tail_mask = counts < tail_threshold
        else:
            self.train_pos_counts = None
            self.tail_mask = np.zeros(self.num_attributes, dtype=bool)
        self.tail_threshold = int(tail_threshold)
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must be distinct positive integers, e.g. (3, 5); got {ks}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), e.g. 0.5; got {threshold}.")
        self.threshold = float(threshold)
        if ap_dtype not in (torch.float32, torch.float16):
            raise ValueError(f"ap_dtype must be torch.float32 or torch.float16; got {ap_dtype}.")
        self.compute_ap = bool(compute_ap)
        self.ap_dtype = ap_dtype

        # Ranking sets: the named groups (in id order), "all", then "tail".
        self.set_names: list[str] = [self.group_names[g] for g in sorted(self.group_names)]
        self.set_names += [ALL_GROUP, TAIL_GROUP]
        self._set_members: dict[str, np.ndarray] = {
            self.group_names[g]: np.flatnonzero(self.groups == g) for g in self.group_names
        }
        self._set_members[ALL_GROUP] = np.arange(self.num_attributes)
        self._set_members[TAIL_GROUP] = np.flatnonzero(self.tail_mask)
        self._index_cache: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every update."""
        n = self.num_attributes
        self.num_images = 0
        self._num_updates = 0
        self._pos = np.zeros(n, dtype=np.float64)
        self._neg = np.zeros(n, dtype=np.float64)
        self._tp = np.zeros(n, dtype=np.float64)
        self._tn = np.zeros(n, dtype=np.float64)
        self._prob_sum_pos = np.zeros(n, dtype=np.float64)
        # Hits of attribute j in the top k of the "all" ranking, per k.
        self._attr_hits = np.zeros((len(self.ks), n), dtype=np.float64)
        # Hits in the top k of each ranking set, per (set, k).
        self._set_hits = np.zeros((len(self.set_names), len(self.ks)), dtype=np.float64)
        self._score_chunks: list[torch.Tensor] = []
        self._label_chunks: list[torch.Tensor] = []
        # Per image: hits in the top k of each set (per k), then the set's positives.
        self._image_chunks: list[np.ndarray] = []
        # AP needs a sort of every stored score (seconds on the full test split): computed
        # once per state and shared by compute() and per_attribute().
        self._arrays_cache: dict[str, np.ndarray] | None = None

    def _indices(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._index_cache:
            self._index_cache[key] = torch.as_tensor(
                self._set_members[name], dtype=torch.long, device=device
            )
        return self._index_cache[key]

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(
        self,
        attr_logits: torch.Tensor,
        targets: torch.Tensor,
        known: torch.Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            attr_logits: Logits ``[M, N]`` (probabilities are ``sigmoid`` of these), any
                device and float type.
            targets: Labels ``[M, N]`` in {0, 1} (bool, integer or float). DeepFashion's
                -1 (negative) must be mapped to 0 and its 0 (unknown) passed via ``known``.
            known: Bool ``[M, N]``, True where the label is known; ``None``: all known.

        Raises:
            TypeError: If an input is not a tensor.
            ValueError: If a shape is wrong, a target is not 0/1, or a logit is NaN; the
                message names the input, the batch number and the position.
        """
        batch = self._num_updates
        n = self.num_attributes
        logits = _as_2d_float("attr_logits", attr_logits, n, batch)
        tgt = _as_2d_float("targets", targets, n, batch)
        m = logits.shape[0]
        if tgt.shape[0] != m:
            raise ValueError(
                f"update #{batch}: `targets` has {tgt.shape[0]} rows but `attr_logits` has {m}; "
                "pass the labels of the same images."
            )
        device = logits.device
        tgt = tgt.to(device)
        if tgt.dtype != torch.bool:
            bad = (tgt != 0) & (tgt != 1)
            if bool(bad.any()):
                i, j = (int(v) for v in bad.nonzero()[0].tolist())
                raise ValueError(
                    f"update #{batch}: targets[{i}, {j}] = {tgt[i, j].item()} is not 0 or 1. "
                    "Map DeepFashion's -1 (negative) to 0 and pass its 0 (unknown) through "
                    "`known`."
                )
        if known is None:
            known_b = torch.ones((m, n), dtype=torch.bool, device=device)
        else:
            known_b = _as_2d_float("known", known, n, batch).to(device)
            if known_b.shape[0] != m:
                raise ValueError(
                    f"update #{batch}: `known` has {known_b.shape[0]} rows but `attr_logits` "
                    f"has {m}; pass one mask row per image."
                )
            known_b = known_b.bool()
        # Half/bfloat16 logits are ranked in float32; float64 input keeps its precision.
        logits = logits if logits.dtype == torch.float64 else logits.float()
        if bool(torch.isnan(logits).any()):
            i, j = (int(v) for v in torch.isnan(logits).nonzero()[0].tolist())
            raise NaNScoresError(
                f"update #{batch}: attr_logits[{i}, {j}] is NaN; the model diverged or the "
                "input is corrupt. Check the checkpoint and the batch's images."
            )
        pos = tgt.bool() & known_b  # targets are 0/1 here; unknown is never positive
        neg = known_b & ~pos
        # float64 sigmoid: float32 kernels may round differently with the batch shape, and
        # the mean probability must not depend on how the test set was batched.
        probs = torch.sigmoid(logits.to(torch.float64))
        pred = probs >= self.threshold

        pos_f = pos.to(torch.float64)
        per_attr = [
            pos_f.sum(0),
            neg.to(torch.float64).sum(0),
            (pred & pos).to(torch.float64).sum(0),
            (~pred & neg).to(torch.float64).sum(0),
            (probs * pos_f).sum(0),
        ]
        set_hits = torch.zeros(
            (len(self.set_names), len(self.ks)), dtype=torch.float64, device=device
        )
        width = len(self.ks) + 1
        per_image = torch.zeros(
            (m, len(self.set_names) * width), dtype=torch.float64, device=device
        )
        kmax = max(self.ks)
        for s_idx, name in enumerate(self.set_names):
            size = int(self._set_members[name].size)
            if size == 0 or m == 0:
                if name == ALL_GROUP:
                    per_attr.extend(
                        torch.zeros(n, dtype=torch.float64, device=device) for _ in self.ks
                    )
                continue
            idx = self._indices(name, device)
            scores = logits if name == ALL_GROUP else logits.index_select(1, idx)
            set_pos = pos_f if name == ALL_GROUP else pos_f.index_select(1, idx)
            # Stable descending sort: tied logits keep attribute-index order (deterministic).
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices
            order = order[:, : min(kmax, size)]
            hits_in_rank = set_pos.gather(1, order)  # [M, min(kmax, size)], 1 where a positive
            for k_idx, k in enumerate(self.ks):
                image_hits = hits_in_rank[:, :k].sum(1)
                per_image[:, s_idx * width + k_idx] = image_hits
                set_hits[s_idx, k_idx] = image_hits.sum()
            per_image[:, s_idx * width + len(self.ks)] = set_pos.sum(1)
            if name == ALL_GROUP:
                for k in self.ks:
                    in_top = torch.zeros((m, n), dtype=torch.float64, device=device)
                    in_top.scatter_(1, order[:, :k], 1.0)
                    per_attr.append((in_top * pos_f).sum(0))
        # One transfer per batch: everything counted on the device comes back together.
        packed = torch.cat(
            [torch.stack(per_attr).reshape(-1), set_hits.reshape(-1), per_image.reshape(-1)]
        ).cpu()
        packed_np = packed.numpy()
        if m:
            tail = packed_np[packed_np.size - per_image.numel() :]
            self._image_chunks.append(tail.reshape(m, -1).astype(np.int32))
        packed_np = packed_np[: packed_np.size - per_image.numel()]
        rows = packed_np[: (5 + len(self.ks)) * n].reshape(5 + len(self.ks), n)
        self._pos += rows[0]
        self._neg += rows[1]
        self._tp += rows[2]
        self._tn += rows[3]
        self._prob_sum_pos += rows[4]
        self._attr_hits += rows[5:]
        self._set_hits += packed_np[(5 + len(self.ks)) * n :].reshape(self._set_hits.shape)

        if self.compute_ap:
            labels = torch.where(
                known_b, pos.to(torch.int8), torch.full_like(pos, -1, dtype=torch.int8)
            )
            self._score_chunks.append(logits.to(self.ap_dtype).cpu())
            self._label_chunks.append(labels.cpu())
        self.num_images += m
        self._num_updates += 1
        self._arrays_cache = None

    # ---------------------------------------------------------------- compute
    def _per_attribute_arrays(self) -> dict[str, np.ndarray]:
        if self._arrays_cache is None:
            self._arrays_cache = self._compute_per_attribute_arrays()
        return self._arrays_cache

    def _compute_per_attribute_arrays(self) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = np.where(self._pos > 0, self._tp / self._pos, np.nan)
            tnr = np.where(self._neg > 0, self._tn / self._neg, np.nan)
            mean_prob = np.where(self._pos > 0, self._prob_sum_pos / self._pos, np.nan)
            recall = {
                k: np.where(self._pos > 0, self._attr_hits[k_idx] / self._pos, np.nan)
                for k_idx, k in enumerate(self.ks)
            }
        # Class-balanced accuracy only where both rates are defined (see class docstring).
        cb = 0.5 * (tpr + tnr)
        if self.compute_ap and self._score_chunks:
            # Keep the concatenation in place of the chunks: a later call (or more updates)
            # does not need a second full-size copy.
            self._score_chunks = [torch.cat(self._score_chunks)]
            self._label_chunks = [torch.cat(self._label_chunks)]
            scores = self._score_chunks[0].float().numpy()
            labels = self._label_chunks[0].numpy()
            ap = average_precision(scores, labels)
        else:
            ap = np.full(self.num_attributes, np.nan)
        arrays = {"tpr": tpr, "tnr": tnr, "cb_acc": cb, "mean_prob_pos": mean_prob, "ap": ap}
        for k, values in recall.items():
            arrays[f"recall@{k}"] = values
        return arrays

    def compute(self) -> dict[str, float]:
        """Return every metric as a flat ``{name: float}`` dict.

        Keys, for each set ``G`` in the group names (id order), ``"all"`` and
        ``"tail"``, and each k in ``ks``: ``attr_recall@{k}/{G}``, ``cb_acc/{G}``,
        ``map/{G}``. Values are fractions in [0, 1] (not percentages); NaN where
        undefined (see the module docstring).

        Returns:
            The metrics dict.
        """
        arrays = self._per_attribute_arrays()
        out: dict[str, float] = {}
        for k_idx, k in enumerate(self.ks):
            for s_idx, name in enumerate(self.set_names):
                members = self._set_members[name]
                out[f"attr_recall@{k}/{name}"] = _safe_div(
                    self._set_hits[s_idx, k_idx], self._pos[members].sum()
                )
        for name in self.set_names:
            members = self._set_members[name]
            out[f"cb_acc/{name}"] = _nanmean(arrays["cb_acc"][members])
        for name in self.set_names:
            members = self._set_members[name]
            out[f"map/{name}"] = _nanmean(arrays["ap"][members])
        return out

    def per_attribute(self) -> list[dict[str, Any]]:
        """Return one record per attribute, for the per-attribute CSV and the plots.

        Returns:
            A list of N dicts with keys ``index``, ``group`` (name), ``group_id``,
            ``is_tail``, ``train_positives`` (int or None), ``test_positives``,
            ``test_negatives`` (known labels only), ``ap``, ``recall@{k}`` (hits of the
            attribute in the top k of the "all" ranking over its test positives),
            ``mean_prob_pos`` (mean predicted probability on its positives), ``tpr``,
            ``tnr``, ``cb_acc``. Undefined values are NaN.
        """
        arrays = self._per_attribute_arrays()
        records: list[dict[str, Any]] = []
        for j in range(self.num_attributes):
            gid = int(self.groups[j])
            rec: dict[str, Any] = {
                "index": j,
                "group": self.group_names[gid],
                "group_id": gid,
                "is_tail": bool(self.tail_mask[j]),
                "train_positives": (
                    int(self.train_pos_counts[j]) if self.train_pos_counts is not None else None
                ),
                "test_positives": int(self._pos[j]),
                "test_negatives": int(self._neg[j]),
                "ap": float(arrays["ap"][j]),
            }
            for k in self.ks:
                rec[f"recall@{k}"] = float(arrays[f"recall@{k}"][j])
            rec["mean_prob_pos"] = float(arrays["mean_prob_pos"][j])
            rec["tpr"] = float(arrays["tpr"][j])
            rec["tnr"] = float(arrays["tnr"][j])
            rec["cb_acc"] = float(arrays["cb_acc"][j])
            records.append(rec)
        return records

    @property
    def num_tail_attributes(self) -> int:
        """Number of attributes in the tail set."""
        return int(self.tail_mask.sum())

    def per_image(self) -> dict[str, np.ndarray]:
        """Per image, in update order: what each set's top-k recall sums over the images.

        Returns:
            ``{"hits@{k}/{set}": int32 [M], "positives/{set}": int32 [M]}`` for every
            ranking set (the groups, ``"all"``, ``"tail"``) and k: the image's known
            positives among the set's top k, and its known positives in the set.
            ``attr_recall@{k}/{set}`` is ``hits.sum() / positives.sum()``.
        """
        width = len(self.ks) + 1
        table = (
            np.concatenate(self._image_chunks)
            if self._image_chunks
            else np.zeros((0, len(self.set_names) * width), dtype=np.int32)
        )
        out: dict[str, np.ndarray] = {}
        for s_idx, name in enumerate(self.set_names):
            for k_idx, k in enumerate(self.ks):
                out[f"hits@{k}/{name}"] = table[:, s_idx * width + k_idx].copy()
            out[f"positives/{name}"] = table[:, s_idx * width + len(self.ks)].copy()
        return out


class CategoryMetrics:
    """Streaming category top-k accuracy and confusion matrix (docs/method.md sec. 6).

    An image counts as correct at k when its true category is among the k highest
    logits. Ties are broken deterministically: a category ranks above the true one
    when its logit is higher, or equal with a lower index (the same order as a
    stable descending sort). Top-1 is always reported.

    Args:
        num_categories: C, the width of the category head (50 on DeepFashion-C).
        ks: The k values of top-k accuracy besides 1.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> m = CategoryMetrics(3, ks=(2,))
        >>> m.update(torch.tensor([[0.1, 2.0, 1.0]]), torch.tensor([2]))
        >>> m.compute()
        {'cat_top1_acc': 0.0, 'cat_top2_acc': 1.0}
    """

    def __init__(self, num_categories: int, ks: Sequence[int] = (3, 5)) -> None:
        if num_categories < 1:
            raise ValueError(f"num_categories must be >= 1; got {num_categories}.")
        if any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, e.g. (3, 5); got {ks}.")
        self.num_categories = int(num_categories)
        self.ks = tuple(sorted({1, *(int(k) for k in ks)}))
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.num_images = 0
        self._num_updates = 0
        self._correct = np.zeros(len(self.ks), dtype=np.int64)
        self._confusion = np.zeros((self.num_categories, self.num_categories), dtype=np.int64)
        self._rank_chunks: list[np.ndarray] = []

    @torch.no_grad()
    def update(self, cat_logits: torch.Tensor, cat_targets: torch.Tensor) -> None:
        """Add one batch.

        Args:
            cat_logits: Logits ``[M, C]``, any device.
            cat_targets: True category indices ``[M]`` in ``[0, C)`` (0-based: DeepFashion's
                1-based ``category_label`` minus 1).

        Raises:
            TypeError: If an input is not a tensor.
            ValueError: If a shape is wrong, a target is out of range or a logit is NaN.
        """
        batch = self._num_updates
        c = self.num_categories
        logits = _as_2d_float("cat_logits", cat_logits, c, batch).float()
        if not isinstance(cat_targets, torch.Tensor):
            raise TypeError(
                f"update #{batch}: `cat_targets` must be a torch.LongTensor [M]; got "
                f"{type(cat_targets).__name__}."
            )
        tgt = cat_targets.detach().to(logits.device).reshape(-1)
        m = logits.shape[0]
        if tgt.numel() != m:
            raise ValueError(
                f"update #{batch}: `cat_targets` has {tgt.numel()} entries but `cat_logits` has "
                f"{m} rows; pass one category per image."
            )
        if tgt.is_floating_point() and bool((tgt != tgt.round()).any()):
            raise ValueError(f"update #{batch}: `cat_targets` must hold integer class indices.")
        tgt = tgt.long()
        bad = (tgt < 0) | (tgt >= c)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"update #{batch}: cat_targets[{i}] = {int(tgt[i])} is outside [0, {c}). "
                "Category labels must be 0-based (DeepFashion's category_label minus 1)."
            )
        if bool(torch.isnan(logits).any()):
            i, j = (int(v) for v in torch.isnan(logits).nonzero()[0].tolist())
            raise NaNScoresError(
                f"update #{batch}: cat_logits[{i}, {j}] is NaN; the model diverged or the "
                "input is corrupt."
            )
        if m:
            true_score = logits.gather(1, tgt[:, None])
            cols = torch.arange(c, device=logits.device)[None, :]
            above = (logits > true_score) | ((logits == true_score) & (cols < tgt[:, None]))
            rank = above.sum(1)  # 0 when the true category ranks first
            correct = torch.stack([(rank < k).sum() for k in self.ks])
            top1 = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, 0]
            conf = torch.bincount(tgt * c + top1, minlength=c * c).reshape(c, c)
            packed = torch.cat([correct, rank, conf.reshape(-1)]).cpu().numpy()
            self._correct += packed[: len(self.ks)]
            self._rank_chunks.append(packed[len(self.ks) : len(self.ks) + m].astype(np.int32))
            self._confusion += packed[len(self.ks) + m :].reshape(c, c)
        self.num_images += m
        self._num_updates += 1

    def compute(self) -> dict[str, float]:
        """Return ``{"cat_top{k}_acc": fraction}`` for k = 1 and each k in ``ks``.

        Returns:
            The metrics dict; values are NaN before any image was added.
        """
        return {
            f"cat_top{k}_acc": _safe_div(self._correct[i], self.num_images)
            for i, k in enumerate(self.ks)
        }

    def per_image(self) -> dict[str, np.ndarray]:
        """Per image, in update order: ``{"cat_hit@{k}": uint8 [M]}`` (1: true category in top k).

        ``cat_top{k}_acc`` is the mean of ``cat_hit@{k}``.
        """
        ranks = np.concatenate(self._rank_chunks) if self._rank_chunks else np.zeros(0, np.int32)
        return {f"cat_hit@{k}": (ranks < k).astype(np.uint8) for k in self.ks}

    def confusion_matrix(self) -> np.ndarray:
        """Return the top-1 confusion matrix.

        Returns:
            Int64 array ``[C, C]``: rows the true category, columns the top-1 prediction.
        """
        return self._confusion.copy()


# ------------------------------------------------------------------- per-image statistics
#: File name of the per-image statistics ``evaluate`` writes beside ``metrics.json``.
PER_IMAGE_NAME = "per_image.npz"

_RECALL = re.compile(r"^attr_recall@(\d+)/(.+)$")
_CAT = re.compile(r"^cat_top(\d+)_acc$")


@dataclass
class PerImageStats:
    """What a model's top-k metrics are sums of, image by image (one split, one order).

    Two models scored on the same images (the same split of the same dataset version, read
    in the same order) have paired statistics: :func:`paired_bootstrap` resamples the
    images to give a confidence interval of their difference.

    Attributes:
        arrays: ``hits@{k}/{set}`` and ``positives/{set}`` (:meth:`AttributeMetrics.per_image`)
            and ``cat_hit@{k}`` (:meth:`CategoryMetrics.per_image`), one entry per image.
        tail_attributes: attributes in the tail set.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tail_attributes: int = 0

    @classmethod
    def collect(cls, attr: AttributeMetrics | None, cat: CategoryMetrics | None) -> PerImageStats:
        """Gather the per-image statistics of the two accumulators (either may be None)."""
        arrays: dict[str, np.ndarray] = {}
        if attr is not None:
            arrays.update(attr.per_image())
        if cat is not None:
            arrays.update(cat.per_image())
        return cls(arrays, attr.num_tail_attributes if attr is not None else 0)

    @property
    def images(self) -> int:
        """Images scored."""
        return int(next(iter(self.arrays.values())).size) if self.arrays else 0

    def columns(self, metric: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """``(numerator, denominator or None)`` per image behind ``metric``; None if unknown.

        ``attr_recall@{k}/{set}`` is ``sum(hits) / sum(positives)``; ``cat_top{k}_acc`` is
        ``mean(hit)`` (denominator None).
        """
        m = _RECALL.match(metric)
        if m:
            hits = self.arrays.get(f"hits@{m.group(1)}/{m.group(2)}")
            pos = self.arrays.get(f"positives/{m.group(2)}")
            return (hits, pos) if hits is not None and pos is not None else None
        m = _CAT.match(metric)
        if m and f"cat_hit@{m.group(1)}" in self.arrays:
            return self.arrays[f"cat_hit@{m.group(1)}"], None
        return None

    def value(self, metric: str) -> float:
        """``metric`` computed from the per-image statistics (NaN if unknown or undefined)."""
        cols = self.columns(metric)
        if cols is None:
            return _nan()
        num, den = cols
        if den is None:
            return _safe_div(float(num.sum()), float(num.size))
        return _safe_div(float(num.sum()), float(den.sum()))

    def positives(self, metric: str) -> int | None:
        """The test positives behind a recall ``metric`` (None for other metrics)."""
        cols = self.columns(metric)
        return int(cols[1].sum()) if cols is not None and cols[1] is not None else None

    def pairs_with(self, other: PerImageStats) -> bool:
        """Whether both were scored on the same images: same count, same labels per image."""
        if self.images != other.images or self.images == 0:
            return False
        shared = [k for k in self.arrays if k.startswith("positives/") and k in other.arrays]
        return bool(shared) and all(np.array_equal(self.arrays[k], other.arrays[k]) for k in shared)

    def to_bytes(self) -> bytes:
        """The statistics as a compressed ``.npz`` (no pickles)."""
        buf = io.BytesIO()
        names = {f"a{i}": k for i, k in enumerate(sorted(self.arrays))}
        np.savez_compressed(
            buf,
            names=np.array([names[f"a{i}"] for i in range(len(names))], dtype=np.str_),
            tail_attributes=np.array(self.tail_attributes),
            # Any: numpy's stub would match a value to allow_pickle (bool)
            **cast(dict[str, Any], {key: self.arrays[name] for key, name in names.items()}),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PerImageStats:
        """Read what :meth:`to_bytes` wrote.

        Raises:
            ValueError: the data is not such a file.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                names = [str(n) for n in npz["names"]]
                arrays = {name: npz[f"a{i}"] for i, name in enumerate(names)}
                return cls(arrays, int(npz["tail_attributes"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"not per-image statistics ({type(exc).__name__}: {exc})") from None


def paired_bootstrap(
    challenger: PerImageStats,
    champion: PerImageStats,
    metric: str,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``challenger - champion`` on ``metric``, paired by image.

    Each resample draws the test images with replacement and recomputes both models'
    metric on the same draw (a recall's denominator, the positives, is the same for both:
    the labels), so the interval reflects how much the difference depends on which
    images were tested. Seeded: the same inputs give the same interval.

    Args:
        challenger: the challenger's per-image statistics.
        champion: the champion's, on the same images (:meth:`PerImageStats.pairs_with`).
        metric: ``attr_recall@{k}/{set}`` or ``cat_top{k}_acc``.
        resamples: bootstrap resamples.
        seed: the generator's seed.
        level: the interval's coverage.

    Returns:
        ``(low, high)``, or None when the metric has no per-image statistics, the two are
        not paired, or too few resamples are defined (a set without positives).
    """
    a, b = challenger.columns(metric), champion.columns(metric)
    if a is None or b is None or not challenger.pairs_with(champion):
        return None
    diff = a[0].astype(np.float64) - b[0].astype(np.float64)
    den = a[1].astype(np.float64) if a[1] is not None else None
    m = diff.size
    rng = np.random.default_rng(seed)
    block = max(1, (1 << 22) // m)
    out: list[np.ndarray] = []
    for start in range(0, resamples, block):
        idx = rng.integers(0, m, size=(min(block, resamples - start), m))
        if den is None:
            out.append(diff[idx].mean(axis=1))
        else:
            total = den[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.where(total > 0, diff[idx].sum(axis=1) / total, np.nan))
    values = np.concatenate(out)
    values = values[np.isfinite(values)]
    if values.size < resamples // 2:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
