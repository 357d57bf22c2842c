"""What becomes of flagged records: ``audit.label_issues = report | exclude | downweight``.

- ``report`` (the default): nothing changes; the issues are listed for a person.
- ``exclude``: the flagged *train* records are left out of a derived version.
- ``downweight``: a flagged train record keeps its undisputed labels; its disputed
  attribute labels become *unknown*, so they weigh nothing in the loss (HABP masks
  unknown nodes, docs/method.md section 1) while the rest of the record still trains.
  A disputed category cannot be masked (every trained record has one), so a record
  with a ``wrong_category`` issue is left out, as under ``exclude``.

Val and test records are only ever reported: leaving out the records the champion
disputes would make the test split easier for models that agree with the champion,
and the promotion gate compares the challenger with that very champion there.

A derived version is a version like any other (``<dest>/<id>/manifest.json``), whose
base is the audited version: it references every shard it does not change in place
and rewrites only the shards that hold an affected record. It says what it left out:
its manifest lists each excluded record under ``skipped`` with the reason, and
``audit_policy.json`` beside it (written before the manifest) records the policy, the
audited version, the label-issue file and every excluded or masked record. Its id
hashes the audited version, the policy and those records, so a rerun is a no-op.
"""

from __future__ import annotations

import gzip
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fashion_attr import storage
from fashion_attr.audit.issues import IssueSearch
from fashion_attr.audit.records import BatchSet, norm_uri
from fashion_attr.data.ingest.engine import (
    IngestSettings,
    delete_quietly,
    iter_index,
    read_index,
    relative_ref,
    remove_empty_local_dir,
    version_id,
    write_manifest,
)
from fashion_attr.data.shards import (
    MANIFEST_NAME,
    SPLITS,
    BaseRef,
    ShardWriter,
    iter_shard_samples,
    load_manifest,
    resolve_shard_uri,
    shard_name,
)

__all__ = ["POLICIES", "POLICY_FORMAT", "POLICY_NAME", "PolicyOutcome", "apply_policy"]

POLICIES = ("report", "exclude", "downweight")
POLICY_NAME = "audit_policy.json"
POLICY_FORMAT = "fashion-attr-audit-policy/1"


@dataclass
class PolicyOutcome:
    """The version training should use after the policy, and what the policy did.

    Attributes:
        policy: ``report``, ``exclude`` or ``downweight``.
        version: The version to train on (the audited one, or the derived one).
        uri: Its folder.
        derived: Whether ``version`` is a version the policy made.
        created: Whether this call wrote it (False: it existed, or none was needed).
        excluded: The records left out (``image``, ``key``, ``issue``, ``score``).
        masked: The records whose disputed attribute labels became unknown.
        record: ``audit_policy.json`` of a derived version, else None.
    """

    policy: str
    version: str
    uri: str
    derived: bool = False
    created: bool = False
    excluded: list[dict[str, Any]] = field(default_factory=list)
    masked: list[dict[str, Any]] = field(default_factory=list)
    record: str | None = None


