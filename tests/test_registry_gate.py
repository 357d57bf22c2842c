"""The promotion gate (fashion_attr.registry.gate): pure rules, hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fashion_attr.evaluation.metrics import (
    AttributeMetrics,
    CategoryMetrics,
    PerImageStats,
    paired_bootstrap,
)
from fashion_attr.registry.gate import (
    Decision,
    Evidence,
    GateRow,
    decide_promotion,
    render_markdown,
    validate_gated_metrics,
    with_evidence,
)
from hypothesis import given, settings
from hypothesis import strategies as st

GATE = ("attr_recall@3/all", "attr_recall@3/tail", "cat_top3_acc")
TOL = 0.005
CHAMPION = {"attr_recall@3/all": 0.50, "attr_recall@3/tail": 0.30, "cat_top3_acc": 0.90}


def _challenger(**changes: float | None) -> dict[str, float | None]:
    names = {"all": "attr_recall@3/all", "tail": "attr_recall@3/tail", "cat": "cat_top3_acc"}
    out: dict[str, float | None] = dict(CHAMPION)
    for short, value in changes.items():
        out[names[short]] = value
    return out


def _verdicts(decision: Decision) -> list[str]:
    return [row.verdict for row in decision.table]


def test_first_model_is_promoted_without_comparison() -> None:
    d = decide_promotion(_challenger(), None, GATE, TOL, "keep")
    assert d.promote is True
    assert "first model" in d.reason
    assert d.table == [
        GateRow("attr_recall@3/all", None, 0.50, None, "n/a"),
        GateRow("attr_recall@3/tail", None, 0.30, None, "n/a"),
        GateRow("cat_top3_acc", None, 0.90, None, "n/a"),
    ]


def test_better_on_one_metric_and_tied_on_the_rest_promotes() -> None:
    d = decide_promotion(_challenger(all=0.52), CHAMPION, GATE, TOL, "keep")
    assert d.promote is True
    assert _verdicts(d) == ["better", "tie", "tie"]
    assert d.table[0].delta == pytest.approx(0.02)
    assert "attr_recall@3/all +0.0200" in d.reason


def test_worse_on_the_tail_metric_keeps_the_champion_despite_gains_elsewhere() -> None:
    # +0.10 overall and +0.05 category do not buy a -0.01 drop on tail attributes.
    d = decide_promotion(_challenger(all=0.60, tail=0.29, cat=0.95), CHAMPION, GATE, TOL, "promote")
    assert d.promote is False
    assert _verdicts(d) == ["better", "worse", "better"]
    assert d.table[1].delta == pytest.approx(-0.01)
    assert "attr_recall@3/tail -0.0100" in d.reason


@pytest.mark.parametrize("metric", ["all", "tail", "cat"])
def test_worse_on_any_single_gated_metric_never_promotes(metric: str) -> None:
    base = {"all": 0.60, "tail": 0.40, "cat": 0.99}  # better everywhere ...
    base[metric] = CHAMPION[{"all": GATE[0], "tail": GATE[1], "cat": GATE[2]}[metric]] - 0.0051
    d = decide_promotion(_challenger(**base), CHAMPION, GATE, TOL, "promote")
    assert d.promote is False  # ... except one metric 0.0051 below: keep the champion
    assert _verdicts(d).count("worse") == 1


def test_drop_of_exactly_the_tolerance_is_a_tie_not_a_loss() -> None:
    # 0.905 - 0.900 is 0.0050000000000000044 in binary floating point: still a tie.
    d = decide_promotion(_challenger(all=0.504, tail=0.295, cat=0.905), CHAMPION, GATE, TOL, "keep")
    assert _verdicts(d) == ["tie", "tie", "tie"]
    assert d.promote is False
    assert "tie_rule=keep" in d.reason


def test_tie_follows_the_tie_rule() -> None:
    tied = _challenger(all=0.503, tail=0.2951, cat=0.9)
    promote = decide_promotion(tied, CHAMPION, GATE, TOL, "promote")
    keep = decide_promotion(tied, CHAMPION, GATE, TOL, "keep")
    assert (promote.promote, keep.promote) == (True, False)
    assert "fresher data" in promote.reason
    assert _verdicts(promote) == _verdicts(keep) == ["tie", "tie", "tie"]


def test_default_tie_rule_is_promote() -> None:
    assert decide_promotion(_challenger(), CHAMPION, GATE, TOL).promote is True


def test_zero_tolerance_counts_any_drop_as_worse() -> None:
    d = decide_promotion(_challenger(tail=0.2999), CHAMPION, GATE, 0.0, "promote")
    assert d.promote is False
    assert _verdicts(d) == ["tie", "worse", "tie"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "None"), (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), ("0.5", "'0.5'")],
)
def test_non_finite_challenger_metric_is_refused(value: object, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"attr_recall@3/tail = {shown}") as err:
        decide_promotion(_challenger(tail=value), CHAMPION, GATE, TOL, "promote")  # type: ignore[arg-type]
    assert "not registered" in str(err.value)
    assert "Fix:" in str(err.value)


def test_missing_challenger_metric_is_refused_even_without_champion() -> None:
    metrics = {"attr_recall@3/all": 0.5, "cat_top3_acc": 0.9}
    with pytest.raises(ValueError, match=r"attr_recall@3/tail \(missing\)"):
        decide_promotion(metrics, None, GATE, TOL, "promote")


def test_validate_names_the_source_and_every_bad_metric() -> None:
    with pytest.raises(ValueError) as err:
        validate_gated_metrics({"cat_top3_acc": math.nan}, GATE, source="s3://b/metrics.json")
    text = str(err.value)
    assert text.startswith("s3://b/metrics.json:")
    assert "attr_recall@3/all (missing)" in text
    assert "attr_recall@3/tail (missing)" in text
    assert "cat_top3_acc = nan" in text
    assert validate_gated_metrics(CHAMPION, GATE) == CHAMPION


def test_champion_without_a_gated_metric_is_not_compared_on_it() -> None:
    old = {"attr_recall@3/all": 0.50, "cat_top3_acc": math.nan}  # no tail value, NaN cat
    d = decide_promotion(_challenger(), old, GATE, TOL, "keep")
    assert _verdicts(d) == ["tie", "n/a", "n/a"]
    assert d.promote is False  # nothing better, nothing worse: the tie rule decides
    d = decide_promotion(_challenger(all=0.49), old, GATE, TOL, "promote")
    assert d.promote is False and _verdicts(d) == ["worse", "n/a", "n/a"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tolerance": -0.1}, "tolerance"),
        ({"tolerance": math.nan}, "tolerance"),
        ({"tie_rule": "maybe"}, "tie_rule"),
        ({"gate_metrics": ()}, "gate_metrics is empty"),
    ],
)
def test_bad_gate_configuration_is_refused(kwargs: dict, match: str) -> None:
    args = {"gate_metrics": GATE, "tolerance": TOL, "tie_rule": "promote", **kwargs}
    with pytest.raises(ValueError, match=match):
        decide_promotion(_challenger(), CHAMPION, **args)


def test_markdown_table_and_json_form() -> None:
    d = decide_promotion(_challenger(all=0.51, tail=0.28), CHAMPION, GATE, TOL, "promote")
    md = render_markdown(d, champion_label="champion (v3)")
    lines = md.splitlines()
    assert lines[0] == (
        "| metric | champion (v3) | challenger | delta | 95% CI of delta | n | verdict |"
    )
    assert lines[2] == "| attr_recall@3/all | 0.5000 | 0.5100 | +0.0100 | - | - | better |"
    assert lines[3] == "| attr_recall@3/tail | 0.3000 | 0.2800 | -0.0200 | - | - | worse |"
    assert lines[4] == "| cat_top3_acc | 0.9000 | 0.9000 | +0.0000 | - | - | tie |"
    assert lines[-1].startswith("**KEEP CHAMPION**: champion kept")
    data = json.loads(json.dumps(d.to_dict()))
    assert data["promote"] is False
    assert data["table"][1]["verdict"] == "worse"
    first = render_markdown(decide_promotion(_challenger(), None, GATE, TOL))
    assert "| attr_recall@3/all | - | 0.5000 | - | - | - | n/a |" in first


_unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_unit, _unit), min_size=3, max_size=3), st.sampled_from(["promote", "keep"])
)
def test_property_a_promotion_never_hides_a_drop_beyond_tolerance(
    pairs: list[tuple[float, float]], tie_rule: str
) -> None:
    champion = {m: c for m, (c, _) in zip(GATE, pairs, strict=True)}
    challenger = {m: x for m, (_, x) in zip(GATE, pairs, strict=True)}
    d = decide_promotion(challenger, champion, GATE, TOL, tie_rule)  # type: ignore[arg-type]
    drops = [champion[m] - challenger[m] for m in GATE]
    if any(drop > TOL + 1e-9 for drop in drops):
        assert d.promote is False
    if d.promote:
        assert all(drop <= TOL + 1e-9 for drop in drops)
    gains = [challenger[m] - champion[m] for m in GATE]
    if all(drop < TOL - 1e-9 for drop in drops) and any(g > TOL + 1e-9 for g in gains):
        assert d.promote is True


# ------------------------------------------------------------- evidence: n and the interval


def _paired(images: int, seed: int = 0) -> tuple[PerImageStats, PerImageStats]:
    """Two models scored on the same ``images``: labels shared, the challenger a bit better.

    Scored through the real accumulators (per-image statistics as ``evaluate`` keeps them).
    """
    gen = torch.Generator().manual_seed(seed)
    n_attr, n_cat = 12, 5
    groups = [1, 2, 3, 4, 5] * 2 + [1, 2]
    train_pos = [500] * 8 + [20, 30, 40, 50]  # the last 4 are the tail
    targets = (torch.rand(images, n_attr, generator=gen) < 0.25).float()
    cats = torch.randint(0, n_cat, (images,), generator=gen)
    stats = []
    for skill in (1.2, 0.9):  # challenger, champion
        noise = torch.randn(images, n_attr, generator=gen)
        attr = AttributeMetrics(groups, train_pos_counts=train_pos, ks=(3,), compute_ap=False)
        cat = CategoryMetrics(n_cat, ks=(3,))
        for start in range(0, images, 64):  # in batches, as a loader feeds them
            sl = slice(start, start + 64)
            attr.update(skill * targets[sl] + noise[sl], targets[sl])
            cat_logits = torch.randn(len(cats[sl]), n_cat, generator=gen)
            cat_logits[torch.arange(len(cats[sl])), cats[sl]] += skill
            cat.update(cat_logits, cats[sl])
        per_image = PerImageStats.collect(attr, cat)
        metrics = {**attr.compute(), **cat.compute()}
        for name in GATE:  # the per-image sums are the metrics
            assert per_image.value(name) == pytest.approx(metrics[name], abs=1e-12)
        stats.append(per_image)
    return stats[0], stats[1]


def test_the_paired_interval_contains_the_difference_and_narrows_with_more_images() -> None:
    widths = {}
    for images in (200, 3200):
        challenger, champion = _paired(images)
        assert challenger.pairs_with(champion) and challenger.images == images
        for name in GATE:
            delta = challenger.value(name) - champion.value(name)
            low, high = paired_bootstrap(challenger, champion, name, resamples=1000, seed=0)
            assert low <= delta <= high, (name, images, low, delta, high)
            widths[name, images] = high - low
            # Seeded: the same inputs give the same interval.
            assert paired_bootstrap(challenger, champion, name, seed=0) == (low, high)
    for name in GATE:  # 16x the images: about 4x narrower (1/sqrt(n))
        assert widths[name, 3200] < widths[name, 200] / 2, name


def test_unpaired_statistics_give_no_interval() -> None:
    challenger, _ = _paired(200, seed=1)
    _, other_split = _paired(200, seed=2)  # other labels: not the same images
    assert not challenger.pairs_with(other_split)
    assert paired_bootstrap(challenger, other_split, "attr_recall@3/all") is None
    assert paired_bootstrap(challenger, challenger, "map/all") is None  # no per-image sums


def test_per_image_statistics_survive_their_file() -> None:
    challenger, _ = _paired(100)
    back = PerImageStats.from_bytes(challenger.to_bytes())
    assert back.tail_attributes == 4 and back.images == 100
    assert set(back.arrays) == set(challenger.arrays)
    assert all(np.array_equal(back.arrays[k], challenger.arrays[k]) for k in back.arrays)
    with pytest.raises(ValueError, match="not per-image statistics"):
        PerImageStats.from_bytes(b"not an npz")


def test_the_table_shows_n_and_the_interval_and_the_decision_is_unchanged() -> None:
    d = decide_promotion(_challenger(all=0.51, tail=0.08), CHAMPION, GATE, TOL, "promote")
    evidence = {
        "attr_recall@3/all": Evidence(1000, 4, 2400, (0.004, 0.016)),
        "attr_recall@3/tail": Evidence(1000, 4, 6, (-0.55, 0.10)),
        "cat_top3_acc": Evidence(1000, 4, None, None),
    }
    shown = with_evidence(d, evidence)
    assert (shown.promote, shown.reason, _verdicts(shown)) == (d.promote, d.reason, _verdicts(d))
    lines = render_markdown(shown).splitlines()
    assert lines[2] == (
        "| attr_recall@3/all | 0.5000 | 0.5100 | +0.0100 | [+0.0040, +0.0160] | "
        "1000 images, 2400 positives | better |"
    )
    assert lines[3] == (
        "| attr_recall@3/tail | 0.3000 | 0.0800 | -0.2200 | [-0.5500, +0.1000] | "
        "1000 images, 4 tail attributes, 6 positives | worse |"
    )
    assert lines[4] == "| cat_top3_acc | 0.9000 | 0.9000 | +0.0000 | - | 1000 images | tie |"
    # Recorded with the decision (the version's gate.decision tag, gate/decision.json).
    row = json.loads(json.dumps(shown.to_dict()))["table"][1]
    assert (row["images"], row["tail_attributes"], row["positives"]) == (1000, 4, 6)
    assert (row["ci_low"], row["ci_high"]) == (-0.55, 0.10)
