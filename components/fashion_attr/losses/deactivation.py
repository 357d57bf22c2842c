"""Deactivation losses on synthetic complementary samples (section 3.3, eq. 5, 6, 10).

A "bad" generator (frozen MR-GAN with noise on its first feature maps) draws
images that resemble, but are not, real instances of the sampled conditions.
On such an image the classifier should be undecided: every binary attribute
logit should sit at 0 (neither positive nor negative, eq. 6) and every
category logit should sit below ``T`` (all class probabilities small, eq. 5).
By default the category logits are centred per image first (docs/method.md's
revised decision, measured in README's MNIST Table 3); ``centered=False`` is
the paper's literal eq. 5.
The node losses are averaged with the hard-label memory's weights (eq. 10), so
synthetic samples of hard labels count more.

Everything is computed in float32, with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_attr.losses.habp import fp32_region

__all__ = [
    "DEFAULT_THRESHOLD",
    "deact_binary_loss",
    "deact_multiclass_loss",
    "synthetic_complementary_loss",
]

#: Threshold ``T`` of eq. 5, about ``log(0.01)``.
DEFAULT_THRESHOLD = -4.6


def deact_binary_loss(attr_logits: Tensor) -> Tensor:
    """Deactivation loss of binary attribute nodes, ``L = s ** 2`` (eq. 6).

    Args:
        attr_logits: ``[M', N]`` attribute logits of synthetic images.

    Returns:
        ``[M', N]`` float32 node losses.

    Raises:
        ValueError: If ``attr_logits`` is not 2-D.
    """
    if attr_logits.dim() != 2:
        raise ValueError(
            f"deact_binary_loss: argument 'attr_logits' has shape {tuple(attr_logits.shape)}; "
            "expected [M', N] (synthetic batch x attributes)."
        )
    s = attr_logits.float()
    with fp32_region(s.device):
        return s * s


def deact_multiclass_loss(
    cat_logits: Tensor, threshold: float = DEFAULT_THRESHOLD, *, centered: bool = True
) -> Tensor:
    """Deactivation loss of a softmax head, ``(1/C) sum_k max(s_k - T, 0) ** 2`` (eq. 5).

    With ``centered`` (the default, docs/method.md's revised decision) the logits are
    first centred per image, ``s_k - mean_j s_j``. Softmax cross entropy on real
    images ignores a shift common to all logits, so eq. 5 on raw logits can be
    met by lowering every logit (the last layer's bias) without changing any
    prediction; the centred form is shift-invariant too and, the hinge being
    convex, is smallest when all logits are equal, i.e. at the uniform
    prediction (``bench/mnist_deact.py`` measures both). ``centered=False`` is
    the paper's literal form.

    Args:
        cat_logits: ``[M', C]`` category logits of synthetic images.
        threshold: ``T``; logits below it cost nothing (default -4.6, about log 0.01).
        centered: Centre the logits per image first (default; False: the literal eq. 5).

    Returns:
        ``[M']`` float32 node losses.

    Raises:
        ValueError: If ``cat_logits`` is not 2-D with at least one column.
    """
    if cat_logits.dim() != 2 or cat_logits.shape[1] == 0:
        raise ValueError(
            f"deact_multiclass_loss: argument 'cat_logits' has shape {tuple(cat_logits.shape)}; "
            "expected [M', C] with C >= 1 (synthetic batch x categories)."
        )
    s = cat_logits.float()
    with fp32_region(s.device):
        if centered:
            s = s - s.mean(dim=1, keepdim=True)
        return F.relu(s - threshold).square().mean(dim=1)


def synthetic_complementary_loss(
    attr_logits: Tensor | None,
    attr_weights: Tensor | None,
    cat_logits: Tensor | None = None,
    cat_weights: Tensor | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    centered: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """Hardness-weighted synthetic complementary loss ``L_SC`` (eq. 10).

    ``L_SC = (sum_ij w_ij L_ij + sum_i w_i L_i) / max(sum_ij w_ij + sum_i w_i, eps)``
    where ``L_ij = s_ij ** 2`` (eq. 6) for attribute nodes, weighted by
    ``S_j(y'_ij)`` of the sampled label, and ``L_i`` is eq. 5 for the category
    node of image i, weighted by ``S_cat(c'_i)``. The weights come from
    :meth:`fashion_attr.hardness.HardLabelMemory.condition_weights` and are
    constants (detached here). A category-only task (MNIST) passes
    ``attr_logits=None``.

    Args:
        attr_logits: ``[M', N]`` attribute logits of synthetic images, or None.
        attr_weights: ``[M', N]`` weights ``S_j(y'_ij)``; required with ``attr_logits``.
        cat_logits: ``[M', C]`` category logits of synthetic images, or None.
        cat_weights: ``[M']`` weights ``S_cat(c'_i)``; required with ``cat_logits``.
        threshold: ``T`` of eq. 5.
        centered: Centre the category logits first (see :func:`deact_multiclass_loss`).
        eps: Lower bound of the normaliser.

    Returns:
        Float32 scalar.

    Raises:
        ValueError: If no head is given, or a weight tensor is missing or misshaped.
    """
    if attr_logits is None and cat_logits is None:
        raise ValueError(
            "synthetic_complementary_loss: both 'attr_logits' and 'cat_logits' are None; pass "
            "the classifier's logits on the synthetic batch for at least one head."
        )
    device = (attr_logits if attr_logits is not None else cat_logits).device
    with fp32_region(device):
        num = torch.zeros((), dtype=torch.float32, device=device)
        den = torch.zeros((), dtype=torch.float32, device=device)
        if attr_logits is not None:
            if attr_weights is None or attr_weights.shape != attr_logits.shape:
                got = None if attr_weights is None else tuple(attr_weights.shape)
                raise ValueError(
                    f"synthetic_complementary_loss: argument 'attr_weights' is {got}; expected "
                    f"shape {tuple(attr_logits.shape)} like 'attr_logits' (from "
                    "HardLabelMemory.condition_weights)."
                )
            w = attr_weights.detach().float()
            num = num + (w * deact_binary_loss(attr_logits)).sum()
            den = den + w.sum()
        if cat_logits is not None:
            if cat_weights is None or cat_weights.shape != (cat_logits.shape[0],):
                got = None if cat_weights is None else tuple(cat_weights.shape)
                raise ValueError(
                    f"synthetic_complementary_loss: argument 'cat_weights' is {got}; expected "
                    f"shape ({cat_logits.shape[0]},), one weight per synthetic image (from "
                    "HardLabelMemory.condition_weights)."
                )
            if attr_logits is not None and cat_logits.shape[0] != attr_logits.shape[0]:
                raise ValueError(
                    f"synthetic_complementary_loss: 'cat_logits' has {cat_logits.shape[0]} rows "
                    f"but 'attr_logits' has {attr_logits.shape[0]}; both heads must score the "
                    "same synthetic batch."
                )
            wc = cat_weights.detach().float()
            num = num + (wc * deact_multiclass_loss(cat_logits, threshold, centered=centered)).sum()
            den = den + wc.sum()
        return num / den.clamp_min(eps)
