"""Losses of Ye et al., "Hard-Aware Fashion Attribute Classification", and its baselines.

Homes of the paper's concepts:

- :mod:`~fashion_attr.losses.habp`: HABP, the hardness-weighted average (eq. 1-4).
- :mod:`~fashion_attr.losses.baselines`: CE, focal, weighted focal, OHEM,
  weighted CE-A/B (the paper's baselines) and ASL (a modern reference).
- :mod:`~fashion_attr.losses.deactivation`: deactivation losses on synthetic
  complementary samples (eq. 5, 6) and their weighted average (eq. 10).
- :mod:`~fashion_attr.losses.decorrelation`: MR-GAN's DC regulariser (eq. 7-8).

Common call shape of every classification loss, so that the trainer switches
them by name through :data:`LOSSES`::

    fn(attr_logits [M, N], attr_targets [M, N] (float 0/1), known [M, N] bool | None = None,
       cat_logits [M, C] | None = None, cat_targets [M] long | None = None, **kwargs) -> scalar

``N`` may be 0 (category-only task such as MNIST; ``attr_logits`` may then also
be None) and ``cat_*`` may be None (attribute-only task). ``known=None`` means
every label is known.

Decisions that apply to **all** classification losses here:

- The category head is one more node per image in the same average as the
  attribute nodes, so a batch has ``M x (N + 1)`` nodes. docs/method.md section 1
  takes this decision for HABP ("the weight of one attribute task"); it is
  extended to the baselines so that the comparison is fair.
- Unknown attribute labels (``known`` False; DeepFashion-C's 0 entries) are
  excluded everywhere: from sums, counts, normalisers and OHEM's ranking.
- Targets must be 0/1 (values > 0.5 count as positive for the hardness);
  category targets must be valid indices. Values are not checked, because
  checking would force a host synchronisation every step.
- Everything is computed in float32 with autocast disabled, whatever the
  dtype of the logits.

Extra keyword arguments per :data:`LOSSES` name (:data:`REQUIRED_KWARGS` lists
the mandatory ones; the trainer passes them):

=================  ====================================  ===============================
name               required                              optional (default)
=================  ====================================  ===============================
``ce``             --                                    ``pos_weight`` (None)
``focal``          --                                    ``gamma`` (1.2), ``detach_weights`` (False)
``weighted_focal`` ``priors`` [N] positive rates          ``gamma``, ``detach_weights``
``ohem``           --                                    ``ratio`` (0.17)
``wce_a``          ``pos_counts``, ``neg_counts`` [N]    ``min_weight`` (0.1)
``wce_b``          ``pos_counts``, ``neg_counts`` [N]    --
``asl``            --                                    ``gamma_pos`` (0), ``gamma_neg`` (4),
                                                         ``clip`` (0.05), ``detach_weights``
``habp``           --                                    ``gamma`` (1.2), ``detach_weights``
                                                         (True), ``pos_weight`` (None; pass
                                                         ``wce_pos_weight("B", ...)`` for HABP
                                                         on a weighted CE-B base), ``eps``
=================  ====================================  ===============================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from fashion_attr.losses.baselines import (
    asymmetric_loss,
    bce_loss,
    focal_loss,
    ohem_loss,
    wce_pos_weight,
    weighted_ce_a_loss,
    weighted_ce_b_loss,
    weighted_ce_loss,
    weighted_focal_loss,
)
from fashion_attr.losses.deactivation import (
    DEACT_FORMS,
    DEFAULT_FORM,
    DEFAULT_THRESHOLD,
    DeactForm,
    deact_binary_loss,
    deact_multiclass_loss,
    resolve_deact_form,
    synthetic_complementary_loss,
)
from fashion_attr.losses.decorrelation import decorrelation_loss, mean_squared_cosine
from fashion_attr.losses.habp import (
    attribute_node_loss,
    category_hardness,
    category_node_loss,
    habp_loss,
    habp_terms,
    node_hardness,
)

__all__ = [
    "DEACT_FORMS",
    "DEFAULT_FORM",
    "DEFAULT_THRESHOLD",
    "LOSSES",
    "REQUIRED_KWARGS",
    "BuiltLoss",
    "DeactForm",
    "LabelCounts",
    "LossSettings",
    "asymmetric_loss",
    "attribute_node_loss",
    "bce_loss",
    "build_loss",
    "category_hardness",
    "category_node_loss",
    "deact_binary_loss",
    "deact_multiclass_loss",
    "decorrelation_loss",
    "focal_loss",
    "get_loss",
    "habp_loss",
    "habp_terms",
    "mean_squared_cosine",
    "node_hardness",
    "ohem_loss",
    "resolve_deact_form",
    "synthetic_complementary_loss",
    "wce_pos_weight",
    "weighted_ce_a_loss",
    "weighted_ce_b_loss",
    "weighted_ce_loss",
    "weighted_focal_loss",
]

#: Classification losses by configuration name (all share the common call shape).
LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce": bce_loss,
    "focal": focal_loss,
    "weighted_focal": weighted_focal_loss,
    "ohem": ohem_loss,
    "wce_a": weighted_ce_a_loss,
    "wce_b": weighted_ce_b_loss,
    "asl": asymmetric_loss,
    "habp": habp_loss,
}

#: Keyword arguments each loss cannot run without (training-set statistics).
REQUIRED_KWARGS: dict[str, tuple[str, ...]] = {
    "ce": (),
    "focal": (),
    "weighted_focal": ("priors",),
    "ohem": (),
    "wce_a": ("pos_counts", "neg_counts"),
    "wce_b": ("pos_counts", "neg_counts"),
    "asl": (),
    "habp": (),
}


def get_loss(name: str) -> Callable[..., Tensor]:
    """Look a classification loss up by name.

    Args:
        name: One of the keys of :data:`LOSSES`.

    Returns:
        The loss function.

    Raises:
        ValueError: On an unknown name, listing the allowed ones.
    """
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"loss name {name!r} is unknown; allowed values are {sorted(LOSSES)} "
            "(set the training config's loss field to one of them)."
        ) from None


class LossSettings(Protocol):
    """What :func:`build_loss` reads of a loss configuration (``config.LossConfig``).

    Read-only properties, so that a frozen config with ``Literal`` fields satisfies it.
    """

    @property
    def name(self) -> str:
        """The :data:`LOSSES` name."""

    @property
    def gamma(self) -> float:
        """The hardness exponent."""

    @property
    def base(self) -> str:
        """HABP's base loss."""

    @property
    def detach_weights(self) -> bool:
        """Whether the hardness weights are constants."""

    @property
    def ohem_ratio(self) -> float:
        """OHEM's kept fraction."""


