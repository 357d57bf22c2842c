"""MR-GAN networks: the multi-resolution conditional generator and discriminator.

docs/method.md section 4. The generator ``G(z, c)`` emits one image per level of a resolution
pyramid (e.g. 7, 14, 28, 56, 112, 224 px for DeepFashion-C; 7, 14, 28 for MNIST) in a
single forward pass, each level refining the one below. The discriminator scores every
level: one trunk pass per level, the image entering the trunk at the depth that matches
its resolution. Channels double as the resolution halves (32 at 224 px, 64 at 28 px on
MNIST), capped at 512.

The decorrelation (DC) loss (eq. 7-8, ``fashion_attr.losses.decorrelation``) reads
``MRGenerator.projection_weight`` restricted to ``MRGenerator.noise_channels``; Deact
(docs/method.md section 3, step 2) perturbs the output of the projection block through
``MRGenerator.forward(perturb_sigma=...)``.

Both networks are free of data-dependent Python control flow in ``forward`` (shape checks
only), so they run under ``torch.compile``, ``torch.autocast`` (bf16 on CUDA and CPU) and
with ``torch.channels_last`` inputs/weights.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MRDiscriminator",
    "MRGANSpec",
    "MRGenerator",
    "build_gan",
    "make_condition",
    "to_unit_range",
]


@dataclass(frozen=True, kw_only=True)
class MRGANSpec:
    """Sizes of an MR-GAN generator/discriminator pair (configuration, not code).

    Attributes:
        num_categories: C, length of the one-hot category part of the condition (>= 0).
        num_attributes: N, length of the multi-hot attribute part of the condition (>= 0).
        z_dim: N_Z, dimension of the Gaussian noise input.
        image_size: side of the highest-resolution image; must equal ``base_size * 2**L``.
        base_size: side of the lowest level, produced by the projection block (also its
            transposed-conv kernel size).
        top_channels: feature channels at ``image_size``; they double as the side halves.
        max_channels: cap on the feature channels (512 in the paper).
        out_channels: image channels (3 RGB, 1 for MNIST).
        leaky_slope: negative slope of every LeakyReLU.
        refine_conv: add a 3x3 conv -> BN -> LeakyReLU after each upsampling block.
        rgb_kernel: kernel of the per-level to-RGB / from-RGB convs (1 or 3).
    """

    num_categories: int
    num_attributes: int = 0
    z_dim: int = 128
    image_size: int = 224
    base_size: int = 7
    top_channels: int = 32
    max_channels: int = 512
    out_channels: int = 3
    leaky_slope: float = 0.2
    refine_conv: bool = True
    rgb_kernel: int = 1

    def __post_init__(self) -> None:
        """Validate the sizes; every error names the field and the fix."""
        for name in (
            "z_dim",
            "image_size",
            "base_size",
            "top_channels",
            "max_channels",
            "out_channels",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"MRGANSpec.{name} must be a positive integer, got {value!r}; set it >= 1."
                )
        for name in ("num_categories", "num_attributes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"MRGANSpec.{name} must be a non-negative integer, got {value!r}.")
        if self.cond_dim < 1:
            raise ValueError(
                "MRGANSpec.num_categories + MRGANSpec.num_attributes must be >= 1 "
                "(MR-GAN is conditional); got 0 for both. Set num_categories and/or "
                "num_attributes."
            )
        ratio, rem = divmod(self.image_size, self.base_size)
        if rem != 0 or ratio & (ratio - 1) != 0:
            raise ValueError(
                f"MRGANSpec.image_size ({self.image_size}) must equal MRGANSpec.base_size "
                f"({self.base_size}) times a power of two (e.g. 7 * 2**5 = 224); change "
                "image_size or base_size."
            )
        if not 0.0 <= float(self.leaky_slope) < 1.0:
            raise ValueError(f"MRGANSpec.leaky_slope must lie in [0, 1), got {self.leaky_slope!r}.")
        if self.rgb_kernel not in (1, 3):
            raise ValueError(f"MRGANSpec.rgb_kernel must be 1 or 3, got {self.rgb_kernel!r}.")

    # ----------------------------------------------------------------- derived sizes
    @property
    def cond_dim(self) -> int:
        """Length of the condition vector c = one-hot category ++ multi-hot attributes."""
        return self.num_categories + self.num_attributes

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels (L + 1 for ``image_size = base_size * 2**L``)."""
        return (self.image_size // self.base_size).bit_length()

    @property
    def levels(self) -> tuple[int, ...]:
        """Image sides of the pyramid, low to high (e.g. 7, 14, ..., 224)."""
        return tuple(self.base_size * 2**i for i in range(self.num_levels))

    def channels_at(self, size: int) -> int:
        """Feature channels at side ``size``: ``min(max_channels, top * image_size // size)``.

        Args:
            size: a side in ``levels``.

        Returns:
            The channel count (paper: 224 -> 32, 112 -> 64, ..., 14 -> 512, 7 -> 512).

        Raises:
            ValueError: if ``size`` is not a level of this spec.
        """
        if size not in self.levels:
            raise ValueError(f"size {size} is not a level of this MRGANSpec; levels: {self.levels}")
        return min(self.max_channels, self.top_channels * self.image_size // size)

    @property
    def channels(self) -> tuple[int, ...]:
        """Feature channels per level, low to high resolution."""
        return tuple(self.channels_at(s) for s in self.levels)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of the fields (saved next to GAN artifacts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MRGANSpec:
        """Rebuild a spec from ``to_dict`` output.

        Args:
            data: mapping of field names to values.

        Returns:
            The spec.

        Raises:
            ValueError: on unknown keys (named, with the allowed ones) or bad values.
        """
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(
                f"MRGANSpec.from_dict: unknown field(s) {unknown}; allowed: {sorted(allowed)}"
            )
        return cls(**dict(data))

    # ----------------------------------------------------------------- presets
    @classmethod
    def paper(cls, num_categories: int = 50, num_attributes: int = 1000) -> MRGANSpec:
        """DeepFashion-C preset: 7 -> 224 px, 32 channels at 224, capped at 512, RGB."""
        return cls(
            num_categories=num_categories,
            num_attributes=num_attributes,
            z_dim=128,
            image_size=224,
            base_size=7,
            top_channels=32,
            max_channels=512,
            out_channels=3,
        )

    @classmethod
    def mnist(cls, num_categories: int = 10) -> MRGANSpec:
        """MNIST preset: 7 -> 28 px, 64 channels at 28, one grey channel, category-only."""
        return cls(
            num_categories=num_categories,
            num_attributes=0,
            z_dim=128,
            image_size=28,
            base_size=7,
            top_channels=64,
            max_channels=512,
            out_channels=1,
        )

    @classmethod
    def tiny(
        cls, num_categories: int = 4, num_attributes: int = 8, out_channels: int = 3
    ) -> MRGANSpec:
        """CPU test/demo preset: 4 -> 32 px, 16 channels at 32, capped at 64, z_dim 32."""
        return cls(
            num_categories=num_categories,
            num_attributes=num_attributes,
            z_dim=32,
            image_size=32,
            base_size=4,
            top_channels=16,
            max_channels=64,
            out_channels=out_channels,
        )


def make_condition(cat_idx: Tensor, attr_multi_hot: Tensor | None, num_categories: int) -> Tensor:
    """Build the generator/discriminator condition ``c = one_hot(category) ++ attributes``.

    Args:
        cat_idx: LongTensor [B] of category indices in ``[0, num_categories)`` (ignored
            when ``num_categories`` is 0, an attribute-only task).
        attr_multi_hot: Tensor [B, N] of 0/1 attribute labels, or None / [B, 0] when the
            task has no attributes (MNIST); unknown labels must be mapped to 0 first.
        num_categories: C.

    Returns:
        Float tensor [B, C + N]: columns ``[0, C)`` the one-hot category, ``[C, C + N)``
        the attributes.

    Raises:
        ValueError: on wrong ranks, mismatched batch sizes or out-of-range indices.
    """
    if cat_idx.dim() != 1:
        raise ValueError(
            f"make_condition: cat_idx must be 1-D [B], got shape {tuple(cat_idx.shape)}"
        )
    if num_categories < 0:
        raise ValueError(f"make_condition: num_categories must be >= 0, got {num_categories}")
    # The range check reads values: only on CPU tensors, so a CUDA training step
    # (Deact draws conditions every few iterations) never waits on the device.
    if (
        num_categories > 0
        and cat_idx.numel()
        and cat_idx.device.type == "cpu"
        and (int(cat_idx.min()) < 0 or int(cat_idx.max()) >= num_categories)
    ):
        raise ValueError(
            f"make_condition: cat_idx values must lie in [0, {num_categories}), got range "
            f"[{int(cat_idx.min())}, {int(cat_idx.max())}]; check num_categories."
        )
    dtype = (
        attr_multi_hot.dtype
        if attr_multi_hot is not None and attr_multi_hot.is_floating_point()
        else torch.float32
    )
    if num_categories > 0:
        # scatter_ rather than F.one_hot, which checks the range with a host sync.
        one_hot = torch.zeros(
            (cat_idx.shape[0], num_categories), dtype=dtype, device=cat_idx.device
        ).scatter_(1, cat_idx.long().unsqueeze(1), 1.0)
    else:  # attribute-only task: no category part, cat_idx is ignored
        one_hot = torch.zeros((cat_idx.shape[0], 0), dtype=dtype, device=cat_idx.device)
    if attr_multi_hot is None:
        return one_hot
    if attr_multi_hot.dim() != 2 or attr_multi_hot.shape[0] != cat_idx.shape[0]:
        raise ValueError(
            "make_condition: attr_multi_hot must be [B, N] with B = len(cat_idx) = "
            f"{cat_idx.shape[0]}, got shape {tuple(attr_multi_hot.shape)}"
        )
    return torch.cat([one_hot, attr_multi_hot.to(device=one_hot.device, dtype=dtype)], dim=1)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al.): conv/linear N(0, 0.02), BN gamma N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_cond(cond: Tensor, batch: int, cond_dim: int, where: str) -> None:
    if cond.dim() != 2 or cond.shape[0] != batch or cond.shape[1] != cond_dim:
        raise ValueError(
            f"{where}: cond must be [B={batch}, cond_dim={cond_dim}] (one-hot category ++ "
            f"multi-hot attributes, see make_condition), got shape {tuple(cond.shape)}"
        )


class MRGenerator(nn.Module):
    """Multi-resolution conditional generator ``G(z, c)`` (docs/method.md section 4).

    Layout, for levels ``s_0 < s_1 < ... < s_L`` (``s_0 = base_size``):

    * projection block: ``(z ++ c)`` as a ``[B, z_dim + cond_dim, 1, 1]`` map ->
      ``ConvTranspose2d(kernel=base_size)`` -> BN -> LeakyReLU, giving ``[B, ch_0, s_0, s_0]``.
      Deact's "bad generator" noise is added to this output (docs/method.md sec. 3, step 2).
    * per higher level ``l``: ``ConvTranspose2d(4, stride 2, pad 1)`` -> BN -> LeakyReLU
      (optionally -> 3x3 conv -> BN -> LeakyReLU), doubling the side.
    * per level a to-RGB conv. Skip-style refinement (as in StyleGAN2's skip generator):
      ``rgb_0 = torgb_0(h_0)`` and ``rgb_l = torgb_l(h_l) + up2(rgb_{l-1})`` on the
      pre-tanh values, and the level-``l`` image is ``tanh(rgb_l)``. Each level thus
      predicts a residual over the upsampled level below, which is how "each higher
      resolution refines the one below" is read here. ``up2`` is nearest-neighbour
      because its CUDA backward is deterministic (bilinear's is not).

    Args:
        spec: the sizes.
    """

    def __init__(self, spec: MRGANSpec) -> None:
        super().__init__()
        self.spec = spec
        ch = spec.channels
        slope = spec.leaky_slope
        self.project = nn.Sequential(
            nn.ConvTranspose2d(spec.z_dim + spec.cond_dim, ch[0], spec.base_size, bias=False),
            nn.BatchNorm2d(ch[0]),
            nn.LeakyReLU(slope, inplace=False),
        )
        ups: list[nn.Module] = []
        for lo, hi in itertools.pairwise(ch):
            layers: list[nn.Module] = [
                nn.ConvTranspose2d(lo, hi, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(hi),
                nn.LeakyReLU(slope),
            ]
            if spec.refine_conv:
                layers += [
                    nn.Conv2d(hi, hi, 3, padding=1, bias=False),
                    nn.BatchNorm2d(hi),
                    nn.LeakyReLU(slope),
                ]
            ups.append(nn.Sequential(*layers))
        self.up_blocks = nn.ModuleList(ups)
        pad = spec.rgb_kernel // 2
        self.to_rgb = nn.ModuleList(
            nn.Conv2d(c, spec.out_channels, spec.rgb_kernel, padding=pad) for c in ch
        )
        _dcgan_init(self)

    @property
    def projection_weight(self) -> nn.Parameter:
        """Weight of the projection ConvTranspose2d, shape (z_dim + cond_dim, ch_0, k, k).

        Input channels are the first dimension of a ConvTranspose2d weight, so
        ``projection_weight[noise_channels]`` holds the filters ``w_ij`` from noise
        dimension ``j`` to every channel ``i`` that the DC loss (eq. 7-8) decorrelates.
        """
        return cast(nn.Parameter, self.project[0].weight)

    @property
    def noise_channels(self) -> slice:
        """Slice of ``projection_weight``'s first dimension that belongs to the noise z."""
        return slice(0, self.spec.z_dim)

    def forward(
        self,
        z: Tensor,
        cond: Tensor,
        perturb_sigma: float = 0.0,
        noise_generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """Generate one image per level.

        Args:
            z: noise [B, z_dim].
            cond: condition [B, cond_dim] (see ``make_condition``).
            perturb_sigma: standard deviation sigma_p of the element-wise Gaussian noise
                added to the projection block's output (Deact "bad generator", docs/method.md
                sec. 3 step 2). 0 adds nothing (no noise op is run at all).
            noise_generator: optional generator for that noise (reproducible draws). Noise is
                drawn in float32 on the generator's device, then moved to the features.
                (Passing a generator makes ``torch.compile`` break the graph here.)

        Returns:
            List of ``num_levels`` tensors ``[B, out_channels, s, s]`` in [-1, 1], low to high.

        Raises:
            ValueError: on bad shapes or a negative ``perturb_sigma``.
        """
        spec = self.spec
        if z.dim() != 2 or z.shape[1] != spec.z_dim:
            raise ValueError(
                f"MRGenerator.forward: z must be [B, z_dim={spec.z_dim}], got {tuple(z.shape)}"
            )
        _check_cond(cond, z.shape[0], spec.cond_dim, "MRGenerator.forward")
        if perturb_sigma < 0:
            raise ValueError(
                f"MRGenerator.forward: perturb_sigma must be >= 0, got {perturb_sigma}"
            )
        x = torch.cat([z, cond.to(z.dtype)], dim=1)[:, :, None, None]
        h = self.project(x)
        if perturb_sigma > 0:
            device = noise_generator.device if noise_generator is not None else h.device
            noise = torch.randn(
                h.shape, generator=noise_generator, device=device, dtype=torch.float32
            )
            h = h + perturb_sigma * noise.to(device=h.device, dtype=h.dtype)
        rgb = self.to_rgb[0](h)
        images = [torch.tanh(rgb)]
        for up, to_rgb in zip(self.up_blocks, self.to_rgb[1:], strict=True):
            h = up(h)
            rgb = to_rgb(h) + F.interpolate(rgb, scale_factor=2.0, mode="nearest")
            images.append(torch.tanh(rgb))
        return images

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        *,
        perturb_sigma: float = 0.0,
        generator: torch.Generator | None = None,
        all_levels: bool = False,
    ) -> Tensor | list[Tensor]:
        """Draw images for the given conditions (no gradient; mode left unchanged).

        Args:
            cond: condition [B, cond_dim]; B images are drawn.
            perturb_sigma: Deact perturbation of the projection output (see ``forward``).
            generator: seeds both z and the perturbation noise when given.
            all_levels: return every level instead of the top one.

        Returns:
            The top-resolution images [B, C, image_size, image_size], or all levels.
        """
        device = self.projection_weight.device
        z_device = generator.device if generator is not None else device
        z = torch.randn(cond.shape[0], self.spec.z_dim, generator=generator, device=z_device).to(
            device
        )
        images: list[Tensor] = self(
            z, cond.to(device), perturb_sigma=perturb_sigma, noise_generator=generator
        )
        return images if all_levels else images[-1]


class MRDiscriminator(nn.Module):
    """Multi-resolution conditional discriminator (docs/method.md section 4).

    A downsampling trunk mirrors the generator: block ``l`` (for ``l = L .. 1``) maps
    ``[ch_l, s_l, s_l]`` to ``[ch_{l-1}, s_{l-1}, s_{l-1}]`` with a 4x4 stride-2 conv ->
    BN (none on the top-resolution block, as in DCGAN) -> LeakyReLU. Each level has a
    from-RGB conv -> LeakyReLU that enters the trunk at that level's depth, so the
    image of side ``s_l`` runs through blocks ``l .. 1``. The head flattens the
    ``[ch_0, s_0, s_0]`` features ``h`` and returns
    ``linear(h) + sum(embed(c) * h)``: the projection discriminator of Miyato & Koyama
    (2018) with ``embed = Linear(cond_dim, feat_dim, bias=False)``.

    Each level is a separate trunk pass, so the trunk's BatchNorm normalises each level's
    batch with its own statistics.

    Args:
        spec: the sizes (same spec as the generator).
    """

    def __init__(self, spec: MRGANSpec) -> None:
        super().__init__()
        self.spec = spec
        ch = spec.channels
        slope = spec.leaky_slope
        pad = spec.rgb_kernel // 2
        self.from_rgb = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(spec.out_channels, c, spec.rgb_kernel, padding=pad),
                nn.LeakyReLU(slope),
            )
            for c in ch
        )
        top = spec.num_levels - 1
        # down_blocks[l - 1] takes level l to level l - 1.
        blocks: list[nn.Module] = []
        for lvl in range(1, spec.num_levels):
            layers: list[nn.Module] = [
                nn.Conv2d(ch[lvl], ch[lvl - 1], 4, stride=2, padding=1, bias=lvl == top)
            ]
            if lvl != top:
                layers.append(nn.BatchNorm2d(ch[lvl - 1]))
            layers.append(nn.LeakyReLU(slope))
            blocks.append(nn.Sequential(*layers))
        self.down_blocks = nn.ModuleList(blocks)
        self.feat_dim = ch[0] * spec.base_size * spec.base_size
        self.linear = nn.Linear(self.feat_dim, 1)
        self.embed = nn.Linear(spec.cond_dim, self.feat_dim, bias=False)
        _dcgan_init(self)

    def _check_images(self, images: Sequence[Tensor]) -> None:
        spec = self.spec
        expected = [(spec.out_channels, s, s) for s in spec.levels]
        got = [tuple(im.shape[1:]) for im in images]
        if len(images) != spec.num_levels or got != expected:
            raise ValueError(
                f"MRDiscriminator.forward: expected {spec.num_levels} images, low to high, "
                f"of shapes [B, C, H, W] with (C, H, W) = {expected}; got {got}. Pass every "
                "level the generator emits (real images resized to each level)."
            )
        batch = images[0].shape[0]
        if any(im.shape[0] != batch for im in images):
            raise ValueError(
                "MRDiscriminator.forward: all levels must share the batch size, got "
                f"{[im.shape[0] for im in images]}"
            )

    def score_level(self, image: Tensor, cond: Tensor, level: int) -> Tensor:
        """Score one level's images.

        Args:
            image: [B, out_channels, s_level, s_level].
            cond: [B, cond_dim].
            level: pyramid index (0 = base_size).

        Returns:
            Logits [B].
        """
        h = self.from_rgb[level](image)
        for block in reversed(self.down_blocks[:level]):
            h = block(h)
        h = torch.flatten(h, 1)
        proj = (self.embed(cond.to(h.dtype)) * h).sum(dim=1)
        return cast(Tensor, self.linear(h).squeeze(1) + proj)

    def forward(self, images: Sequence[Tensor], cond: Tensor) -> Tensor:
        """Score every level.

        Args:
            images: exactly ``num_levels`` tensors ``[B, out_channels, s, s]``, low to high,
                as ``MRGenerator`` emits them.
            cond: condition [B, cond_dim].

        Returns:
            Logits [B, num_levels] (column ``l`` scores level ``l``).

        Raises:
            ValueError: on a wrong number of images, wrong sizes or a bad ``cond``.
        """
        self._check_images(images)
        _check_cond(cond, images[0].shape[0], self.spec.cond_dim, "MRDiscriminator.forward")
        return torch.stack(
            [self.score_level(im, cond, lvl) for lvl, im in enumerate(images)], dim=1
        )


def build_gan(spec: MRGANSpec) -> tuple[MRGenerator, MRDiscriminator]:
    """Build a generator/discriminator pair for ``spec`` (DCGAN-initialised).

    Args:
        spec: the sizes.

    Returns:
        ``(generator, discriminator)``.
    """
    return MRGenerator(spec), MRDiscriminator(spec)


def to_unit_range(images: Tensor, device: torch.device, size: int, channels_last: bool) -> Tensor:
    """uint8 ``[B, 3, H, W]`` (any size) -> float in [-1, 1] at ``size`` on ``device``."""
    x = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode="area")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
