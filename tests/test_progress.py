"""Progress on stderr: lines with rate and ETA at an interval, one last line with the time."""

from __future__ import annotations

import io

import pytest
from fashion_attr.progress import CountProgress, Progress


def test_training_progress_prints_eta_lines_and_one_final_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FA_PROGRESS", "lines")
    monkeypatch.setenv("FA_PROGRESS_EVERY", "0")
    out = io.StringIO()
    p = Progress("train_gan", 5, 0, 32, stream=out)
    for step in range(1, 6):
        p.update(step, 0, 1, {"loss_d": 1.0, "loss_d/8px": 2.0})
    p.update(5, 0, 1, {}, final=True)
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert all("ETA" in line and "img/s" in line for line in lines[:-1])
    assert "done in" in lines[-1] and "loss_d 1" in lines[-1]  # the last losses are kept
    assert "8px" not in out.getvalue()  # per-level terms stay in the metrics log


def test_count_progress_lines_then_a_total(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FA_PROGRESS", "lines")
    monkeypatch.setenv("FA_PROGRESS_EVERY", "0")
    out = io.StringIO()
    with CountProgress("ingest v-1 part 0", 3, "img", stream=out) as bar:
        for _ in range(3):
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "3/3 img (100%)" in lines[-1] and "done in" in lines[-1]
    assert "ETA" in lines[0] and "img/s" in lines[0]
    off = io.StringIO()
    with CountProgress("x", 3, stream=off, enabled=False) as bar:
        bar.update(3)
    assert off.getvalue() == ""
