"""The code version: the package version plus a digest of the code that actually runs.

``__version__`` alone does not change with every edit, and an image tag can be moved,
so a step's output identity and the registered model's lineage use
:func:`code_version`: ``<version>+<12 hex>``, the hex a SHA-256 over the package's
Python sources and presets (relative paths and bytes, in sorted order). The same code
gives the same digest on a laptop, in the image and on every node; any change to it
gives a new one, so an upgrade retrains instead of resuming an old checkpoint.
``FA_CODE_VERSION`` overrides it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from fashion_attr import __version__

__all__ = ["code_version", "source_digest"]

_PACKAGE = Path(__file__).resolve().parent
_SUFFIXES = (".py", ".yaml")


@functools.cache
def source_digest(root: str | None = None) -> str:
    """SHA-256 (hex) of the package's sources below ``root`` (default: this package)."""
    base = Path(root) if root else _PACKAGE
    digest = hashlib.sha256()
    files = sorted(
        p for p in base.rglob("*") if p.suffix in _SUFFIXES and "__pycache__" not in p.parts
    )
    for path in files:
        digest.update(path.relative_to(base).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_version() -> str:
    """``<package version>+<first 12 hex of the source digest>``, e.g. ``0.1.0+3f2a9c0d1e4b``.

    ``FA_CODE_VERSION`` replaces it when set: an operator forcing a retrain of identical
    inputs, or a test standing in for an upgrade.
    """
    return os.environ.get("FA_CODE_VERSION") or f"{__version__}+{source_digest()[:12]}"
