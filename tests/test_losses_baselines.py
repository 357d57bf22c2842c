"""Baseline losses (CE, FL, weighted FL, OHEM, weighted CE-A/B, ASL) on hand examples."""

import math

import pytest
import torch
from fashion_attr.losses import (
    LOSSES,
    REQUIRED_KWARGS,
    asymmetric_loss,
    bce_loss,
    focal_loss,
    get_loss,
    habp_loss,
    ohem_loss,
    wce_pos_weight,
    weighted_ce_a_loss,
    weighted_ce_b_loss,
    weighted_ce_loss,
    weighted_focal_loss,
)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(s: float, y: int, w: float = 1.0) -> float:
    return -w * math.log(sig(s)) if y == 1 else -math.log(1.0 - sig(s))


def ce(row: list[float], c: int) -> float:
    return -(row[c] - math.log(sum(math.exp(v) for v in row)))


S = [[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]]
Y = [[1, 0, 0], [1, 1, 0]]
K = [[True, True, False], [True, True, True]]
CS = [[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]]
CT = [0, 2]
KNOWN = [(i, j) for i in range(2) for j in range(3) if K[i][j]]


def tensors():
    return (
        torch.tensor(S),
        torch.tensor(Y, dtype=torch.float32),
        torch.tensor(K),
        torch.tensor(CS),
        torch.tensor(CT),
    )


def test_bce_mean_over_known_nodes_and_category():
    expected = (sum(bce(S[i][j], Y[i][j]) for i, j in KNOWN) + ce(CS[0], 0) + ce(CS[1], 2)) / 7
    assert bce_loss(*tensors()).item() == pytest.approx(expected, rel=1e-6)
    s, y, k, _, _ = tensors()
    attr_only = sum(bce(S[i][j], Y[i][j]) for i, j in KNOWN) / 5
    assert bce_loss(s, y, k).item() == pytest.approx(attr_only, rel=1e-6)


def test_focal_mean_without_normaliser():
    g = 1.2
    total = 0.0
    for i, j in KNOWN:
        p = sig(S[i][j]) if Y[i][j] else 1 - sig(S[i][j])
        total += (1 - p) ** g * -math.log(p)
    for i in range(2):
        p = math.exp(-ce(CS[i], CT[i]))
        total += (1 - p) ** g * -math.log(p)
    assert focal_loss(*tensors(), gamma=g).item() == pytest.approx(total / 7, rel=1e-6)
    # Same numerator as HABP, different normaliser.
    assert habp_loss(*tensors(), gamma=g).item() > focal_loss(*tensors(), gamma=g).item()


def test_weighted_focal_uses_exp_minus_prior_on_attributes_only():
    g = 1.2
    priors = [0.1, 0.5, 0.9]
    total = 0.0
    for i, j in KNOWN:
        p = sig(S[i][j]) if Y[i][j] else 1 - sig(S[i][j])
        total += math.exp(-priors[j]) * (1 - p) ** g * -math.log(p)
    for i in range(2):
        p = math.exp(-ce(CS[i], CT[i]))
        total += (1 - p) ** g * -math.log(p)  # category node weight 1
    got = weighted_focal_loss(*tensors(), priors=torch.tensor(priors), gamma=g)
    assert got.item() == pytest.approx(total / 7, rel=1e-6)
    with pytest.raises(ValueError, match="priors"):
        weighted_focal_loss(*tensors(), priors=torch.ones(4))


def _ohem_inputs(n: int):
    # y = 1, s = -0.1 k: node losses softplus(0.1 k), all distinct and increasing in k.
    s = torch.tensor([[-0.1 * k for k in range(n)]])
    return s, torch.ones(1, n)


@pytest.mark.parametrize(
    ("n", "ratio", "kept"), [(100, 0.17, 17), (100, 0.07, 7), (10, 0.3, 3), (7, 0.5, 4)]
)
def test_ohem_keeps_exactly_ceil_ratio_times_known(n, ratio, kept):
    s, y = _ohem_inputs(n)
    losses = sorted((math.log1p(math.exp(0.1 * k)) for k in range(n)), reverse=True)
    got = ohem_loss(s, y, ratio=ratio).item()
    assert got == pytest.approx(sum(losses[:kept]) / kept, rel=1e-6)
    # One node more or fewer gives a different value, so the count is checked.
    assert got != pytest.approx(sum(losses[: kept + 1]) / (kept + 1), rel=1e-5)
    assert got != pytest.approx(sum(losses[: kept - 1]) / (kept - 1), rel=1e-5)


