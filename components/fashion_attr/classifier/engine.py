"""Classifier training loop (HABP + Deact) and batch inference; resumable and DDP-aware.

The loop asks :class:`~fashion_attr.classifier.task.ClassifierTask` for the
objective of each step and never computes a loss itself. It owns what a
production run needs around it: the paper's SGD schedule, bf16 autocast and
channels_last on CUDA (losses stay fp32), optional ``torch.compile``,
checkpoints every ``checkpoint_every`` steps and at each epoch end (model,
optimizer, scheduler, step, loader position, hard-label memory, RNG states),
exact resume, validation each epoch, and the export of the best or last model.

Non-finite losses are detected without a host synchronisation per step: a
device-side flag remembers the first bad step and its terms, and is read at
every log and checkpoint; training then stops with an error naming the step
and the terms, before anything is checkpointed or exported.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
from fashion_attr.classifier.deact import DeactLoss
from fashion_attr.classifier.model import build_classifier
from fashion_attr.classifier.task import ClassifierTask
from fashion_attr.config import ClassifierConfig, config_to_dict
from fashion_attr.data.info import DatasetInfo
from fashion_attr.data.loader import make_loader, normalize_on_device
from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics
from fashion_attr.gan.networks import MRGenerator
from fashion_attr.gan.training_loop import load_generator
from fashion_attr.hardness import HardLabelMemory, default_positives_per_image
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
    "MODEL_FORMAT",
    "NonFiniteLossError",
    "TrainResult",
    "load_exported_model",
    "make_deact",
    "predict_split",
    "train_classifier",
]

log = logging.getLogger(__name__)
MODEL_FORMAT = "fashion_attr.classifier/v1"


@dataclass
class TrainResult:
    """What a finished ``train_classifier`` produced."""

    model_uri: str
    steps: int
    epochs: int
    val_metrics: dict[str, float]
    resumed_from_step: int | None
    deact_steps: int


def _export_blob(
    model: nn.Module, cfg: ClassifierConfig, info: DatasetInfo, val: dict[str, float], step: int
) -> dict[str, Any]:
    base = getattr(model, "_orig_mod", model)
    base = getattr(base, "module", base)
    spec = base.expected_input()
    return {
        "format": MODEL_FORMAT,
        "arch": cfg.arch,
        "num_attributes": info.num_attributes,
        "num_categories": info.num_categories,
        "in_channels": spec["channels"],
        "state_dict": {k: v.detach().cpu().clone() for k, v in base.state_dict().items()},
        "category_names": list(info.category_names),
        "attribute_names": list(info.attribute_names),
        "attribute_groups": [int(g) for g in info.attribute_groups],
        "train_pos_counts": [int(c) for c in info.train_pos_counts.tolist()],
        "preprocessing": {
            "image_size": cfg.image_size,
            "channels": spec["channels"],
            "mean": list(spec["mean"]),
            "std": list(spec["std"]),
            "resize": "bilinear, whole image (crop to the garment box first when known)",
        },
        "dataset_version": info.version,
        "config": config_to_dict(cfg),
        "val_metrics": {k: float(v) for k, v in val.items()},
        "step": step,
    }


def load_exported_model(
    uri: str, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model exported by ``train_classifier`` (``weights_only``).

    Returns:
        ``(model in eval mode, metadata without the weights)``.

    Raises:
        ValueError: if the file is not a classifier artifact of this project.
    """
    blob = load_artifact(uri, map_location="cpu")
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{uri} is not a classifier artifact ({MODEL_FORMAT}). Fix: pass the model.pt "
            "written by train_classifier"
        )
    model = build_classifier(
        blob["arch"],
        blob["num_attributes"],
        blob["num_categories"],
        in_channels=blob["in_channels"],
        pretrained=None,
    )
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, meta


@torch.no_grad()
def predict_split(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    device: torch.device,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    attr_metrics: AttributeMetrics | None,
    cat_metrics: CategoryMetrics | None,
    bf16: bool = False,
    channels_last: bool = False,
) -> int:
    """Run ``model`` over batches from the loader and feed the metric accumulators.

    Returns:
        Number of images scored.
    """
    was_training = model.training
    model.eval()
    n = 0
    for images, targets, known, category in batches:
        x = prepare_images(images, device, mean, std, size=image_size, channels_last=channels_last)
        with autocast(device, bf16):
            attr_logits, cat_logits = model(x)
        if attr_metrics is not None and attr_logits.shape[1] > 0:
            attr_metrics.update(attr_logits.float(), targets.to(device), known.to(device))
        if cat_metrics is not None and cat_logits.shape[1] > 0:
            cat_metrics.update(cat_logits.float(), category.to(device))
        n += images.shape[0]
    model.train(was_training)
    return n


