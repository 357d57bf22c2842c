"""Attribute/category classifiers (docs/method.md section 5).

Every classifier maps an image batch ``[B, C_in, H, W]`` to ``(attr_logits [B, N],
cat_logits [B, C])``: N binary attribute logits (trained with HABP, docs/method.md sec. 1) and
C category logits (softmax head). Either head may be empty (N = 0 for MNIST, C = 0 for an
attribute-only task); an empty head returns a ``[B, 0]`` tensor.

Architectures (``build_classifier``):

* ``vgg16_paper``: the paper's network. VGG-16 convolutional trunk (``features``), its
  fully connected layers replaced by conv 3x3 (no padding) -> 2048, ReLU, conv 3x3 (no
  padding) -> 4096, ReLU, global average pool, dropout 0.5, two linear heads.
* ``resnet50``: torchvision ResNet-50 trunk without ``fc`` (the paper's class-balanced
  runs), dropout, two heads.
* ``tiny``: three conv-BN-ReLU blocks (16-32-64 channels, stride 2), GAP, heads; for tests
  and the CPU demo at any side >= 16.
* ``lenet5``: LeNet-5 with ReLU for 28x28 grey MNIST (the paper's MNIST experiment).

ImageNet weights for ``vgg16_paper``/``resnet50``: ``pretrained`` is a local state-dict
file (as torchvision saves it) or ``"imagenet"`` (torchvision's default weights, from
``$TORCH_HOME/hub/checkpoints`` or downloaded). Weights that cannot be had stop the step
with the fix named (bake them into the image, pass a local file, or train from scratch
deliberately with ``pretrained=null``): the paper's setting is never silently replaced by
random initialisation. A local file whose keys do not match fails with the file named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AttributeClassifier",
    "ClassifierArch",
    "LeNet5Classifier",
    "PretrainedWeightsError",
    "ResNet50Classifier",
    "TinyClassifier",
    "VGG16PaperClassifier",
    "build_classifier",
    "check_pretrained",
]

logger = logging.getLogger(__name__)

ClassifierArch = Literal["vgg16_paper", "resnet50", "tiny", "lenet5"]
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_GREY_MEAN: tuple[float] = (0.5,)
_GREY_STD: tuple[float] = (0.5,)


class _Head(nn.Module):
    """Linear head that also supports zero outputs (returns ``[B, 0]``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features
        # nn.Linear(d, 0) warns at init ("zero-element tensor"); an empty head needs no weights.
        self.linear = nn.Linear(in_features, out_features) if out_features > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.linear is None:
            return x.new_zeros((x.shape[0], 0))
        return cast(Tensor, self.linear(x))


class AttributeClassifier(nn.Module):
    """Base class: a trunk giving a feature vector, dropout, and two linear heads.

    Subclasses build ``self.trunk`` (an ``nn.Module`` mapping images to ``[B, feat_dim]``),
    or override ``features``, before calling ``_build_heads``.

    Attributes:
        arch: the architecture name.
        num_attributes: N.
        num_categories: C.
        in_channels: image channels expected.
        feat_dim: width of the feature vector fed to the heads.
    """

    arch: str = ""
    default_image_size: int | None = None
    trunk: nn.Module  # set by the subclasses that do not override ``features``

    def __init__(self, num_attributes: int, num_categories: int, in_channels: int) -> None:
        super().__init__()
        for name, value in (("num_attributes", num_attributes), ("num_categories", num_categories)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"build_classifier: {name} must be an integer >= 0, got {value!r}")
        if num_attributes + num_categories < 1:
            raise ValueError(
                "build_classifier: num_attributes + num_categories must be >= 1 (a classifier "
                "needs at least one output); got 0 for both."
            )
        self.num_attributes = num_attributes
        self.num_categories = num_categories
        self.in_channels = in_channels
        self.feat_dim = 0

    def _build_heads(self, feat_dim: int, dropout: float) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"build_classifier: dropout must lie in [0, 1), got {dropout!r}")
        self.feat_dim = feat_dim
        self.dropout = nn.Dropout(dropout)
        self.attr_head = _Head(feat_dim, self.num_attributes)
        self.cat_head = _Head(feat_dim, self.num_categories)

    def features(self, x: Tensor) -> Tensor:
        """Feature vector [B, feat_dim] before dropout and heads."""
        return cast(Tensor, self.trunk(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Classify a batch.

        Args:
            x: images [B, in_channels, H, W], normalised as ``expected_input()`` says.

        Returns:
            ``(attr_logits [B, N], cat_logits [B, C])``.
        """
        h = self.dropout(self.features(x))
        return self.attr_head(h), self.cat_head(h)

    def expected_input(self) -> dict[str, Any]:
        """What the model expects: side (None = any), channels and normalisation.

        Returns:
            ``{"image_size": int | None, "channels": int, "mean": tuple, "std": tuple}``;
            ImageNet mean/std for RGB input, (0.5,)/(0.5,) for grey input (MNIST).
        """
        rgb = self.in_channels == 3
        return {
            "image_size": self.default_image_size,
            "channels": self.in_channels,
            "mean": IMAGENET_MEAN if rgb else _GREY_MEAN * self.in_channels,
            "std": IMAGENET_STD if rgb else _GREY_STD * self.in_channels,
        }


class VGG16PaperClassifier(AttributeClassifier):
    """VGG-16 with the paper's convolutional replacement for the fc layers (docs/method.md sec. 5).

    ``trunk = vgg16().features`` (512 x 7 x 7 at 224 px), then conv 3x3 no padding ->
    2048, ReLU, conv 3x3 no padding -> 4096, ReLU (7 -> 5 -> 3), global average pool.
    Needs an input side >= 160 (the trunk's 7x7 output must survive two unpadded 3x3 convs).
    """

    arch = "vgg16_paper"
    default_image_size = 224

    def __init__(
        self,
        num_attributes: int,
        num_categories: int,
        *,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(num_attributes, num_categories, in_channels)
        _require_rgb(self.arch, in_channels)
        from torchvision.models import vgg16

        self.backbone: nn.Module = vgg16(weights=None).features
        self.extra = nn.Sequential(
            nn.Conv2d(512, 2048, 3, padding=0),
            nn.ReLU(inplace=True),
            nn.Conv2d(2048, 4096, 3, padding=0),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        for m in self.extra.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                assert m.bias is not None  # Conv2d's default bias=True
                nn.init.zeros_(m.bias)
        self._build_heads(4096, dropout)

    def features(self, x: Tensor) -> Tensor:
        """Feature vector [B, 4096]: VGG trunk, the two unpadded convs, GAP."""
        return cast(Tensor, self.extra(self.backbone(x)))

    def pretrained_module(self) -> nn.Module:
        """The module that ImageNet weights load into (torchvision's ``features``)."""
        return self.backbone


class ResNet50Classifier(AttributeClassifier):
    """torchvision ResNet-50 with ``fc`` removed (2048-d pooled features), dropout, heads."""

    arch = "resnet50"
    default_image_size = 224

    def __init__(
        self,
        num_attributes: int,
        num_categories: int,
        *,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(num_attributes, num_categories, in_channels)
        _require_rgb(self.arch, in_channels)
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        net.fc = nn.Identity()
        self.trunk = net
        self._build_heads(2048, dropout)

    def pretrained_module(self) -> nn.Module:
        """The module that ImageNet weights load into (the ResNet without ``fc``)."""
        return self.trunk


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyClassifier(AttributeClassifier):
    """Small CPU network: conv-BN-ReLU 16 -> 32 -> 64 -> 128 (stride 2 each), GAP, heads.

    Four stride-2 stages give a receptive field that covers most of a 64 px
    crop, so the garment's silhouette (its category) is visible to the heads.
    """

    arch = "tiny"
    default_image_size = None

    def __init__(
        self,
        num_attributes: int,
        num_categories: int,
        *,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_attributes, num_categories, in_channels)
        self.trunk = nn.Sequential(
            _conv_bn_relu(in_channels, 16, 2),
            _conv_bn_relu(16, 32, 2),
            _conv_bn_relu(32, 64, 2),
            _conv_bn_relu(64, 128, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self._build_heads(128, dropout)


class LeNet5Classifier(AttributeClassifier):
    """LeNet-5 with ReLU for 28x28 MNIST (the paper's MNIST table, docs/method.md sec. 7).

    conv 5x5 -> 6 (padding 2, keeps 28), ReLU, max-pool 2 (14), conv 5x5 -> 16 (10), ReLU,
    max-pool 2 (5), fc 400 -> 120, ReLU, fc 120 -> 84, ReLU, heads.
    """

    arch = "lenet5"
    default_image_size = 28

    def __init__(
        self,
        num_attributes: int,
        num_categories: int,
        *,
        in_channels: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_attributes, num_categories, in_channels)
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(1),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self._build_heads(84, dropout)


_ARCHS: dict[str, type[AttributeClassifier]] = {
    "vgg16_paper": VGG16PaperClassifier,
    "resnet50": ResNet50Classifier,
    "tiny": TinyClassifier,
    "lenet5": LeNet5Classifier,
}
# Dropout before the heads when the caller does not choose: the paper's 0.5 for VGG-16
# (docs/method.md sec. 5) and ResNet-50; none for the small nets (the paper's LeNet-5 has none).
_DEFAULT_DROPOUT = {"vgg16_paper": 0.5, "resnet50": 0.5, "tiny": 0.0, "lenet5": 0.0}


def _require_rgb(arch: str, in_channels: int) -> None:
    if in_channels != 3:
        raise ValueError(
            f"build_classifier: arch {arch!r} takes RGB input (in_channels=3), got "
            f"in_channels={in_channels}; repeat grey images to 3 channels or use arch "
            "'tiny'/'lenet5'."
        )


def _torchvision_weights(arch: str) -> Any:
    from torchvision.models import ResNet50_Weights, VGG16_Weights

    return VGG16_Weights.DEFAULT if arch == "vgg16_paper" else ResNet50_Weights.DEFAULT


def _trunk_state_from_torchvision(arch: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep the trunk keys of a full torchvision state dict (or a trunk-only one).

    vgg16: torchvision keys are ``features.*`` (+ ``classifier.*``, dropped); a dict without
    the ``features.`` prefix is taken as a trunk-only dict. resnet50: ``fc.*`` is dropped.
    """
    if arch == "vgg16_paper":
        if any(k.startswith("features.") for k in state):
            return {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        return dict(state)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _load_trunk(model: AttributeClassifier, state: Mapping[str, Tensor], source: str) -> None:
    # Only these two take pretrained weights (build_classifier refuses the others).
    target = cast(VGG16PaperClassifier | ResNet50Classifier, model).pretrained_module()
    trunk_state = _trunk_state_from_torchvision(model.arch, state)
    expected = set(target.state_dict())
    got = set(trunk_state)
    if expected != got:
        missing = sorted(expected - got)
        unexpected = sorted(got - expected)
        raise ValueError(
            f"build_classifier: pretrained weights {source} do not match the {model.arch!r} "
            f"trunk: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"({len(missing)}), unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}). Pass a state dict "
            f"saved from torchvision's {'vgg16' if model.arch == 'vgg16_paper' else 'resnet50'}"
            " (e.g. torch.save(torchvision.models.vgg16(weights=...).state_dict(), path))."
        )
    try:
        target.load_state_dict(trunk_state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(
            f"build_classifier: pretrained weights {source} do not fit the {model.arch!r} "
            f"trunk: {err}"
        ) from err


class PretrainedWeightsError(ValueError):
    """The pretrained weights a config asks for cannot be loaded (a user error: exit 2)."""


#: What a torch.save file starts with: a zip archive (torch >= 1.6) or a legacy pickle.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80\x05")


def check_pretrained(arch: str, pretrained: str | None, *, timeout_s: float = 3.0) -> str:
    """Whether the weights ``pretrained`` names can be had, in seconds, without loading them.

    The pipeline's validation task calls it so that a ``paper`` run without its weights
    fails before ingest and GAN training (hours), not at the classifier's first step.

    Args:
        arch: the classifier architecture.
        pretrained: ``"imagenet"``, a weights file, or None.
        timeout_s: how long to try torchvision's download URL when the weights are not in
            ``$TORCH_HOME/hub/checkpoints``.

    Returns:
        Where the weights will come from, for the log.

    Raises:
        PretrainedWeightsError: they cannot be had (names the file or URL and the fix).
    """
    if not pretrained or arch not in ("vgg16_paper", "resnet50"):
        return "no pretrained weights"
    if pretrained != "imagenet":
        path = Path(pretrained)
        try:
            with path.open("rb") as fh:
                head = fh.read(4)
        except OSError as exc:
            raise PretrainedWeightsError(
                f"pretrained={pretrained!r}: {exc.strerror or exc}. Fix: pass the path of a "
                "torchvision state dict (.pth) baked into the image or mounted in the pod, "
                "'imagenet', or null to train from scratch on purpose"
            ) from None
        if not head.startswith(_TORCH_MAGIC):
            raise PretrainedWeightsError(
                f"pretrained={pretrained!r} is not a file torch.save wrote (it starts with "
                f"{head!r}). Fix: save model.state_dict() with torch.save"
            )
        return f"file {pretrained}"
    weights = _torchvision_weights(arch)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file() and cached.stat().st_size > 0:
        return f"'imagenet' from {cached}"
    import urllib.request

    try:
        urllib.request.urlopen(
            urllib.request.Request(weights.url, method="HEAD"), timeout=timeout_s
        ).close()
    except Exception as exc:
        raise PretrainedWeightsError(
            f"pretrained='imagenet' for {arch}: {cached} does not exist and {weights.url} cannot "
            f"be reached ({type(exc).__name__}). Fix: bake the weights into the image "
            f"(weights/{cached.name}, docker/Dockerfile) or set pretrained=/path/to/"
            f"{cached.name}, or train from scratch on purpose with pretrained=null"
        ) from None
    return f"'imagenet', downloaded from {weights.url} at training"


def _load_pretrained(model: AttributeClassifier, pretrained: str) -> None:
    if pretrained == "imagenet":
        weights = _torchvision_weights(model.arch)
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # no network, a proxy, a bad cache: never a silent random init
            raise PretrainedWeightsError(
                f"build_classifier: could not load torchvision's ImageNet weights {weights} for "
                f"{model.arch!r} ({type(err).__name__}: {err}). Fix: bake them into the image "
                f"(weights/{Path(weights.url).name}, docker/Dockerfile), or download "
                f"{weights.url} elsewhere and set pretrained=/path/to/file.pth, or train from "
                "scratch on purpose with pretrained=null (--set pretrained=null)"
            ) from None
        _load_trunk(model, state, f"'imagenet' ({weights})")
        return
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"build_classifier: pretrained={pretrained!r} is neither 'imagenet' nor an existing "
            "file; pass the path of a torchvision state dict (.pth) or 'imagenet'."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"build_classifier: could not read pretrained weights file {str(path)!r} "
            f"({type(err).__name__}: {err}); it must be a state dict saved with torch.save."
        ) from err
    if not isinstance(state, Mapping):
        raise ValueError(
            f"build_classifier: pretrained weights file {str(path)!r} holds a "
            f"{type(state).__name__}, not a state dict; save model.state_dict()."
        )
    _load_trunk(model, state, f"file {str(path)!r}")


def build_classifier(
    arch: ClassifierArch,
    num_attributes: int,
    num_categories: int,
    *,
    in_channels: int | None = None,
    pretrained: str | None = None,
    dropout: float | None = None,
) -> AttributeClassifier:
    """Build a classifier returning ``(attr_logits [B, N], cat_logits [B, C])``.

    Args:
        arch: ``"vgg16_paper"`` (paper, 224 px), ``"resnet50"``, ``"tiny"`` (CPU, any side
            >= 16) or ``"lenet5"`` (28x28 MNIST).
        num_attributes: N (may be 0).
        num_categories: C (may be 0).
        in_channels: image channels; default 1 for lenet5, 3 otherwise. vgg16_paper and
            resnet50 accept only 3.
        pretrained: vgg16_paper/resnet50 only: a local torchvision state-dict file, or
            ``"imagenet"`` for torchvision's default weights (raises when they cannot be had
            when they cannot be fetched). None: random init.
        dropout: dropout before the heads; default per arch: 0.5 for vgg16_paper (paper)
            and resnet50, 0 for tiny and lenet5.

    Returns:
        The model (an ``AttributeClassifier``) with ``arch``, ``num_attributes``,
        ``num_categories`` and ``expected_input()``.

    Raises:
        ValueError: unknown arch, bad sizes, ``pretrained`` on a small arch, or a weights
            file whose keys do not match the trunk (the file is named).
        FileNotFoundError: ``pretrained`` is a path that does not exist.
    """
    if arch not in _ARCHS:
        raise ValueError(
            f"build_classifier: unknown arch {arch!r}; allowed: {list(get_args(ClassifierArch))}"
        )
    cls = _ARCHS[arch]
    kwargs: dict[str, Any] = {
        "dropout": _DEFAULT_DROPOUT[arch] if dropout is None else float(dropout)
    }
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    model = cls(num_attributes, num_categories, **kwargs)
    if pretrained is not None:
        if arch not in ("vgg16_paper", "resnet50"):
            raise ValueError(
                f"build_classifier: pretrained={pretrained!r} is only supported for arch "
                f"'vgg16_paper' and 'resnet50', not {arch!r}; pass pretrained=None."
            )
        _load_pretrained(model, pretrained)
    return model
