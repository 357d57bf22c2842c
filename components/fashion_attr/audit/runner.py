"""The batch audit from end to end: read what a run folded in, score it, write what it teaches.

:func:`audit_version` is what the ``audit`` step runs (``python -m
fashion_attr.steps.audit``), in this order:

1. the records the new version added on top of its base
   (:func:`~fashion_attr.audit.records.collect_batch`); none: nothing to do;
2. the champion scores them, and a sample of the base's held-out (val, test) images
   as the reference (:mod:`~fashion_attr.audit.scoring`); no champion: the label
   drift alone;
3. label issues (:mod:`~fashion_attr.audit.issues`, thresholds from base val), drift
   (:mod:`~fashion_attr.audit.drift`), tags and the labelling queue
   (:mod:`~fashion_attr.audit.tags`);
4. the files, each written atomically: ``label_issues.jsonl``, ``drift.json``,
   ``tags.jsonl``, ``to_label.jsonl``, ``thumbnails/NN.jpg``, ``report.md`` and
   ``report.html`` (last);
5. the policy for flagged records (:mod:`~fashion_attr.audit.policy`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashion_attr import storage
from fashion_attr.audit.drift import drift_report, feature_drift, label_drift
from fashion_attr.audit.issues import (
    ISSUE_KINDS,
    IssueSearch,
    Thresholds,
    find_label_issues,
    thresholds_from_labelled,
)
from fashion_attr.audit.policy import PolicyOutcome, apply_policy
from fashion_attr.audit.records import BatchSet, collect_batch, group_keys, read_member_meta
from fashion_attr.audit.report import Report, Thumbnail, thumbnail_jpeg
from fashion_attr.audit.scoring import Champion, ChampionOutputs, load_champion, score_members
from fashion_attr.audit.tags import (
    labelling_queue,
    memory_from_checkpoint,
    memory_from_predictions,
    tag_records,
)
from fashion_attr.config import AuditConfig
from fashion_attr.data.ingest.engine import iter_index, read_index
from fashion_attr.data.loader import fetch_shards
from fashion_attr.data.shards import ShardMember, resolve_shard_uri

if TYPE_CHECKING:
    from fashion_attr.hardness import HardLabelMemory

__all__ = ["FILES", "AuditOutcome", "audit_version"]

#: The files the audit writes, by the name the result uses.
FILES = {
    "label_issues": "label_issues.jsonl",
    "drift": "drift.json",
    "tags": "tags.jsonl",
    "to_label": "to_label.jsonl",
    "report_md": "report.md",
    "report_html": "report.html",
}


@dataclass
class AuditOutcome:
    """What one audit found and wrote.

    Attributes:
        status: ``audited``, ``no-champion`` (label drift only) or ``nothing-new``.
        batch: The records audited.
        out: Where the files went.
        files: File name key -> URI of every file written (:data:`FILES`).
        thumbnails: The thumbnail files.
        search: The label issues (None without a champion).
        drift: The drift record (``drift.json``).
        tags: Records tagged.
        queue: Records in the labelling queue.
        policy: The policy's outcome (which version to train on).
        champion: The champion ``model.pt`` used.
        scored: Images the champion scored (batch and reference).
        images_per_s: Rate of the batch scoring pass.
        memory_source: Where the labelling queue's hardness came from.
        notes: What a person should know.
    """

    status: str
    batch: BatchSet
    out: str
    files: dict[str, str] = field(default_factory=dict)
    thumbnails: list[str] = field(default_factory=list)
    search: IssueSearch | None = None
    drift: dict[str, Any] = field(default_factory=dict)
    tags: int = 0
    queue: int = 0
    policy: PolicyOutcome | None = None
    champion: str | None = None
    scored: int = 0
    images_per_s: float = float("nan")
    memory_source: str = ""
    notes: list[str] = field(default_factory=list)
    thumbnail_jpegs: list[tuple[str, bytes]] = field(default_factory=list, repr=False)


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows)


def _group(pairs: Sequence[tuple[Path, ShardMember]]) -> list[tuple[Path, list[ShardMember]]]:
    out: list[tuple[Path, list[ShardMember]]] = []
    for path, member in pairs:
        if out and out[-1][0] == path:
            out[-1][1].append(member)
        else:
            out.append((path, [member]))
    return out


@dataclass
class _Reference:
    """The base's held-out images the champion scored, and the val part's labels."""

    outputs: ChampionOutputs
    images: list[str]
    val_rows: list[int]
    categories: list[int]
    targets: np.ndarray
    known: np.ndarray


def _reference(
    champion: Champion, batch: BatchSet, cfg: AuditConfig, cache_dir: Any, progress: bool
) -> _Reference | None:
    base = batch.base_manifest
    pairs: list[tuple[Path, ShardMember, str]] = []
    for split in ("val", "test"):
        if base.counts.get(split):
            for path, members in fetch_shards(batch.base_uri, split, cache_dir, base):
                pairs += [(path, m, split) for m in members]
    if not pairs:
        return None
    if len(pairs) > cfg.max_reference:
        pick = np.sort(
            np.random.default_rng(cfg.seed).choice(len(pairs), cfg.max_reference, replace=False)
        )
        pairs = [pairs[int(i)] for i in pick]
    outputs = score_members(
        champion,
        _group([(p, m) for p, m, _ in pairs]),
        base.num_attributes,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        progress=progress,
        label="audit: score the base's held-out reference,",
    )
    val_rows = [i for i, (_, _, s) in enumerate(pairs) if s == "val"]
    metas = [read_member_meta(path, member) for path, member, _ in pairs]
    n_attr = base.num_attributes
    categories, targets, known = [], np.zeros((len(val_rows), n_attr), np.int8), []
    for row, i in enumerate(val_rows):
        meta = metas[i]
        categories.append(int(meta["category"]))
        if meta["positives"]:
            targets[row, meta["positives"]] = 1
        k = np.ones(n_attr, bool)
        if meta["unknown"]:
            k[meta["unknown"]] = False
        known.append(k)
    return _Reference(
        outputs,
        [str(meta.get("image", "")) for meta in metas],
        val_rows,
        categories,
        targets,
        np.asarray(known, bool).reshape(len(val_rows), n_attr),
    )


def _base_images_per_group(batch: BatchSet, cfg: AuditConfig) -> float:
    """The base train split's mean images per product (from its content index)."""
    base = batch.base_manifest
    try:
        data = read_index(resolve_shard_uri(batch.base_uri, base.index.uri), base.index.sha256)
    except (ValueError, OSError):
        return 1.0  # an unreadable index: count images (the tests are then less strict)
    images = [e["image"] for e in iter_index(data) if e.get("split") == "train"]
    if not images:
        return 1.0
    return len(images) / len(set(group_keys(images, cfg.group_by, cfg.max_group_size)))


