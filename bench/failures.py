r"""Every failure a user can meet, tried as a user would: exit code, seconds, the message.

Each scenario is a real command of the project (a step CLI, ``run_local``, ``schedule``,
``preflight``, ``make``) run against a real cause (a closed port, a typo, corrupt files,
missing images); the table it prints is the one in docs/operations.md. A row passes when
the exit code is the documented one (2 a user error, 3 a fault, 130 interrupted) and the
message is one line naming the fix, with no traceback.

    .venv/bin/python bench/failures.py [--out bench/results/failures]

Takes a few minutes on the 2-core development machine (most of it starting Python and
importing torch); nothing is left running.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Row:
    """One failure: what was tried, the exit code it must end with, and what it did."""

    failure: str
    command: str
    expected: int
    code: int = 0
    seconds: float = 0.0
    message: str = ""
    traceback: bool = False

    @property
    def ok(self) -> bool:
        """The documented exit code, a message naming the fix, no traceback."""
        fix = any(
            w in self.message.lower()
            for w in ("fix", "choose from", "known:", "rerun the same", "for a cluster")
        )
        return self.code == self.expected and not self.traceback and fix


def _kill_newest_step(root: int) -> None:
    """``kill -9`` the newest KFP executor process under ``root`` (the running step)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                if b"executor_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                continue
    if found:
        os.kill(max(found), signal.SIGKILL)


def _fix_part(message: str) -> str:
    """The part of ``message`` from its fix on (the whole message when it names none)."""
    at = max(message.rfind("Fix:"), message.rfind("fix:"))
    if at < 0:
        return message
    start = message.rfind(" ", 0, at - 1) + 1 if message[at] == "f" else at  # "Likely fix:"
    return message[start:]


