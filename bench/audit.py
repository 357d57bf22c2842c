"""The batch audit measured on demo catalog batches with known faults and known drift.

For every seed, a demo catalog (``--pool-images``) is split by product: the products
with the rarest attribute (``--new-attribute``, "faux fur") are held out as a *novel*
pool; of the rest, 70 % form the base catalog and 30 % the in-distribution batch pool.
The base is ingested (``tiny`` preset), a champion is trained on it (a short MR-GAN for
Deact, then the ``tiny`` classifier) and scored on the base test split. The batch pool
and the novel pool are folded into the base once, and the champion scores every
record once; each draw below is then a subset of those records run through the
audit's own functions (the very ones the step runs):

- **label issues**: a batch of ``--batch-records`` records (whole products) with
  category flips on 5 % of the records and one positive attribute dropped on another
  5 %; per fault kind, precision and recall at k = the number injected, against a
  random ranking (its expectation is the fault rate);
- **drift**: batches drawn from the batch pool (the base's distribution): the share
  flagged is the false-positive rate, counting products (the default) and counting
  images; batches whose category mix is tilted (one garment's products drawn
  ``--tilts`` times as often), and batches with 5 % of their records from the novel
  pool (a new attribute): the share flagged is the true-positive rate;
- **tags**: the champion's tags on the whole batch pool, taken as unlabelled, scored
  against the hidden labels with the evaluation's own metrics, beside the champion's
  test-split metrics.

Once per seed the whole step runs end to end (``fashion_attr.steps.audit``) on a real
JSON Lines batch (faults injected, 10 % of its records without labels) folded in by
the ingest step; its batch-scoring rate is the CPU images/s figure.

``--speed-only`` measures batch scoring alone (any ``--arch``, ``--image-size``,
``--device``): the command for the GPU figure is in docs/catalog-audit.md.

Outputs (``--out``): ``issues.csv``, ``drift.csv``, ``tags.csv``, ``e2e.csv``,
``speed.csv`` and ``summary.md``.

Example (about 20 min on 2 shared cores)::

    python bench/audit.py --seeds 11,12,13 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from fashion_attr.audit import runner
from fashion_attr.audit.drift import drift_report, feature_drift, label_drift
from fashion_attr.audit.issues import find_label_issues, thresholds_from_labelled
from fashion_attr.audit.records import AuditRecord, collect_batch, group_keys
from fashion_attr.audit.scoring import Champion, load_champion, score_members
from fashion_attr.config import (
    AuditConfig,
    ClassifierConfig,
    EvaluateConfig,
    GanConfig,
    PreprocessConfig,
    load_config,
)
from fashion_attr.data.annotations import (
    ATTR_CLOTH,
    ATTR_IMG,
    BBOX,
    CATEGORY_CLOTH,
    CATEGORY_IMG,
    EVAL_PARTITION,
    HEADERS,
    load_annotations_from_dir,
    write_annotation_file,
)
from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics
from fashion_attr.steps import audit as audit_step
from fashion_attr.steps import preprocess, train_classifier, train_gan

SCRIPT = "audit"
GARMENTS = ("Tee", "Dress", "Skirt", "Trousers", "Jacket", "Shorts")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Batch audit: label issues, drift, tags and scoring speed on demo batches.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seeds", default="11,12,13", help="demo catalog seeds (one champion each)")
    p.add_argument("--pool-images", type=int, default=4000, help="demo catalog size per seed")
    p.add_argument("--batch-records", type=int, default=300, help="records per drawn batch")
    p.add_argument("--fault-rate", type=float, default=0.05, help="share of each fault kind")
    p.add_argument("--issue-draws", type=int, default=10, help="faulty batches per seed")
    p.add_argument("--drift-draws", type=int, default=20, help="batches per drift scenario")
    p.add_argument("--tilts", default="2,3", help="category tilts (one garment drawn x times)")
    p.add_argument("--tilted", default="Dress", help="the garment the tilt favours")
    p.add_argument("--new-attribute", default="faux fur", help="held out of the base")
    p.add_argument("--new-share", type=float, default=0.05, help="share of novel records")
    p.add_argument("--gan-steps", type=int, default=60, help="MR-GAN steps for Deact")
    p.add_argument("--permutations", type=int, default=1000, help="MMD permutations")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0 = all cores)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--speed-only", action="store_true", help="only the batch-scoring rate")
    p.add_argument("--arch", default="tiny", help="--speed-only: the champion's network")
    p.add_argument("--image-size", type=int, default=64, help="--speed-only: shard image side")
    p.add_argument("--speed-images", type=int, default=600, help="--speed-only: images scored")
    p.add_argument("--batch-size", type=int, default=64, help="scoring batch size")
    p.add_argument("--workers", type=int, default=0, help="scoring loader workers")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--out", default=str(common.default_out(SCRIPT)), help="results folder")
    args = p.parse_args(argv)
    args.seed_list = common.parse_int_list(args.seeds, "--seeds")
    args.tilt_list = [float(v) for v in args.tilts.split(",") if v.strip()]
    return args


# --------------------------------------------------------------------------- catalogs


def _write_root(root: Path, src: Path, ds: Any, keep: set[str]) -> Path:
    """A DeepFashion-C root holding the records of ``ds`` whose image is in ``keep``."""
    recs = [r for r in ds.records if r.name in keep]
    for r in recs:
        dst = root / "Img" / r.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src / "Img" / r.name, dst)
    attr_rows = []
    n_attr = len(ds.attributes)
    for r in recs:
        lab = np.full(n_attr, -1, np.int64)
        lab[list(r.positives)] = 1
        lab[list(r.unknown)] = 0
        attr_rows.append([r.name, *(f"{x:2d}" for x in lab.tolist())])
    write_annotation_file(
        root / CATEGORY_CLOTH, HEADERS[CATEGORY_CLOTH], [[c.name, c.type] for c in ds.categories]
    )
    write_annotation_file(
        root / ATTR_CLOTH, HEADERS[ATTR_CLOTH], [[a.name, a.group] for a in ds.attributes]
    )
    write_annotation_file(
        root / CATEGORY_IMG, HEADERS[CATEGORY_IMG], [[r.name, r.category + 1] for r in recs]
    )
    write_annotation_file(root / ATTR_IMG, HEADERS[ATTR_IMG], attr_rows)
    write_annotation_file(root / BBOX, HEADERS[BBOX], [[r.name, *r.bbox] for r in recs])
    write_annotation_file(
        root / EVAL_PARTITION, HEADERS[EVAL_PARTITION], [[r.name, r.split] for r in recs]
    )
    return root


def _jsonl_row(src: Path, r: Any, cats: list[str], attrs: list[str], labelled: bool = True):
    row: dict[str, Any] = {"image": str(src / "Img" / r.name), "bbox": list(r.bbox)}
    if labelled:
        row["category"] = cats[r.category]
        row["attributes"] = [attrs[j] for j in r.positives]
    row["split"] = "train"
    return row


@dataclasses.dataclass
class World:
    """One seed's catalog, base, champion and the champion's view of every batch record."""

    seed: int
    work: Path
    src: Path
    dest: str
    base_uri: str
    champion: Champion
    model: str
    test_metrics: dict[str, float]
    records: list[AuditRecord]
    novel: np.ndarray  # bool per record: from the novel pool
    outputs: Any
    thresholds: Any
    reference: Any
    base_per_group: float
    cats: list[str]
    attrs: list[str]
    pool_items: list[str]  # folder per in-distribution batch-pool record (by record)
    ds: Any
    batch_pool: list[Any]  # annotation records of the batch pool


def build_world(args: argparse.Namespace, seed: int, log: common.RunLog) -> World:
    from fashion_attr.classifier.scoring import score_model
    from fashion_attr.demo import generate_demo_dataset

    work = Path(tempfile.mkdtemp(prefix=f"fa-bench-audit-{seed}-"))
    src = generate_demo_dataset(work / "pool", images=args.pool_images, seed=seed)
    ds = load_annotations_from_dir(src)
    cats, attrs = [c.name for c in ds.categories], [a.name for a in ds.attributes]
    novel_j = attrs.index(args.new_attribute)
    folder = {r.name: folder_of(r.name) for r in ds.records}
    novel_items = {folder[r.name] for r in ds.records if novel_j in r.positives}
    items = sorted({folder[r.name] for r in ds.records} - novel_items)
    rng = np.random.default_rng([seed, 1])
    rng.shuffle(items)
    base_items = set(items[: int(0.7 * len(items))])
    base_names = {r.name for r in ds.records if folder[r.name] in base_items}
    root = _write_root(work / "base", src, ds, base_names)
    dest = str(work / "datasets")
    pre = load_config(PreprocessConfig, preset="tiny")
    base = preprocess.run(pre, dest, source=str(root), progress=False)
    gan = train_gan.run(
        load_config(
            GanConfig,
            preset="tiny",
            overrides=["quality.enabled=false", f"max_steps={args.gan_steps}", f"seed={seed}"],
        ),
        base.uri,
        str(work / "gan"),
    )
    clf = train_classifier.run(
        load_config(ClassifierConfig, preset="tiny", overrides=[f"seed={seed}"]),
        base.uri,
        str(work / "champion"),
        generator=gan.generator,
    )
    eval_cfg = load_config(EvaluateConfig, preset="tiny", overrides=["whole_images=0"])
    test = score_model(eval_cfg, clf.model, base.uri).metrics
    # Every batch-pool and novel record, folded in once with its true labels.
    batch_pool = [r for r in ds.records if folder[r.name] not in base_items]
    lines = [_jsonl_row(src, r, cats, attrs) for r in batch_pool]
    (work / "all.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    folded = preprocess.run(
        pre, dest, base=base.version, batch=str(work / "all.jsonl"), progress=False
    )
    batch = collect_batch(folded.uri, base.uri)
    champion = load_champion(clf.model, args.device)
    outputs = score_members(
        champion, batch.shard_members(batch.records), len(attrs), progress=False
    )
    cfg = AuditConfig(permutations=args.permutations)
    ref = runner._reference(champion, batch, cfg, None, False)
    vo = ref.outputs.take(ref.val_rows)
    thresholds = thresholds_from_labelled(
        vo.cat_probs, vo.attr_probs, ref.categories, ref.targets, ref.known, "base val"
    )
    records = batch.records
    novel = np.array([folder_of(r.image) in novel_items for r in records])
    log.progress(
        f"seed {seed}: base {base.counts}, batch pool {int((~novel).sum())} records, novel "
        f"{int(novel.sum())}; champion test cat top-1 {100 * test['cat_top1_acc']:.1f}%, "
        f"attr top-3 recall {100 * test['attr_recall@3/all']:.1f}%"
    )
    return World(
        seed=seed,
        work=work,
        src=src,
        dest=dest,
        base_uri=base.uri,
        champion=champion,
        model=clf.model,
        test_metrics=test,
        records=records,
        novel=novel,
        outputs=outputs,
        thresholds=thresholds,
        reference=ref,
        base_per_group=runner._base_images_per_group(batch, cfg),
        cats=cats,
        attrs=attrs,
        pool_items=[folder_of(r.image) for r in records],
        ds=ds,
        batch_pool=batch_pool,
    )


def folder_of(image: str) -> str:
    """The product folder of an image path (``.../img/<item>/img_x.jpg``)."""
    return image.rsplit("/", 2)[-2]


# --------------------------------------------------------------------------- draws


def draw_products(
    w: World, rng: np.random.Generator, n: int, pool: np.ndarray, weights: dict[str, float] | None
) -> list[int]:
    """Whole products, drawn (weighted by garment) until the batch holds ``n`` records."""
    by_item: dict[str, list[int]] = {}
    for i in np.flatnonzero(pool):
        by_item.setdefault(w.pool_items[i], []).append(int(i))
    items = sorted(by_item)
    if not items:
        raise ValueError("the pool to draw from is empty: raise --pool-images")
    if weights:
        p = np.array([weights.get(w.cats[w.records[by_item[it][0]].category], 1.0) for it in items])
    else:
        p = np.ones(len(items))
    order = rng.choice(len(items), size=len(items), replace=False, p=p / p.sum())
    out: list[int] = []
    for k in order:
        if len(out) >= n:
            break
        out += by_item[items[int(k)]]
    return out[:n]


def subset(w: World, rows: Sequence[int]) -> tuple[list[AuditRecord], Any]:
    recs = [dataclasses.replace(w.records[i], index=k) for k, i in enumerate(rows)]
    return recs, w.outputs.take(list(rows))


def inject(
    w: World, recs: list[AuditRecord], rng: np.random.Generator, rate: float
) -> tuple[list[AuditRecord], set[int], dict[int, int]]:
    """Category flips on ``rate`` of the records, one dropped attribute on another ``rate``."""
    n = len(recs)
    k = max(1, round(rate * n))
    order = rng.permutation(n)
    flips = {int(i) for i in order[:k]}
    eligible = [int(i) for i in order[k:] if recs[int(i)].positives]
    drops = {i: int(rng.choice(recs[i].positives)) for i in eligible[:k]}
    garments = [w.cats.index(g) for g in GARMENTS]
    out = list(recs)
    for i in flips:
        other = [c for c in garments if c != recs[i].category]
        out[i] = dataclasses.replace(recs[i], category=int(rng.choice(other)))
    for i, j in drops.items():
        out[i] = dataclasses.replace(
            recs[i], positives=tuple(x for x in recs[i].positives if x != j)
        )
    return out, flips, drops


def at_k(ranked: list[int], truth: set[int], k: int) -> tuple[float, float]:
    """Precision (of the listed top k) and recall at k."""
    top = ranked[:k]
    hits = len(set(top) & truth)
    return (hits / len(top) if top else float("nan")), hits / max(len(truth), 1)


def issue_draws(w: World, args: argparse.Namespace, log: common.RunLog) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng([w.seed, 2])
    for d in range(args.issue_draws):
        picked = draw_products(w, rng, args.batch_records, ~w.novel, None)
        recs, out = subset(w, picked)
        recs, flips, drops = inject(w, recs, rng, args.fault_rate)
        search = find_label_issues(
            recs,
            out.cat_probs,
            out.attr_probs,
            category_names=w.cats,
            attribute_names=w.attrs,
            thresholds=w.thresholds,
        )
        for kind, truth in (("wrong_category", flips), ("missing_attributes", set(drops))):
            listed = [i for i in search.issues if kind in i.scores]
            ranked = [i.record.index for i in sorted(listed, key=lambda i: -i.scores[kind])]
            k = len(truth)
            p, r = at_k(ranked, truth, k)
            hits_all = len(set(ranked) & truth)
            exact = (
                sum(
                    1
                    for i in listed
                    if i.record.index in drops
                    and w.attrs[drops[i.record.index]] in {e["name"] for e in i.missing}
                )
                if kind == "missing_attributes"
                else hits_all
            )
            rand = [
                len(set(rng.permutation(len(recs))[:k].tolist()) & truth) / k for _ in range(200)
            ]
            rows.append(
                {
                    "seed": w.seed,
                    "draw": d,
                    "kind": kind,
                    "records": len(recs),
                    "injected": k,
                    "listed": len(listed),
                    "precision_at_k": p,
                    "recall_at_k": r,
                    "random_at_k": float(np.mean(rand)),
                    "precision_listed": hits_all / len(listed) if listed else float("nan"),
                    "recall_listed": hits_all / max(k, 1),
                    "exact_attribute": exact / max(k, 1),
                }
            )
    log.progress(f"seed {w.seed}: {args.issue_draws} faulty batches audited")
    return rows


def drift_draws(w: World, args: argparse.Namespace, log: common.RunLog) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng([w.seed, 3])
    cfg = AuditConfig(permutations=args.permutations)
    ref = w.reference
    ref_groups = group_keys(ref.images)
    scenarios: list[tuple[str, dict[str, float] | None, float]] = [("same", None, 0.0)]
    scenarios += [(f"tilt x{t:g} {args.tilted}", {args.tilted: t}, 0.0) for t in args.tilt_list]
    scenarios += [(f"new attribute {100 * args.new_share:g}%", None, args.new_share)]
    base = load_base(w)
    tilted = w.cats.index(args.tilted)
    base_share = base.train_category_counts[tilted] / max(sum(base.train_category_counts), 1)
    for name, weights, new_share in scenarios:
        for d in range(args.drift_draws):
            n_new = round(new_share * args.batch_records)
            picked = draw_products(w, rng, args.batch_records - n_new, ~w.novel, weights)
            if n_new:
                picked += draw_products(w, rng, n_new, w.novel, None)
            recs, out = subset(w, picked)
            groups = group_keys([r.image for r in recs])
            modes = [("products", groups, w.base_per_group, ref_groups)]
            if name == "same":
                modes.append(("images", None, 1.0, None))
            for mode, g, per, rg in modes:
                labels = label_drift(
                    load_base(w),
                    recs,
                    groups=g,
                    base_images_per_group=per,
                    alpha=cfg.alpha,
                    new_label_min_count=cfg.new_label_min_count,
                )
                feats = feature_drift(
                    ref.outputs.features,
                    out.features,
                    reference_groups=rg,
                    batch_groups=g,
                    alpha=cfg.alpha,
                    dims=cfg.feature_dims,
                    permutations=cfg.permutations,
                    seed=d,
                )
                report = drift_report(labels, feats, alpha=cfg.alpha)
                reasons = report["reasons"]
                rows.append(
                    {
                        "seed": w.seed,
                        "scenario": name,
                        "count": mode,
                        "draw": d,
                        "flagged": int(report["flagged"]),
                        "by_category": int(any(r.startswith("category") for r in reasons)),
                        "by_attribute": int(any("attribute(s) changed" in r for r in reasons)),
                        "by_new_label": int(any("new label" in r for r in reasons)),
                        "by_features": int(bool(feats.get("flagged"))),
                        "feature_p": feats.get("p_value", float("nan")),
                        "tilted_share": float(
                            np.mean([w.cats[r.category] == args.tilted for r in recs])
                        ),
                        "base_tilted_share": base_share,
                    }
                )
        log.progress(f"seed {w.seed}: drift scenario '{name}' done")
    return rows


_BASES: dict[str, Any] = {}


def load_base(w: World) -> Any:
    from fashion_attr.data.shards import load_manifest

    if w.base_uri not in _BASES:
        _BASES[w.base_uri] = load_manifest(w.base_uri)
    return _BASES[w.base_uri]


def tag_quality(w: World) -> dict[str, Any]:
    """The champion's tags on the batch pool (as if unlabelled) against the hidden labels."""
    pool = [i for i in range(len(w.records)) if not w.novel[i]]
    out = w.outputs.take(pool)
    base = load_base(w)
    attr = AttributeMetrics(
        [a.group for a in base.attributes],
        train_pos_counts=base.train_attribute_counts.positive,
        tail_threshold=30,
    )
    cat = CategoryMetrics(len(w.cats))
    y = np.zeros((len(pool), len(w.attrs)), np.float32)
    for k, i in enumerate(pool):
        y[k, list(w.records[i].positives)] = 1
    logits = np.log(np.clip(out.attr_probs, 1e-7, 1 - 1e-7) / np.clip(1 - out.attr_probs, 1e-7, 1))
    attr.update(torch.as_tensor(logits), torch.as_tensor(y))
    cat.update(
        torch.as_tensor(np.log(np.clip(out.cat_probs, 1e-12, 1))),
        torch.as_tensor([w.records[i].category for i in pool]),
    )
    m = {**attr.compute(), **cat.compute()}
    keys = ("cat_top1_acc", "attr_recall@3/all", "map/all")
    return {
        "seed": w.seed,
        "images": len(pool),
        **{f"tags {k}": m[k] for k in keys},
        **{f"test {k}": w.test_metrics[k] for k in keys},
    }


