"""A step's MLflow run is never left RUNNING, and every step nests under the pipeline's run.

A real MLflow store (SQLite file). A ``train_gan`` process is terminated (SIGTERM) while
it trains: its run ends KILLED, nested under the run of its pipeline run. In-process: an
interrupted step (Ctrl-C) ends KILLED, a failing one FAILED; ``FA_MLFLOW_PARENT_RUN_ID``
names the parent; an attempt SIGKILLed earlier (still RUNNING) is marked KILLED by the
next.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fashion_attr.tracking import (
    PARENT_RUN_ENV,
    PIPELINE_RUN_ENV,
    Tracker,
    experiment_id,
    start_step_run,
)
from small_runs import GAN_NET

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "lifecycle"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with the experiment, made once (migrations take seconds)."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow-template")
    mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}").create_experiment(
        EXPERIMENT, artifact_location=(root / "artifacts").as_uri()
    )
    return root / "mlflow.db"


@pytest.fixture
def store(empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh copy of the store, set for this test (and for the step processes it starts)."""
    saved = dict(os.environ)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    yield uri
    os.environ.clear()
    os.environ.update(saved)


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def _step_runs(uri: str, step: str) -> list:
    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`fashion_attr.step` = '{step}'"
    )


def _gan_args(demo_version: str, out: Path, *sets: str) -> list[str]:
    argv = ["--data", demo_version, "--out", str(out), "--preset", "tiny"]
    return argv + [a for s in [*GAN_NET, "num_workers=0", *sets] for a in ("--set", s)]


def test_a_terminated_step_ends_killed_nested_under_its_pipeline_run(
    store: str, demo_version: str, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "fashion_attr.steps.train_gan"]
    argv += _gan_args(demo_version, tmp_path / "gan", "epochs=1000", "quality.enabled=false")
    env = {**os.environ, PIPELINE_RUN_ENV: "kfp-run-1", "PYTHONPATH": f"{ROOT}/components"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        runs: list = []
        while time.monotonic() < deadline and proc.poll() is None:
            runs = _step_runs(store, "train_gan")
            if runs and runs[0].data.params:  # the step logs its config first thing
                break
            time.sleep(0.3)
        assert runs and runs[0].info.status == "RUNNING", proc.communicate()[1].decode()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM, err.decode()  # it still dies of the signal
    [run] = _step_runs(store, "train_gan")
    assert run.info.status == "KILLED"
    parent = _client(store).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["fashion_attr.pipeline_run"] == "kfp-run-1"
    assert parent.data.tags["fashion_attr.role"] == "pipeline"


def test_an_interrupted_step_ends_killed(
    store: str,
    demo_version: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fashion_attr.steps import train_gan
    from fashion_attr.training import ResumableLoop

    advance = ResumableLoop.advance

    def ctrl_c_at_step_2(self: ResumableLoop, *args: object, **kwargs: object) -> None:
        if self.step == 1:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        advance(self, *args, **kwargs)

    monkeypatch.setattr(ResumableLoop, "advance", ctrl_c_at_step_2)
    argv = _gan_args(demo_version, tmp_path / "gan", "epochs=3", "quality.enabled=false")
    assert train_gan.main(argv) == 130
    [run] = _step_runs(store, "train_gan")
    assert run.info.status == "KILLED"
    assert "interrupted" in capsys.readouterr().err


def test_a_failing_step_ends_failed(
    store: str, demo_version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fashion_attr.steps import train_gan

    out = tmp_path / "gan"
    out.mkdir()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes(b"PK\x03\x04 cut short")
    assert train_gan.main(_gan_args(demo_version, out)) == 2
    [run] = _step_runs(store, "train_gan")
    assert run.info.status == "FAILED"
    assert "--no-resume" in capsys.readouterr().err


def test_every_step_nests_under_the_named_parent_run(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(store)
    exp = experiment_id(client)
    parent = client.create_run(exp, run_name="pipeline").info.run_id
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    with Tracker(None, "evaluate") as tracker:
        tracker.log_metrics({"x": 1.0}, step=1)
    run = client.get_run(tracker.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.status == "FINISHED" and run.data.metrics == {"x": 1.0}
    monkeypatch.setenv(PARENT_RUN_ENV, "0" * 32)
    with pytest.raises(ValueError, match=f"{PARENT_RUN_ENV}=0+ names no run"):
        Tracker(None, "evaluate")


def test_a_sigkilled_attempt_is_marked_killed_by_the_next(store: str) -> None:
    client = _client(store)
    first = start_step_run(client, "train_classifier", pipeline_run="kfp-run-2")
    # (SIGKILL: nothing ran in the process, the run stays RUNNING)
    second = start_step_run(client, "train_classifier", pipeline_run="kfp-run-2")
    assert client.get_run(first.info.run_id).info.status == "KILLED"
    assert client.get_run(second.info.run_id).info.status == "RUNNING"
    assert first.data.tags["mlflow.parentRunId"] == second.data.tags["mlflow.parentRunId"]
    client.set_terminated(second.info.run_id)
