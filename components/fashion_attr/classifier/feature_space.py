"""The classifier feature space of the GAN quality probe's Fréchet distance (``fd_classifier``).

Without a local Inception-v3 weights file, ``train_gan`` measures its samples in
the penultimate features of a small classifier trained here on the training split
(:mod:`fashion_attr.evaluation.gan_quality` holds the distance itself). It lives
with the classifiers because it builds one; the step hands it to the probe, so GAN
training never imports the classifier package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fashion_attr.classifier.model import ClassifierArch, build_classifier
from fashion_attr.evaluation.gan_quality import FeatureSpace

__all__ = ["classifier_space"]


def classifier_space(
    images: Tensor,
    categories: Tensor,
    attributes: Tensor | None = None,
    *,
    size: int = 64,
    steps: int = 300,
    batch: int = 64,
    seed: int = 0,
    device: torch.device | None = None,
) -> FeatureSpace:
    """Train a small classifier on real images; its penultimate features define the FD.

    TinyClassifier (128-d features) for colour images, LeNet-5 (84-d) for 28 px grey
    ones; category cross entropy plus, when given, attribute BCE; SGD 0.05, momentum 0.9,
    ``steps`` steps of ``batch`` images, seeded, so the same data gives the same space
    (a resumed ``train_gan`` measures in the same space).

    Args:
        images: real training images ``[n, C, H, W]`` in ``[-1, 1]``.
        categories: ``[n]`` category indices.
        attributes: ``[n, N]`` 0/1 attribute labels, or None.
        size: side the images are resized to for the features (colour images).
        steps: training steps.
        batch: images per step.
        seed: initialisation and batch order.
        device: where to train (default: the images' device).

    Returns:
        The feature space ``fd_classifier``.
    """
    device = device or images.device
    grey = images.shape[1] == 1
    side = images.shape[-1] if grey else min(size, images.shape[-1])
    n_attr = 0 if attributes is None else attributes.shape[1]
    n_cat = int(categories.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        arch: ClassifierArch = "lenet5" if grey and side == 28 else "tiny"
        net = build_classifier(arch, n_attr, n_cat, in_channels=images.shape[1]).to(device)

    def prep(x: Tensor) -> Tensor:
        x = x.to(device).float()
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="area")
        return x

    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=order)
        attr_logits, cat_logits = net(prep(images[idx]))
        loss = F.cross_entropy(cat_logits, categories[idx].to(device))
        if n_attr:
            assert attributes is not None  # n_attr > 0 only with attributes
            loss = loss + F.binary_cross_entropy_with_logits(
                attr_logits, attributes[idx].to(device).float()
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        opt.step()
    net.eval().requires_grad_(False)

    def extract(x: Tensor) -> Tensor:
        return net.features(prep(x))

    description = (
        f"penultimate features of a {arch} classifier trained {steps} steps on the training "
        f"split at {side} px (classifier FD, not FID)"
    )
    return FeatureSpace("fd_classifier", description, extract)
