"""Step tests of ``train_gan``: outputs, S3, the DC loss, exact resume, and NaN handling.

All runs use a very small MR-GAN (16 px, base 4) on the session's ``demo_version``
(66 train images: 8 batches of 8 per epoch), one torch thread (the runs are
tiny; two threads only contend on a shared 2-core machine).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fashion_attr.checkpoint import load_artifact
from fashion_attr.data.shards import load_manifest
from fashion_attr.gan.export import load_generator
from fashion_attr.gan.loss import MRGANLoss, StepLosses
from fashion_attr.gan.networks import make_condition
from fashion_attr.runtime import NonFiniteLossError
from fashion_attr.steps import train_gan
from fashion_attr.training import ResumableLoop
from PIL import Image
from small_runs import GAN_SMALL, run_gan

SMALL = GAN_SMALL  # 16 px pyramid, 2 epochs of 8 steps (tests/small_runs.py)
STEPS_PER_EPOCH = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gan_run(demo_version: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted reference run (its generator.pt is reused by other tests)."""
    out = tmp_path_factory.mktemp("gan_ref") / "gan"
    summary = run_gan(demo_version, str(out), SMALL)
    return {"out": out, "summary": summary}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _metrics(path: Path) -> list[dict[str, Any]]:
    return [r for r in _records(path) if r["type"] == "metrics"]


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_outputs_of_a_tiny_run(gan_run: dict[str, Any], demo_version: str) -> None:
    out: Path = gan_run["out"]
    summary = gan_run["summary"]
    assert summary.steps == 2 * STEPS_PER_EPOCH and summary.epochs == 2
    assert summary.resumed_from_step is None
    assert summary.generator == str(out / "generator.pt")

    g, meta = load_generator(str(out / "generator.pt"))
    manifest = load_manifest(demo_version)
    assert not g.training
    assert meta["format"] == "fashion_attr.generator/v1"
    assert meta["attribute_names"] == [a.name for a in manifest.attributes]
    assert meta["category_names"] == [c.name for c in manifest.categories]
    assert meta["dataset_version"] == manifest.version
    assert meta["steps"] == 16
    assert meta["spec"]["image_size"] == 16 and meta["spec"]["base_size"] == 4
    # The generator emits the whole pyramid, in [-1, 1] (tanh).
    cond = make_condition(torch.tensor([0, 3]), torch.zeros(2, 38), 50)
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        levels = g(z, cond)
        again = g(z, cond, perturb_sigma=0.0, noise_generator=torch.Generator().manual_seed(1))
        bad = g(z, cond, perturb_sigma=1.5, noise_generator=torch.Generator().manual_seed(1))
    assert [tuple(t.shape) for t in levels] == [(2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 16, 16)]
    assert all(float(t.abs().max()) <= 1.0 for t in levels)
    assert torch.equal(again[-1], levels[-1])  # sigma_p = 0 is exactly the clean generator
    assert not torch.equal(bad[-1], levels[-1])

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["image_size"] == 16 and saved["epochs"] == 2 and saved["dc_weight"] == 1.0

    metrics = _metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [10, 16, 16]  # every 10 steps, the last, final
    last = metrics[1]["metrics"]
    for size in (4, 8, 16):
        assert math.isfinite(last[f"loss_d/{size}px"]) and math.isfinite(last[f"loss_g/{size}px"])
    # D's loss is the mean over resolutions (docs/method.md section 4).
    mean_d = sum(last[f"loss_d/{s}px"] for s in (4, 8, 16)) / 3
    assert last["loss_d"] == pytest.approx(mean_d, rel=1e-5)
    assert 0.0 <= last["projection_msc"] <= 1.0
    assert last["loss_dc"] > 0
    assert metrics[2]["metrics"]["final_projection_msc"] == pytest.approx(summary.projection_msc)
    params = next(r for r in _records(out / "metrics.jsonl") if r["type"] == "params")
    assert params["params"]["config.z_dim"] == "16"

    for epoch in (1, 2):
        clean = out / "samples" / f"epoch_{epoch:03d}.png"
        perturbed = out / "samples" / f"epoch_{epoch:03d}_perturbed.png"
        for png in (clean, perturbed):
            with Image.open(png) as im:
                im.verify()
            with Image.open(png) as im:
                assert im.format == "PNG" and im.size[0] >= 4 * 16
        # The "bad" generator (sigma_p = 1.5) draws different images from the clean one.
        with Image.open(clean) as a, Image.open(perturbed) as b:
            assert a.tobytes() != b.tobytes()
    ckpt = load_artifact(out / "checkpoint.pt")
    assert ckpt["step"] == 16 and ckpt["epoch"] == 2 and ckpt["samples_consumed"] == [0]