def _memory(
    champion: Champion, ref: _Reference | None, n_attr: int, n_cat: int
) -> tuple[HardLabelMemory | None, str]:
    """The hard-label memory: from the champion's training checkpoint, else rebuilt."""
    from fashion_attr.checkpoint import CHECKPOINT_NAME, load_artifact

    folder = champion.uri.rsplit("/", 1)[0] if "/" in champion.uri else "."
    checkpoint = storage.join(folder, CHECKPOINT_NAME)
    why = ""
    try:
        if storage.exists(checkpoint):
            memory = memory_from_checkpoint(load_artifact(checkpoint), n_attr, n_cat)
            if memory is not None:
                return memory, f"the hard-label memory of {checkpoint}"
    except (ValueError, RuntimeError, OSError) as exc:
        # Another layout or an unreadable file: the audit goes on with a rebuilt memory,
        # and says why (the report shows the memory's source).
        why = f" ({checkpoint} not usable: {exc})"
        print(f"audit: warning: {checkpoint} not usable ({exc}); rebuilding the hard-label "
              "memory from the champion's predictions", file=sys.stderr)  # fmt: skip
    if ref is not None and ref.val_rows:
        out = ref.outputs.take(ref.val_rows)
        memory = memory_from_predictions(
            out.cat_probs,
            out.attr_probs,
            ref.categories,
            ref.targets,
            ref.known,
            gamma=champion.gamma,
            momentum=champion.memory_momentum,
        )
        return memory, f"rebuilt from the champion on {len(ref.val_rows)} base val images{why}"
    return None, f"none (uncertainty alone){why}"