def prepare_images(
    images: Tensor,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    size: int,
    channels_last: bool,
) -> Tensor:
    """uint8 loader batch -> normalised float on ``device`` at ``size`` x ``size``.

    The copy to the device moves uint8 (4x fewer bytes than float); the
    conversion and normalisation run on the device.
    """
    x = images.to(device, non_blocking=True)
    channels = len(mean)
    if x.shape[1] != channels:
        # Grey classifiers (LeNet on MNIST) read the luminance of RGB shards.
        x = x.float().mean(dim=1, keepdim=True).round_().to(torch.uint8) if channels == 1 else x
    x = normalize_on_device(x, mean, std, channels_last=channels_last)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return x


def _lr_at(cfg: ClassifierConfig, epoch: int) -> float:
    # The paper: lr 0.01 for 6 epochs, then divided by 10 every 3 epochs (milestones 6, 9, 12).
    return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if epoch >= m)


def train_classifier(
    cfg: ClassifierConfig,
    data: str,
    out: str,
    *,
    generator: str | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train the classifier with the configured loss (+ Deact with a frozen generator).

    Args:
        cfg: resolved :class:`ClassifierConfig`.
        data: dataset version URI.
        out: output URI; receives ``checkpoint.pt``, ``model.pt``, ``config.yaml``,
            ``labels.json`` and ``metrics.jsonl``.
        generator: URI of the ``generator.pt`` from ``train_gan``; required when
            ``deact.enabled``.
        cache_dir: local shard cache.
        resume: continue from ``out/checkpoint.pt`` when present.

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: Deact enabled without a generator, or a generator whose
            condition layout does not match the dataset.
        NonFiniteLossError: a loss became NaN/Inf.
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, data, out, generator, ctx, cache_dir, resume)
    finally:
        ctx.close()


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
    )
    # Labels that never occur in the train split would keep their initial score
    # forever and dominate the pmfs; the generator was never conditioned on them
    # either. They start (and stay) at zero; all others start equal (method.md).
    state = memory.state_dict()
    if info.num_attributes:
        state["attr_scores"][:, 1] *= (info.train_pos_counts > 0).to(device, torch.float32)
    if info.num_categories:
        state["cat_scores"] *= (info.train_category_counts > 0).to(device, torch.float32)
    memory.load_state_dict(state)
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


def _build_deact(
    cfg: ClassifierConfig,
    info: DatasetInfo,
    generator_uri: str | None,
    device: torch.device,
    in_channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rank: int,
    channels_last: bool,
) -> DeactLoss | None:
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


