"""Sample quality of the generator: the Fréchet distance, diversity, and the feature spaces.

The FD arithmetic is checked against torchmetrics' FrechetInceptionDistance (fed the
same features through a custom feature module); the feature spaces are named for what
they are (``fid`` only with the TF FID Inception from a local file, ``fd_inception_tv``
for torchvision's, ``fd_classifier`` otherwise) and both Inceptions get the input range
their weights expect at the first convolution; ``train_gan`` reports both its
generators' figures beside a real-vs-real floor over several draws, ranks a weaker
generator worse, and runs the paper's protocol when asked.
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
    tf_fid_inception_space,
    torchvision_inception_space,
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


def _first_conv_input(space, images: torch.Tensor) -> torch.Tensor:
    seen = []
    conv = space.network.Conv2d_1a_3x3.conv
    handle = conv.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    try:
        sample_features(space, images)
    finally:
        handle.remove()
    return seen[0]


#: A black and a white image in the generator's [-1, 1] range, grey (1 channel).
EXTREMES = torch.stack([torch.full((1, 16, 16), -1.0), torch.full((1, 16, 16), 1.0)])


def test_torchvision_inception_reads_a_local_file_and_sees_minus_one_to_one(
    tmp_path: Path,
) -> None:
    """torchvision's IMAGENET1K_V1 weights expect [-1, 1] at the first convolution (what its
    transform_input=True produces); ImageNet-normalised input there would span about
    [-2.1, 2.6]. Never called FID: not the network of published FIDs."""
    from torchvision.models import inception_v3

    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*no FID.*Fix"):
        inception_space(missing, torch.device("cpu"), "torchvision")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pth.*not a torchvision inception_v3"):
        torchvision_inception_space(wrong, torch.device("cpu"))
    weights = tmp_path / "inception.pth"
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), weights)
    space = inception_space(weights, torch.device("cpu"), "torchvision")
    assert space.key == "fd_inception_tv" and "not FID" in space.description
    x = _first_conv_input(space, EXTREMES)
    assert x.shape == (2, 3, 299, 299)
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(1.0)
    # The TF FID loader refuses this file and names the setting that takes it.
    with pytest.raises(ValueError, match="inception_kind=torchvision"):
        tf_fid_inception_space(weights, torch.device("cpu"))


def test_tf_fid_inception_is_torch_fidelitys_network_from_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FID proper: torch-fidelity's TF FID Inception, loaded from the user's file (here a
    random one of the same architecture); uint8 input, (x - 128) / 128 at the first conv."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    # Random weights of the right architecture, without the download the class would do.
    monkeypatch.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    state = tfi.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    monkeypatch.undo()
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, weights)
    space = tf_fid_inception_space(weights, torch.device("cpu"))
    assert space.key == "fid" and "TF FID" in space.description
    assert isinstance(space.network, tfi.FeatureExtractorInceptionV3)
    x = _first_conv_input(space, EXTREMES)
    assert x.shape == (2, 3, 299, 299)
    assert x.min().item() == -1.0 and x.max().item() == 127 / 128
    assert sample_features(space, EXTREMES).shape == (2, 2048)
    # A pickle that is not a plain state dict is refused before the network loads it.
    bad = tmp_path / "code.pth"
    torch.save({"fc.weight": np.float64}, bad)
    with pytest.raises(ValueError, match="not a plain state dict"):
        tf_fid_inception_space(bad, torch.device("cpu"))


def test_msc_floor_is_the_frame_bound_and_tight_frames_reach_it() -> None:
    assert msc_floor(128, 49) == pytest.approx((128 / 49 - 1) / 127)
    assert msc_floor(16, 16) == 0.0 and msc_floor(1, 4) == 0.0
    # A tight frame of 4 unit vectors in R^2 (angles 0, 45, 90, 135 deg) meets the bound.
    angles = torch.tensor([0.0, 45.0, 90.0, 135.0]).deg2rad()
    frame = torch.stack([angles.cos(), angles.sin()], dim=1)  # [N_Z=4, 2]
    weight = frame.view(4, 1, 1, 2)  # (N_in, N_F, k, k) with k*k = 2 values per filter
    assert float(mean_squared_cosine(weight)) == pytest.approx(msc_floor(4, 2), abs=1e-6)


QUALITY_KEYS = {
    f"fd_classifier{suffix}{std}" for suffix in ("", "_perturbed", "_real") for std in ("", "_std")
} | {"diversity", "diversity_perturbed", "diversity_real"}


def test_train_gan_reports_fd_and_diversity_of_both_generators(
    demo_version: str, tmp_path: Path
) -> None:
    out = tmp_path / "gan"
    result = run_gan(demo_version, out, [*GAN_QUICK, "quality.samples=16"])
    q = result.quality
    assert set(q) == QUALITY_KEYS and all(np.isfinite(v) for v in q.values()), q
    assert not any(k.startswith("fid") for k in q)  # no Inception weights: never "FID"
    assert q["fd_classifier"] != q["fd_classifier_perturbed"]
    assert q["fd_classifier_real_std"] > 0  # three draws of disjoint real sets
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r["metrics"] for r in records if r["type"] == "metrics"][-1]
    assert {k: final[k] for k in QUALITY_KEYS} == q
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


def test_the_probe_ranks_a_generator_with_fewer_steps_worse(
    demo_version: str, tmp_path: Path
) -> None:
    """Same feature space and draws (quality.seed), two generators: one step of training
    against forty. The weaker one is worse by more than either's spread over the draws
    (here about 15 against 9.6, spreads 2.7 and 2.3), and neither beats the real-vs-real
    floor (8.2)."""
    common = ["epochs=100", "batch_size=16", *GAN_QUICK[3:], "quality.samples=16", "lr=0.002"]
    weak = run_gan(demo_version, tmp_path / "weak", [*common, "max_steps=1"]).quality
    strong = run_gan(demo_version, tmp_path / "strong", [*common, "max_steps=40"]).quality
    assert weak["fd_classifier_real"] == strong["fd_classifier_real"]  # one probe
    gap = weak["fd_classifier"] - strong["fd_classifier"]
    assert gap > max(weak["fd_classifier_std"], strong["fd_classifier_std"]), (weak, strong)
    assert strong["fd_classifier"] > strong["fd_classifier_real"]


def test_the_papers_protocol_keeps_the_smallest_fd_of_the_last_epochs(
    demo_version: str, tmp_path: Path
) -> None:
    out = tmp_path / "gan"
    overrides = ["epochs=3", "batch_size=32", *GAN_QUICK[3:], "quality.samples=16"]
    overrides += ["quality.paper_samples=24", "quality.last_epochs=2"]
    q = run_gan(demo_version, out, overrides).quality
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    paper = [
        r["metrics"]["fd_classifier_paper"]
        for r in records
        if r["type"] == "metrics" and "fd_classifier_paper" in r["metrics"]
    ]
    assert len(paper) == 3  # the ends of epochs 2 and 3, and the final record
    assert q["fd_classifier_paper_min"] == min(paper[:2])
    assert q["fd_classifier_paper"] == paper[-1]


def test_quality_config_names_what_the_papers_protocol_needs() -> None:
    from fashion_attr.config import ConfigError, GanConfig, load_config

    with pytest.raises(ConfigError, match=r"last_epochs=10.*paper_samples"):
        load_config(GanConfig, preset="tiny", overrides=["quality.last_epochs=10"])
    with pytest.raises(ConfigError, match=r"inception_kind.*'tf_fid' or 'torchvision'"):
        load_config(GanConfig, preset="tiny", overrides=["quality.inception_kind=keras"])
