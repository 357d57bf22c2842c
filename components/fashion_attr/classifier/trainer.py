"""Classifier training (HABP + Deact) on the resumable scaffold of :mod:`fashion_attr.training`.

The trainer asks :class:`~fashion_attr.classifier.task.ClassifierTask` for the
objective of each step and never computes a loss itself. It owns what is the
classifier's own around the scaffold: the paper's SGD schedule (lr 0.01,
divided by 10 at epochs 6, 9 and 12; docs/method.md section 5), bf16 autocast and
channels_last on CUDA (losses stay fp32), optional ``torch.compile``,
DistributedDataParallel under ``torchrun``, validation at each epoch end
(docs/method.md section 6 metrics on the val split), and the export of the best or
last model (:mod:`fashion_attr.classifier.export`).

Outputs under ``out``: ``checkpoint.pt`` (model, optimizer, step, loader
position, hard-label memory, RNG states, validation history; the previous one as
``checkpoint.prev.pt``), ``model.pt`` (the export), ``model_best.pt`` (with
``export=best``), ``config.yaml``, ``labels.json`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import record_function

from fashion_attr import storage
from fashion_attr.checkpoint import CHECKPOINT_NAME, load_artifact, save_artifact
from fashion_attr.classifier.deact import DeactLoss, deact_from_generator
from fashion_attr.classifier.export import export_blob
from fashion_attr.classifier.inference import predict_split, prepare_images
from fashion_attr.classifier.model import build_classifier
from fashion_attr.classifier.task import ClassifierTask
from fashion_attr.config import ClassifierConfig, config_to_dict
from fashion_attr.data.info import DatasetInfo
from fashion_attr.data.loader import make_loader
from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics, NaNScoresError
from fashion_attr.results import TrainClassifierResult
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

__all__ = ["ClassifierTrainer", "NonFiniteLossError", "train"]


def lr_at(cfg: ClassifierConfig, epoch: int) -> float:
    """The learning rate of ``epoch``: ``lr * lr_gamma ** (milestones passed)``."""
    # The paper: lr 0.01 for 6 epochs, then divided by 10 every 3 epochs (milestones 6, 9, 12).
    return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if epoch >= m)


class ClassifierTrainer:
    """The classifier's state and step, for :class:`~fashion_attr.training.ResumableLoop`.

    Args:
        cfg: the resolved :class:`ClassifierConfig`.
        info: the dataset's label layout and train counts.
        device: the training device.
        ctx: the distributed context.
        generator_uri: ``generator.pt`` from ``train_gan`` (needed when Deact is enabled).
        deact: a ready Deact loss instead of ``generator_uri`` (benchmarks).
        data: the dataset version URI, for validation at epoch ends.
        cache_dir: the local shard cache.
        out: the output URI (``model_best.pt`` goes there).
    """

    name = "train_classifier"
    terms = ("loss_real", "loss_sc")
    fix = "lower train_classifier.lr, check the input data, or use precision=fp32"

    def __init__(
        self,
        cfg: ClassifierConfig,
        info: DatasetInfo,
        device: torch.device,
        ctx: DistContext,
        *,
        generator_uri: str | None = None,
        deact: DeactLoss | None = None,
        data: str | None = None,
        cache_dir: str | Path | None = None,
        out: str = "",
    ) -> None:
        self.cfg, self.info, self.device, self.ctx = cfg, info, device, ctx
        self.data, self.cache_dir, self.out = data, cache_dir, out
        self.bf16 = use_bf16(cfg.precision, device)
        self.channels_last = cfg.channels_last and device.type == "cuda"
        torch.manual_seed(cfg.seed)  # same init on every rank; DDP also broadcasts it
        self.model = build_classifier(
            cfg.arch, info.num_attributes, info.num_categories, pretrained=cfg.pretrained
        )
        spec = self.model.expected_input()
        self.mean, self.std = tuple(spec["mean"]), tuple(spec["std"])
        self.model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=lr_at(cfg, 0),
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        self.deact = deact or deact_from_generator(
            cfg,
            info,
            generator_uri,
            device=device,
            in_channels=spec["channels"],
            mean=self.mean,
            std=self.std,
            rank=ctx.rank,
            channels_last=self.channels_last,
        )
        torch.manual_seed(cfg.seed + 1 + ctx.rank)  # dropout differs per rank
        train_model: nn.Module = self.model
        if cfg.compile and device.type == "cuda":
            train_model = cast(nn.Module, torch.compile(train_model))  # an OptimizedModule
        if ctx.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            train_model = DDP(train_model, device_ids=ids)
        self.train_model = train_model
        self.task = ClassifierTask(
            cfg,
            info.train_pos_counts,
            info.train_neg_counts,
            info.num_train,
            ctx,
            self.deact,
            device,
        )
        self.epoch = 0
        self.best: float | None = None
        self.history: list[dict[str, float]] = []
        self.last_step = 0  # the last optimisation step (for messages)
        self.deact_steps = 0
        self._pending_best: dict[str, Any] | None = None

    # -- the Procedure protocol -----------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Apply the epoch's learning rate."""
        self.epoch = epoch
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.cfg, epoch)

    def train_step(self, batch: Any, step: int) -> dict[str, Tensor | None]:
        """One SGD step on a loader batch (plus a synthetic batch on Deact steps)."""
        self.last_step = step
        images, targets, known, category = batch
        with record_function("fa.prepare_images"):
            x = prepare_images(
                images,
                self.device,
                self.mean,
                self.std,
                size=self.cfg.image_size,
                channels_last=self.channels_last,
            )
            targets = targets.to(self.device, non_blocking=True)
            known = known.to(self.device, non_blocking=True)
            category = category.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.bf16):
            terms = self.task.step_loss(self.train_model, x, targets, known, category, step)
        with record_function("fa.backward"):
            terms.total.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        with record_function("fa.optimizer"):
            self.optimizer.step()
        if terms.sc is not None:
            self.deact_steps += 1
        return {"loss_real": terms.real, "loss_sc": terms.sc}

    def log_extras(self) -> dict[str, float]:
        """Learning rate, epoch and the synthetic-to-real image ratio."""
        extras = {"lr": float(self.optimizer.param_groups[0]["lr"]), "epoch": float(self.epoch)}
        if self.deact is not None:
            deact = self.cfg.deact
            extras["synthetic_per_real"] = (
                (deact.batch_size or self.cfg.batch_size) / self.cfg.batch_size / deact.every
            )
        return extras

    def end_epoch(self, epoch: int, step: int) -> dict[str, float]:
        """Validate; remember the best model (``export=best``) for the next checkpoint."""
        val = self.validate()
        self.history.append({"epoch": epoch, **val})
        score = val.get(self.cfg.select_metric, float("nan"))
        if (
            self.cfg.export == "best"
            and math.isfinite(score)
            and (self.best is None or score > self.best)
        ):
            self.best = score
            self._pending_best = self.export(val, step)
        return {f"val/{k}": v for k, v in val.items()}

    def rng_generators(self) -> tuple[torch.Generator, ...]:
        """Deact's generator of conditions and noise."""
        return (self.deact.rng,) if self.deact is not None else ()

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, validation history, best score and the hard-label memory."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best": self.best,
            "history": self.history,
            "deact_steps": self.deact_steps,
        }
        if self.deact is not None:
            state["memory"] = self.deact.memory.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = state.get("best")
        self.history = list(state.get("history", []))
        self.deact_steps = int(state.get("deact_steps", 0))
        if self.deact is not None:
            self.deact.memory.load_state_dict(state["memory"])

    def after_checkpoint(self) -> None:
        """Publish a new best model once the checkpoint that records its score is written."""
        if self._pending_best is not None:
            save_artifact(storage.join(self.out, "model_best.pt"), self._pending_best)
            self._pending_best = None

    # -- validation and export -------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation metrics on rank 0 (other ranks wait): small split, no sharding needed."""
        check_finite_weights(self.name, self.model, self.last_step, self.fix)
        ctx, info, cfg = self.ctx, self.info, self.cfg
        result: dict[str, float] = {}
        if ctx.is_main and self.data is not None and info.split_count("val") > 0:
            attr_m = (
                AttributeMetrics(
                    info.attribute_groups, train_pos_counts=info.train_pos_counts.tolist()
                )
                if info.num_attributes
                else None
            )
            cat_m = CategoryMetrics(info.num_categories) if info.num_categories else None
            loader = make_loader(
                self.data,
                "val",
                batch_size=cfg.eval_batch_size,
                cache_dir=self.cache_dir,
                train=False,
                seed=0,
                epoch=0,
                num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda",
                drop_last=False,
            )
            try:
                predict_split(
                    self.model,
                    # gpu_decode is off: the images are decoded tensors, never lists of bytes
                    cast(Iterable[tuple[Tensor, Tensor, Tensor, Tensor]], loader),
                    device=self.device,
                    image_size=cfg.image_size,
                    mean=self.mean,
                    std=self.std,
                    attr_metrics=attr_m,
                    cat_metrics=cat_m,
                    bf16=self.bf16,
                    channels_last=self.channels_last,
                )
            except NaNScoresError as exc:  # finite losses, then an update overflowed
                raise NonFiniteLossError(
                    f"validation after step {self.last_step}: {exc} Training "
                    f"stopped and nothing was exported. Fix: {self.fix}"
                ) from exc
            if attr_m is not None:
                result.update({k: float(v) for k, v in attr_m.compute().items()})
            if cat_m is not None:
                result.update({k: float(v) for k, v in cat_m.compute().items()})
        ctx.barrier()
        return result

    def export(self, val: Mapping[str, float], step: int) -> dict[str, Any]:
        """The current model as an export (:mod:`fashion_attr.classifier.export`)."""
        info = self.info
        return export_blob(
            self.model,
            arch=self.cfg.arch,
            config=config_to_dict(self.cfg),
            image_size=self.cfg.image_size,
            category_names=list(info.category_names),
            attribute_names=list(info.attribute_names),
            attribute_groups=[int(g) for g in info.attribute_groups],
            train_pos_counts=[int(c) for c in info.train_pos_counts.tolist()],
            dataset_version=info.version,
            val_metrics=val,
            step=step,
        )


