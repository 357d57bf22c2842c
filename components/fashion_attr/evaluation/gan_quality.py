"""Sample quality of a conditional generator: a Fréchet distance and a diversity figure.

The Fréchet distance (FD) between two image sets is that between Gaussian fits of
their features (Heusel et al., 2017)::

    FD = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))

Which features decides what the number means, so it is always named:

- **FID** (``fid``): the 2,048-d pool features of the TF FID Inception, the network of
  published FIDs (Heusel et al.'s TensorFlow graph, ported by pytorch-fid and
  torch-fidelity). The network is built from torch-fidelity's classes and loaded from
  the user's local weights file (``GanConfig.quality.inception_weights``; torch-fidelity's
  ``weights-inception-2015-12-05-6726825d.pth`` or pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth``). Nothing is downloaded at run time: no
  weights file, no FID.
- **torchvision Inception FD** (``fd_inception_tv``, ``quality.inception_kind:
  torchvision``): torchvision's ImageNet Inception-v3 (``IMAGENET1K_V1`` state dict).
  Its first convolution is fed ``[-1, 1]``, the range those weights expect (torchvision
  applies the same map with ``transform_input=True``). Not the network of published
  FIDs, so never called FID.
- **classifier FD** (``fd_classifier``), otherwise: the penultimate features of a small
  classifier trained for a fixed number of steps on the same training split
  (:func:`fashion_attr.classifier.feature_space.classifier_space`, handed to the
  quality probe by the ``train_gan`` step). It is *not* FID and never called so; it
  compares runs on one dataset only.

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
from typing import Any

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
    "tf_fid_inception_space",
    "torchvision_inception_space",
]


@dataclass(frozen=True)
class FeatureSpace:
    """A feature extractor for FD, with the name its figures are logged under.

    Attributes:
        key: metric-name prefix: ``"fid"`` (TF FID Inception), ``"fd_inception_tv"``
            (torchvision's Inception) or ``"fd_classifier"``.
        description: what the features are, for logs and reports.
        extract: images in ``[-1, 1]`` ``[B, C, H, W]`` -> features ``[B, D]`` (no grad).
        network: the feature network, when there is one (tests inspect its input).
    """

    key: str
    description: str
    extract: Callable[[Tensor], Tensor]
    network: nn.Module | None = None


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    root: np.ndarray = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return root


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


def _weights_file(weights: str | Path, what: str) -> tuple[Path, dict[str, Any]]:
    """Check a local weights file and load it as a plain state dict (no pickled code)."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"quality.inception_weights={str(path)!r} does not exist: no FID without a local "
            f"weights file (nothing is downloaded). Fix: point it at a local {what} copied "
            "from a machine with internet access, or set it to null for the classifier FD"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, or not a torch file at all
        raise ValueError(
            f"quality.inception_weights={str(path)!r} is not a plain state dict "
            f"({str(exc).splitlines()[0]}). Fix: use {what}"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"quality.inception_weights={str(path)!r} holds a {type(state).__name__}, not a "
            f"state dict. Fix: use {what}"
        )
    return path, state


_TF_FID_FILE = (
    "the TF FID Inception weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
    "or pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"
)
_TV_FILE = "torchvision's Inception_V3_Weights.IMAGENET1K_V1 file (inception_v3_google-*.pth)"


def tf_fid_inception_space(weights: str | Path, device: torch.device) -> FeatureSpace:
    """The TF FID Inception's 2,048-d pool features from a local weights file: FID.

    The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF graph of
    published FIDs, as pytorch-fid and torchmetrics use it); images in ``[-1, 1]`` are
    quantised to uint8 as a saved PNG would be, grey ones repeated to 3 channels, and the
    network resizes them to 299 px with TF's bilinear rule and maps them to ``[-1, 1]``
    itself (``(x - 128) / 128``).

    Raises:
        FileNotFoundError: the weights file does not exist (names it).
        ValueError: the file is not a TF FID Inception state dict (names it and the fix).
        ImportError: torch-fidelity is not installed (names the extra to install).
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as exc:
        raise ImportError(
            "FID needs torch-fidelity (the TF FID Inception network). Fix: pip install "
            "'fashion-attr[fid]', or set quality.inception_weights=null for the classifier FD"
        ) from exc
    path, state = _weights_file(weights, _TF_FID_FILE)
    expected = {"Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight"}
    if not expected <= set(state) or tuple(state["fc.weight"].shape) != (1008, 2048):
        raise ValueError(
            f"quality.inception_weights={str(path)!r} is not the TF FID Inception (it lacks "
            f"{sorted(expected - set(state)) or 'the 1008-class fc layer'}; a torchvision "
            f"file needs quality.inception_kind=torchvision). Fix: use {_TF_FID_FILE}"
        )
    # The file was just read as a plain state dict (weights_only), so the extractor's own
    # load of the same path cannot run pickled code.
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(path))
    net.to(device)

    def extract(x: Tensor) -> Tensor:
        x = x.to(device).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        u8 = x.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        features: Tensor = net(u8)[0]
        return features

    return FeatureSpace("fid", f"TF FID Inception pool features ({path.name})", extract, net)


def torchvision_inception_space(weights: str | Path, device: torch.device) -> FeatureSpace:
    """The ImageNet Inception-v3 of torchvision: pool features (2,048-d), not FID.

    torchvision's ``IMAGENET1K_V1`` weights come from Google's TF model, whose first
    convolution expects ``[-1, 1]``; torchvision builds the network with
    ``transform_input=True`` to map ImageNet-normalised input back to that range. Here the
    network is built without the transform and fed ``[-1, 1]`` directly (resized to 299 px,
    bilinear; grey repeated to 3 channels): the same input at the first convolution.

    Raises:
        FileNotFoundError: the weights file does not exist (names it).
        ValueError: the file is not an Inception-v3 state dict (names it and the fix).
    """
    from torchvision.models import inception_v3

    path, state = _weights_file(weights, _TV_FILE)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"quality.inception_weights={str(path)!r} is not a torchvision inception_v3 "
            f"state dict ({str(exc).splitlines()[0]}). Fix: use {_TV_FILE}, or "
            "quality.inception_kind=tf_fid for the TF FID weights"
        ) from None
    net.fc = nn.Identity()
    net.eval().requires_grad_(False).to(device)

    def extract(x: Tensor) -> Tensor:
        x = x.to(device).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # [-1, 1] at the first convolution: what the IMAGENET1K_V1 weights expect.
        pooled: Tensor = net(
            F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        )
        return pooled

    description = f"torchvision Inception-v3 pool features ({path.name}; not FID)"
    return FeatureSpace("fd_inception_tv", description, extract, net)


def inception_space(
    weights: str | Path, device: torch.device, kind: str = "tf_fid"
) -> FeatureSpace:
    """The Inception feature space of ``quality.inception_kind`` from a local file.

    Args:
        weights: the local weights file.
        device: where the network runs.
        kind: ``"tf_fid"`` (:func:`tf_fid_inception_space`, FID) or ``"torchvision"``
            (:func:`torchvision_inception_space`, not FID).

    Returns:
        The feature space.

    Raises:
        ValueError: an unknown ``kind``, or a file of the wrong network.
        FileNotFoundError: the weights file does not exist.
    """
    if kind == "tf_fid":
        return tf_fid_inception_space(weights, device)
    if kind == "torchvision":
        return torchvision_inception_space(weights, device)
    raise ValueError(f"quality.inception_kind={kind!r}; expected 'tf_fid' (FID) or 'torchvision'")
