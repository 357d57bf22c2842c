"""No credential reaches a log, an output file, MLflow, or the compiled KFP pipeline.

Promise (README "Reliability and security"): credentials live only in the
environment (Kubernetes secrets); nothing the pipeline writes or logs contains
them. Each test plants a sentinel secret and scans everything produced for it:

* the step chain ``preprocess -> train_gan -> train_classifier -> evaluate ->
  register`` (CLI subprocesses, tiny budgets) with S3 storage (moto) and a real
  MLflow server with basic auth, whose admin password IS the sentinel: the
  password is both in ``MLFLOW_TRACKING_PASSWORD`` and embedded in the tracking
  URI (``http://admin:<sentinel>@127.0.0.1:<port>``, given to every step and as
  ``register --tracking-uri``); the AWS secret key and session token are
  sentinels too. Scanned: every step's stdout and stderr, every object written
  to the bucket, the local shard cache, the server's database and artifact
  store, and through the MLflow API every run's params (names and values), tags
  and metric names, every model version's tags, source and description, every
  registered model. A canary (the model name, not a secret) must be FOUND by
  the same scan, so a scan that sees nothing cannot pass.
* ``python -m pipelines.run_local`` (the KFP DAG via ``kfp.local``) with sentinel
  AWS and MLflow credentials and sentinel-bearing endpoint URLs in the
  environment: its output and every file under its work folder (KFP executor
  inputs and outputs, storage, MLflow database and artifacts).
* ``python -m pipelines.retraining`` compiled with the sentinels in the
  environment: the YAML (parameters, env, secrets references) has none.
* :class:`fashion_attr.tracking.Tracker` redaction, hand-checked.

(That the Dockerfile bakes in no secret is tests/test_dockerfile.py.)
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import CANARY, ROOT, SENTINEL

TINY_GAN = ["--preset", "tiny", "--set", "epochs=1", "--set", "max_steps=3"]
TINY_GAN += ["--set", "batch_size=16"]
TINY_CLF = ["--preset", "tiny", "--set", "epochs=1", "--set", "batch_size=16"]
TINY_CLF += ["--set", "deact.every=2"]


def needles(*extra: bytes) -> list[bytes]:
    """The forms a leaked sentinel could take: as is, URL-quoted, in a Basic auth header."""
    out = [SENTINEL.encode(), SENTINEL.lower().encode()]
    out += [base64.b64encode(f"admin:{SENTINEL}-mlflow".encode())]
    return out + list(extra)


def leaks(data: bytes | str, where: str) -> list[str]:
    """``where`` for each needle found in ``data``."""
    blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return [f"{where}: {n[:24]!r}" for n in needles() if n in blob]


def scan_files(paths: Iterable[Path]) -> tuple[list[str], int]:
    """Leaks in the given files (read as bytes) and how many files were read."""
    found, count = [], 0
    for path in paths:
        if path.is_file():
            count += 1
            found += leaks(path.read_bytes(), str(path))
    return found, count


def scan_mlflow(client) -> tuple[list[str], dict[str, int]]:
    """Leaks in every run, model version and registered model that ``client`` can see."""
    from mlflow.entities import ViewType

    found: list[str] = []
    seen = {"runs": 0, "params": 0, "tags": 0, "metrics": 0, "versions": 0, "models": 0}
    experiments = client.search_experiments(view_type=ViewType.ALL)
    for exp in experiments:
        found += leaks(json.dumps(dict(exp.tags)), f"experiment {exp.name} tags")
        found += leaks(exp.artifact_location or "", f"experiment {exp.name} artifact location")
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
    for run in runs:
        rid = run.info.run_id
        seen["runs"] += 1
        seen["params"] += len(run.data.params)
        seen["tags"] += len(run.data.tags)
        seen["metrics"] += len(run.data.metrics)
        found += leaks(json.dumps(run.data.params), f"run {rid} params")
        found += leaks(json.dumps(run.data.tags), f"run {rid} tags")
        found += leaks(json.dumps(sorted(run.data.metrics)), f"run {rid} metric names")
        found += leaks(run.info.artifact_uri or "", f"run {rid} artifact uri")
    for model in client.search_registered_models():
        seen["models"] += 1
        found += leaks(
            json.dumps([model.name, model.description, model.tags, model.aliases], default=str),
            f"registered model {model.name}",
        )
    for mv in client.search_model_versions():
        seen["versions"] += 1
        found += leaks(
            json.dumps([mv.tags, mv.source, mv.description, mv.run_link], default=str),
            f"model version {mv.name}/{mv.version}",
        )
    return found, seen


# --------------------------------------------------------------------------- unit: redaction


def test_tracker_redacts_secret_keys_and_uri_credentials(tmp_path: Path, monkeypatch) -> None:
    from fashion_attr.credentials import redact_params, safe_uri
    from fashion_attr.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = {
        "data": "s3://bucket/datasets/v-1",
        "tracking": f"http://admin:{SENTINEL}@mlflow:5000/path",
        "store": {"aws_secret_access_key": SENTINEL, "region": "eu-west-1"},
        "MLFLOW_TRACKING_PASSWORD": SENTINEL,
        "api_token": SENTINEL,
        "lr": 0.1,
    }
    tracker = Tracker(tmp_path / "metrics.jsonl", "step")
    tracker.log_params(params)
    [record] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record == {
        "type": "params",
        "params": {
            "data": "s3://bucket/datasets/v-1",
            "tracking": "http://***@mlflow:5000/path",
            "store.region": "eu-west-1",
            "lr": "0.1",
        },
    }
    assert redact_params({"password_file": "x", "passwd": "y", "credentials": "z"}) == {}
    assert safe_uri(f"https://u:{SENTINEL}@h/x") == "https://***@h/x"
    assert not leaks((tmp_path / "metrics.jsonl").read_bytes(), "metrics.jsonl")


def test_credentials_move_from_the_tracking_uri_to_the_mlflow_variables(monkeypatch) -> None:
    """Regression: MLflow printed ``View run ... at: http://admin:<password>@host/...``."""
    import mlflow
    from fashion_attr.credentials import adopt_uri_credentials, split_uri_credentials
    from fashion_attr.registry.mlflow_registry import use_tracking_uri
    from fashion_attr.steps.contract import scrub_tracking_uri

    assert split_uri_credentials("https://fa:p%40ss@mlflow:5000/x") == (
        "https://mlflow:5000/x",
        "fa",
        "p@ss",
    )
    assert split_uri_credentials("sqlite:////tmp/m.db") == ("sqlite:////tmp/m.db", None, None)
    env = {"MLFLOW_TRACKING_URI": f"http://fa:{SENTINEL}@mlflow:5000"}
    assert adopt_uri_credentials(env) is True
    assert env == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_TRACKING_USERNAME": "fa",
        "MLFLOW_TRACKING_PASSWORD": SENTINEL,
    }
    # Variables already set win (as in MLflow's HTTP client); the URI is scrubbed anyway.
    env = {"MLFLOW_TRACKING_URI": "http://fa:old@h", "MLFLOW_TRACKING_PASSWORD": "new"}
    assert adopt_uri_credentials(env) and env["MLFLOW_TRACKING_PASSWORD"] == "new"
    assert adopt_uri_credentials({"MLFLOW_TRACKING_URI": "http://h:5000"}) is False

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with use_tracking_uri(f"http://fa:{SENTINEL}@127.0.0.1:9"):
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SENTINEL
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ  # restored
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://fa:{SENTINEL}@127.0.0.1:9")
    scrub_tracking_uri()  # what every step's main() does first
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "fa"


