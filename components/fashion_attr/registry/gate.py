"""The promotion gate: should the freshly trained challenger replace the champion?

A pure function of the two models' metrics, so that every rule is unit-tested
without a registry. All gated metrics are "higher is better" (top-k recall,
accuracy, mAP, class-balanced accuracy on [0, 1]); ``tolerance`` is an absolute
difference on that scale.

Rules, in order:

1. Every gated metric of the challenger must be present and finite, otherwise
   :class:`ValueError` (the caller checks this before writing anything to MLflow,
   so a broken evaluation never reaches the registry).
2. No champion yet: promote (the first model).
3. Worse than the champion by more than ``tolerance`` on ANY gated metric (the
   tail-attribute metric included): keep the champion. A regression on the tail
   attributes, the ones HABP and Deact are meant to help, is never traded for a
   gain elsewhere.
4. Otherwise, better by more than ``tolerance`` on at least one metric: promote.
5. Otherwise (every metric within tolerance, a tie): ``tie_rule``. The default
   ``"promote"`` lets the model trained on the fresher catalogue data win when
   quality is equal; ``"keep"`` keeps the champion.

Each row also shows the evidence behind its figures, which the rules above do not use:
``n``, the test images (and, for a tail metric, the tail attributes; for a recall, its
test positives), and, when both models were scored on the same images, a 95 % paired
bootstrap confidence interval of ``challenger - champion``
(:func:`fashion_attr.evaluation.metrics.paired_bootstrap`). A delta of -0.22 from six
positives of two tail attributes reads differently from one over thousands.

A champion without a finite value for a gated metric (registered before that
metric was gated, say) cannot be compared on it: that row's verdict is
``"n/a"``, which neither blocks nor justifies a promotion. Differences are taken
as ``challenger - champion`` and compared with ``tolerance`` allowing 1e-12 of
rounding, so that e.g. 0.805 vs 0.800 with tolerance 0.005 is a tie as a person
computing it by hand expects.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, TypeGuard

__all__ = [
    "Decision",
    "Evidence",
    "GateRow",
    "decide_promotion",
    "is_finite_metric",
    "non_finite_metrics",
    "render_markdown",
    "validate_gated_metrics",
    "with_evidence",
]

Verdict = Literal["better", "worse", "tie", "n/a"]
_EPS = 1e-12


@dataclass(frozen=True)
class GateRow:
    """One gated metric compared between champion and challenger.

    Attributes:
        metric: the metric's name.
        champion: the champion's figure (None: none or not finite).
        challenger: the challenger's figure.
        delta: ``challenger - champion``.
        verdict: ``better``, ``worse``, ``tie`` or ``n/a`` (the gate's rules).
        images: test images behind the figures, when known.
        tail_attributes: attributes in the tail set (tail metrics only), when known.
        positives: test positives behind a recall figure, when known.
        ci_low: low end of the 95 % paired bootstrap interval of ``delta``, when computed.
        ci_high: high end of that interval.
    """

    metric: str
    champion: float | None
    challenger: float
    delta: float | None
    verdict: Verdict
    images: int | None = None
    tail_attributes: int | None = None
    positives: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class Decision:
    """The gate's answer: whether to promote, why, and the comparison table.

    Attributes:
        promote: whether the challenger becomes champion.
        reason: why, in words.
        table: one row per gated metric.
        basis: what the champion's figures are: ``paired`` (the champion scored now on
            the challenger's test split), ``recorded`` (its metrics as registered, from
            another test split), ``first`` (no champion) or ``incomparable`` (it could not
            be scored on this split).
    """

    promote: bool
    reason: str
    table: list[GateRow] = field(default_factory=list)
    basis: str = "recorded"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for tags, artifacts and the step summary)."""
        return {
            "promote": self.promote,
            "reason": self.reason,
            "basis": self.basis,
            "table": [asdict(r) for r in self.table],
        }


def is_finite_metric(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a finite real number (``None``, NaN, inf, text and bools are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value))


def non_finite_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """The metrics that are numbers but not finite (NaN, inf): a diverged or broken evaluation.

    ``None`` (``null`` in ``metrics.json``) is an undefined metric, e.g. a group without
    positives in the test split, and is not reported here.
    """
    return [
        name for name, value in metrics.items() if value is not None and not is_finite_metric(value)
    ]


def validate_gated_metrics(
    metrics: Mapping[str, Any], gate_metrics: Sequence[str], source: str = "challenger metrics"
) -> dict[str, float]:
    """Return the gated metrics as floats, or refuse when any is missing or non-finite.

    Args:
        metrics: the challenger's flat metrics (``evaluate``'s ``metrics.json["metrics"]``).
        gate_metrics: names of the gated metrics.
        source: where the metrics came from, named in the error.

    Returns:
        ``{name: float}`` for every gated metric.

    Raises:
        ValueError: naming each missing or non-finite metric, the source and the fix.
    """
    if not gate_metrics:
        raise ValueError(
            "register.gate_metrics is empty. Fix: gate on at least one metric, e.g. "
            "attr_recall@3/all"
        )
    bad = []
    for name in gate_metrics:
        if name not in metrics:
            bad.append(f"{name} (missing)")
        elif not is_finite_metric(metrics[name]):
            bad.append(f"{name} = {metrics[name]!r}")
    if bad:
        raise ValueError(
            f"{source}: gated metric(s) missing or not finite: {', '.join(bad)}. A model "
            "whose evaluation is incomplete or diverged is not registered. Fix: re-run "
            "evaluate on a test split that has these metrics (tail metrics need tail "
            "attributes with positives), or change register.gate_metrics"
        )
    return {name: float(metrics[name]) for name in gate_metrics}


