"""Test helper: real ``mlflow server`` / ``mlflow models serve`` subprocesses on loopback.

Not a test module (no ``test_`` prefix). Test files import it after putting
``tests/`` on ``sys.path``::

    sys.path.insert(0, str(Path(__file__).parent))
    from mlflow_server import running_mlflow_server

Each server runs in its own process group (``start_new_session``) so that stopping
it also ends the workers it spawned (uvicorn, job runners); only that group is
signalled. The tracking server uses a SQLite backend and local proxied artifacts
in a temporary folder, binds 127.0.0.1 only, and runs with one worker and without
MLflow's background job runner to keep start-up near 10 s on two cores.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ADMIN_USER = "admin"

# Variables of the caller that must not leak into a test server (a developer's or
# CI's own MLflow settings).
_SCRUB = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_EXPERIMENT_NAME",
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A started server subprocess, its URL and its log file."""

    proc: subprocess.Popen
    url: str
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    def log_tail(self, n: int = 40) -> str:
        """Last ``n`` lines of the server's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left."""
        stop_group(self.proc, timeout)


def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """End the process group led by ``proc`` (started with ``start_new_session=True``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    # Workers of the group may outlive the leader: make sure the whole group is gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_http(server: ServerProcess, path: str, timeout: float) -> float:
    """Poll ``server.url + path`` until HTTP 200; returns the seconds waited.

    Raises:
        RuntimeError: the process exited, or no 200 within ``timeout`` (log tail attached).
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"server exited with code {server.proc.returncode} before {path} answered:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"no answer on {server.url}{path} within {timeout} s:\n" + server.log_tail())


def _base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner
    env["PYTHONUNBUFFERED"] = "1"
    # `mlflow models serve` execs `uvicorn` by name: the interpreter's bin folder (the
    # virtualenv's, even when it is not activated) must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def start_tracking_server(
    root: Path, *, auth: bool = False, timeout: float = 180.0
) -> ServerProcess:
    """Start ``mlflow server`` (SQLite + proxied local artifacts) and wait for /health.

    Args:
        root: an empty temporary folder for the databases, artifacts and log.
        auth: run MLflow's basic-auth app; the admin password is random and returned
            in ``extra["admin_password"]`` (a user is created from it on first start).
        timeout: seconds to wait for /health.

    Returns:
        The running :class:`ServerProcess` (``extra["startup_s"]`` = seconds to healthy).
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env_extra: dict[str, str] = {}
    extra: dict[str, str] = {}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if auth:
        password = "pw-" + secrets.token_hex(12)
        ini = root / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
            f"admin_username = {ADMIN_USER}\n"
            f"admin_password = {password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Cache verified credentials: without it every request (one per uploaded
            # artifact file) pays a PBKDF2 hash, ~10x slower on two cores.
            "auth_cache_ttl_seconds = 60\n"
        )
        env_extra["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env_extra["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(16)
        cmd += ["--app-name", "basic-auth"]
        extra.update(admin_user=ADMIN_USER, admin_password=password)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=_base_env(env_extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, extra)
    try:
        extra["startup_s"] = f"{wait_http(server, '/health', timeout):.1f}"
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_tracking_server(root: Path, *, auth: bool = False) -> Iterator[ServerProcess]:
    """Context manager around :func:`start_tracking_server`; always stops the server."""
    server = start_tracking_server(root, auth=auth)
    try:
        yield server
    finally:
        server.stop()


def start_model_server(
    model_uri: str, tracking_uri: str, root: Path, *, timeout: float = 240.0
) -> ServerProcess:
    """Start ``mlflow models serve --env-manager local`` for ``model_uri``; wait for /ping."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    log_path = root / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=_base_env({"MLFLOW_TRACKING_URI": tracking_uri}),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        server.extra["startup_s"] = f"{wait_http(server, '/ping', timeout):.1f}"
    except BaseException:
        server.stop()
        raise
    return server


