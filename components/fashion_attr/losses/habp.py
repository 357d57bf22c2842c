"""HABP: hard-aware back-propagation (Ye et al., section 3.1, eq. 1-4).

Every node (one attribute of one image, or the category head of one image) has
a base loss ``L`` (binary cross entropy for attributes, softmax cross entropy
for the category) and a hardness ``h = (1 - P) ** gamma``, ``P`` the probability
the network gives to the true label. HABP is the hardness-weighted *average*

    L_HABP = sum(u * h * L) / max(sum(u * h), eps)          (eq. 1-4)

over the ``M x (N + 1)`` nodes of a batch (``u`` = 1 where the label is known).
The normaliser is what separates HABP from focal loss: however few hard nodes
a batch has, the loss stays of order one, so hard nodes are not drowned out.

This module also holds the node-level building blocks (input checks, the fp32
guard, node losses and hardness) that :mod:`fashion_attr.losses.baselines`
reuses, so that every loss sees the same nodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "attribute_node_loss",
    "category_hardness",
    "category_node_loss",
    "habp_loss",
    "habp_terms",
    "node_hardness",
]


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def fp32_region(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` so that the loss arithmetic runs in float32.

    Losses of saturated logits lose all precision in bf16/fp16 (``log(1 - P)``
    rounds to 0 or -inf), so every loss in this package casts its inputs with
    ``.float()`` and computes inside this context.

    Args:
        device: Device the loss inputs live on.

    Yields:
        Nothing; the body runs with autocast disabled for ``device.type``.
    """
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def check_gamma(gamma: float, where: str) -> None:
    """Reject a negative or non-finite focusing exponent.

    Args:
        gamma: The exponent of the hardness ``(1 - P) ** gamma``.
        where: Name of the calling function, used in the error message.

    Raises:
        ValueError: If ``gamma`` is negative or not finite.
    """
    if not (gamma >= 0.0 and gamma < float("inf")):
        raise ValueError(
            f"{where}: argument 'gamma' is {gamma!r}; it must be a finite number >= 0 "
            "(the paper uses 1.2 for top-k runs and 0.1 for class-balanced runs)."
        )


def check_inputs(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None,
    cat_logits: Tensor | None,
    cat_targets: Tensor | None,
    where: str,
) -> int:
    """Validate the common loss call shape and return the batch size ``M``.

    Only shapes and dtypes are checked (metadata, no host synchronisation);
    the values of targets are trusted to be 0/1 and in ``[0, C)``.

    Args:
        attr_logits: ``[M, N]`` attribute logits, or None for a category-only task.
        attr_targets: ``[M, N]`` 0/1 targets; required with ``attr_logits``.
        known: ``[M, N]`` bool mask of known labels, or None (all known).
        cat_logits: ``[M, C]`` category logits, or None for an attribute-only task.
        cat_targets: ``[M]`` integer category indices; required with ``cat_logits``.
        where: Name of the calling function, used in error messages.

    Returns:
        The batch size ``M``.

    Raises:
        ValueError: On a missing partner tensor, a shape mismatch or a wrong dtype.
    """
    if attr_logits is None and cat_logits is None:
        raise ValueError(
            f"{where}: both 'attr_logits' and 'cat_logits' are None; pass at least one head's "
            "logits (attr_logits may have N = 0 columns for a category-only task)."
        )
    m: int | None = None
    if attr_logits is not None:
        if attr_logits.dim() != 2:
            raise ValueError(
                f"{where}: argument 'attr_logits' has shape {tuple(attr_logits.shape)}; "
                "expected [M, N] (batch x attributes). Flatten extra dimensions first."
            )
        if attr_targets is None:
            raise ValueError(
                f"{where}: 'attr_logits' was given without 'attr_targets'; pass the [M, N] "
                "0/1 attribute targets as well."
            )
        if attr_targets.shape != attr_logits.shape:
            raise ValueError(
                f"{where}: argument 'attr_targets' has shape {tuple(attr_targets.shape)} but "
                f"'attr_logits' has {tuple(attr_logits.shape)}; pass one 0/1 target per logit."
            )
        if known is not None:
            if known.shape != attr_logits.shape:
                raise ValueError(
                    f"{where}: argument 'known' has shape {tuple(known.shape)} but "
                    f"'attr_logits' has {tuple(attr_logits.shape)}; pass one bool per logit "
                    "or known=None when every label is known."
                )
            if known.dtype != torch.bool:
                raise ValueError(
                    f"{where}: argument 'known' has dtype {known.dtype}; it must be torch.bool "
                    "(True = label known). Convert with known.bool() or (labels != 0)."
                )
        m = attr_logits.shape[0]
    elif attr_targets is not None or known is not None:
        raise ValueError(
            f"{where}: 'attr_targets' or 'known' was given but 'attr_logits' is None; pass the "
            "attribute logits too, or drop the attribute arguments for a category-only task."
        )
    if cat_logits is not None:
        if cat_logits.dim() != 2:
            raise ValueError(
                f"{where}: argument 'cat_logits' has shape {tuple(cat_logits.shape)}; expected "
                "[M, C] (batch x categories)."
            )
        if cat_targets is None:
            raise ValueError(
                f"{where}: 'cat_logits' was given without 'cat_targets'; pass the [M] category "
                "indices as well."
            )
        if cat_targets.shape != (cat_logits.shape[0],):
            raise ValueError(
                f"{where}: argument 'cat_targets' has shape {tuple(cat_targets.shape)}; expected "
                f"[{cat_logits.shape[0]}] (one index per row of 'cat_logits')."
            )
        if cat_targets.dtype.is_floating_point or cat_targets.dtype == torch.bool:
            raise ValueError(
                f"{where}: argument 'cat_targets' has dtype {cat_targets.dtype}; it must hold "
                "integer category indices (torch.long), not one-hot or float values."
            )
        if m is not None and cat_logits.shape[0] != m:
            raise ValueError(
                f"{where}: 'cat_logits' has {cat_logits.shape[0]} rows but 'attr_logits' has "
                f"{m}; both heads must come from the same batch of images."
            )
        m = cat_logits.shape[0]
    elif cat_targets is not None:
        raise ValueError(
            f"{where}: 'cat_targets' was given but 'cat_logits' is None; pass the category "
            "logits too, or drop cat_targets for an attribute-only task."
        )
    assert m is not None  # guaranteed by the first check
    return m


