"""Deact: the loss object that owns the frozen, perturbed generator (docs/method.md section 3).

The formulas (eq. 5, 6, 10) live in :mod:`fashion_attr.losses.deactivation` and the
hard-label memory in :mod:`fashion_attr.hardness`; this module ties them to
the frozen MR-GAN generator, as DeiT's distillation loss owns its teacher:

1. the generator is put in eval mode with gradients off, so neither its
   weights nor its batch-norm statistics can change; it is never wrapped in
   DDP nor saved in the classifier's checkpoint;
2. conditions are sampled from the memory (step 4);
3. images are generated with element-wise Gaussian noise of std ``sigma_p``
   on the projection block's output (step 2), mapped to the classifier's
   input range and size;
4. ``L_SC`` is the memory-weighted average of the deactivation losses (eq. 10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashion_attr.config import ClassifierConfig
from fashion_attr.data.info import DatasetInfo
from fashion_attr.gan.export import load_generator
from fashion_attr.gan.networks import MRGenerator, make_condition
from fashion_attr.hardness import HardLabelMemory, default_positives_per_image
from fashion_attr.losses import synthetic_complementary_loss

__all__ = ["DeactLoss", "SyntheticBatch", "deact_from_generator", "make_deact"]


class SyntheticBatch:
    """Generated complementary images with the conditions they were drawn from."""

    def __init__(self, images: Tensor, cat_idx: Tensor, attr_multi_hot: Tensor) -> None:
        self.images = images
        self.cat_idx = cat_idx
        self.attr_multi_hot = attr_multi_hot


class DeactLoss:
    """Synthetic complementary samples and their deactivation loss ``L_SC``.

    Args:
        generator: trained MR-GAN generator; frozen here.
        memory: the hard-label memory the trainer updates from real batches.
        sigma_p: std of the perturbation on the projection block's output.
        threshold: ``T`` of the multi-class deactivation (eq. 5).
        centered: centre the category logits before eq. 5 (the default; False is the
            paper's literal form; see :func:`fashion_attr.losses.deact_multiclass_loss`).
        image_size: classifier input size (generated images are resized to it).
        mean: per-channel normalisation mean of the classifier input.
        std: per-channel normalisation std of the classifier input.
        in_channels: classifier input channels (1 averages the RGB output).
        seed: seed of the generator's noise (its state is checkpointed).
        channels_last: emit channels_last tensors.
    """

    def __init__(
        self,
        generator: MRGenerator,
        memory: HardLabelMemory,
        *,
        sigma_p: float,
        threshold: float,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        in_channels: int = 3,
        seed: int = 0,
        channels_last: bool = False,
        centered: bool = True,
    ) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.memory = memory
        self.sigma_p = sigma_p
        self.threshold = threshold
        self.centered = centered
        self.image_size = image_size
        self.in_channels = in_channels
        self.channels_last = channels_last
        device = next(generator.parameters()).device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.rng = torch.Generator(device=device).manual_seed(seed)
        self.z_dim = generator.spec.z_dim
        self.num_categories = generator.spec.num_categories

    @torch.no_grad()
    def synthesize(self, n: int) -> SyntheticBatch:
        """Draw ``n`` conditions from the memory and generate normalised images.

        The generator stays in eval mode (batch norm uses its frozen running
        statistics) and runs under ``no_grad``: nothing flows back into it.
        """
        self.generator.eval()
        cat_idx, attrs = self.memory.sample_conditions(n, generator=self.rng)
        cond = make_condition(cat_idx, attrs, self.num_categories)
        z = torch.randn(n, self.z_dim, device=cond.device, generator=self.rng)
        levels = self.generator(
            z, cond, perturb_sigma=self.sigma_p, noise_generator=self.rng if self.sigma_p else None
        )
        x = levels[-1].float().add(1.0).mul(0.5)  # tanh range [-1, 1] -> [0, 1]
        if x.shape[1] != self.in_channels:
            x = x.mean(dim=1, keepdim=True) if self.in_channels == 1 else x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return SyntheticBatch(x, cat_idx, attrs)

    def loss(
        self, attr_logits: Tensor | None, cat_logits: Tensor | None, batch: SyntheticBatch
    ) -> Tensor:
        """``L_SC`` on the classifier's logits for a synthetic batch (eq. 10)."""
        attr_w, cat_w = self.memory.condition_weights(batch.cat_idx, batch.attr_multi_hot)
        has_attr = attr_logits is not None and attr_logits.shape[1] > 0
        has_cat = cat_logits is not None and cat_logits.shape[1] > 0
        return synthetic_complementary_loss(
            attr_logits if has_attr else None,
            attr_w if has_attr else None,
            cat_logits if has_cat else None,
            cat_w if has_cat else None,
            threshold=self.threshold,
            centered=self.centered,
        )

    def generator_fingerprint(self) -> Tensor:
        """Sum of every generator parameter and buffer (tests: it must never change)."""
        total = torch.zeros((), dtype=torch.float64)
        for t in list(self.generator.parameters()) + list(self.generator.buffers()):
            total += t.detach().double().sum().cpu()
        return total

    def modules(self) -> list[nn.Module]:
        """Modules owned by this loss (kept out of DDP and of the classifier checkpoint)."""
        return [self.generator]


def make_deact(
    cfg: ClassifierConfig,
    info: DatasetInfo,
    generator: MRGenerator,
    device: torch.device,
    *,
    in_channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rank: int = 0,
    channels_last: bool = False,
) -> DeactLoss:
    """The Deact loss of ``cfg.deact`` around a generator: its hard-label memory and L_SC.

    ``train_classifier`` calls it with the loaded, frozen generator;
    ``bench/throughput.py`` with a random one of the same size.

    Args:
        cfg: the classifier config (``deact``, ``image_size``, ``seed``).
        info: the dataset's label layout and train counts.
        generator: the MR-GAN generator (frozen by :class:`DeactLoss`).
        device: where the memory lives.
        in_channels: classifier input channels.
        mean: classifier input normalisation mean.
        std: classifier input normalisation std.
        rank: DDP rank (seeds each rank's synthetic stream apart).
        channels_last: emit channels_last synthetic images.

    Returns:
        The :class:`DeactLoss`.
    """
    ppi = cfg.deact.positives_per_image or default_positives_per_image(
        int(info.train_pos_counts.sum()), max(info.num_train, 1)
    )
    memory = HardLabelMemory(
        info.num_attributes,
        info.num_categories,
        momentum=cfg.deact.memory_momentum,
        positives_per_image=min(max(ppi, 1), max(info.num_attributes, 1)),
        device=device,
        # Labels absent from the train split start, and stay, at zero (docs/method.md).
        present_attributes=torch.as_tensor(info.train_pos_counts > 0),
        present_categories=torch.as_tensor(info.train_category_counts > 0),
    )
    return DeactLoss(
        generator,
        memory,
        sigma_p=cfg.deact.sigma_p,
        threshold=cfg.deact.threshold,
        image_size=cfg.image_size,
        mean=mean,
        std=std,
        in_channels=in_channels,
        seed=cfg.seed * 7919 + rank,
        channels_last=channels_last,
        centered=cfg.deact.centered,
    )


def deact_from_generator(
    cfg: ClassifierConfig,
    info: DatasetInfo,
    generator_uri: str | None,
    *,
    device: torch.device,
    in_channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rank: int = 0,
    channels_last: bool = False,
) -> DeactLoss | None:
    """The Deact loss of ``cfg`` around the generator exported at ``generator_uri``.

    The keyword arguments are those of :func:`make_deact`.

    Returns:
        None when ``deact.enabled`` is false.

    Raises:
        ValueError: Deact is enabled without a generator, or the generator was trained
            on another label layout than the dataset.
    """
    if not cfg.deact.enabled:
        return None
    if not generator_uri:
        raise ValueError(
            "train_classifier: deact.enabled is true but no generator was given. Fix: pass "
            "--generator <train_gan output>/generator.pt, or set deact.enabled=false"
        )
    g, meta = load_generator(generator_uri, device)
    if list(meta["category_names"]) != list(info.category_names) or list(
        meta["attribute_names"]
    ) != list(info.attribute_names):
        raise ValueError(
            f"generator {generator_uri} was trained on another label layout than dataset "
            f"{info.version} (category/attribute names differ). Fix: train the generator on this "
            "dataset version or pass a matching reuse_generator"
        )
    return make_deact(
        cfg,
        info,
        g,
        device,
        in_channels=in_channels,
        mean=mean,
        std=std,
        rank=rank,
        channels_last=channels_last,
    )
