"""``train_gan``'s sample-quality probe: FD and diversity of its generator, plain and perturbed.

The reference is the version's held-out ``val`` split (the ``train`` split, which the
classifier feature space was trained on, only when there is no ``val``): images neither
the GAN nor the feature network ever trained on. Up to ``2 * quality.samples`` of them
(more with the paper's protocol) are turned into features once. Each of ``quality.draws``
draws then splits them at random into two disjoint sets ``A`` and ``B`` of
``m = min(quality.samples, pool // 2)`` images, and measures, in the same space:

- ``<key>_real``: ``FD(A, B)``, the real-vs-real floor: what a perfect generator would
  reach with ``m`` images (FD is biased upwards at small ``m``, so the floor has the
  generator's sample size);
- ``<key>``: ``FD(A, G(labels of B))``, the exported generator's ``m`` samples drawn with
  ``B``'s own conditions, so they replace ``B`` label for label;
- ``<key>_perturbed``: the same for the "bad" generator (``sigma_p``, what Deact feeds
  the classifier);

each reported as the mean over the draws with its standard deviation (``<name>_std``),
and the within-category diversity of the features (``diversity``,
``diversity_perturbed``, ``diversity_real``; a collapsed generator has 0). A generator is
ranked worse than another only when the gap exceeds the spreads (docs/method.md
section 4).

``<key>`` is ``fid`` (the TF FID Inception from a local weights file), ``fd_inception_tv``
(torchvision's Inception, not FID) or ``fd_classifier`` (see
:mod:`fashion_attr.evaluation.gan_quality`). With ``quality.paper_samples`` (the paper's
30,000) the probe also reports the paper's protocol: ``<key>_paper``, the FD of that many
generated images, labels drawn from the train prior, against the whole reference pool;
with ``quality.last_epochs`` (the paper's 10), ``<key>_paper_min`` is the smallest
``<key>_paper`` over the measurements at the ends of the last K epochs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from fashion_attr.config import GanQualityConfig
from fashion_attr.data.info import DatasetInfo
from fashion_attr.data.shards import load_manifest
from fashion_attr.evaluation.gan_quality import (
    FeatureSpace,
    diversity,
    frechet_distance,
    inception_space,
    sample_features,
)
from fashion_attr.gan.networks import MRGenerator, make_condition, to_unit_range

__all__ = ["FeatureSpaceFactory", "SampleQuality", "train_prior_conditions"]

#: Builds the FD feature space from real training images ``(images, categories,
#: attributes or None)`` and the keywords ``size``, ``steps``, ``seed``, ``device``
#: (:func:`fashion_attr.classifier.feature_space.classifier_space`).
FeatureSpaceFactory = Callable[..., FeatureSpace]

log = logging.getLogger(__name__)

_CHUNK = 256


def _batches(
    data: str, split: str, limit: int, size: int, cache_dir: Any, device: torch.device
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(images in [-1, 1] at size, categories, attribute positives)``, ``limit`` in all."""
    from fashion_attr.data.loader import make_loader

    count = 0
    loader = make_loader(data, split, batch_size=128, cache_dir=cache_dir, train=False)
    for batch in loader:
        x, targets, known, category = (cast(Tensor, part) for part in batch)
        take = min(x.shape[0], limit - count)
        if take <= 0:
            break
        images = to_unit_range(x[:take], device, size, channels_last=False)
        attrs = (targets[:take] * known[:take].to(targets.dtype)).to(device)
        yield images, category[:take].to(device), attrs
        count += take


