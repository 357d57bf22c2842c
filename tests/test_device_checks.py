"""bench/device/gpu_checks.sh, the prepared GPU command, runs end to end without a GPU.

The device checks of issue 6 can only be measured on a lent GPU, where a broken
script costs scarce device time. Its ``smoke`` stage runs every step at
CPU-check sizes: the throughput bench with profile and projection, the MNIST
cells in parallel and their merge, the summary and the archive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from idxdigits import write_idx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device" / "gpu_checks.sh"


def test_scripts_parse_and_reject_unknown_stage(tmp_path: Path) -> None:
    for script in (SCRIPT, ROOT / "bench" / "device" / "prepare.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "everything"],
        capture_output=True,
        text=True,
        env={**os.environ, "OUT": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == 2 and "speed|mnist|smoke" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_stage_writes_summary_and_archive(tmp_path: Path) -> None:
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    write_idx(mnist, count=10_000)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "MNIST_DIR": str(mnist),
        "ANCHORS": str(tmp_path / "no-anchors"),
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), "smoke"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "machine.txt",
        "results.tar.gz",
        "smoke.log",
        "summary.md",
    ]
    log = (out / "smoke.log").read_text()
    assert "=== throughput: rc 0" in log and "=== mnist_merge: rc 0" in log
    assert "2 cells finished" in log and "not staged" in log
    summary = (out / "summary.md").read_text()
    assert "Projected DeepFashion-C cost" in summary and "LeNet - deact_c, wins" in summary
    assert "generator's share" in summary  # Deact beside its noise control
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        assert "./mnist/merged/table3.csv" in names
        profile = next(n for n in names if n.startswith("./throughput/profile_"))
        text = tar.extractfile(profile).read().decode()
    # The step's phases, named by the fa.* profiler regions of ClassifierTask and the bench.
    for region in ("fa.loader_wait", "fa.forward", "fa.backward", "fa.deact_synthesize"):
        assert region in text
