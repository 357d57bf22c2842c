"""Fail fast: every pipeline input is checked in seconds, before any work, and never retried.

- :func:`check_pipeline_inputs` lists every problem at once, each naming the parameter
  and the fix (a typo in an override, an unknown preset or gate metric, a missing
  source, a batch without a base, multi-node training on local storage);
- the DAG's ``validation`` task (the KFP adapter) exits 2 on them and records the user
  error, so a retry of the task fails at once with the same message;
- ``make run`` (``pipelines.run_local``) refuses a typo before it submits anything.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fashion_attr.orchestration.preflight import PreflightError, check_pipeline_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sqlite_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_good_inputs_pass_and_plan_the_fan_out(tmp_path: Path, sqlite_tracking: str) -> None:
    plan = check_pipeline_inputs(
        source_uri="demo://?images=40&seed=0",
        storage_uri=str(tmp_path / "storage"),
        preset="tiny",
        classifier_overrides=["epochs=1"],
        ingest_parts=3,
        gate_metrics=["attr_recall@3/all"],
    )
    assert plan.parts == [0, 1, 2]
    assert plan.configs["train_classifier"].epochs == 1


def test_every_problem_is_listed_at_once_with_its_fix(tmp_path: Path, sqlite_tracking: str) -> None:
    start = time.monotonic()
    with pytest.raises(PreflightError) as info:
        check_pipeline_inputs(
            source_uri=str(tmp_path / "no-such-root"),
            storage_uri=str(tmp_path / "storage"),
            preset="tiny",
            classifier_overrides=["epochz=1"],
            gan_overrides=["dc_weight=-1"],
            gate_metrics=["attr_recall@3/al"],
            batch_uri=str(tmp_path / "batch.jsonl"),
            train_nodes=2,
        )
    message = str(info.value)
    assert time.monotonic() - start < 30
    assert "epochz" in message and "dc_weight" in message
    assert "attr_recall@3/al" in message and "gate_metrics" in message
    assert "batch_uri is set but base_version" in message
    assert "train_nodes=2" in message and "s3://" in message
    assert "nothing was run" in message and message.count("Fix") >= 3


def test_an_unknown_preset_is_named() -> None:
    with pytest.raises(PreflightError, match="preset: 'papr' is unknown"):
        check_pipeline_inputs(
            source_uri="demo://?images=40", storage_uri="/tmp", preset="papr", mlflow=False
        )


def test_the_validation_task_exits_2_and_a_retry_after_the_fix_runs(
    tmp_path: Path, sqlite_tracking: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation is never retried automatically, so it keeps no attempt record: KFP's
    "Retry run" (same run id) after a fix checks the inputs again and runs."""
    from fashion_attr.orchestration import kfp_adapter

    params = {
        "source_uri": "demo://?images=40&seed=0",
        "batch_uri": "none",
        "base_version": "none",
        "preset": "tiny",
        "gan_overrides": "none",
        "classifier_overrides": '["epochz=1"]',
        "reuse_generator": "none",
        "ingest_parts": 1,
        "model_name": "m",
        "gate_metrics": "attr_recall@3/all",
        "gate_tolerance": 0.005,
    }
    storage_uri = str(tmp_path / "storage")
    start = time.monotonic()
    with pytest.raises(SystemExit) as first:
        kfp_adapter.validation(storage_uri=storage_uri, pipeline_run="run-1", **params)
    assert first.value.code == 2
    assert "epochz" in capsys.readouterr().err
    assert time.monotonic() - start < 10
    # The operator fixes the override of the same run and presses Retry: it runs.
    fixed = {**params, "classifier_overrides": '["epochs=1"]'}
    assert kfp_adapter.validation(storage_uri=storage_uri, pipeline_run="run-1", **fixed) == [0]
    assert not (tmp_path / "storage" / "runs" / "attempts").exists()


def test_make_run_refuses_a_typo_before_submitting(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.run_local",
            "--workdir",
            str(tmp_path / "work"),
            "--images",
            "40",
            "--classifier-overrides",
            '["epochz=1"]',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "epochz" in proc.stderr and "Fix" in proc.stderr
    assert not (tmp_path / "work" / "kfp").exists()  # nothing was submitted
    assert time.monotonic() - start < 60


def test_a_paper_preset_without_its_weights_fails_validation_in_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not hours later at the classifier's first step, after ingest and GAN training."""
    from fashion_attr.classifier.model import PretrainedWeightsError, check_pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(PreflightError, match="pretrained") as info:
        check_pipeline_inputs(
            source_uri="demo://?images=40", storage_uri=str(tmp_path), preset="paper", mlflow=False
        )
    assert "vgg16-397923af.pth" in str(info.value) and "pretrained=null" in str(info.value)
    assert time.monotonic() - start < 30
    # A weights file that is there passes; one that is not a torch file is named.
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    assert str(cached) in check_pretrained("vgg16_paper", "imagenet")
    bogus = tmp_path / "weights.pth"
    bogus.write_text("not weights")
    with pytest.raises(PretrainedWeightsError, match=r"not a file torch\.save wrote"):
        check_pretrained("vgg16_paper", str(bogus))
    assert check_pretrained("tiny", None) == "no pretrained weights"


def test_the_preflight_cli_checks_a_full_parameter_set(tmp_path: Path) -> None:
    """The validation task's checks as their own command (not a no-op that exits 0)."""
    from fashion_attr.orchestration.preflight import main

    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0
    base = ["--storage-uri", str(tmp_path), "--source-uri", "demo://?images=40", "--no-mlflow"]
    assert main([*base, "--preset", "tiny"]) == 0
    assert main([*base, "--preset", "tiny", "--classifier-overrides", "epochz=1"]) == 2
    with pytest.raises(SystemExit) as bad:
        main([*base, "--preset", "papr"])
    assert bad.value.code == 2
