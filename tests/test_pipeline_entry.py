"""Pipeline entry points: scheduled catalog ingest (base 'latest' + a drop of batches)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fashion_attr.data.shards import load_manifest
from fashion_attr.steps import pipeline_entry as pe
from PIL import Image


class FakeArtifact:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict = {}


def _catalog_batch(drop: Path, name: str, demo: Path, n: int, seed: int) -> None:
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
        lines.append(
            json.dumps(
                {
                    "image": str(path),
                    "category": cat_name,
                    "attributes": [attr_name],
                    "bbox": [2, 2, 28, 38],
                    "split": "train",
                }
            )
        )
    (drop / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def test_scheduled_catalog_runs_fold_only_new_batches(demo_dataset: Path, tmp_path: Path) -> None:
    storage_uri = str(tmp_path / "store")
    drop = tmp_path / "catalog"
    drop.mkdir()
    kw = dict(
        source_uri=str(demo_dataset),
        storage_uri=storage_uri,
        preset="tiny",
        part=0,
        parts=[0],
        batch_uri=str(drop),
        base_version="latest",
        merge=True,
    )

    # 1. First scheduled run: no version yet -> bootstrap from the source.
    art = FakeArtifact(tmp_path / "a1")
    uri1, v1 = pe.preprocess(**kw, dataset=art)
    m1 = load_manifest(uri1)
    assert art.metadata["version"] == v1 and m1.base is None
    assert pe.latest_version(str(tmp_path / "store" / "datasets")) == v1

    # 2. A batch arrives -> a new version on top of v1 with only the new images added.
    _catalog_batch(drop, "2026-11-01", demo_dataset, 3, seed=1)
    uri2, v2 = pe.preprocess(**kw)
    m2 = load_manifest(uri2)
    assert v2 != v1 and m2.base.version == v1
    assert m2.counts["train"] == m1.counts["train"] + 3

    # 3. Nothing new -> the latest version is reused as is (downstream cache hits).
    uri3, v3 = pe.preprocess(**kw)
    assert v3 == v2 and uri3 == uri2

    # 4. Two more batches -> folded in arrival (name) order, each once.
    _catalog_batch(drop, "2026-11-02", demo_dataset, 2, seed=2)
    _catalog_batch(drop, "2026-11-03", demo_dataset, 1, seed=3)
    uri4, _v4 = pe.preprocess(**kw)
    m4 = load_manifest(uri4)
    assert m4.counts["train"] == m2.counts["train"] + 3
    assert load_manifest(str(Path(uri4).parent / m4.base.version)).base.version == v2
    assert m4.batch.endswith("2026-11-03.jsonl")


def test_part_tasks_are_noops_in_incremental_mode(demo_dataset: Path, tmp_path: Path) -> None:
    out = pe.preprocess(
        source_uri=str(demo_dataset),
        storage_uri=str(tmp_path),
        preset="tiny",
        part=1,
        parts=[0, 1],
        batch_uri=str(tmp_path),
        base_version="latest",
    )
    assert out == ("", "")
    assert not (tmp_path / "datasets").exists()


def test_batch_without_base_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="base_version"):
        pe.preprocess(
            source_uri="x",
            storage_uri=str(tmp_path),
            preset="tiny",
            part=0,
            parts=1,
            batch_uri="s3://b/catalog/",
            base_version="none",
            merge=True,
        )


def test_overrides_accept_json_lists_and_comma_lists() -> None:
    assert pe._overrides("none") == []
    assert pe._overrides('["lr=0.1", "deact.every=2"]') == ["lr=0.1", "deact.every=2"]
    assert pe._overrides("lr=0.1, epochs=2") == ["lr=0.1", "epochs=2"]
    with pytest.raises(ValueError, match="JSON list"):
        pe._overrides("[1, 2]")


def test_demo_source_is_generated_once_and_deterministic(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pe.tempfile, "gettempdir", lambda: str(tmp_path))
    root = Path(pe.resolve_source("demo://?images=40&seed=3"))
    first = (root / "Anno" / "list_attr_img.txt").read_bytes()
    shutil.rmtree(root)
    again = Path(pe.resolve_source("demo://?images=40&seed=3"))
    assert again == root and (again / "Anno" / "list_attr_img.txt").read_bytes() == first
    assert pe.resolve_source("s3://bucket/df") == "s3://bucket/df"


def test_multi_node_training_launches_a_cluster_job(monkeypatch) -> None:
    import fashion_attr.launch as launch

    calls = []
    monkeypatch.setattr(launch, "run_step_on_cluster", lambda *a, **kw: calls.append((a, kw)))
    pe._run_step(
        "train_classifier",
        ["--data", "s3://b/d"],
        4,
        nodes=2,
        job_kind="pytorchjob",
        image="reg/fa:1",
        out="s3://b/runs/classifier/0123456789abcdef",
    )
    ((args, kw),) = calls
    assert args == ("train_classifier", ["--data", "s3://b/d"])
    assert kw["nodes"] == 2 and kw["gpus_per_node"] == 4 and kw["kind"] == "pytorchjob"
    assert kw["key"] == "0123456789abcdef" and kw["image"] == "reg/fa:1"
    with pytest.raises(ValueError, match="s3://"):
        pe._run_step("train_gan", [], 1, nodes=2, image="reg/fa:1", out="/local/out")