def test_output_to_s3(demo_version: str, s3_server: Any, tmp_path: Path) -> None:
    out = s3_server.uri("runs/gan")
    summary = run_gan(demo_version, out, [*SMALL, "epochs=1", "max_steps=4"])
    assert summary.generator == f"{out}/generator.pt" and summary.steps == 4
    keys = {
        o["Key"]
        for o in s3_server.client.list_objects_v2(Bucket=s3_server.bucket, Prefix="runs/gan/")[
            "Contents"
        ]
    }
    assert {
        "runs/gan/generator.pt",
        "runs/gan/checkpoint.pt",
        "runs/gan/config.yaml",
        "runs/gan/metrics.jsonl",
        "runs/gan/samples/epoch_000.png",
        "runs/gan/samples/epoch_000_perturbed.png",
    } <= keys
    g, meta = load_generator(summary.generator)
    assert meta["steps"] == 4 and not g.training
    assert load_artifact(f"{out}/checkpoint.pt")["step"] == 4
    # Resuming from the S3 checkpoint works too (nothing left to do: same step).
    again = run_gan(demo_version, out, [*SMALL, "epochs=1", "max_steps=4"])
    assert again.resumed_from_step == 4 and again.steps == 4


def test_decorrelation_weight_zero_and_positive(demo_version: str, tmp_path: Path) -> None:
    runs = {}
    for dc in ("0", "1.0"):
        out = tmp_path / f"dc{dc}"
        result = run_gan(demo_version, str(out), [*SMALL, f"dc_weight={dc}"])
        logged = _metrics(out / "metrics.jsonl")[1]["metrics"]
        runs[dc] = {"metrics": logged, "projection_msc": result.projection_msc}
    assert "loss_dc" not in runs["0"]["metrics"]
    assert runs["1.0"]["metrics"]["loss_dc"] > 0
    # Random 4x4 filters have a mean squared cosine near 1/16; the DC loss (eq. 7-8)
    # pulls the projection filters apart, so with it the MSC ends clearly lower.
    assert runs["0"]["projection_msc"] == pytest.approx(1 / 16, abs=0.01)
    assert runs["1.0"]["projection_msc"] < 0.8 * runs["0"]["projection_msc"]


class _PreemptedError(Exception):
    """Raised from a patched hook to stop a run the way a kill would."""


