"""The exported generator (``generator.pt``): its format, how it is written and loaded.

A plain dict saved with :func:`fashion_attr.checkpoint.save_artifact` and loaded
with ``weights_only=True``: ``format`` (:data:`GENERATOR_FORMAT`), ``spec`` (the
:class:`~fashion_attr.gan.networks.MRGANSpec`), ``state_dict``, the condition
layout (``category_names``, ``attribute_names``), ``dataset_version``,
``config`` and ``steps``. ``train_gan`` writes it; Deact (``train_classifier``)
and the pipeline's ``reuse_generator`` read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fashion_attr.checkpoint import load_artifact
from fashion_attr.gan.networks import MRGANSpec, MRGenerator

__all__ = ["GENERATOR_FORMAT", "generator_blob", "load_generator"]

GENERATOR_FORMAT = "fashion_attr.generator/v1"


def generator_blob(
    generator: nn.Module,
    spec: MRGANSpec,
    *,
    category_names: Sequence[str],
    attribute_names: Sequence[str],
    dataset_version: str,
    config: Mapping[str, Any],
    steps: int,
) -> dict[str, Any]:
    """The export of ``generator`` (weights copied to the CPU)."""
    return {
        "format": GENERATOR_FORMAT,
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
        "category_names": list(category_names),
        "attribute_names": list(attribute_names),
        "dataset_version": dataset_version,
        "config": dict(config),
        "steps": steps,
    }


def load_generator(
    uri: str, device: str | torch.device = "cpu"
) -> tuple[MRGenerator, dict[str, Any]]:
    """Load an exported generator (``weights_only``) and its metadata.

    Returns:
        ``(generator in eval mode, metadata)``; metadata holds ``spec``,
        ``category_names`` and ``attribute_names`` (the condition layout).

    Raises:
        FileNotFoundError: ``uri`` does not exist.
        ValueError: the file is truncated or not a generator artifact of this project.
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
