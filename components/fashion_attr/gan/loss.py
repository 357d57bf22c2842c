"""MR-GAN objective: non-saturating GAN loss over every resolution plus DC (docs/method.md sec. 4).

The training loop never computes a loss itself: it calls
:meth:`MRGANLoss.discriminator_step` and :meth:`MRGANLoss.generator_step`, which
run the forward passes, compute the losses and call ``backward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashion_attr.gan.networks import MRGenerator
from fashion_attr.losses import decorrelation_loss, mean_squared_cosine

__all__ = ["MRGANLoss", "image_pyramid"]


def image_pyramid(images: Tensor, sizes: list[int]) -> list[Tensor]:
    """Downsample a batch to every pyramid level (low to high), for the discriminator.

    Area interpolation averages the pixels under each output pixel, the
    resampling a box-filtered camera would give, so real and generated
    low-resolution images are comparable.
    """
    out = []
    for size in sizes:
        if images.shape[-1] == size and images.shape[-2] == size:
            out.append(images)
        else:
            out.append(F.interpolate(images, size=(size, size), mode="area"))
    return out


@dataclass
class StepLosses:
    """Detached loss terms of one step, for logging (tensors: no host sync until read)."""

    total: Tensor
    per_level: Tensor
    dc: Tensor | None = None


class MRGANLoss:
    """Non-saturating conditional GAN loss averaged over resolutions, with DC on G.

    Args:
        generator: the MR-GAN generator (exposes ``projection_weight`` and ``noise_channels``).
        discriminator: the multi-resolution discriminator (one logit per image per level).
        z_dim: noise dimensions.
        dc_weight: weight of the decorrelation loss (eq. 7-8) in G's loss; 0 turns it off.
        dc_reduction: ``"mean"`` (eq. 7-8 as written) or ``"sum"`` (the unnormalised sum,
            the reading under which the paper's 2e-6 acts; see
            :func:`fashion_attr.losses.decorrelation_loss`).
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        z_dim: int,
        dc_weight: float,
        dc_reduction: str = "mean",
    ) -> None:
        self.G = generator
        self.D = discriminator
        self.z_dim = z_dim
        self.dc_weight = dc_weight
        self.dc_reduction = dc_reduction

    def _noise(self, n: int, device: torch.device, gen: torch.Generator | None) -> Tensor:
        return torch.randn(n, self.z_dim, device=device, generator=gen)

    def discriminator_step(
        self, real: list[Tensor], cond: Tensor, gen: torch.Generator | None = None
    ) -> StepLosses:
        """Backward D's loss: mean over levels of softplus(-D(x)) + softplus(D(G(z)))."""
        with torch.no_grad():
            fake = self.G(self._noise(cond.shape[0], cond.device, gen), cond)
        d_real = self.D(real, cond).float()  # [B, L]
        d_fake = self.D([f.detach() for f in fake], cond).float()
        per_level = (F.softplus(-d_real) + F.softplus(d_fake)).mean(dim=0)  # [L]
        loss = per_level.mean()  # the paper: D's loss is the mean over resolutions
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        return StepLosses(total=loss.detach(), per_level=per_level.detach())

    def generator_step(self, cond: Tensor, gen: torch.Generator | None = None) -> StepLosses:
        """Backward G's loss: non-saturating softplus(-D(G(z))) over levels + w * L_DC."""
        fake = self.G(self._noise(cond.shape[0], cond.device, gen), cond)
        d_fake = self.D(fake, cond).float()
        per_level = F.softplus(-d_fake).mean(dim=0)
        loss = per_level.mean()
        dc = None
        if self.dc_weight > 0:
            base = self._generator()
            dc = decorrelation_loss(base.projection_weight, base.noise_channels, self.dc_reduction)
            loss = loss + self.dc_weight * dc  # eq. 7-8, weight 2e-6 in the paper
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        return StepLosses(
            total=loss.detach(),
            per_level=per_level.detach(),
            dc=None if dc is None else dc.detach(),
        )

    def projection_correlation(self) -> float:
        """Mean squared cosine between projection filters (the paper's Fig. 8 quantity)."""
        base = self._generator()
        return float(mean_squared_cosine(base.projection_weight, base.noise_channels))

    def _generator(self) -> MRGenerator:
        """The generator itself, DDP's wrapper taken off."""
        return cast(MRGenerator, getattr(self.G, "module", self.G))
