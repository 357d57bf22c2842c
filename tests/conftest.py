"""Shared pytest fixtures for the whole test suite.

Fixtures (all CPU-only, no network):

``demo_dataset`` (session scope) -> pathlib.Path
    A small procedural dataset in the exact DeepFashion-C layout
    (:func:`fashion_attr.demo.generate_demo_dataset`): 96 images of 48-96
    px, seed 0, 5 % of the attribute labels written as 0 (unknown), so the
    unknown-label mask is exercised. Shared by every test of the session:
    treat it as READ-ONLY (use ``demo_copy`` to modify it).

``demo_copy`` (function scope) -> pathlib.Path
    A private copy of ``demo_dataset`` under ``tmp_path``; corrupt it freely.

``demo_version`` (session scope) -> str
    ``demo_dataset`` ingested (32 px images, 16 samples per shard) into a
    session temp folder: the local version folder URI of a complete dataset
    version (``manifest.json`` plus shards), for tests of the loader and of
    the later steps. READ-ONLY.

``moto_endpoint`` (session scope) -> str
    The URL of one moto S3 server (``moto.server.ThreadedMotoServer``) started
    on a free loopback port for the whole session.

``s3_server`` (function scope) -> S3Server
    Points this test at ``moto_endpoint``: sets ``AWS_ENDPOINT_URL``, fake
    credentials and the region with ``monkeypatch`` (so
    :mod:`fashion_attr.storage` and boto3 use the fake server, and child
    processes inherit it), and creates a fresh, uniquely named bucket.
    ``S3Server.uri("a/b")`` gives ``s3://<bucket>/a/b``; ``S3Server.client`` is
    a boto3 client for direct checks.

``one_thread`` (module scope)
    torch on one CPU thread for a module's tests (same arithmetic in every run,
    no contention on 2 cores); request it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.

Hook: tests marked ``@pytest.mark.gpu`` are skipped when CUDA is not available
(so a test needs no ``skipif`` of its own).

``make test`` runs the files on two pytest-xdist workers (``--dist loadfile``: a
file's tests share one worker, so module fixtures such as an MLflow server are
built once). Session fixtures are built once per worker that uses them; the shared
local DAG (``local_pipeline``) is used by one file only, so it runs once.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

DEMO_IMAGES = 96
DEMO_SEED = 0
DEMO_VERSION_IMAGE_SIZE = 32
DEMO_VERSION_SHARD_SAMPLES = 16


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fashion_attr.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo_dataset")
    return generate_demo_dataset(
        root, images=DEMO_IMAGES, seed=DEMO_SEED, min_size=48, max_size=96, unknown_rate=0.05
    )


@pytest.fixture
def demo_copy(demo_dataset: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "demo_copy"
    shutil.copytree(demo_dataset, dst)
    return dst


@pytest.fixture(scope="session")
def demo_version(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    from fashion_attr.data.ingest import ingest_full

    dest = tmp_path_factory.mktemp("demo_versions")
    result = ingest_full(
        demo_dataset,
        dest,
        image_size=DEMO_VERSION_IMAGE_SIZE,
        shard_max_samples=DEMO_VERSION_SHARD_SAMPLES,
        progress=False,
    )
    return result.uri


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server and a fresh bucket for one test."""

    endpoint_url: str
    bucket: str
    client: Any

    def uri(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.bucket}/{key.lstrip('/')}" if key else f"s3://{self.bucket}"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_server(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    import boto3

    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Server(endpoint_url=moto_endpoint, bucket=bucket, client=client)


# --------------------------------------------------------------------------- the local DAG

ROOT = Path(__file__).resolve().parents[1]
#: A made-up secret put into every credential variable of the shared local DAG run;
#: tests/test_security_secrets.py checks it appears nowhere the run wrote or printed.
SENTINEL = "SENTINEL-9c4e2b7d1f"
#: The registered model name of the shared local DAG run.
CANARY = "fa-sec-canary"
TINY_PIPELINE = [
    "--images",
    "120",
    "--gan-overrides",
    '["epochs=1", "max_steps=3", "batch_size=16"]',
    "--classifier-overrides",
    '["epochs=1", "batch_size=16", "deact.every=2"]',
]


@dataclass(frozen=True)
class LocalPipeline:
    """One run of ``python -m pipelines.run_local`` (its folder and what it printed)."""

    workdir: Path
    model_name: str
    stdout: str
    stderr: str


def sentinel_env() -> dict[str, str]:
    """This environment without MLflow settings, with sentinel secrets in every credential."""
    import os

    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FA_"))},
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": f"AKIA{SENTINEL}",
        "AWS_SECRET_ACCESS_KEY": f"{SENTINEL}-aws-secret",
        "AWS_SESSION_TOKEN": f"{SENTINEL}-aws-token",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": f"{SENTINEL}-mlflow",
        "MLFLOW_TRACKING_TOKEN": f"{SENTINEL}-token",
        # Endpoints with credentials in them; storage is local, so never contacted.
        "AWS_ENDPOINT_URL": f"http://minio:{SENTINEL}-uri@127.0.0.1:9",
        "MLFLOW_S3_ENDPOINT_URL": f"http://minio:{SENTINEL}-uri@127.0.0.1:9",
    }


def run_local_pipeline(workdir: Path, model_name: str, *extra: str) -> LocalPipeline:
    """Run the whole DAG with kfp.local on tiny budgets (the CLI, as ``make run`` does)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.run_local",
            *("--workdir", str(workdir), "--model-name", model_name),
            *TINY_PIPELINE,
            *extra,
        ],
        cwd=ROOT,
        env=sentinel_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return LocalPipeline(workdir, model_name, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def local_pipeline(tmp_path_factory: pytest.TempPathFactory) -> LocalPipeline:
    """The whole DAG, run once for the session (tests read it; copy it to change it)."""
    return run_local_pipeline(tmp_path_factory.mktemp("local_dag") / "work", CANARY)
