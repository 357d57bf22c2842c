"""Sample quality of a conditional generator: a Fréchet distance and a diversity figure.

The Fréchet distance (FD) between two image sets is that between Gaussian fits of
their features (Heusel et al., 2017)::

    FD = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))

Which features decides what the number means, so it is always named:

- **FID** (``fid``): the 2,048-d pool features of Inception-v3, only when the user gives
  a local weights file (``GanConfig.quality.inception_weights``: a torchvision
  ``inception_v3`` state dict). Nothing is downloaded at run time. torchvision's
  Inception-v3 weights are not the TF-ported network of published FIDs, so values are
  comparable across runs of this project, not with papers.
- **classifier FD** (``fd_classifier``), otherwise: the penultimate features of a small
  classifier trained for a fixed number of steps on the same training split
  (:func:`fashion_attr.classifier.feature_space.classifier_space`, handed to the
  quality probe by the ``train_gan`` step). It is *not* FID and never called so.

Diversity is the mean pairwise Euclidean distance between the features of generated
images of the same category, averaged over categories: a generator that collapses to
one image per condition has diversity 0, whatever its FD.

The square-root term uses ``tr((S_r S_g)^(1/2)) = tr((S_r^(1/2) S_g S_r^(1/2))^(1/2))``,
whose inner matrix is symmetric positive semi-definite, so two symmetric
eigendecompositions in float64 replace scipy's ``sqrtm`` (tested equal to
torchmetrics' FID arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FeatureSpace",
    "diversity",
    "frechet_distance",
    "inception_space",
    "sample_features",
]

#: ImageNet normalisation of torchvision's Inception-v3.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureSpace:
    """A feature extractor for FD, with the name its figures are logged under.

    Attributes:
        key: metric-name prefix: ``"fid"`` (Inception-v3) or ``"fd_classifier"``.
        description: what the features are, for logs and reports.
        extract: images in ``[-1, 1]`` ``[B, C, H, W]`` -> features ``[B, D]`` (no grad).
    """

    key: str
    description: str
    extract: Callable[[Tensor], Tensor]


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FD between Gaussian fits of two feature sets ``[n, D]`` (float64 arithmetic).

    Args:
        real: features of the reference images.
        fake: features of the generated images.

    Returns:
        The distance (>= 0 up to rounding).

    Raises:
        ValueError: fewer than 2 rows in a set, or different feature sizes.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"frechet_distance: feature sets of shapes {real.shape} and {fake.shape}; "
            "expected [n, D] and [m, D]"
        )
    if min(real.shape[0], fake.shape[0]) < 2:
        raise ValueError("frechet_distance: each set needs at least 2 images for a covariance")
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    r1 = _sqrtm_psd(s1)
    inner = r1 @ s2 @ r1
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cross)


def diversity(features: np.ndarray, labels: np.ndarray, per_class: int = 500) -> float:
    """Mean pairwise feature distance within a class, averaged over classes with >= 2 images.

    Args:
        features: ``[n, D]`` features.
        labels: ``[n]`` class of each row (the conditioned category).
        per_class: at most this many rows per class (the cost is quadratic).

    Returns:
        The diversity, or NaN when no class has two images.
    """
    feats = torch.as_tensor(np.asarray(features, np.float64))
    labels = np.asarray(labels)
    out = []
    for c in np.unique(labels):
        fc = feats[torch.as_tensor(labels == c)][:per_class]
        n = fc.shape[0]
        if n >= 2:
            out.append(float(torch.cdist(fc, fc).sum() / (n * (n - 1))))
    return float(np.mean(out)) if out else math.nan


@torch.no_grad()
def sample_features(space: FeatureSpace, images: Tensor, batch: int = 256) -> np.ndarray:
    """Features of ``images`` (``[-1, 1]``) in ``space``, as float64 ``[n, D]``."""
    chunks = range(0, len(images), batch)
    out = [space.extract(images[i : i + batch]).double().cpu() for i in chunks]
    return torch.cat(out).numpy()


def inception_space(weights: str | Path, device: torch.device) -> FeatureSpace:
    """Inception-v3 pool features (2,048-d) from a local torchvision state dict: FID.

    Images are resized to 299 px (bilinear), grey ones repeated to 3 channels, and
    normalised as torchvision's ImageNet weights expect.

    Raises:
        FileNotFoundError: the weights file does not exist (names it).
        ValueError: the file is not an Inception-v3 state dict (names it and the fix).
    """
    from torchvision.models import inception_v3

    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"quality.inception_weights={str(path)!r} does not exist. Fix: point it at a "
            "local torchvision inception_v3 state dict (e.g. inception_v3_google-0cc3c7bd.pth "
            "copied from a machine with internet access), or set it to null for the "
            "classifier FD"
        )
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"quality.inception_weights={str(path)!r} is not a torchvision inception_v3 "
            f"state dict ({str(exc).splitlines()[0]}). Fix: use the file torchvision's "
            "Inception_V3_Weights.IMAGENET1K_V1 downloads"
        ) from None
    net.fc = nn.Identity()
    net.eval().requires_grad_(False).to(device)
    mean = torch.tensor(_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, device=device).view(1, 3, 1, 1)

    def extract(x: Tensor) -> Tensor:
        x = x.to(device).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x.add(1).div(2), size=(299, 299), mode="bilinear", align_corners=False)
        return net((x - mean) / std)

    return FeatureSpace("fid", f"Inception-v3 pool features ({path.name})", extract)