def _split_images(
    data: str, split: str, limit: int, size: int, cache_dir: Any, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``limit`` images of a split in [-1, 1] at ``size``, with their labels."""
    parts = list(_batches(data, split, limit, size, cache_dir, device))
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def train_prior_conditions(
    info: DatasetInfo, n: int, generator: torch.Generator
) -> tuple[Tensor, Tensor | None]:
    """``n`` label sets drawn from the train prior (the paper's FID protocol, section 4.4).

    The category from the train category frequencies, each attribute independently with
    its train positive rate (the manifest keeps marginal counts, not the joint).

    Returns:
        ``(categories [n], attribute multi-hot [n, N] or None when N = 0)``.
    """
    cats = torch.multinomial(info.category_prior(), n, replacement=True, generator=generator)
    if info.num_attributes == 0:
        return cats, None
    prior = info.attribute_prior().clamp(0, 1)
    attrs = (torch.rand(n, info.num_attributes, generator=generator) < prior).float()
    return cats, attrs


class SampleQuality:
    """Measures a generator against a dataset version; the feature space is built once.

    Args:
        cfg: the ``quality`` section of the GAN config.
        data: the dataset version URI.
        image_size: the generator's top resolution.
        num_categories: C of the condition.
        sigma_p: the perturbation of the "bad" generator.
        seed: seeds the feature classifier, the draws and the noise.
        device: where to compute.
        cache_dir: the local shard cache.
        feature_space: builds the feature space from real training images when no
            Inception weights file is configured (the ``train_gan`` step passes
            :func:`~fashion_attr.classifier.feature_space.classifier_space`).
        total_epochs: the run's epochs, for ``quality.last_epochs``.
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
        total_epochs: int | None = None,
    ) -> None:
        self.cfg, self.data, self.size = cfg, data, image_size
        self.num_categories, self.sigma_p, self.seed = num_categories, sigma_p, seed
        self.device, self.cache_dir = device, cache_dir
        self.feature_space = feature_space
        self.total_epochs = total_epochs
        self._ready = False
        self.space: FeatureSpace | None = None
        self.paper_history: list[tuple[int | None, float]] = []

    def in_last_epochs(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` is one of the last ``quality.last_epochs`` of the run."""
        k, total = self.cfg.last_epochs, self.total_epochs
        return bool(k and total and epoch > total - k)

    def _space(self) -> FeatureSpace:
        if self.cfg.inception_weights:
            return inception_space(self.cfg.inception_weights, self.device, self.cfg.inception_kind)
        print(
            "train_gan: no FID: quality.inception_weights is not set (nothing is downloaded). "
            "Logging fd_classifier, a Fréchet distance in a small classifier's features that "
            "is not FID; set quality.inception_weights to a local TF FID Inception file for FID",
            file=sys.stderr,
            flush=True,
        )
        if self.feature_space is None:
            raise ValueError(
                "the sample-quality probe has no feature space: no quality.inception_weights "
                "and no classifier feature space was given. Fix: run it through the train_gan "
                "step, or set quality.enabled=false"
            )
        train, train_cat, train_attr = _split_images(
            self.data, "train", max(self.cfg.samples, 2000), self.size, self.cache_dir, self.device
        )
        return self.feature_space(
            train,
            train_cat,
            train_attr if train_attr.shape[1] else None,
            size=self.cfg.feature_size,
            steps=self.cfg.feature_steps,
            seed=self.seed,
            device=self.device,
        )

    def _prepare(self) -> None:
        counts = load_manifest(self.data).counts
        self.ref_split = "val" if counts.get("val", 0) >= 4 else "train"
        self.space = self._space()
        pool = max(2 * self.cfg.samples, self.cfg.paper_samples)
        feats, cats, attrs = [], [], []
        for images, cat, attr in _batches(
            self.data, self.ref_split, pool, self.size, self.cache_dir, self.device
        ):
            feats.append(sample_features(self.space, images))
            cats.append(cat)
            attrs.append(attr)
        self.ref_features = np.concatenate(feats)
        self.ref_cat, self.ref_attr = torch.cat(cats), torch.cat(attrs)
        self.m = min(self.cfg.samples, len(self.ref_features) // 2)
        if self.m < 2:
            raise ValueError(
                f"the sample-quality probe needs at least 4 {self.ref_split} images (two "
                f"disjoint sets of 2); the split has {len(self.ref_features)}. Fix: ingest more "
                "images or set quality.enabled=false"
            )
        rng = np.random.default_rng(self.seed)
        self.draws = []
        for _ in range(self.cfg.draws):
            perm = rng.permutation(len(self.ref_features))
            self.draws.append((perm[: self.m], perm[self.m : 2 * self.m]))
        labels = self.ref_cat.cpu().numpy()
        real_fd = [
            frechet_distance(self.ref_features[a], self.ref_features[b]) for a, b in self.draws
        ]
        real_div = [diversity(self.ref_features[b], labels[b]) for _, b in self.draws]
        key = self.space.key
        self.floor = {
            f"{key}_real": float(np.mean(real_fd)),
            f"{key}_real_std": _std(real_fd),
            "diversity_real": float(np.nanmean(real_div)),
        }
        if self.cfg.paper_samples:
            info = DatasetInfo.load(self.data)
            gen = torch.Generator().manual_seed(self.seed + 31337)
            prior_cat, prior_attr = train_prior_conditions(info, self.cfg.paper_samples, gen)
            self.paper_cond = make_condition(
                prior_cat.to(self.device),
                None if prior_attr is None else prior_attr.to(self.device),
                self.num_categories,
            )
        self._ready = True

    @torch.no_grad()
    def _features(self, g: MRGenerator, cond: Tensor, sigma: float, seed: int) -> np.ndarray:
        """Features of generated images, chunk by chunk (only features are kept)."""
        assert self.space is not None
        was_training = g.training
        g.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for i in range(0, cond.shape[0], _CHUNK):
            chunk = cond[i : i + _CHUNK]
            sampled = cast(Tensor, g.sample(chunk, perturb_sigma=sigma, generator=gen))
            images = sampled.float()
            out.append(sample_features(self.space, images))
        g.train(was_training)
        return np.concatenate(out)

    def measure(self, g: MRGenerator, epoch: int | None = None) -> dict[str, float]:
        """FD and diversity of ``g`` (plain and perturbed) beside the real-vs-real floor.

        Args:
            g: the generator.
            epoch: the 1-based epoch just finished (for ``quality.last_epochs``), if known.

        Returns:
            The figures of the module docstring.
        """
        start = time.monotonic()
        if not self._ready:
            self._prepare()
        assert self.space is not None
        key = self.space.key
        out = dict(self.floor)
        labels = self.ref_cat.cpu().numpy()
        attrs = self.ref_attr if self.ref_attr.shape[1] else None
        for suffix, sigma in (("", 0.0), ("_perturbed", self.sigma_p)):
            fds, divs = [], []
            for r, (a, b) in enumerate(self.draws):
                bi = torch.as_tensor(b, device=self.device)
                cond = make_condition(
                    self.ref_cat[bi], None if attrs is None else attrs[bi], self.num_categories
                )
                feats = self._features(g, cond, sigma, self.seed + 4242 + r)
                fds.append(frechet_distance(self.ref_features[a], feats))
                divs.append(diversity(feats, labels[b]))
            out[f"{key}{suffix}"] = float(np.mean(fds))
            out[f"{key}{suffix}_std"] = _std(fds)
            out[f"diversity{suffix}"] = float(np.nanmean(divs))
        if self.cfg.paper_samples:
            feats = self._features(g, self.paper_cond, 0.0, self.seed + 99)
            paper = frechet_distance(self.ref_features, feats)
            out[f"{key}_paper"] = paper
            if self.cfg.last_epochs:
                if epoch is None or self.in_last_epochs(epoch):
                    self.paper_history.append((epoch, paper))
                window = [v for _, v in self.paper_history]
                out[f"{key}_paper_min"] = min(window) if window else paper
        # stderr, as the progress lines: the step's log shows it wherever it runs.
        shown = ", ".join(f"{k} {v:.3f}" for k, v in out.items() if np.isfinite(v))
        print(
            f"train_gan: sample quality, {len(self.draws)} draws of {self.m} vs {self.m} "
            f"{self.ref_split} images ({time.monotonic() - start:.0f} s): {shown}",
            file=sys.stderr,
            flush=True,
        )
        log.debug("feature space: %s", self.space.description)
        return out


def _std(values: list[float]) -> float:
    """Sample standard deviation (0 for one value)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
