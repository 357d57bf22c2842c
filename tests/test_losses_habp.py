"""HABP (eq. 1-4) against hand-computed values."""

import math

import pytest
import torch
from fashion_attr.losses import (
    category_hardness,
    focal_loss,
    habp_loss,
    habp_terms,
    node_hardness,
)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def p_true(s: float, y: int) -> float:
    """Probability of the true label of a binary node."""
    return sig(s) if y == 1 else 1.0 - sig(s)


def softmax_p(row: list[float], c: int) -> float:
    z = sum(math.exp(v) for v in row)
    return math.exp(row[c]) / z


# A 2 x 3 batch with one unknown label (row 0, attribute 2) and a 3-way category head.
S = [[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]]
Y = [[1, 0, 0], [1, 1, 0]]
K = [[True, True, False], [True, True, True]]
CS = [[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]]
CT = [0, 2]


def tensors():
    return (
        torch.tensor(S),
        torch.tensor(Y, dtype=torch.float32),
        torch.tensor(K),
        torch.tensor(CS),
        torch.tensor(CT),
    )


def test_gamma_zero_is_plain_mean_bce_with_category_node():
    s, y, k, cs, ct = tensors()
    losses = [-math.log(p_true(S[i][j], Y[i][j])) for i in range(2) for j in range(3) if K[i][j]]
    losses += [-math.log(softmax_p(CS[i], CT[i])) for i in range(2)]
    expected = sum(losses) / 7  # 5 known attribute nodes + 2 category nodes
    got = habp_loss(s, y, k, cs, ct, gamma=0.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_hand_computed_2x3_with_unknown_label():
    s, y, k, _, _ = tensors()
    gamma = 1.2
    num = den = 0.0
    for i in range(2):
        for j in range(3):
            if not K[i][j]:
                continue
            p = p_true(S[i][j], Y[i][j])
            h = (1.0 - p) ** gamma
            num += h * -math.log(p)
            den += h
    assert habp_loss(s, y, k, gamma=gamma).item() == pytest.approx(num / den, rel=1e-6)
    # Value stored under the unknown label must not matter.
    y2 = y.clone()
    y2[0, 2] = 1.0
    assert habp_loss(s, y2, k, gamma=gamma).item() == pytest.approx(num / den, rel=1e-6)
    # Dropping the mask changes the value (the test can fail).
    assert habp_loss(s, y, None, gamma=gamma).item() != pytest.approx(num / den, rel=1e-4)


def test_hand_computed_with_category_node_and_terms():
    s, y, k, cs, ct = tensors()
    gamma = 1.2
    num = den = 0.0
    for i in range(2):
        for j in range(3):
            if K[i][j]:
                p = p_true(S[i][j], Y[i][j])
                num += (1 - p) ** gamma * -math.log(p)
                den += (1 - p) ** gamma
        pc = softmax_p(CS[i], CT[i])
        num += (1 - pc) ** gamma * -math.log(pc)
        den += (1 - pc) ** gamma
    w_sum, h_sum = habp_terms(s, y, k, cs, ct, gamma=gamma)
    assert w_sum.item() == pytest.approx(num, rel=1e-6)
    assert h_sum.item() == pytest.approx(den, rel=1e-6)
    assert habp_loss(s, y, k, cs, ct, gamma=gamma).item() == pytest.approx(num / den, rel=1e-6)


def test_pos_weight_scales_positive_term():
    s, y, k, _, _ = tensors()
    w = 2.5
    losses = []
    for i in range(2):
        for j in range(3):
            if K[i][j]:
                if Y[i][j] == 1:
                    losses.append(-w * math.log(sig(S[i][j])))
                else:
                    losses.append(-math.log(1 - sig(S[i][j])))
    got = habp_loss(s, y, k, gamma=0.0, pos_weight=w)
    assert got.item() == pytest.approx(sum(losses) / 5, rel=1e-6)
    got_vec = habp_loss(s, y, k, gamma=0.0, pos_weight=torch.full((3,), w))
    assert got_vec.item() == pytest.approx(sum(losses) / 5, rel=1e-6)


def test_one_hard_node_keeps_order_one_while_focal_shrinks():
    m, n = 100, 10
    s = torch.full((m, n), 8.0)
    y = torch.ones(m, n)
    s[17, 3] = -3.0  # the only hard node
    gamma = 1.2
    l_hard = -math.log(sig(-3.0))  # 3.0486
    h_hard = (1 - sig(-3.0)) ** gamma
    habp = habp_loss(s, y, gamma=gamma).item()
    focal = focal_loss(s, y, gamma=gamma).item()
    assert habp > 0.5 * l_hard
    # Focal: the hard node's h * L divided by the node count (easy nodes add ~2e-5).
    assert focal * m * n == pytest.approx(h_hard * l_hard, rel=0.02)
    assert habp / focal > 500


def test_gradient_does_not_flow_through_detached_weights():
    s, y, k, _, _ = tensors()
    gamma = 1.2
    s.requires_grad_(True)
    habp_loss(s, y, k, gamma=gamma).backward()
    hs = {}
    for i in range(2):
        for j in range(3):
            if K[i][j]:
                hs[i, j] = (1 - p_true(S[i][j], Y[i][j])) ** gamma
    den = sum(hs.values())
    for i in range(2):
        for j in range(3):
            # dL/ds of BCE is sigma(s) - y; h is a constant weight.
            expected = hs[i, j] * (sig(S[i][j]) - Y[i][j]) / den if K[i][j] else 0.0
            assert s.grad[i, j].item() == pytest.approx(expected, abs=1e-6)


def test_gradient_flows_through_weights_when_not_detached():
    s, y, k, _, _ = tensors()
    gamma = 1.2
    s.requires_grad_(True)
    habp_loss(s, y, k, gamma=gamma, detach_weights=False).backward()
    nodes = [(i, j) for i in range(2) for j in range(3) if K[i][j]]
    h = {}
    loss = {}
    for i, j in nodes:
        p = p_true(S[i][j], Y[i][j])
        h[i, j] = (1 - p) ** gamma
        loss[i, j] = -math.log(p)
    num = sum(h[q] * loss[q] for q in nodes)
    den = sum(h[q] for q in nodes)
    for i, j in nodes:
        p = p_true(S[i][j], Y[i][j])
        # d h / d s = gamma * h * P * (1 - 2y); d L / d s = sigma(s) - y.
        dh = gamma * h[i, j] * p * (1 - 2 * Y[i][j])
        dl = sig(S[i][j]) - Y[i][j]
        expected = ((dh * loss[i, j] + h[i, j] * dl) * den - num * dh) / den**2
        assert s.grad[i, j].item() == pytest.approx(expected, abs=1e-6)
    assert s.grad[0, 2].item() == 0.0


def test_fp32_under_bfloat16_autocast():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(6, 8)
    y = (torch.rand(6, 4) > 0.5).float()
    cat = torch.nn.Linear(8, 3)
    ct = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = layer(x)
        cs = cat(x)
        assert s.dtype == torch.bfloat16
        got = habp_loss(s, y, None, cs, ct)
    assert got.dtype == torch.float32
    ref = habp_loss(s.float(), y, None, cs.float(), ct)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_hardness_is_stable_and_gamma_zero_is_exactly_one():
    s = torch.tensor([[30.0, -100.0, 0.0]])
    y = torch.tensor([[1.0, 1.0, 0.0]])
    h = node_hardness(s, y, 1.2)
    # 1 - sigma(30) = sigma(-30), which a naive 1 - P rounds to 0 in float32.
    assert h[0, 0].item() == pytest.approx(sig(-30.0) ** 1.2, rel=1e-4)
    assert h[0, 0].item() > 0.0
    assert h[0, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert h[0, 2].item() == pytest.approx(0.5**1.2, rel=1e-6)
    assert torch.equal(node_hardness(s, y, 0.0), torch.ones(1, 3))

    cs = torch.tensor([[50.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ct = torch.tensor([0, 1])
    hc = category_hardness(cs, ct, 1.2)
    # 1 - p = 2 e^-50 / (1 + 2 e^-50): log computed exactly.
    expected = math.exp(1.2 * (math.log(2.0) - 50.0 - math.log1p(2 * math.exp(-50.0))))
    assert hc[0].item() == pytest.approx(expected, rel=1e-4)
    assert hc[1].item() == pytest.approx((2 / 3) ** 1.2, rel=1e-6)
    assert torch.equal(category_hardness(cs, ct, 0.0), torch.ones(2))


def test_category_only_task():
    cs = torch.tensor(CS)
    ct = torch.tensor(CT)
    expected = sum(-math.log(softmax_p(CS[i], CT[i])) for i in range(2)) / 2
    assert habp_loss(None, None, None, cs, ct, gamma=0.0).item() == pytest.approx(expected)
    empty = torch.zeros(2, 0)
    assert habp_loss(empty, empty, None, cs, ct, gamma=0.0).item() == pytest.approx(expected)


def test_bad_inputs_name_the_argument():
    s, y, k, cs, ct = tensors()
    with pytest.raises(ValueError, match="attr_targets"):
        habp_loss(s, y[:, :2], k)
    with pytest.raises(ValueError, match="known"):
        habp_loss(s, y, k.float())
    with pytest.raises(ValueError, match="cat_targets"):
        habp_loss(s, y, k, cs, ct.float())
    with pytest.raises(ValueError, match="gamma"):
        habp_loss(s, y, k, gamma=-1.0)
    with pytest.raises(ValueError, match="pos_weight"):
        habp_loss(s, y, k, pos_weight=torch.ones(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_do_not_sync_the_host_on_cuda():
    from fashion_attr.losses import LOSSES, REQUIRED_KWARGS

    s, y, k, cs, ct = (t.cuda() for t in tensors())
    extra = {
        "priors": torch.tensor([0.2, 0.3, 0.4], device="cuda"),
        "pos_counts": torch.tensor([1, 2, 3], device="cuda"),
        "neg_counts": torch.tensor([9, 8, 7], device="cuda"),
    }
    cpu_ref = {}
    for name, fn in LOSSES.items():
        kw = {key: extra[key].cpu() for key in REQUIRED_KWARGS[name]}
        cpu_ref[name] = fn(*tensors(), **kw).item()
    torch.cuda.synchronize()
    got = {}
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, fn in LOSSES.items():
            kw = {key: extra[key] for key in REQUIRED_KWARGS[name]}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                got[name] = fn(s, y, k, cs, ct, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, value in got.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(cpu_ref[name], rel=1e-5), name
