"""Hard-label memory: EMA update, pmfs, condition sampling, weights, state."""

import pytest
import torch
from fashion_attr.hardness import HardLabelMemory, default_positives_per_image
from fashion_attr.losses import category_hardness, node_hardness

NAN = float("nan")
H = [[0.2, 0.4, 0.9], [0.6, 0.1, 0.3], [0.8, NAN, 0.7]]
Y = [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
K = [[True, True, True], [True, True, True], [True, False, True]]
CH = [0.3, 0.5, 0.9]
CT = [2, 2, 0]


def batch():
    return (
        torch.tensor(H),
        torch.tensor(Y, dtype=torch.float32),
        torch.tensor(K),
        torch.tensor(CH),
        torch.tensor(CT),
    )


def test_ema_update_by_hand():
    mem = HardLabelMemory(3, 3)
    mem.update(*batch())
    s = mem.attr_scores  # column y holds S_j(y)
    # attr 0: y=1 rows 0,1 -> mean 0.4 -> 0.5*0.4 + 0.5*1 = 0.7; y=0 row 2 -> 0.9.
    assert s[0].tolist() == pytest.approx([0.9, 0.7])
    # attr 1: y=0 rows 0,1 -> mean 0.25 -> 0.625; the only y=1 node is unknown (its NaN
    # hardness is ignored), so S_1(1) is absent and stays 1.
    assert s[1].tolist() == pytest.approx([0.625, 1.0])
    # attr 2: y=0 rows 0..2 -> mean 0.6333 -> 0.81667; S_2(1) absent -> 1.
    assert s[2].tolist() == pytest.approx([0.5 * (1.9 / 3) + 0.5, 1.0])
    # categories: 2 -> mean(0.3, 0.5) = 0.4 -> 0.7; 0 -> 0.95; 1 absent -> 1.
    assert mem.cat_scores.tolist() == pytest.approx([0.95, 1.0, 0.7])
    assert int(mem.num_updates) == 1
    # A second step averages again with the stored value.
    mem.update(None, None, None, torch.tensor([0.1]), torch.tensor([2]))
    assert mem.cat_scores.tolist() == pytest.approx([0.95, 1.0, 0.5 * 0.1 + 0.5 * 0.7])
    assert torch.equal(s, mem.attr_scores)  # no attribute input: attribute scores unchanged


def test_statistics_of_split_batch_sum_to_full_batch():
    h, y, k, ch, ct = batch()
    full = HardLabelMemory(3, 3)
    full.update(h, y, k, ch, ct)
    split = HardLabelMemory(3, 3)
    a = split.batch_statistics(h[:1], y[:1], k[:1], ch[:1], ct[:1])
    b = split.batch_statistics(h[1:], y[1:], k[1:], ch[1:], ct[1:])
    split.apply_statistics({key: a[key] + b[key] for key in a})  # what all_reduce does
    assert torch.allclose(split.attr_scores, full.attr_scores)
    assert torch.allclose(split.cat_scores, full.cat_scores)


def test_update_takes_hardness_from_the_losses_module():
    logits = torch.tensor([[3.0, -3.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0]])
    mem = HardLabelMemory(2, 0)
    mem.update(node_hardness(logits, y, 1.0), y, None, None, None)
    assert not mem.attr_scores.requires_grad
    # h = 1 - sigma(s): 0.0474 and 0.9526.
    assert mem.attr_scores[:, 1].tolist() == pytest.approx(
        [0.5 * 0.047426 + 0.5, 0.5 * 0.952574 + 0.5], rel=1e-4
    )
    cat_mem = HardLabelMemory(0, 2)
    cat_mem.update(
        None,
        None,
        None,
        category_hardness(torch.zeros(1, 2), torch.tensor([1]), 1.0),
        torch.tensor([1]),
    )
    assert cat_mem.cat_scores.tolist() == pytest.approx([1.0, 0.75])


def test_pmfs_are_normalised():
    mem = HardLabelMemory(3, 3)
    mem.update(*batch())
    pa = mem.attribute_pmf()
    assert pa.sum().item() == pytest.approx(1.0)
    assert pa.tolist() == pytest.approx([0.7 / 2.7, 1 / 2.7, 1 / 2.7])
    pc = mem.category_pmf()
    assert pc.tolist() == pytest.approx([0.95 / 2.65, 1.0 / 2.65, 0.7 / 2.65])


def _memory_with(attr_pos: list[float], cats: list[float], k: int = 1) -> HardLabelMemory:
    mem = HardLabelMemory(len(attr_pos), len(cats), positives_per_image=k)
    attr = torch.stack([torch.ones(len(attr_pos)), torch.tensor(attr_pos)], dim=1)
    mem.load_state_dict(
        {"attr_scores": attr, "cat_scores": torch.tensor(cats), "num_updates": torch.tensor(0)}
    )
    return mem


def test_sampled_frequencies_match_pmf():
    mem = _memory_with([1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 0.0 + 3.0, 2.0])
    g = torch.Generator().manual_seed(123)
    n = 20000
    cat, attrs = mem.sample_conditions(n, generator=g)
    assert cat.dtype == torch.long and cat.shape == (n,)
    cat_freq = torch.bincount(cat, minlength=4).float() / n
    assert cat_freq.tolist() == pytest.approx([0.4, 0.1, 0.3, 0.2], abs=0.015)
    assert attrs.shape == (n, 4)
    assert (attrs.sum(dim=1) == 1).all()
    assert (attrs.mean(dim=0)).tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.015)
    # Same seed, same draw.
    cat2, attrs2 = mem.sample_conditions(n, generator=torch.Generator().manual_seed(123))
    assert torch.equal(cat, cat2) and torch.equal(attrs, attrs2)