def _train(
    cfg: ClassifierConfig,
    data: str,
    out: str,
    generator_uri: str | None,
    ctx: DistContext,
    cache_dir: str | Path | None,
    resume: bool,
) -> TrainResult:
    device = resolve_device(cfg.device, ctx.local_rank)
    bf16 = use_bf16(cfg.precision, device)
    channels_last = cfg.channels_last and device.type == "cuda"
    torch.manual_seed(cfg.seed)  # same init on every rank; DDP also broadcasts it
    info = DatasetInfo.load(data)
    model = build_classifier(
        cfg.arch, info.num_attributes, info.num_categories, pretrained=cfg.pretrained
    )
    spec = model.expected_input()
    mean, std, in_channels = tuple(spec["mean"]), tuple(spec["std"]), spec["channels"]
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=_lr_at(cfg, 0), momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    deact = _build_deact(
        cfg, info, generator_uri, device, in_channels, mean, std, ctx.rank, channels_last
    )
    torch.manual_seed(cfg.seed + 1 + ctx.rank)  # dropout differs per rank

    ckpt_uri = storage.join(out, CHECKPOINT_NAME)
    step, epoch, consumed, resumed_from = 0, 0, 0, None
    best: float | None = None
    history: list[dict[str, float]] = []
    deact_steps = 0
    if resume and storage.exists(ckpt_uri):
        state = load_artifact(ckpt_uri, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch = int(state["step"]), int(state["epoch"])
        check_world_size(state, ctx.world_size, ckpt_uri)
        consumed = int(state["samples_consumed"][ctx.rank])
        best = state.get("best")
        history = list(state.get("history", []))
        deact_steps = int(state.get("deact_steps", 0))
        if deact is not None:
            deact.memory.load_state_dict(state["memory"])
        gens = (deact.rng,) if deact is not None else ()
        restore_rng(state["rng"][ctx.rank], *gens)
        resumed_from = step
        log.info("resuming train_classifier from step %d (epoch %d)", step, epoch)
    best_uri = storage.join(out, "model_best.pt")
    if resumed_from is None and ctx.is_main and storage.exists(best_uri):
        # A fresh run (--no-resume into a used folder) must never export a stale best model.
        storage.delete(best_uri)

    train_model: nn.Module = model
    if cfg.compile and device.type == "cuda":
        train_model = torch.compile(train_model)
    if ctx.world_size > 1:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    task = ClassifierTask(
        cfg,
        info.train_pos_counts,
        info.train_neg_counts,
        info.num_train,
        ctx,
        deact,
        device,
    )

    workdir = Path(tempfile.mkdtemp(prefix="fa-clf-"))
    tracker = Tracker(workdir / "metrics.jsonl", "train_classifier", enabled=ctx.is_main)
    if ctx.is_main:
        if resumed_from is not None and storage.exists(storage.join(out, "metrics.jsonl")):
            storage.download_file(storage.join(out, "metrics.jsonl"), workdir / "metrics.jsonl")
        storage.write_text(storage.join(out, "config.yaml"), yaml.safe_dump(config_to_dict(cfg)))
    tracker.log_params({"config": config_to_dict(cfg), "data": data, "generator": generator_uri})
    tracker.set_tags({"dataset_version": info.version})

    guard = FiniteGuard(
        "train_classifier",
        ("loss_real", "loss_sc"),
        "lower train_classifier.lr, check the input data, or use precision=fp32",
        device,
    )
    batches_per_epoch: int | None = None
    total_steps: int | None = None
    t0, seen = time.time(), 0
    run_real = torch.zeros((), device=device)
    run_sc = torch.zeros((), device=device)
    n_real = n_sc = 0

    def save(epoch_: int, consumed_: int) -> None:
        guard.check()  # never checkpoint weights that saw a NaN
        rng = capture_rng(*((deact.rng,) if deact is not None else ()))
        positions, rngs = [consumed_], [rng]
        if ctx.initialised:
            import torch.distributed as dist

            positions = [None] * ctx.world_size
            rngs = [None] * ctx.world_size
            dist.all_gather_object(positions, consumed_)
            dist.all_gather_object(rngs, rng)
        if not ctx.is_main:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch_,
            "samples_consumed": positions,
            "rng": rngs,
            "best": best,
            "history": history,
            "deact_steps": deact_steps,
            "config": config_to_dict(cfg),
        }
        if deact is not None:
            state["memory"] = deact.memory.state_dict()
        save_artifact(ckpt_uri, state)
        if best_blob_pending[0] is not None:
            save_artifact(storage.join(out, "model_best.pt"), best_blob_pending[0])
            best_blob_pending[0] = None

    best_blob_pending: list[dict[str, Any] | None] = [None]

    stop = False
    while epoch < cfg.epochs and not stop:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, epoch)
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
            flip=cfg.flip,
            random_resized_crop=cfg.random_resized_crop,
            pin_memory=device.type == "cuda",
            start_sample=consumed,
            drop_last=True,
        )
        if batches_per_epoch is None:
            batches_per_epoch = loader.samples_per_epoch // cfg.batch_size
            if batches_per_epoch == 0:
                raise ValueError(
                    f"train split has fewer samples than batch_size={cfg.batch_size} per rank. "
                    "Fix: lower train_classifier.batch_size"
                )
            total_steps = batches_per_epoch * cfg.epochs
            if cfg.max_steps:
                total_steps = min(total_steps, cfg.max_steps)
        model.train()
        for images, targets, known, category in iter_keeping_rng(loader):
            if total_steps is not None and step >= total_steps:
                stop = True
                break
            x = prepare_images(
                images, device, mean, std, size=cfg.image_size, channels_last=channels_last
            )
            targets = targets.to(device, non_blocking=True)
            known = known.to(device, non_blocking=True)
            category = category.to(device, non_blocking=True)
            step += 1
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, bf16):
                terms = task.step_loss(train_model, x, targets, known, category, step)
            terms.total.backward()
            optimizer.step()
            guard.observe(step, terms.real, terms.sc)
            consumed += images.shape[0]
            seen += images.shape[0]
            run_real += terms.real
            n_real += 1
            if terms.sc is not None:
                run_sc += terms.sc
                n_sc += 1
                deact_steps += 1
            log_now = step % 10 == 0 or step == total_steps
            if log_now:
                guard.check()
                if ctx.is_main:
                    metrics = {
                        "loss_real": float(run_real) / max(n_real, 1),
                        "lr": optimizer.param_groups[0]["lr"],
                        "images_per_s": seen * ctx.world_size / max(time.time() - t0, 1e-9),
                        "epoch": epoch,
                    }
                    if n_sc:
                        metrics["loss_sc"] = float(run_sc) / n_sc
                        metrics["synthetic_per_real"] = (
                            (cfg.deact.batch_size or cfg.batch_size)
                            / cfg.batch_size
                            / cfg.deact.every
                        )
                    tracker.log_metrics(metrics, step=step)
                run_real.zero_()
                run_sc.zero_()
                n_real = n_sc = 0
            if step % cfg.checkpoint_every == 0:
                save(epoch, consumed)
        epoch_done = (
            batches_per_epoch is not None and consumed >= batches_per_epoch * cfg.batch_size
        )
        if not epoch_done:
            save(epoch, consumed)
            break
        guard.check()  # a diverged model would fail validation with a misleading message
        # Validation at each epoch end (method.md section 6 metrics on the val split).
        val = _validate(
            model, cfg, info, data, device, ctx, cache_dir, mean, std, bf16, channels_last
        )
        history.append({"epoch": epoch, **val})
        if ctx.is_main:
            tracker.log_metrics({f"val/{k}": v for k, v in val.items()}, step=step)
        score = val.get(cfg.select_metric, float("nan"))
        if cfg.export == "best" and math.isfinite(score) and (best is None or score > best):
            best = score
            best_blob_pending[0] = _export_blob(model, cfg, info, val, step)
        epoch += 1
        consumed = 0
        save(epoch, consumed)
        if ctx.is_main:
            storage.upload_file(workdir / "metrics.jsonl", storage.join(out, "metrics.jsonl"))

    guard.check()
    model_uri = storage.join(out, "model.pt")
    final_val = history[-1] if history else {}
    if not final_val:
        # Stopped (max_steps) before any epoch end: validate now. Every rank calls it
        # (rank 0 computes, all meet at its barrier), or the ranks' barriers would not pair.
        final_val = _validate(
            model, cfg, info, data, device, ctx, cache_dir, mean, std, bf16, channels_last
        )
    final_val = {k: v for k, v in final_val.items() if k != "epoch"}
    if ctx.is_main:
        if cfg.export == "best" and storage.exists(best_uri):
            blob = load_artifact(best_uri)
            final_val = dict(blob["val_metrics"])
        else:
            blob = _export_blob(model, cfg, info, final_val, step)
        save_artifact(model_uri, blob)
        labels = {
            "categories": list(info.category_names),
            "attributes": list(info.attribute_names),
            "attribute_groups": [int(g) for g in info.attribute_groups],
        }
        storage.write_text(storage.join(out, "labels.json"), json.dumps(labels, indent=1))
        storage.upload_file(workdir / "metrics.jsonl", storage.join(out, "metrics.jsonl"))
    ctx.barrier()
    tracker.close()
    return TrainResult(
        model_uri,
        step,
        epoch,
        {k: float(v) for k, v in final_val.items()},
        resumed_from,
        deact_steps,
    )