@dataclass(frozen=True)
class LabelCounts:
    """The training split's label statistics some losses are built from.

    Attributes:
        pos: ``[N]`` float positives per attribute.
        neg: ``[N]`` float negatives per attribute (unknown labels count as neither).
        num_train: training images.
    """

    pos: Tensor
    neg: Tensor
    num_train: int


@dataclass(frozen=True)
class BuiltLoss:
    """A classification loss with its settings bound: ``loss(attr, tgt, known, cat, ct)``.

    Attributes:
        name: the :data:`LOSSES` name.
        fn: the loss function.
        kwargs: the keyword arguments :func:`build_loss` bound (HABP's are those of
            :func:`habp_terms` too, for the global normaliser under DDP).
    """

    name: str
    fn: Callable[..., Tensor]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Tensor | None) -> Tensor:
        """The loss of a batch, in the common call shape (module docstring)."""
        return self.fn(*args, **self.kwargs)


def _habp_kwargs(s: LossSettings, c: LabelCounts) -> dict[str, Any]:
    # The paper's class-balanced runs put HABP on a weighted CE-B base (section 1).
    pos_weight = wce_pos_weight("B", c.pos, c.neg) if s.base == "wce_b" else None
    return {"gamma": s.gamma, "detach_weights": s.detach_weights, "pos_weight": pos_weight}


#: What each loss takes from the settings and the label counts (a loss's own defaults
#: stand for everything not listed, e.g. focal's ``detach_weights=False``).
_KWARGS: dict[str, Callable[[LossSettings, LabelCounts], dict[str, Any]]] = {
    "ce": lambda s, c: {},
    "focal": lambda s, c: {"gamma": s.gamma},
    "weighted_focal": lambda s, c: {"gamma": s.gamma, "priors": c.pos / max(c.num_train, 1)},
    "ohem": lambda s, c: {"ratio": s.ohem_ratio},
    "wce_a": lambda s, c: {"pos_counts": c.pos, "neg_counts": c.neg},
    "wce_b": lambda s, c: {"pos_counts": c.pos, "neg_counts": c.neg},
    "asl": lambda s, c: {},
    "habp": _habp_kwargs,
}


def build_loss(settings: LossSettings, counts: LabelCounts) -> BuiltLoss:
    """The configured classification loss with its settings and statistics bound.

    Args:
        settings: the loss configuration (name, gamma, base, detach_weights, ohem_ratio).
        counts: the training split's per-attribute counts.

    Returns:
        The :class:`BuiltLoss`.

    Raises:
        ValueError: On an unknown name, listing the allowed ones.
    """
    fn = get_loss(settings.name)
    return BuiltLoss(settings.name, fn, _KWARGS[settings.name](settings, counts))
