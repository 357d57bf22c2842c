"""Tests for the MR-GAN networks (docs/method.md section 4)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fashion_attr.gan.networks import (
    MRDiscriminator,
    MRGANSpec,
    MRGenerator,
    build_gan,
    make_condition,
)


def _inputs(spec: MRGANSpec, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, spec.z_dim, generator=g)
    cond = (torch.rand(batch, spec.cond_dim, generator=g) > 0.5).float()
    return z, cond


def _seeded_gan(spec: MRGANSpec, seed: int = 0) -> tuple[MRGenerator, MRDiscriminator]:
    torch.manual_seed(seed)
    return build_gan(spec)


# ----------------------------------------------------------------------------- spec


def test_paper_channel_schedule() -> None:
    spec = MRGANSpec.paper()
    assert spec.levels == (7, 14, 28, 56, 112, 224)
    # 32 at 224, doubling as the side halves, capped at 512 (docs/method.md sec. 4).
    assert spec.channels == (512, 512, 256, 128, 64, 32)
    assert spec.cond_dim == 1050
    assert spec.num_levels == 6


def test_mnist_and_tiny_channel_schedule() -> None:
    mnist = MRGANSpec.mnist()
    assert mnist.levels == (7, 14, 28)
    assert mnist.channels == (256, 128, 64)
    assert (mnist.out_channels, mnist.num_attributes, mnist.cond_dim) == (1, 0, 10)
    tiny = MRGANSpec.tiny()
    assert tiny.levels == (4, 8, 16, 32)
    assert tiny.channels == (64, 64, 32, 16)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"image_size": 100, "base_size": 7}, "image_size"),
        ({"image_size": 21, "base_size": 7}, "base_size"),  # 21 / 7 = 3 is not a power of 2
        ({"z_dim": 0}, "z_dim"),
        ({"num_categories": 0, "num_attributes": 0}, "conditional"),
        ({"num_attributes": -1}, "num_attributes"),
        ({"rgb_kernel": 2}, "rgb_kernel"),
    ],
)
def test_bad_spec_raises_naming_field(kwargs: dict, needle: str) -> None:
    base = {"num_categories": 3}
    with pytest.raises(ValueError, match=needle):
        MRGANSpec(**{**base, **kwargs})


def test_spec_dict_round_trip_and_unknown_key() -> None:
    spec = MRGANSpec.tiny(num_categories=5, num_attributes=2)
    data = spec.to_dict()
    assert data["num_categories"] == 5 and data["image_size"] == 32
    assert MRGANSpec.from_dict(data) == spec
    with pytest.raises(ValueError, match="bogus"):
        MRGANSpec.from_dict({**data, "bogus": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.z_dim = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- condition


def test_make_condition_layout() -> None:
    cat = torch.tensor([2, 0])
    attrs = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    c = make_condition(cat, attrs, num_categories=3)
    expected = torch.tensor([[0, 0, 1, 1, 0, 1], [1, 0, 0, 0, 1, 0]], dtype=torch.float32)
    assert torch.equal(c, expected)


def test_make_condition_category_only() -> None:
    cat = torch.tensor([1, 3])
    expected = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32)
    assert torch.equal(make_condition(cat, None, num_categories=4), expected)
    assert torch.equal(make_condition(cat, torch.zeros(2, 0), num_categories=4), expected)


def test_make_condition_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        make_condition(torch.tensor([3]), None, num_categories=3)
    with pytest.raises(ValueError, match="attr_multi_hot"):
        make_condition(torch.tensor([0, 1]), torch.zeros(3, 2), num_categories=3)


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize(
    ("spec", "batch"),
    [(MRGANSpec.tiny(), 3), (MRGANSpec.mnist(), 3), (MRGANSpec.paper(), 1)],
    ids=["tiny", "mnist", "paper"],
)
def test_generator_emits_every_level(spec: MRGANSpec, batch: int) -> None:
    gen = MRGenerator(spec)
    z, cond = _inputs(spec, batch)
    with torch.no_grad():
        images = gen(z, cond)
    assert [tuple(im.shape) for im in images] == [
        (batch, spec.out_channels, s, s) for s in spec.levels
    ]
    for im in images:
        assert im.abs().max() <= 1.0
        assert torch.isfinite(im).all()


def test_generator_levels_refine_the_level_below() -> None:
    # rgb_l = torgb_l(h_l) + up2(rgb_{l-1}) (pre-tanh), image_l = tanh(rgb_l): rebuild the
    # composition from the to-RGB outputs with an explicit nearest-neighbour doubling.
    spec = MRGANSpec.tiny()
    gen, _ = _seeded_gan(spec)
    gen.eval()
    torgb_out: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: torgb_out.append(o)) for m in gen.to_rgb]
    z, cond = _inputs(spec)
    with torch.no_grad():
        images = gen(z, cond)
    for h in hooks:
        h.remove()
    pre = torgb_out[0]
    torch.testing.assert_close(images[0], torch.tanh(pre))
    for lvl in range(1, spec.num_levels):
        pre = torgb_out[lvl] + pre.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        torch.testing.assert_close(images[lvl], torch.tanh(pre))


def test_generator_rejects_bad_shapes() -> None:
    spec = MRGANSpec.tiny()
    gen = MRGenerator(spec)
    z, cond = _inputs(spec)
    with pytest.raises(ValueError, match="z_dim=32"):
        gen(z[:, :5], cond)
    with pytest.raises(ValueError, match="cond_dim=12"):
        gen(z, cond[:, :5])
    with pytest.raises(ValueError, match="perturb_sigma"):
        gen(z, cond, perturb_sigma=-1.0)


def test_projection_weight_and_noise_channels() -> None:
    spec = MRGANSpec.tiny()  # z 32, cond 4 + 8, ch_0 64, base 4
    gen = MRGenerator(spec)
    assert isinstance(gen.projection_weight, torch.nn.Parameter)
    assert tuple(gen.projection_weight.shape) == (44, 64, 4, 4)
    assert gen.noise_channels == slice(0, 32)
    paper = MRGenerator(MRGANSpec.paper())
    assert tuple(paper.projection_weight.shape) == (128 + 1050, 512, 7, 7)
    # The slice really is the noise part: with those filters zeroed, z no longer matters.
    gen.eval()
    with torch.no_grad():
        gen.projection_weight[gen.noise_channels] = 0.0
        _, cond = _inputs(spec)
        a = gen(torch.randn(3, 32), cond)[-1]
        b = gen(torch.randn(3, 32), cond)[-1]
    assert torch.equal(a, b)


def test_perturb_sigma_zero_is_exactly_clean_and_draws_no_noise() -> None:
    spec = MRGANSpec.tiny()
    gen, _ = _seeded_gan(spec)
    gen.eval()
    z, cond = _inputs(spec)
    with torch.no_grad():
        clean = gen(z, cond)
        state = torch.get_rng_state()
        zero = gen(z, cond, perturb_sigma=0.0)
        assert torch.equal(torch.get_rng_state(), state)  # no random op at all
    for a, b in zip(clean, zero, strict=True):
        assert torch.equal(a, b)


def test_perturbation_is_added_to_projection_output() -> None:
    spec = MRGANSpec.tiny()
    gen, _ = _seeded_gan(spec)
    gen.eval()
    z, cond = _inputs(spec)
    seen: list[torch.Tensor] = []
    hook = gen.to_rgb[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        clean_proj = gen.project(torch.cat([z, cond], 1)[:, :, None, None])
        out_a = gen(z, cond, perturb_sigma=1.5, noise_generator=torch.Generator().manual_seed(7))
        out_b = gen(z, cond, perturb_sigma=1.5, noise_generator=torch.Generator().manual_seed(7))
        out_c = gen(z, cond, perturb_sigma=1.5, noise_generator=torch.Generator().manual_seed(8))
        clean = gen(z, cond)
    hook.remove()
    # Element-wise N(0, sigma^2) on the projection block output (docs/method.md sec. 3 step 2).
    noise = torch.randn(clean_proj.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(seen[0], clean_proj + 1.5 * noise)
    for a, b, c, d in zip(out_a, out_b, out_c, clean, strict=True):
        assert torch.equal(a, b)  # reproducible with a seeded generator
        assert not torch.allclose(a, c)  # another seed, other noise
        assert not torch.allclose(a, d)  # sigma > 0 changes the images


def test_every_parameter_gets_a_gradient() -> None:
    spec = MRGANSpec.tiny()
    gen, disc = _seeded_gan(spec)
    z, cond = _inputs(spec, batch=4)
    images = gen(z, cond)
    logits = disc(images, cond)
    assert logits.shape == (4, spec.num_levels)
    # Mean over levels, as the MR-GAN loss (docs/method.md sec. 4).
    logits.mean().backward()
    for name, p in [*gen.named_parameters(), *disc.named_parameters()]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- discriminator


def test_discriminator_scores_each_level_independently() -> None:
    spec = MRGANSpec.tiny()
    gen, disc = _seeded_gan(spec)
    gen.eval()
    disc.eval()
    z, cond = _inputs(spec)
    with torch.no_grad():
        images = gen(z, cond)
        base = disc(images, cond)
        changed = list(images)
        changed[1] = torch.rand_like(images[1])
        other = disc(changed, cond)
        # Column l is the score of level l alone.
        for lvl, im in enumerate(images):
            torch.testing.assert_close(base[:, lvl], disc.score_level(im, cond, lvl))
    assert base.shape == (3, 4)
    assert torch.equal(base[:, [0, 2, 3]], other[:, [0, 2, 3]])
    assert not torch.allclose(base[:, 1], other[:, 1])


def test_discriminator_projection_term_uses_condition() -> None:
    spec = MRGANSpec.tiny()
    _, disc = _seeded_gan(spec)
    disc.eval()
    images = [torch.rand(2, 3, s, s) * 2 - 1 for s in spec.levels]
    cond = torch.zeros(2, spec.cond_dim)
    cond2 = cond.clone()
    cond2[:, 0] = 1.0
    with torch.no_grad():
        h = disc.from_rgb[0](images[0]).flatten(1)
        # Zero condition: the projection term vanishes, logit = linear(h).
        torch.testing.assert_close(disc(images, cond)[:, 0], disc.linear(h).squeeze(1))
        # One-hot on column 0 adds <embed.weight[:, 0], h>.
        expected = disc.linear(h).squeeze(1) + h @ disc.embed.weight[:, 0]
        torch.testing.assert_close(disc(images, cond2)[:, 0], expected)


def test_discriminator_rejects_wrong_images() -> None:
    spec = MRGANSpec.tiny()
    disc = MRDiscriminator(spec)
    cond = torch.zeros(2, spec.cond_dim)
    good = [torch.zeros(2, 3, s, s) for s in spec.levels]
    with pytest.raises(ValueError, match=r"expected 4 images.*\(3, 32, 32\)"):
        disc(good[1:], cond)
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        disc([*good[:2], torch.zeros(2, 3, 15, 15), good[3]], cond)
    with pytest.raises(ValueError, match="expected 4 images"):
        disc([torch.zeros(2, 1, s, s) for s in spec.levels], cond)
    with pytest.raises(ValueError, match="cond_dim=12"):
        disc(good, cond[:, :3])


# ----------------------------------------------------------------------------- runtime modes


def test_channels_last_matches_contiguous() -> None:
    spec = MRGANSpec.tiny()
    gen, disc = _seeded_gan(spec)
    gen.eval()
    disc.eval()
    z, cond = _inputs(spec)
    with torch.no_grad():
        ref_images = gen(z, cond)
        ref_logits = disc(ref_images, cond)
        gen_cl = gen.to(memory_format=torch.channels_last)
        disc_cl = disc.to(memory_format=torch.channels_last)
        images = gen_cl(z, cond)
        logits = disc_cl([im.to(memory_format=torch.channels_last) for im in images], cond)
    for a, b in zip(images, ref_images, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_cpu_bf16_autocast() -> None:
    spec = MRGANSpec.tiny()
    gen, disc = _seeded_gan(spec)
    z, cond = _inputs(spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = gen(z, cond, perturb_sigma=1.0)
        logits = disc(images, cond)
    assert [im.shape[-1] for im in images] == list(spec.levels)
    assert logits.shape == (3, 4)
    assert torch.isfinite(logits.float()).all()
    logits.float().mean().backward()
    assert gen.projection_weight.grad is not None


def test_forward_compiles_without_graph_breaks() -> None:
    # fullgraph=True fails on any data-dependent Python control flow in forward.
    spec = MRGANSpec.tiny()
    gen, disc = _seeded_gan(spec)
    gen.eval()
    disc.eval()
    z, cond = _inputs(spec)
    gen_c = torch.compile(gen, backend="eager", fullgraph=True)
    disc_c = torch.compile(disc, backend="eager", fullgraph=True)
    with torch.no_grad():
        images = gen_c(z, cond)
        logits = disc_c(images, cond)
        ref = disc(gen(z, cond), cond)
        perturbed = gen_c(z, cond, perturb_sigma=2.0)
    torch.testing.assert_close(logits, ref)
    assert not torch.allclose(perturbed[-1], images[-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_channels_last_and_compile() -> None:
    spec = MRGANSpec.tiny()
    gen, disc = _seeded_gan(spec)
    gen = gen.cuda().to(memory_format=torch.channels_last)
    disc = disc.cuda().to(memory_format=torch.channels_last)
    z, cond = (t.cuda() for t in _inputs(spec, batch=8))
    gen_c = torch.compile(gen)
    disc_c = torch.compile(disc)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        images = gen_c(z, cond, perturb_sigma=1.5)
        logits = disc_c(images, cond)
    assert logits.shape == (8, spec.num_levels)
    logits.float().mean().backward()
    assert torch.isfinite(gen.projection_weight.grad).all()
    noise_gen = torch.Generator(device="cuda").manual_seed(3)
    with torch.no_grad():
        a = gen(z, cond, perturb_sigma=1.5, noise_generator=noise_gen.manual_seed(3))
        b = gen(z, cond, perturb_sigma=1.5, noise_generator=noise_gen.manual_seed(3))
    assert torch.equal(a[-1], b[-1])
