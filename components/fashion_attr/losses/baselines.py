"""The baseline losses the paper compares HABP with (section 4, docs/method.md section 2).

All share HABP's call shape and node set: ``M x N`` attribute nodes (unknown
ones excluded) plus one category node per image, so switching the loss by name
changes nothing else in training. CE, focal loss, weighted focal loss, OHEM and
weighted CE-A/B are the paper's baselines; the asymmetric loss (ASL) is a
modern reference beyond the paper.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_attr.losses.habp import (
    attribute_node_loss,
    category_hardness,
    category_node_loss,
    check_gamma,
    check_inputs,
    clean_targets,
    fp32_region,
    known_mask,
    node_hardness,
    pos_weight_tensor,
)

__all__ = [
    "asymmetric_loss",
    "bce_loss",
    "focal_loss",
    "ohem_loss",
    "wce_pos_weight",
    "weighted_ce_a_loss",
    "weighted_ce_b_loss",
    "weighted_ce_loss",
    "weighted_focal_loss",
]


def _device(attr_logits: Tensor | None, cat_logits: Tensor | None) -> torch.device:
    # check_inputs ran first: at least one head's logits are given.
    return (attr_logits if attr_logits is not None else cast(Tensor, cat_logits)).device


def _node_losses(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None,
    cat_logits: Tensor | None,
    cat_targets: Tensor | None,
    *,
    gamma: float | None,
    detach_weights: bool,
    attr_weight: Tensor | None,
    pos_weight: Tensor | float | None,
) -> tuple[Tensor, Tensor]:
    """Sum of per-node ``w * h * L`` over known nodes, and the number of known nodes.

    Must run inside ``fp32_region``. ``gamma=None`` means no hardness factor;
    ``attr_weight`` is a per-attribute ``[N]`` factor (weighted focal loss).
    """
    device = _device(attr_logits, cat_logits)
    total = torch.zeros((), dtype=torch.float32, device=device)
    count = torch.zeros((), dtype=torch.float32, device=device)
    if attr_logits is not None:
        s = attr_logits.float()
        u = known_mask(s, known)
        assert attr_targets is not None  # check_inputs raised otherwise
        y = clean_targets(attr_targets, u)
        node = attribute_node_loss(s, y, pos_weight)
        if gamma is not None:
            h = node_hardness(s, y, gamma)
            node = node * (h.detach() if detach_weights else h)
        if attr_weight is not None:
            node = node * attr_weight
        total = total + torch.where(u, node, torch.zeros_like(node)).sum()
        count = count + u.sum()
    if cat_logits is not None:
        assert cat_targets is not None  # check_inputs raised otherwise
        sc = cat_logits.float()
        node_c = category_node_loss(sc, cat_targets)
        if gamma is not None:
            h_c = category_hardness(sc, cat_targets, gamma)
            node_c = node_c * (h_c.detach() if detach_weights else h_c)
        total = total + node_c.sum()
        count = count + sc.shape[0]
    return total, count


def bce_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    pos_weight: Tensor | float | None = None,
) -> Tensor:
    """CE baseline: mean of the node losses ``L_ij = -log P_ij`` over known nodes.

    Args:
        attr_logits: ``[M, N]`` attribute logits (N may be 0) or None.
        attr_targets: ``[M, N]`` 0/1 targets or None.
        known: ``[M, N]`` bool mask, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        pos_weight: Optional scalar or ``[N]`` positive-term weight.

    Returns:
        Float32 scalar; 0 when there is no known node.
    """
    check_inputs(attr_logits, attr_targets, known, cat_logits, cat_targets, "bce_loss")
    device = _device(attr_logits, cat_logits)
    n = attr_logits.shape[1] if attr_logits is not None else 0
    with fp32_region(device):
        w = pos_weight_tensor(pos_weight, n, device, "bce_loss")
        total, count = _node_losses(
            attr_logits,
            attr_targets,
            known,
            cat_logits,
            cat_targets,
            gamma=None,
            detach_weights=True,
            attr_weight=None,
            pos_weight=w,
        )
        return total / count.clamp_min(1.0)


def focal_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    gamma: float = 1.2,
    detach_weights: bool = False,
) -> Tensor:
    """Focal loss (Lin et al. 2017): ``mean(h * L)`` over known nodes, no normaliser.

    Same hardness ``h = (1 - P) ** gamma`` as HABP, but divided by the node
    count instead of ``sum(h)``: when few nodes are hard the loss (and its
    gradient) shrinks with the node count, which is what HABP fixes.

    Args:
        attr_logits: ``[M, N]`` attribute logits or None.
        attr_targets: ``[M, N]`` 0/1 targets or None.
        known: ``[M, N]`` bool mask, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        gamma: Focusing exponent (the paper compares at HABP's gamma, 1.2).
        detach_weights: False (default) differentiates through the modulating
            factor as in Lin et al.; True treats it as a constant like HABP.

    Returns:
        Float32 scalar.
    """
    check_gamma(gamma, "focal_loss")
    check_inputs(attr_logits, attr_targets, known, cat_logits, cat_targets, "focal_loss")
    with fp32_region(_device(attr_logits, cat_logits)):
        total, count = _node_losses(
            attr_logits,
            attr_targets,
            known,
            cat_logits,
            cat_targets,
            gamma=gamma,
            detach_weights=detach_weights,
            attr_weight=None,
            pos_weight=None,
        )
        return total / count.clamp_min(1.0)


def weighted_focal_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    priors: Tensor,
    gamma: float = 1.2,
    detach_weights: bool = False,
) -> Tensor:
    """Weighted focal loss: focal loss with attribute weight ``w_j = exp(-a_j)``.

    ``a_j`` is the prior positive rate of attribute j in the training set.
    The category node keeps weight 1. Still a plain mean over known nodes.

    Args:
        attr_logits: ``[M, N]`` attribute logits or None.
        attr_targets: ``[M, N]`` 0/1 targets or None.
        known: ``[M, N]`` bool mask, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        priors: ``[N]`` positive rate ``a_j`` in [0, 1] of each attribute.
        gamma: Focusing exponent.
        detach_weights: As in :func:`focal_loss`.

    Returns:
        Float32 scalar.

    Raises:
        ValueError: If ``priors`` is not shaped ``[N]``.
    """
    check_gamma(gamma, "weighted_focal_loss")
    check_inputs(attr_logits, attr_targets, known, cat_logits, cat_targets, "weighted_focal_loss")
    device = _device(attr_logits, cat_logits)
    n = attr_logits.shape[1] if attr_logits is not None else 0
    a = torch.as_tensor(priors, dtype=torch.float32, device=device)
    if a.shape != (n,):
        raise ValueError(
            f"weighted_focal_loss: argument 'priors' has shape {tuple(a.shape)}; expected [{n}] "
            "(the training-set positive rate of each attribute, e.g. pos_counts / n_images)."
        )
    with fp32_region(device):
        total, count = _node_losses(
            attr_logits,
            attr_targets,
            known,
            cat_logits,
            cat_targets,
            gamma=gamma,
            detach_weights=detach_weights,
            attr_weight=torch.exp(-a),
            pos_weight=None,
        )
        return total / count.clamp_min(1.0)


def _ohem_keep_count(n_known: Tensor, ratio: float) -> Tensor:
    """``ceil(ratio * n_known)`` as a float tensor, robust to float round-off.

    ``0.07 * 100`` is ``7.000000000000001`` in binary floating point, and a
    bare ceil would keep 8 nodes; a relative tolerance of 1e-9 removes that.
    """
    x = n_known.double() * ratio
    return torch.ceil(x * (1.0 - 1e-9)).float()


def ohem_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    ratio: float = 0.17,
) -> Tensor:
    """Online hard example mining: mean of the largest ``ceil(ratio * K)`` node losses.

    ``K`` is the number of known nodes (attribute plus category nodes). All
    node losses are sorted once and a rank mask selects the kept ones, so the
    data-dependent count never leaves the device (no host synchronisation).

    Args:
        attr_logits: ``[M, N]`` attribute logits or None.
        attr_targets: ``[M, N]`` 0/1 targets or None.
        known: ``[M, N]`` bool mask, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        ratio: Kept fraction in (0, 1]; the paper's best is 0.17 (tried 0.5,
            0.33, 0.17, 0.1).

    Returns:
        Float32 scalar; 0 when there is no known node.

    Raises:
        ValueError: If ``ratio`` is outside (0, 1].
    """
    if not (0.0 < ratio <= 1.0):
        raise ValueError(
            f"ohem_loss: argument 'ratio' is {ratio!r}; it must be in (0, 1] (paper's best 0.17)."
        )
    check_inputs(attr_logits, attr_targets, known, cat_logits, cat_targets, "ohem_loss")
    device = _device(attr_logits, cat_logits)
    with fp32_region(device):
        parts: list[Tensor] = []
        n_known = torch.zeros((), dtype=torch.float32, device=device)
        if attr_logits is not None:
            s = attr_logits.float()
            u = known_mask(s, known)
            assert attr_targets is not None  # check_inputs raised otherwise
            y = clean_targets(attr_targets, u)
            node = attribute_node_loss(s, y)
            # Unknown nodes sort last and are never within the kept ranks.
            parts.append(torch.where(u, node, torch.full_like(node, float("-inf"))).flatten())
            n_known = n_known + u.sum()
        if cat_logits is not None:
            assert cat_targets is not None  # check_inputs raised otherwise
            parts.append(category_node_loss(cat_logits.float(), cat_targets))
            n_known = n_known + cat_logits.shape[0]
        losses = torch.cat(parts)
        keep = _ohem_keep_count(n_known, ratio)
        ranked, _ = torch.sort(losses, descending=True)
        kept = torch.arange(ranked.numel(), device=device) < keep
        total = torch.where(kept, ranked, torch.zeros_like(ranked)).sum()
        return total / keep.clamp_min(1.0)


def wce_pos_weight(
    mode: Literal["A", "B"],
    pos_counts: Tensor,
    neg_counts: Tensor,
    *,
    min_weight: float = 0.1,
) -> Tensor:
    """Positive-term weights of weighted CE-A or CE-B from training-set label counts.

    - ``"A"``: ``w_j = log(n_neg_j / n_pos_j)`` per attribute.
    - ``"B"``: one ``w = sum_j n_neg_j / sum_j n_pos_j`` for every attribute.

    Guards (a decision of this module, not stated by the paper): counts are
    clamped to >= 1, so an attribute with no positive (or no negative) gets a
    finite weight; and in mode A the weight is clamped to ``>= min_weight``.
    Without that floor an attribute positive in half or more of the images
    would get a weight <= 0, which removes or even inverts its positive
    supervision and makes the loss unbounded below. The default 0.1 leaves
    the paper's formula unchanged for every attribute with a positive rate
    below about 47.5 % (all of DeepFashion-C's but a handful).

    Args:
        mode: ``"A"`` or ``"B"``.
        pos_counts: ``[N]`` number of training images with attribute j positive.
        neg_counts: ``[N]`` number with attribute j negative (known labels only).
        min_weight: Floor of the CE-A weights, > 0.

    Returns:
        ``[N]`` float32 weights on the device of ``pos_counts``.

    Raises:
        ValueError: On an unknown mode, mismatched count shapes or ``min_weight <= 0``.
    """
    pos = torch.as_tensor(pos_counts).double()
    neg = torch.as_tensor(neg_counts).double().to(pos.device)
    if pos.dim() != 1 or pos.shape != neg.shape:
        raise ValueError(
            f"wce_pos_weight: 'pos_counts' has shape {tuple(pos.shape)} and 'neg_counts' "
            f"{tuple(neg.shape)}; both must be [N] (one count per attribute)."
        )
    if mode == "A":
        if not min_weight > 0.0:
            raise ValueError(
                f"wce_pos_weight: argument 'min_weight' is {min_weight!r}; it must be > 0 so "
                "that no attribute loses its positive supervision."
            )
        w = torch.log(neg.clamp_min(1.0) / pos.clamp_min(1.0)).clamp_min(min_weight)
    elif mode == "B":
        ratio = neg.sum().clamp_min(1.0) / pos.sum().clamp_min(1.0)
        w = ratio.expand(pos.shape)
    else:
        raise ValueError(
            f"wce_pos_weight: argument 'mode' is {mode!r}; allowed values are 'A' "
            "(w_j = log(n_neg_j / n_pos_j)) and 'B' (w = sum n_neg / sum n_pos)."
        )
    return w.float().contiguous()


def weighted_ce_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    mode: Literal["A", "B"],
    pos_counts: Tensor,
    neg_counts: Tensor,
    min_weight: float = 0.1,
) -> Tensor:
    """Weighted CE-A / CE-B: BCE whose positive terms are scaled, mean over known nodes.

    See :func:`wce_pos_weight` for the weights and their guards. The category
    node is plain cross entropy (weight 1). A trainer that calls this every
    step may precompute ``wce_pos_weight`` once and use ``bce_loss(pos_weight=...)``.

    Args:
        attr_logits: ``[M, N]`` attribute logits or None.
        attr_targets: ``[M, N]`` 0/1 targets or None.
        known: ``[M, N]`` bool mask, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        mode: ``"A"`` or ``"B"``.
        pos_counts: ``[N]`` training-set positive counts.
        neg_counts: ``[N]`` training-set negative counts.
        min_weight: Floor of the CE-A weights.

    Returns:
        Float32 scalar.
    """
    w = wce_pos_weight(mode, pos_counts, neg_counts, min_weight=min_weight)
    return bce_loss(attr_logits, attr_targets, known, cat_logits, cat_targets, pos_weight=w)


def weighted_ce_a_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    pos_counts: Tensor,
    neg_counts: Tensor,
    min_weight: float = 0.1,
) -> Tensor:
    """Weighted CE-A, ``w_j = log(n_neg_j / n_pos_j)``; see :func:`weighted_ce_loss`.

    Args:
        attr_logits: ``[M, N]`` attribute logits or None.
        attr_targets: ``[M, N]`` 0/1 targets or None.
        known: ``[M, N]`` bool mask, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        pos_counts: ``[N]`` training-set positive counts.
        neg_counts: ``[N]`` training-set negative counts.
        min_weight: Floor of the weights.

    Returns:
        Float32 scalar.
    """
    return weighted_ce_loss(
        attr_logits,
        attr_targets,
        known,
        cat_logits,
        cat_targets,
        mode="A",
        pos_counts=pos_counts,
        neg_counts=neg_counts,
        min_weight=min_weight,
    )


def weighted_ce_b_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    pos_counts: Tensor,
    neg_counts: Tensor,
) -> Tensor:
    """Weighted CE-B, ``w = sum n_neg / sum n_pos``; see :func:`weighted_ce_loss`.

    Args:
        attr_logits: ``[M, N]`` attribute logits or None.
        attr_targets: ``[M, N]`` 0/1 targets or None.
        known: ``[M, N]`` bool mask, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        pos_counts: ``[N]`` training-set positive counts.
        neg_counts: ``[N]`` training-set negative counts.

    Returns:
        Float32 scalar.
    """
    return weighted_ce_loss(
        attr_logits,
        attr_targets,
        known,
        cat_logits,
        cat_targets,
        mode="B",
        pos_counts=pos_counts,
        neg_counts=neg_counts,
    )


def asymmetric_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    detach_weights: bool = True,
) -> Tensor:
    """Asymmetric loss (ASL, Ridnik et al., ICCV 2021), beyond the paper.

    For ``p = sigma(s)`` and the shifted negative probability
    ``p_m = max(p - clip, 0)``:

    - positive node: ``L+ = -(1 - p) ** gamma_pos * log(p)``
    - negative node: ``L- = -p_m ** gamma_neg * log(1 - p_m)``

    The focusing factors are constants by default, as in the authors' training
    script (``disable_torch_grad_focal_loss=True``). Unlike the authors' sum,
    the result is the mean over known nodes, like every loss here; the
    category node is plain softmax cross entropy.

    Args:
        attr_logits: ``[M, N]`` attribute logits or None.
        attr_targets: ``[M, N]`` 0/1 targets or None.
        known: ``[M, N]`` bool mask, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        gamma_pos: Focusing exponent of positives (0 in the paper's defaults).
        gamma_neg: Focusing exponent of negatives (4).
        clip: Probability margin of negatives (0.05); 0 disables the shift.
        detach_weights: Treat the focusing factors as constants.

    Returns:
        Float32 scalar.

    Raises:
        ValueError: On a negative exponent or a clip outside [0, 1).
    """
    check_gamma(gamma_pos, "asymmetric_loss (gamma_pos)")
    check_gamma(gamma_neg, "asymmetric_loss (gamma_neg)")
    if not (0.0 <= clip < 1.0):
        raise ValueError(
            f"asymmetric_loss: argument 'clip' is {clip!r}; it must be in [0, 1) (default 0.05)."
        )
    check_inputs(attr_logits, attr_targets, known, cat_logits, cat_targets, "asymmetric_loss")
    device = _device(attr_logits, cat_logits)
    with fp32_region(device):
        total = torch.zeros((), dtype=torch.float32, device=device)
        count = torch.zeros((), dtype=torch.float32, device=device)
        if attr_logits is not None:
            s = attr_logits.float()
            u = known_mask(s, known)
            assert attr_targets is not None  # check_inputs raised otherwise
            y = clean_targets(attr_targets, u)
            p = torch.sigmoid(s)
            log_p = F.logsigmoid(s)
            if clip > 0.0:
                # 1 - p_m = min(1 - p + clip, 1) >= clip > 0, so the log is finite.
                p_m = (p - clip).clamp_min(0.0)
                log_not_pm = torch.log((torch.sigmoid(-s) + clip).clamp_max(1.0))
            else:
                p_m = p
                log_not_pm = F.logsigmoid(-s)
            w_pos = torch.pow(1.0 - p, gamma_pos)
            w_neg = torch.pow(p_m, gamma_neg)
            if detach_weights:
                w_pos, w_neg = w_pos.detach(), w_neg.detach()
            node = -(y * w_pos * log_p + (1.0 - y) * w_neg * log_not_pm)
            total = total + torch.where(u, node, torch.zeros_like(node)).sum()
            count = count + u.sum()
        if cat_logits is not None:
            assert cat_targets is not None  # check_inputs raised otherwise
            total = total + category_node_loss(cat_logits.float(), cat_targets).sum()
            count = count + cat_logits.shape[0]
        return total / count.clamp_min(1.0)
