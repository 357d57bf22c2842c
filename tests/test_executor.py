"""Executing a step: in-process, under torchrun, as a cluster job; failures keep their message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fashion_attr import storage
from fashion_attr.config import ClassifierConfig, GanConfig, load_config
from fashion_attr.orchestration import executor
from fashion_attr.orchestration.executor import Placement, execute, task_attempt
from fashion_attr.steps.contract import EXIT_USER, StepError
from fashion_attr.steps.train_gan import TrainGanResult
from small_runs import CLF_SMALL, GAN_QUICK

pytestmark = pytest.mark.usefixtures("one_thread")


def _gan_cfg() -> GanConfig:
    return load_config(GanConfig, preset="tiny", overrides=[*GAN_QUICK, "device=cpu"])


def test_in_process_returns_the_steps_result(demo_version: str, tmp_path: Path) -> None:
    result = execute("train_gan", _gan_cfg(), data=demo_version, out=str(tmp_path / "g"))
    assert isinstance(result, TrainGanResult) and result.steps == 2
    assert TrainGanResult.read(str(tmp_path / "g")) == result  # also on disk


def test_a_step_that_asked_for_a_gpu_never_trains_on_the_cpu(
    demo_version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(StepError, match="will not train on the CPU instead") as info:
        execute(
            "train_gan", _gan_cfg(), data=demo_version, out=str(tmp_path), placement=Placement(1)
        )
    assert info.value.exit_code == 3
    assert not (tmp_path / "checkpoint.pt").exists()


def test_torchrun_failure_reaches_the_caller_with_the_steps_own_message(
    demo_version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two CPU ranks under torchrun (gloo); Deact without a generator is a user error."""
    monkeypatch.setattr(executor, "check_gpus", lambda step, wanted: None)
    cfg = load_config(
        ClassifierConfig, preset="tiny", overrides=[*CLF_SMALL, "device=cpu", "deact.enabled=true"]
    )
    out = tmp_path / "clf"
    with pytest.raises(StepError) as info:
        execute("train_classifier", cfg, data=demo_version, out=str(out), placement=Placement(2))
    assert info.value.exit_code == EXIT_USER
    assert "deact.enabled is true but no generator was given" in str(info.value)
    # The resolved config travelled as a file next to the outputs.
    assert load_config(ClassifierConfig, config_file=str(out / "step_config.yaml")) == cfg


def test_multi_node_runs_a_cluster_job_and_reads_its_result(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fashion_attr.cluster as launch

    out = s3_server.uri("runs/gan/0123456789abcdef")
    calls: list[tuple[Any, Any]] = []

    def fake_job(step: str, argv: list[str], **kw: Any) -> None:
        calls.append((step, argv, kw))
        TrainGanResult(generator=f"{out}/generator.pt", steps=7).write(out)

    monkeypatch.setattr(launch, "run_step_on_cluster", fake_job)
    placement = Placement(gpus=4, nodes=2, job_kind="pytorchjob", image="reg/fa:1")
    result = execute("train_gan", _gan_cfg(), data="s3://b/d", out=out, placement=placement)
    assert result.steps == 7
    ((step, argv, kw),) = calls
    assert step == "train_gan" and argv[:4] == ["--data", "s3://b/d", "--out", out]
    assert argv[4:7] == ["--config", f"{out}/step_config.yaml", "--record-error"]
    assert storage.exists(f"{out}/step_config.yaml")
    assert kw["nodes"] == 2 and kw["gpus_per_node"] == 4 and kw["kind"] == "pytorchjob"
    assert kw["key"] == "0123456789abcdef" and kw["image"] == "reg/fa:1"


def test_a_failed_cluster_job_raises_the_recorded_message(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fashion_attr.cluster as launch

    out = s3_server.uri("runs/gan/fedcba9876543210")

    def failing_job(step: str, argv: list[str], **kw: Any) -> None:
        record = {"exit_code": 2, "message": "bad.jsonl:3: unknown attribute. Fix: ..."}
        storage.write_text(f"{out}/error.json", json.dumps(record))
        raise RuntimeError("PyTorchJob fashion-attr/fa-train-gan-x failed: reason Error")

    monkeypatch.setattr(launch, "run_step_on_cluster", failing_job)
    placement = Placement(gpus=1, nodes=2, image="reg/fa:1")
    with pytest.raises(StepError, match=r"bad\.jsonl:3: unknown attribute") as info:
        execute("train_gan", _gan_cfg(), data="s3://b/d", out=out, placement=placement)
    assert info.value.exit_code == EXIT_USER


def test_multi_node_needs_object_storage_and_an_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3://"):
        execute("train_gan", _gan_cfg(), data="d", out=str(tmp_path), placement=Placement(1, 2))
    with pytest.raises(ValueError, match="FA_IMAGE"):
        execute("train_gan", _gan_cfg(), data="d", out="s3://b/o", placement=Placement(1, 2))


def test_a_user_error_is_not_redone_by_a_retry_of_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = []

    def attempt(run_id: str, exc: BaseException | None) -> int:
        try:
            with task_attempt("classifier-training", str(tmp_path), run_id):
                runs.append(run_id)
                if exc is not None:
                    raise exc
        except SystemExit as stop:
            return int(stop.code)
        return 0

    assert attempt("run-1", ValueError("deact.lambda: not a number. Fix: ...")) == 2
    assert "classifier-training: error: deact.lambda: not a number" in capsys.readouterr().err
    # Argo retries the pod: the body is not run again, the same message comes at once.
    assert attempt("run-1", None) == 2 and runs == ["run-1"]
    assert "not retried" in capsys.readouterr().err
    # A fault is retried for real, and a new pipeline run starts clean.
    assert attempt("run-2", RuntimeError("CUDA out of memory")) == 3
    assert attempt("run-2", None) == 0 and runs == ["run-1", "run-2", "run-2"]
