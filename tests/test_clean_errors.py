"""Errors a user meets name the file, the endpoint or the variable, and the fix (issue 14).

- a corrupt ``checkpoint.pt``: the run resumes from ``checkpoint.prev.pt``; with both
  unreadable it stops with exit 2 in one line naming both files, what is wrong with each
  (truncated, not a torch file, unsafe content: never torch's ``weights_only=False``
  advice) and ``--no-resume``;
- a truncated generator handed to the classifier: exit 2 naming the file;
- an unreachable S3 endpoint: the URI and the endpoint, no traceback;
- the steps' ``--help`` keeps its usage examples as written, and ``register --help``
  does not show ``--pipeline-run`` as required (it defaults to ``FA_PIPELINE_RUN``);
- the project's licence is an SPDX string (setuptools' table form is deprecated).
"""

from __future__ import annotations

import shutil
import time
import tomllib
from pathlib import Path

import pytest
from fashion_attr.checkpoint import load_artifact
from fashion_attr.steps import preprocess, register, train_classifier, train_gan
from small_runs import CLF_SMALL, GAN_QUICK, GAN_SMALL, run_gan

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def interrupted(demo_version: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GAN run stopped at step 10: checkpoint.pt (step 10) and checkpoint.prev.pt (8)."""
    out = tmp_path_factory.mktemp("gan_stopped") / "gan"
    run_gan(demo_version, out, [*GAN_SMALL, "max_steps=10"])
    assert load_artifact(out / "checkpoint.prev.pt")["step"] < 10
    return out


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(
    interrupted: Path, demo_version: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "gan"
    shutil.copytree(interrupted, out)
    previous_step = load_artifact(out / "checkpoint.prev.pt")["step"]
    good = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])  # a torn write
    argv = ["--data", demo_version, "--out", str(out), "--preset", "tiny"]
    assert train_gan.main(argv + _sets(GAN_SMALL)) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        str(out / "checkpoint.pt") in m and "trying the previous checkpoint" in m for m in warned
    ), warned
    result = train_gan.TrainGanResult.read(str(out))
    assert result.resumed_from_step == previous_step and result.steps == 16


@pytest.mark.parametrize(
    ("current", "previous"),
    [("truncated", "random"), ("truncated", "crafted")],
)
def test_with_no_readable_checkpoint_the_step_names_both_files_and_no_resume(
    current: str,
    previous: str,
    interrupted: Path,
    demo_version: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both checkpoints unreadable: exit 2, one line, each file's diagnosis, --no-resume.

    Random bytes used to be called "objects other than tensors", quoting torch's advice
    to load with weights_only=False; a crafted pickle is refused for safety, not loaded.
    """
    out = tmp_path / "gan"
    shutil.copytree(interrupted, out)
    good = (out / "checkpoint.pt").read_bytes()
    damaged = {
        "truncated": good[: len(good) // 2],
        "random": bytes(range(256)) * 16,
        "crafted": _crafted(tmp_path / "marker"),
    }
    (out / "checkpoint.pt").write_bytes(damaged[current])
    (out / "checkpoint.prev.pt").write_bytes(damaged[previous])
    argv = ["--data", demo_version, "--out", str(out), "--preset", "tiny"]
    assert train_gan.main(argv + _sets(GAN_SMALL)) == 2
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("train_gan: ")]
    assert line.startswith("train_gan: error: train_gan cannot resume from")
    assert f"{out / 'checkpoint.pt'} is truncated" in line
    words = {"random": "is not a torch file", "crafted": "is unsafe (it references"}[previous]
    assert f"{out / 'checkpoint.prev.pt'} {words}" in line
    assert "--no-resume" in line and "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "marker").exists()  # nothing of the crafted file ran


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "ran"))


def _crafted(marker: Path) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"step": 10, "payload": _RunsCode(marker)}, buffer)
    return buffer.getvalue()


def test_a_truncated_generator_is_named(
    demo_version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = run_gan(demo_version, tmp_path / "gan", GAN_QUICK).generator
    blob = Path(gen).read_bytes()
    Path(gen).write_bytes(blob[: len(blob) // 3])
    argv = ["--data", demo_version, "--out", str(tmp_path / "clf"), "--generator", gen]
    assert train_classifier.main([*argv, "--preset", "tiny", *_sets(CLF_SMALL)]) == 2
    err = capsys.readouterr().err
    assert gen in err and "Fix:" in err and "Traceback" not in err


def test_an_unreachable_endpoint_is_named_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow_server import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    # Two attempts, not the default 10: the message is what is tested here, and botocore's
    # backoff over 10 attempts made this the suite's slowest unit test (20-36 s).
    monkeypatch.setenv("FA_S3_MAX_ATTEMPTS", "2")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    start = time.monotonic()
    code = preprocess.main(
        ["--source", "s3://no-such-bucket/deepfashion", "--dest", str(tmp_path), "--no-progress"]
    )
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 3, err
    assert "s3://no-such-bucket/deepfashion" in err and endpoint in err, err
    assert "Traceback" not in err and len(err.splitlines()) <= 3, err
    assert elapsed < 60  # a bound against a hang


@pytest.mark.parametrize("module", [preprocess, train_gan, train_classifier, register])
def test_help_keeps_the_usage_examples_as_written(
    module, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        module.main(["--help"])
    out = capsys.readouterr().out
    examples = [line for line in (module.__doc__ or "").splitlines() if "python -m" in line]
    assert examples
    for line in examples:
        assert line in out.splitlines(), line  # not reflowed into a paragraph


def test_register_help_does_not_show_pipeline_run_as_required(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        register.main(["--help"])
    out = capsys.readouterr().out
    usage = out.split("\n\n")[0]
    assert "[--pipeline-run" in usage, usage
    assert "FA_PIPELINE_RUN" in out


def test_the_licence_is_an_spdx_expression() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])


def test_verbose_adds_the_traceback_to_the_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    metrics = tmp_path / "m.json"
    metrics.write_text('{"metrics": {"attr_recall@3/all": 0.5}}')
    argv = ["--model", str(tmp_path / "model.pt"), "--metrics", str(metrics)]
    argv += ["--pipeline-run", "r1", "--set", "gate_metrics=[attr_recall@3/all]"]
    assert register.main(argv) == 2
    quiet = capsys.readouterr().err
    assert "register: error:" in quiet and "Traceback" not in quiet
    assert register.main([*argv, "--verbose"]) == 2
    loud = capsys.readouterr().err
    assert "Traceback (most recent call last)" in loud and "register: error:" in loud
    assert register.main(argv) == 2  # the flag does not stick to the next run
    assert "Traceback" not in capsys.readouterr().err
