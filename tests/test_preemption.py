"""Preemption: ``kill -9`` a training step, rerun the same command, get the same weights.

Each step runs as a child process, exactly as a container would run it. The run to be
killed goes through a small launcher that calls the step's ``main()`` after adding
test hooks: it records how many training steps have started (so the test can tell
how much work a kill lost), sleeps a little per step (so the kill lands mid-run on
any machine), and optionally hangs *inside* a checkpoint write, after the temporary
file is written and before the rename, so the kill lands mid-write. The reference and
the resumed runs are the plain ``python -m fashion_attr.steps.<step>`` command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fashion_attr.checkpoint import load_artifact
from small_runs import CLF_SMALL, GAN_SMALL, run_gan

CHECKPOINT_EVERY = 3
TOTAL_STEPS = 16  # 2 epochs of 8 batches of 8 (66 train images)

LAUNCHER = '''
"""Run a step's main() with preemption-test hooks (see tests/test_preemption.py)."""
import contextlib, importlib, os, sys, time
from pathlib import Path

step, argv = sys.argv[1], sys.argv[2:]
progress = Path(os.environ["FA_TEST_PROGRESS"])
pause = float(os.environ.get("FA_TEST_STEP_SLEEP", "0"))
hang_at = int(os.environ.get("FA_TEST_HANG_IN_CHECKPOINT_WRITE", "0"))
started = [0]


def tick():
    started[0] += 1
    progress.write_text(str(started[0]))
    time.sleep(pause)


if step == "train_gan":
    from fashion_attr.gan.loss import MRGANLoss

    original = MRGANLoss.generator_step

    def generator_step(self, cond, gen=None):
        tick()
        return original(self, cond, gen)

    MRGANLoss.generator_step = generator_step
else:
    from fashion_attr.classifier.task import ClassifierTask

    original = ClassifierTask.step_loss

    def step_loss(self, *args):
        tick()
        return original(self, *args)

    ClassifierTask.step_loss = step_loss

if hang_at:
    from fashion_attr import storage

    atomic = storage.atomic_local_write
    writes = [0]

    @contextlib.contextmanager
    def hanging_write(path):
        with atomic(path) as fh:
            yield fh
            if Path(path).name == "checkpoint.pt":
                writes[0] += 1
                if writes[0] == hang_at:
                    fh.flush()
                    os.fsync(fh.fileno())
                    Path(os.environ["FA_TEST_HANG_MARKER"]).write_text(str(path))
                    time.sleep(3600)  # killed here: temp file written, not yet renamed

    storage.atomic_local_write = hanging_write

