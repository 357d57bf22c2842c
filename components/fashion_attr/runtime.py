"""Device, precision and distributed set-up shared by the training steps."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "FiniteGuard",
    "GpuUnavailableError",
    "NonFiniteLossError",
    "autocast",
    "init_distributed",
    "iter_keeping_rng",
    "require_gpus",
    "resolve_device",
    "use_bf16",
]

_T = TypeVar("_T")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Map a config device (``auto``/``cpu``/``cuda``) to a torch device.

    Raises:
        RuntimeError: if ``cuda`` is asked for and no GPU is visible.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "device=cuda but no CUDA GPU is visible. Fix: run on a GPU node (the pipeline's "
            "gpu node pool) or set device=auto/cpu"
        )
    return torch.device("cuda", local_rank)


class GpuUnavailableError(RuntimeError):
    """GPUs were asked for and CUDA cannot use them (a fault of the node: exit 3)."""


def require_gpus(what: str, wanted: int) -> None:
    """Fail loudly when ``wanted`` GPUs were requested but CUDA cannot use them.

    Every GPU task calls it before any work (training in a pod or a cluster job's pods,
    evaluation, registration): nothing trains or scores silently on the CPU instead.

    Args:
        what: the step or task, for the message.
        wanted: GPUs the task asked for (0: nothing to check).

    Raises:
        GpuUnavailableError: naming the task, what CUDA sees and the likely cause.
    """
    if wanted < 1:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available >= wanted:
        return
    why = ""
    try:
        torch.cuda.init()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    except Exception as exc:  # the driver's own words: too old, no device, ...
        why = f" CUDA says: {str(exc).splitlines()[0]}."
    raise GpuUnavailableError(
        f"{what} asked for {wanted} GPU(s) but CUDA can use {available}.{why} It will not "
        f"run on the CPU instead. Fix: run on a GPU node whose NVIDIA driver supports "
        f"CUDA {torch.version.cuda or '?'} (torch {torch.__version__}), or compile the "
        "pipeline with 0 GPUs per step for a CPU run"
    )


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: on by default on CUDA, off on CPU (where it is slow)."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda"


def iter_keeping_rng(iterable: Iterable[_T]) -> Iterator[_T]:
    """``iter(iterable)`` without drawing from the global CPU torch RNG.

    Starting a ``DataLoader`` iterator draws its workers' base seed from the
    global RNG. A run resumed mid-epoch restores the RNG state its checkpoint
    captured (after that epoch's iterator had drawn) and then starts a new
    iterator, which would draw again: every later use of the global RNG
    (dropout) would differ from the uninterrupted run. Our loaders seed their
    augmentations per sample (seed, epoch, index), so the workers' base seed
    carries no randomness the run depends on; the global state is put back.

    Args:
        iterable: typically a :class:`~fashion_attr.data.loader.ShardLoader`.

    Returns:
        The iterator.
    """
    state = torch.get_rng_state()
    try:
        return iter(iterable)
    finally:
        torch.set_rng_state(state)


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast on ``device`` when enabled; a no-op otherwise."""
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


@dataclass
class DistContext:
    """Where this process sits in a torchrun job (world size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this rank writes shared outputs (checkpoints, exports, logs)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for all ranks (no-op for one process)."""
        if self.initialised:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks in place (no-op for one process) and return it."""
        if self.initialised:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        """Tear down the process group if this context created it."""
        if self.initialised and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised = False


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, initialised=True)


class NonFiniteLossError(RuntimeError):
    """A loss turned NaN or Inf; training stopped and nothing was exported."""


def check_finite_weights(step_name: str, module: torch.nn.Module, step: int, fix: str) -> None:
    """Raise :class:`NonFiniteLossError` when a parameter of ``module`` is NaN or Inf.

    The guard sees the losses, which are computed *before* each update; an update that
    overflows the weights (a learning rate far too high) shows only in the next forward
    pass. This check runs where weights are read next (validation, export): one host sync.

    Args:
        step_name: the training step, for the message.
        module: the network to check.
        step: the last optimisation step, for the message.
        fix: what to try, for the message.
    """
    params = list(module.named_parameters())
    if not params:
        return
    # One host sync for the whole network; the per-parameter walk runs only on failure.
    if bool(torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).all()):
        return
    for name, param in params:
        if not bool(torch.isfinite(param).all()):
            raise NonFiniteLossError(
                f"{step_name}: the weights turned non-finite by step {step} ({name}), after an "
                "update the logged losses did not show. Training stopped; nothing was exported "
                f"and the last good checkpoint is kept. Fix: {fix}"
            )


class FiniteGuard:
    """Remembers the first step whose loss terms were not finite, without a host sync per step.

    Every step is observed on the device (``torch.where``, no ``.item()``);
    :meth:`check` reads the flag (at each log, checkpoint and epoch end, before
    anything is written) and raises naming that first bad step and its terms, so
    a NaN between two checks is never missed and never checkpointed.

    Args:
        step_name: the training step, for the message (``train_gan``).
        names: the loss terms observed each step, in order.
        fix: what to try, for the message.
        device: where the losses live.
    """

    def __init__(self, step_name: str, names: tuple[str, ...], fix: str, device: torch.device):
        self.step_name = step_name
        self.names = names
        self.fix = fix
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.terms = torch.zeros(len(names), device=device)
        self.seen: set[str] = set()

    def observe(self, step: int, *terms: torch.Tensor | None) -> None:
        """Record this step's terms (None for a term not computed this step)."""
        ref = next(t for t in terms if t is not None)
        vals = []
        for name, t in zip(self.names, terms, strict=True):
            if t is not None:
                self.seen.add(name)
            vals.append((t if t is not None else torch.zeros_like(ref)).float())
        stacked = torch.stack(vals)
        bad = ~torch.isfinite(stacked).all() & (self.first_step < 0)
        self.first_step = torch.where(bad, torch.full_like(self.first_step, step), self.first_step)
        self.terms = torch.where(bad, stacked, self.terms)

    def check(self) -> None:
        """Raise :class:`NonFiniteLossError` if any observed step was not finite."""
        step = int(self.first_step)
        if step < 0:
            return
        values = dict(zip(self.names, (float(v) for v in self.terms.cpu()), strict=True))
        shown = ", ".join(f"{k}={v}" for k, v in values.items() if k in self.seen)
        raise NonFiniteLossError(
            f"{self.step_name}: non-finite loss at step {step}: {shown}. Training stopped; "
            f"nothing was exported and the last good checkpoint is kept. Fix: {self.fix}"
        )