def _validate(
    model: nn.Module,
    cfg: ClassifierConfig,
    info: DatasetInfo,
    data: str,
    device: torch.device,
    ctx: DistContext,
    cache_dir: str | Path | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    bf16: bool,
    channels_last: bool,
) -> dict[str, float]:
    """Validation metrics on rank 0 (other ranks wait): small split, no sharding needed."""
    result: dict[str, float] = {}
    if ctx.is_main and info.split_count("val") > 0:
        attr_m = (
            AttributeMetrics(info.attribute_groups, train_pos_counts=info.train_pos_counts.tolist())
            if info.num_attributes
            else None
        )
        cat_m = CategoryMetrics(info.num_categories) if info.num_categories else None
        loader = make_loader(
            data,
            "val",
            batch_size=cfg.eval_batch_size,
            cache_dir=cache_dir,
            train=False,
            seed=0,
            epoch=0,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
        )
        predict_split(
            model,
            loader,
            device=device,
            image_size=cfg.image_size,
            mean=mean,
            std=std,
            attr_metrics=attr_m,
            cat_metrics=cat_m,
            bf16=bf16,
            channels_last=channels_last,
        )
        if attr_m is not None:
            result.update({k: float(v) for k, v in attr_m.compute().items()})
        if cat_m is not None:
            result.update({k: float(v) for k, v in cat_m.compute().items()})
    ctx.barrier()
    return result