def audit_version(
    cfg: AuditConfig,
    version: str,
    base: str,
    *,
    champion: str | None,
    out: str | None = None,
    dest: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    tail_threshold: int = 100,
    progress: bool = True,
) -> AuditOutcome:
    """Audit what a run folded into ``version`` on top of ``base``.

    Args:
        cfg: The resolved :class:`~fashion_attr.config.AuditConfig`.
        version: The new version's folder (what the ingest published).
        base: The version the run started from.
        champion: The champion's ``model.pt`` (None: no champion yet).
        out: Where the files go (default ``<version>/audit``).
        dest: Where versions live, for a derived version (default: ``version``'s parent).
        cache_dir: Local shard cache.
        tail_threshold: Tail = fewer train positives than this.
        progress: Rate and ETA lines on stderr.

    Returns:
        The :class:`AuditOutcome`.

    Raises:
        ManifestError: a version has no valid manifest, or ``base`` is not its ancestor.
        ValueError: the champion is not a classifier export, or has another label layout.
    """
    batch = collect_batch(version, base, cache_dir=cache_dir)
    out = (out or storage.join(batch.version_uri, "audit")).rstrip("/")
    dest = dest or (batch.version_uri.rsplit("/", 1)[0] if "/" in batch.version_uri else ".")
    result = AuditOutcome(status="nothing-new", batch=batch, out=out)
    if not batch.records:
        result.policy = PolicyOutcome(cfg.label_issues, batch.manifest.version, batch.version_uri)
        result.notes.append(
            f"{batch.manifest.version} adds no record to {batch.base_manifest.version}: "
            "nothing to audit"
        )
        return result
    m = batch.manifest
    cats, attrs = [c.name for c in m.categories], [a.name for a in m.attributes]
    groups = [a.group for a in m.attributes]
    products = group_keys([r.image for r in batch.records], cfg.group_by, cfg.max_group_size)
    labels = label_drift(
        batch.base_manifest,
        batch.records,
        groups=products,
        base_images_per_group=_base_images_per_group(batch, cfg),
        new_manifest=m,
        alpha=cfg.alpha,
        new_label_min_count=cfg.new_label_min_count,
        tail_threshold=tail_threshold,
    )
    if not batch.labelled:
        result.notes.append(
            f"all {len(batch.records)} new records are unlabelled: no label issue or label "
            "drift to measure; they are tagged and queued for labelling"
        )
    if champion is None:
        result.status = "no-champion"
        result.drift = drift_report(labels, None, alpha=cfg.alpha)
        result.notes.append(
            "no champion yet: label issues, image drift and tags need one; the label drift "
            f"is reported, and the {len(batch.unlabelled)} unlabelled record(s) wait in "
            f"{batch.version_uri} for the next audit with a champion"
        )
        result.policy = PolicyOutcome(cfg.label_issues, m.version, batch.version_uri)
        _write(result, cfg, None, [], [], [])
        return result

    champ = load_champion(champion, cfg.device)
    champ.check_layout(m)
    result.status, result.champion = "audited", champ.uri
    scored = score_members(
        champ,
        batch.shard_members(batch.records),
        m.num_attributes,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        progress=progress,
        label="audit: score the batch,",
    )
    result.images_per_s = scored.images_per_s
    ref = _reference(champ, batch, cfg, cache_dir, progress)
    result.scored = scored.images + (ref.outputs.images if ref is not None else 0)

    # -- label issues ------------------------------------------------------------------
    if ref is not None and ref.val_rows:
        vo = ref.outputs.take(ref.val_rows)
        thresholds = thresholds_from_labelled(
            vo.cat_probs,
            vo.attr_probs,
            ref.categories,
            ref.targets,
            ref.known,
            source=f"champion on {len(ref.val_rows)} base val images",
        )
    else:
        nan_c, nan_a = np.full(len(cats), np.nan), np.full(len(attrs), np.nan)
        thresholds = Thresholds(nan_c, nan_a, nan_a, source="the batch itself (base has no val)")
    result.search = find_label_issues(
        batch.records,
        scored.cat_probs,
        scored.attr_probs,
        category_names=cats,
        attribute_names=attrs,
        thresholds=thresholds,
        filter_by=cfg.filter_by,
    )
    if result.search.uncalibrated:
        result.notes.append(
            f"{len(result.search.uncalibrated)} attribute(s) have no labelled example in base "
            "val or the batch to calibrate on; their labels were not judged"
        )

    # -- drift -------------------------------------------------------------------------
    features = (
        feature_drift(
            ref.outputs.features,
            scored.features,
            reference_groups=group_keys(ref.images, cfg.group_by, cfg.max_group_size),
            batch_groups=products,
            alpha=cfg.alpha,
            dims=cfg.feature_dims,
            permutations=cfg.permutations,
            max_images=cfg.max_reference,
            seed=cfg.seed,
        )
        if ref is not None
        else {"tested": False, "flagged": False, "note": "the base has no val or test images"}
    )
    result.drift = drift_report(labels, features, alpha=cfg.alpha)

    # -- tags and the labelling queue --------------------------------------------------
    rows = [r.index for r in batch.records if not r.attributes_labelled]
    todo = [batch.records[i] for i in rows]
    sub = scored.take(rows)
    tags = tag_records(
        todo,
        sub.cat_probs,
        sub.attr_probs,
        category_names=cats,
        attribute_names=attrs,
        attribute_groups=groups,
        threshold=cfg.tag_threshold,
        top_k=cfg.top_k,
    )
    memory, result.memory_source = _memory(champ, ref, len(attrs), len(cats))
    queue = labelling_queue(
        todo,
        sub.cat_probs,
        sub.attr_probs,
        category_names=cats,
        memory=memory,
        memory_source=result.memory_source,
    )
    result.tags, result.queue = len(tags), len(queue)
    issues = [i.to_json(rank) for rank, i in enumerate(result.search.issues, start=1)]
    _write(result, cfg, issues, tags, queue, _thumbs(batch, result.search, cfg.thumbnails))
    # The policy reads the issues just written (its record points at them).
    result.policy = apply_policy(
        cfg.label_issues,
        result.search,
        batch,
        dest,
        label_issues_uri=result.files["label_issues"],
    )
    _write_report(result, cfg)
    return result


