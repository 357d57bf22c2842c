"""Load test of the served model: ``mlflow models serve`` under concurrent clients.

What it does (all on 127.0.0.1, nothing leaves the machine):

1. Exports a tiny classifier ``model.pt`` exactly as ``train_classifier`` does
   (random weights, seed 0: different images get different answers) and logs it
   with :func:`fashion_attr.registry.pyfunc.log_pyfunc_model` to a local MLflow
   store, then copies the logged model to a local folder; or uses ``--model-dir``.
2. Starts ``mlflow models serve -m <folder> --env-manager local`` (``--workers``
   uvicorn workers) and waits for ``/ping``; or uses a running server (``--url``,
   with ``--model-pt`` for the reference answers).
3. Renders real demo product photos (:mod:`fashion_attr.demo`, JPEG) and
   computes the reference answer of each with an in-process
   :class:`~fashion_attr.registry.pyfunc.ImagePredictor` on the same ``model.pt``.
4. Sends ``--requests`` requests from ``--concurrency`` client threads (one
   keep-alive connection each), one image per request as
   ``{"dataframe_split": {"columns": ["image"], "data": [[<base64>]]}}``, and
   checks every answer: HTTP 200, the documented keys, and the same category,
   attributes and top-k (probabilities within ``--tolerance``) as the reference.
5. Prints requests/s and latency percentiles (p50/p90/p99/max), writes
   ``results.json`` and ``summary.md`` into ``--out``, and stops the server.

Exit status: 0 when every answer was correct, 1 otherwise.

Usage::

    .venv/bin/python bench/serving_load.py                      # 1,000 requests, 8 clients
    .venv/bin/python bench/serving_load.py --requests 200 --workers 2
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback server helpers live with the tests

import mlflow_server  # noqa: E402  (tests/mlflow_server.py)

ANSWER_KEYS = {"category", "category_prob", "attributes", "top_k"}


@dataclass
class LoadResult:
    """Outcome of one load run.

    Attributes:
        requests: Requests sent.
        concurrency: Client threads.
        correct: Answers that matched the reference.
        errors: ``"request i: problem"`` for every wrong or failed answer (first 20 kept).
        error_count: Number of wrong or failed answers.
        wall_s: Wall time of the whole run.
        latencies_ms: Per-request latency, in completion order.
    """

    requests: int
    concurrency: int
    correct: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        """Completed requests per second of wall time."""
        return self.requests / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` (0-100) in ms (nearest rank)."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    def summary(self) -> dict[str, Any]:
        """JSON-able figures."""
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "correct": self.correct,
            "errors": self.error_count,
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": round(self.requests_per_s, 2),
            "latency_ms": {
                "p50": round(self.percentile(50), 2),
                "p90": round(self.percentile(90), 2),
                "p99": round(self.percentile(99), 2),
                "max": round(max(self.latencies_ms, default=math.nan), 2),
                "mean": round(sum(self.latencies_ms) / max(len(self.latencies_ms), 1), 2),
            },
        }


# --------------------------------------------------------------------------- model and images


def prepare_model(workdir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Export a tiny ``model.pt`` and log it as the pyfunc model into a local folder.

    Returns:
        ``(model folder for mlflow models serve, model.pt)``.
    """
    import mlflow
    from fashion_attr.registry.pyfunc import log_pyfunc_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    model_pt = workdir / "model.pt"
    mlflow_server.export_tiny_model(model_pt, seed=seed)
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking)
    exp = client.create_experiment("serving-load", artifact_location=(workdir / "a").as_uri())
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking)
    try:
        with mlflow.start_run(experiment_id=exp):
            info = log_pyfunc_model(model_pt, "model", threshold=0.5, top_k=3)
        local = mlflow.artifacts.download_artifacts(
            info.model_uri, dst_path=str(workdir / "served"), tracking_uri=tracking
        )
    finally:
        mlflow.set_tracking_uri(previous or "")
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
    return Path(local), model_pt


