"""Deactivation losses (eq. 5, 6) and the hardness-weighted synthetic average (eq. 10).

The paper's eq. 5 is the multi-class hinge, eq. 6 the binary ``s ** 2``. The multi-class
loss centres the logits by default (docs/method.md); ``centered=False`` is the literal eq. 5.
"""

import pytest
import torch
from fashion_attr.losses import (
    deact_binary_loss,
    deact_multiclass_loss,
    synthetic_complementary_loss,
)


def test_binary_is_logit_squared():
    s = torch.tensor([[1.5, -2.0, 0.0]])
    assert deact_binary_loss(s).tolist() == [[2.25, 4.0, 0.0]]
    assert deact_binary_loss(s.bfloat16()).dtype == torch.float32


def test_multiclass_hinge_with_threshold():
    s = torch.tensor([[-5.0, -4.6, 0.0, 1.0]])
    # The literal eq. 5: relu(s - (-4.6)) = [0, 0, 4.6, 5.6]; squares 21.16 + 31.36, / C = 4.
    got = deact_multiclass_loss(s, centered=False)
    assert got.shape == (1,)
    assert got.item() == pytest.approx((4.6**2 + 5.6**2) / 4, rel=1e-6)
    # A different T: relu(s - 0) = [0, 0, 0, 1] -> 1 / 4.
    assert deact_multiclass_loss(s, threshold=0.0, centered=False).item() == pytest.approx(0.25)
    # All logits below T cost nothing.
    assert deact_multiclass_loss(torch.full((2, 3), -6.0), centered=False).tolist() == [0.0, 0.0]
    # The default centres first: the same logits cost as their centred values do.
    centred = s - s.mean(dim=1, keepdim=True)
    assert deact_multiclass_loss(s).item() == pytest.approx(
        deact_multiclass_loss(centred, centered=False).item(), rel=1e-6
    )


def test_raw_logits_are_met_by_a_common_shift_centered_are_not():
    """Eq. 5 on raw logits is satisfied by lowering every logit (CE on real images does not
    see that shift); the centred form gives the same value after any common shift."""
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    shifted = s - 20.0
    assert deact_multiclass_loss(shifted, centered=False).tolist() == [0.0, 0.0]
    assert torch.allclose(
        deact_multiclass_loss(s, centered=True), deact_multiclass_loss(shifted, centered=True)
    )
    # By hand, row 0: centred [1.5, -1.5, 0.0] -> relu(+4.6) = [6.1, 3.1, 4.6]; squares / 3.
    assert deact_multiclass_loss(s, centered=True)[0].item() == pytest.approx(
        (6.1**2 + 3.1**2 + 4.6**2) / 3, rel=1e-6
    )


def test_centered_is_smallest_at_the_uniform_prediction():
    torch.manual_seed(0)
    uniform = deact_multiclass_loss(torch.zeros(1, 10), centered=True)
    assert uniform.item() == pytest.approx(4.6**2)
    spread = deact_multiclass_loss(torch.randn(256, 10) * 3, centered=True)
    assert bool((spread > uniform).all())
    # Its gradient pulls a confident logit down relative to the others.
    s = torch.tensor([[5.0, 0.0, 0.0]], requires_grad=True)
    deact_multiclass_loss(s, centered=True).sum().backward()
    assert s.grad[0, 0] > 0 and s.grad[0, 1] < 0
    # Through eq. 10.
    cs = torch.tensor([[0.0, -5.0]])
    w = torch.tensor([2.0])
    assert synthetic_complementary_loss(None, None, cs, w, centered=True).item() == (
        pytest.approx(((2.5 + 4.6) ** 2 + (-2.5 + 4.6) ** 2) / 2, rel=1e-6)
    )