# --------------------------------------------------------------------------- compiled pipeline


def test_compiled_pipeline_holds_no_secret(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": f"AKIA{SENTINEL}",
        "AWS_SECRET_ACCESS_KEY": f"{SENTINEL}-aws-secret",
        "AWS_SESSION_TOKEN": f"{SENTINEL}-aws-token",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": f"{SENTINEL}-mlflow",
        "MLFLOW_TRACKING_TOKEN": f"{SENTINEL}-token",
        "MLFLOW_TRACKING_URI": f"http://admin:{SENTINEL}-mlflow@mlflow:5000",
        "AWS_ENDPOINT_URL": f"http://minio:{SENTINEL}-uri@minio:9000",
    }
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.retraining", "--output", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    text = out.read_text()
    assert leaks(text, "compiled pipeline") == []
    assert leaks(proc.stdout + proc.stderr, "compiler output") == []
    # The credentials are wired as references to Kubernetes secrets, by name only.
    assert "object-store-credentials" in text and "mlflow-credentials" in text
    assert "AWS_SECRET_ACCESS_KEY" in text and "MLFLOW_TRACKING_PASSWORD" in text


# --------------------------------------------------------------------------- the step chain


def _set_admin_password(server, new: str) -> None:
    admin, old = server.extra["admin_user"], server.extra["admin_password"]
    body = json.dumps({"username": admin, "password": new, "current_password": old}).encode()
    auth = base64.b64encode(f"{admin}:{old}".encode()).decode()
    req = urllib.request.Request(
        server.url + "/api/2.0/mlflow/users/update-password",
        data=body,
        method="PATCH",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_step_chain_with_s3_and_authenticated_mlflow_leaks_no_secret(
    tmp_path: Path, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from fashion_attr.demo import generate_demo_dataset
    from mlflow_server import running_tracking_server

    source = generate_demo_dataset(tmp_path / "source", images=120, seed=5)
    password = f"{SENTINEL}-mlflow"
    with running_tracking_server(tmp_path / "mlflow", auth=True) as server:
        _set_admin_password(server, password)
        cred_uri = server.url.replace("http://", f"http://admin:{password}@")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "AWS_SECRET_ACCESS_KEY": f"{SENTINEL}-aws-secret",
            "AWS_SESSION_TOKEN": f"{SENTINEL}-aws-token",
            "MLFLOW_TRACKING_URI": cred_uri,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": password,
            "MLFLOW_EXPERIMENT_NAME": "fa-security",
            "FA_PIPELINE_RUN": "security-1",
            "FA_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONUNBUFFERED": "1",
        }
        bucket = s3_server.uri()
        datasets = f"{bucket}/datasets"
        logs: dict[str, bytes] = {}

        def step(name: str, *args: str) -> dict:
            proc = subprocess.run(
                [sys.executable, "-m", f"fashion_attr.steps.{name}", *args],
                env=env,
                capture_output=True,
                timeout=600,
            )
            logs[name] = proc.stdout + proc.stderr
            assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()[-4000:]
            return json.loads(proc.stdout.decode().strip().splitlines()[-1])

        ingest = step("preprocess", "--source", str(source), "--dest", datasets, "--no-progress")
        data = ingest["uri"]
        step("train_gan", "--data", data, "--out", f"{bucket}/runs/gan", *TINY_GAN)
        step(
            "train_classifier",
            *("--data", data, "--out", f"{bucket}/runs/clf"),
            *("--generator", f"{bucket}/runs/gan/generator.pt", *TINY_CLF),
        )
        step(
            "evaluate",
            *("--model", f"{bucket}/runs/clf/model.pt", "--data", data),
            *("--out", f"{bucket}/runs/eval", "--preset", "tiny"),
        )
        registered = step(
            "register",
            *("--model", f"{bucket}/runs/clf/model.pt"),
            *("--metrics", f"{bucket}/runs/eval/metrics.json"),
            *("--model-name", CANARY, "--pipeline-run", "security-1"),
            *("--tracking-uri", cred_uri, "--report", f"{bucket}/runs/eval/report.md"),
        )
        assert registered["version"] == "1"

        found: list[str] = []
        for name, text in logs.items():
            found += leaks(text, f"{name} stdout/stderr")
        # Every object the chain wrote to the bucket.
        objects = 0
        paginator = s3_server.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=s3_server.bucket):
            for obj in page.get("Contents", []):
                body = s3_server.client.get_object(Bucket=s3_server.bucket, Key=obj["Key"])
                found += leaks(body["Body"].read(), f"s3://{s3_server.bucket}/{obj['Key']}")
                objects += 1
        local, local_files = scan_files((tmp_path / "cache").rglob("*"))
        found += local
        # The server's stores as written (database and artifacts), not its own log.
        stored, stored_files = scan_files(
            p for p in (tmp_path / "mlflow").rglob("*") if p.name != "server.log"
        )
        found += stored
        client = mlflow.MlflowClient(server.url.replace("http://", f"http://admin:{password}@"))
        with monkeypatch.context() as m:
            m.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            m.setenv("MLFLOW_TRACKING_PASSWORD", password)
            api_found, seen = scan_mlflow(client)
            canary = [mv.name for mv in client.search_model_versions()]
    found += api_found
    assert found == [], "\n".join(found)
    # The scan saw real material: logs, every output, and MLflow runs with their params.
    assert all(len(text) > 0 for text in logs.values())
    assert objects >= 10 and local_files >= 1 and stored_files >= 5
    assert seen["runs"] >= 5 and seen["params"] >= 20 and seen["metrics"] >= 5
    assert seen["versions"] == 1 and canary == [CANARY]
    assert CANARY.encode() in logs["register"]


# The shared local DAG's leak check lives in test_pipeline_local.py (one file per DAG run
# under pytest-xdist's --dist loadfile), with this module's scanners.
