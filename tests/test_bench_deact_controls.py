"""The Deact controls of the demo and long-tail benchmarks, and whole_share's selection.

Pure functions on hand-written rows (no training; the scripts' figures are in
docs/results.md): the paired differences, the generator's share of the gain, and that
``whole_share`` is chosen on the validation split, whatever the test split says.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import deact_demo
import longtail
import whole_images

KEY = f"val {deact_demo.SELECT}"


def _row(variant: str, seed: int, val: float) -> dict:
    return {"variant": variant, "seed": seed, KEY: val, f"test {deact_demo.SELECT}": val}


def test_demo_share_is_the_part_of_the_gain_noise_does_not_recover() -> None:
    rows = [_row("habp", s, 0.60) for s in range(3)]
    rows += [_row("deact", s, 0.64) for s in range(3)]
    rows += [_row("noise", 0, 0.63), _row("noise", 1, 0.63), _row("noise", 2, 0.63)]
    assert deact_demo.paired(rows, "deact", "habp", KEY) == pytest.approx([4.0] * 3)
    assert deact_demo.share(rows, "deact", "val") == pytest.approx(0.25)
    # No gain over the base: no share to speak of.
    rows = [r | {KEY: 0.60} if r["variant"] == "deact" else r for r in rows]
    assert math.isnan(deact_demo.share(rows, "deact", "val"))
    with pytest.raises(SystemExit):
        deact_demo.parse_args(["--variants", "habp,gan_only"])


def test_longtail_controls_table_pairs_each_deact_with_its_base_and_noise() -> None:
    runs = [
        {"method": m, "seed": s, "attr_recall@3/all": v, "attr_recall@3/tail": v, "map/all": v}
        for s in range(2)
        for m, v in (("habp", 0.40), ("habp_deact", 0.45), ("habp_noise", 0.44), ("ce", 0.3))
    ]
    table = longtail.deact_controls_table(runs, ["habp", "habp_deact", "habp_noise", "ce"])
    assert "HABP + Deact - HABP + noise control | +1.00 ± 0.00, 2/2" in table
    assert "generator's share of the gain" in table and "| 20 %" in table


def test_whole_share_is_chosen_on_validation_not_test() -> None:
    def row(share: float, val: float, test: float) -> dict:
        out: dict = {"share": share}
        for view in ("crop", "whole"):
            for k in whole_images.METRICS:
                out[f"val {view} {k}"] = val
                out[f"test {view} {k}"] = test
        return out

    rows = [row(0.0, 0.50, 0.90), row(0.25, 0.70, 0.60), row(0.5, 0.60, 0.95)]
    assert whole_images.selection_score(rows[1]) == pytest.approx(0.70)
    assert whole_images.choose_share(rows, [0.0, 0.25, 0.5]) == 0.25