def pos_weight_tensor(
    pos_weight: Tensor | float | None, n: int, device: torch.device, where: str
) -> Tensor | float | None:
    """Check a ``pos_weight`` argument and make it broadcastable to ``[M, N]`` float32.

    A Python number stays a number (no host-to-device copy every step); a
    tensor is moved to ``device`` as float32 (a no-op when the trainer already
    keeps it there, which it should on CUDA to avoid a synchronising copy).

    Args:
        pos_weight: None, a scalar, or a ``[N]`` tensor of positive-term weights.
        n: Number of attributes ``N``.
        device: Device of the logits.
        where: Name of the calling function, used in error messages.

    Returns:
        None, a float, or a float32 tensor of shape ``[]`` or ``[N]`` on ``device``.

    Raises:
        ValueError: If a tensor ``pos_weight`` does not have shape ``[N]`` or ``[]``.
    """
    if pos_weight is None:
        return None
    if isinstance(pos_weight, int | float):
        return float(pos_weight)
    w = torch.as_tensor(pos_weight, dtype=torch.float32, device=device)
    if w.dim() != 0 and w.shape != (n,):
        raise ValueError(
            f"{where}: argument 'pos_weight' has shape {tuple(w.shape)}; expected a scalar or "
            f"[{n}] (one weight per attribute), e.g. from wce_pos_weight()."
        )
    return w


def known_mask(attr_logits: Tensor, known: Tensor | None) -> Tensor:
    """Return a bool ``[M, N]`` mask of known labels (all True when ``known`` is None).

    Args:
        attr_logits: ``[M, N]`` logits (for shape and device).
        known: Optional bool mask.

    Returns:
        Bool tensor shaped like ``attr_logits``.
    """
    if known is None:
        return torch.ones(attr_logits.shape, dtype=torch.bool, device=attr_logits.device)
    return known.to(attr_logits.device)


def clean_targets(attr_targets: Tensor, known: Tensor) -> Tensor:
    """Float32 targets with unknown entries set to 0.

    Unknown labels may be encoded with any value (DeepFashion-C uses 0 in a
    -1/1 file); zeroing them keeps every per-node formula finite so that the
    masked ``torch.where`` never back-propagates a NaN.

    Args:
        attr_targets: ``[M, N]`` 0/1 targets.
        known: ``[M, N]`` bool mask.

    Returns:
        Float32 tensor of 0/1 values.
    """
    y = attr_targets.float()
    return torch.where(known, y, torch.zeros_like(y))


# --------------------------------------------------------------------------- nodes


