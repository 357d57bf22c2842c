"""The resumable training scaffold both trainers run on (MR-GAN and the classifier).

A trainer supplies only what is its own, as a :class:`Procedure`: its state
(networks, optimizers, memories), its step function (one batch in, detached
loss terms out) and what happens at an epoch end. :class:`ResumableLoop`
does the rest, identically for both:

- **epochs and steps**: a fresh loader per epoch that starts at the sample a
  resumed run had reached; ``max_steps`` stops early (mid-epoch if need be);
- **checkpoints** every ``checkpoint_every`` steps and at each epoch end,
  written atomically by rank 0 with every rank's loader position and RNG
  states; the previous checkpoint is kept as ``checkpoint.prev.pt``;
- **exact resume** from ``checkpoint.pt`` (or, if that file is unreadable, from
  ``checkpoint.prev.pt``); a resumed run ends bitwise equal to an
  uninterrupted one on CPU; with neither readable the step stops (exit 2) naming
  both files, what is wrong with each and the fix (``--no-resume``);
- **the MLflow run ends** FAILED when the loop fails, KILLED when it is interrupted;
- **the non-finite guard**: every step's terms are recorded on the device
  (no host sync) and checked at every log, checkpoint and epoch end, so
  nothing is ever checkpointed or exported from weights that saw a NaN;
- **logging**: interval means of the loss terms plus the trainer's extras to
  ``metrics.jsonl`` and MLflow every ``log_every`` steps, and progress lines
  (step, epoch, images/s, losses, ETA) on stderr at most every
  ``FA_PROGRESS_EVERY`` seconds (default 15), or a progress bar when stderr
  is a terminal (``FA_PROGRESS=bar|lines|off`` overrides);
- **profiler regions**: ``fa.loader_wait`` and ``fa.train_step`` around each
  step (the trainers name their phases inside it), shown by
  ``bench/throughput.py --profile``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch import Tensor
from torch.profiler import record_function

from fashion_attr import storage
from fashion_attr.checkpoint import (
    CHECKPOINT_NAME,
    NoReadableCheckpointError,
    UnreadableArtifactError,
    capture_rng,
    check_world_size,
    load_artifact,
    restore_rng,
    save_artifact,
)
from fashion_attr.progress import Progress
from fashion_attr.runtime import DistContext, FiniteGuard, iter_keeping_rng
from fashion_attr.tracking import Tracker, run_status_for

__all__ = [
    "PREVIOUS_CHECKPOINT_NAME",
    "LoopResult",
    "Procedure",
    "Progress",
    "ResumableLoop",
    "Schedule",
]

log = logging.getLogger(__name__)

PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
METRICS_LOG = "metrics.jsonl"


class Procedure(Protocol):
    """What a trainer gives the loop (see the module docstring).

    Attributes:
        name: the step (``train_gan``), for logs and messages.
        terms: names of the loss terms :meth:`train_step` returns, guarded in this order.
        fix: what to try when a loss turns non-finite, for the message.
    """

    name: str
    fix: str

    @property
    def terms(self) -> tuple[str, ...]:
        """Read only, so a class attribute such as ``("loss_d", "loss_g")`` satisfies it."""

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch's first step (learning-rate schedules)."""

    def train_step(self, batch: Any, step: int) -> Mapping[str, Tensor | None]:
        """One optimisation step on ``batch`` (``step`` is 1-based).

        Returns:
            Detached scalar tensors: every name of :attr:`terms` (None when not computed
            this step) and optionally more terms that are only logged (interval means).
        """

    def log_extras(self) -> dict[str, float]:
        """Figures logged beside the loss means at each log step (rank 0)."""

    def end_epoch(self, epoch: int, step: int) -> dict[str, float]:
        """Work at the end of complete epoch ``epoch`` (0-based); returns figures to log."""

    def rng_generators(self) -> tuple[torch.Generator, ...]:
        """The trainer's own random generators, saved and restored with the checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        """Everything of the trainer's own that a checkpoint holds."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def after_checkpoint(self) -> None:
        """Rank 0, right after a checkpoint was written (e.g. publish a best model)."""


class EpochLoader(Protocol):
    """What ``make_loader`` returns: the batches of one epoch for this rank.

    A :class:`~fashion_attr.data.loader.ShardLoader` is one.
    """

    @property
    def samples_per_epoch(self) -> int:
        """This rank's samples in a whole epoch."""

    def __iter__(self) -> Iterator[Any]:
        """The batches, from the requested start sample on."""


