"""The exported classifier (``model.pt``): its format, how it is written, checked and loaded.

One home for the artifact that ``train_classifier`` exports and that
``evaluate``, ``register`` and the served model (:mod:`fashion_attr.registry.pyfunc`)
read. It is a plain dict saved with :func:`fashion_attr.checkpoint.save_artifact`
and loaded with ``weights_only=True``:

``format`` (:data:`MODEL_FORMAT`), ``arch``, ``num_attributes``, ``num_categories``,
``in_channels``, ``state_dict``, ``category_names``, ``attribute_names``,
``attribute_groups``, ``train_pos_counts``, ``preprocessing`` (``image_size``,
``channels``, ``mean``, ``std``, ``resize``), ``dataset_version``, ``config``,
``val_metrics``, ``step``.

This module imports only torch and the model definitions, so the serving process
stays free of the training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from fashion_attr.checkpoint import load_artifact
from fashion_attr.classifier.model import AttributeClassifier, ClassifierArch, build_classifier

__all__ = [
    "MODEL_FORMAT",
    "REQUIRED_FIELDS",
    "check_model_blob",
    "export_blob",
    "load_exported_model",
    "model_from_blob",
    "read_model",
]

MODEL_FORMAT = "fashion_attr.classifier/v1"
#: Fields every export holds (besides ``format``); older or foreign files lacking one are refused.
REQUIRED_FIELDS = (
    "arch",
    "num_attributes",
    "num_categories",
    "in_channels",
    "state_dict",
    "category_names",
    "attribute_names",
    "attribute_groups",
    "preprocessing",
)


def export_blob(
    model: nn.Module,
    *,
    arch: str,
    config: Mapping[str, Any],
    image_size: int,
    category_names: list[str],
    attribute_names: list[str],
    attribute_groups: list[int],
    train_pos_counts: list[int],
    dataset_version: str,
    val_metrics: Mapping[str, float],
    step: int,
) -> dict[str, Any]:
    """The export of ``model`` (unwrapped from DDP/compile), weights copied to the CPU."""
    base = getattr(model, "_orig_mod", model)
    base = getattr(base, "module", base)
    spec = cast(AttributeClassifier, base).expected_input()
    return {
        "format": MODEL_FORMAT,
        "arch": arch,
        "num_attributes": len(attribute_names),
        "num_categories": len(category_names),
        "in_channels": spec["channels"],
        "state_dict": {k: v.detach().cpu().clone() for k, v in base.state_dict().items()},
        "category_names": list(category_names),
        "attribute_names": list(attribute_names),
        "attribute_groups": [int(g) for g in attribute_groups],
        "train_pos_counts": [int(c) for c in train_pos_counts],
        "preprocessing": {
            "image_size": image_size,
            "channels": spec["channels"],
            "mean": list(spec["mean"]),
            "std": list(spec["std"]),
            "resize": "bilinear, whole image (crop to the garment box first when known)",
        },
        "dataset_version": dataset_version,
        "config": dict(config),
        "val_metrics": {k: float(v) for k, v in val_metrics.items()},
        "step": step,
    }


def check_model_blob(blob: Any, source: str) -> Mapping[str, Any]:
    """Refuse anything that is not a complete classifier export of this project.

    Raises:
        ValueError: naming ``source``, what is wrong and the fix.
    """
    if not isinstance(blob, Mapping) or blob.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{source} is not a classifier artifact ({MODEL_FORMAT}). Fix: pass the model.pt "
            "written by train_classifier"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in blob]
    if missing:
        raise ValueError(
            f"{source}: classifier artifact lacks field(s) {missing}. Fix: re-export the model "
            "with this version of train_classifier"
        )
    return blob


def read_model(uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a ``model.pt`` (weights included).

    Raises:
        FileNotFoundError: ``uri`` does not exist.
        ValueError: the file is truncated, not a torch file, or not a classifier export
            (names the file and the fix).
    """
    blob = load_artifact(uri, map_location=map_location)
    return dict(check_model_blob(blob, uri))


def model_from_blob(blob: Mapping[str, Any]) -> nn.Module:
    """Build the network an export describes and load its weights (on the CPU, eval mode)."""
    model = build_classifier(
        cast(ClassifierArch, str(blob["arch"])),  # build_classifier rejects another
        int(blob["num_attributes"]),
        int(blob["num_categories"]),
        in_channels=int(blob["in_channels"]),
        pretrained=None,
    )
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def load_exported_model(
    uri: str, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model exported by ``train_classifier``.

    Returns:
        ``(model in eval mode on device, metadata without the weights)``.

    Raises:
        ValueError: if the file is not a classifier artifact of this project.
    """
    blob = read_model(uri)
    model = model_from_blob(blob).to(device)
    return model, {k: v for k, v in blob.items() if k != "state_dict"}
