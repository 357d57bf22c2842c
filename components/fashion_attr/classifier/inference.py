"""Batch inference of the classifier: loader batches in, metric accumulators fed.

:func:`prepare_images` turns a uint8 loader batch into the normalised float input
the network expects (on the device, at its size); :func:`predict_split` scores a
whole split for validation (``train_classifier``) and for the test report
(``evaluate``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashion_attr.data.loader import normalize_on_device
from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics
from fashion_attr.runtime import autocast

__all__ = ["predict_split", "prepare_images"]


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