sys.exit(importlib.import_module("fashion_attr.steps." + step).main(argv))
'''


pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread in every child: same arithmetic in every run, no contention on 2 cores.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _command(step: str, data: str, out: Path, extra: list[str], overrides: list[str]) -> list[str]:
    argv = ["--data", data, "--out", str(out), "--preset", "tiny", *extra]
    return argv + [a for o in overrides for a in ("--set", o)]


def _run_step(step: str, argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", f"fashion_attr.steps.{step}", *argv],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _start_launcher(
    tmp_path: Path, step: str, argv: list[str], **hooks: str
) -> tuple[subprocess.Popen[bytes], Path]:
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    progress = tmp_path / "progress.txt"
    env = _env()
    env.update(FA_TEST_PROGRESS=str(progress), **hooks)
    log = (tmp_path / "launcher.log").open("wb")  # a file: a full pipe would stall the child
    proc = subprocess.Popen(
        [sys.executable, str(launcher), step, *argv],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc, progress


def _log_tail(proc: subprocess.Popen[bytes]) -> str:
    log = Path(proc.args[1]).parent / "launcher.log"  # type: ignore[index]
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _wait_for(predicate: Any, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}: {_log_tail(proc)}")
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}: {_log_tail(proc)}")
        time.sleep(0.02)


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        pytest.fail(f"the run ended (rc {proc.returncode}) before the kill: {_log_tail(proc)}")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, _log_tail(proc)


def _read_int(path: Path) -> int:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else 0


def _assert_same_tensors(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _assert_same_final_weights(step: str, ref: Path, other: Path) -> None:
    ca, cb = load_artifact(ref / "checkpoint.pt"), load_artifact(other / "checkpoint.pt")
    assert ca["step"] == cb["step"] == TOTAL_STEPS
    if step == "train_gan":
        _assert_same_tensors(ca["G"], cb["G"])
        _assert_same_tensors(ca["D"], cb["D"])
        ga, gb = load_artifact(ref / "generator.pt"), load_artifact(other / "generator.pt")
        _assert_same_tensors(ga["state_dict"], gb["state_dict"])
    else:
        _assert_same_tensors(ca["model"], cb["model"])
        _assert_same_tensors(ca["memory"], cb["memory"])
        ma, mb = load_artifact(ref / "model.pt"), load_artifact(other / "model.pt")
        _assert_same_tensors(ma["state_dict"], mb["state_dict"])


@pytest.fixture(scope="module")
def generator_uri(demo_version: str, tmp_path_factory: pytest.TempPathFactory) -> str:

    out = tmp_path_factory.mktemp("pre_gan") / "gan"
    overrides = [*GAN_SMALL, "epochs=1", "max_steps=2"]
    return run_gan(demo_version, str(out), overrides).generator


@pytest.fixture(scope="module")
def commands(demo_version: str, generator_uri: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per step: (extra CLI arguments, --set overrides)."""
    return {
        "train_gan": ([], GAN_SMALL),
        "train_classifier": (["--generator", generator_uri], CLF_SMALL),
    }


@pytest.fixture(scope="module")
def references(
    demo_version: str,
    commands: dict[str, tuple[list[str], list[str]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Uninterrupted runs of both steps (same seed; in this process, one thread like the
    children: CPU arithmetic is the same in and out of process)."""
    import importlib

    refs = {}
    for step, (extra, overrides) in commands.items():
        out = tmp_path_factory.mktemp(f"ref_{step}") / "out"
        main = importlib.import_module(f"fashion_attr.steps.{step}").main
        assert main(_command(step, demo_version, out, extra, overrides)) == 0
        assert load_artifact(out / "checkpoint.pt")["step"] == TOTAL_STEPS
        refs[step] = out
    return refs


@pytest.mark.parametrize("step", ["train_gan", "train_classifier"])
def test_kill9_then_rerun_resumes_and_matches_uninterrupted(
    step: str,
    demo_version: str,
    commands: dict[str, tuple[list[str], list[str]]],
    references: dict[str, Path],
    tmp_path: Path,
) -> None:
    extra, overrides = commands[step]
    out = tmp_path / "out"
    argv = _command(step, demo_version, out, extra, overrides)
    proc, progress = _start_launcher(tmp_path, step, argv, FA_TEST_STEP_SLEEP="0.15")
    ckpt = out / "checkpoint.pt"
    # Kill past the first checkpoint, a little into the next interval (steps 7-8 of 16).
    _wait_for(lambda: ckpt.exists() and _read_int(progress) >= 7, proc, "step 7", 120)
    _kill9(proc)
    started = _read_int(progress)
    saved = load_artifact(ckpt)["step"]  # the checkpoint the kill left behind
    assert 3 <= saved < TOTAL_STEPS and not (out / "generator.pt").exists()
    assert not (out / "model.pt").exists()

    summary = _run_step(step, argv)  # the very same command again
    assert summary["resumed_from_step"] == saved
    assert summary["steps"] == TOTAL_STEPS
    # At most one checkpoint interval of work is done twice.
    assert started - saved <= CHECKPOINT_EVERY, (started, saved)
    _assert_same_final_weights(step, references[step], out)


@pytest.mark.parametrize("step", ["train_gan", "train_classifier"])
def test_kill9_during_a_checkpoint_write_keeps_the_previous_checkpoint(
    step: str,
    demo_version: str,
    commands: dict[str, tuple[list[str], list[str]]],
    references: dict[str, Path],
    tmp_path: Path,
) -> None:
    extra, overrides = commands[step]
    out = tmp_path / "out"
    argv = _command(step, demo_version, out, extra, overrides)
    marker = tmp_path / "hanging.txt"
    proc, progress = _start_launcher(
        tmp_path,
        step,
        argv,
        FA_TEST_HANG_IN_CHECKPOINT_WRITE="2",  # the 2nd checkpoint (step 6)
        FA_TEST_HANG_MARKER=str(marker),
    )
    _wait_for(marker.exists, proc, "the 2nd checkpoint write", 120)
    _kill9(proc)
    # The half-done write left only a temp file; checkpoint.pt is the 1st one, intact.
    assert list(out.glob(".checkpoint.pt.*.tmp")), sorted(p.name for p in out.iterdir())
    state = load_artifact(out / "checkpoint.pt")
    assert state["step"] == CHECKPOINT_EVERY
    assert _read_int(progress) == 2 * CHECKPOINT_EVERY

    summary = _run_step(step, argv)
    assert summary["resumed_from_step"] == CHECKPOINT_EVERY
    _assert_same_final_weights(step, references[step], out)
