"""Deact: the loss object that owns the frozen, perturbed generator (docs/method.md section 3).

The formulas (eq. 5, 6, 10) live in :mod:`fashion_attr.losses.deactivation` and the
hard-label memory in :mod:`fashion_attr.hardness`; this module ties them to
the frozen MR-GAN generator, as DeiT's distillation loss owns its teacher:

1. the generator is put in eval mode with gradients off, so neither its
   weights nor its batch-norm statistics can change; it is never wrapped in
   DDP nor saved in the classifier's checkpoint (section 3.1);
2. conditions are sampled from the memory (section 3.4);
3. images are generated with element-wise Gaussian noise of std ``sigma_p``
   on the projection block's output (section 3.2), mapped to the classifier's
   input range and size;
4. ``L_SC`` is the memory-weighted average of the deactivation losses (eq. 10).

The no-generator control (``source="noise"``, ``deact.source=noise``) keeps steps 2 and
4 and replaces the images of step 3 by Gaussian noise with the per-channel mean and std
of the real batch they join (clipped to the valid pixel range): the same loss, weights
and budget, without the generator. Whatever Deact gains beyond this control is the
generator's share.
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
from fashion_attr.losses import DeactForm, resolve_deact_form, synthetic_complementary_loss

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
        generator: trained MR-GAN generator, frozen here; None only with ``source="noise"``.
        memory: the hard-label memory the trainer updates from real batches.
        sigma_p: std of the perturbation on the projection block's output.
        threshold: ``T`` of the multi-class deactivation (eq. 5).
        form: the reading of eq. 5 (see :func:`fashion_attr.losses.deact_multiclass_loss`).
        source: ``"generator"`` (Deact) or ``"noise"`` (the no-generator control).
        centered: legacy flag (True: ``form="centered"``, False: ``form="raw"``).
        image_size: classifier input size (generated images are resized to it).
        mean: per-channel normalisation mean of the classifier input.
        std: per-channel normalisation std of the classifier input.
        in_channels: classifier input channels (1 averages the RGB output).
        seed: seed of the generator's noise (its state is checkpointed).
        channels_last: emit channels_last tensors.
    """

    def __init__(
        self,
        generator: MRGenerator | None,
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
        form: DeactForm | None = None,
        source: str = "generator",
        centered: bool | None = None,
    ) -> None:
        if source not in ("generator", "noise"):
            raise ValueError(
                f"DeactLoss: argument 'source' is {source!r}; expected 'generator' or 'noise'."
            )
        if generator is None and source == "generator":
            raise ValueError(
                "DeactLoss: source='generator' needs a generator; pass the trained MR-GAN "
                "generator, or source='noise' for the no-generator control."
            )
        # Checked here, not at the first Deact step: a misspelled form fails at start-up.
        self.form: str = resolve_deact_form(form, centered, "DeactLoss")
        self.source = source
        self.generator = None if generator is None else generator.eval().requires_grad_(False)
        self.memory = memory
        self.sigma_p = sigma_p
        self.threshold = threshold
        self.image_size = image_size
        self.in_channels = in_channels
        self.channels_last = channels_last
        device = memory.device if generator is None else next(generator.parameters()).device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.rng = torch.Generator(device=device).manual_seed(seed)
        self.z_dim = generator.spec.z_dim if generator is not None else 0
        self.num_categories = memory.num_categories
        self._noise_mean = torch.zeros(1, in_channels, 1, 1, device=device)
        self._noise_std = torch.ones(1, in_channels, 1, 1, device=device)

    @property
    def centered(self) -> bool:
        """Legacy view of :attr:`form`: True for the centred reading of eq. 5."""
        return self.form == "centered"

    @torch.no_grad()
    def match_statistics(self, images: Tensor) -> None:
        """Remember the per-channel mean and std of a real (normalised) batch for the noise."""
        ref = images.detach().float()
        self._noise_mean = ref.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        std = ref.std(dim=(0, 2, 3)) if ref.shape[0] * ref.shape[2] * ref.shape[3] > 1 else None
        self._noise_std = (std if std is not None else torch.ones_like(ref[0, :, 0, 0])).view(
            1, -1, 1, 1
        )

    @torch.no_grad()
    def noise_images(self, n: int) -> Tensor:
        """``n`` Gaussian-noise images in the classifier's normalised input space.

        Each channel has the mean and std last given to :meth:`match_statistics` (the
        real batch), or 0 and 1 (the statistics the input normalisation assumes) before
        any; values are clipped to the range a pixel in ``[0, 1]`` has after
        normalisation, so they are valid images.
        """
        device = self.mean.device
        z = torch.randn(
            (n, self.in_channels, self.image_size, self.image_size),
            device=device,
            generator=self.rng,
        )
        x = z * self._noise_std.to(device) + self._noise_mean.to(device)
        return torch.maximum(torch.minimum(x, (1 - self.mean) / self.std), -self.mean / self.std)

    @torch.no_grad()
    def synthesize(self, n: int, like: Tensor | None = None) -> SyntheticBatch:
        """Draw ``n`` conditions from the memory and generate normalised images.

        The generator stays in eval mode (batch norm uses its frozen running
        statistics) and runs under ``no_grad``: nothing flows back into it. With
        ``source="noise"`` the images are :meth:`noise_images`, matched to ``like`` when
        given (the real batch the synthetic one joins, as :meth:`match_statistics`); the
        conditions are drawn all the same, so eq. 10 weighs the control's nodes as Deact's.
        """
        if like is not None:
            self.match_statistics(like)
        cat_idx, attrs = self.memory.sample_conditions(n, generator=self.rng)
        if self.source == "noise":
            x = self.noise_images(n)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return SyntheticBatch(x, cat_idx, attrs)
        assert self.generator is not None
        self.generator.eval()
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
            form=self.form,  # type: ignore[arg-type]
        )

    def generator_fingerprint(self) -> Tensor:
        """Sum of every generator parameter and buffer (tests: it must never change)."""
        total = torch.zeros((), dtype=torch.float64)
        if self.generator is None:
            return total
        for t in list(self.generator.parameters()) + list(self.generator.buffers()):
            total += t.detach().double().sum().cpu()
        return total

    def modules(self) -> list[nn.Module]:
        """Modules owned by this loss (kept out of DDP and of the classifier checkpoint)."""
        return [] if self.generator is None else [self.generator]


def make_deact(
    cfg: ClassifierConfig,
    info: DatasetInfo,
    generator: MRGenerator | None,
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
        generator: the MR-GAN generator (frozen by :class:`DeactLoss`); None with
            ``deact.source=noise``.
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
        form=cfg.deact.form,
        source=cfg.deact.source,
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
        None when ``deact.enabled`` is false. With ``deact.source=noise`` (the
        no-generator control) no generator is loaded, even when one is given.

    Raises:
        ValueError: Deact is enabled without a generator, or the generator was trained
            on another label layout than the dataset.
    """
    if not cfg.deact.enabled:
        return None
    if cfg.deact.source == "noise":
        return make_deact(
            cfg,
            info,
            None,
            device,
            in_channels=in_channels,
            mean=mean,
            std=std,
            rank=rank,
            channels_last=channels_last,
        )
    if not generator_uri:
        raise ValueError(
            "train_classifier: deact.enabled is true but no generator was given. Fix: pass "
            "--generator <train_gan output>/generator.pt, set deact.enabled=false, or "
            "deact.source=noise for the no-generator control"
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
