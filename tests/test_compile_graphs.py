"""The compiled modules trace as one graph each: no torch.compile graph break.

``train_classifier`` compiles the classifier on CUDA (``compile: true``) and the
speed targets of issue 6 are against a compiled plain step, so a graph break in a
model's forward (a Python branch on a tensor value, a host read) would silently
cost speed. ``torch._dynamo.explain`` traces on the CPU, no GPU needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch._dynamo as dynamo
from fashion_attr.classifier.model import build_classifier
from fashion_attr.gan.networks import MRGANSpec, MRGenerator, make_condition


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.mark.parametrize(
    ("arch", "attrs", "cats", "channels", "size"),
    [
        ("tiny", 38, 50, 3, 64),
        ("lenet5", 0, 10, 1, 28),
        ("resnet50", 1000, 50, 3, 64),
        ("vgg16_paper", 1000, 50, 3, 224),
    ],
)
def test_classifier_forward_is_one_graph(
    arch: str, attrs: int, cats: int, channels: int, size: int
) -> None:
    torch.manual_seed(0)
    model = build_classifier(arch, attrs, cats, pretrained=None).eval()
    x = torch.randn(1, channels, size, size)
    explained = dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_perturbed_generator_is_one_graph() -> None:
    spec = MRGANSpec(
        num_categories=50,
        num_attributes=1000,
        z_dim=100,
        image_size=56,
        base_size=7,
        top_channels=32,
        max_channels=512,
        out_channels=3,
    )
    g = MRGenerator(spec).eval()
    cond = make_condition(torch.tensor([3, 7]), (torch.rand(2, 1000) < 0.01).float(), 50)
    explained = dynamo.explain(g)(torch.randn(2, 100), cond, perturb_sigma=1.5)
    assert explained.graph_break_count == 0, explained.break_reasons