def demo_images(workdir: Path, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` demo product photos (JPEG) as ``(name, base64)``."""
    from fashion_attr.data.annotations import load_annotations_from_dir
    from fashion_attr.demo import generate_demo_dataset

    root = generate_demo_dataset(workdir / "demo", images=count, seed=seed)
    records = load_annotations_from_dir(root).records
    out = []
    for rec in sorted(records, key=lambda r: r.name)[:count]:
        data = (root / "Img" / rec.name).read_bytes()
        assert data[:2] == b"\xff\xd8", rec.name
        out.append((rec.name, base64.b64encode(data).decode("ascii")))
    return out


def reference_answers(model_pt: Path, images: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The in-process ImagePredictor's answer for each image (the served model's config)."""
    from fashion_attr.checkpoint import load_artifact
    from fashion_attr.registry.pyfunc import ImagePredictor

    predictor = ImagePredictor(load_artifact(model_pt), threshold=0.5, top_k=3, device="cpu")
    return [predictor.predict([b64])[0] for _, b64 in images]


def answer_problem(got: Any, want: dict[str, Any], tol: float) -> str | None:
    """Why ``got`` differs from the reference answer ``want`` (``None``: it matches)."""
    if not isinstance(got, dict) or set(got) != ANSWER_KEYS:
        return f"keys {sorted(got) if isinstance(got, dict) else type(got).__name__}"
    if got["category"] != want["category"]:
        return f"category {got['category']!r} != {want['category']!r}"
    if abs(got["category_prob"] - want["category_prob"]) > tol:
        return f"category_prob {got['category_prob']} != {want['category_prob']}"
    for section in ("attributes", "top_k"):
        if set(got[section]) != set(want[section]):
            return f"{section} groups {sorted(got[section])} != {sorted(want[section])}"
        for group, items in want[section].items():
            names = [it["name"] for it in got[section][group]]
            if names != [it["name"] for it in items]:
                return f"{section}.{group} {names} != {[it['name'] for it in items]}"
            for a, b in zip(got[section][group], items, strict=True):
                if abs(a["prob"] - b["prob"]) > tol:
                    return f"{section}.{group}.{a['name']} prob {a['prob']} != {b['prob']}"
    return None


# --------------------------------------------------------------------------- server


def start_server(model_dir: Path, workdir: Path, workers: int, timeout: float = 300.0):
    """Start ``mlflow models serve`` for a local model folder; wait for ``/ping``."""
    import subprocess

    port = mlflow_server.free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir)]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    # `mlflow models serve` execs uvicorn by name: the interpreter's bin folder must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = mlflow_server.ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        server.extra["startup_s"] = f"{mlflow_server.wait_http(server, '/ping', timeout):.1f}"
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------- load


def run_load(
    url: str,
    images: Sequence[tuple[str, str]],
    expected: Sequence[dict[str, Any]],
    *,
    requests: int,
    concurrency: int,
    tolerance: float = 1e-4,
    timeout: float = 120.0,
) -> LoadResult:
    """Send ``requests`` requests (image ``i % len(images)``) from ``concurrency`` threads."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    bodies = [
        json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64]]}}).encode()
        for _, b64 in images
    ]
    result = LoadResult(requests=requests, concurrency=concurrency)
    lock = threading.Lock()
    local = threading.local()

    def one(i: int) -> None:
        k = i % len(images)
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        problem = None
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/invocations", bodies[k], {"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            latency = (time.perf_counter() - t0) * 1000
            if resp.status != 200:
                problem = f"HTTP {resp.status}: {raw[:200]!r}"
            else:
                preds = json.loads(raw)["predictions"]
                if len(preds) != 1:
                    problem = f"{len(preds)} predictions for 1 image"
                else:
                    problem = answer_problem(preds[0], expected[k], tolerance)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            latency = (time.perf_counter() - t0) * 1000
            problem = f"{type(exc).__name__}: {exc}"
            conn.close()
            local.conn = None
        with lock:
            result.latencies_ms.append(latency)
            if problem is None:
                result.correct += 1
            else:
                result.error_count += 1
                if len(result.errors) < 20:
                    result.errors.append(f"request {i} ({images[k][0]}): {problem}")

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="client") as pool:
        list(pool.map(one, range(requests)))
    result.wall_s = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- CLI


def _machine() -> dict[str, str]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test; 0 when every answer was correct."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="Requests in all (default 1000).")
    p.add_argument("--concurrency", type=int, default=8, help="Client threads (default 8).")
    p.add_argument("--images", type=int, default=32, help="Distinct demo images (default 32).")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server.")
    p.add_argument("--warmup", type=int, default=8, help="Unmeasured requests first.")
    p.add_argument("--tolerance", type=float, default=1e-4, help="Allowed probability gap.")
    p.add_argument("--url", default=None, help="Use this running server instead of starting one.")
    p.add_argument("--model-dir", default=None, help="Serve this MLflow model folder.")
    p.add_argument("--model-pt", default=None, help="model.pt for the reference answers.")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serving_load"))
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.images < 1:
        p.error("--requests, --concurrency and --images must be >= 1")
    if (args.url or args.model_dir) and not args.model_pt:
        p.error("--url/--model-dir need --model-pt (the reference answers come from it)")

    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    print(f"command: {command}")
    machine = _machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fa-serving-load-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        if args.model_pt:
            model_pt = Path(args.model_pt)
            model_dir = Path(args.model_dir) if args.model_dir else None
        else:
            model_dir, model_pt = prepare_model(work)
        images = demo_images(work, args.images)
        expected = reference_answers(model_pt, images)
        print(f"model and {len(images)} images ready in {time.perf_counter() - t0:.1f} s")
        server = None
        url = args.url
        if url is None:
            assert model_dir is not None
            server = start_server(model_dir, work, args.workers)
            url = server.url
            print(f"server {url} ({args.workers} worker(s)) up in {server.extra['startup_s']} s")
        try:
            if args.warmup:
                warm = run_load(url, images, expected, requests=args.warmup, concurrency=1)
                if warm.error_count:
                    print("warm-up failed:\n  " + "\n  ".join(warm.errors))
                    return 1
            result = run_load(
                url,
                images,
                expected,
                requests=args.requests,
                concurrency=args.concurrency,
                tolerance=args.tolerance,
            )
        finally:
            if server is not None:
                server.stop()
    summary = {
        "command": command,
        "machine": machine,
        "server_workers": args.workers if args.url is None else None,
        "images": len(images),
        # Different images get different answers, so a served answer that belongs to
        # another request's image (mixed up under concurrency) cannot pass the check.
        "distinct_reference_answers": len({json.dumps(a, sort_keys=True) for a in expected}),
        **result.summary(),
    }
    lat = summary["latency_ms"]
    print(
        f"{result.requests} requests, {args.concurrency} clients: {result.correct} correct, "
        f"{result.error_count} wrong; {result.requests_per_s:.1f} requests/s; latency ms "
        f"p50 {lat['p50']}, p90 {lat['p90']}, p99 {lat['p99']}, max {lat['max']}"
    )
    for e in result.errors:
        print("  " + e)
    (out / "results.json").write_text(
        json.dumps({**summary, "error_samples": result.errors}, indent=1)
    )
    (out / "summary.md").write_text(
        "# Serving load test (`mlflow models serve`, one image per request)\n\n"
        f"Command: `{command}`\n\nMachine: "
        + ", ".join(f"{k} {v}" for k, v in machine.items())
        + "\n\n| requests | clients | workers | correct | requests/s | p50 ms | p90 ms "
        "| p99 ms | max ms |\n|---|---|---|---|---|---|---|---|---|\n"
        f"| {result.requests} | {args.concurrency} | {summary['server_workers']} | "
        f"{result.correct} | {result.requests_per_s:.1f} | {lat['p50']} | {lat['p90']} | "
        f"{lat['p99']} | {lat['max']} |\n"
    )
    print(f"wrote {out / 'results.json'} and {out / 'summary.md'}")
    return 0 if result.error_count == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
