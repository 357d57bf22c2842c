"""Drift (fashion_attr.audit.drift): label tests, products not images, the feature MMD test."""

from __future__ import annotations

import numpy as np
import pytest
from fashion_attr.audit.drift import drift_report, feature_drift, label_drift
from fashion_attr.audit.records import AuditRecord, group_keys
from fashion_attr.data.shards import AttributeCounts, ShardMember, load_manifest

MEMBER = ShardMember("k", 0, 1, 0, 1)


def _base(demo_version: str, cat_counts: dict[int, int], pos: dict[int, int], n: int):
    """The demo version's manifest with controlled train counts (n train images)."""
    m = load_manifest(demo_version)
    cats = [0] * len(m.categories)
    for c, v in cat_counts.items():
        cats[c] = v
    p = [0] * len(m.attributes)
    for j, v in pos.items():
        p[j] = v
    counts = AttributeCounts(positive=p, negative=[n - v for v in p], unknown=[0] * len(p))
    return m.model_copy(update={"train_category_counts": cats, "train_attribute_counts": counts})


def _records(spec: list[tuple[int, tuple[int, ...], str]]) -> list[AuditRecord]:
    return [
        AuditRecord(i, f"k{i}", image, "train", True, c, pos, (), "v-1", None, None, 0, MEMBER)
        for i, (c, pos, image) in enumerate(spec)
    ]


def test_same_mix_is_quiet_a_shifted_mix_and_a_new_attribute_are_flagged(demo_version):
    base = _base(demo_version, {0: 300, 1: 300, 2: 300}, {0: 270, 1: 90}, 900)
    same = _records(
        [
            (i % 3, (0,) if i % 10 < 3 else (1,) if i % 10 == 5 else (), f"a/{i}.jpg")
            for i in range(90)
        ]
    )
    quiet = label_drift(base, same, alpha=0.01)
    assert quiet["reasons"] == [] and quiet["category_test"]["p_value"] > 0.5
    shifted = _records([(0 if i < 70 else 1, (), f"a/{i}.jpg") for i in range(90)])
    loud = label_drift(base, shifted, alpha=0.01)
    assert any(r.startswith("category mix changed") for r in loud["reasons"])
    tee = next(c for c in loud["categories"] if c["name"] == base.categories[0].name)
    assert tee["batch_share"] > 0.7 and tee["q_value"] < 0.01
    new = _records([(i % 3, (5,) if i < 4 else (), f"a/{i}.jpg") for i in range(90)])
    found = label_drift(base, new, alpha=0.01, new_label_min_count=2)
    assert [x["name"] for x in found["new_labels"]] == [base.attributes[5].name]
    assert drift_report(found, None, alpha=0.01)["flagged"]
    assert not drift_report(quiet, {"tested": True, "flagged": False}, alpha=0.01)["flagged"]


def test_products_not_images_are_counted(demo_version):
    # 300 base products and 30 batch products, three views each; 'print' on 20 % of the
    # base's products and 40 % of the batch's: p ~ 0.015 counting products, ~1e-5 counting
    # images (three identical views are not three observations).
    base = _base(demo_version, {0: 900}, {0: 180}, 900)
    spec = [
        (0, (0,) if p < 12 else (), f"img/item{p}/{v}.jpg") for p in range(30) for v in range(3)
    ]
    records = _records(spec)
    products = group_keys([r.image for r in records])
    assert len(set(products)) == 30
    by_image = label_drift(base, records, alpha=0.01)
    by_product = label_drift(base, records, groups=products, base_images_per_group=3, alpha=0.01)
    assert by_image["reasons"] and not by_product["reasons"]
    assert by_product["products"] == 30 and by_product["base_train_products"] == 300
    # A flat catalog folder is no product: its images count alone.
    flat = group_keys([f"s3://shop/img/{i}.jpg" for i in range(60)], max_group_size=50)
    assert len(set(flat)) == 60


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feature_drift_is_quiet_on_one_distribution_and_finds_a_shift(seed):
    rng = np.random.default_rng(seed)
    ref, new = rng.normal(size=(400, 64)), rng.normal(size=(200, 64))
    # Fitted on the reference alone, the projection made every such draw "drift" (p 0.002).
    quiet = feature_drift(ref, new, permutations=200, seed=seed)
    assert quiet["tested"] and quiet["p_value"] > 0.05 and not quiet["flagged"]
    moved = new.copy()
    moved[:, :8] += 0.6
    assert feature_drift(ref, moved, permutations=200, seed=seed)["flagged"]


def test_feature_drift_permutes_products():
    rng = np.random.default_rng(3)
    # Products with three near-identical views; both sides from one distribution.
    centres_ref, centres_new = rng.normal(size=(60, 16)), rng.normal(size=(20, 16))
    ref = np.repeat(centres_ref, 3, axis=0) + 0.01 * rng.normal(size=(180, 16))
    new = np.repeat(centres_new, 3, axis=0) + 0.01 * rng.normal(size=(60, 16))
    g_ref = [f"r{i // 3}" for i in range(180)]
    g_new = [f"b{i // 3}" for i in range(60)]
    by_image = feature_drift(ref, new, permutations=200, seed=0)
    by_product = feature_drift(
        ref, new, reference_groups=g_ref, batch_groups=g_new, permutations=200, seed=0
    )
    assert by_product["batch_products"] == 20 and by_product["reference_products"] == 60
    assert by_image["p_value"] < by_product["p_value"]
    assert not by_product["flagged"]
