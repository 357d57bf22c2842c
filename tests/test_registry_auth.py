"""register against MLflow with basic auth on loopback: refused without credentials,
works with MLFLOW_TRACKING_USERNAME/PASSWORD of a non-admin user, and never logs the password.

Needs Flask-WTF (MLflow's ``auth`` extra) for the server's basic-auth app.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth] (Flask-WTF)")

sys.path.insert(0, str(Path(__file__).parent))
from fashion_attr.steps.register import main
from mlflow.tracking import MlflowClient
from mlflow_server import (
    ServerProcess,
    export_tiny_model,
    running_tracking_server,
    write_metrics,
)

USER = "pipeline-bot"
PASSWORD = "pw-" + secrets.token_hex(10)  # never a fixed string: the test greps for it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_tracking_server(tmp_path_factory.mktemp("mlflow-auth"), auth=True) as srv:
        status, _ = _call(
            srv,
            "POST",
            "/api/2.0/mlflow/users/create",
            admin=True,
            body={"username": USER, "password": PASSWORD},
        )
        assert status == 200
        yield srv


def _call(
    srv: ServerProcess,
    method: str,
    path: str,
    *,
    body: dict | None = None,
    admin: bool = False,
    auth: tuple[str, str] | None = None,
) -> tuple[int, str]:
    req = urllib.request.Request(
        srv.url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method=method,
    )
    if admin:
        auth = (srv.extra["admin_user"], srv.extra["admin_password"])
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    export_tiny_model(tmp_path / "model.pt")
    metrics = {"attr_recall@3/all": 0.5, "attr_recall@3/tail": 0.3, "cat_top3_acc": 0.9}
    write_metrics(tmp_path / "metrics.json", metrics)
    return ["--model", str(tmp_path / "model.pt"), "--metrics", str(tmp_path / "metrics.json")]


def test_unauthenticated_requests_are_refused(server: ServerProcess) -> None:
    status, _ = _call(server, "GET", "/api/2.0/mlflow/registered-models/search")
    assert status == 401
    status, _ = _call(
        server, "GET", "/api/2.0/mlflow/registered-models/search", auth=(USER, "wrong-password-1")
    )
    assert status == 401
    status, _ = _call(
        server, "GET", "/api/2.0/mlflow/registered-models/search", auth=(USER, PASSWORD)
    )
    assert status == 200


def test_register_without_credentials_exits_2_and_names_the_fix(
    server: ServerProcess, inputs: list[str], capsys: pytest.CaptureFixture
) -> None:
    rc = main(
        [
            *inputs,
            "--model-name",
            "fa-noauth",
            "--pipeline-run",
            "a-0",
            "--tracking-uri",
            server.url,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "refused the credentials" in err and "MLFLOW_TRACKING_USERNAME" in err
    status, body = _call(server, "GET", "/api/2.0/mlflow/registered-models/search", admin=True)
    assert status == 200 and "fa-noauth" not in body


def test_register_with_user_credentials_never_logs_the_password(
    server: ServerProcess,
    inputs: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    rc = main(
        [*inputs, "--model-name", "fa-auth", "--pipeline-run", "a-1", "--tracking-uri", server.url]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["version"], summary["alias"]) == ("1", "champion")
    assert PASSWORD not in out and PASSWORD not in err

    client = MlflowClient(server.url)  # reads the credentials from the environment
    mv = client.get_model_version("fa-auth", "1")
    run = client.get_run(mv.run_id)
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    texts = [
        json.dumps(run.data.params),
        json.dumps(run.data.tags),
        json.dumps(parent.data.params),
        json.dumps(parent.data.tags),
        json.dumps(mv.tags),
        mv.description or "",
        json.dumps(client.get_registered_model("fa-auth").tags),
    ]
    assert run.data.params  # something was logged, and checked
    for text in texts:
        assert PASSWORD not in text
    assert run.data.tags["fashion_attr.step"] == "register"
