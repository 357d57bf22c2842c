"""MR-GAN training (docs/method.md section 4) on the scaffold of :mod:`fashion_attr.training`.

Conditions are the real images' own labels (one-hot category + multi-hot
positive attributes; unknown labels count as absent). One D update then one G
update per batch, Adam (lr 1e-4 in the paper), D's loss averaged over
resolutions, the decorrelation loss on G's projection weights (eq. 7-8), all
computed by :class:`~fashion_attr.gan.loss.MRGANLoss`. bf16 autocast and
channels_last on CUDA; data-parallel under ``torchrun``.

Outputs under ``out``: ``checkpoint.pt`` (every ``checkpoint_every`` steps and
at each epoch end; the previous one as ``checkpoint.prev.pt``), ``generator.pt``
(the export, :mod:`fashion_attr.gan.export`), ``config.yaml``,
``metrics.jsonl`` and ``samples/epoch_XXX.png`` plus
``samples/epoch_XXX_perturbed.png`` (the "bad" generator at ``sigma_p``), one
pair per epoch end and one when ``max_steps`` stops inside an epoch.

Exact resume: the checkpoint holds both networks, both optimizers (and the
EMA copy), the step, each rank's loader position and noise-generator state; a
resumed run ends bitwise equal to an uninterrupted one on CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import record_function

from fashion_attr import storage
from fashion_attr.checkpoint import CHECKPOINT_NAME, save_artifact
from fashion_attr.config import GanConfig, config_to_dict
from fashion_attr.data.info import DatasetInfo
from fashion_attr.gan.export import generator_blob
from fashion_attr.gan.loss import MRGANLoss, StepLosses, image_pyramid
from fashion_attr.gan.networks import (
    MRGANSpec,
    MRGenerator,
    build_gan,
    make_condition,
    to_unit_range,
)
from fashion_attr.gan.quality import FeatureSpaceFactory, SampleQuality
from fashion_attr.results import TrainGanResult
from fashion_attr.runtime import (
    DistContext,
    NonFiniteLossError,
    autocast,
    check_finite_weights,
    init_distributed,
    resolve_device,
    use_bf16,
)
from fashion_attr.tracking import Tracker
from fashion_attr.training import ResumableLoop, local_workdir

__all__ = ["GanTrainer", "NonFiniteLossError", "spec_from_config", "train"]


def spec_from_config(cfg: GanConfig, info: DatasetInfo) -> MRGANSpec:
    """The generator architecture for a config and a dataset's label layout."""
    return MRGANSpec(
        num_categories=info.num_categories,
        num_attributes=info.num_attributes,
        z_dim=cfg.z_dim,
        image_size=cfg.image_size,
        base_size=cfg.base_size,
        top_channels=cfg.top_channels,
        max_channels=cfg.max_channels,
        out_channels=3,
    )


def sample_grid(g: MRGenerator, z: Tensor, cond: Tensor, sigma: float, path: Path) -> None:
    """Save the top level of ``g``'s samples for ``(z, cond)`` as a PNG grid (eval mode)."""
    from torchvision.utils import save_image

    was_training = g.training
    g.eval()
    with torch.no_grad():
        gen = torch.Generator(device=z.device).manual_seed(1234)
        levels = g(z, cond, perturb_sigma=sigma, noise_generator=gen if sigma > 0 else None)
    g.train(was_training)
    top = levels[-1].float()
    # One row per pyramid level would be large at 224 px; the top level shows what Deact uses.
    save_image(top.add(1).div(2).clamp(0, 1), path, nrow=int(math.sqrt(top.shape[0])) or 1)


