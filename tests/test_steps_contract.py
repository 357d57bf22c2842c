"""The step contract: typed results on disk, exit codes, error records, Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fashion_attr.config import ConfigError
from fashion_attr.runtime import NonFiniteLossError
from fashion_attr.steps import contract
from fashion_attr.steps.contract import StepError, StepResult, exit_code_for, run_cli
from fashion_attr.storage import StorageError
from pydantic import Field


class DemoResult(StepResult):
    step = "demo"

    uri: str
    steps: int
    figures: dict[str, float] = Field(default_factory=dict)


def test_result_round_trips_through_result_json(tmp_path: Path) -> None:
    result = DemoResult(uri="s3://b/x", steps=3, figures={"a": 0.5})
    written = result.write(str(tmp_path))
    assert written == str(tmp_path / "result.json")
    assert DemoResult.read(str(tmp_path)) == result
    assert json.loads(result.to_json()) == {"uri": "s3://b/x", "steps": 3, "figures": {"a": 0.5}}
    with pytest.raises(ValueError, match="frozen"):
        result.steps = 4  # type: ignore[misc]


def test_reading_a_missing_or_foreign_result_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"demo has not finished in .*Fix:"):
        DemoResult.read(str(tmp_path / "nothing"))
    (tmp_path / "result.json").write_text('{"other": 1}')
    with pytest.raises(ValueError, match=r"is not a demo result .*Fix: rerun demo"):
        DemoResult.read(str(tmp_path))


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ValueError("bad"), 2),
        (ConfigError("typo"), 2),
        (FileNotFoundError("gone"), 2),
        (StorageError("NoSuchBucket"), 2),
        (StorageError("endpoint down", retryable=True), 3),
        (RuntimeError("server 500"), 3),
        (NonFiniteLossError("nan"), 3),
        (StepError("child said so", 2), 2),
        (KeyboardInterrupt(), 130),
    ],
)
def test_exit_codes_tell_user_errors_from_faults(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_a_failure_is_recorded_in_the_output_folder_and_cleared_by_the_next_attempt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing() -> StepResult:
        raise ConfigError("lr: must be > 0. Fix: set lr=0.01")

    assert run_cli("demo", failing, out=str(tmp_path)) == 2
    assert "demo: error: lr: must be > 0" in capsys.readouterr().err
    recorded = contract.read_error(str(tmp_path))
    assert recorded is not None and recorded.exit_code == 2 and "Fix: set lr" in str(recorded)
    assert run_cli("demo", lambda: DemoResult(uri="u", steps=1), out=str(tmp_path)) == 0
    assert contract.read_error(str(tmp_path)) is None
    assert json.loads(capsys.readouterr().out)["steps"] == 1


def test_ctrl_c_says_that_a_rerun_resumes(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> StepResult:
        raise KeyboardInterrupt

    assert run_cli("train_gan", interrupted, resumable=True) == 130
    err = capsys.readouterr().err
    assert "train_gan: interrupted; rerun the same command to resume" in err
    assert "Traceback" not in err


def test_a_bug_keeps_its_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def buggy() -> StepResult:
        return {}["missing"]  # type: ignore[return-value]

    assert run_cli("demo", buggy) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "demo: failed: 'missing'" in err