@dataclass(frozen=True)
class Schedule:
    """How long and how often.

    Attributes:
        epochs: epochs to train.
        batch_size: samples per step and rank.
        max_steps: stop after this many steps (None: all epochs).
        checkpoint_every: checkpoint every N steps (and at each epoch end).
        log_every: log every N steps (and at the last step).
    """

    epochs: int
    batch_size: int
    max_steps: int | None = None
    checkpoint_every: int = 500
    log_every: int = 10


@dataclass
class LoopResult:
    """Where a finished loop stopped.

    Attributes:
        step: steps done in all (resumed runs included).
        epoch: complete epochs.
        resumed_from_step: the checkpoint's step when this run resumed, else None.
        stopped_mid_epoch: ``max_steps`` ended training inside an epoch.
        epoch_figures: what :meth:`Procedure.end_epoch` returned, per complete epoch of
            this run.
    """

    step: int
    epoch: int
    resumed_from_step: int | None
    stopped_mid_epoch: bool
    epoch_figures: list[dict[str, float]] = field(default_factory=list)


class ResumableLoop:
    """Runs a :class:`Procedure` over epochs with checkpoints, resume, guard and logging.

    Args:
        procedure: the trainer's state and step.
        out: the output URI (``checkpoint.pt`` and ``metrics.jsonl`` go there).
        ctx: the distributed context.
        schedule: epochs, batch size, ``max_steps`` and intervals.
        make_loader: ``(epoch, start_sample) -> iterable of batches`` for this rank, with a
            ``samples_per_epoch`` attribute (a :class:`~fashion_attr.data.loader.ShardLoader`).
        tracker: the step's tracker (its log file lives in a local work folder and is
            uploaded to ``out`` at each epoch end and at the end).
        device: the training device (for the guard).
        config: the resolved config, saved in each checkpoint.
        resume: continue from ``out``'s checkpoint when there is one.
    """

    @classmethod
    def on_train_split(
        cls,
        procedure: Procedure,
        cfg: Any,
        *,
        data: str,
        out: str,
        ctx: DistContext,
        device: torch.device,
        tracker: Tracker,
        cache_dir: str | Path | None = None,
        resume: bool = True,
        **augment: Any,
    ) -> ResumableLoop:
        """The loop over ``data``'s train split with ``cfg``'s schedule, config saved to ``out``.

        ``cfg`` is a trainer config (:class:`~fashion_attr.config.GanConfig` or
        :class:`~fashion_attr.config.ClassifierConfig`): its ``epochs``, ``batch_size``,
        ``max_steps``, ``checkpoint_every``, ``seed`` and ``num_workers`` are used; the
        resolved config goes to ``<out>/config.yaml`` (rank 0) and into every checkpoint.

        Args:
            procedure: the trainer.
            cfg: the resolved trainer config.
            data: the dataset version URI.
            out: the output URI.
            ctx: the distributed context (each rank reads its share of every epoch).
            device: the training device.
            tracker: the step's tracker.
            cache_dir: the local shard cache.
            resume: continue from ``out``'s checkpoint when there is one.
            **augment: loader augmentations (``flip``, ``random_resized_crop``).

        Returns:
            The loop (resumed, if there was a checkpoint).
        """
        from fashion_attr.config import config_to_dict
        from fashion_attr.data.loader import make_loader

        def loader(epoch: int, start: int) -> EpochLoader:
            return make_loader(
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
                pin_memory=device.type == "cuda",
                start_sample=start,
                drop_last=True,
                **augment,
            )

        resolved = config_to_dict(cfg)
        loop = cls(
            procedure,
            out=out,
            ctx=ctx,
            schedule=Schedule(cfg.epochs, cfg.batch_size, cfg.max_steps, cfg.checkpoint_every),
            make_loader=loader,
            tracker=tracker,
            device=device,
            config=resolved,
            resume=resume,
        )
        if ctx.is_main:
            storage.write_text(loop.config_uri, yaml.safe_dump(resolved))
        return loop

    def __init__(
        self,
        procedure: Procedure,
        *,
        out: str,
        ctx: DistContext,
        schedule: Schedule,
        make_loader: Callable[[int, int], EpochLoader],
        tracker: Tracker,
        device: torch.device,
        config: Mapping[str, Any],
        resume: bool = True,
    ) -> None:
        self.proc = procedure
        self.out = out
        self.ctx = ctx
        self.schedule = schedule
        self.make_loader = make_loader
        self.tracker = tracker
        self.config = dict(config)
        self.guard = FiniteGuard(procedure.name, procedure.terms, procedure.fix, device)
        self.step = 0
        self.epoch = 0
        self.consumed = 0
        self.resumed_from: int | None = None
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        if resume:
            with self._ending_run_on_failure():
                self._resume()
        if self.resumed_from is not None:
            self._continue_log()

    @contextlib.contextmanager
    def _ending_run_on_failure(self) -> Iterator[None]:
        """A failure ends the step's MLflow run FAILED (KILLED when interrupted), not RUNNING."""
        try:
            yield
        except BaseException as exc:
            self.tracker.close(run_status_for(exc))
            raise

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_uri(self) -> str:
        """``<out>/checkpoint.pt``."""
        return storage.join(self.out, CHECKPOINT_NAME)

    @property
    def config_uri(self) -> str:
        """``<out>/config.yaml``, the resolved config (written by :meth:`on_train_split`)."""
        return storage.join(self.out, "config.yaml")

    @property
    def metrics_log_uri(self) -> str:
        """``<out>/metrics.jsonl``."""
        return storage.join(self.out, METRICS_LOG)

    def _load_checkpoint(self) -> tuple[dict[str, Any], str] | None:
        """The newest loadable checkpoint (and its URI): ``checkpoint.pt``, else the previous.

        Raises:
            NoReadableCheckpointError: checkpoints exist but none can be read (names each
                file, what is wrong with it, and ``--no-resume``).
        """
        current, previous = self.checkpoint_uri, storage.join(self.out, PREVIOUS_CHECKPOINT_NAME)
        failures: list[UnreadableArtifactError] = []
        for uri in (current, previous):
            if not storage.exists(uri):
                continue
            try:
                state = load_artifact(uri, map_location="cpu")
            except UnreadableArtifactError as exc:
                failures.append(exc)
                continue
            for bad in failures:
                log.warning("%s is %s; trying the previous checkpoint", bad.uri, bad.diagnosis)
            return state, uri
        if failures:
            listed = "; ".join(f"{f.uri} is {f.diagnosis}" for f in failures)
            raise NoReadableCheckpointError(
                f"{self.proc.name} cannot resume from {self.out}: no checkpoint there can be read"
                f" ({listed}). Fix: start over with --no-resume (or delete those files), or "
                "restore a good copy of a checkpoint"
            )
        return None

    def _resume(self) -> None:
        found = self._load_checkpoint()
        if found is None:
            return
        state, uri = found
        check_world_size(state, self.ctx.world_size, uri)
        self.proc.load_state_dict(state)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.consumed = int(state["samples_consumed"][self.ctx.rank])
        restore_rng(state["rng"][self.ctx.rank], *self.proc.rng_generators())
        self.resumed_from = self.step
        log.info(
            "resuming %s from %s: step %d (epoch %d, sample %d)",
            self.proc.name,
            uri,
            self.step,
            self.epoch,
            self.consumed,
        )

    def _continue_log(self) -> None:
        """A resumed run's metrics log continues the interrupted run's (rank 0)."""
        local = self.tracker.log_path
        previous = storage.join(self.out, METRICS_LOG)
        if not (self.ctx.is_main and local is not None and storage.exists(previous)):
            return
        mine = local.read_text() if local.exists() else ""  # what this run logged already
        storage.download_file(previous, local)
        if mine:
            with open(local, "a") as fh:
                fh.write(mine)

    def save(self) -> None:
        """Checkpoint now (all ranks call it; rank 0 writes). Refuses after a non-finite loss."""
        self.guard.check()  # never checkpoint weights that saw a NaN
        rng = capture_rng(*self.proc.rng_generators())
        positions: list[Any] = [self.consumed]
        rngs: list[Any] = [rng]
        if self.ctx.initialised:
            import torch.distributed as dist

            positions = [None] * self.ctx.world_size
            rngs = [None] * self.ctx.world_size
            dist.all_gather_object(positions, self.consumed)
            dist.all_gather_object(rngs, rng)
        if not self.ctx.is_main:
            return
        state = {
            **self.proc.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "samples_consumed": positions,
            "rng": rngs,
            "config": self.config,
        }
        if storage.exists(self.checkpoint_uri):
            # Kept in case the new one is damaged later (a bad disk, a partial copy).
            storage.copy(self.checkpoint_uri, storage.join(self.out, PREVIOUS_CHECKPOINT_NAME))
        save_artifact(self.checkpoint_uri, state)
        self.proc.after_checkpoint()

    # -- logging -------------------------------------------------------------------------
    def _accumulate(self, terms: Mapping[str, Tensor | None]) -> None:
        for name, value in terms.items():
            if value is None:
                continue
            if name in self._sums:
                self._sums[name] += value.detach().float()
            else:
                self._sums[name] = value.detach().float().clone()
            self._counts[name] = self._counts.get(name, 0) + 1

    def _interval_means(self) -> dict[str, float]:
        means = {k: float(v) / self._counts[k] for k, v in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return means

    def upload_log(self) -> None:
        """Copy the metrics log to ``<out>/metrics.jsonl`` (rank 0)."""
        if self.ctx.is_main and self.tracker.log_path is not None:
            storage.upload_file(self.tracker.log_path, storage.join(self.out, METRICS_LOG))

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> LoopResult:
        """Train until the schedule is done; returns where it stopped.

        A failure or an interrupt ends the step's MLflow run (FAILED, KILLED) and is raised.

        Raises:
            NonFiniteLossError: a loss turned NaN/Inf (names the first bad step and terms).
            ValueError: the train split has fewer samples than one batch per rank.
        """
        with self._ending_run_on_failure():
            return self._run()

    def _run(self) -> LoopResult:
        sched, ctx = self.schedule, self.ctx
        total: int | None = None
        per_epoch = 0
        figures: list[dict[str, float]] = []
        progress: Progress | None = None
        mid_epoch = False
        try:
            while self.epoch < sched.epochs and (total is None or self.step < total):
                loader = self.make_loader(self.epoch, self.consumed)
                if total is None:
                    per_epoch = loader.samples_per_epoch // sched.batch_size
                    if per_epoch == 0:
                        raise ValueError(
                            f"{self.proc.name}: the train split has fewer samples than "
                            f"batch_size={sched.batch_size} per rank. Fix: lower "
                            f"{self.proc.name}.batch_size"
                        )
                    total = per_epoch * sched.epochs
                    if sched.max_steps:
                        total = min(total, sched.max_steps)
                    progress = Progress(
                        self.proc.name,
                        total,
                        self.step,
                        sched.batch_size * ctx.world_size,
                        enabled=ctx.is_main,
                    )
                    if self.step >= total:  # resumed from the last checkpoint of a done run
                        break
                self.proc.set_epoch(self.epoch)
                self._run_epoch(loader, total, progress)
                if self.consumed >= per_epoch * sched.batch_size:  # the epoch is complete
                    self.guard.check()  # a diverged model would fail later, misleadingly
                    done = self.proc.end_epoch(self.epoch, self.step)
                    figures.append(done)
                    if done and ctx.is_main:
                        self.tracker.log_metrics(done, step=self.step)
                    self.epoch += 1
                    self.consumed = 0
                    self.save()
                    self.upload_log()
                else:  # max_steps inside the epoch
                    mid_epoch = True
                    self.save()
                    break
            self.guard.check()
            if progress is not None and total is not None:
                progress.update(self.step, self.epoch, sched.epochs, {}, final=True)
        finally:
            if progress is not None:
                progress.close()
        return LoopResult(self.step, self.epoch, self.resumed_from, mid_epoch, figures)

    def _run_epoch(self, loader: Iterable[Any], total: int, progress: Progress | None) -> None:
        batches = iter_keeping_rng(loader)
        while self.step < total:
            with record_function("fa.loader_wait"):
                batch = next(batches, None)
            if batch is None:
                return
            self.advance(batch, total, progress)

    def advance(
        self, batch: Any, total: int | None = None, progress: Progress | None = None
    ) -> None:
        """One step on ``batch`` with the loop's bookkeeping (guard, logs, checkpoints).

        What :meth:`run` does per batch; ``bench/throughput.py`` calls it to time the
        project's training step as it runs.

        Args:
            batch: a loader batch (images first).
            total: the last step (logged whatever the interval), if known.
            progress: where progress lines go (rank 0), if anywhere.
        """
        sched = self.schedule
        self.step += 1
        with record_function("fa.train_step"):
            terms = self.proc.train_step(batch, self.step)
        self.consumed += len(batch[0])
        with record_function("fa.guard_and_log"):
            self.guard.observe(self.step, *(terms.get(name) for name in self.proc.terms))
            self._accumulate(terms)
            if self.step % sched.log_every == 0 or self.step == total:
                self.guard.check()
                means = self._interval_means()
                if self.ctx.is_main:
                    figures = {**means, **self.proc.log_extras()}
                    if progress is not None:
                        figures["images_per_s"] = progress.rate(self.step)
                        progress.update(self.step, self.epoch, sched.epochs, figures)
                    self.tracker.log_metrics(figures, step=self.step)
        if self.step % sched.checkpoint_every == 0:
            self.save()


def local_workdir(prefix: str) -> Path:
    """A fresh local folder for a step's scratch files (its metrics log, sample grids)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