class GanTrainer:
    """MR-GAN's state and step, for :class:`~fashion_attr.training.ResumableLoop`.

    Args:
        cfg: the resolved :class:`GanConfig`.
        info: the dataset's label layout and priors.
        device: the training device.
        ctx: the distributed context.
        out: the output URI sample grids go to (none without ``workdir``).
        workdir: a local scratch folder for the grids (None: no grids, as in benchmarks).
    """

    name = "train_gan"
    terms = ("loss_d", "loss_g", "loss_dc")
    fix = "lower train_gan.lr or use precision=fp32"

    def __init__(
        self,
        cfg: GanConfig,
        info: DatasetInfo,
        device: torch.device,
        ctx: DistContext,
        *,
        out: str = "",
        workdir: Path | None = None,
    ) -> None:
        self.cfg, self.info, self.device, self.ctx = cfg, info, device, ctx
        self.bf16 = use_bf16(cfg.precision, device)
        self.channels_last = cfg.channels_last and device.type == "cuda"
        torch.manual_seed(cfg.seed + ctx.rank)
        self.spec = spec_from_config(cfg, info)
        self.G, self.D = build_gan(self.spec)
        self.G.to(device)
        self.D.to(device)
        if self.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if cfg.ema else None
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + ctx.rank)
        g_model: nn.Module = self.G
        d_model: nn.Module = self.D
        if ctx.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            g_model, d_model = DDP(self.G, device_ids=ids), DDP(self.D, device_ids=ids)
        self.objective = MRGANLoss(
            g_model, d_model, self.spec.z_dim, cfg.dc_weight, cfg.dc_reduction
        )
        self.levels = list(self.spec.levels)
        self.out, self.workdir = out, workdir
        self.sample_uris: list[str] = []
        self.quality: SampleQuality | None = None  # set by train() when measured
        self.last_quality: dict[str, float] = {}

    @property
    def exported(self) -> MRGenerator:
        """The generator that is exported and shown (the EMA copy when kept)."""
        return self.G_ema if self.G_ema is not None else self.G

    def condition(self, batch: Any) -> Tensor:
        """The batch's own labels as G's condition (unknown labels count as absent)."""
        _, targets, known, category = batch
        targets, known = targets.to(self.device), known.to(self.device)
        positives = targets * known.to(targets.dtype)
        return make_condition(category.to(self.device), positives, self.spec.num_categories)

    def update(self, pyramid: list[Tensor], cond: Tensor) -> tuple[StepLosses, StepLosses]:
        """One D update then one G update on real images at every pyramid level."""
        with autocast(self.device, self.bf16):
            self.opt_d.zero_grad(set_to_none=True)
            d_terms = self.objective.discriminator_step(pyramid, cond, self.noise)
        self.opt_d.step()
        with autocast(self.device, self.bf16):
            self.opt_g.zero_grad(set_to_none=True)
            g_terms = self.objective.generator_step(cond, self.noise)
        self.opt_g.step()
        if self.G_ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(
                    list(self.G_ema.parameters()), list(self.G.parameters()), 1 - self.cfg.ema_decay
                )
                for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                    b_ema.copy_(b)
        return d_terms, g_terms

    # -- the Procedure protocol -----------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Nothing changes per epoch (constant learning rate)."""

    def train_step(self, batch: Any, step: int) -> dict[str, Tensor | None]:
        """One D + G update on a loader batch; returns the detached terms."""
        with record_function("fa.prepare_images"):
            real = to_unit_range(batch[0], self.device, self.spec.image_size, self.channels_last)
            cond = self.condition(batch)
            pyramid = image_pyramid(real, self.levels)
        d_terms, g_terms = self.update(pyramid, cond)
        terms: dict[str, Tensor | None] = {
            "loss_d": d_terms.total,
            "loss_g": g_terms.total,
            "loss_dc": g_terms.dc,
        }
        for i, size in enumerate(self.levels):
            terms[f"loss_d/{size}px"] = d_terms.per_level[i]
            terms[f"loss_g/{size}px"] = g_terms.per_level[i]
        return terms

    def log_extras(self) -> dict[str, float]:
        """The mean squared cosine of G's noise filters (the quantity of the paper's Fig. 8)."""
        return {"projection_msc": self.objective.projection_correlation()}

    def end_epoch(self, epoch: int, step: int) -> dict[str, float]:
        """Sample grids of the finished epoch; FD and diversity when due.

        Due every ``quality.every_epochs`` epochs and in the last ``quality.last_epochs``
        epochs of the run (the paper's protocol).
        """
        for net in (self.G, self.D, self.G_ema):
            if net is not None:  # an overflowed update shows in the weights, not the losses
                check_finite_weights(self.name, net, step, self.fix)
        self.write_grids(epoch + 1)
        every = self.cfg.quality.every_epochs
        last = self.quality is not None and self.quality.in_last_epochs(epoch + 1)
        if (every and (epoch + 1) % every == 0) or last:
            return self.measure_quality(step, epoch + 1)
        return {}

    def measure_quality(self, step: int, epoch: int | None = None) -> dict[str, float]:
        """FD and diversity of the exported generator (rank 0; once per step)."""
        if self.quality is None or not self.ctx.is_main:
            return {}
        if self.last_quality.get("step") != step:
            self.last_quality = {"step": step, **self.quality.measure(self.exported, epoch)}
        return {k: v for k, v in self.last_quality.items() if k != "step"}

    def rng_generators(self) -> tuple[torch.Generator, ...]:
        """G's noise generator."""
        return (self.noise,)

    def state_dict(self) -> dict[str, Any]:
        """Both networks, both optimizers and the EMA copy."""
        state = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }
        if self.G_ema is not None:
            state["G_ema"] = self.G_ema.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors are moved to the training device)."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.G_ema is not None and "G_ema" in state:
            self.G_ema.load_state_dict(state["G_ema"])

    def after_checkpoint(self) -> None:
        """Nothing to publish besides the checkpoint."""

    # -- outputs ---------------------------------------------------------------------------
    def preview(self, n: int = 16) -> tuple[Tensor, Tensor]:
        """Fixed preview noise and conditions (frequent categories, typical labels)."""
        fixed = torch.Generator(device="cpu").manual_seed(99)
        z = torch.randn(n, self.spec.z_dim, generator=fixed).to(self.device)
        cats = torch.multinomial(self.info.category_prior(), n, replacement=True, generator=fixed)
        attrs = (
            torch.rand(n, self.spec.num_attributes, generator=fixed) < self.info.attribute_prior()
        ).float()
        return z, make_condition(cats, attrs, self.spec.num_categories).to(self.device)

    def write_grids(self, epoch: int) -> None:
        """``samples/epoch_XXX.png`` and ``..._perturbed.png`` (rank 0, when configured)."""
        if not (self.ctx.is_main and self.cfg.sample_grid_every_epoch and self.workdir):
            return
        z, cond = self.preview()
        name = f"epoch_{epoch:03d}"
        for suffix, sigma in (("", 0.0), ("_perturbed", self.cfg.sigma_p)):
            local = self.workdir / f"{name}{suffix}.png"
            sample_grid(self.exported, z, cond, sigma, local)
            uri = storage.join(self.out, "samples", f"{name}{suffix}.png")
            storage.upload_file(local, uri)
            self.sample_uris.append(uri)