def jpeg_b64(img: object, quality: int = 90) -> str:
    """Base64 of a PIL image saved as JPEG."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)  # type: ignore[attr-defined]
    return base64.b64encode(buf.getvalue()).decode("ascii")


# -- test data: a tiny exported classifier, metrics files, demo-like images ------------------

CATEGORIES = ["Dress", "Tee", "Skirt"]
ATTRIBUTES = ["floral", "striped", "cotton", "long-sleeve", "collar", "boho"]
ATTRIBUTE_GROUPS = [1, 1, 2, 3, 4, 5]  # texture x2, fabric, shape, part, style


def export_tiny_model(
    path: Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    attr_logits: list[float] | None = None,
    cat_logits: list[float] | None = None,
) -> dict:
    """Write a ``model.pt`` as ``train_classifier`` exports it (tiny arch, 6 attrs, 3 cats).

    Args:
        path: where to write.
        seed: init seed.
        image_size: preprocessing side.
        attr_logits: when given, the attribute head's weights are zeroed and its bias set
            to these logits, so every image gets exactly these logits (hand-checkable).
        cat_logits: the same for the category head.

    Returns:
        The blob written (with its state_dict).
    """
    import torch
    from fashion_attr.checkpoint import save_artifact
    from fashion_attr.classifier.model import build_classifier

    torch.manual_seed(seed)
    model = build_classifier("tiny", len(ATTRIBUTES), len(CATEGORIES))
    with torch.no_grad():
        for head, logits in ((model.attr_head, attr_logits), (model.cat_head, cat_logits)):
            if logits is not None:
                head.linear.weight.zero_()
                head.linear.bias.copy_(torch.tensor(logits))
    spec = model.expected_input()
    blob = {
        "format": "fashion_attr.classifier/v1",
        "arch": "tiny",
        "num_attributes": len(ATTRIBUTES),
        "num_categories": len(CATEGORIES),
        "in_channels": spec["channels"],
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "category_names": list(CATEGORIES),
        "attribute_names": list(ATTRIBUTES),
        "attribute_groups": list(ATTRIBUTE_GROUPS),
        "train_pos_counts": [120, 40, 300, 15, 80, 9],
        "preprocessing": {
            "image_size": image_size,
            "channels": spec["channels"],
            "mean": list(spec["mean"]),
            "std": list(spec["std"]),
            "resize": "bilinear, whole image (crop to the garment box first when known)",
        },
        "dataset_version": f"demo-{seed}",
        "config": {"arch": "tiny", "image_size": image_size},
        "val_metrics": {"attr_recall@3/all": 0.5},
        "step": 10,
    }
    save_artifact(path, blob)
    return blob


def write_metrics(path: Path, metrics: Mapping[str, float | None]) -> Path:
    """Write an ``evaluate``-style ``metrics.json`` (JSON allows NaN/Infinity literals)."""
    import json

    path.write_text(json.dumps({"metrics": dict(metrics), "split": "test"}))
    return path


def garment_image(kind: int, size: tuple[int, int] = (96, 128)) -> object:
    """A demo-like product photo: a coloured garment silhouette on a light background."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, (245, 245, 240))
    d = ImageDraw.Draw(img)
    colours = [(200, 40, 60), (30, 90, 170), (40, 140, 70), (230, 180, 30)]
    c = colours[kind % len(colours)]
    if kind % 3 == 0:  # dress: bodice + flared skirt
        d.rectangle([w * 0.35, h * 0.1, w * 0.65, h * 0.4], fill=c)
        d.polygon(
            [(w * 0.35, h * 0.4), (w * 0.65, h * 0.4), (w * 0.85, h * 0.9), (w * 0.15, h * 0.9)],
            fill=c,
        )
    elif kind % 3 == 1:  # tee with stripes
        d.rectangle([w * 0.25, h * 0.2, w * 0.75, h * 0.8], fill=c)
        d.polygon([(w * 0.25, h * 0.2), (w * 0.05, h * 0.4), (w * 0.25, h * 0.45)], fill=c)
        d.polygon([(w * 0.75, h * 0.2), (w * 0.95, h * 0.4), (w * 0.75, h * 0.45)], fill=c)
        for y in range(int(h * 0.25), int(h * 0.8), 10):
            d.line([(w * 0.25, y), (w * 0.75, y)], fill=(250, 250, 250), width=3)
    else:  # skirt with dots
        d.polygon(
            [(w * 0.3, h * 0.3), (w * 0.7, h * 0.3), (w * 0.9, h * 0.85), (w * 0.1, h * 0.85)],
            fill=c,
        )
        for x in range(int(w * 0.25), int(w * 0.8), 12):
            d.ellipse([x, h * 0.6, x + 5, h * 0.6 + 5], fill=(255, 255, 255))
    return img