def end_to_end(w: World, args: argparse.Namespace, log: common.RunLog) -> dict[str, Any]:
    """The ingest and audit steps on one real JSON Lines batch (faults, unlabelled records)."""
    rng = np.random.default_rng([w.seed, 4])
    pool = [r for r in w.batch_pool if args.new_attribute not in {w.attrs[j] for j in r.positives}]
    idx = rng.permutation(len(pool))[: args.batch_records + args.batch_records // 10]
    chosen = [pool[int(i)] for i in idx]
    labelled, hidden = chosen[: args.batch_records], chosen[args.batch_records :]
    k = max(1, round(args.fault_rate * len(labelled)))
    flips = {labelled[int(i)].name for i in rng.permutation(len(labelled))[:k]}
    rows, drops = [], {}
    garments = [w.cats.index(g) for g in GARMENTS]
    for r in labelled:
        row = _jsonl_row(w.src, r, w.cats, w.attrs)
        if r.name in flips:
            row["category"] = w.cats[int(rng.choice([c for c in garments if c != r.category]))]
        elif len(drops) < k and r.positives and rng.random() < 0.2:
            j = int(rng.choice(r.positives))
            row["attributes"].remove(w.attrs[j])
            drops[row["image"]] = w.attrs[j]
        rows.append(row)
    rows += [_jsonl_row(w.src, r, w.cats, w.attrs, labelled=False) for r in hidden]
    drop = w.work / "drop"
    drop.mkdir(exist_ok=True)
    (drop / "2026-11-26.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    pre = load_config(PreprocessConfig, preset="tiny")
    with common.timer() as t_ingest:
        ing = preprocess.run(pre, w.dest, base=w.base_uri, batch=str(drop), progress=False)
    with common.timer() as t_audit:
        res = audit_step.run(
            load_config(
                AuditConfig, preset="tiny", overrides=[f"permutations={args.permutations}"]
            ),
            ing.uri,
            base=w.base_uri,
            champion=w.model,
            progress=False,
            tail_threshold=30,
        )
    issues = [json.loads(x) for x in Path(res.files["label_issues"]).read_text().splitlines()]
    flip_images = {str(w.src / "Img" / n) for n in flips}

    def hits(kind: str, truth: set[str]) -> float:
        listed = sorted(
            (i for i in issues if kind in i["issues"]), key=lambda i: -i["issues"][kind]
        )
        top = {i["image"] for i in listed[: len(truth)]}
        return len(top & truth) / max(len(truth), 1)

    tags = [json.loads(x) for x in Path(res.files["tags"]).read_text().splitlines()]
    truth = {str(w.src / "Img" / r.name): r for r in hidden}
    cat_ok = np.mean([t["category"] == w.cats[truth[t["image"]].category] for t in tags])
    pos = sum(len(truth[t["image"]].positives) for t in tags)
    hit3 = sum(
        len({e["name"] for e in t["top_k_all"]} & {w.attrs[j] for j in truth[t["image"]].positives})
        for t in tags
    )
    row = {
        "seed": w.seed,
        "records": res.records,
        "unlabelled": res.unlabelled,
        "ingest_s": t_ingest["s"],
        "audit_s": t_audit["s"],
        "images_per_s": res.images_per_s,
        "label_issues": res.label_issues,
        "flip_recall_at_k": hits("wrong_category", flip_images),
        "drop_recall_at_k": hits("missing_attributes", set(drops)),
        "drift_flagged": int(res.drift_flagged),
        "tags_cat_top1": float(cat_ok),
        "tags_attr_recall@3": hit3 / max(pos, 1),
    }
    log.progress(
        f"seed {w.seed}: end to end {res.records} records ({res.unlabelled} unlabelled), "
        f"audit {t_audit['s']:.1f} s, batch scoring {res.images_per_s:.0f} img/s"
    )
    return row


# --------------------------------------------------------------------------- speed


def speed(args: argparse.Namespace, log: common.RunLog) -> list[dict[str, Any]]:
    """Batch scoring alone: images/s of decode + forward + features for ``--arch``."""
    from fashion_attr.checkpoint import save_artifact
    from fashion_attr.classifier.export import export_blob
    from fashion_attr.classifier.model import build_classifier
    from fashion_attr.data.loader import fetch_shards
    from fashion_attr.data.shards import load_manifest
    from fashion_attr.demo.sources import demo_uri

    work = Path(tempfile.mkdtemp(prefix="fa-bench-audit-speed-"))
    pre = load_config(PreprocessConfig, overrides=[f"image_size={args.image_size}", "workers=2"])
    os.environ.setdefault("FA_CACHE_DIR", str(work / "cache"))
    ver = preprocess.run(
        pre, str(work / "d"), source=demo_uri(args.speed_images, 5), progress=False
    )
    m = load_manifest(ver.uri)
    torch.manual_seed(0)
    net = build_classifier(args.arch, m.num_attributes, m.num_categories, pretrained=None)
    blob = export_blob(
        net,
        arch=args.arch,
        config={},
        image_size=args.image_size,
        category_names=[c.name for c in m.categories],
        attribute_names=[a.name for a in m.attributes],
        attribute_groups=[a.group for a in m.attributes],
        train_pos_counts=m.train_attribute_counts.positive,
        dataset_version=m.version,
        val_metrics={},
        step=0,
    )
    save_artifact(work / "model.pt", blob)
    champ = load_champion(str(work / "model.pt"), args.device)
    shards = [
        (p, list(mem)) for s in ("train", "val", "test") for p, mem in fetch_shards(ver.uri, s)
    ]
    warm = [(shards[0][0], shards[0][1][: args.batch_size])]
    score_members(champ, warm, m.num_attributes, batch_size=args.batch_size, progress=False)
    rows = []
    for rep in range(2):
        if champ.device.type == "cuda":
            torch.cuda.synchronize()
        out = score_members(
            champ,
            shards,
            m.num_attributes,
            batch_size=args.batch_size,
            num_workers=args.workers,
            progress=False,
        )
        rows.append(
            {
                "arch": args.arch,
                "image_size": args.image_size,
                "device": str(champ.device),
                "threads": torch.get_num_threads(),
                "batch_size": args.batch_size,
                "workers": args.workers,
                "repeat": rep,
                "images": out.images,
                "seconds": out.seconds,
                "images_per_s": out.images_per_s,
            }
        )
        log.progress(
            f"speed {args.arch} {args.image_size}px on {champ.device}: {out.images} images in "
            f"{out.seconds:.1f} s = {out.images_per_s:.1f} img/s"
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------- summary


def _ms(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mu, sd = common.mean_std([scale * v for v in values])
    return f"{mu:.{digits}f} ± {sd:.{digits}f}"


def summarise(
    log: common.RunLog,
    args: argparse.Namespace,
    issues: list[dict[str, Any]],
    drift: list[dict[str, Any]],
    tags: list[dict[str, Any]],
    e2e: list[dict[str, Any]],
) -> None:
    seeds = ", ".join(str(s) for s in args.seed_list)
    log.print()
    log.print(
        f"## Label issues ({args.issue_draws} batches of {args.batch_records} records per seed, "
        f"seeds {seeds}; {100 * args.fault_rate:g} % category flips and {100 * args.fault_rate:g} "
        "% attribute drops each), %, mean ± std over the seeds' per-seed means"
    )
    header = [
        "fault",
        "injected per batch",
        "precision@k",
        "recall@k",
        "random@k",
        "precision (all listed)",
        "recall (all listed)",
        "listed per batch",
    ]
    rows = []
    for kind, label in (
        ("wrong_category", "category flip"),
        ("missing_attributes", "attribute drop"),
    ):
        per_seed = {
            key: [
                float(np.nanmean([r[key] for r in issues if r["kind"] == kind and r["seed"] == s]))
                for s in args.seed_list
            ]
            for key in (
                "injected",
                "precision_at_k",
                "recall_at_k",
                "random_at_k",
                "precision_listed",
                "recall_listed",
                "listed",
            )
        }
        rows.append(
            [
                label,
                f"{np.mean(per_seed['injected']):.0f}",
                _ms(per_seed["precision_at_k"]),
                _ms(per_seed["recall_at_k"]),
                _ms(per_seed["random_at_k"]),
                _ms(per_seed["precision_listed"]),
                _ms(per_seed["recall_listed"]),
                f"{np.mean(per_seed['listed']):.1f}",
            ]
        )
    log.print(common.format_table(header, rows))
    exact = [r["exact_attribute"] for r in issues if r["kind"] == "missing_attributes"]
    log.print(f"Dropped attribute named exactly among the suspected missing: {_ms(exact)} %")

    log.print()
    log.print(
        f"## Drift ({args.drift_draws} batches of {args.batch_records} records per scenario and "
        f"seed, seeds {seeds}; alpha {AuditConfig().alpha}), share of batches flagged, %"
    )
    header = [
        "scenario",
        "counting",
        f"{args.tilted} share (base {100 * drift[0]['base_tilted_share']:.0f} %)",
        "flagged",
        "category",
        "attribute",
        "new label",
        "features",
    ]
    rows = []
    keys = sorted({(r["scenario"], r["count"]) for r in drift}, key=lambda x: (x[0] != "same", x))
    for scen, mode in keys:
        rs = [r for r in drift if r["scenario"] == scen and r["count"] == mode]

        def share(key: str, rs=rs) -> str:
            per_seed = [np.mean([r[key] for r in rs if r["seed"] == s]) for s in args.seed_list]
            return _ms(per_seed)

        rows.append(
            [
                scen,
                mode,
                share("tilted_share"),
                share("flagged"),
                share("by_category"),
                share("by_attribute"),
                share("by_new_label"),
                share("by_features"),
            ]
        )
    log.print(common.format_table(header, rows))

    log.print()
    log.print("## Tags on unlabelled images vs the champion's test split, %")
    header = [
        "seed",
        "images",
        "category top-1: tags / test",
        "attr top-3 recall: tags / test",
        "mAP: tags / test",
    ]
    rows = [
        [
            t["seed"],
            t["images"],
            f"{100 * t['tags cat_top1_acc']:.1f} / {100 * t['test cat_top1_acc']:.1f}",
            f"{100 * t['tags attr_recall@3/all']:.1f} / {100 * t['test attr_recall@3/all']:.1f}",
            f"{100 * t['tags map/all']:.1f} / {100 * t['test map/all']:.1f}",
        ]
        for t in tags
    ]
    log.print(common.format_table(header, rows))

    log.print()
    log.print("## End to end (ingest + audit steps on one JSON Lines batch per seed)")
    header = ["seed", "records", "unlabelled", "ingest s", "audit s", "batch scoring img/s",
              "label issues", "flip R@k %", "drop R@k %", "drift flagged",
              "tags cat top-1 %", "tags attr top-3 recall %"]  # fmt: skip
    rows = [
        [
            e["seed"],
            e["records"],
            e["unlabelled"],
            f"{e['ingest_s']:.1f}",
            f"{e['audit_s']:.1f}",
            f"{e['images_per_s']:.0f}",
            e["label_issues"],
            f"{100 * e['flip_recall_at_k']:.0f}",
            f"{100 * e['drop_recall_at_k']:.0f}",
            e["drift_flagged"],
            f"{100 * e['tags_cat_top1']:.1f}",
            f"{100 * e['tags_attr_recall@3']:.1f}",
        ]
        for e in e2e
    ]
    log.print(common.format_table(header, rows))


def _csv(path: Path, rows: list[dict[str, Any]], meta: dict[str, str]) -> None:
    if rows:
        header = list(rows[0])
        common.write_csv(path, header, [[r[h] for h in header] for r in rows], meta)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.resolve_device(args.device, args.threads)
    args.device = str(device)
    log = common.RunLog(SCRIPT, device)
    log.header()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FA_PROGRESS", "off")
    if args.speed_only:
        rows = speed(args, log)
        _csv(out / "speed.csv", rows, log.meta)
        log.write_summary(out / "speed.md", "Batch scoring speed")
        return 0
    issues: list[dict[str, Any]] = []
    drift: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    e2e: list[dict[str, Any]] = []
    for seed in args.seed_list:
        t0 = time.perf_counter()
        w = build_world(args, seed, log)
        issues += issue_draws(w, args, log)
        drift += drift_draws(w, args, log)
        tags.append(tag_quality(w))
        e2e.append(end_to_end(w, args, log))
        for name, rows in (("issues", issues), ("drift", drift), ("tags", tags), ("e2e", e2e)):
            _csv(out / f"{name}.csv", rows, log.meta)
        if not args.keep:
            shutil.rmtree(w.work, ignore_errors=True)
        log.progress(f"seed {seed} done in {time.perf_counter() - t0:.0f} s")
    summarise(log, args, issues, drift, tags, e2e)
    log.print(f"# total wall time {log.elapsed():.0f} s")
    log.write_summary(out / "summary.md", "Batch audit on demo catalog batches")
    log.print(f"# wrote {out}/summary.md, issues.csv, drift.csv, tags.csv, e2e.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
