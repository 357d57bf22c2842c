"""Unit tests of fashion_attr.evaluation.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics, average_precision

# --------------------------------------------------------------------------------------
# Hand example: 2 images x 6 attributes, groups texture = {0, 1, 2}, fabric = {3, 4, 5}.
# Image 1 has no known positive in texture; its attribute 1 is unknown (label 1, known
# False) and has the highest logit of the image, so it must never count as a hit.
LOGITS = torch.tensor(
    [
        [3.0, -1.0, 2.0, 1.0, 0.5, -2.0],
        [-0.2, 4.0, -3.0, 2.5, 1.5, 0.7],
    ]
)
TARGETS = torch.tensor(
    [
        [1, 1, 0, 0, 1, 0],
        [0, 1, 0, 1, 0, 1],
    ]
)
KNOWN = torch.tensor(
    [
        [True] * 6,
        [True, False, True, True, True, True],
    ]
)
GROUPS = [1, 1, 1, 2, 2, 2]
TRAIN_POS = [50, 500, 99, 100, 10, 1000]  # tail (< 100): attributes 0, 2, 4


def _hand_metrics(**kwargs) -> AttributeMetrics:
    m = AttributeMetrics(GROUPS, train_pos_counts=TRAIN_POS, ks=(1, 2, 5), **kwargs)
    m.update(LOGITS, TARGETS, KNOWN)
    return m


def test_topk_recall_per_group_all_and_tail_by_hand():
    r = _hand_metrics().compute()
    # texture: img0 ranks 0, 2, 1 with positives {0, 1}: top-1 {0} -> 1 hit, top-2 {0, 2}
    # -> 1 hit; img1 has no known texture positive (adds 0 / 0). 2 positives.
    assert r["attr_recall@1/texture"] == pytest.approx(1 / 2)
    assert r["attr_recall@2/texture"] == pytest.approx(1 / 2)
    assert r["attr_recall@5/texture"] == pytest.approx(2 / 2)  # k > group size: whole group
    # fabric: img0 ranks 3, 4, 5, positives {4}: top-1 0, top-2 1. img1 ranks 3, 4, 5,
    # positives {3, 5}: top-1 1, top-2 1. 3 positives.
    assert r["attr_recall@1/fabric"] == pytest.approx(1 / 3)
    assert r["attr_recall@2/fabric"] == pytest.approx(2 / 3)
    # all: img0 order 0, 2, 3, 4, 1, 5 with positives {0, 1, 4}: top-1 1, top-2 1.
    # img1 order 1(unknown), 3, 4, 5, 0, 2 with positives {3, 5}: top-1 0 (the unknown
    # takes the slot and is no hit), top-2 1. 5 positives.
    assert r["attr_recall@1/all"] == pytest.approx(1 / 5)
    assert r["attr_recall@2/all"] == pytest.approx(2 / 5)
    assert r["attr_recall@5/all"] == pytest.approx(5 / 5)
    # tail {0, 2, 4}: img0 order 0, 2, 4 positives {0, 4}: top-1 1, top-2 1; img1 none.
    assert r["attr_recall@1/tail"] == pytest.approx(1 / 2)
    assert r["attr_recall@2/tail"] == pytest.approx(1 / 2)
    # Groups without attributes are undefined.
    for g in ("shape", "part", "style"):
        assert math.isnan(r[f"attr_recall@1/{g}"])
        assert math.isnan(r[f"cb_acc/{g}"])
        assert math.isnan(r[f"map/{g}"])


def test_per_attribute_recall_from_all_ranking():
    recs = _hand_metrics().per_attribute()
    # attr0: positive in img0 at rank 1; attr1: positive in img0 at rank 5 (img1 unknown);
    # attr2: no positive; attr3: img1 rank 2; attr4: img0 rank 4; attr5: img1 rank 4.
    expected_r1 = [1.0, 0.0, math.nan, 0.0, 0.0, 0.0]
    expected_r2 = [1.0, 0.0, math.nan, 1.0, 0.0, 0.0]
    for rec, e1, e2 in zip(recs, expected_r1, expected_r2, strict=True):
        np.testing.assert_equal(rec["recall@1"], e1)
        np.testing.assert_equal(rec["recall@2"], e2)
    assert [r["test_positives"] for r in recs] == [1, 1, 0, 1, 1, 1]
    assert [r["test_negatives"] for r in recs] == [1, 0, 2, 1, 1, 1]
    assert [r["group"] for r in recs] == ["texture"] * 3 + ["fabric"] * 3
    assert [r["train_positives"] for r in recs] == TRAIN_POS
    assert recs[0]["mean_prob_pos"] == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert math.isnan(recs[2]["mean_prob_pos"])


def test_class_balanced_accuracy_by_hand():
    m = _hand_metrics()
    recs = m.per_attribute()
    # pred = logit >= 0. attr0: pos img0 (3.0 -> TP), neg img1 (-0.2 -> TN): (1 + 1) / 2.
    # attr1: pos img0 (-1.0 -> FN), img1 unknown: TNR undefined -> excluded.
    # attr2: negatives only: TPR undefined -> excluded.
    # attr3: neg img0 (1.0 -> FP), pos img1 (2.5 -> TP): (1 + 0) / 2.
    # attr4: pos img0 (0.5 -> TP), neg img1 (1.5 -> FP): 0.5. attr5: TP and TN: 1.0.
    np.testing.assert_allclose(
        [r["cb_acc"] for r in recs], [1.0, math.nan, math.nan, 0.5, 0.5, 1.0], equal_nan=True
    )
    assert recs[1]["tpr"] == 0.0 and math.isnan(recs[1]["tnr"])
    assert recs[2]["tnr"] == 0.5 and math.isnan(recs[2]["tpr"])
    r = m.compute()
    assert r["cb_acc/texture"] == pytest.approx(1.0)
    assert r["cb_acc/fabric"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert r["cb_acc/all"] == pytest.approx((1.0 + 0.5 + 0.5 + 1.0) / 4)
    assert r["cb_acc/tail"] == pytest.approx((1.0 + 0.5) / 2)  # attr2 undefined


def test_ap_and_map_by_hand():
    m = _hand_metrics()
    recs = m.per_attribute()
    # attr1's unknown label has the top score; read as a negative it would give AP 0.5.
    # attr4: the negative (1.5) outranks the positive (0.5): precision 1/2 at the positive.
    np.testing.assert_allclose(
        [r["ap"] for r in recs], [1.0, 1.0, math.nan, 1.0, 0.5, 1.0], equal_nan=True
    )
    r = m.compute()
    assert r["map/texture"] == pytest.approx(1.0)
    assert r["map/fabric"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert r["map/all"] == pytest.approx(4.5 / 5)
    assert r["map/tail"] == pytest.approx((1.0 + 0.5) / 2)


def test_compute_ap_false_gives_nan_map_and_keeps_the_rest():
    r = _hand_metrics(compute_ap=False).compute()
    assert math.isnan(r["map/all"])
    assert r["attr_recall@1/all"] == pytest.approx(0.2)


def test_average_precision_by_hand():
    ap = average_precision(np.array([[0.9], [0.8], [0.7], [0.6]]), np.array([[1], [0], [1], [0]]))
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    # Unknown (-1) is skipped: the known order is neg (0.8), pos (0.7) -> 1/2.
    ap = average_precision(np.array([[0.9], [0.8], [0.7]]), np.array([[-1], [0], [1]]))
    assert ap[0] == pytest.approx(0.5)
    # A tie forms one threshold: precision 1/2 whichever order the tie is stored in.
    ap = average_precision(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([[1, 0], [0, 1]]))
    np.testing.assert_allclose(ap, [0.5, 0.5])
    # No positives: undefined.
    assert math.isnan(average_precision(np.array([[0.3]]), np.array([[0]]))[0])


def test_average_precision_matches_sklearn_on_random_data():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, size=(300, 7)).astype(np.float32)  # many ties
    labels = (rng.random((300, 7)) < 0.3).astype(np.int8)
    ours = average_precision(scores, labels)
    for j in range(7):
        ref = sklearn_metrics.average_precision_score(labels[:, j], scores[:, j])
        assert ours[j] == pytest.approx(ref, abs=1e-12)


def _random_batch(rng: np.random.Generator, m: int, n: int):
    logits = torch.from_numpy(rng.normal(size=(m, n)).astype(np.float32))
    logits[0, :3] = 0.25  # ties
    targets = torch.from_numpy((rng.random((m, n)) < 0.3).astype(np.int64))
    known = torch.from_numpy(rng.random((m, n)) < 0.9)
    return logits, targets, known


def test_streaming_two_batches_equals_one_batch():
    rng = np.random.default_rng(1)
    n = 12
    groups = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 1]
    counts = list(range(40, 160, 10))
    a = _random_batch(rng, 9, n)
    b = _random_batch(rng, 7, n)
    split = AttributeMetrics(groups, train_pos_counts=counts)
    split.update(*a)
    split.update(*b)
    whole = AttributeMetrics(groups, train_pos_counts=counts)
    whole.update(*(torch.cat([x, y]) for x, y in zip(a, b, strict=True)))
    r1, r2 = split.compute(), whole.compute()
    assert r1.keys() == r2.keys()
    np.testing.assert_allclose(list(r1.values()), list(r2.values()), equal_nan=True)
    assert split.num_images == 16
    for x, y in zip(split.per_attribute(), whole.per_attribute(), strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):  # float64 sums in another order: last-bit noise
                np.testing.assert_allclose(x[key], y[key], rtol=1e-12, equal_nan=True)
            else:
                assert x[key] == y[key], key
    split.reset()
    assert split.num_images == 0
    assert math.isnan(split.compute()["attr_recall@3/all"])


def test_tail_restriction_picks_attributes_below_threshold():
    m = AttributeMetrics(GROUPS, train_pos_counts=TRAIN_POS, tail_threshold=100)
    assert [r["is_tail"] for r in m.per_attribute()] == [True, False, True, False, True, False]
    assert m.num_tail_attributes == 3
    # Without counts there is no tail: tail metrics are NaN.
    no_tail = AttributeMetrics(GROUPS)
    no_tail.update(LOGITS, TARGETS, KNOWN)
    r = no_tail.compute()
    assert math.isnan(r["attr_recall@3/tail"]) and math.isnan(r["cb_acc/tail"])
    assert math.isnan(r["map/tail"])


def test_default_keys():
    r = _hand_metrics().compute()
    sets = ["texture", "fabric", "shape", "part", "style", "all", "tail"]
    expected = {f"attr_recall@{k}/{s}" for k in (1, 2, 5) for s in sets}
    expected |= {f"cb_acc/{s}" for s in sets} | {f"map/{s}" for s in sets}
    assert set(r) == expected
    assert all(isinstance(v, float) for v in r.values())


def test_ties_rank_lower_index_first():
    # All logits equal: top-1 of each image is attribute 0 (lowest index).
    m = AttributeMetrics([1, 1, 1], ks=(1,))
    m.update(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 1]]))
    assert m.compute()["attr_recall@1/all"] == pytest.approx(1 / 2)


def test_zero_attributes_is_graceful():
    m = AttributeMetrics([])
    m.update(torch.zeros(4, 0), torch.zeros(4, 0))
    r = m.compute()
    assert all(math.isnan(v) for v in r.values())
    assert m.per_attribute() == []
    assert m.num_images == 4


def test_bool_targets_and_no_known_mask():
    m = AttributeMetrics(GROUPS, ks=(1,))
    m.update(LOGITS[:1], TARGETS[:1].bool())
    # img0 alone: all top-1 {0} hits; positives {0, 1, 4}.
    assert m.compute()["attr_recall@1/all"] == pytest.approx(1 / 3)


def test_bad_inputs_name_the_input_and_fix():
    m = AttributeMetrics(GROUPS)
    with pytest.raises(ValueError, match=r"targets\[0, 1\] = -1.*known"):
        m.update(LOGITS, torch.tensor([[1, -1, 0, 0, 0, 0], [0] * 6]))
    with pytest.raises(ValueError, match=r"attr_logits.*\[M, 6\]"):
        m.update(torch.zeros(2, 5), torch.zeros(2, 5))
    bad = LOGITS.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"attr_logits\[1, 2\] is NaN"):
        m.update(bad, TARGETS)
    with pytest.raises(ValueError, match=r"groups\[1\] = 7"):
        AttributeMetrics([1, 7])
    with pytest.raises(ValueError, match="train_pos_counts has 2 entries"):
        AttributeMetrics(GROUPS, train_pos_counts=[1, 2])
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        m.update(LOGITS.numpy(), TARGETS)


# ------------------------------------------------------------------------ categories
CAT_LOGITS = torch.tensor(
    [
        [0.1, 0.5, 0.3, 0.2],  # true 2: rank 2 -> top-2 hit, predicted 1
        [1.0, 0.0, 0.0, 0.0],  # true 0: top-1 hit
        [0.0, 0.1, 0.2, 0.3],  # true 0: rank 4 -> miss at k <= 3, predicted 3
        [0.4, 0.4, 0.1, 0.0],  # true 1: tie with 0, lower index first -> rank 2, predicted 0
    ]
)
CAT_TARGETS = torch.tensor([2, 0, 0, 1])


def test_category_topk_by_hand():
    m = CategoryMetrics(4, ks=(2, 3))
    m.update(CAT_LOGITS, CAT_TARGETS)
    assert m.compute() == pytest.approx(
        {"cat_top1_acc": 1 / 4, "cat_top2_acc": 3 / 4, "cat_top3_acc": 3 / 4}
    )
    default = CategoryMetrics(4)
    default.update(CAT_LOGITS[:2], CAT_TARGETS[:2])
    default.update(CAT_LOGITS[2:], CAT_TARGETS[2:])  # streaming
    # k = 5 exceeds C = 4: every image is a hit.
    assert default.compute() == pytest.approx(
        {"cat_top1_acc": 1 / 4, "cat_top3_acc": 3 / 4, "cat_top5_acc": 1.0}
    )


def test_category_confusion_matrix_by_hand():
    m = CategoryMetrics(4)
    m.update(CAT_LOGITS, CAT_TARGETS)
    expected = np.array(
        [
            [1, 0, 0, 1],
            [1, 0, 0, 0],
            [0, 1, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    conf = m.confusion_matrix()
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)


def test_category_empty_and_bad_targets():
    m = CategoryMetrics(4)
    assert all(math.isnan(v) for v in m.compute().values())
    with pytest.raises(ValueError, match=r"cat_targets\[1\] = 4 is outside \[0, 4\)"):
        m.update(CAT_LOGITS[:2], torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="one category per image"):
        m.update(CAT_LOGITS, torch.tensor([0]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_match_cpu():
    rng = np.random.default_rng(2)
    batch = _random_batch(rng, 32, 12)
    groups = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 1]
    cpu = AttributeMetrics(groups, train_pos_counts=list(range(40, 160, 10)))
    gpu = AttributeMetrics(groups, train_pos_counts=list(range(40, 160, 10)))
    cpu.update(*batch)
    gpu.update(*(x.cuda() for x in batch))
    np.testing.assert_allclose(
        list(cpu.compute().values()), list(gpu.compute().values()), equal_nan=True, rtol=1e-6
    )
    cat_cpu, cat_gpu = CategoryMetrics(4), CategoryMetrics(4)
    cat_cpu.update(CAT_LOGITS, CAT_TARGETS)
    cat_gpu.update(CAT_LOGITS.cuda(), CAT_TARGETS.cuda())
    assert cat_cpu.compute() == cat_gpu.compute()
    np.testing.assert_array_equal(cat_cpu.confusion_matrix(), cat_gpu.confusion_matrix())
