"""Checkpoints and exported artifacts: atomic writes, ``weights_only`` loads.

A training checkpoint holds everything needed to continue exactly where a
preempted run stopped: model, optimizer, scheduler, step, loader position,
hard-label memory and every RNG state. It is one object written atomically
(local: temp file + rename; S3: a single PutObject), so a process killed while
writing leaves the previous checkpoint intact.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint or model
file is data, never code. A crafted pickle that tries to run code is refused
with :class:`UnsafeArtifactError`.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

import torch

from fashion_attr import storage

__all__ = [
    "CHECKPOINT_NAME",
    "CorruptArtifactError",
    "UnsafeArtifactError",
    "capture_rng",
    "check_world_size",
    "load_artifact",
    "restore_rng",
    "save_artifact",
]

CHECKPOINT_NAME = "checkpoint.pt"


class UnsafeArtifactError(RuntimeError):
    """A file holds more than tensors and plain containers (refused by weights_only)."""


class CorruptArtifactError(ValueError):
    """A file is truncated or not a torch archive at all (a killed copy, a wrong file)."""


def save_artifact(uri: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Serialise ``obj`` (tensors, numbers, strings, lists, dicts) atomically to ``uri``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load_artifact(uri: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Load an object saved by :func:`save_artifact`, refusing anything but plain data.

    Raises:
        FileNotFoundError: if ``uri`` does not exist.
        CorruptArtifactError: if the file is truncated or not a torch archive.
        UnsafeArtifactError: if the file holds objects that weights_only refuses.
    """
    data = storage.read_bytes(uri)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CorruptArtifactError(
            f"{uri}: the file is truncated or corrupt ({len(data)} bytes; torch.load said: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Fix: restore "
            "it from a good copy, or write it again (rerun the step that produced it)"
        ) from None
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # e.g. "invalid load key": not a torch file
            raise CorruptArtifactError(
                f"{uri}: not a torch file ({len(data)} bytes; {str(exc).splitlines()[0]}). "
                "Fix: pass a file written by this pipeline"
            ) from None
        raise UnsafeArtifactError(
            f"{uri}: refused to load: it holds objects other than tensors and plain containers "
            f"(torch.load weights_only=True said: {str(exc).splitlines()[0]}). Fix: only load "
            "artifacts written by this pipeline; re-export the model from its checkpoint"
        ) from exc


def check_world_size(state: dict[str, Any], world_size: int, uri: str) -> None:
    """Refuse to resume a checkpoint written by a run with another number of ranks.

    Loader positions and RNG states are saved per rank; with another world size
    they cannot be mapped onto this run's ranks, and continuing would not be exact.

    Raises:
        ValueError: naming both world sizes and the fix.
    """
    saved = len(state.get("samples_consumed", []))
    if saved != world_size:
        raise ValueError(
            f"{uri} was written by a run with {saved} process(es); this run has {world_size}. "
            f"Fix: resume with the same number of processes (torchrun --nproc_per_node {saved}), "
            "or start over with --no-resume or a fresh output URI"
        )


def capture_rng(*generators: torch.Generator) -> dict[str, Any]:
    """Snapshot the global torch RNGs (CPU, and CUDA where present) plus given generators."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = [g.get_state() for g in generators]
    return state


def restore_rng(state: dict[str, Any], *generators: torch.Generator) -> None:
    """Restore what :func:`capture_rng` captured (same generators, same order)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    saved = state.get("generators", [])
    if len(saved) != len(generators):
        raise ValueError(
            f"checkpoint holds {len(saved)} generator states, the run has {len(generators)}: "
            "the checkpoint was written by a different configuration; use a fresh output URI"
        )
    for gen, s in zip(generators, saved, strict=True):
        gen.set_state(s.cpu())