def decide_promotion(
    challenger: Mapping[str, float | None],
    champion: Mapping[str, float | None] | None,
    gate_metrics: Sequence[str],
    tolerance: float,
    tie_rule: Literal["promote", "keep"] = "promote",
) -> Decision:
    """Decide whether the challenger becomes champion (rules in the module docstring).

    Args:
        challenger: the new model's metrics.
        champion: the current champion's metrics, or None when there is none.
        gate_metrics: metric names to compare (all higher-is-better).
        tolerance: allowed absolute difference that still counts as a tie (>= 0).
        tie_rule: ``"promote"`` (fresher data wins) or ``"keep"`` when all tie.

    Returns:
        The :class:`Decision` with one :class:`GateRow` per gated metric.

    Raises:
        ValueError: a gated challenger metric is missing/non-finite, or a bad
            ``tolerance``/``tie_rule``.
    """
    if not is_finite_metric(tolerance) or tolerance < 0:
        raise ValueError(f"register.tolerance = {tolerance!r}: must be a number >= 0")
    if tie_rule not in ("promote", "keep"):
        raise ValueError(f"register.tie_rule = {tie_rule!r}: must be 'promote' or 'keep'")
    ours = validate_gated_metrics(challenger, gate_metrics)
    if champion is None:
        rows = [GateRow(m, None, v, None, "n/a") for m, v in ours.items()]
        return Decision(True, "no champion yet: the first model is promoted", rows, "first")

    rows = []
    for name, value in ours.items():
        theirs = champion.get(name)
        if not is_finite_metric(theirs):
            rows.append(GateRow(name, None, value, None, "n/a"))
            continue
        theirs = float(theirs)
        delta = value - theirs
        if delta > tolerance + _EPS:
            verdict: Verdict = "better"
        elif delta < -tolerance - _EPS:
            verdict = "worse"
        else:
            verdict = "tie"
        rows.append(GateRow(name, theirs, value, delta, verdict))

    worse = [r for r in rows if r.verdict == "worse"]
    better = [r for r in rows if r.verdict == "better"]
    if worse:
        listed = ", ".join(f"{r.metric} {r.delta:+.4f}" for r in worse)
        return Decision(
            False, f"champion kept: challenger worse by more than {tolerance} on {listed}", rows
        )
    if better:
        listed = ", ".join(f"{r.metric} {r.delta:+.4f}" for r in better)
        return Decision(
            True,
            f"promoted: better by more than {tolerance} on {listed}, no gated metric worse",
            rows,
        )
    if tie_rule == "promote":
        reason = (
            f"promoted on a tie: every gated metric within {tolerance} of the champion and "
            "tie_rule=promote (the model trained on fresher data wins)"
        )
        return Decision(True, reason, rows)
    reason = f"champion kept on a tie: every gated metric within {tolerance} and tie_rule=keep"
    return Decision(False, reason, rows)


@dataclass(frozen=True)
class Evidence:
    """What stands behind one row's figures (shown and recorded, not used by the rules).

    Attributes:
        images: test images.
        tail_attributes: attributes in the tail set (shown for tail metrics).
        positives: test positives behind a recall.
        interval: the 95 % paired bootstrap interval of ``challenger - champion``.
    """

    images: int | None = None
    tail_attributes: int | None = None
    positives: int | None = None
    interval: tuple[float, float] | None = None


def with_evidence(decision: Decision, evidence: Mapping[str, Evidence]) -> Decision:
    """The same decision (promote, reason, verdicts unchanged), rows carrying ``evidence``."""
    rows = []
    for row in decision.table:
        ev = evidence.get(row.metric)
        if ev is None:
            rows.append(row)
            continue
        low, high = (
            ev.interval if ev.interval is not None and row.delta is not None else (None, None)
        )
        rows.append(
            replace(
                row,
                images=ev.images,
                tail_attributes=ev.tail_attributes if row.metric.endswith("/tail") else None,
                positives=ev.positives,
                ci_low=low,
                ci_high=high,
            )
        )
    return replace(decision, table=rows)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _n(row: GateRow) -> str:
    parts = []
    if row.images is not None:
        parts.append(f"{row.images} images")
    if row.tail_attributes is not None:
        parts.append(f"{row.tail_attributes} tail attributes")
    if row.positives is not None:
        parts.append(f"{row.positives} positives")
    return ", ".join(parts) or "-"


def render_markdown(decision: Decision, champion_label: str = "champion") -> str:
    """Render the decision as a Markdown table plus the reason.

    Columns: the metric, both figures, their difference, its 95 % paired bootstrap
    interval (``-`` when not computed), ``n`` (test images; tail attributes for a tail
    metric; positives for a recall) and the verdict.

    Args:
        decision: the gate's decision.
        champion_label: column title for the champion (e.g. ``"champion (v3)"``).

    Returns:
        Markdown text.
    """
    lines = [
        f"| metric | {champion_label} | challenger | delta | 95% CI of delta | n | verdict |",
        "| --- | ---: | ---: | ---: | :---: | --- | --- |",
    ]
    for r in decision.table:
        interval = (
            f"[{_fmt(r.ci_low, signed=True)}, {_fmt(r.ci_high, signed=True)}]"
            if r.ci_low is not None and r.ci_high is not None
            else "-"
        )
        lines.append(
            f"| {r.metric} | {_fmt(r.champion)} | {_fmt(r.challenger)} | "
            f"{_fmt(r.delta, signed=True)} | {interval} | {_n(r)} | {r.verdict} |"
        )
    verdict = "PROMOTE" if decision.promote else "KEEP CHAMPION"
    lines += ["", f"**{verdict}**: {decision.reason}"]
    return "\n".join(lines) + "\n"
