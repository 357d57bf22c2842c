"""Pipeline parameters as the KFP UI and API give them, turned into step inputs.

The KFP UI rejects empty defaults, so the pipeline uses ``"none"`` for "not
set"; overrides are one string (a JSON list or comma-separated ``key=value``);
lists of names are comma-separated. ``pipelines.run_local``, the KFP adapter
and the preflight checks read parameters through these functions.
"""

from __future__ import annotations

import json
from typing import Any

from fashion_attr.config import T, load_config

__all__ = ["config", "names", "optional", "overrides"]


def optional(value: Any) -> Any:
    """``"none"``/``""``/``"null"`` (the KFP UI's "unset") -> None; other values unchanged."""
    if not isinstance(value, str):
        return value
    return None if value.strip().lower() in ("", "none", "null") else value.strip()


def overrides(text: str | None) -> list[str]:
    """Overrides as a JSON list (``'["lr=0.1"]'``) or comma/newline-separated ``k=v``."""
    text = optional(text)
    if not text:
        return []
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"overrides {text!r} must be a JSON list of 'key=value' strings")
        return items
    return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]


def names(text: str) -> list[str]:
    """A comma-separated list parameter (gate metrics)."""
    return [g.strip() for g in text.split(",") if g.strip()]


def config(model: type[T], preset: str, override_text: str = "none", **extra: Any) -> T:
    """A step's config from the pipeline's ``preset`` and overrides parameters."""
    return load_config(
        model, preset=optional(preset), overrides=overrides(override_text), extra=extra
    )
