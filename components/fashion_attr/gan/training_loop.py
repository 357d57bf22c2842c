"""MR-GAN training loop: resumable, DDP-aware, bf16 on CUDA (method.md section 4).

Conditions are the real images' own labels (one-hot category + multi-hot
positive attributes; unknown labels count as absent). One D update then one G
update per batch, Adam (lr 1e-4 in the paper), D's loss averaged over
resolutions, the decorrelation loss on G's projection weights.

Outputs under ``out``: ``checkpoint.pt`` (every ``checkpoint_every`` steps and
at each epoch end), ``generator.pt`` (the exported generator: weights, spec and
condition layout, loadable with ``weights_only``), ``config.yaml``,
``metrics.jsonl`` and ``samples/epoch_XXX.png`` plus
``samples/epoch_XXX_perturbed.png`` (the "bad" generator at ``sigma_p``).

Exact resume: the checkpoint holds both networks, both optimizers, the step,
each rank's loader position and noise-generator state; loader iterators never
draw from the global RNG (:func:`~fashion_attr.runtime.iter_keeping_rng`), so a
resumed run ends bitwise equal to an uninterrupted one on CPU.

Non-finite losses are recorded on the device at every step (no host sync) and
checked at every log, checkpoint and epoch end: training stops with
:class:`NonFiniteLossError` naming the first bad step and its terms, before any
grid, checkpoint or export is written from the diverged weights.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fashion_attr import storage
from fashion_attr.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng,
    check_world_size,
    load_artifact,
    restore_rng,
    save_artifact,
)
from fashion_attr.config import GanConfig, config_to_dict
from fashion_attr.data.info import DatasetInfo
from fashion_attr.data.loader import make_loader
from fashion_attr.gan.loss import MRGANLoss, image_pyramid
from fashion_attr.gan.networks import MRGANSpec, MRGenerator, build_gan, make_condition
from fashion_attr.runtime import (
    DistContext,
    FiniteGuard,
    NonFiniteLossError,
    autocast,
    init_distributed,
    iter_keeping_rng,
    resolve_device,
    use_bf16,
)
from fashion_attr.tracking import Tracker

__all__ = [
    "GENERATOR_FORMAT",
    "GanResult",
    "NonFiniteLossError",
    "load_generator",
    "train_gan",
]

log = logging.getLogger(__name__)
GENERATOR_FORMAT = "fashion_attr.generator/v1"


@dataclass
class GanResult:
    """What a finished ``train_gan`` produced."""

    generator_uri: str
    steps: int
    epochs: int
    projection_msc: float
    resumed_from_step: int | None


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


def _to_unit(images: Tensor, device: torch.device, size: int, channels_last: bool) -> Tensor:
    """uint8 [B,3,H,W] (any size) -> float in [-1, 1] at ``size`` on ``device``."""
    x = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode="area")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _condition(category: Tensor, targets: Tensor, known: Tensor, num_categories: int) -> Tensor:
    positives = targets * known.to(targets.dtype)  # unknown labels count as absent
    return make_condition(category, positives, num_categories)


def _grid(g: MRGenerator, z: Tensor, cond: Tensor, sigma: float, path: Path) -> None:
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


def _upload_dir_files(local: Path, out: str, names: list[str]) -> None:
    for name in names:
        p = local / name
        if p.exists():
            storage.upload_file(p, storage.join(out, name))


def load_generator(
    uri: str, device: str | torch.device = "cpu"
) -> tuple[MRGenerator, dict[str, Any]]:
    """Load an exported generator (``weights_only``) and its metadata.

    Returns:
        ``(generator in eval mode, metadata)``; metadata holds ``spec``,
        ``category_names`` and ``attribute_names`` (the condition layout).

    Raises:
        ValueError: if the file is not a generator artifact of this project.
    """
    art = load_artifact(uri, map_location=device)
    if not isinstance(art, dict) or art.get("format") != GENERATOR_FORMAT:
        raise ValueError(
            f"{uri} is not a generator artifact ({GENERATOR_FORMAT}). Fix: pass the "
            "generator.pt written by train_gan"
        )
    spec = MRGANSpec.from_dict(art["spec"])
    g = MRGenerator(spec)
    g.load_state_dict(art["state_dict"])
    g.to(device).eval()
    meta = {k: v for k, v in art.items() if k != "state_dict"}
    return g, meta


def train_gan(
    cfg: GanConfig,
    data: str,
    out: str,
    *,
    cache_dir: str | Path | None = None,
    resume: bool = True,
) -> GanResult:
    """Train the conditional MR-GAN with DC loss on a dataset version's train split.

    Args:
        cfg: resolved :class:`GanConfig`.
        data: dataset version URI (folder with ``manifest.json``).
        out: output URI (local folder or ``s3://``).
        cache_dir: local shard cache (default: a temp folder).
        resume: continue from ``out/checkpoint.pt`` when present.

    Returns:
        :class:`GanResult` with the exported generator URI.

    Raises:
        NonFiniteLossError: if a loss becomes NaN/Inf (names the step and terms).
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, data, out, ctx, cache_dir, resume)
    finally:
        ctx.close()


