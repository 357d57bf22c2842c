"""Dataset lineage and sources: LATEST, pending catalog batches, base chains, demo://.

The scheduled pipeline's incremental ingest is replayed by hand through the
preprocess CLI (``--base latest --batch-dir <drop>``) and must give exactly the
versions the pipeline's ingest task gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fashion_attr.data import versions
from fashion_attr.data.shards import load_manifest
from fashion_attr.demo.sources import KEEP_DEMO_CATALOGS, resolve_source
from fashion_attr.orchestration import kfp_adapter
from fashion_attr.steps import preprocess
from PIL import Image


def catalog_batch(drop: Path, name: str, demo: Path, n: int, seed: int) -> Path:
    """n new images (fresh pixels, so new content hashes) as one JSON Lines batch."""
    cats = (demo / "Anno" / "list_category_cloth.txt").read_text().splitlines()[2:]
    attrs = (demo / "Anno" / "list_attr_cloth.txt").read_text().splitlines()[2:]
    cat_name = cats[0].rsplit(maxsplit=1)[0]
    attr_name = attrs[0].rsplit(maxsplit=1)[0]
    rng = np.random.default_rng(seed)
    images = drop / f"img-{name}"
    images.mkdir(parents=True)
    lines = []
    for i in range(n):
        path = images / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)
        record = {
            "image": str(path),
            "category": cat_name,
            "attributes": [attr_name],
            "bbox": [2, 2, 28, 38],
            "split": "train",
        }
        lines.append(json.dumps(record))
    batch = drop / f"{name}.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    return batch


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert preprocess.main([*argv, "--preset", "tiny", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_scheduled_catalog_runs_fold_only_new_batches(
    demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest, drop = tmp_path / "datasets", tmp_path / "catalog"
    drop.mkdir()
    args = ("--dest", str(dest), "--base", "latest", "--batch-dir", str(drop))
    args += ("--source", str(demo_dataset))

    # 1. First scheduled run: no version yet -> bootstrap from the source.
    first = _cli(capsys, *args)
    v1 = first["version"]
    assert first["chain"] == [v1] and first["batches"] == [] and first["status"] == "created"
    assert versions.latest_version(str(dest)) == v1 and load_manifest(first["uri"]).base is None

    # 2. A batch arrives -> a new version on top of v1 with only the new images added.
    catalog_batch(drop, "2026-11-01", demo_dataset, 3, seed=1)
    second = _cli(capsys, *args)
    v2 = second["version"]
    m1, m2 = load_manifest(first["uri"]), load_manifest(second["uri"])
    assert v2 != v1 and m2.base.version == v1 and second["base"] == v1
    assert m2.counts["train"] == m1.counts["train"] + 3

    # 3. Nothing new -> the latest version is reused as is (downstream cache hits).
    third = _cli(capsys, *args)
    assert third["version"] == v2 and third["status"] == "exists" and third["chain"] == []

    # 4. Two more batches -> folded in arrival (name) order, each once.
    catalog_batch(drop, "2026-11-02", demo_dataset, 2, seed=2)
    catalog_batch(drop, "2026-11-03", demo_dataset, 1, seed=3)
    fourth = _cli(capsys, *args)
    assert [Path(b).name for b in fourth["batches"]] == ["2026-11-02.jsonl", "2026-11-03.jsonl"]
    m4 = load_manifest(fourth["uri"])
    assert m4.counts["train"] == m2.counts["train"] + 3 and len(fourth["chain"]) == 2
    chain = versions.lineage(str(dest), fourth["version"])
    assert [m.version for m in chain][-2:] == [v2, v1] and m4.batch.endswith("2026-11-03.jsonl")
    assert versions.lineage_batches(str(dest), fourth["version"]) == {
        str(drop / f"2026-11-0{i}.jsonl") for i in (1, 2, 3)
    }
    assert versions.pending_batches(str(drop), str(dest), fourth["version"]) == []


class FakeArtifact:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict[str, Any] = {}


def test_the_cli_replays_the_pipelines_scheduled_ingest(
    demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same drop, same base: the ingest task and the CLI publish the very same versions."""
    drop = tmp_path / "catalog"
    drop.mkdir()
    catalog_batch(drop, "2026-12-01", demo_dataset, 4, seed=11)
    catalog_batch(drop, "2026-12-02", demo_dataset, 2, seed=12)
    piped = tmp_path / "pipeline-store"
    params = dict(
        source_uri=str(demo_dataset),
        preset="tiny",
        parts=1,
        batch_uri=str(drop),
        base_version="latest",
        workers=1,
    )
    art = FakeArtifact(tmp_path / "dataset.json")
    version = kfp_adapter.ingest(
        storage_uri=str(piped), pipeline_run="run-1", dataset=art, **params
    )
    by_pipeline = json.loads(Path(art.path).read_text())
    by_hand = _cli(
        capsys,
        "--dest",
        str(tmp_path / "hand" / "datasets"),
        "--source",
        str(demo_dataset),
        "--base",
        "latest",
        "--batch-dir",
        str(drop),
    )
    assert by_hand["version"] == version == by_pipeline["version"]
    assert by_hand["chain"] == by_pipeline["chain"] and len(by_hand["chain"]) == 3
    assert by_hand["counts"] == by_pipeline["counts"]
    assert art.metadata["version"] == version  # what the KFP UI shows


def test_pending_batches_of_a_single_batch_and_an_empty_drop(
    demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = str(tmp_path / "datasets")
    base = _cli(capsys, "--source", str(demo_dataset), "--dest", dest)["version"]
    batch = catalog_batch(tmp_path / "one", "b", demo_dataset, 1, seed=5)
    assert versions.batch_kind(str(batch)) == "jsonl"
    assert versions.batch_kind(str(demo_dataset)) == "folder"
    assert versions.batch_kind(str(tmp_path / "nothing-yet")) == "drop"
    assert versions.pending_batches(str(batch), dest, base) == [str(batch)]
    # An S3 drop prefix exists only once the first batch arrives: empty is no error.
    assert versions.pending_batches(str(tmp_path / "nothing-yet"), dest, base) == []
    assert versions.version_uri(dest, base) == str(Path(dest) / base)
    assert versions.version_uri(dest, "s3://b/x/") == "s3://b/x"


def test_latest_without_a_source_is_refused_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dest", str(tmp_path), "--base", "latest", "--batch-dir", str(tmp_path / "drop")]
    assert preprocess.main(argv) == 2
    err = capsys.readouterr().err
    assert "LATEST" in err and "--source" in err and "Fix:" in err


def test_demo_source_is_generated_once_deterministic_and_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FA_CACHE_DIR", str(tmp_path / "cache"))
    root = Path(resolve_source("demo://?images=40&seed=3"))
    assert root.parent == tmp_path / "cache" / "demo"
    first = (root / "Anno" / "list_attr_img.txt").read_bytes()
    shutil.rmtree(root)
    again = Path(resolve_source("demo://?images=40&seed=3"))
    assert again == root and (again / "Anno" / "list_attr_img.txt").read_bytes() == first
    assert resolve_source("s3://bucket/df") == "s3://bucket/df"
    for seed in range(4, 4 + KEEP_DEMO_CATALOGS + 1):  # older catalogs do not pile up
        resolve_source(f"demo://?images=20&seed={seed}")
    assert len(list(root.parent.glob("images-*"))) == KEEP_DEMO_CATALOGS
    with pytest.raises(ValueError, match="unknown demo parameter"):
        resolve_source("demo://?image=20")
