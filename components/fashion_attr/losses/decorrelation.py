"""Decorrelation (DC) of MR-GAN's noise projection (docs/method.md section 4, eq. 7-8).

The generator's first block projects the latent vector to feature maps with a
transposed convolution of weight ``W`` shaped ``(N_in, N_F, k, k)``. Let
``w_ij = W[j, i].flatten()`` be the k x k filter from noise dimension j to
output channel i. DC penalises filters of different noise dimensions that
point the same way within one output channel, so every noise dimension drives
the image differently:

    L_DC = 1 / (N_F * N_Z**2) * sum_i sum_{j != k} cos(w_ij, w_ik) ** 2      (eq. 7-8)

Per docs/method.md's Decision, j and k run over the noise input channels only; the
condition channels (multi-hot attributes, one-hot category) that share the
same projection are left out.

``reduction="sum"`` drops the normaliser: the unnormalised sum of squared cosines, the
reading under which the paper's weight 2e-6 is not inert (it equals ``"mean"`` with the
weight multiplied by ``N_F * N_Z**2``: about 17 for the paper's 224 px generator, 8.4 for
the MNIST one; docs/method.md section 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_attr.losses.habp import fp32_region

__all__ = ["decorrelation_loss", "mean_squared_cosine", "msc_floor"]


def _noise_filters(weight: Tensor, noise_channels: slice | None, where: str) -> Tensor:
    """Unit-norm noise filters as ``[N_F, N_Z, k*k]`` (zero filters stay zero)."""
    if weight.dim() != 4:
        raise ValueError(
            f"{where}: argument 'weight' has shape {tuple(weight.shape)}; expected the "
            "(N_in, N_F, k, k) weight of a ConvTranspose2d (e.g. generator.project.weight)."
        )
    n_in = weight.shape[0]
    if noise_channels is None:
        noise_channels = slice(None)
    if not isinstance(noise_channels, slice):
        raise ValueError(
            f"{where}: argument 'noise_channels' is {noise_channels!r}; pass a slice of input "
            "channels such as slice(0, z_dim), or None for all input channels."
        )
    n_z = len(range(n_in)[noise_channels])
    if n_z == 0:
        raise ValueError(
            f"{where}: argument 'noise_channels' {noise_channels!r} selects no input channel of "
            f"a weight with N_in = {n_in}; pass slice(0, z_dim) with 0 < z_dim <= {n_in}."
        )
    w = weight[noise_channels].float()  # [N_Z, N_F, k, k]
    w = w.flatten(2).transpose(0, 1)  # [N_F, N_Z, k*k]
    # F.normalize divides by max(||w||, eps): a zero filter maps to zero, so it
    # has cosine 0 with everything and a finite (zero) gradient.
    return F.normalize(w, dim=2, eps=1e-12)


def _squared_cos_sum(unit: Tensor) -> Tensor:
    """Sum over channels i and pairs j != k of ``cos(w_ij, w_ik) ** 2``."""
    gram = torch.bmm(unit, unit.transpose(1, 2))  # [N_F, N_Z, N_Z] cosines
    # Mask the diagonal (j == k) rather than subtract it: no cancellation error.
    eye = torch.eye(gram.shape[1], dtype=torch.bool, device=gram.device)
    return gram.masked_fill(eye, 0.0).square().sum()


def decorrelation_loss(
    weight: Tensor, noise_channels: slice | None = None, reduction: str = "mean"
) -> Tensor:
    """DC loss ``1/(N_F N_Z^2) sum_i sum_{j != k} cos(w_ij, w_ik)^2`` (eq. 7-8).

    Vectorised as one batched Gram matrix per output channel. It is 0 for
    mutually orthogonal filters and ``(N_Z - 1) / N_Z`` when all of a
    channel's noise filters are parallel. Differentiable with respect to
    ``weight`` (condition channels receive zero gradient).

    Args:
        weight: ``(N_in, N_F, k, k)`` weight of the noise-to-feature transposed conv.
        noise_channels: Slice of input channels that carry noise (e.g.
            ``slice(0, z_dim)`` when the condition is concatenated after the
            noise); None uses all input channels.
        reduction: ``"mean"`` (eq. 7-8 as written) or ``"sum"`` (no ``1/(N_F N_Z^2)``).

    Returns:
        Float32 scalar (added to G's loss with weight ``dc_weight``; the paper's 2e-6 is
        inert with ``"mean"``).

    Raises:
        ValueError: On a weight that is not 4-D, an empty/invalid channel slice, or an
            unknown ``reduction``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"decorrelation_loss: argument 'reduction' is {reduction!r}; expected 'mean' "
            "(eq. 7-8) or 'sum' (unnormalised)."
        )
    with fp32_region(weight.device):
        unit = _noise_filters(weight, noise_channels, "decorrelation_loss")
        n_f, n_z = unit.shape[0], unit.shape[1]
        total = _squared_cos_sum(unit)
        return total if reduction == "sum" else total / (n_f * n_z * n_z)  # eq. 7-8


@torch.no_grad()
def mean_squared_cosine(weight: Tensor, noise_channels: slice | None = None) -> Tensor:
    """Mean of ``cos(w_ij, w_ik) ** 2`` over channels i and pairs ``j != k`` (paper's Fig. 8).

    A monitoring quantity: unlike eq. 7-8 it divides by the number of pairs
    ``N_F * N_Z * (N_Z - 1)``, so identical filters give 1. No gradient.

    Args:
        weight: ``(N_in, N_F, k, k)`` weight of the noise-to-feature transposed conv.
        noise_channels: Slice of noise input channels, or None for all.

    Returns:
        Float32 0-d tensor; 0 when there is a single noise channel (no pair).

    Raises:
        ValueError: On a weight that is not 4-D or an empty/invalid channel slice.
    """
    with fp32_region(weight.device):
        unit = _noise_filters(weight.detach(), noise_channels, "mean_squared_cosine")
        n_f, n_z = unit.shape[0], unit.shape[1]
        pairs = n_f * n_z * (n_z - 1)
        return _squared_cos_sum(unit) / max(pairs, 1)


def msc_floor(n_z: int, filter_size: int) -> float:
    """The lowest mean squared cosine ``n_z`` filters of ``filter_size`` values can reach.

    ``n_z`` unit vectors in ``R^d`` (``d = k * k``) have ``sum_{j,k} cos^2 >= n_z^2 / d``
    (the frame potential bound, met by tight frames), so the mean over the
    ``n_z (n_z - 1)`` pairs ``j != k`` is at least ``(n_z / d - 1) / (n_z - 1)`` when
    ``n_z > d``, and 0 otherwise (orthogonal filters). This is the floor of
    :func:`mean_squared_cosine` for one output channel, hence for their mean.

    Args:
        n_z: noise dimensions (filters per output channel).
        filter_size: values per filter (``k * k``).

    Returns:
        The floor, in [0, 1).
    """
    if n_z < 2 or n_z <= filter_size:
        return 0.0
    return (n_z / filter_size - 1.0) / (n_z - 1.0)
