"""Storage under faults: S3 answering 500 / 503 / SlowDown or dropping connections, and for good.

Promises (README "Reliability and security"), against a moto S3 server behind
:class:`faultproxy.FaultProxy` (``AWS_ENDPOINT_URL`` points at the proxy):

* Transient faults (20 % of requests: 500, 503, 503 SlowDown, a connection closed
  before the answer, or after the upstream write) are retried by the storage layer
  (botocore adaptive retries): an ingest from an S3 source to an S3 destination
  ends byte-identical to the same ingest on a local disk; a checkpoint
  (:func:`fashion_attr.checkpoint.save_artifact` / ``load_artifact``) round-trips
  exactly; the register step reads ``model.pt``, ``metrics.json`` and a report
  from ``s3://`` and registers the model (MLflow on a local SQLite store).
* Permanent failures -- bad credentials (moto accepts any key, so the proxy answers
  every request ``403 InvalidAccessKeyId``; HEAD requests get a bare 403 as from
  S3) and a missing bucket (``NoSuchBucket``) -- fail within seconds, without a
  retry loop, with a :class:`~fashion_attr.storage.StorageError` naming the URI
  and the fix, and leave nothing behind (no manifest, no objects).

Each test prints its injected-fault counts and wall times (``pytest -s`` shows them).

Regressions fixed with these tests: a HEAD answered 403 (``storage.exists``, the
first call of every ingest) and a failed ``upload_file`` (boto3 wraps the error in
``S3UploadFailedError``) escaped as raw boto errors, not as StorageError.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fashion_attr import storage
from fashion_attr.checkpoint import load_artifact, save_artifact
from fashion_attr.data.ingest import ingest_full
from fashion_attr.data.shards import load_manifest
from fashion_attr.steps.preprocess import main as preprocess_main

sys.path.insert(0, str(Path(__file__).parent))
from faultproxy import FaultProxy

FAULT_RATE = 0.2
# A permanent failure must surface at once. The exact check is the proxy's request count
# (no retry loop); this wall-clock bound only catches a hang or a backoff storm, and is
# generous so that a loaded 2-core CI machine does not fail it (13 s seen under 4x load).
FAST_S = 45.0


@pytest.fixture
def proxy(s3_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A 20 % fault proxy in front of the session's moto server; storage goes through it."""
    with FaultProxy(s3_server.endpoint_url, fault_rate=FAULT_RATE, seed=7) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


def _report(name: str, p: FaultProxy, seconds: float) -> None:
    s = p.stats
    print(
        f"\n[{name}] {s.requests} requests, {s.total_faults} faults injected "
        f"({dict(sorted(s.faults.items()))}), {s.forwarded} forwarded, {seconds:.2f} s"
    )


