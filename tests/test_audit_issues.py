"""Label issues (fashion_attr.audit.issues): planted faults on synthetic champion outputs."""

from __future__ import annotations

import json

import numpy as np
from fashion_attr.audit.issues import find_label_issues, label_matrix, thresholds_from_labelled
from fashion_attr.audit.records import AuditRecord
from fashion_attr.data.shards import ShardMember

CATS = ["Tee", "Dress", "Skirt"]
ATTRS = ["floral", "denim", "maxi", "pocket"]
MEMBER = ShardMember("k", 0, 1, 0, 1)


def _record(i: int, category: int | None, positives=(), unknown=(), split="train") -> AuditRecord:
    labelled = category is not None
    return AuditRecord(
        index=i,
        key=f"k{i}",
        image=f"img/item{i}/1.jpg",
        split=split,
        labelled=labelled,
        category=category,
        positives=tuple(positives),
        unknown=tuple(unknown),
        version="v-0",
        batch="b.jsonl",
        line=i + 1,
        shard=0,
        member=MEMBER,
        attributes_labelled=labelled and len(unknown) < len(ATTRS),
    )


def _scenario(seed: int = 0, n: int = 120):
    """A batch where the champion is right about every true label; faults are planted."""
    rng = np.random.default_rng(seed)
    true_cat = rng.integers(0, 3, n)
    true_attr = rng.random((n, len(ATTRS))) < 0.3
    true_attr[:, 3] = False  # 'pocket' never appears in the batch's true labels ...
    true_attr[7, 3] = True  # ... except on one record, whose label drops it (below)
    true_attr[[5, 60], [0, 2]] = True  # the other two drops
    cat_p = np.full((n, 3), 0.04)
    cat_p[np.arange(n), true_cat] = 0.92
    attr_p = np.where(true_attr, rng.uniform(0.75, 0.95, true_attr.shape), rng.uniform(0.02, 0.2))
    attr_p[[5, 7, 60]] = np.where(true_attr[[5, 7, 60]], 0.95, attr_p[[5, 7, 60]])
    given_cat = true_cat.copy()
    flips = [3, 11, 40]
    for i in flips:
        given_cat[i] = (true_cat[i] + 1) % 3
    given_attr = true_attr.copy()
    drops = {}
    for i, j in [(5, 0), (7, 3), (60, 2)]:
        given_attr[i, j] = False
        drops[i] = j
    records = [
        _record(i, int(given_cat[i]), np.flatnonzero(given_attr[i]).tolist()) for i in range(n)
    ]
    return records, cat_p, attr_p, flips, drops


def _val_thresholds():
    # A val split on which the champion is as good as on the batch, 'pocket' included.
    rng = np.random.default_rng(99)
    n = 200
    cats = rng.integers(0, 3, n)
    y = (rng.random((n, len(ATTRS))) < 0.3).astype(np.int8)
    cat_p = np.full((n, 3), 0.04)
    cat_p[np.arange(n), cats] = 0.92
    attr_p = np.where(y == 1, 0.85, 0.1)
    return thresholds_from_labelled(cat_p, attr_p, cats, y, np.ones_like(y, bool), "val")


def test_planted_category_flips_and_attribute_drops_are_found_and_ranked_first():
    records, cat_p, attr_p, flips, drops = _scenario()
    search = find_label_issues(
        records,
        cat_p,
        attr_p,
        category_names=CATS,
        attribute_names=ATTRS,
        thresholds=_val_thresholds(),
    )
    flagged = {issue.record.index: issue for issue in search.issues}
    assert set(flips) | set(drops) <= set(flagged)
    assert len(search.issues) == len(flips) + len(drops)  # nothing the champion agrees with
    first = flagged[flips[0]].to_json(rank=1)
    assert first["issue"] == "wrong_category" and first["score"] > 0.9
    assert first["given"]["category"] == CATS[records[flips[0]].category]
    assert first["suspected"]["category"] != first["given"]["category"]
    assert {"image", "issue", "score", "given", "suspected", "line", "batch"} <= set(first)
    json.dumps(first)  # one JSON line
    for i, j in drops.items():
        assert [e["name"] for e in flagged[i].missing] == [ATTRS[j]]
    scores = [issue.score for issue in search.issues]
    assert scores == sorted(scores, reverse=True)
    assert search.counts() == {
        "wrong_category": 3,
        "missing_attributes": 3,
        "spurious_attributes": 0,
    }