def attribute_node_loss(
    attr_logits: Tensor, attr_targets: Tensor, pos_weight: Tensor | float | None = None
) -> Tensor:
    """Per-node binary cross entropy ``L_ij = -log P_ij`` (eq. 1), optionally re-weighted.

    ``L = -(w * y * log sigma(s) + (1 - y) * log(1 - sigma(s)))``, computed with
    log-sigmoid so saturated logits stay finite. ``w`` (``pos_weight``) is how
    weighted CE-A / CE-B become the base loss.

    Args:
        attr_logits: ``[M, N]`` float32 logits.
        attr_targets: ``[M, N]`` float32 0/1 targets.
        pos_weight: None, a number or a ``[N]`` (or 0-d) float32 tensor scaling the
            positive term.

    Returns:
        ``[M, N]`` float32 node losses.
    """
    pos = attr_targets * F.logsigmoid(attr_logits)
    if pos_weight is not None:
        pos = pos * pos_weight
    return -(pos + (1.0 - attr_targets) * F.logsigmoid(-attr_logits))


def category_node_loss(cat_logits: Tensor, cat_targets: Tensor) -> Tensor:
    """Per-image softmax cross entropy ``L_i = -log p_i[c_i]`` of the category head.

    Args:
        cat_logits: ``[M, C]`` float32 logits.
        cat_targets: ``[M]`` integer category indices.

    Returns:
        ``[M]`` float32 node losses.
    """
    return F.cross_entropy(cat_logits, cat_targets.long(), reduction="none")


def node_hardness(attr_logits: Tensor, attr_targets: Tensor, gamma: float) -> Tensor:
    """Hardness ``h_ij = |y_ij - sigma(s_ij)| ** gamma`` of attribute nodes (eq. 2).

    Per docs/method.md's Decision, ``|y - sigma(s)|`` is the error probability
    ``1 - P_ij`` for both label values. It is computed as
    ``exp(gamma * log(1 - P))`` with ``log(1 - P) = log sigma(-s)`` for ``y = 1``
    and ``log sigma(s)`` for ``y = 0``, which stays accurate for saturated
    logits. ``gamma = 0`` gives exactly 1. The result is attached to the graph;
    callers that treat it as a sampling weight detach it.

    Args:
        attr_logits: ``[M, N]`` logits (cast to float32).
        attr_targets: ``[M, N]`` 0/1 targets (values > 0.5 count as positive).
        gamma: Focusing exponent, >= 0.

    Returns:
        ``[M, N]`` float32 hardness in ``[0, 1]``.
    """
    check_gamma(gamma, "node_hardness")
    s = attr_logits.float()
    with fp32_region(s.device):
        if gamma == 0.0:
            return torch.ones_like(s)
        log_err = torch.where(attr_targets > 0.5, F.logsigmoid(-s), F.logsigmoid(s))
        return torch.exp(gamma * log_err)


def category_hardness(cat_logits: Tensor, cat_targets: Tensor, gamma: float) -> Tensor:
    """Hardness ``(1 - softmax(s)[c]) ** gamma`` of the category node (docs/method.md section 1).

    ``log(1 - p_c) = logsumexp_{k != c} s_k - logsumexp_k s_k``, exact even when
    ``p_c`` rounds to 1 in float32. ``gamma = 0`` gives exactly 1.

    Args:
        cat_logits: ``[M, C]`` logits (cast to float32).
        cat_targets: ``[M]`` integer category indices.
        gamma: Focusing exponent, >= 0.

    Returns:
        ``[M]`` float32 hardness in ``[0, 1]``.
    """
    check_gamma(gamma, "category_hardness")
    s = cat_logits.float()
    with fp32_region(s.device):
        if gamma == 0.0:
            return torch.ones(s.shape[0], dtype=torch.float32, device=s.device)
        # Compare with arange, not F.one_hot: one_hot validates its input on the host (a sync).
        classes = torch.arange(s.shape[1], device=s.device)
        is_target = classes.unsqueeze(0) == cat_targets.long().unsqueeze(1)
        others = torch.logsumexp(s.masked_fill(is_target, float("-inf")), dim=1)
        log_err = others - torch.logsumexp(s, dim=1)
        return torch.exp(gamma * log_err)


# --------------------------------------------------------------------------- HABP


