"""The whole DAG runs locally with kfp.local (what `make run` does), on tiny budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--images",
    "120",
    "--gan-overrides",
    '["epochs=1", "max_steps=3", "batch_size=16"]',
    "--classifier-overrides",
    '["epochs=1", "batch_size=16", "deact.every=2"]',
]


def _run(workdir: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.run_local", "--workdir", str(workdir), *TINY, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def _registry(workdir: Path, name: str) -> tuple[list, dict]:
    """(versions, aliases) of a registered model (search results carry no aliases)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    versions = client.search_model_versions(f"name='{name}'")
    return versions, {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def test_local_pipeline_runs_end_to_end_and_registers(tmp_path: Path) -> None:
    out = _run(tmp_path)
    assert "Registered model: fashion-attr-demo version 1" in out
    assert "Alias           : champion" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    versions, aliases = _registry(tmp_path, "fashion-attr-demo")
    assert len(versions) == 1 and aliases["champion"] == "1"
    # The step outputs are in the local storage, keyed by their inputs.
    runs = tmp_path / "storage" / "runs"
    assert list(runs.glob("gan/*/generator.pt")) and list(runs.glob("classifier/*/model.pt"))
    assert list(runs.glob("evaluation/*/report.md"))
    # KFP visualisations: the Markdown report and the HTML plots were written.
    assert list((tmp_path / "kfp").rglob("report")) and list((tmp_path / "kfp").rglob("plots"))


@pytest.mark.slow
def test_second_run_on_new_demo_data_registers_a_new_version_and_gates(tmp_path: Path) -> None:
    _run(tmp_path)
    out = _run(tmp_path)  # the next seed: new catalog data, new dataset version
    assert "version 2" in out
    assert "Gate decision" in out
    versions, aliases = _registry(tmp_path, "fashion-attr-demo")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert aliases["champion"] in ("1", "2")  # the registry always keeps one champion
    assert aliases["challenger"] == "2" or aliases["champion"] == "2"
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["next_seed"] == 2
