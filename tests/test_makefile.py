"""The make targets a user types: options reach the commands, typos are refused.

``make -n`` prints what a target would run without running it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import fashion_attr

ROOT = Path(__file__).resolve().parents[1]


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_forwards_the_pipelines_inputs() -> None:
    done = _make(
        "run",
        "SOURCE=/data/DeepFashion-C",
        "BATCH=/drops/2026-12-01.jsonl",
        "BASE=latest",
        "SEED=7",
        "PRESET=mnist",
        "WORKDIR=/tmp/w",
        "CLASSIFIER_OVERRIDES=epochs=1,lr=0.1",
    )
    assert done.returncode == 0, done.stderr
    (line,) = [ln for ln in done.stdout.splitlines() if "pipelines.run_local" in ln]
    for expected in (
        '--source "/data/DeepFashion-C"',
        '--batch "/drops/2026-12-01.jsonl"',
        '--base "latest"',
        "--seed 7",
        "--preset mnist",
        '--workdir "/tmp/w"',
        '--classifier-overrides "epochs=1,lr=0.1"',
        f"--image fashion-attr:{fashion_attr.__version__}",
    ):
        assert expected in line, (expected, line)


def test_a_misspelled_variable_is_refused_not_ignored() -> None:
    done = _make("run", "SEEDS=7")
    assert done.returncode != 0
    assert "unknown variable(s) SEEDS" in done.stderr and "run_local --help" in done.stderr
    assert "pipelines.run_local" not in done.stdout  # nothing would have run


def test_the_image_tag_and_label_follow_the_package_version() -> None:
    done = _make("image")
    assert done.returncode == 0, done.stderr
    version = fashion_attr.__version__
    assert f"--build-arg VERSION={version}" in done.stdout
    assert f"-t fashion-attr:{version}" in done.stdout
    compile_ = _make("compile", "TARGET=cluster")
    assert "--target cluster" in compile_.stdout