def _stop_after_generator_steps(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    original = MRGANLoss.generator_step
    calls = [0]

    def patched(self: MRGANLoss, cond: torch.Tensor, gen: Any = None) -> StepLosses:
        calls[0] += 1
        if calls[0] > n:
            raise _PreemptedError(f"stopped before step {calls[0]}")
        return original(self, cond, gen)

    monkeypatch.setattr(MRGANLoss, "generator_step", patched)


def _assert_same_final_state(ref: Path, resumed: Path) -> None:
    a, b = load_artifact(ref / "generator.pt"), load_artifact(resumed / "generator.pt")
    _assert_same_state(a["state_dict"], b["state_dict"])
    ca, cb = load_artifact(ref / "checkpoint.pt"), load_artifact(resumed / "checkpoint.pt")
    _assert_same_state(ca["D"], cb["D"])
    for opt in ("opt_g", "opt_d"):
        for idx, st in ca[opt]["state"].items():
            for name, value in st.items():
                assert torch.equal(value, cb[opt]["state"][idx][name]), f"{opt} {idx} {name}"
    assert torch.equal(ca["rng"][0]["generators"][0], cb["rng"][0]["generators"][0])


def test_resume_mid_epoch_is_bitwise_exact(
    gan_run: dict[str, Any], demo_version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "gan"
    with monkeypatch.context() as m:
        _stop_after_generator_steps(m, 11)  # dies in step 12 of 16; last checkpoint: step 9
        with pytest.raises(_PreemptedError):
            run_gan(demo_version, str(out), SMALL)
    state = load_artifact(out / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["samples_consumed"]) == (9, 1, [8])
    assert not (out / "generator.pt").exists()
    summary = run_gan(demo_version, str(out), SMALL)
    assert summary.resumed_from_step == 9 and summary.steps == 16
    _assert_same_final_state(gan_run["out"], out)
    # The resumed run's metrics log continues the interrupted one's (step 10 once).
    steps = [m["step"] for m in _metrics(out / "metrics.jsonl")]
    assert steps == [10, 16, 16]


def test_resume_between_the_two_checkpoints_of_an_epoch_end(
    gan_run: dict[str, Any], demo_version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint_every=4: step 8 is written mid-loop (loader exhausted), then again at the
    epoch end. A crash between the two must resume into an empty rest-of-epoch cleanly."""
    out = tmp_path / "gan"
    overrides = [*SMALL, "checkpoint_every=4"]
    original = ResumableLoop.save
    calls = [0]

    def crash_on_third_save(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 3:  # saves: step 4, step 8 (mid-loop), step 8 (epoch end)
            raise _PreemptedError("killed before the epoch-end checkpoint")
        original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ResumableLoop, "save", crash_on_third_save)
        with pytest.raises(_PreemptedError):
            run_gan(demo_version, str(out), overrides)
    state = load_artifact(out / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["samples_consumed"]) == (8, 0, [64])
    summary = run_gan(demo_version, str(out), overrides)
    assert summary.resumed_from_step == 8 and summary.steps == 16
    # Checkpoint frequency never changes the math: same weights as the reference run.
    _assert_same_final_state(gan_run["out"], out)


def test_no_resume_starts_over(gan_run: dict[str, Any], demo_version: str, tmp_path: Path) -> None:
    out = tmp_path / "gan"
    shutil.copytree(gan_run["out"], out)  # a used folder: finished run, checkpoint, metrics
    before = load_artifact(out / "generator.pt")["state_dict"]
    argv = ["--data", demo_version, "--out", str(out), "--preset", "tiny", "--no-resume"]
    code = train_gan.main(argv + [a for o in [*SMALL, "max_steps=2"] for a in ("--set", o)])
    assert code == 0
    after = load_artifact(out / "generator.pt")
    assert after["steps"] == 2 and load_artifact(out / "checkpoint.pt")["step"] == 2
    assert any(not torch.equal(before[k], after["state_dict"][k]) for k in before)
    # Only this run's metrics are in the log (the old run's were not carried over).
    assert [m["step"] for m in _metrics(out / "metrics.jsonl")] == [2, 2]


def test_nan_loss_stops_with_exit_3_and_exports_nothing(
    demo_version: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A NaN at step 5 (not a log or checkpoint step) is still caught and named."""
    original = MRGANLoss.generator_step
    calls = [0]

    def nan_at_step_5(self: MRGANLoss, cond: torch.Tensor, gen: Any = None) -> StepLosses:
        calls[0] += 1
        terms = original(self, cond, gen)
        if calls[0] == 5:
            return StepLosses(terms.total * float("nan"), terms.per_level, terms.dc)
        return terms

    monkeypatch.setattr(MRGANLoss, "generator_step", nan_at_step_5)
    out = tmp_path / "gan"
    argv = ["--data", demo_version, "--out", str(out), "--preset", "tiny"]
    code = train_gan.main(argv + [a for o in [*SMALL, "checkpoint_every=2"] for a in ("--set", o)])
    err = capsys.readouterr().err
    assert code == 3
    assert "non-finite loss at step 5" in err
    assert "loss_g=nan" in err and "loss_d=" in err and "loss_dc=" in err
    assert not (out / "generator.pt").exists()
    state = load_artifact(out / "checkpoint.pt")  # the last good one: step 4
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())
    assert not (out / "samples").exists()  # the epoch never ended


def test_diverging_lr_stops_at_the_first_bad_step(demo_version: str, tmp_path: Path) -> None:
    out = tmp_path / "gan"
    with pytest.raises(NonFiniteLossError, match=r"step 1: loss_d=.*loss_g=nan") as info:
        run_gan(demo_version, str(out), [*SMALL, "lr=1e30"])
    assert "lower train_gan.lr" in str(info.value)
    assert not (out / "generator.pt").exists() and not (out / "checkpoint.pt").exists()
