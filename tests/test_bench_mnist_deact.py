"""bench/mnist_deact.py: split runs merge into one table, and a bad merge is refused.

The benchmark is not a test of the method (its figures are in docs/results.md); this
checks the merge plumbing on two hand-written parts (no training): one table with
the paired columns and the controls, the errors a bad merge gets, the generator's
share of the gain and the validation-only selection rule.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "mnist_deact.py"

sys.path.insert(0, str(ROOT / "bench"))
import mnist_deact  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _part(folder: Path, seed: int) -> None:
    """A part's runs.csv as the script writes it: one row per method, one seed."""
    import common

    rows = [
        [20, seed, "lenet", 41.0 + seed, 0.0, 3.0, 9.5, 40.0],
        [20, seed, "deact", 38.0 + seed, 2.4, 4.0, 8.0, 39.0],
        [20, seed, "noise", 40.0 + seed, 2.4, 4.0, 8.0, 41.0],
        [20, seed, "acgan", 45.0, 0.0, 6.0, float("nan"), float("nan")],
    ]
    meta = {"command": f"bench/mnist_deact.py --seed {seed}", "device": "cpu"}
    common.write_csv(folder / "runs.csv", mnist_deact.RUN_HEADER, rows, meta)


def test_split_runs_merge_into_one_table(tmp_path: Path) -> None:
    """--merge reads the parts' runs.csv only (the script's end-to-end run is exercised by
    the device checks' smoke stage, tests/test_device_checks.py)."""
    _part(tmp_path / "a", 0)
    _part(tmp_path / "b", 1)
    proc = _run("--merge", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "m" / "table3.csv", newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert len(rows) == 1 and rows[0]["n"] == "20" and rows[0]["seeds"] == "2"
    assert rows[0]["paired_deact_seeds"] == "2" and rows[0]["deact_better"] == "2"
    assert float(rows[0]["lenet_mean"]) == 41.5 and float(rows[0]["deact_mean"]) == 38.5
    assert float(rows[0]["deact_val_mean"]) == 39.0
    for method in ("lenet", "deact", "noise", "acgan"):
        assert 0.0 <= float(rows[0][f"{method}_mean"]) <= 100.0
    # The two parts' runs, one per (seed, method), all in the merged runs.csv.
    merged, _ = mnist_deact.read_runs(tmp_path / "m")
    assert sorted((r["seed"], r["method"]) for r in merged) == sorted(
        (s, m) for s in (0, 1) for m in ("lenet", "deact", "noise", "acgan")
    )
    md = (tmp_path / "m" / "table3.md").read_text()
    assert "LeNet - deact, wins" in md and str(tmp_path / "a") in md
    # The literal form beside its noise control: Deact gains 3 points, noise recovers 1.
    assert "generator's share" in md and "| 67 %" in md

    # Overlapping parts are refused, naming both folders; the merged table is untouched.
    before = (tmp_path / "m" / "table3.md").read_text()
    proc = _run("--merge", f"{tmp_path / 'a'},{tmp_path / 'a'}", "--out", str(tmp_path / "m"))
    assert proc.returncode != 0
    assert "seed=0" in proc.stderr and "disjoint" in proc.stderr
    assert (tmp_path / "m" / "table3.md").read_text() == before


def test_bad_runs_csv_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "runs.csv").write_text(
        "# script: mnist_deact\nn,seed,method,error,sigma_p,wall_s\n25,0,lenet,41.2,0,3\n"
        "25,1,lenet,not-a-number,0,3\n"
    )
    with pytest.raises(SystemExit, match=r"runs\.csv:4: bad row"):
        mnist_deact.read_runs(tmp_path)
    with pytest.raises(SystemExit, match="not found"):
        mnist_deact.read_runs(tmp_path / "missing")


def test_paired_differences_only_count_seeds_with_both() -> None:
    cell = [
        {"n": 25, "seed": 0, "method": "lenet", "error": 40.0},
        {"n": 25, "seed": 0, "method": "deact", "error": 38.0},
        {"n": 25, "seed": 1, "method": "lenet", "error": 30.0},
        {"n": 25, "seed": 1, "method": "deact", "error": 33.0},
        {"n": 25, "seed": 2, "method": "lenet", "error": 50.0},
    ]
    assert mnist_deact.paired_differences(cell) == [2.0, -3.0]


def test_generator_share_and_the_validation_rule() -> None:
    def runs(val: dict[str, list[float]], test: dict[str, list[float]]) -> list[dict]:
        return [
            {"n": 25, "seed": s, "method": m, "error": test[m][s], "val_error": val[m][s]}
            for m in val
            for s in range(3)
        ]

    test = {"lenet": [40.0] * 3, "deact_c": [30.0] * 3, "noise_c": [32.0] * 3}
    # On validation the noise control does as well as Deact: the rule picks nothing,
    # whatever the test range says.
    val = {"lenet": [40.0] * 3, "deact_c": [30.0, 31.0, 30.0], "noise_c": [30.0, 30.0, 31.0]}
    cell = runs(val, test)
    assert mnist_deact.generator_share(cell, "centered") == pytest.approx(0.2)
    chosen, lines = mnist_deact.select_form(cell, [25])
    assert chosen is None and "No reading beats its noise control" in lines[-1]
    # Deact beats LeNet and noise on 2 of 3 validation seeds, on average: chosen.
    val["noise_c"] = [33.0, 29.0, 33.0]
    chosen, _ = mnist_deact.select_form(runs(val, test), [25])
    assert chosen == "centered"
    assert mnist_deact.beats([1.0, -0.5, 2.0]) and not mnist_deact.beats([3.0, -0.1, -0.1])


def test_help_lists_every_control(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        mnist_deact.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("noise_c", "sigma0_c", "deact_ls", "noise images", "unperturbed generator"):
        assert name in text
    assert "--val" in text and "--resume" in text