def train(
    cfg: ClassifierConfig,
    data: str,
    out: str,
    *,
    generator: str | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = True,
) -> TrainClassifierResult:
    """Train the classifier with the configured loss (+ Deact with a frozen generator).

    Args:
        cfg: resolved :class:`ClassifierConfig`.
        data: dataset version URI.
        out: output URI (see the module docstring for what it receives).
        generator: URI of the ``generator.pt`` from ``train_gan``; required when
            ``deact.enabled``.
        cache_dir: local shard cache.
        resume: continue from ``out/checkpoint.pt`` when present.

    Returns:
        :class:`TrainClassifierResult` with every output URI.

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


def _train(
    cfg: ClassifierConfig,
    data: str,
    out: str,
    generator_uri: str | None,
    ctx: DistContext,
    cache_dir: str | Path | None,
    resume: bool,
) -> TrainClassifierResult:
    device = resolve_device(cfg.device, ctx.local_rank)
    info = DatasetInfo.load(data)
    trainer = ClassifierTrainer(
        cfg,
        info,
        device,
        ctx,
        generator_uri=generator_uri,
        data=data,
        cache_dir=cache_dir,
        out=out,
    )
    workdir = local_workdir("fa-clf-")
    tracker = Tracker(workdir / "metrics.jsonl", "train_classifier", enabled=ctx.is_main)

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
        flip=cfg.flip,
        random_resized_crop=cfg.random_resized_crop,
        whole_share=cfg.whole_share,
    )
    best_uri = storage.join(out, "model_best.pt")
    if loop.resumed_from is None and ctx.is_main and storage.exists(best_uri):
        # A fresh run (--no-resume into a used folder) must never export a stale best model.
        storage.delete(best_uri)
    tracker.log_params({"config": config_to_dict(cfg), "data": data, "generator": generator_uri})
    tracker.set_tags({"dataset_version": info.version})

    done = loop.run()
    final_val = trainer.history[-1] if trainer.history else {}
    if not final_val:
        # Stopped (max_steps) before any epoch end: validate now. Every rank calls it
        # (rank 0 computes, all meet at its barrier), or the ranks' barriers would not pair.
        final_val = trainer.validate()
    final_val = {k: v for k, v in final_val.items() if k != "epoch"}
    model_uri = storage.join(out, "model.pt")
    labels_uri = storage.join(out, "labels.json")
    if ctx.is_main:
        if cfg.export == "best" and storage.exists(best_uri):
            blob = load_artifact(best_uri)
            final_val = dict(blob["val_metrics"])
        else:
            blob = trainer.export(final_val, done.step)
        save_artifact(model_uri, blob)
        labels = {
            "categories": list(info.category_names),
            "attributes": list(info.attribute_names),
            "attribute_groups": [int(g) for g in info.attribute_groups],
        }
        storage.write_text(labels_uri, json.dumps(labels, indent=1))
        loop.upload_log()
    ctx.barrier()
    tracker.close()
    return TrainClassifierResult(
        model=model_uri,
        checkpoint=storage.join(out, CHECKPOINT_NAME),
        config=loop.config_uri,
        labels=labels_uri,
        metrics_log=loop.metrics_log_uri,
        dataset_version=info.version,
        steps=done.step,
        epochs=done.epoch,
        deact_steps=trainer.deact_steps,
        val_metrics={k: (float(v) if math.isfinite(v) else None) for k, v in final_val.items()},
        resumed_from_step=done.resumed_from_step,
    )