def _cut(text: str, width: int) -> str:
    """``text`` cut at the last word boundary before ``width``, with an ellipsis."""
    if len(text) <= width:
        return text
    return text[:width].rsplit(" ", 1)[0] + " ..."


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(
    row: Row,
    argv: list[str],
    env: dict[str, str] | None = None,
    interrupt_after: Callable[[str], bool] | None = None,
    interrupt: Callable[[int], None] | None = None,
) -> Row:
    """Run ``argv``; record exit code, wall time, and the last line that says what failed."""
    full_env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'components'}:{ROOT}",
        "PYTHONWARNINGS": "ignore",
        **(env or {}),
    }
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if interrupt_after is not None and interrupt_after(line):
            (interrupt or (lambda pid: os.killpg(pid, signal.SIGINT)))(proc.pid)
            interrupt_after = None
    row.code = proc.wait()
    row.seconds = time.monotonic() - start
    row.traceback = any(ln.startswith("Traceback") for ln in lines)
    said = [
        i
        for i, ln in enumerate(lines)
        if any(
            w in ln
            for w in (
                ": error:",
                ": failed:",
                "error:",
                "interrupted",
                "unknown var",
                "warning:",
                "run_local:",
            )
        )
    ]
    first = said[-1] if said else max(len(lines) - 1, 0)
    block = " / ".join(ln.strip() for ln in lines[first : first + 4] if ln.strip())
    row.message = block
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "failures")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fa-failures-"))
    rows: list[Row] = []
    port = closed_port()
    demo = "demo://?images=60&seed=0"

    # A dataset version and a pinned package for the scenarios that need them.
    from fashion_attr.config import PreprocessConfig, load_config
    from fashion_attr.steps import preprocess

    data = preprocess.run(
        load_config(PreprocessConfig, preset="tiny"), str(work / "ds"), source=demo, progress=False
    ).uri
    from pipelines.retraining import compile_pipeline
    from pipelines.settings import CompileSettings

    pinned = compile_pipeline(
        work / "pinned.yaml", CompileSettings(image="r.example.com/fa@sha256:" + "0" * 64)
    )
    sched = [PY, "-m", "pipelines.schedule", "submit", "--catalog-uri", "s3://b/c/"]
    sched += ["--storage-uri", "s3://b", "--source-uri", "s3://b/df", "--package", str(pinned)]
    gan = [PY, "-m", "fashion_attr.steps.train_gan", "--data", data, "--preset", "tiny"]
    gan += ["--set", "max_steps=2", "--set", "quality.enabled=false"]
    mlflow_down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}

    def preflight(storage: str, preset: str, *extra: str) -> list[str]:
        """The validation task's check, as a user runs it, on the demo source."""
        cmd = [PY, "-m", "fashion_attr.orchestration.preflight", "--storage-uri", storage]
        return [*cmd, "--source-uri", demo, "--preset", preset, *extra]

    scenarios: list[tuple[Row, list[str], dict[str, str] | None]] = [
        (
            Row("a typo in an override", "preflight --classifier-overrides epochz=1", 2),
            preflight(str(work / "s"), "tiny", "--classifier-overrides", "epochz=1", "--no-mlflow"),
            None,
        ),
        (
            Row("MLflow unreachable (validation)", "preflight, MLFLOW_TRACKING_URI closed", 3),
            preflight(str(work / "s"), "tiny"),
            mlflow_down,
        ),
        (
            Row("MLflow unreachable (a training step)", "train_gan, MLflow closed", 3),
            [*gan, "--out", str(work / "g1")],
            mlflow_down,
        ),
        (
            Row("a paper preset without its weights", "preflight --preset paper", 2),
            preflight(str(work / "s"), "paper", "--no-mlflow"),
            {"TORCH_HOME": str(work / "no-torch-home")},
        ),
        (
            Row("a step asks for GPUs, CUDA has none", "train_gan --require-gpus 1", 3),
            [*gan, "--out", str(work / "g2"), "--require-gpus", "1"],
            {"CUDA_VISIBLE_DEVICES": ""},
        ),
        (
            Row("KFP host unreachable", "schedule submit --host <closed port>", 3),
            [*sched, "--host", f"http://127.0.0.1:{port}"],
            None,
        ),
        (
            Row("a misspelled preset (before the host)", "schedule submit --preset papr", 2),
            [*sched, "--preset", "papr", "--host", f"http://127.0.0.1:{port}"],
            None,
        ),
        (
            Row("a package whose image is a tag", "schedule submit --package <unpinned>", 2),
            [*sched[:-1], str(compile_pipeline(work / "tag.yaml", CompileSettings()))],
            None,
        ),
        (
            Row("a cluster compile with a bare tag", "make compile TARGET=cluster", 2),
            [
                PY,
                "-m",
                "pipelines.retraining",
                "--target",
                "cluster",
                "--image",
                "fa:1",
                "--output",
                str(work / "c.yaml"),
            ],
            None,
        ),
        (
            Row("a misspelled make variable", "make run SEEDS=3", 2),
            ["make", "--no-print-directory", "run", "SEEDS=3"],
            None,
        ),
    ]
    # An object store that does not answer (validation checks it before any work).
    scenarios.append(
        (
            Row("S3 endpoint unreachable (validation)", "preflight, AWS_ENDPOINT_URL closed", 3),
            preflight("s3://fa-bench", "tiny", "--no-mlflow"),
            {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench-secret",
            },
        )
    )
    # A DeepFashion-C copy with one malformed annotation line.
    from fashion_attr.demo import generate_demo_dataset

    dfc = work / "dfc"
    generate_demo_dataset(dfc, images=40, seed=0)
    bbox = dfc / "Anno" / "list_bbox.txt"
    lines = bbox.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 2)[0] + " x y"  # two coordinates that are not numbers
    bbox.write_text("\n".join(lines) + "\n")
    scenarios.append(
        (
            Row("a malformed annotation line", "preprocess --source <DeepFashion-C copy>", 2),
            [
                PY,
                "-m",
                "fashion_attr.steps.preprocess",
                "--source",
                str(dfc),
                "--dest",
                str(work / "ds-bad"),
                "--preset",
                "tiny",
                "--no-progress",
            ],
            None,
        )
    )
    # A local compile with a bare tag: it works (kfp.local), and warns for a cluster.
    scenarios.append(
        (
            Row("a bare `make compile` (tag, GPUs)", "make compile", 0),
            [
                PY,
                "-m",
                "pipelines.retraining",
                "--image",
                "fa:1",
                "--output",
                str(work / "bare.yaml"),
            ],
            None,
        )
    )
    # A learning rate that makes the loss non-finite.
    scenarios.append(
        (
            Row("a loss turns NaN (lr 1e30)", "train_classifier --set lr=1e30", 3),
            [
                PY,
                "-m",
                "fashion_attr.steps.train_classifier",
                "--data",
                data,
                "--out",
                str(work / "nan"),
                "--preset",
                "tiny",
                "--set",
                "lr=1e30",
                "--set",
                "deact.enabled=false",
                "--set",
                "max_steps=30",
            ],
            None,
        )
    )
    # Both checkpoints corrupt.
    corrupt = work / "g3"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"PK\x03\x04" + os.urandom(3000))
    (corrupt / "checkpoint.prev.pt").write_bytes(os.urandom(5000))
    scenarios.append(
        (
            Row("both checkpoints corrupt", "train_gan (resume)", 2),
            [*gan, "--out", str(corrupt)],
            None,
        )
    )
    # A catalog batch whose images are all missing.
    batch = work / "all-missing.jsonl"
    batch.write_text(
        "".join(
            f'{{"image": "{work}/nope/{i}.jpg", "category": "Dress", "attributes": []}}\n'
            for i in range(20)
        )
    )
    scenarios.append(
        (
            Row("a batch whose images are all missing", "preprocess --base latest --batch", 2),
            [
                PY,
                "-m",
                "fashion_attr.steps.preprocess",
                "--dest",
                str(work / "ds"),
                "--base",
                "latest",
                "--batch",
                str(batch),
                "--preset",
                "tiny",
                "--no-progress",
            ],
            None,
        )
    )
    for row, argv, env in scenarios:
        rows.append(run(row, argv, env))
        print(f"{rows[-1].failure}: exit {rows[-1].code} in {rows[-1].seconds:.1f} s", flush=True)
    # Ctrl-C of a local run while it trains: says that the same command resumes.
    local = [PY, "-m", "pipelines.run_local", "--workdir", str(work / "local"), "--images", "60",
             "--seed", "1", "--gan-overrides", "epochs=1,batch_size=16"]  # fmt: skip
    rows.append(
        run(
            Row("Ctrl-C of make run while it trains", "run_local, SIGINT in train_gan", 130),
            local,
            None,
            interrupt_after=lambda line: "train_gan: step" in line,
        )
    )
    print(f"{rows[-1].failure}: exit {rows[-1].code} in {rows[-1].seconds:.1f} s", flush=True)
    # kill -9 of the step's process (an OOM kill, a node lost) in a local run.
    rows.append(
        run(
            Row("kill -9 of a step in make run", "run_local, SIGKILL of train_gan", 3),
            [*local[:4], str(work / "local-kill"), *local[5:]],
            None,
            interrupt_after=lambda line: "train_gan: step" in line,
            interrupt=_kill_newest_step,
        )
    )
    print(f"{rows[-1].failure}: exit {rows[-1].code} in {rows[-1].seconds:.1f} s", flush=True)

    header = "| failure | command | exit | seconds | message (last line) |\n|---|---|---|---|---|"
    table = "\n".join(
        f"| {r.failure} | `{r.command}` | {r.code}{'' if r.ok else ' (!)'} | {r.seconds:.1f} | "
        f"{r.message.replace('|', '/')[:300]} |"
        for r in rows
    )
    text = f"{header}\n{table}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    # The short form for the README: the message cut at a word boundary.
    short = "\n".join(
        f"| {r.failure} | {r.code}{'' if r.ok else ' (!)'} | {r.seconds:.1f} | "
        f"{_cut(_fix_part(r.message).replace('|', '/'), 110)} |"
        for r in rows
    )
    (args.out / "summary.md").write_text(
        f"| failure | exit | s | what the message says to do |\n|---|---|---|---|\n{short}\n"
    )
    print("\n" + text)
    print(f"{sum(r.ok for r in rows)} of {len(rows)} as documented; table in {args.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