def _plan(
    policy: str, search: IssueSearch, attribute_names: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Which train records to exclude and which labels to mask, keyed by sample key."""
    index = {name: j for j, name in enumerate(attribute_names)}
    excluded: dict[str, dict[str, Any]] = {}
    masked: dict[str, dict[str, Any]] = {}
    for issue in search.issues:
        rec = issue.record
        if rec.split != "train":
            continue
        what = {"image": rec.image, "key": rec.key, "issue": issue.issue, "score": issue.score}
        if policy == "exclude" or "wrong_category" in issue.scores:
            excluded[rec.key] = what
            continue
        names = [e["name"] for e in [*issue.missing, *issue.spurious]]
        masked[rec.key] = {
            **what,
            "attributes": names,
            "indices": sorted({index[n] for n in names}),
        }
    return excluded, masked


def apply_policy(
    policy: str,
    search: IssueSearch,
    batch: BatchSet,
    dest: str,
    *,
    label_issues_uri: str | None = None,
    shard_max_samples: int | None = None,
    shard_max_bytes: int | None = None,
) -> PolicyOutcome:
    """Apply ``policy`` to the audited version's flagged train records.

    Args:
        policy: ``report``, ``exclude`` or ``downweight``.
        search: The label issues found.
        batch: The audited records (their shards are local).
        dest: Where versions live (the derived version goes there).
        label_issues_uri: The ``label_issues.jsonl`` the record points to.
        shard_max_samples: Samples per rewritten shard (default: the audited version's).
        shard_max_bytes: Bytes per rewritten shard (default: the audited version's).

    Returns:
        The :class:`PolicyOutcome`.

    Raises:
        ValueError: an unknown policy (names the allowed ones).
    """
    if policy not in POLICIES:
        raise ValueError(f"audit.label_issues = {policy!r}. Fix: use one of {', '.join(POLICIES)}")
    manifest, version_uri = batch.manifest, batch.version_uri
    same = PolicyOutcome(policy, manifest.version, version_uri)
    if policy == "report":
        return same
    attribute_names = [a.name for a in manifest.attributes]
    excluded, masked = _plan(policy, search, attribute_names)
    if not excluded and not masked:
        return same
    derived = version_id(
        {
            "from": manifest.version,
            "policy": policy,
            "excluded": sorted(excluded),
            "masked": sorted((k, v["indices"]) for k, v in masked.items()),
        }
    )
    derived_uri = storage.join(dest, derived)
    record_uri = storage.join(derived_uri, POLICY_NAME)
    outcome = PolicyOutcome(
        policy,
        derived,
        derived_uri,
        derived=True,
        excluded=list(excluded.values()),
        masked=[{k: v for k, v in m.items() if k != "indices"} for m in masked.values()],
        record=record_uri,
    )
    if storage.exists(storage.join(derived_uri, MANIFEST_NAME)):
        return outcome
    _write_derived(
        batch,
        derived,
        derived_uri,
        excluded,
        masked,
        policy=policy,
        label_issues_uri=label_issues_uri,
        record={
            "format": POLICY_FORMAT,
            "policy": policy,
            "from_version": manifest.version,
            "from_uri": version_uri,
            "label_issues": label_issues_uri,
            "excluded": outcome.excluded,
            "masked": outcome.masked,
        },
        shard_max_samples=shard_max_samples,
        shard_max_bytes=shard_max_bytes,
    )
    outcome.created = True
    return outcome


def _write_derived(
    batch: BatchSet,
    derived: str,
    derived_uri: str,
    excluded: dict[str, dict[str, Any]],
    masked: dict[str, dict[str, Any]],
    *,
    policy: str,
    label_issues_uri: str | None,
    record: dict[str, Any],
    shard_max_samples: int | None,
    shard_max_bytes: int | None,
) -> None:
    manifest, version_uri = batch.manifest, batch.version_uri
    settings = IngestSettings(**manifest.settings)
    local = {norm_uri(uri): path for path, uri in batch.shards}
    affected = {
        norm_uri(batch.shards[r.shard][1])
        for r in batch.records
        if r.key in excluded or r.key in masked
    }
    n_attr = manifest.num_attributes
    pos = np.asarray(manifest.train_attribute_counts.positive, np.int64)
    neg = np.asarray(manifest.train_attribute_counts.negative, np.int64)
    unk = np.asarray(manifest.train_attribute_counts.unknown, np.int64)
    cat = np.asarray(manifest.train_category_counts, np.int64)
    counts = dict(manifest.counts)
    moved: dict[str, str] = {}  # key -> the derived shard now holding it
    writers: dict[str, ShardWriter] = {}
    shards: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        for split in SPLITS:
            for entry in manifest.shards.get(split, []):
                uri = resolve_shard_uri(version_uri, entry.uri)
                if norm_uri(uri) not in affected:
                    shards[split].append(
                        {**entry.model_dump(), "uri": relative_ref(derived_uri, uri)}
                    )
                    continue
                for key, jpeg, meta in iter_shard_samples(local[norm_uri(uri)]):
                    if key in excluded:
                        counts[split] -= 1
                        if split == "train":
                            p = np.zeros(n_attr, bool)
                            p[meta["positives"]] = True
                            u = np.zeros(n_attr, bool)
                            u[meta["unknown"]] = True
                            pos -= p
                            unk -= u
                            neg -= ~p & ~u
                            cat[int(meta["category"])] -= 1
                        continue
                    if key in masked:
                        idx = [j for j in masked[key]["indices"] if j not in meta["unknown"]]
                        if split == "train":
                            for j in idx:
                                if j in meta["positives"]:
                                    pos[j] -= 1
                                else:
                                    neg[j] -= 1
                                unk[j] += 1
                        meta = {
                            **meta,
                            "positives": [j for j in meta["positives"] if j not in idx],
                            "unknown": sorted({*meta["unknown"], *idx}),
                        }
                    writer = writers.get(split)
                    if writer is None:
                        writer = writers[split] = ShardWriter(
                            derived_uri,
                            split,
                            0,
                            max_samples=shard_max_samples or settings.shard_max_samples,
                            max_bytes=shard_max_bytes or settings.shard_max_bytes,
                        )
                    writer.add(key, jpeg, meta)
                    moved[key] = shard_name(split, 0, len(writer.written))
        for split, writer in writers.items():
            writer.close()
            shards[split] += [
                {"uri": w.name, "samples": w.samples, "bytes": w.bytes, "sha256": w.sha256}
                for w in writer.written
            ]
        index_bytes, entries = _filtered_index(manifest, version_uri, excluded, moved)
        reasons = {
            k: f"audit: excluded by audit.label_issues={policy} ({v['issue']}, score "
            f"{v['score']:.3f}); see {label_issues_uri or 'label_issues.jsonl'}"
            for k, v in excluded.items()
        }
        storage.write_text(
            storage.join(derived_uri, POLICY_NAME), json.dumps(record, indent=1) + "\n"
        )
        write_manifest(
            version=derived,
            version_uri=derived_uri,
            source=manifest.source,
            settings=settings,
            categories=[c.model_dump() for c in manifest.categories],
            attributes=[a.model_dump() for a in manifest.attributes],
            totals={
                "counts": {s: counts[s] for s in SPLITS if counts.get(s)},
                "train_attribute_counts": {
                    "positive": pos.tolist(),
                    "negative": neg.tolist(),
                    "unknown": unk.tolist(),
                },
                "train_category_counts": cat.tolist(),
                "skipped": [s.model_dump() for s in manifest.skipped]
                + [{"image": v["image"], "reason": reasons[k]} for k, v in excluded.items()],
            },
            shards={s: v for s, v in shards.items() if v},
            index_bytes=index_bytes,
            index_entries=entries,
            batch=None,
            base=BaseRef(version=manifest.version, uri=version_uri),
        )
    except BaseException:
        if not storage.exists(storage.join(derived_uri, MANIFEST_NAME)):
            for writer in writers.values():
                writer.abort()
            names = [w.name for wr in writers.values() for w in wr.written]
            delete_quietly(
                storage.join(derived_uri, n) for n in [*names, POLICY_NAME, "index.jsonl.gz"]
            )
            remove_empty_local_dir(derived_uri)
        raise
    load_manifest(derived_uri)  # the written manifest validates (counts match the shards)


def _filtered_index(
    manifest: Any, version_uri: str, excluded: dict[str, Any], moved: dict[str, str]
) -> tuple[bytes, int]:
    """The audited version's content index without the excluded records.

    An excluded image sent again later with corrected labels must not be dropped as a
    duplicate of itself.
    """
    data = read_index(resolve_shard_uri(version_uri, manifest.index.uri), manifest.index.sha256)
    buf = io.BytesIO()
    n = 0
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for entry in iter_index(data):
            if entry["key"] in excluded:
                continue
            if entry["key"] in moved:
                entry = {**entry, "shard": moved[entry["key"]]}
            gz.write((json.dumps(entry, separators=(",", ":")) + "\n").encode())
            n += 1
    return buf.getvalue(), n