def test_weighted_average_eq10_by_hand():
    s = torch.tensor([[1.0, -2.0], [0.5, 0.0]], requires_grad=True)
    w = torch.tensor([[0.2, 0.4], [1.0, 0.5]], requires_grad=True)
    cs = torch.tensor([[0.0, -5.0], [-4.0, -10.0]])
    wc = torch.tensor([0.3, 0.6])
    # Attribute nodes: 0.2*1 + 0.4*4 + 1.0*0.25 + 0.5*0 = 2.05.
    # Category nodes: row 0: relu([4.6, -0.4])^2 / 2 = 10.58; row 1: relu([0.6, -5.4])^2/2 = 0.18.
    num = 2.05 + 0.3 * 10.58 + 0.6 * 0.18
    den = 0.2 + 0.4 + 1.0 + 0.5 + 0.3 + 0.6
    got = synthetic_complementary_loss(s, w, cs, wc, centered=False)
    assert got.item() == pytest.approx(num / den, rel=1e-6)
    got.backward()
    assert w.grad is None  # weights are constants
    expected_grad = 2 * s.detach() * w.detach() / den
    assert torch.allclose(s.grad, expected_grad, atol=1e-6)


def test_category_only_and_attribute_only():
    cs = torch.tensor([[0.0, -5.0]])
    literal = synthetic_complementary_loss(None, None, cs, torch.tensor([2.0]), centered=False)
    assert literal.item() == pytest.approx(10.58, rel=1e-6)
    s = torch.tensor([[3.0, 1.0]])
    got = synthetic_complementary_loss(s, torch.tensor([[1.0, 3.0]]))
    assert got.item() == pytest.approx((9.0 + 3.0) / 4.0)


def test_errors_name_the_argument():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="attr_weights"):
        synthetic_complementary_loss(s, None)
    with pytest.raises(ValueError, match="cat_weights"):
        synthetic_complementary_loss(s, torch.ones(2, 3), torch.zeros(2, 4), torch.ones(3))
    with pytest.raises(ValueError, match="attr_logits"):
        deact_binary_loss(torch.zeros(3))


def test_centered_is_a_confidence_penalty_where_every_centred_logit_exceeds_t():
    """Audit: wherever all centred logits exceed T, centred eq. 5 is (1/C)||c||^2 + T^2, so
    T is a constant there, not a threshold (docs/method.md section 3.5)."""
    s = torch.tensor([[2.0, -1.0, 0.5, 0.3]])
    c = s - s.mean(dim=1, keepdim=True)
    expected = c.square().mean().item() + 4.6**2
    assert deact_multiclass_loss(s, form="centered").item() == pytest.approx(expected, rel=1e-6)
    assert deact_multiclass_loss(s, form="centered", threshold=-9.0).item() == pytest.approx(
        c.square().mean().item() + 81.0, rel=1e-6
    )


def test_log_softmax_form_is_zero_only_at_the_uniform_prediction():
    """Eq. 5 on log-probabilities: T is a log-probability ceiling, raised to log(1/C) where it
    is lower. Unclamped, T = -4.6 with C = 10 would cost (log 0.1 + 4.6)^2 = 5.28 at the
    uniform prediction but only 4.6^2 / 10 = 2.1 at a one-hot one: a reward for confidence."""
    uniform = torch.zeros(1, 10)
    one_hot = torch.tensor([[30.0] + [0.0] * 9])
    assert deact_multiclass_loss(uniform, form="log_softmax").item() == pytest.approx(0, abs=1e-9)
    confident = deact_multiclass_loss(one_hot, form="log_softmax").item()
    assert confident == pytest.approx(torch.log(torch.tensor(10.0)).item() ** 2 / 10, rel=1e-4)
    # Shift-invariant, like the centred form; T acts where e^T > 1/C (C = 200 here).
    s = torch.randn(4, 200)
    assert torch.allclose(
        deact_multiclass_loss(s, form="log_softmax"),
        deact_multiclass_loss(s + 7.0, form="log_softmax"),
        atol=1e-6,
    )
    logp = torch.log_softmax(s, dim=1)
    expected = torch.relu(logp + 4.6).square().mean(dim=1)
    assert torch.allclose(deact_multiclass_loss(s, form="log_softmax"), expected, atol=1e-6)
    # Its gradient lowers the most probable class.
    x = torch.tensor([[3.0, 0.0, 0.0]], requires_grad=True)
    deact_multiclass_loss(x, form="log_softmax").sum().backward()
    assert x.grad[0, 0] > 0 > x.grad[0, 1]


