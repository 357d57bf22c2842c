"""``train_gan``'s sample-quality probe: FD and diversity of its generator, plain and perturbed.

The reference set is up to ``quality.samples`` images of the version's ``val`` split
(images the GAN never trained on; the ``train`` split when there is no ``val``), at the
generator's resolution. Generated images use the reference images' own conditions, so
both sets follow the same label distribution (the training set's, up to sampling), and
a fixed noise seed, so two measurements differ only by the generator. Each measurement
logs, with ``<key>`` = ``fid`` (Inception-v3 from a local weights file) or
``fd_classifier`` (see :mod:`fashion_attr.evaluation.gan_quality`):

- ``<key>``: the exported generator's samples against the reference;
- ``<key>_perturbed``: the "bad" generator's (``sigma_p``, what Deact feeds the classifier);
- ``<key>_real``: as many real *training* images against the reference: the floor a
  perfect generator would reach with this many images;
- ``diversity``, ``diversity_perturbed``, ``diversity_real``: within-category spread of
  the features (a collapsed generator has 0).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fashion_attr.config import GanQualityConfig
from fashion_attr.data.shards import load_manifest
from fashion_attr.evaluation.gan_quality import (
    FeatureSpace,
    diversity,
    frechet_distance,
    inception_space,
    sample_features,
)
from fashion_attr.gan.networks import MRGenerator, make_condition, to_unit_range

__all__ = ["FeatureSpaceFactory", "SampleQuality"]

#: Builds the FD feature space from real training images ``(images, categories,
#: attributes or None)`` and the keywords ``size``, ``steps``, ``seed``, ``device``
#: (:func:`fashion_attr.classifier.feature_space.classifier_space`).
FeatureSpaceFactory = Callable[..., FeatureSpace]

log = logging.getLogger(__name__)


def _split_images(
    data: str, split: str, limit: int, size: int, cache_dir: Any, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``limit`` images of a split in [-1, 1] at ``size``, with their labels."""
    from fashion_attr.data.loader import make_loader

    images, cats, attrs = [], [], []
    count = 0
    loader = make_loader(data, split, batch_size=128, cache_dir=cache_dir, train=False)
    for batch in loader:
        x, targets, known, category = batch
        images.append(to_unit_range(x, device, size, channels_last=False))
        attrs.append((targets * known.to(targets.dtype)).to(device))
        cats.append(category.to(device))
        count += x.shape[0]
        if count >= limit:
            break
    x = torch.cat(images)[:limit]
    return x, torch.cat(cats)[:limit], torch.cat(attrs)[:limit]


class SampleQuality:
    """Measures a generator against a dataset version; the feature space is built once.

    Args:
        cfg: the ``quality`` section of the GAN config.
        data: the dataset version URI.
        image_size: the generator's top resolution.
        num_categories: C of the condition.
        sigma_p: the perturbation of the "bad" generator.
        seed: seeds the feature classifier and the noise.
        device: where to compute.
        cache_dir: the local shard cache.
        feature_space: builds the feature space from real training images when no
            Inception weights file is configured (the ``train_gan`` step passes
            :func:`~fashion_attr.classifier.feature_space.classifier_space`).
    """

    def __init__(
        self,
        cfg: GanQualityConfig,
        data: str,
        *,
        image_size: int,
        num_categories: int,
        sigma_p: float,
        seed: int,
        device: torch.device,
        cache_dir: Any = None,
        feature_space: FeatureSpaceFactory | None = None,
    ) -> None:
        self.cfg, self.data, self.size = cfg, data, image_size
        self.num_categories, self.sigma_p, self.seed = num_categories, sigma_p, seed
        self.device, self.cache_dir = device, cache_dir
        self.feature_space = feature_space
        self._ready = False
        self.space: FeatureSpace | None = None

    def _prepare(self) -> None:
        counts = load_manifest(self.data).counts
        ref_split = "val" if counts.get("val", 0) >= 2 else "train"
        n = self.cfg.samples
        ref, ref_cat, ref_attr = _split_images(
            self.data, ref_split, n, self.size, self.cache_dir, self.device
        )
        # Real training images: the floor, and what the feature classifier learns from.
        train, train_cat, train_attr = _split_images(
            self.data, "train", max(n, 2000), self.size, self.cache_dir, self.device
        )
        if self.cfg.inception_weights:
            self.space = inception_space(self.cfg.inception_weights, self.device)
        elif self.feature_space is None:
            raise ValueError(
                "the sample-quality probe has no feature space: no quality.inception_weights "
                "and no classifier feature space was given. Fix: run it through the train_gan "
                "step, or set quality.enabled=false"
            )
        else:
            self.space = self.feature_space(
                train,
                train_cat,
                train_attr if train_attr.shape[1] else None,
                size=self.cfg.feature_size,
                steps=self.cfg.feature_steps,
                seed=self.seed,
                device=self.device,
            )
        attrs = ref_attr if ref_attr.shape[1] else None
        self.cond = make_condition(ref_cat, attrs, self.num_categories)
        self.labels = ref_cat.cpu().numpy()
        self.ref_features = sample_features(self.space, ref)
        real = sample_features(self.space, train[: len(ref)])
        self.floor = {
            f"{self.space.key}_real": frechet_distance(self.ref_features, real),
            "diversity_real": diversity(real, train_cat[: len(ref)].cpu().numpy()),
        }
        self.ref_split = ref_split
        self._ready = True

    @torch.no_grad()
    def _generate(self, g: MRGenerator, sigma: float) -> Tensor:
        was_training = g.training
        g.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 4242)
        out = [
            g.sample(self.cond[i : i + 256], perturb_sigma=sigma, generator=gen).float()
            for i in range(0, self.cond.shape[0], 256)
        ]
        g.train(was_training)
        return torch.cat(out)

    def measure(self, g: MRGenerator) -> dict[str, float]:
        """FD and diversity of ``g`` (plain and perturbed) and of real images (the floor)."""
        start = time.monotonic()
        if not self._ready:
            self._prepare()
        assert self.space is not None
        out = dict(self.floor)
        for suffix, sigma in (("", 0.0), ("_perturbed", self.sigma_p)):
            feats = sample_features(self.space, self._generate(g, sigma))
            out[f"{self.space.key}{suffix}"] = frechet_distance(self.ref_features, feats)
            out[f"diversity{suffix}"] = diversity(feats, self.labels)
        # stderr, as the progress lines: the step's log shows it wherever it runs.
        shown = ", ".join(f"{k} {v:.3f}" for k, v in out.items() if np.isfinite(v))
        print(
            f"train_gan: sample quality vs {len(self.labels)} {self.ref_split} images "
            f"({time.monotonic() - start:.0f} s): {shown}",
            file=sys.stderr,
            flush=True,
        )
        log.debug("feature space: %s", self.space.description)
        return out
