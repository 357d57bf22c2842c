"""Checkpoints and exported artifacts: atomic writes, ``weights_only`` loads.

A training checkpoint holds everything needed to continue exactly where a
preempted run stopped: model, optimizer, scheduler, step, loader position,
hard-label memory and every RNG state. It is one object written atomically
(local: temp file + rename; S3: a single PutObject), so a process killed while
writing leaves the previous checkpoint intact.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint or model
file is data, never code. A file that does not load is diagnosed from its bytes, not
from torch's message (which suggests ``weights_only=False``: never do that with a file
you did not write): :class:`CorruptArtifactError` for an empty or truncated file, one
that is not a torch file, or a damaged archive (a checksum mismatch);
:class:`UnsafeArtifactError` for a file holding more than tensors and plain containers
(a crafted pickle that would run code), refused for safety and never loaded. Both are
user errors (exit 2): the fix is another file, not a retry.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from typing import Any

import torch

from fashion_attr import storage

__all__ = [
    "CHECKPOINT_NAME",
    "CorruptArtifactError",
    "NoReadableCheckpointError",
    "UnreadableArtifactError",
    "UnsafeArtifactError",
    "capture_rng",
    "check_world_size",
    "diagnose_artifact",
    "load_artifact",
    "restore_rng",
    "save_artifact",
]

CHECKPOINT_NAME = "checkpoint.pt"


class UnreadableArtifactError(ValueError):
    """A file that does not load (base of the two kinds below; a user error, exit 2).

    Attributes:
        uri: the file.
        diagnosis: what is wrong with it, in a few words (no fix, no file name).
    """

    def __init__(self, message: str, *, uri: str = "", diagnosis: str = "") -> None:
        super().__init__(message)
        self.uri = uri
        self.diagnosis = diagnosis or message


class CorruptArtifactError(UnreadableArtifactError):
    """A file is empty, truncated, damaged or not a torch archive (a killed copy, a wrong file)."""


class UnsafeArtifactError(UnreadableArtifactError):
    """A file holds more than tensors and plain containers: refused for safety, never loaded."""


class NoReadableCheckpointError(ValueError):
    """No checkpoint of an output folder can be read: the run cannot resume (exit 2)."""


_ZIP_MAGIC = b"PK\x03\x04"
# A legacy (non-zip) torch.save file starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_CALLS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _pickle_calls(data: bytes) -> list[str] | None:
    """The code-calling opcodes and globals of the pickle ``data`` (None: not a pickle).

    Read with :mod:`pickletools` (which only parses: nothing is executed).
    """
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]))
            elif op.name in _CALLS:
                found.append(op.name)
    except Exception:  # not a (whole) pickle
        return None
    return found


def _safe_summary(text: str) -> str:
    """A global torch named in its refusal, never its advice (``weights_only=False``)."""
    m = re.search(r"GLOBAL ([\w.]+)", text)
    return m.group(1) if m else ""


def diagnose_artifact(data: bytes, exc: BaseException) -> tuple[type[UnreadableArtifactError], str]:
    """Why ``data`` did not load with ``weights_only=True`` (``exc``): the error type and a phrase.

    Judged from the bytes: empty; a zip archive cut short (no central directory) or with a
    member failing its checksum; a zip without ``data.pkl`` or bytes that are no pickle
    (not a torch file); else content ``weights_only`` refuses (unsafe: the global it names).
    """
    size = f"{len(data)} bytes"
    if not data:
        return CorruptArtifactError, "empty (0 bytes): a write or copy cut short"
    if data.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = zf.namelist()
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
            return CorruptArtifactError, (
                f"truncated ({size}; the archive ends before its index: a write or copy cut short)"
            )
        except Exception as err:  # zlib.error and the like: a damaged member
            return CorruptArtifactError, f"damaged ({size}; {type(err).__name__})"
        if bad is not None:
            return CorruptArtifactError, f"damaged ({size}; {bad} fails its checksum)"
        if not any(n.endswith("data.pkl") for n in names):
            return (
                CorruptArtifactError,
                f"not a torch file ({size}; a zip archive without data.pkl)",
            )
    elif not data.startswith(_LEGACY_MAGIC):
        calls = _pickle_calls(data)
        if calls is None:
            head = data[:8]
            return CorruptArtifactError, f"not a torch file ({size}, starting with {head!r})"
        if not calls:
            return CorruptArtifactError, f"not a torch file ({size}; a plain pickle)"
        named = [c for c in calls if "." in c]
        what = f"calls {named[0]}" if named else f"uses pickle opcode {calls[0]}"
        return UnsafeArtifactError, f"unsafe (a pickle that {what}: code, not data)"
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in text.lower():
        global_name = _safe_summary(text)
        what = f"it references {global_name}" if global_name else "it holds more than plain data"
        return UnsafeArtifactError, (
            f"unsafe ({what}: code, not data; a checkpoint holds only tensors, numbers, "
            "strings and containers)"
        )
    first = text.strip().splitlines()[0][:120] if text.strip() else type(exc).__name__
    return CorruptArtifactError, f"corrupt ({size}; {type(exc).__name__}: {first})"


def save_artifact(uri: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Serialise ``obj`` (tensors, numbers, strings, lists, dicts) atomically to ``uri``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load_artifact(uri: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Load an object saved by :func:`save_artifact`, refusing anything but plain data.

    Raises:
        FileNotFoundError: if ``uri`` does not exist.
        CorruptArtifactError: the file is empty, truncated, damaged or not a torch file.
        UnsafeArtifactError: the file holds objects that ``weights_only`` refuses (it is
            not loaded; the message never suggests loading it unsafely).
    """
    data = storage.read_bytes(uri)
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": noise about a file that is refused anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        kind, diagnosis = diagnose_artifact(data, exc)
        fix = (
            "only load artifacts written by this pipeline; delete this file, then rerun the "
            "step that writes it"
            if kind is UnsafeArtifactError
            else "restore it from a good copy, or write it again (rerun the step that produced it)"
        )
        verb = "refused to load (for safety)" if kind is UnsafeArtifactError else "unreadable"
        raise kind(
            f"{uri}: {verb}: {diagnosis}. Fix: {fix}", uri=str(uri), diagnosis=diagnosis
        ) from None


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
    # torch leaves torch.cuda.is_initialized unannotated
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
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
