"""Executing a step: in-process, under torchrun, as a cluster job; failures keep their message."""

from __future__ import annotations

import json
import time
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
    with pytest.raises(StepError, match="will not run on the CPU instead") as info:
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


def test_a_retry_after_the_fix_runs_a_retry_with_the_same_inputs_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KFP's "Retry run" keeps the run id (common/util/workflow.go @2.17.0): the record
    blocks only an attempt with the same inputs, files and credentials, and only while the
    automatic retries can come."""
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"image": "missing.jpg"}\n')
    runs: list[str] = []

    def attempt(inputs: dict[str, Any], fail: bool, **kw: Any) -> int:
        try:
            with task_attempt(
                "ingest", str(tmp_path / "s"), "run-1", inputs=inputs, stamped=[str(batch)], **kw
            ):
                runs.append("ran")
                if fail:
                    raise ValueError(f"{batch}: line 1: no such image. Fix: ...")
        except SystemExit as stop:
            return int(stop.code)
        return 0

    params = {"batch_uri": str(batch), "preset": "tiny"}
    assert attempt(params, fail=True) == 2 and len(runs) == 1
    assert attempt(params, fail=True) == 2 and len(runs) == 1  # Argo's retry: blocked
    assert "not retried" in capsys.readouterr().err
    # The operator fixes the batch file (same path, new content), then presses Retry.
    batch.write_text('{"image": "present.jpg", "category": "Dress"}\n')
    assert attempt(params, fail=False) == 0 and len(runs) == 2
    # A new credential in the secret also counts as a fix.
    assert attempt(params, fail=True) == 2 and len(runs) == 3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated")
    assert attempt(params, fail=False) == 0 and len(runs) == 4
    # An unfixable-looking failure is retried once the automatic retries are long past.
    assert attempt(params, fail=True) == 2 and len(runs) == 5
    assert attempt(params, fail=True, block_s=0) == 2 and len(runs) == 6


def test_sigterm_unwinds_the_task_and_ends_it_as_stopped(tmp_path: Path) -> None:
    """A cancelled run or a pod deadline sends SIGTERM: what the task holds is released."""
    import os
    import signal

    released = []
    with pytest.raises(SystemExit) as stop, task_attempt("gan-training", str(tmp_path), "run-1"):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            released.append(True)
    assert stop.value.code == 130 and released == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM)
    )


def test_two_runs_on_the_same_inputs_never_share_a_writable_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manual submit while the nightly run trains the same inputs: the second waits on the
    folder's lease and reuses the first's result; the step runs once."""
    import threading

    from fashion_attr.steps import train_gan

    calls: list[str] = []

    def slow_run(cfg: Any, data: str, out: str, **_: Any) -> TrainGanResult:
        calls.append(out)
        time.sleep(1.0)
        result = TrainGanResult(generator=f"{out}/generator.pt", steps=7)
        result.write(out)
        return result

    monkeypatch.setattr(train_gan, "run", slow_run)
    out = str(tmp_path / "runs" / "train_gan" / "k")
    results: dict[str, TrainGanResult] = {}

    def submit(run_id: str) -> None:
        results[run_id] = execute(  # type: ignore[assignment]
            "train_gan", _gan_cfg(), data="d", out=out, owner=run_id
        )

    threads = [threading.Thread(target=submit, args=(r,)) for r in ("nightly", "manual")]
    for th in threads:
        th.start()
        time.sleep(0.2)
    for th in threads:
        th.join(timeout=30)
    assert calls == [out]  # trained once
    assert results["nightly"] == results["manual"]
    # Identical inputs later: the finished result, no training and no lease taken.
    assert execute("train_gan", _gan_cfg(), data="d", out=out, owner="next").steps == 7
    assert calls == [out]
    # --no-resume trains afresh.
    execute("train_gan", _gan_cfg(), data="d", out=out, owner="next", resume=False)
    assert len(calls) == 2


def test_a_fix_inside_a_stamped_folder_changes_the_attempt_fingerprint(tmp_path: Path) -> None:
    """A folder input (a DeepFashion-C root, a batch folder) is stamped by its files: an
    operator's fix of one file lets the retry run; an untouched folder keeps blocking it."""
    from fashion_attr.orchestration.identity import attempt_fingerprint

    root = tmp_path / "drop"
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_text("1\n")
    (root / "sub" / "b.jsonl").write_text("2\n")
    params = {"batch_uri": str(root)}
    before = attempt_fingerprint(params, [str(root)])
    assert attempt_fingerprint(params, [str(root)]) == before
    (root / "sub" / "b.jsonl").write_text("2 fixed\n")
    assert attempt_fingerprint(params, [str(root)]) != before
    missing = attempt_fingerprint(params, [str(tmp_path / "gone")])
    assert missing == attempt_fingerprint(params, [str(tmp_path / "gone")])
