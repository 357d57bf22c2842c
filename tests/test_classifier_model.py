"""Tests for the classifiers (docs/method.md section 5)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from fashion_attr.classifier.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedWeightsError,
    build_classifier,
)
from torchvision.models._api import WeightsEnum


@pytest.fixture(autouse=True)
def _no_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cached file in ~/.cache/torch must never satisfy (or a real download start) a test.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_tiny_shapes_and_expected_input() -> None:
    model = build_classifier("tiny", num_attributes=7, num_categories=5).eval()
    attr, cat = model(torch.randn(2, 3, 32, 32))
    assert attr.shape == (2, 7) and cat.shape == (2, 5)
    # Any side >= 16 works.
    attr, cat = model(torch.randn(1, 3, 16, 16))
    assert attr.shape == (1, 7)
    assert (model.arch, model.num_attributes, model.num_categories) == ("tiny", 7, 5)
    exp = model.expected_input()
    assert exp["image_size"] is None and exp["channels"] == 3
    assert exp["mean"] == (0.485, 0.456, 0.406) and exp["std"] == (0.229, 0.224, 0.225)


def test_tiny_attribute_only_has_empty_category_head() -> None:
    model = build_classifier("tiny", num_attributes=4, num_categories=0)
    attr, cat = model(torch.randn(3, 3, 32, 32))
    assert attr.shape == (3, 4) and cat.shape == (3, 0)


def test_lenet5_mnist_category_only() -> None:
    model = build_classifier("lenet5", num_attributes=0, num_categories=10)
    attr, cat = model(torch.randn(4, 1, 28, 28))
    assert attr.shape == (4, 0) and cat.shape == (4, 10)
    exp = model.expected_input()
    assert exp == {"image_size": 28, "channels": 1, "mean": (0.5,), "std": (0.5,)}
    # LeNet-5: conv5 6 (156) + conv5 16 (2416) + fc 400-120 (48120) + 120-84 (10164)
    # + head 84-10 (850) = 61706 parameters.
    assert sum(p.numel() for p in model.parameters()) == 61706
    assert model.dropout.p == 0.0


def test_vgg16_paper_shapes_at_224() -> None:
    # pretrained=None: the unreachable-download fallback has its own tests below.
    model = build_classifier(
        "vgg16_paper", num_attributes=1000, num_categories=50, pretrained=None
    ).eval()
    assert model.dropout.p == 0.5  # docs/method.md sec. 5
    # The paper's replacement for the fc layers: 512 -> 2048 -> 4096, 3x3, no padding.
    assert tuple(model.extra[0].weight.shape) == (2048, 512, 3, 3)
    assert model.extra[0].padding == (0, 0)
    assert tuple(model.extra[2].weight.shape) == (4096, 2048, 3, 3)
    assert model.extra[2].padding == (0, 0)
    with torch.no_grad():
        attr, cat = model(torch.randn(1, 3, 224, 224))
    assert attr.shape == (1, 1000) and cat.shape == (1, 50)
    assert model.expected_input()["image_size"] == 224


def test_resnet50_shapes_small_input() -> None:
    model = build_classifier("resnet50", num_attributes=26, num_categories=50).eval()
    with torch.no_grad():
        attr, cat = model(torch.randn(2, 3, 64, 64))
    assert attr.shape == (2, 26) and cat.shape == (2, 50)
    assert model.feat_dim == 2048
    assert not hasattr(model.trunk.fc, "weight")  # fc removed


def test_resnet50_local_pretrained_file_loads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    # A full torchvision state dict (fc included, as torchvision saves it).
    source = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        source.conv1.weight.fill_(0.125)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    model = build_classifier("resnet50", 3, 2, pretrained=str(path))
    assert torch.equal(model.trunk.conv1.weight, source.conv1.weight)
    assert torch.equal(model.trunk.layer4[2].bn3.running_mean, source.layer4[2].bn3.running_mean)
    torch.manual_seed(2)
    fresh = build_classifier("resnet50", 3, 2)
    assert not torch.equal(fresh.trunk.conv1.weight, model.trunk.conv1.weight)


def test_vgg16_local_pretrained_file_loads(tmp_path: Path) -> None:
    features = torchvision.models.vgg16(weights=None).features
    with torch.no_grad():
        features[0].weight.fill_(0.5)
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    model = build_classifier("vgg16_paper", 3, 2, pretrained=str(path))
    assert torch.equal(model.backbone[0].weight, torch.full((64, 3, 3, 3), 0.5))
    assert torch.equal(model.backbone[28].bias, features[28].bias)


def test_pretrained_file_with_wrong_keys_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"other\.pth.*resnet50"):
        build_classifier("resnet50", 3, 2, pretrained=str(path))
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        build_classifier("resnet50", 3, 2, pretrained=str(tmp_path / "missing.pth"))


def test_imagenet_unreachable_stops_naming_the_fixes_never_random_init(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def offline(self: WeightsEnum, *args: object, **kwargs: object) -> dict:
        calls.append(str(self))
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsError, match=r"pretrained=/path/to/file\.pth") as info:
        build_classifier("resnet50", 3, 2, pretrained="imagenet")
    assert calls == ["ResNet50_Weights.IMAGENET1K_V2"]
    assert "pretrained=null" in str(info.value) and "weights/resnet50-" in str(info.value)
    assert isinstance(info.value, ValueError)  # a user error: the step exits 2, no retry
    # Training from scratch is a deliberate choice.
    model = build_classifier("resnet50", 3, 2, pretrained=None)
    with torch.no_grad():
        attr, cat = model.eval()(torch.randn(1, 3, 64, 64))
    assert attr.shape == (1, 3) and cat.shape == (1, 2)


def test_imagenet_weights_are_loaded_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    source = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        source.conv1.weight.fill_(-0.25)
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: source.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_classifier("resnet50", 3, 2, pretrained="imagenet")
    assert torch.equal(model.trunk.conv1.weight, source.conv1.weight)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown arch 'vgg19'"):
        build_classifier("vgg19", 3, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pretrained"):
        build_classifier("tiny", 3, 2, pretrained="imagenet")
    with pytest.raises(ValueError, match="in_channels=1"):
        build_classifier("resnet50", 3, 2, in_channels=1)
    with pytest.raises(ValueError, match="num_attributes \\+ num_categories"):
        build_classifier("tiny", 0, 0)
    with pytest.raises(ValueError, match="dropout"):
        build_classifier("tiny", 3, 2, dropout=1.0)


def test_grey_tiny_uses_half_normalisation() -> None:
    model = build_classifier("tiny", 0, 10, in_channels=1)
    assert model.expected_input()["mean"] == (0.5,)
    assert model(torch.randn(2, 1, 28, 28))[1].shape == (2, 10)
    assert IMAGENET_MEAN[0] == 0.485 and IMAGENET_STD[2] == 0.225


@pytest.mark.parametrize(("arch", "side"), [("tiny", 32), ("resnet50", 64), ("lenet5", 28)])
def test_channels_last_matches_contiguous(arch: str, side: int) -> None:
    torch.manual_seed(0)
    channels = 1 if arch == "lenet5" else 3
    model = build_classifier(arch, 5, 4).eval()  # type: ignore[arg-type]
    x = torch.randn(2, channels, side, side)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_heads_receive_gradients_and_dropout_is_active_in_train() -> None:
    model = build_classifier("tiny", 3, 2, dropout=0.5).train()
    attr, cat = model(torch.randn(4, 3, 32, 32))
    (attr.sum() + cat.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    assert model.dropout.p == 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_vgg16_paper() -> None:
    model = build_classifier("vgg16_paper", 1000, 50).cuda().eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        attr, cat = model(x)
    assert attr.shape == (2, 1000) and cat.shape == (2, 50)
    assert torch.isfinite(attr.float()).all()
