"""A year of nights in one test: the real DAG, run locally, through the lifecycle of a schedule.

Nights run ``python -m pipelines.run_local`` (the same DAG the cluster runs, with
``kfp.local``) on one work folder, as the nightly schedule runs one pipeline on one storage:

1. bootstrap: the demo catalog is ingested, trained, registered (version 1, champion);
2. nothing new: the same inputs again: the plan task finds the training key registered,
   no GPU task runs, no version is added;
3. a new catalog batch (with unlabelled records): folded in, audited by the champion,
   retrained, gated on the paired split (version 2);
4. a code upgrade with unchanged data (``FA_CODE_VERSION``): trained afresh in new
   folders (not resumed from the old checkpoint), registered (version 3).

The other nights of the lifecycle are checked where they act, on the same storage: a GPU
count change names a new output folder; a user error (exit 2) fixed and retried with the
same run id runs (KFP's Retry keeps the run id); two concurrent submits never share a
folder (tests/test_executor.py, test_two_runs_on_the_same_inputs_never_share...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--gan-overrides",
    "epochs=1,max_steps=3,batch_size=16",
    "--classifier-overrides",
    "epochs=1,batch_size=16,deact.every=2",
]
MODEL = "fa-lifecycle"

pytestmark = pytest.mark.slow


def _night(work: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.run_local",
            "--workdir",
            str(work),
            "--images",
            "120",
            "--seed",
            "11",
            "--model-name",
            MODEL,
            *TINY,
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout + done.stderr, time.monotonic() - start


def _versions(work: Path) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    return sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))


def _folders(work: Path, step: str) -> set[str]:
    return {p.name for p in (work / "storage" / "runs" / step).glob("*") if p.is_dir()}


def test_a_sequence_of_nights(tmp_path: Path) -> None:
    work = tmp_path / "work"

    # 1. Bootstrap.
    out, first_s = _night(work)
    assert f"Registered model: {MODEL} version 1" in out
    gan_1 = _folders(work, "train_gan")
    assert len(gan_1) == 1

    # 2. Nothing new: no training, no new version, no new folder.
    out, idle_s = _night(work)
    assert "nothing new to train" in out and "gan-training" not in out
    assert len(_versions(work)) == 1 and _folders(work, "train_gan") == gan_1
    print(f"bootstrap {first_s:.0f} s, a night with nothing new {idle_s:.0f} s")

    # 3. A new catalog batch, 10 % of it unlabelled: audited, retrained, gated on pairs.
    from fashion_attr.demo import generate_demo_dataset
    from fashion_attr.demo.batches import write_catalog_batch

    demo = generate_demo_dataset(tmp_path / "new-season", images=90, seed=23)
    batch = write_catalog_batch(demo, tmp_path / "drop" / "2026-12-01.jsonl", unlabelled_share=0.1)
    out, _ = _night(work, "--batch", str(batch))
    assert f"Registered model: {MODEL} version 2" in out
    assert "paired" in out and "Audit of the new batch (audited)" in out
    versions = _versions(work)
    assert versions[1].tags["audit.status"] == "audited"
    assert versions[1].tags["dataset_version"] != versions[0].tags["dataset_version"]
    tags = [p for p in (work / "storage" / "datasets").glob("*/audit/tags.jsonl")]
    assert tags and tags[0].read_text().strip()
    gan_3 = _folders(work, "train_gan")
    assert len(gan_3) == 2

    # The same batch again the next night: nothing new.
    out, _ = _night(work, "--batch", str(batch))
    assert "nothing new to train" in out and len(_versions(work)) == 2

    # 4. A code upgrade, data unchanged: trained afresh (new folders), not resumed.
    out, _ = _night(work, "--batch", str(batch), env={"FA_CODE_VERSION": "0.2.0+upgrade"})
    assert f"Registered model: {MODEL} version 3" in out
    new = _folders(work, "train_gan") - gan_3
    assert len(new) == 1
    result = json.loads(
        (work / "storage" / "runs" / "train_gan" / new.pop() / "result.json").read_text()
    )
    assert result["resumed_from_step"] is None
    assert _versions(work)[2].tags["code_version"] == "0.2.0+upgrade"


def test_a_gpu_count_change_trains_into_a_new_folder() -> None:
    from fashion_attr.orchestration.identity import Placement, output_key

    one = output_key(placement=Placement(gpus=1), data="d", cfg={"lr": 0.1})
    two = output_key(placement=Placement(gpus=2), data="d", cfg={"lr": 0.1})
    nodes = output_key(placement=Placement(gpus=1, nodes=2, image="i"), data="d", cfg={"lr": 0.1})
    assert len({one, two, nodes}) == 3
    assert one == output_key(placement=Placement(gpus=1), data="d", cfg={"lr": 0.1})


def test_an_exit_2_failure_fixed_and_retried_with_the_same_run_id_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """KFP's "Retry run" keeps the run id (backend/src/common/util/workflow.go @2.17.0): the
    ingest task that failed on a bad batch file runs once the file is fixed."""
    from fashion_attr.orchestration import kfp_adapter

    storage_uri = str(tmp_path / "storage")
    demo = tmp_path / "demo"
    from fashion_attr.demo import generate_demo_dataset
    from fashion_attr.demo.batches import write_catalog_batch

    generate_demo_dataset(demo, images=40, seed=3)
    batch = tmp_path / "drop" / "b.jsonl"
    batch.parent.mkdir()
    batch.write_text('{"image": "gone.jpg", "category": "Nope"}\n')

    class Out:
        def __init__(self, path: Path) -> None:
            self.path, self.uri, self.metadata = str(path), str(path), {}

    params = {
        "source_uri": str(demo),
        "storage_uri": storage_uri,
        "preset": "tiny",
        "parts": 1,
        "batch_uri": str(batch),
        "base_version": "latest",
        "workers": 1,
    }
    with pytest.raises(SystemExit) as failed:
        kfp_adapter.ingest(pipeline_run="run-7", dataset=Out(tmp_path / "a1"), **params)
    assert failed.value.code == 2
    with pytest.raises(SystemExit) as again:  # Argo's automatic retry: same inputs, blocked
        kfp_adapter.ingest(pipeline_run="run-7", dataset=Out(tmp_path / "a2"), **params)
    assert again.value.code == 2 and "not retried" in capsys.readouterr().err
    write_catalog_batch(demo, batch)  # the operator fixes the batch file, then Retry
    version = kfp_adapter.ingest(pipeline_run="run-7", dataset=Out(tmp_path / "a3"), **params)
    assert version.startswith("v-")
