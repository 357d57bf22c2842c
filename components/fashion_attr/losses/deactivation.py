"""Deactivation losses on synthetic complementary samples (docs/method.md section 3.5-3.6).

A "bad" generator (frozen MR-GAN with noise on its first feature maps) draws
images that resemble, but are not, real instances of the sampled conditions.
On such an image the classifier should be undecided: every binary attribute
logit should sit at 0 (eq. 6, ``L = s ** 2``) and no category should be
predicted (eq. 5, ``L = (1/C) sum_k max(s_k - T, 0) ** 2``). The node losses are
averaged with the hard-label memory's weights (eq. 10), so synthetic samples of
hard labels count more.

Eq. 5 on a softmax head has three readings here (``form``, docs/method.md section
3.5 says which is the default and how it was chosen):

- ``"raw"``: the paper's literal eq. 5 on the raw logits. Softmax cross entropy on
  real images ignores a shift common to all logits, so this form is met by lowering
  every logit together (the last layer's bias) without changing any prediction.
- ``"centered"``: eq. 5 on per-image centred logits ``c = s - mean(s)``. Since
  ``sum_k c_k = 0``, wherever every ``c_k > T`` the loss is exactly
  ``(1/C) ||c||^2 + T^2``: a quadratic **confidence penalty** pulling the logits
  together (towards the uniform prediction); T is then only a constant, and acts as
  a threshold only for a class whose logit lies more than ``|T|`` below the mean.
- ``"log_softmax"``: eq. 5 on log-probabilities ``log p_k`` with the threshold
  ``T_eff = max(T, -log C)``: every class probability should be at most
  ``max(e^T, 1/C)``; T keeps its meaning as a log-probability ceiling. The clamp is
  needed because softmax probabilities cannot all be below ``1/C``: with the
  paper's T = -4.6 (p = 0.01) and C < 100 the unclamped loss is smallest at a
  one-hot prediction (one class at ``(0 - T)^2 / C``, against
  ``(log(1/C) - T)^2`` at the uniform one), which would reward confidence.
  Clamped, the loss is 0 exactly at the uniform prediction and penalises only the
  classes above ``T_eff``.

The default, :data:`DEFAULT_FORM` = ``"centered"``, is therefore a confidence penalty on
the synthetic images, not the paper's "every probability below e^T". It was chosen on
MNIST validation digits as the only reading that beats LeNet there; at CPU budgets it
does not beat the same penalty on Gaussian-noise images there (the no-generator control of
:class:`fashion_attr.classifier.deact.DeactLoss`), while on the demo fashion catalog it
beats both (docs/method.md section 3.5, docs/results.md).

Everything is computed in float32, with autocast disabled.
"""

from __future__ import annotations

import math
from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_attr.losses.habp import fp32_region

__all__ = [
    "DEACT_FORMS",
    "DEFAULT_FORM",
    "DEFAULT_THRESHOLD",
    "DeactForm",
    "deact_binary_loss",
    "deact_multiclass_loss",
    "resolve_deact_form",
    "synthetic_complementary_loss",
]

#: Threshold ``T`` of eq. 5, about ``log(0.01)``.
DEFAULT_THRESHOLD = -4.6

#: The readings of eq. 5 on a softmax head (module docstring).
DeactForm = Literal["centered", "log_softmax", "raw"]
DEACT_FORMS: tuple[str, ...] = get_args(DeactForm)
#: The library default; docs/method.md section 3.5 records how it was chosen.
DEFAULT_FORM: DeactForm = "centered"


def resolve_deact_form(form: str | None, centered: bool | None, where: str) -> DeactForm:
    """``form``, or the legacy ``centered`` flag (True: centered, False: raw), checked.

    Raises:
        ValueError: an unknown form, or a ``centered`` flag that contradicts ``form``.
    """
    if centered is not None:
        legacy = "centered" if centered else "raw"
        if form is not None and form != legacy:
            raise ValueError(
                f"{where}: 'centered={centered}' contradicts 'form={form!r}'; pass only "
                f"'form', one of {', '.join(DEACT_FORMS)}."
            )
        return cast(DeactForm, legacy)
    form = DEFAULT_FORM if form is None else form
    if form not in DEACT_FORMS:
        raise ValueError(
            f"{where}: argument 'form' is {form!r}; expected one of {', '.join(DEACT_FORMS)}."
        )
    return cast(DeactForm, form)


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
    cat_logits: Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    form: DeactForm | None = None,
    centered: bool | None = None,
) -> Tensor:
    """Deactivation loss of a softmax head, ``(1/C) sum_k max(x_k - T, 0) ** 2`` (eq. 5).

    ``x`` depends on ``form`` (module docstring): the raw logits (``"raw"``, the
    paper's literal eq. 5), the per-image centred logits ``s - mean(s)``
    (``"centered"``: a confidence penalty, ``(1/C) ||s - mean(s)||^2 + T^2`` wherever
    every centred logit exceeds T), or the log-probabilities ``log_softmax(s)`` with
    ``T`` raised to ``-log C`` where it is lower (``"log_softmax"``: zero exactly at
    the uniform prediction).

    Args:
        cat_logits: ``[M', C]`` category logits of synthetic images.
        threshold: ``T`` (default -4.6, about log 0.01).
        form: ``"centered"``, ``"log_softmax"`` or ``"raw"``; None: :data:`DEFAULT_FORM`.
        centered: Legacy flag (True: ``"centered"``, False: ``"raw"``).

    Returns:
        ``[M']`` float32 node losses.

    Raises:
        ValueError: If ``cat_logits`` is not 2-D with at least one column, or ``form``
            is unknown or contradicts ``centered``.
    """
    if cat_logits.dim() != 2 or cat_logits.shape[1] == 0:
        raise ValueError(
            f"deact_multiclass_loss: argument 'cat_logits' has shape {tuple(cat_logits.shape)}; "
            "expected [M', C] with C >= 1 (synthetic batch x categories)."
        )
    form = resolve_deact_form(form, centered, "deact_multiclass_loss")
    s = cat_logits.float()
    with fp32_region(s.device):
        if form == "centered":
            s = s - s.mean(dim=1, keepdim=True)
        elif form == "log_softmax":
            s = F.log_softmax(s, dim=1)
            # Probabilities cannot all lie below 1/C: the ceiling is at least log(1/C).
            threshold = max(threshold, -math.log(s.shape[1]))
        return F.relu(s - threshold).square().mean(dim=1)  # eq. 5


def synthetic_complementary_loss(
    attr_logits: Tensor | None,
    attr_weights: Tensor | None,
    cat_logits: Tensor | None = None,
    cat_weights: Tensor | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    form: DeactForm | None = None,
    centered: bool | None = None,
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
        form: The reading of eq. 5 (see :func:`deact_multiclass_loss`).
        centered: Legacy flag (True: ``"centered"``, False: ``"raw"``).
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
    form = resolve_deact_form(form, centered, "synthetic_complementary_loss")
    some = attr_logits if attr_logits is not None else cat_logits
    assert some is not None  # one of the two, checked above
    device = some.device
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
            num = num + (wc * deact_multiclass_loss(cat_logits, threshold, form=form)).sum()
            den = den + wc.sum()
        return num / den.clamp_min(eps)