def train(
    cfg: GanConfig,
    data: str,
    out: str,
    *,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    feature_space: FeatureSpaceFactory | None = None,
) -> TrainGanResult:
    """Train the conditional MR-GAN with DC loss on a dataset version's train split.

    Args:
        cfg: resolved :class:`GanConfig`.
        data: dataset version URI (folder with ``manifest.json``).
        out: output URI (local folder or ``s3://``).
        cache_dir: local shard cache (default: a temp folder).
        resume: continue from ``out/checkpoint.pt`` when present.
        feature_space: the sample-quality probe's feature space without Inception weights
            (see :class:`~fashion_attr.gan.quality.SampleQuality`).

    Returns:
        :class:`TrainGanResult` with every output URI.

    Raises:
        NonFiniteLossError: if a loss becomes NaN/Inf (names the step and terms).
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, data, out, ctx, cache_dir, resume, feature_space)
    finally:
        ctx.close()


def _train(
    cfg: GanConfig,
    data: str,
    out: str,
    ctx: DistContext,
    cache_dir: str | Path | None,
    resume: bool,
    feature_space: FeatureSpaceFactory | None,
) -> TrainGanResult:
    device = resolve_device(cfg.device, ctx.local_rank)
    info = DatasetInfo.load(data)
    workdir = local_workdir("fa-gan-")
    trainer = GanTrainer(cfg, info, device, ctx, out=out, workdir=workdir)
    if cfg.quality.enabled and ctx.is_main:
        trainer.quality = SampleQuality(
            cfg.quality,
            data,
            image_size=trainer.spec.image_size,
            num_categories=trainer.spec.num_categories,
            sigma_p=cfg.sigma_p,
            seed=cfg.quality.seed,  # not cfg.seed: GANs of other seeds are measured alike
            device=device,
            cache_dir=cache_dir,
            feature_space=feature_space,
            total_epochs=cfg.epochs,
        )
    tracker = Tracker(workdir / "metrics.jsonl", "train_gan", enabled=ctx.is_main)
    tracker.log_params({"config": config_to_dict(cfg), "data": data})
    tracker.set_tags({"dataset_version": info.version})

    loop = ResumableLoop.on_train_split(
        trainer,
        cfg,
        data=data,
        out=out,
        ctx=ctx,
        device=device,
        tracker=tracker,
        cache_dir=cache_dir,
        resume=resume,
        flip=True,
    )
    done = loop.run()
    check_finite_weights(trainer.name, trainer.exported, done.step, trainer.fix)
    if done.stopped_mid_epoch:
        trainer.write_grids(done.epoch)
    msc = trainer.objective.projection_correlation()
    gen_uri = storage.join(out, "generator.pt")
    quality = trainer.measure_quality(done.step)
    if ctx.is_main:
        blob = generator_blob(
            trainer.exported,
            trainer.spec,
            category_names=info.category_names,
            attribute_names=info.attribute_names,
            dataset_version=info.version,
            config=config_to_dict(cfg),
            steps=done.step,
        )
        save_artifact(gen_uri, blob)
        tracker.log_metrics({"final_projection_msc": msc, **quality}, step=done.step)
        loop.upload_log()
    ctx.barrier()
    tracker.close()
    return TrainGanResult(
        generator=gen_uri,
        checkpoint=storage.join(out, CHECKPOINT_NAME),
        config=loop.config_uri,
        metrics_log=loop.metrics_log_uri,
        samples=sorted(set(trainer.sample_uris)),
        dataset_version=info.version,
        steps=done.step,
        epochs=done.epoch,
        projection_msc=msc,
        resumed_from_step=done.resumed_from_step,
        quality=quality,
    )
