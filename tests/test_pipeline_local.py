"""The whole DAG runs locally with kfp.local (what `make run` does), on tiny budgets.

The DAG runs once per test session (the ``local_pipeline`` fixture of conftest.py),
with sentinel secrets in its environment; this module's tests, its secret scan
among them (with the scanners of ``test_security_secrets.py``), read that one run.
Under ``make test`` (pytest-xdist, ``--dist loadfile``) every test of the run is in
this file, so one worker runs the DAG, once. A second run (the gate on new
catalog data) works on a copy of its folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import CANARY, LocalPipeline, run_local_pipeline


def _registry(workdir: Path, name: str) -> tuple[list, dict]:
    """(versions, aliases) of a registered model (search results carry no aliases)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    versions = client.search_model_versions(f"name='{name}'")
    return versions, {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def _results(workdir: Path, step: str) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text())
        for p in (workdir / "storage" / "runs" / step).glob("*/result.json")
    ]


def test_local_pipeline_runs_end_to_end_and_registers(local_pipeline: LocalPipeline) -> None:
    out, workdir, name = local_pipeline.stdout, local_pipeline.workdir, local_pipeline.model_name
    assert f"Registered model: {name} version 1" in out
    assert "Alias           : champion" in out
    assert "make serve" in out and "make mlflow-ui" in out
    versions, aliases = _registry(workdir, name)
    assert len(versions) == 1 and aliases["champion"] == "1"
    # Every step left its typed result beside its outputs, naming them.
    [gan] = _results(workdir, "train_gan")
    [clf] = _results(workdir, "train_classifier")
    [ev] = _results(workdir, "evaluation")
    assert Path(gan["generator"]).is_file() and Path(clf["model"]).is_file()
    assert clf["deact_steps"] > 0 and Path(ev["report"]).is_file()
    # KFP visualisations: the Markdown report and the HTML plots were written.
    assert list((workdir / "kfp").rglob("report")) and list((workdir / "kfp").rglob("plots"))


def test_make_run_output_is_the_steps_progress_and_the_summary(
    local_pipeline: LocalPipeline,
) -> None:
    out = local_pipeline.stdout + local_pipeline.stderr
    assert "Got executor_input" not in out and "[KFP Executor" not in out
    assert "validation: every input checks out" in out
    # (3-step runs: the line after the first step, then the total time; ETA lines in
    # between are tested in test_progress.py)
    assert "train_gan: step" in out and "img/s" in out and "done in" in out
    assert "train_classifier: step" in out
    assert len(out.splitlines()) < 120, out


def test_the_summarys_serve_and_predict_commands_work_verbatim(
    local_pipeline: LocalPipeline,
) -> None:
    """Copy the printed `make serve` and `make predict` lines: a served champion answers."""
    import os
    import shlex
    import signal
    import subprocess
    import time
    import urllib.request

    from conftest import ROOT, sentinel_env
    from mlflow_server import free_port

    commands = [line.strip() for line in local_pipeline.stdout.splitlines()]
    [serve] = [c for c in commands if c.startswith("make serve")]
    predicts = [c for c in commands if c.startswith("make predict")]
    assert len(predicts) == 2 and "BBOX=" in predicts[0], predicts
    port = f"PORT={free_port()}"
    server = subprocess.Popen(
        [*shlex.split(serve), port],
        cwd=ROOT,
        env=sentinel_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port.split('=')[1]}/ping"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "make serve did not answer /ping in 180 s"
            time.sleep(0.5)
        for command in predicts:
            done = subprocess.run(
                [*shlex.split(command), port], cwd=ROOT, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stdout + done.stderr
            # (under `make test`, make also prints "Entering/Leaving directory" lines)
            answer, _ = json.JSONDecoder().raw_decode(done.stdout, done.stdout.index("{"))
            assert answer["category"] and answer["top_k"], answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_second_run_on_new_demo_data_registers_a_new_version_and_gates(
    local_pipeline: LocalPipeline, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(local_pipeline.workdir, workdir)
    out = run_local_pipeline(workdir, local_pipeline.model_name).stdout
    assert "version 2" in out and "Gate decision" in out
    versions, aliases = _registry(workdir, local_pipeline.model_name)
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert aliases["champion"] in ("1", "2")  # the registry always keeps one champion
    assert aliases["challenger"] == "2" or aliases["champion"] == "2"
    assert json.loads((workdir / "state.json").read_text())["next_seed"] == 2


def test_local_pipeline_run_leaks_no_secret(local_pipeline: LocalPipeline) -> None:
    """The shared local DAG run (conftest.py) had sentinel secrets in every credential."""
    import mlflow
    from test_security_secrets import leaks, scan_files, scan_mlflow

    workdir = local_pipeline.workdir
    output = (local_pipeline.stdout + local_pipeline.stderr).encode()
    found = leaks(output, "run_local stdout/stderr")
    files_found, files = scan_files(workdir.rglob("*"))
    found += files_found
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    api_found, seen = scan_mlflow(client)
    found += api_found
    assert found == [], "\n".join(found)
    kfp_files = list((workdir / "kfp").rglob("*"))
    assert files >= 20 and len(kfp_files) >= 10
    assert seen["runs"] >= 5 and seen["params"] >= 20 and seen["versions"] == 1
    assert f"Registered model: {CANARY} version 1" in local_pipeline.stdout


def test_a_killed_step_is_named_without_kfps_colour_codes() -> None:
    # What kfp.local raises when a step's process was SIGKILLed (it printed no error line).
    from pipelines.run_local import _failure

    exc = RuntimeError(
        "Pipeline \x1b[95m'fashion-attr-retraining'\x1b[0m finished with status "
        "\x1b[91mFAILURE\x1b[0m. Inner task failed: \x1b[96m'gan-training'\x1b[0m inside "
        "\x1b[96m'condition-3'\x1b[0m."
    )
    text = _failure(exc, [], ["--seed", "0"])
    assert "\x1b" not in text
    assert "the step gan-training ended without a message of its own: it was killed" in text
    assert "rerun the same command to resume" in text and "run_local --seed 0" in text
    # A step that printed its own error is quoted as it was.
    text = _failure(exc, [("train_gan", 2, "bad config. Fix: x")], [])
    assert "the step train_gan failed (exit 2): bad config. Fix: x" in text
