"""The whole DAG runs locally with kfp.local (what `make run` does), on tiny budgets.

The DAG runs once per test session (the ``local_pipeline`` fixture of conftest.py),
with sentinel secrets in its environment; this module and the secret scan of
``test_security_secrets.py`` read that one run. A second run (the gate on new
catalog data) works on a copy of its folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import LocalPipeline, run_local_pipeline


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
    assert "train_gan: step" in out and "img/s" in out and "ETA" in out
    assert "train_classifier: step" in out
    assert len(out.splitlines()) < 120, out


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
