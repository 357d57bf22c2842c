"""Data-parallel training under ``torchrun`` (2 CPU processes, gloo backend).

The steps run through a small launcher that calls the step's ``main()`` (what
``torchrun -m fashion_attr.steps.<step>`` runs) after adding debug hooks: it keeps
a reference to the trained modules and, for the classifier, records per step the
local HABP numerator and denominator and the loss the task returned, and counts the
synthetic (Deact) batches. After ``main()`` returns every rank dumps that to
``rank<r>.pt``, so the test can check that the ranks ended with identical weights
and that the HABP normaliser was the global one (eq. 1-4 over the global batch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from fashion_attr.checkpoint import load_artifact
from small_runs import GAN_NET, GAN_QUICK, run_gan

LAUNCHER = '''
"""torchrun entry with debug hooks (see tests/test_ddp.py)."""
import importlib, os, sys
from pathlib import Path

from fashion_attr.checkpoint import save_artifact

step, argv = sys.argv[1], sys.argv[2:]
rank = int(os.environ["RANK"])
modules = {}
records = []
synthetic = [0]

if step == "train_classifier":
    from fashion_attr.classifier import task as task_mod
    from fashion_attr.classifier.deact import DeactLoss

    ClassifierTask = task_mod.ClassifierTask
    original_step, original_real = ClassifierTask.step_loss, ClassifierTask.real_loss
    original_terms, original_synth = task_mod.habp_terms, DeactLoss.synthesize

    def step_loss(self, model, *args):
        modules["model"] = getattr(model, "module", model)
        return original_step(self, model, *args)

    def habp_terms(*args, **kwargs):
        num, den = original_terms(*args, **kwargs)
        records.append({"num": float(num.detach()), "den": float(den.detach())})
        return num, den

    def real_loss(self, *args):
        loss = original_real(self, *args)
        records[-1]["loss"] = float(loss.detach())
        return loss

    def synthesize(self, n):
        synthetic[0] += 1
        return original_synth(self, n)

    ClassifierTask.step_loss, ClassifierTask.real_loss = step_loss, real_loss
    task_mod.habp_terms, DeactLoss.synthesize = habp_terms, synthesize
else:
    from fashion_attr.gan.loss import MRGANLoss

    original_init = MRGANLoss.__init__

    def init(self, generator, discriminator, *args):
        modules["G"] = getattr(generator, "module", generator)
        modules["D"] = getattr(discriminator, "module", discriminator)
        original_init(self, generator, discriminator, *args)

    MRGANLoss.__init__ = init

rc = importlib.import_module("fashion_attr.steps." + step).main(argv)
params = {
    f"{name}.{key}": value.detach().cpu().clone()
    for name, module in modules.items()
    for key, value in module.named_parameters()
}
out = Path(os.environ["FA_TEST_DUMP"]) / f"rank{rank}.pt"
save_artifact(out, {"params": params, "records": records, "synthetic": synthetic[0], "rc": rc})
sys.exit(rc)
'''


def _torchrun(tmp_path: Path, step: str, argv: list[str]) -> list[dict[str, Any]]:
    launcher = tmp_path / "ddp_launcher.py"
    launcher.write_text(LAUNCHER)
    dump = tmp_path / "dump"
    dump.mkdir()
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", FA_TEST_DUMP=str(dump), PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(launcher), step, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Every rank prints its JSON summary (the two may share a line: parse objects, not lines).
    decoder, summaries, pos = json.JSONDecoder(), [], proc.stdout.find("{")
    while pos >= 0:
        obj, end = decoder.raw_decode(proc.stdout, pos)
        summaries.append(obj)
        pos = proc.stdout.find("{", end)
    assert len(summaries) == 2, proc.stdout
    dumps = [load_artifact(dump / f"rank{r}.pt") for r in (0, 1)]
    assert [d["rc"] for d in dumps] == [0, 0]
    for d, summary in zip(dumps, summaries, strict=True):
        d["summary"] = summary
    return dumps


def _assert_ranks_in_sync(dumps: list[dict[str, Any]]) -> None:
    a, b = dumps[0]["params"], dumps[1]["params"]
    assert a.keys() == b.keys() and len(a) > 4
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between ranks"


def _argv(data: str, out: Path, overrides: list[str], *extra: str) -> list[str]:
    argv = ["--data", data, "--out", str(out), "--preset", "tiny", *extra]
    return argv + [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def generator_uri(demo_version: str, tmp_path_factory: pytest.TempPathFactory) -> str:

    out = tmp_path_factory.mktemp("ddp_gan") / "gan"
    return run_gan(demo_version, str(out), GAN_QUICK).generator


def test_train_classifier_two_ranks_habp_deact(
    demo_version: str, generator_uri: str, tmp_path: Path
) -> None:
    out = tmp_path / "clf"
    overrides = [
        "device=cpu",
        # 33 samples per rank: 8 batches of 4 per epoch, so the run stops mid-epoch before
        # any epoch-end validation (the export then validates: on rank 0, all ranks wait).
        "max_steps=6",
        "epochs=2",
        "batch_size=4",
        "image_size=16",
        "deact.every=2",
        "checkpoint_every=4",
        "num_workers=0",
        "export=last",
    ]
    argv = _argv(demo_version, out, overrides, "--generator", generator_uri)
    dumps = _torchrun(tmp_path, "train_classifier", argv)
    _assert_ranks_in_sync(dumps)
    # Deact ran on both ranks at steps 2, 4, 6.
    assert [d["synthetic"] for d in dumps] == [3, 3]
    assert all(d["summary"]["deact_steps"] == 3 for d in dumps)
    # Global HABP normaliser: each rank's loss is num_r * W / (den_0 + den_1), so that
    # DDP's gradient average is the gradient of sum(num) / sum(den) over the global batch.
    r0, r1 = dumps[0]["records"], dumps[1]["records"]
    assert len(r0) == len(r1) == 6
    for a, b in zip(r0, r1, strict=True):
        total_den = a["den"] + b["den"]
        assert a["loss"] == pytest.approx(a["num"] * 2 / total_den, rel=1e-5)
        assert b["loss"] == pytest.approx(b["num"] * 2 / total_den, rel=1e-5)
    # The ranks saw different images (so the global and local normalisers differ).
    assert any(a["den"] != pytest.approx(b["den"]) for a, b in zip(r0, r1, strict=True))
    # Rank 0 wrote the outputs; the exported weights are the (shared) trained ones.
    state = load_artifact(out / "checkpoint.pt")
    assert state["step"] == 6 and len(state["samples_consumed"]) == 2
    assert state["samples_consumed"] == [24, 24]  # 6 batches of 4 on each rank
    exported = load_artifact(out / "model.pt")["state_dict"]
    for key, value in dumps[0]["params"].items():
        assert torch.equal(exported[key.removeprefix("model.")], value)


def test_train_gan_two_ranks(
    demo_version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gan"
    overrides = [
        "device=cpu",
        "epochs=1",
        "max_steps=3",
        "batch_size=8",
        *GAN_NET,
        "checkpoint_every=2",
        "num_workers=0",
    ]
    dumps = _torchrun(tmp_path, "train_gan", _argv(demo_version, out, overrides))
    _assert_ranks_in_sync(dumps)
    assert all(d["summary"]["steps"] == 3 for d in dumps)
    state = load_artifact(out / "checkpoint.pt")
    assert state["step"] == 3 and state["samples_consumed"] == [24, 24]
    assert len(state["rng"]) == 2
    # Each rank draws its own noise (different seeds), saved for exact resume.
    assert not torch.equal(state["rng"][0]["generators"][0], state["rng"][1]["generators"][0])
    exported = load_artifact(out / "generator.pt")["state_dict"]
    for key, value in dumps[0]["params"].items():
        if key.startswith("G."):
            assert torch.equal(exported[key.removeprefix("G.")], value)
    # The 2-rank checkpoint cannot be resumed by one process: refused, with the fix.
    from fashion_attr.steps import train_gan

    assert train_gan.main(_argv(demo_version, out, [*overrides, "max_steps=4"])) == 2
    err = capsys.readouterr().err
    assert "2 process(es); this run has 1" in err and "--nproc_per_node 2" in err