def test_rows_have_exactly_k_distinct_positives():
    mem = _memory_with([1.0, 50.0, 1.0, 1.0, 1.0], [1.0], k=3)
    _, attrs = mem.sample_conditions(500, generator=torch.Generator().manual_seed(0))
    assert set(attrs.unique().tolist()) == {0.0, 1.0}
    assert (attrs.sum(dim=1) == 3).all()  # 3 ones in a 0/1 row: 3 distinct attributes
    # The hard attribute is in nearly every row, but never twice.
    assert attrs[:, 1].mean().item() > 0.95
    full = _memory_with([1.0, 1.0], [1.0], k=2)
    assert (full.sample_conditions(10)[1] == 1).all()


def test_condition_weights():
    mem = HardLabelMemory(3, 3)
    mem.update(*batch())
    cat = torch.tensor([2, 0])
    attrs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    aw, cw = mem.condition_weights(cat, attrs)
    expected = [0.7, 0.625, 0.5 * 1.9 / 3 + 0.5, 0.9, 1.0, 1.0]
    assert aw.flatten().tolist() == pytest.approx(expected)
    assert cw.tolist() == pytest.approx([0.7, 0.95])
    with pytest.raises(ValueError, match="attr_multi_hot"):
        mem.condition_weights(cat, attrs[:, :2])


def test_state_dict_round_trip_and_shape_check():
    mem = HardLabelMemory(3, 3)
    mem.update(*batch())
    state = mem.state_dict()
    other = HardLabelMemory(3, 3)
    other.load_state_dict(state)
    assert torch.equal(other.attr_scores, mem.attr_scores)
    assert torch.equal(other.cat_scores, mem.cat_scores)
    assert int(other.num_updates) == 1
    state["attr_scores"][0, 0] = 123.0  # a copy, not a view
    assert mem.attr_scores[0, 0].item() != 123.0
    with pytest.raises(ValueError, match="attr_scores"):
        HardLabelMemory(4, 3).load_state_dict(mem.state_dict())
    with pytest.raises(ValueError, match="cat_scores"):
        HardLabelMemory(3, 3).load_state_dict({"attr_scores": torch.ones(3, 2)})
    assert mem.to("cpu") is mem and mem.device.type == "cpu"


def test_category_only_and_attribute_only_memories():
    mnist = HardLabelMemory(0, 10)
    cat, attrs = mnist.sample_conditions(5)
    assert attrs.shape == (5, 0) and cat.shape == (5,) and mnist.positives_per_image == 0
    aw, cw = mnist.condition_weights(cat, attrs)
    assert aw.shape == (5, 0) and cw.tolist() == [1.0] * 5
    attr_only = HardLabelMemory(4, 0, positives_per_image=2)
    cat, attrs = attr_only.sample_conditions(3)
    assert cat.tolist() == [-1, -1, -1] and (attrs.sum(1) == 2).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="positives_per_image"):
        HardLabelMemory(3, 2, positives_per_image=4)
    with pytest.raises(ValueError, match="momentum"):
        HardLabelMemory(3, 2, momentum=0.0)
    with pytest.raises(ValueError, match="attr_hardness"):
        HardLabelMemory(3, 2).update(torch.ones(2, 4), torch.ones(2, 4), None, None, None)


def test_default_positives_per_image():
    assert default_positives_per_image(7, 2) == 4  # 3.5 rounds half up
    assert default_positives_per_image(3, 10) == 1  # at least one
    assert default_positives_per_image(340, 100) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_update_and_weights_do_not_sync_the_host():
    mem = HardLabelMemory(3, 3, device="cuda")
    h, y, k, ch, ct = (t.cuda() for t in batch())
    cat = torch.tensor([2, 0], device="cuda")
    attrs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mem.update(h, y, k, ch, ct)
        mem.condition_weights(cat, attrs)
        mem.attribute_pmf()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert mem.cat_scores.cpu().tolist() == pytest.approx([0.95, 1.0, 0.7])


def test_labels_absent_from_training_start_and_stay_at_zero():
    present_attr = torch.tensor([True, False, True])
    present_cat = torch.tensor([False, True])
    m = HardLabelMemory(3, 2, present_attributes=present_attr, present_categories=present_cat)
    assert m.attr_scores[:, 1].tolist() == [1.0, 0.0, 1.0]
    assert m.attr_scores[:, 0].tolist() == [1.0, 1.0, 1.0]  # negatives are all drawable
    assert m.cat_scores.tolist() == [0.0, 1.0]
    # a batch that only has the present labels leaves the absent ones at zero
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    m.update(torch.full((1, 3), 0.5), targets, None, torch.tensor([0.5]), torch.tensor([1]))
    assert m.attr_scores[1, 1] == 0 and m.cat_scores[0] == 0
    cats, attrs = m.sample_conditions(200, generator=torch.Generator().manual_seed(0))
    assert (cats == 1).all() and attrs[:, 1].sum() == 0
    with pytest.raises(ValueError, match="present_categories"):
        HardLabelMemory(3, 2, present_categories=torch.ones(3, dtype=torch.bool))
