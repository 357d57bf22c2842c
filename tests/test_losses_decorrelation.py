"""Decorrelation loss of the noise projection (eq. 7-8)."""

import math

import pytest
import torch
from fashion_attr.losses import decorrelation_loss, mean_squared_cosine


def test_orthogonal_filters_give_zero():
    # N_Z = 4 noise dims, N_F = 3 channels, 2x2 kernels: filter j = j-th basis vector of R^4.
    basis = torch.eye(4).reshape(4, 2, 2)
    w = basis.unsqueeze(1).repeat(1, 3, 1, 1)  # (N_in=4, N_F=3, 2, 2)
    assert decorrelation_loss(w).item() == pytest.approx(0.0, abs=1e-7)
    assert mean_squared_cosine(w).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("n_z", [2, 5])
def test_identical_filters_give_nz_minus_one_over_nz(n_z):
    torch.manual_seed(0)
    per_channel = torch.randn(1, 6, 3, 3)
    w = per_channel.repeat(n_z, 1, 1, 1)
    w[0] = -w[0]  # anti-parallel counts as correlated too (cos^2 = 1)
    assert decorrelation_loss(w).item() == pytest.approx((n_z - 1) / n_z, rel=1e-5)
    assert mean_squared_cosine(w).item() == pytest.approx(1.0, rel=1e-5)


def test_hand_example_two_filters():
    # One channel, two noise filters [1,0,0,0] and [1,1,0,0]: cos = 1/sqrt(2), cos^2 = 0.5.
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    assert math.isclose(decorrelation_loss(w).item(), 2 * 0.5 / (1 * 2**2), rel_tol=1e-6)
    assert math.isclose(mean_squared_cosine(w).item(), 0.5, rel_tol=1e-6)


def test_only_noise_channels_count():
    torch.manual_seed(1)
    z_dim, cond_dim = 6, 4
    w = torch.randn(z_dim + cond_dim, 8, 4, 4, requires_grad=True)
    noise = slice(0, z_dim)
    base = decorrelation_loss(w, noise).item()
    w2 = w.detach().clone()
    w2[z_dim:] = torch.randn(cond_dim, 8, 4, 4) * 10
    assert decorrelation_loss(w2, noise).item() == pytest.approx(base, rel=1e-6)
    # Including the condition channels changes the value.
    assert decorrelation_loss(w2).item() != pytest.approx(base, rel=1e-3)
    decorrelation_loss(w, noise).backward()
    assert torch.count_nonzero(w.grad[z_dim:]) == 0
    assert torch.count_nonzero(w.grad[:z_dim]) > 0


def test_gradient_descends_and_zero_filter_is_safe():
    torch.manual_seed(2)
    layer = torch.nn.ConvTranspose2d(5, 7, kernel_size=4)
    with torch.no_grad():
        layer.weight[2, 3].zero_()
    loss = decorrelation_loss(layer.weight)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    with torch.no_grad():
        layer.weight -= 1.0 * layer.weight.grad
    assert decorrelation_loss(layer.weight).item() < loss.item()


def test_bad_inputs():
    with pytest.raises(ValueError, match="weight"):
        decorrelation_loss(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="noise_channels"):
        decorrelation_loss(torch.zeros(4, 2, 3, 3), slice(4, 8))


def test_sum_reduction_is_the_mean_times_nf_nz_squared_and_reaches_train_gan():
    """The reading under which the paper's 2e-6 acts: the unnormalised sum of eq. 7-8."""
    from fashion_attr.config import ConfigError, GanConfig, load_config

    torch.manual_seed(1)
    w = torch.randn(5, 3, 3, 3)  # N_Z = 5 noise dims, N_F = 3 channels
    mean = decorrelation_loss(w)
    assert decorrelation_loss(w, reduction="sum").item() == pytest.approx(
        mean.item() * 3 * 5**2, rel=1e-6
    )
    with pytest.raises(ValueError, match="'reduction' is 'max'"):
        decorrelation_loss(w, reduction="max")
    cfg = load_config(GanConfig, preset="paper", overrides=["dc_reduction=sum"])
    assert cfg.dc_reduction == "sum"
    with pytest.raises(ConfigError, match="dc_reduction"):
        load_config(GanConfig, preset="tiny", overrides=["dc_reduction=max"])
