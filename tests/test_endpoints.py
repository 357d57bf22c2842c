"""Endpoint checks fail in seconds, in one line naming the endpoint, what failed and the fix.

Real endpoints on loopback: a closed port (connection refused), a listening socket whose
accept queue is full (SYNs dropped: what a non-routable address does, without leaving
the machine), a non-routable address where the network lets it be one, a host name
that does not resolve, and a tiny HTTP server answering 401/403/404/500. The time
bounds are bounds (the issue: 4 min 14 s against an unreachable MLflow), not benchmarks.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fashion_attr.endpoints import (
    MLFLOW_CLIENT_DEFAULTS,
    EndpointConfigError,
    EndpointUnreachableError,
    check_http,
    check_mlflow,
    prepare_mlflow_client,
)
from fashion_attr.steps.contract import exit_code_for

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_server import free_port

BOUND_S = 30.0  # "fails in well under 30 s"
SECRET = "s3cr3t-pw-not-in-messages"


@pytest.fixture(autouse=True)
def _no_proxy_no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = dict(os.environ)  # the steps set MLflow's client variables: put them back after
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A loopback port that never completes a connection (its accept queue is full)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        yield port
    finally:
        filler.close()
        srv.close()


@contextlib.contextmanager
def answering(status: int) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback answering every GET with ``status``; yields URL and paths."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _fails(fn, *args, **kwargs) -> tuple[BaseException, float]:
    start = time.monotonic()
    with pytest.raises((EndpointConfigError, EndpointUnreachableError)) as info:
        fn(*args, **kwargs)
    return info.value, time.monotonic() - start


def test_a_closed_port_is_a_fault_named_with_the_uri_and_the_fix() -> None:
    uri = f"http://admin:{SECRET}@127.0.0.1:{free_port()}"
    exc, elapsed = _fails(check_mlflow, uri)
    text = str(exc)
    assert isinstance(exc, EndpointUnreachableError) and exc.retryable
    assert exit_code_for(exc) == 3
    assert "connection refused" in text and "Fix:" in text and "MLFLOW_TRACKING_URI" in text
    assert "127.0.0.1" in text and SECRET not in text and "\n" not in text
    assert elapsed < BOUND_S


def test_an_endpoint_that_never_answers_times_out_within_the_bound() -> None:
    with black_hole() as port:
        exc, elapsed = _fails(check_mlflow, f"http://127.0.0.1:{port}", timeout_s=1)
    assert isinstance(exc, EndpointUnreachableError) and "timeout" in str(exc)
    assert elapsed < 5  # 2 tries of 1 s and a pause


def test_a_non_routable_address_times_out_within_the_bound() -> None:
    addr = "10.255.255.1"
    try:  # some sandboxes answer every address: then it is not non-routable here
        socket.create_connection((addr, 5000), timeout=0.5).close()
        pytest.skip(f"this network answers for {addr}")
    except OSError:
        pass
    exc, elapsed = _fails(check_mlflow, f"http://{addr}:5000", timeout_s=1)
    assert isinstance(exc, EndpointUnreachableError) and addr in str(exc)
    assert elapsed < 5


def test_an_unknown_host_is_a_user_error() -> None:
    exc, elapsed = _fails(check_mlflow, "http://no-such-host.invalid:5000")
    assert isinstance(exc, EndpointConfigError) and isinstance(exc, ValueError)
    assert exit_code_for(exc) == 2
    assert "DNS" in str(exc) and "no-such-host.invalid" in str(exc)
    assert elapsed < BOUND_S


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (401, EndpointConfigError, "refused the credentials (HTTP 401)"),
        (403, EndpointConfigError, "denied access (HTTP 403)"),
        (404, EndpointConfigError, "HTTP 404"),
        (503, EndpointUnreachableError, "HTTP 503"),
    ],
)
def test_http_answers_are_classified(status: int, kind: type, words: str) -> None:
    with answering(status) as (url, seen):
        exc, _ = _fails(check_mlflow, url.replace("http://", f"http://bot:{SECRET}@"))
        assert isinstance(exc, kind) and words in str(exc) and SECRET not in str(exc)
        assert seen[0].startswith("/api/2.0/mlflow/experiments/search")
        # A user error is not tried again; a server failure is, a bounded number of times.
        assert len(seen) == (2 if status >= 500 else 1)
        if status == 401:
            assert "MLFLOW_TRACKING_USERNAME" in str(exc)
        exc, _ = _fails(check_http, url + "/apis/v2beta1/healthz", label="the KFP API")
        assert isinstance(exc, kind) and str(exc).startswith("the KFP API at ")


def test_an_answering_server_passes_and_the_credentials_are_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with answering(200) as (url, _):
        check_mlflow(url)
        assert check_http(url + "/healthz") == 200
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd()}/mlflow.db")
    check_mlflow()  # a SQLite store in an existing folder: nothing to reach
    with pytest.raises(EndpointConfigError, match="does not exist"):
        check_mlflow("sqlite:////no/such/folder/mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(EndpointConfigError, match="MLFLOW_TRACKING_URI is not set"):
        check_mlflow()
    with pytest.raises(EndpointConfigError, match="not a tracking URI"):
        check_mlflow("ftp://mlflow:21")


def test_an_unreachable_s3_endpoint_is_a_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 check preflight runs (storage.check_access): one request, no retries."""
    from fashion_attr import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    start = time.monotonic()
    with pytest.raises(storage.StorageError) as info:
        storage.check_access("s3://bucket/prefix", write=True)
    exc, elapsed = info.value, time.monotonic() - start
    assert "AWS_ENDPOINT_URL" in str(exc) and "s3://bucket/prefix" in str(exc)
    assert exit_code_for(exc) == 3
    assert elapsed < BOUND_S
    with pytest.raises(FileNotFoundError, match="Fix: check the path"):
        storage.check_access("/local/path/that/does/not/exist")


def test_mlflow_client_defaults_leave_the_users_settings_alone() -> None:
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}
    applied = prepare_mlflow_client(env)
    assert (
        env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300" and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in applied
    )
    assert (
        env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        == MLFLOW_CLIENT_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    )
    assert env["GIT_PYTHON_REFRESH"] == "quiet"
    # The names are MLflow's own (a typo would silently leave its 4-minute default).
    spec = importlib.util.find_spec("mlflow.environment_variables")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    for name in (k for k in MLFLOW_CLIENT_DEFAULTS if k.startswith("MLFLOW_")):
        assert f'"{name}"' in source, name


def test_register_against_an_unreachable_mlflow_fails_in_seconds_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashion_attr.steps import register
    from mlflow_server import export_tiny_model, write_metrics

    for var in list(MLFLOW_CLIENT_DEFAULTS):
        monkeypatch.delenv(var, raising=False)  # MLflow's own defaults, as a user has them
    export_tiny_model(tmp_path / "model.pt")
    metrics = write_metrics(
        tmp_path / "metrics.json",
        {"attr_recall@3/all": 0.5, "attr_recall@3/tail": 0.3, "cat_top3_acc": 0.9},
    )
    uri = f"http://127.0.0.1:{free_port()}"
    argv = ["--model", str(tmp_path / "model.pt"), "--metrics", str(metrics)]
    start = time.monotonic()
    code = register.main([*argv, "--pipeline-run", "r1", "--tracking-uri", uri])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == 3, err
    assert err.splitlines() == [err] and err.startswith("register: failed: MLflow at " + uri)
    assert "Fix:" in err and "Traceback" not in err
    assert elapsed < BOUND_S