def habp_terms(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    gamma: float = 1.2,
    detach_weights: bool = True,
    pos_weight: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """Numerator and normaliser of HABP (eq. 1-4), for data-parallel training.

    Returns ``(sum(u * h * L), sum(u * h))`` over every attribute node and one
    category node per image. ``habp_loss`` divides them. Under
    DistributedDataParallel the normaliser must be the *global* one, or each
    rank would re-normalise its own few hard nodes and the hardness weighting
    would differ from single-process training. A trainer therefore does::

        num, den = habp_terms(...)
        den = den.detach().clone()
        torch.distributed.all_reduce(den)              # sum over ranks
        loss = num * world_size / den.clamp_min(eps)   # DDP averages gradients

    which yields exactly the gradient of HABP over the global batch. (With
    ``detach_weights=False`` the denominator's own gradient is not
    all-reduced; that setting is for study only.)

    Args:
        attr_logits: ``[M, N]`` attribute logits (N may be 0) or None.
        attr_targets: ``[M, N]`` 0/1 attribute targets or None.
        known: ``[M, N]`` bool mask of known labels, None = all known.
        cat_logits: ``[M, C]`` category logits or None (attribute-only task).
        cat_targets: ``[M]`` category indices or None.
        gamma: Focusing exponent of the hardness (1.2 top-k runs, 0.1 class-balanced).
        detach_weights: Treat ``h`` as a constant sampling weight (docs/method.md Decision).
        pos_weight: Scalar or ``[N]`` weight of the positive BCE term, e.g.
            ``wce_pos_weight("B", ...)`` for HABP on a weighted CE-B base.

    Returns:
        ``(weighted_sum, weight_sum)``, two float32 scalars.
    """
    check_gamma(gamma, "habp_terms")
    check_inputs(attr_logits, attr_targets, known, cat_logits, cat_targets, "habp_terms")
    # check_inputs raised unless at least one head's logits are given.
    device = (attr_logits if attr_logits is not None else cast(Tensor, cat_logits)).device
    weighted_sum = torch.zeros((), dtype=torch.float32, device=device)
    weight_sum = torch.zeros((), dtype=torch.float32, device=device)
    with fp32_region(device):
        if attr_logits is not None:
            s = attr_logits.float()
            u = known_mask(s, known)
            assert attr_targets is not None  # check_inputs raised otherwise
            y = clean_targets(attr_targets, u)
            w_pos = pos_weight_tensor(pos_weight, s.shape[1], device, "habp_terms")
            loss = attribute_node_loss(s, y, w_pos)
            h = node_hardness(s, y, gamma)
            if detach_weights:
                h = h.detach()
            zero = torch.zeros_like(loss)
            weighted_sum = weighted_sum + torch.where(u, h * loss, zero).sum()
            weight_sum = weight_sum + torch.where(u, h, zero).sum()
        if cat_logits is not None:
            assert cat_targets is not None  # check_inputs raised otherwise
            sc = cat_logits.float()
            loss_c = category_node_loss(sc, cat_targets)
            h_c = category_hardness(sc, cat_targets, gamma)
            if detach_weights:
                h_c = h_c.detach()
            weighted_sum = weighted_sum + (h_c * loss_c).sum()
            weight_sum = weight_sum + h_c.sum()
    return weighted_sum, weight_sum


def habp_loss(
    attr_logits: Tensor | None,
    attr_targets: Tensor | None,
    known: Tensor | None = None,
    cat_logits: Tensor | None = None,
    cat_targets: Tensor | None = None,
    *,
    gamma: float = 1.2,
    detach_weights: bool = True,
    pos_weight: Tensor | float | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """HABP loss ``sum(u * h * L) / max(sum(u * h), eps)`` (eq. 1-4).

    With ``gamma = 0`` every weight is 1 and HABP is the plain mean of the
    node losses over known nodes (the CE baseline). The category head is one
    more node per image in the same average (docs/method.md Decision).

    Args:
        attr_logits: ``[M, N]`` attribute logits (N may be 0) or None.
        attr_targets: ``[M, N]`` 0/1 attribute targets or None.
        known: ``[M, N]`` bool mask of known labels, None = all known.
        cat_logits: ``[M, C]`` category logits or None.
        cat_targets: ``[M]`` category indices or None.
        gamma: Focusing exponent (1.2 for top-k, 0.1 for class-balanced runs).
        detach_weights: Treat the hardness as a constant weight (default, Decision).
        pos_weight: Positive-term weights of the base BCE (weighted CE-A/B base).
        eps: Lower bound of the normaliser (a batch of only perfect predictions).

    Returns:
        Float32 scalar loss.
    """
    num, den = habp_terms(
        attr_logits,
        attr_targets,
        known,
        cat_logits,
        cat_targets,
        gamma=gamma,
        detach_weights=detach_weights,
        pos_weight=pos_weight,
    )
    return num / den.clamp_min(eps)
