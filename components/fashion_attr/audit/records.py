"""Which records a run folded in: the version's own shards since the base, and unlabelled ones.

A version made by folding batches into a base references the base's shards in place
and adds shards only for the batches' new images (:mod:`fashion_attr.data.ingest.batch`).
So the records a run added are exactly the samples of the shards the new version names
and the base does not, plus the unlabelled images each version of the chain lists in
its ``unlabelled.json``. Reading them needs no index and no guess: the manifests say it.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from fashion_attr import storage
from fashion_attr.data.ingest.batch import UNLABELLED_SPLIT, read_unlabelled_listing
from fashion_attr.data.loader import _fetch_one, _index_cached, default_cache_dir
from fashion_attr.data.shards import (
    SPLITS,
    Manifest,
    ManifestError,
    ShardEntry,
    ShardMember,
    load_manifest,
    resolve_shard_uri,
)

__all__ = [
    "AuditRecord",
    "BatchSet",
    "collect_batch",
    "group_keys",
    "norm_uri",
    "read_member_meta",
]


@dataclass(frozen=True)
class AuditRecord:
    """One record a run folded in (labelled or not), as the audit reads it.

    Attributes:
        index: Position of the record in the audit's arrays.
        key: The sample key in its shard.
        image: The image as the batch record gave it.
        split: ``train``, ``val``, ``test``, or ``unlabelled``.
        labelled: Whether the record has a category (unlabelled: neither label).
        category: 0-based category, or None for an unlabelled record.
        positives: Positive attribute indices.
        unknown: Attribute indices with an unknown label.
        version: The version whose shards hold the record.
        batch: The batch the record came from (a ``.jsonl`` file or a folder), if known.
        line: The record's line in a ``.jsonl`` batch, if known.
        shard: Index into :attr:`BatchSet.shards` of the record's shard.
        member: The record's two tar members.
        attributes_labelled: Whether any attribute label is known (False for an
            unlabelled record and for one that gave its category alone).
    """

    index: int
    key: str
    image: str
    split: str
    labelled: bool
    category: int | None
    positives: tuple[int, ...]
    unknown: tuple[int, ...]
    version: str
    batch: str | None
    line: int | None
    shard: int
    member: ShardMember
    attributes_labelled: bool = True


@dataclass
class BatchSet:
    """The records a run folded into ``version`` since ``base``.

    Attributes:
        version_uri: The audited (new) version.
        manifest: Its manifest.
        base_uri: The version the run started from.
        base_manifest: Its manifest.
        chain: Manifests from the new version down to (not including) the base.
        records: Every new record, labelled first (in shard order), then unlabelled.
        shards: ``(local path, shard URI)`` of each shard that holds new records.
    """

    version_uri: str
    manifest: Manifest
    base_uri: str
    base_manifest: Manifest
    chain: list[Manifest]
    records: list[AuditRecord] = field(default_factory=list)
    shards: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def batches(self) -> list[str]:
        """The batches folded in since the base, oldest first."""
        return [m.batch for m in reversed(self.chain) if m.batch]

    @property
    def labelled(self) -> list[AuditRecord]:
        """The records with labels (a category at least)."""
        return [r for r in self.records if r.labelled]

    @property
    def unlabelled(self) -> list[AuditRecord]:
        """The records without labels."""
        return [r for r in self.records if not r.labelled]

    def shard_members(self, records: Sequence[AuditRecord]) -> list[tuple[Path, list[ShardMember]]]:
        """``(path, members)`` for a :class:`~fashion_attr.data.loader.ShardDataset`, in order.

        The samples come out in the order of ``records`` (one pseudo-shard per run of
        records that share a shard).
        """
        out: list[tuple[Path, list[ShardMember]]] = []
        for rec in records:
            path = self.shards[rec.shard][0]
            if out and out[-1][0] == path:
                out[-1][1].append(rec.member)
            else:
                out.append((path, [rec.member]))
        return out


def group_keys(images: Sequence[str], by: str = "folder", max_group_size: int = 50) -> list[str]:
    """The product each image belongs to, for tests that must count products, not images.

    A catalog photographs a product several times and labels the product: its images
    share labels and look alike, so counting them as independent observations makes a
    test far too sure of itself. DeepFashion-C keeps a product's images in one folder
    (``img/<Item_Folder>/img_00000001.jpg``), so ``by="folder"`` groups images by their
    folder; a folder with more than ``max_group_size`` images is a catalog's flat
    image folder, not a product, and its images count alone. ``by="image"``: one
    group per image.
    """
    if by == "image":
        return list(images)
    folders = [posixpath.dirname(i) for i in images]
    sizes = Counter(folders)
    return [
        f if f and sizes[f] <= max_group_size else i for f, i in zip(folders, images, strict=True)
    ]


def norm_uri(uri: str) -> str:
    """A shard URI in one spelling (absolute local path, or the ``s3://`` URI)."""
    return uri if storage.is_s3(uri) else os.path.abspath(uri)


def _chain(version_uri: str, base_uri: str) -> tuple[list[Manifest], list[str], Manifest]:
    """Manifests (and their URIs) from ``version_uri`` down to, not including, the base."""
    base = load_manifest(base_uri)
    chain: list[Manifest] = []
    uris: list[str] = []
    current: str | None = version_uri
    while current is not None:
        manifest = load_manifest(current)
        if manifest.version == base.version:
            return chain, uris, base
        chain.append(manifest)
        uris.append(current)
        current = manifest.base.uri if manifest.base is not None else None
    raise ManifestError(
        f"base {base.version} ({base_uri}) is not in the lineage of {chain[0].version} "
        f"({version_uri}): the audit reads what a run folded into its base. Fix: pass the "
        "version the run started from (the preprocess result's 'base')"
    )


def _jsonl_lines(batch: str) -> dict[str, int]:
    """The line of each image of a ``.jsonl`` batch (best effort: a message aid, never an error)."""
    if not batch.endswith(".jsonl"):
        return {}
    out: dict[str, int] = {}
    try:
        with storage.open_text(batch) as fh:
            for line_no, text in enumerate(fh, start=1):
                try:
                    image = json.loads(text).get("image")
                except (ValueError, AttributeError):
                    continue
                if isinstance(image, str):
                    out.setdefault(image, line_no)
    except (OSError, ValueError, storage.StorageError):
        return {}
    return out


def read_member_meta(path: Path, member: ShardMember) -> dict[str, Any]:
    """The label record of one sample of a local shard."""
    with open(path, "rb") as fh:
        fh.seek(member.json_offset)
        return cast(dict[str, Any], json.loads(fh.read(member.json_size)))


def collect_batch(
    version_uri: str, base_uri: str, *, cache_dir: str | os.PathLike[str] | None = None
) -> BatchSet:
    """Find the records ``version_uri`` added on top of ``base_uri`` (shards fetched locally).

    Args:
        version_uri: The version the run published.
        base_uri: The version the run started from (an ancestor of ``version_uri``).
        cache_dir: Where remote shards are cached (default: the loader's cache).

    Returns:
        The :class:`BatchSet` (empty records when the run folded nothing in).

    Raises:
        ManifestError: a version has no valid manifest, or the base is not an ancestor.
        ShardFormatError: a shard fails its checksum or holds unsafe members.
    """
    version_uri, base_uri = version_uri.rstrip("/"), base_uri.rstrip("/")
    chain, chain_uris, base = _chain(version_uri, base_uri)
    manifest = load_manifest(version_uri)
    out = BatchSet(version_uri, manifest, base_uri, base, chain)
    if not chain:
        return out
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base_shards = {
        norm_uri(resolve_shard_uri(base_uri, e.uri)) for es in base.shards.values() for e in es
    }
    # Which version owns a shard: its folder. Each version's batch gives file and lines.
    owner = {norm_uri(u): m for u, m in zip(chain_uris, chain, strict=True)}
    lines = {m.version: _jsonl_lines(m.batch) if m.batch else {} for m in chain}

    def add_shard(uri: str, entry: ShardEntry, split: str, version: Manifest) -> None:
        path = _fetch_one(uri, entry, cache)
        members = _index_cached(path, entry, uri, cache)
        out.shards.append((path, uri))
        for member in members:
            meta = read_member_meta(path, member)
            labelled = split != UNLABELLED_SPLIT and int(meta.get("category", -1)) >= 0
            image = str(meta.get("image", ""))
            out.records.append(
                AuditRecord(
                    index=len(out.records),
                    key=member.key,
                    image=image,
                    split=split,
                    labelled=labelled,
                    category=int(meta["category"]) if labelled else None,
                    positives=tuple(int(j) for j in meta.get("positives", [])),
                    unknown=tuple(int(j) for j in meta.get("unknown", [])),
                    version=version.version,
                    batch=version.batch,
                    line=lines.get(version.version, {}).get(image),
                    shard=len(out.shards) - 1,
                    member=member,
                    attributes_labelled=labelled
                    and len(meta.get("unknown", [])) < manifest.num_attributes,
                )
            )

    for split in SPLITS:
        if not manifest.shards.get(split):
            continue
        for uri, entry in manifest.shard_uris(version_uri, split):
            if norm_uri(uri) in base_shards:
                continue
            folder = norm_uri(uri).rsplit("/", 1)[0]
            add_shard(uri, entry, split, owner.get(folder, manifest))
    for version, uri in zip(chain, chain_uris, strict=True):
        listing = read_unlabelled_listing(uri)
        for raw in (listing or {}).get("shards", []):
            entry = ShardEntry(**raw)
            add_shard(resolve_shard_uri(uri, entry.uri), entry, UNLABELLED_SPLIT, version)
    # Labelled first (they carry the statistics), then unlabelled; indices follow the order.
    ordered = [r for r in out.records if r.labelled] + [r for r in out.records if not r.labelled]
    out.records = [replace(r, index=i) for i, r in enumerate(ordered)]
    return out
