"""Sample quality of the generator: the Fréchet distance, diversity, and the feature spaces.

The FD arithmetic is checked against torchmetrics' FrechetInceptionDistance (fed the
same features through a custom feature module); the feature spaces are named for what
they are (``fid`` only with Inception-v3 weights from a local file, ``fd_classifier``
otherwise); ``train_gan`` reports both its generators' figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fashion_attr.classifier.feature_space import classifier_space
from fashion_attr.evaluation.gan_quality import (
    diversity,
    frechet_distance,
    inception_space,
    sample_features,
)
from fashion_attr.losses.decorrelation import mean_squared_cosine, msc_floor
from small_runs import GAN_QUICK, run_gan
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frechet_distance_equals_torchmetrics_fid_on_the_same_features() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Flat(nn.Module):
        num_features = 12

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).double()

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 12, generator=g, dtype=torch.float64)
    mix = torch.randn(12, 12, generator=g, dtype=torch.float64)
    fake = torch.randn(250, 12, generator=g, dtype=torch.float64) @ mix * 0.5 + 0.3
    metric = FrechetInceptionDistance(feature=Flat(), normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(real.view(300, 12, 1, 1), real=True)
    metric.update(fake.view(250, 12, 1, 1), real=False)
    ours = frechet_distance(real.numpy(), fake.numpy())
    assert ours == pytest.approx(float(metric.compute()), rel=1e-9)
    assert ours > 1.0


def test_fd_is_zero_for_one_set_and_grows_with_a_mean_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, mean moved by d: FD = |d|^2.
    assert frechet_distance(a, a + 2.0) == pytest.approx(8 * 4.0, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        frechet_distance(a, a[:, :4])


def test_diversity_is_zero_for_a_collapsed_generator() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 20)
    spread = rng.normal(size=(60, 5))
    collapsed = np.repeat(rng.normal(size=(3, 5)), 20, axis=0)
    assert diversity(collapsed, labels) == pytest.approx(0.0, abs=1e-12)
    assert diversity(spread, labels) > 1.0
    assert np.isnan(diversity(spread[:3], labels[[0, 20, 40]]))  # no class has two images


def test_classifier_space_is_deterministic_and_is_never_called_fid() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1
    cats = torch.arange(64) % 4
    images[cats == 1, 0] = 1.0  # something to learn
    a = classifier_space(images, cats, size=16, steps=5, seed=3)
    b = classifier_space(images, cats, size=16, steps=5, seed=3)
    fa, fb = sample_features(a, images), sample_features(b, images)
    assert a.key == "fd_classifier" and "not FID" in a.description
    assert fa.shape == (64, 128) and np.array_equal(fa, fb)
    grey = classifier_space(torch.zeros(8, 1, 28, 28), torch.arange(8) % 2, steps=1)
    assert "lenet5" in grey.description
    assert sample_features(grey, torch.zeros(3, 1, 28, 28)).shape == (3, 84)


def test_inception_space_reads_a_local_file_only_and_says_what_is_wrong(tmp_path: Path) -> None:
    from torchvision.models import inception_v3

    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*Fix"):
        inception_space(missing, torch.device("cpu"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pth.*not a torchvision inception_v3"):
        inception_space(wrong, torch.device("cpu"))
    weights = tmp_path / "inception.pth"
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), weights)
    space = inception_space(weights, torch.device("cpu"))
    feats = sample_features(space, torch.rand(2, 1, 16, 16) * 2 - 1)
    assert space.key == "fid" and feats.shape == (2, 2048)


def test_msc_floor_is_the_frame_bound_and_tight_frames_reach_it() -> None:
    assert msc_floor(128, 49) == pytest.approx((128 / 49 - 1) / 127)
    assert msc_floor(16, 16) == 0.0 and msc_floor(1, 4) == 0.0
    # A tight frame of 4 unit vectors in R^2 (angles 0, 45, 90, 135 deg) meets the bound.
    angles = torch.tensor([0.0, 45.0, 90.0, 135.0]).deg2rad()
    frame = torch.stack([angles.cos(), angles.sin()], dim=1)  # [N_Z=4, 2]
    weight = frame.view(4, 1, 1, 2)  # (N_in, N_F, k, k) with k*k = 2 values per filter
    assert float(mean_squared_cosine(weight)) == pytest.approx(msc_floor(4, 2), abs=1e-6)


def test_train_gan_reports_fd_and_diversity_of_both_generators(
    demo_version: str, tmp_path: Path
) -> None:
    out = tmp_path / "gan"
    result = run_gan(demo_version, out, [*GAN_QUICK, "quality.samples=16"])
    q = result.quality
    keys = {"fd_classifier", "fd_classifier_perturbed", "fd_classifier_real"}
    keys |= {"diversity", "diversity_perturbed", "diversity_real"}
    assert set(q) == keys and all(np.isfinite(v) for v in q.values()), q
    assert not any(k.startswith("fid") for k in q)  # no Inception weights: never "FID"
    assert q["fd_classifier"] != q["fd_classifier_perturbed"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r["metrics"] for r in records if r["type"] == "metrics"][-1]
    assert {k: final[k] for k in keys} == q
    # Every N epochs as well, when asked.
    again = run_gan(
        demo_version,
        tmp_path / "gan2",
        ["epochs=2", "batch_size=32", *GAN_QUICK[3:], "quality.every_epochs=1"],
    )
    logged = [
        r["metrics"]
        for r in (json.loads(x) for x in (tmp_path / "gan2" / "metrics.jsonl").open())
        if r["type"] == "metrics" and "fd_classifier" in r["metrics"]
    ]
    assert len(logged) >= 2 and logged[-1]["fd_classifier"] == again.quality["fd_classifier"]