def test_form_is_checked_and_the_legacy_flag_maps_to_it():
    s = torch.tensor([[1.0, -2.0, 0.5]])
    assert torch.equal(
        deact_multiclass_loss(s, centered=False), deact_multiclass_loss(s, form="raw")
    )
    with pytest.raises(ValueError, match=r"'form' is 'softmax'.*centered, log_softmax, raw"):
        deact_multiclass_loss(s, form="softmax")
    with pytest.raises(ValueError, match="contradicts"):
        synthetic_complementary_loss(
            None, None, s, torch.ones(1), form="log_softmax", centered=True
        )


def _memory(num_categories: int = 3):
    from fashion_attr.hardness import HardLabelMemory

    return HardLabelMemory(0, num_categories)


def test_noise_control_needs_no_generator_and_matches_the_real_batch():
    from fashion_attr.classifier.deact import DeactLoss

    deact = DeactLoss(
        None,
        _memory(),
        sigma_p=2.0,
        threshold=-4.6,
        image_size=16,
        mean=(0.5,),
        std=(0.5,),
        in_channels=1,
        source="noise",
        form="log_softmax",
    )
    real = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.3 - 0.4
    batch = deact.synthesize(256, like=real)
    x = batch.images
    assert x.shape == (256, 1, 16, 16) and batch.cat_idx.shape == (256,)
    assert x.mean().item() == pytest.approx(-0.4, abs=0.02)
    assert x.std().item() == pytest.approx(0.3, abs=0.02)
    # Valid images: the normalised range of pixels in [0, 1] is [-1, 1] here.
    wide = deact.synthesize(64, like=real * 10).images
    assert wide.min().item() >= -1.0 and wide.max().item() <= 1.0
    assert deact.modules() == [] and deact.form == "log_softmax" and not deact.centered
    with pytest.raises(ValueError, match="needs a generator"):
        DeactLoss(None, _memory(), sigma_p=0, threshold=-4.6, image_size=8, mean=(0.5,), std=(0.5,))
    # A misspelled form or a contradicting legacy flag fails when the loss is built, not at
    # the first Deact step of a run.
    noise = {"source": "noise", "sigma_p": 0, "threshold": -4.6, "image_size": 8}
    with pytest.raises(ValueError, match="'form' is 'centred'; expected one of"):
        DeactLoss(None, _memory(), mean=(0.5,), std=(0.5,), form="centred", **noise)
    with pytest.raises(ValueError, match="contradicts"):
        DeactLoss(None, _memory(), mean=(0.5,), std=(0.5,), form="raw", centered=True, **noise)
    legacy = DeactLoss(None, _memory(), mean=(0.5,), std=(0.5,), centered=False, **noise)
    assert legacy.form == "raw"


def test_noise_source_from_config_loads_no_generator():
    from types import SimpleNamespace

    from fashion_attr.classifier.deact import deact_from_generator
    from fashion_attr.config import ClassifierConfig, ConfigError, load_config

    info = SimpleNamespace(
        num_attributes=2,
        num_categories=3,
        num_train=4,
        train_pos_counts=torch.tensor([2, 1]),
        train_category_counts=torch.tensor([2, 1, 1]),
    )
    cfg = load_config(ClassifierConfig, preset="tiny", overrides=["deact.source=noise"])
    deact = deact_from_generator(
        cfg, info, None, device=torch.device("cpu"), in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    assert deact is not None and deact.generator is None and deact.source == "noise"
    assert deact.synthesize(4).images.shape == (4, 3, 64, 64)
    with pytest.raises(ConfigError, match=r"deact\.source.*'generator' or 'noise'"):
        load_config(ClassifierConfig, preset="tiny", overrides=["deact.source=gan"])