def _thumbs(batch: BatchSet, search: IssueSearch, n: int) -> list[tuple[str, bytes]]:
    out = []
    for rank, issue in enumerate(search.issues[:n], start=1):
        r = issue.record
        with open(batch.shards[r.shard][0], "rb") as fh:
            fh.seek(r.member.jpg_offset)
            jpeg = fh.read(r.member.jpg_size)
        out.append((f"thumbnails/{rank:02d}.jpg", thumbnail_jpeg(jpeg)))
    return out


def _write(
    result: AuditOutcome,
    cfg: AuditConfig,
    issues: list[dict[str, Any]] | None,
    tags: list[dict[str, Any]],
    queue: list[dict[str, Any]],
    thumbs: list[tuple[str, bytes]],
) -> None:
    """Write the data files (each atomically); the report follows once the policy ran."""
    out = result.out
    files = {k: storage.join(out, v) for k, v in FILES.items()}
    if issues is not None:
        storage.write_text(files["label_issues"], _jsonl(issues))
        storage.write_text(files["tags"], _jsonl(tags))
        storage.write_text(files["to_label"], _jsonl(queue))
    storage.write_text(files["drift"], json.dumps(result.drift, indent=1) + "\n")
    for rel, jpeg in thumbs:
        storage.write_bytes(storage.join(out, rel), jpeg)
    result.thumbnails = [storage.join(out, rel) for rel, _ in thumbs]
    result.thumbnail_jpegs = list(thumbs)  # inlined by the HTML report
    result.files = {
        k: v
        for k, v in files.items()
        if issues is not None or k not in ("label_issues", "tags", "to_label")
    }
    if result.status == "no-champion":
        _write_report(result, cfg)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _write_report(result: AuditOutcome, cfg: AuditConfig) -> None:
    """``report.md`` and ``report.html`` (last: a reader that sees them sees every file)."""
    batch, drift, search = result.batch, result.drift, result.search
    m = batch.manifest
    rep = Report(f"Batch audit of {m.version} (base {batch.base_manifest.version})")
    policy = result.policy
    flagged = drift.get("flagged")
    summary = [
        f"batches folded in: {', '.join(f'`{b}`' for b in batch.batches) or 'n/a'}",
        f"records: {len(batch.labelled)} labelled, {len(batch.unlabelled)} unlabelled",
        f"champion: `{result.champion}`" if result.champion else "champion: none yet",
        f"drift: **{'FLAGGED' if flagged else 'not flagged'}**"
        + (f" ({'; '.join(drift['reasons'])})" if flagged else ""),
    ]
    if search is not None:
        counts = search.counts()
        summary.append(
            f"label issues: **{len(search.issues)}** of {search.records} labelled records ("
            + ", ".join(f"{k.replace('_', ' ')} {counts[k]}" for k in ISSUE_KINDS)
            + ")"
        )
        summary.append(f"tagged: {result.tags} image(s) without (all) labels")
    if policy is not None:
        if policy.derived:
            summary.append(
                f"policy `audit.label_issues={policy.policy}`: {len(policy.excluded)} train "
                f"record(s) left out, {len(policy.masked)} with disputed labels masked: train "
                f"on **{policy.version}** (`{policy.uri}`)"
            )
        else:
            summary.append(
                f"policy `audit.label_issues={policy.policy}`: train on {policy.version} "
                "as ingested"
            )
    rep.items(summary + [f"note: {n}" for n in result.notes])

    if search is not None:
        rep.heading("Top label issues")
        thumbs = dict(result.thumbnail_jpegs)
        rows = []
        for rank, issue in enumerate(search.issues[:25], start=1):
            line = issue.to_json(rank)
            rel = f"thumbnails/{rank:02d}.jpg"
            cell: Any = Thumbnail(rel, thumbs[rel], line["image"]) if rel in thumbs else ""
            sus = line["suspected"]
            suspected = "; ".join(
                part
                for part in (
                    f"category {sus['category']} ({_pct(sus['category_prob'])})"
                    if "category" in sus
                    else "",
                    "missing " + ", ".join(e["name"] for e in sus.get("missing_attributes", []))
                    if sus.get("missing_attributes")
                    else "",
                    "spurious " + ", ".join(e["name"] for e in sus.get("spurious_attributes", []))
                    if sus.get("spurious_attributes")
                    else "",
                )
                if part
            )
            given = f"{line['given']['category']}: {', '.join(line['given']['attributes']) or '-'}"
            where = f"{line['image']}" + (f" (line {line['line']})" if line["line"] else "")
            rows.append(
                [rank, cell, where, line["issue"], f"{line['score']:.3f}", given, suspected]
            )
        if rows:
            rep.table(["#", "image", "record", "issue", "score", "given", "suspected"], rows)
            rep.para(f"All {len(search.issues)} in `{result.files['label_issues']}`.")
        else:
            rep.para("The champion disputes no label of this batch.")

    _drift_section(rep, drift)
    if result.tags:
        rep.heading("Unlabelled images: tags and the labelling queue")
        rep.para(
            f"{result.tags} image(s) tagged in `{result.files['tags']}`; the labelling queue "
            f"(`{result.files['to_label']}`) ranks them by the champion's uncertainty weighted "
            f"by label hardness ({result.memory_source})."
        )
    rep.heading("Files")
    rep.items([f"{k}: `{v}`" for k, v in result.files.items() if k not in ("report_md",)])
    storage.write_text(result.files["report_md"], rep.markdown())
    storage.write_text(result.files["report_html"], rep.html())
    print(f"audit: wrote {len(result.files)} files to {result.out}", file=sys.stderr)


