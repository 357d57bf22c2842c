"""The separate containerized components, for real: steps, the DAG and serving in the image.

Run by ``make test-containers`` (scripts/test-containers.sh builds the image from this tree
and starts an engine if needed; FA_TEST_IMAGE names the image). Without an engine or the
image these tests fail with the reason; ``make test`` deselects them (marker ``containers``).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import fashion_attr
import pytest
from conftest import CANARY, LocalPipeline, run_local_pipeline

pytestmark = pytest.mark.containers
IMAGE = os.environ.get("FA_TEST_IMAGE", f"fashion-attr:{fashion_attr.__version__}")


def _docker() -> str:
    out = subprocess.run(
        ["bash", "scripts/container-engine.sh", "docker"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    client = out.stdout.strip() or "docker"
    probe = subprocess.run([client, "image", "inspect", IMAGE], capture_output=True, check=False)
    assert probe.returncode == 0, (
        f"image {IMAGE} not found ({probe.stderr.decode().strip()[:200]}). Fix: run "
        "make test-containers (it builds the image), or make image"
    )
    return client


def _metrics(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = lines.index("Test metrics    :")
    return lines[start + 1 : start + 8]


def test_a_step_runs_in_the_image_without_network() -> None:
    proc = subprocess.run(
        [
            _docker(),
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "python",
            "-m",
            "fashion_attr.steps.train_gan",
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--reuse-generator" in proc.stdout
    user = subprocess.run(
        [_docker(), "run", "--rm", "--network", "none", IMAGE, "id", "-u"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert user.stdout.strip() == "10001"  # the image runs as its own non-root user


@pytest.fixture(scope="module")
def docker_run(tmp_path_factory: pytest.TempPathFactory) -> LocalPipeline:
    """The whole DAG with kfp.local's DockerRunner: every step in its own container."""
    _docker()
    work = tmp_path_factory.mktemp("docker_dag") / "work"
    return run_local_pipeline(work, CANARY, "--runner", "docker", "--image", IMAGE)


def test_the_dag_in_containers_registers_what_the_subprocess_runner_does(
    docker_run: LocalPipeline, local_pipeline: LocalPipeline
) -> None:
    """Same seed, same code, same budgets: the same model and test metrics."""
    assert f"Registered model: {CANARY} version 1" in docker_run.stdout
    assert _metrics(docker_run.stdout) == _metrics(local_pipeline.stdout)
    # What the containers wrote belongs to the user who ran the pipeline.
    owners = {p.stat().st_uid for p in (docker_run.workdir / "storage").rglob("*")}
    assert owners == {os.getuid()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serving_the_champion_from_the_image_answers_a_real_photo(
    docker_run: LocalPipeline,
) -> None:
    work, port, client = docker_run.workdir, _free_port(), _docker()
    name = f"fa-serve-{port}"
    # The README's command, as a user runs it (the target's container is named fa-serve-PORT).
    server = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "serve-image",
            f"IMAGE={IMAGE}",
            f"MLFLOW_DB={work / 'mlflow.db'}",
            f"MODEL={CANARY}",
            f"PORT={port}",
        ],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        photo = next((work / "cache" / "demo").rglob("*.jpg")).read_bytes()
        body = {
            "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo).decode()]]}
        }
        deadline, answer = time.monotonic() + 180, None
        while answer is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    json.dumps(body).encode(),
                    {"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=30) as resp:
                    answer = json.loads(resp.read())["predictions"][0]
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the server did not answer in 180 s"
                time.sleep(1)
        assert set(answer) == {"category", "category_prob", "attributes", "top_k"}
        assert answer["category"] and 0 < answer["category_prob"] <= 1
    finally:
        subprocess.run([client, "stop", name], capture_output=True, check=False)
        server.wait(timeout=60)
