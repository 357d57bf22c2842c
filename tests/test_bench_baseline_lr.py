"""bench/baseline_lr.py: each loss's rate is picked on validation, diverged rates never.

The benchmark's figures are in README ("Fair baselines"); this checks the selection rule
on hand-written rows, the argument errors, and one short run through the real steps in
which a diverging rate is recorded as diverged and not recommended.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "baseline_lr.py"

sys.path.insert(0, str(ROOT / "bench"))
import baseline_lr  # noqa: E402

VAL = f"val {baseline_lr.SELECT}"


def _row(loss: str, lr: float, score: float, diverged: int = 0) -> dict:
    return {"loss": loss, "lr": lr, "diverged": diverged, VAL: score}


def test_best_rate_is_the_best_validation_mean_among_rates_that_never_diverged() -> None:
    rows = [
        _row("focal", 0.1, 0.40),
        _row("focal", 0.1, 0.44),  # mean 0.42
        _row("focal", 0.3, 0.45),
        _row("focal", 0.3, 0.41),  # mean 0.43: best
        _row("focal", 1.0, 0.90),
        _row("focal", 1.0, float("nan"), diverged=1),  # diverged on one seed: excluded
        _row("ce", 0.1, 0.50),
        _row("habp", 3.0, float("nan"), diverged=1),
    ]
    assert baseline_lr.best_rates(rows, ["focal", "ce", "habp"]) == {
        "focal": 0.3,
        "ce": 0.1,
        "habp": None,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--losses", "focal,hinge"], "unknown ['hinge']"),
        (["--lrs", "0.1,fast"], "comma-separated positive numbers"),
        (["--lrs", "0.1,-1"], "comma-separated positive numbers"),
        (["--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_bad_arguments_name_the_flag(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        baseline_lr.parse_args(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # trains an MR-GAN and two classifiers end to end (about 45 s)
def test_a_short_sweep_records_divergence_and_recommends_the_stable_rate(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--images=200",
            "--losses=focal",
            "--lrs=0.1,1e30",
            "--seeds=1",
            "--set=epochs=1",
            "--set=lr_milestones=[]",
            "--threads=1",
            "--deact",  # trains the preset's MR-GAN once and hands it to every run
            f"--out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--set loss.name=focal --set lr=0.1" in proc.stdout
    assert "lr 1e+30 seed 0: diverged" in proc.stderr + proc.stdout
    with open(tmp_path / "runs.csv") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert [(r["lr"], r["diverged"]) for r in rows] == [("0.1", "0"), ("1e+30", "1")]
    assert 0.0 <= float(rows[0][VAL]) <= 1.0
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("focal") >= 3
    assert "# MR-GAN for Deact:" in summary and "Deact on" in summary