def _train(
    cfg: GanConfig,
    data: str,
    out: str,
    ctx: DistContext,
    cache_dir: str | Path | None,
    resume: bool,
) -> GanResult:
    device = resolve_device(cfg.device, ctx.local_rank)
    bf16 = use_bf16(cfg.precision, device)
    channels_last = cfg.channels_last and device.type == "cuda"
    torch.manual_seed(cfg.seed + ctx.rank)
    info = DatasetInfo.load(data)
    spec = spec_from_config(cfg, info)
    G, D = build_gan(spec)
    G.to(device)
    D.to(device)
    if channels_last:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema else None
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + ctx.rank)

    ckpt_uri = storage.join(out, CHECKPOINT_NAME)
    step, epoch, consumed, resumed_from = 0, 0, 0, None
    if resume and storage.exists(ckpt_uri):
        state = load_artifact(ckpt_uri, map_location=device)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        if G_ema is not None and "G_ema" in state:
            G_ema.load_state_dict(state["G_ema"])
        step, epoch = int(state["step"]), int(state["epoch"])
        check_world_size(state, ctx.world_size, ckpt_uri)
        consumed = int(state["samples_consumed"][ctx.rank])
        restore_rng(state["rng"][ctx.rank], noise_gen)
        resumed_from = step
        log.info("resuming train_gan from step %d (epoch %d, sample %d)", step, epoch, consumed)

    g_model: nn.Module = G
    d_model: nn.Module = D
    if ctx.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        g_model = DDP(G, device_ids=ids)
        d_model = DDP(D, device_ids=ids)
    objective = MRGANLoss(g_model, d_model, spec.z_dim, cfg.dc_weight)

    workdir = Path(tempfile.mkdtemp(prefix="fa-gan-"))
    tracker = Tracker(workdir / "metrics.jsonl", "train_gan", enabled=ctx.is_main)
    tracker.log_params({"config": config_to_dict(cfg), "data": data})
    tracker.set_tags({"dataset_version": info.version})
    if ctx.is_main:
        if resumed_from is not None and storage.exists(storage.join(out, "metrics.jsonl")):
            storage.download_file(storage.join(out, "metrics.jsonl"), workdir / "metrics.jsonl")
        storage.write_text(storage.join(out, "config.yaml"), yaml.safe_dump(config_to_dict(cfg)))

    # Fixed preview conditions: the most frequent categories, their own typical labels.
    preview_n = 16
    fixed_gen = torch.Generator(device="cpu").manual_seed(99)
    z_fixed = torch.randn(preview_n, spec.z_dim, generator=fixed_gen).to(device)
    cat_pmf = info.category_prior()
    cats = torch.multinomial(cat_pmf, preview_n, replacement=True, generator=fixed_gen)
    attrs = (
        torch.rand(preview_n, spec.num_attributes, generator=fixed_gen) < info.attribute_prior()
    ).float()
    cond_fixed = make_condition(cats, attrs, spec.num_categories).to(device)

    batches_per_epoch = None
    total_steps = None
    t0, seen0 = time.time(), 0
    msc = objective_msc = float("nan")
    guard = FiniteGuard(
        "train_gan",
        ("loss_d", "loss_g", "loss_dc"),
        "lower train_gan.lr or use precision=fp32",
        device,
    )
    stop = False
    while epoch < cfg.epochs and not stop:
        loader = make_loader(
            data,
            "train",
            batch_size=cfg.batch_size,
            cache_dir=cache_dir,
            train=True,
            seed=cfg.seed,
            epoch=epoch,
            rank=ctx.rank,
            world_size=ctx.world_size,
            num_workers=cfg.num_workers,
            flip=True,
            pin_memory=device.type == "cuda",
            start_sample=consumed,
            drop_last=True,
        )
        if batches_per_epoch is None:
            batches_per_epoch = loader.samples_per_epoch // cfg.batch_size
            total_steps = batches_per_epoch * cfg.epochs
            if cfg.max_steps:
                total_steps = min(total_steps, cfg.max_steps)
            if batches_per_epoch == 0:
                raise ValueError(
                    f"train split has fewer samples than batch_size={cfg.batch_size} per rank. "
                    "Fix: lower train_gan.batch_size"
                )
        for images, targets, known, category in iter_keeping_rng(loader):
            if total_steps is not None and step >= total_steps:
                stop = True
                break
            real = _to_unit(images, device, spec.image_size, channels_last)
            cond = _condition(
                category.to(device), targets.to(device), known.to(device), spec.num_categories
            )
            pyramid = image_pyramid(real, list(spec.levels))
            with autocast(device, bf16):
                opt_d.zero_grad(set_to_none=True)
                d_terms = objective.discriminator_step(pyramid, cond, noise_gen)
            opt_d.step()
            with autocast(device, bf16):
                opt_g.zero_grad(set_to_none=True)
                g_terms = objective.generator_step(cond, noise_gen)
            opt_g.step()
            if G_ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(
                        list(G_ema.parameters()), list(G.parameters()), 1 - cfg.ema_decay
                    )
                    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
                        b_ema.copy_(b)
            step += 1
            guard.observe(step, d_terms.total, g_terms.total, g_terms.dc)
            consumed += images.shape[0]
            seen0 += images.shape[0]
            log_now = step % 10 == 0 or step == total_steps
            ckpt_now = step % cfg.checkpoint_every == 0
            if log_now or ckpt_now:
                guard.check()
            if log_now and ctx.is_main:
                msc = objective.projection_correlation()
                metrics = {
                    "loss_d": float(d_terms.total),
                    "loss_g": float(g_terms.total),
                    "projection_msc": msc,
                    "images_per_s": seen0 * ctx.world_size / max(time.time() - t0, 1e-9),
                }
                if g_terms.dc is not None:
                    metrics["loss_dc"] = float(g_terms.dc)
                for i, size in enumerate(spec.levels):
                    metrics[f"loss_d/{size}px"] = float(d_terms.per_level[i])
                    metrics[f"loss_g/{size}px"] = float(g_terms.per_level[i])
                tracker.log_metrics(metrics, step=step)
            if ckpt_now:
                _save(out, ctx, G, D, G_ema, opt_g, opt_d, step, epoch, consumed, noise_gen, cfg)
            if total_steps is not None and step >= total_steps:
                stop = True
                break
        # Before the grids and the checkpoint: nothing is written from weights that saw a NaN.
        guard.check()
        if not stop or consumed >= batches_per_epoch * cfg.batch_size:
            epoch += 1
            consumed = 0
        if ctx.is_main and cfg.sample_grid_every_epoch:
            g_show = G_ema if G_ema is not None else G
            name = f"epoch_{epoch:03d}"
            _grid(g_show, z_fixed, cond_fixed, 0.0, workdir / f"{name}.png")
            _grid(g_show, z_fixed, cond_fixed, cfg.sigma_p, workdir / f"{name}_perturbed.png")
            for suffix in ("", "_perturbed"):
                storage.upload_file(
                    workdir / f"{name}{suffix}.png",
                    storage.join(out, "samples", f"{name}{suffix}.png"),
                )
                tracker.log_artifact(workdir / f"{name}{suffix}.png", "samples")
        _save(out, ctx, G, D, G_ema, opt_g, opt_d, step, epoch, consumed, noise_gen, cfg)
        if ctx.is_main:
            storage.upload_file(workdir / "metrics.jsonl", storage.join(out, "metrics.jsonl"))

    guard.check()
    objective_msc = objective.projection_correlation()
    gen_uri = storage.join(out, "generator.pt")
    if ctx.is_main:
        exported = G_ema if G_ema is not None else G
        save_artifact(
            gen_uri,
            {
                "format": GENERATOR_FORMAT,
                "spec": spec.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in exported.state_dict().items()},
                "category_names": list(info.category_names),
                "attribute_names": list(info.attribute_names),
                "dataset_version": info.version,
                "config": config_to_dict(cfg),
                "steps": step,
            },
        )
        tracker.log_metrics({"final_projection_msc": objective_msc}, step=step)
        storage.upload_file(workdir / "metrics.jsonl", storage.join(out, "metrics.jsonl"))
    ctx.barrier()
    tracker.close()
    return GanResult(gen_uri, step, epoch, objective_msc, resumed_from)


def _save(
    out: str,
    ctx: DistContext,
    G: nn.Module,
    D: nn.Module,
    G_ema: nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    step: int,
    epoch: int,
    consumed: int,
    noise_gen: torch.Generator,
    cfg: GanConfig,
) -> None:
    # Every rank's loader position and RNG state is gathered so each can resume exactly.
    rng = capture_rng(noise_gen)
    positions = [consumed]
    rngs = [rng]
    if ctx.initialised:
        import torch.distributed as dist

        positions_all: list[Any] = [None] * ctx.world_size
        rngs_all: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(positions_all, consumed)
        dist.all_gather_object(rngs_all, rng)
        positions, rngs = positions_all, rngs_all
    if not ctx.is_main:
        return
    state = {
        "G": G.state_dict(),
        "D": D.state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "step": step,
        "epoch": epoch,
        "samples_consumed": positions,
        "rng": rngs,
        "config": config_to_dict(cfg),
    }
    if G_ema is not None:
        state["G_ema"] = G_ema.state_dict()
    save_artifact(storage.join(out, CHECKPOINT_NAME), state)
