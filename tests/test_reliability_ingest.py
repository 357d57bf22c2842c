"""Ingest under faults: a SIGKILLed step, two ingests of one source at once, a racing failure.

Promises (README "Reliability and security"):

* A ``python -m fashion_attr.steps.preprocess`` process group killed with SIGKILL
  mid-run (after its first shard file is on disk) leaves no visible version (no
  ``manifest.json``); the rerun completes, and the version holds every source image
  exactly once (all shard keys read back and compared with the annotation names).
* Two ingests of the same source started at the same moment (a retried step racing
  the original) both exit 0 and leave one valid version: manifest valid, every shard's
  sha256 and size as the manifest says, counts right, no duplicates, no losses.
* A run that fails after a concurrent run of the same version has published it does
  not delete the shards that the published manifest names.

Regression: before ``ShardWriter`` used a private temporary file per writer, both
racing runs wrote into the same ``.<shard>.tar.tmp`` and one failed with
FileNotFoundError, deleting the shards the other had just published under its
manifest (a version that looked complete but whose shards were gone).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fashion_attr.data.annotations import load_annotations_from_dir
from fashion_attr.data.ingest import ingest_full
from fashion_attr.data.shards import (
    ManifestError,
    ShardWriter,
    iter_shard_samples,
    load_manifest,
    resolve_shard_uri,
    sample_key,
    sha256_file,
)
from fashion_attr.demo import generate_demo_dataset

IMAGE_SIZE = 96
PER_SHARD = 8


@pytest.fixture(scope="module")
def source400(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 demo images (about 2 s to generate, about 1.5 s to ingest on one core)."""
    root = tmp_path_factory.mktemp("source400")
    return generate_demo_dataset(root, images=400, seed=3, min_size=48, max_size=96)


def _cmd(source: Path, dest: Path, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fashion_attr.steps.preprocess",
        "--source",
        str(source),
        "--dest",
        str(dest),
        "--image-size",
        str(IMAGE_SIZE),
        "--shard-max-samples",
        str(PER_SHARD),
        "--workers",
        str(workers),
        "--no-progress",
    ]


def verify_version(version_uri: str, source: Path) -> dict[str, int]:
    """Check a local version against its source, sample by sample; return its counts.

    Every shard named by the manifest exists with the recorded size and sha256 and
    holds the recorded number of samples; every source image appears exactly once,
    under its key, in its split; no unnamed ``.tar`` lies in the version folder.
    """
    manifest = load_manifest(version_uri)
    records = load_annotations_from_dir(source).records
    split_of = {r.name: r.split for r in records}
    seen: list[str] = []
    named = set()
    for split, entries in manifest.shards.items():
        for entry in entries:
            path = resolve_shard_uri(version_uri, entry.uri)
            named.add(Path(path).name)
            assert os.path.getsize(path) == entry.bytes, path
            assert sha256_file(path) == entry.sha256, path
            samples = list(iter_shard_samples(path))
            assert len(samples) == entry.samples
            for key, jpeg, meta in samples:
                assert key == sample_key(meta["image"])
                assert split_of[meta["image"]] == split
                assert jpeg[:2] == b"\xff\xd8"
                seen.append(meta["image"])
    duplicates = [n for n, c in collections.Counter(seen).items() if c > 1]
    assert not duplicates, duplicates[:5]
    assert set(seen) == set(split_of), "lost: " + str(sorted(set(split_of) - set(seen))[:5])
    expected = dict(collections.Counter(r.split for r in records))
    assert dict(manifest.counts) == expected
    assert {p.name for p in Path(version_uri).glob("*.tar")} == named
    assert manifest.skipped == []
    return expected


def test_sigkill_mid_run_leaves_no_version_and_the_rerun_is_exact(
    source400: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    # Own process group: SIGKILL reaches the step and its spawned worker processes
    # at once, as when Kubernetes kills the pod.
    proc = subprocess.Popen(
        _cmd(source400, dest, workers=2),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    first_shard_at = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if list(dest.glob("v-*/*.tar")):
                first_shard_at = time.monotonic()
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and first_shard_at is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert first_shard_at is not None, "no shard appeared before the run ended"
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill landed"
    [version_dir] = sorted(dest.glob("v-*"))
    shards_left = sorted(p.name for p in version_dir.glob("*.tar"))
    assert shards_left, "the kill landed before any shard was published"
    assert not (version_dir / "manifest.json").exists()
    with pytest.raises(ManifestError, match=r"no manifest\.json at"):
        load_manifest(version_dir)

    rerun = subprocess.run(_cmd(source400, dest), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["status"] == "created" and summary["uri"] == str(version_dir)
    counts = verify_version(summary["uri"], source400)
    assert sum(counts.values()) == 400 and summary["counts"] == counts
    # 400 images in 8-sample shards per split: ceil(n / 8) shards each.
    assert summary["shards"] == sum(-(-n // PER_SHARD) for n in counts.values())


def test_two_ingests_of_one_source_at_once_publish_one_valid_version(
    source400: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    procs = [
        subprocess.Popen(_cmd(source400, dest), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    summaries = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outs]
    assert {s["status"] for s in summaries} <= {"created", "exists"}
    assert summaries[0]["version"] == summaries[1]["version"]
    versions = sorted(dest.glob("v-*"))
    assert len(versions) == 1
    counts = verify_version(str(versions[0]), source400)
    assert sum(counts.values()) == 400
    # Neither run left its private temporary shard files behind.
    assert not list(versions[0].glob(".*.tmp"))


def test_a_run_failing_after_a_concurrent_run_published_keeps_its_shards(
    demo_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    original = ShardWriter._close_current
    closed: list[object] = []

    def close_then_lose_the_race(self: ShardWriter):
        out = original(self)
        closed.append(out)
        if len(closed) == 3:
            # Meanwhile another run of the same version completes and publishes it ...
            monkeypatch.setattr(ShardWriter, "_close_current", original)
            other = ingest_full(
                demo_dataset, dest, image_size=32, shard_max_samples=PER_SHARD, progress=False
            )
            assert other.created
            # ... and then this run fails.
            raise OSError("disk full")
        return out

    monkeypatch.setattr(ShardWriter, "_close_current", close_then_lose_the_race)
    with pytest.raises(OSError, match="disk full"):
        ingest_full(demo_dataset, dest, image_size=32, shard_max_samples=PER_SHARD, progress=False)
    [version_dir] = sorted(dest.glob("v-*"))
    counts = verify_version(str(version_dir), demo_dataset)
    assert sum(counts.values()) == 96