def _keys(s3_server, prefix: str = "") -> list[str]:
    """Object keys under ``prefix``, read straight from moto (not through the proxy)."""
    out = []
    paginator = s3_server.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=s3_server.bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def _upload_tree(s3_server, root: Path, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            s3_server.client.upload_file(str(path), s3_server.bucket, key)


# --------------------------------------------------------------------------- transient faults


@pytest.mark.timeout(300)
def test_ingest_s3_to_s3_through_faults_equals_the_local_ingest(
    demo_dataset: Path, tmp_path: Path, s3_server, proxy: FaultProxy
) -> None:
    _upload_tree(s3_server, demo_dataset, "raw")  # direct to moto: no faults while staging
    settings = {"image_size": 32, "shard_max_samples": 8, "progress": False}
    local = ingest_full(demo_dataset, tmp_path / "local", **settings)

    start = time.monotonic()
    remote = ingest_full(s3_server.uri("raw"), s3_server.uri("versions"), **settings)
    elapsed = time.monotonic() - start
    _report("ingest s3->s3", proxy, elapsed)

    # Faults of every kind were injected, and on reads (images) as well as on writes.
    assert proxy.stats.total_faults >= 10
    assert set(proxy.stats.faults) == {"500", "503", "slowdown", "drop", "drop_after"}
    assert proxy.stats.by_method["GET"] > 96 and proxy.stats.by_method["PUT"] > 13

    assert remote.version == local.version and remote.created
    manifest = load_manifest(remote.uri)
    assert manifest.counts == local.manifest.counts and manifest.skipped == []

    def entries(m) -> dict[str, list[tuple[str, int, int, str]]]:
        return {
            s: [(e.uri, e.samples, e.bytes, e.sha256) for e in es] for s, es in m.shards.items()
        }

    # Same shards, byte for byte (the local shards are the reference) ...
    assert entries(manifest) == entries(local.manifest)
    assert manifest.index.sha256 == local.manifest.index.sha256
    # ... and the objects in the bucket are exactly those the manifest names, with those
    # checksums (read straight from moto, past the proxy).
    prefix = f"versions/{remote.version}/"
    names = [e.uri for es in manifest.shards.values() for e in es]
    assert _keys(s3_server, prefix) == sorted(
        prefix + n for n in [*names, "index.jsonl.gz", "manifest.json"]
    )
    for split_entries in manifest.shards.values():
        for e in split_entries:
            body = s3_server.client.get_object(Bucket=s3_server.bucket, Key=prefix + e.uri)
            data = body["Body"].read()
            assert len(data) == e.bytes and hashlib.sha256(data).hexdigest() == e.sha256


def test_checkpoint_round_trips_through_faults(s3_server, proxy: FaultProxy) -> None:
    from fashion_attr.classifier.model import build_classifier

    torch.manual_seed(0)
    model = build_classifier("tiny", 6, 3)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    attr_logits, cat_logits = model(torch.randn(2, 3, 32, 32))
    (attr_logits.sum() + cat_logits.sum()).backward()
    optim.step()  # Adam state (exp_avg, exp_avg_sq) is part of the checkpoint
    start = time.monotonic()
    for step in range(12):
        blob = {
            "model": {k: v + step for k, v in model.state_dict().items()},
            "optimizer": optim.state_dict(),
            "step": step,
            "rng": torch.get_rng_state(),
            "history": [0.5 * step, math.pi],
        }
        uri = s3_server.uri(f"runs/ckpt/checkpoint-{step}.pt")
        save_artifact(uri, blob)
        back = load_artifact(uri)
        assert back["step"] == step and back["history"] == [0.5 * step, math.pi]
        assert torch.equal(back["rng"], blob["rng"])
        assert back["model"].keys() == blob["model"].keys()
        for k, v in blob["model"].items():
            assert torch.equal(back["model"][k], v), k
        for k, v in blob["optimizer"]["state"][0].items():
            assert torch.equal(back["optimizer"]["state"][0][k], v), k
    _report("checkpoint x12", proxy, time.monotonic() - start)
    assert proxy.stats.total_faults >= 3
    assert len(_keys(s3_server, "runs/ckpt/")) == 12


@pytest.mark.timeout(300)
def test_register_reads_model_metrics_and_report_from_s3_through_faults(
    s3_server, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from fashion_attr.config import RegisterConfig, load_config
    from fashion_attr.steps.register import run as register_run
    from mlflow_server import export_tiny_model, write_metrics

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "FA_PIPELINE_RUN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    experiment = f"faults-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking).create_experiment(
        experiment, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    export_tiny_model(tmp_path / "model.pt")
    write_metrics(
        tmp_path / "metrics.json",
        {"attr_recall@3/all": 0.5, "attr_recall@3/tail": 0.3, "cat_top3_acc": 0.9},
    )
    (tmp_path / "report.md").write_text("# report\n")
    for name in ("model.pt", "metrics.json", "report.md"):
        s3_server.client.upload_file(str(tmp_path / name), s3_server.bucket, f"runs/{name}")

    start = time.monotonic()
    summary = register_run(
        load_config(RegisterConfig, extra={"model_name": "fa-faults"}),
        s3_server.uri("runs/model.pt"),
        s3_server.uri("runs/metrics.json"),
        pipeline_run="faults-1",
        tracking_uri=tracking,
        reports=[s3_server.uri("runs/report.md")],
    )
    _report("register", proxy, time.monotonic() - start)
    assert summary.version == "1" and summary.alias == "champion"
    client = mlflow.MlflowClient(tracking)
    mv = client.get_model_version("fa-faults", "1")
    assert mv.tags["metric.attr_recall_at_3/all"] == repr(0.5)
    digest = hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    assert mv.tags["fashion_attr.model_sha256"] == digest
    assert proxy.stats.requests >= 4  # model (HEAD + GET), metrics, report (exists + GET)


# --------------------------------------------------------------------------- permanent failures


def test_bad_credentials_fail_fast_naming_the_uri_and_the_fix(
    demo_dataset: Path, s3_server, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    dest = s3_server.uri("versions")
    with FaultProxy(s3_server.endpoint_url, always=(403, "InvalidAccessKeyId")) as bad:
        monkeypatch.setenv("AWS_ENDPOINT_URL", bad.url)
        start = time.monotonic()
        rc = preprocess_main(
            ["--source", str(demo_dataset), "--dest", dest, "--image-size", "32", "--no-progress"]
        )
        ingest_s = time.monotonic() - start
        _, err = capsys.readouterr()
        # The first S3 call reads the source's fingerprint cache: refused at once.
        assert rc == 2, err
        assert f"preprocess: storage error: {dest}/_fingerprints/" in err
        assert "InvalidAccessKeyId" in err and "Fix: check AWS_ACCESS_KEY_ID" in err

        start = time.monotonic()
        with pytest.raises(storage.StorageError) as exc:
            save_artifact(s3_server.uri("runs/ckpt.pt"), {"w": torch.zeros(3)})
        save_s = time.monotonic() - start
        assert str(exc.value).startswith(s3_server.uri("runs/ckpt.pt") + ": ")
        assert "InvalidAccessKeyId" in str(exc.value) and "Fix: check AWS_ACCESS_KEY_ID" in str(
            exc.value
        )
        with pytest.raises(storage.StorageError, match="InvalidAccessKeyId"):
            load_artifact(s3_server.uri("runs/ckpt.pt"))
        with pytest.raises(storage.StorageError, match="InvalidAccessKeyId"):
            storage.upload_file(__file__, s3_server.uri("runs/file.py"))
    _report("bad credentials", bad, ingest_s + save_s)
    assert ingest_s < FAST_S and save_s < FAST_S
    # No retry loop: the ingest asked once; save, load and upload once each.
    assert bad.stats.requests == 4
    assert _keys(s3_server) == []  # nothing written


def test_missing_bucket_fails_fast_and_writes_nothing(
    demo_dataset: Path, s3_server, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:10]}"
    dest = f"s3://{bucket}/versions"
    with FaultProxy(s3_server.endpoint_url, fault_rate=0.0) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        start = time.monotonic()
        rc = preprocess_main(
            ["--source", str(demo_dataset), "--dest", dest, "--image-size", "32", "--no-progress"]
        )
        elapsed = time.monotonic() - start
        _, err = capsys.readouterr()
        assert rc == 2, err
        # The first S3 call (the source's fingerprint cache) meets the missing bucket.
        assert f"preprocess: storage error: {dest}/_fingerprints/" in err
        assert "NoSuchBucket" in err and "Fix: create the bucket or fix the bucket name" in err
        with pytest.raises(storage.StorageError, match=rf"^s3://{bucket}/m\.pt: .*NoSuchBucket"):
            save_artifact(f"s3://{bucket}/m.pt", {"w": torch.zeros(1)})
        with pytest.raises(storage.StorageError, match="NoSuchBucket"):
            load_manifest(f"{dest}/v-0000000000000000")
    _report("missing bucket", p, elapsed)
    assert elapsed < FAST_S
    # No retry: one failed GET (the cache), one failed PUT (save_artifact); nothing else.
    assert p.stats.by_method["PUT"] == 1
    buckets = {b["Name"] for b in s3_server.client.list_buckets()["Buckets"]}
    assert bucket not in buckets


def test_fault_proxy_is_deterministic_and_bounded(s3_server) -> None:
    """Same seed, same requests -> same faults; the per-request cap lets retries through."""
    runs = []
    for _ in range(2):
        with FaultProxy(s3_server.endpoint_url, fault_rate=0.5, seed=3) as p:
            decisions = [p.decide("GET", f"/b/k{i % 5}") for i in range(200)]
        runs.append((decisions, dict(p.stats.faults)))
    assert runs[0] == runs[1]
    assert 60 < sum(d is not None for d in runs[0][0]) < 140
    with FaultProxy(s3_server.endpoint_url, fault_rate=1.0, max_faults_per_request=3) as p:
        # Every 4th attempt of one request is let through, whatever the rate.
        assert [p.decide("PUT", "/b/k") is None for _ in range(8)] == [False] * 3 + [True] + (
            [False] * 3 + [True]
        )
    with FaultProxy(s3_server.endpoint_url, fault_rate=1.0, max_faults=2) as p:
        assert [p.decide("GET", f"/{i}") is None for i in range(4)] == [False, False, True, True]
    assert json.dumps(p.stats.faults)  # plain counts, printable in reports