def test_a_missing_attribute_the_batch_never_gives_is_found_through_val_thresholds():
    # 'pocket' has no positive label in the batch: calibrated on the batch alone (cleanlab's
    # default), confident learning cannot judge it and the drop on record 7 goes unseen.
    records, cat_p, attr_p, _, _ = _scenario()
    blind = find_label_issues(
        records,
        cat_p,
        attr_p,
        category_names=CATS,
        attribute_names=ATTRS,
        thresholds=_no_val(),
    )
    assert 7 not in {i.record.index for i in blind.issues} and "pocket" in blind.uncalibrated
    seen = find_label_issues(
        records,
        cat_p,
        attr_p,
        category_names=CATS,
        attribute_names=ATTRS,
        thresholds=_val_thresholds(),
    )
    assert any(i.record.index == 7 and i.missing[0]["name"] == "pocket" for i in seen.issues)


def _no_val():
    from fashion_attr.audit.issues import Thresholds

    return Thresholds(np.full(3, np.nan), np.full(4, np.nan), np.full(4, np.nan), "none")


def test_unknown_and_unlabelled_records_are_never_judged():
    records, cat_p, attr_p, _, _ = _scenario()
    # Record 5 gives its category only (every attribute unknown), record 6 nothing at all.
    records[5] = _record(5, records[5].category, (), unknown=range(len(ATTRS)))
    records[6] = _record(6, None)
    attr_p[5] = 0.99  # the champion sees everything on 5: unknown labels are no dispute
    cat_p[6] = [0.0, 0.0, 1.0]
    search = find_label_issues(
        records,
        cat_p,
        attr_p,
        category_names=CATS,
        attribute_names=ATTRS,
        thresholds=_val_thresholds(),
    )
    assert not {5, 6} & {i.record.index for i in search.issues}
    y, known = label_matrix(records, len(ATTRS))
    assert not known[5].any() and not known[6].any() and y[5].sum() == 0


def test_the_rebuilt_memory_uses_the_champion_s_momentum():
    """The audit rebuilds the hard-label memory with the momentum the champion trained with
    (deact.memory_momentum), not a fixed 0.5."""
    import numpy as np
    from fashion_attr.audit.scoring import Champion
    from fashion_attr.audit.tags import memory_from_predictions

    rng = np.random.default_rng(0)
    n, n_cat, n_attr = 8, 3, 4
    args = (
        rng.dirichlet(np.ones(n_cat), n).astype(np.float32),
        rng.random((n, n_attr), dtype=np.float32),
        list(rng.integers(0, n_cat, n)),
        (rng.random((n, n_attr)) > 0.5).astype(np.float32),
        np.ones((n, n_attr), np.float32),
    )
    slow = memory_from_predictions(*args, gamma=1.2, momentum=0.9, batch_size=2)
    fast = memory_from_predictions(*args, gamma=1.2, momentum=0.5, batch_size=2)
    assert slow.momentum == 0.9 and fast.momentum == 0.5
    assert not np.allclose(slow.attr_scores.numpy(), fast.attr_scores.numpy())
    meta = {"config": {"deact": {"memory_momentum": 0.8}, "loss": {"gamma": 2.0}}}
    champion = Champion(uri="m.pt", net=None, meta=meta, device="cpu")  # type: ignore[arg-type]
    assert (champion.memory_momentum, champion.gamma) == (0.8, 2.0)
    assert Champion(uri="m.pt", net=None, meta={}, device="cpu").memory_momentum == 0.5  # type: ignore[arg-type]