def _drift_section(rep: Report, drift: dict[str, Any]) -> None:
    labels, feats = drift.get("labels") or {}, drift.get("features")
    rep.heading("Drift against the base version")
    if labels.get("note"):
        rep.para(labels["note"])
    test = labels.get("category_test")
    if test:
        rep.para(
            f"Category mix: chi-square {test['chi2']:.1f} on {test['dof']} dof, "
            f"p = {test['p_value']:.3g}."
        )
        cats = sorted(labels["categories"], key=lambda c: c["q_value"] or 1.0)[:10]
        rep.table(
            ["category", "base share", "batch share", "p", "q (BH)"],
            [
                [
                    c["name"],
                    _pct(c["base_share"]),
                    _pct(c["batch_share"]),
                    f"{c['p_value']:.3g}",
                    f"{c['q_value']:.3g}",
                ]
                for c in cats
            ],
        )
    attrs = [a for a in labels.get("attributes", []) if a["q_value"] is not None]
    if attrs:
        top = sorted(attrs, key=lambda a: a["q_value"])[:10]
        rep.para("Attributes, most changed first (Fisher's exact test, BH-adjusted):")
        rep.table(
            ["attribute", "base rate", "batch rate", "batch positives", "p", "q (BH)"],
            [
                [
                    a["name"],
                    _pct(a["base_rate"]),
                    _pct(a["batch_rate"]),
                    a["batch_positives"],
                    f"{a['p_value']:.3g}",
                    f"{a['q_value']:.3g}",
                ]
                for a in top
            ],
        )
    lines = []
    if labels.get("new_labels"):
        lines.append(
            "new labels: "
            + ", ".join(f"{x['kind']} {x['name']} ({x['batch']}x)" for x in labels["new_labels"])
        )
    if labels.get("vanished_labels"):
        lines.append(
            "vanished labels: "
            + ", ".join(f"{x['kind']} {x['name']}" for x in labels["vanished_labels"])
        )
    tail = labels.get("tail")
    if tail:
        lines.append(
            f"tail set (< {tail['threshold']} train positives): {tail['before']} -> "
            f"{tail['after']} attributes; left: {', '.join(tail['left']) or 'none'}; joined: "
            f"{', '.join(tail['joined']) or 'none'}"
        )
    if feats and feats.get("tested"):
        lines.append(
            f"image features (champion's feature space, {feats['dims']} PCs): MMD^2 "
            f"{feats['mmd2']:.4g}, permutation p = {feats['p_value']:.3g} "
            f"({feats['batch']} batch vs {feats['reference']} base val/test images)"
        )
    elif feats:
        lines.append(f"image features: {feats.get('note', 'not tested')}")
    if lines:
        rep.items(lines)