def test_ohem_ignores_unknown_nodes_and_counts_category():
    s, y = _ohem_inputs(10)
    s = torch.cat([s, torch.tensor([[-50.0, -60.0]])], dim=1)  # two huge-loss nodes ...
    y = torch.cat([y, torch.ones(1, 2)], dim=1)
    known = torch.ones(1, 12, dtype=torch.bool)
    known[0, 10:] = False  # ... that are unknown
    losses = sorted((math.log1p(math.exp(0.1 * k)) for k in range(10)), reverse=True)
    # 10 known nodes, ratio 0.25 -> ceil(2.5) = 3 kept.
    assert ohem_loss(s, y, known, ratio=0.25).item() == pytest.approx(sum(losses[:3]) / 3)
    # Plus one category node with loss 10 + log(1 + e^-10): 11 known -> ceil(2.75) = 3.
    cs = torch.tensor([[0.0, 10.0]])
    ct = torch.tensor([0])
    lc = 10.0 + math.log1p(math.exp(-10.0))
    got = ohem_loss(s, y, known, cs, ct, ratio=0.25).item()
    assert got == pytest.approx((lc + losses[0] + losses[1]) / 3, rel=1e-6)
    assert ohem_loss(*tensors(), ratio=1.0).item() == pytest.approx(bce_loss(*tensors()).item())
    with pytest.raises(ValueError, match="ratio"):
        ohem_loss(s, y, ratio=0.0)


def test_wce_weights():
    pos = torch.tensor([10, 50, 0, 80])
    neg = torch.tensor([90, 50, 100, 20])
    w_a = wce_pos_weight("A", pos, neg)
    # log(9); log(1) = 0 -> floor 0.1; n_pos 0 -> clamped to 1: log(100); log(1/4) -> 0.1.
    assert w_a.tolist() == pytest.approx([math.log(9), 0.1, math.log(100), 0.1], rel=1e-6)
    w_b = wce_pos_weight("B", pos, neg)
    assert w_b.tolist() == pytest.approx([260 / 140] * 4, rel=1e-6)
    with pytest.raises(ValueError, match="mode"):
        wce_pos_weight("C", pos, neg)
    with pytest.raises(ValueError, match="neg_counts"):
        wce_pos_weight("A", pos, neg[:3])


def test_weighted_ce_losses_scale_positive_terms():
    pos = torch.tensor([10, 50, 20])
    neg = torch.tensor([90, 150, 20])
    wa = [math.log(9), math.log(3), 0.1]
    wb = 260 / 80
    cat = ce(CS[0], 0) + ce(CS[1], 2)
    exp_a = (sum(bce(S[i][j], Y[i][j], wa[j]) for i, j in KNOWN) + cat) / 7
    exp_b = (sum(bce(S[i][j], Y[i][j], wb) for i, j in KNOWN) + cat) / 7
    got_a = weighted_ce_a_loss(*tensors(), pos_counts=pos, neg_counts=neg)
    got_b = weighted_ce_b_loss(*tensors(), pos_counts=pos, neg_counts=neg)
    assert got_a.item() == pytest.approx(exp_a, rel=1e-6)
    assert got_b.item() == pytest.approx(exp_b, rel=1e-6)
    assert weighted_ce_loss(*tensors(), mode="B", pos_counts=pos, neg_counts=neg).item() == (
        pytest.approx(exp_b, rel=1e-6)
    )


def test_asymmetric_loss_hand_example():
    s = torch.tensor([[2.0, -1.0, -4.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    cs = torch.tensor([[0.5, -0.5]])
    ct = torch.tensor([1])
    l_pos = -math.log(sig(2.0))  # gamma_pos = 0
    p_m = sig(-1.0) - 0.05  # 0.2189
    l_neg = -(p_m**4) * math.log(1 - p_m)
    # sigma(-4) = 0.018 < clip: shifted probability 0, loss exactly 0.
    expected = (l_pos + l_neg + 0.0 + ce([0.5, -0.5], 1)) / 4
    got = asymmetric_loss(s, y, None, cs, ct)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # With clip = 0 and gamma_neg = 0 ASL is plain BCE.
    plain = asymmetric_loss(s, y, gamma_neg=0.0, clip=0.0).item()
    assert plain == pytest.approx(bce_loss(s, y).item(), rel=1e-6)


def test_registry_and_common_call_shape():
    assert set(LOSSES) == {"ce", "focal", "weighted_focal", "ohem", "wce_a", "wce_b", "asl", "habp"}
    assert set(REQUIRED_KWARGS) == set(LOSSES)
    extra = {
        "priors": torch.tensor([0.2, 0.3, 0.4]),
        "pos_counts": torch.tensor([1, 2, 3]),
        "neg_counts": torch.tensor([9, 8, 7]),
    }
    s, y, k, cs, ct = tensors()
    for name, fn in LOSSES.items():
        kw = {key: extra[key] for key in REQUIRED_KWARGS[name]}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full = fn(s.bfloat16(), y, k, cs.bfloat16(), ct, **kw)
        assert full.dtype == torch.float32 and full.dim() == 0, name
        attr_only = fn(s, y, k, **kw)
        assert torch.isfinite(attr_only), name
        kw0 = {key: v[:0] for key, v in kw.items()}
        cat_only = fn(torch.zeros(2, 0), torch.zeros(2, 0), None, cs, ct, **kw0)
        assert torch.isfinite(cat_only), name
    with pytest.raises(ValueError, match="allowed values"):
        get_loss("hinge")
