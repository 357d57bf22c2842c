"""Incremental ingest: fold a catalog batch into a base version (scheduled retraining).

``base`` (a version) plus ``batch`` (a DeepFashion-C-layout folder or a ``.jsonl``
catalog file) gives a new version whose manifest references the base's shards in
place and adds shards only for new images, deduplicated by the sha256 of the image
bytes against the base's index. The version id hashes the base version, the batch
(its file, or its annotation files), the content of its images and the settings; an
incremental version keeps its base's image format.

Unlabelled records of a ``.jsonl`` batch (no category, no attributes) are cropped and
resized like the others but written to their own shards, ``unlabelled-<part>-<n>.tar``,
listed in ``<version>/unlabelled.json`` (:data:`UNLABELLED_NAME`, written before the
manifest) and nowhere in the manifest: the loader, the trainers and the evaluation never
see them, so they can never be read as negatives. They are not in the content-hash index
either, so a later batch that brings the same image *with* labels is not dropped as a
duplicate. The batch audit (:mod:`fashion_attr.audit`) tags them with the champion.

A batch whose images are largely missing or undecodable is refused
(``max_skipped_fraction``): the message names the first missing paths and the likely
fix, and nothing is published (the shards this run wrote are removed).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any, cast

from fashion_attr import storage
from fashion_attr.data.annotations import BBOX, Attribute, Category, load_annotations
from fashion_attr.data.catalog import read_catalog_jsonl
from fashion_attr.data.fingerprints import content_digest, content_digest_of_tree, hash_objects
from fashion_attr.data.ingest.engine import (
    IngestError,
    IngestResult,
    IngestSettings,
    Task,
    _PartOutput,
    delete_quietly,
    find_line,
    hash_annotation_dir,
    hash_stream,
    ingest_tasks,
    iter_index,
    opener,
    read_index,
    relative_ref,
    remove_empty_local_dir,
    sum_accumulated,
    version_id,
    write_manifest,
)
from fashion_attr.data.shards import (
    MANIFEST_NAME,
    SPLITS,
    BaseRef,
    Manifest,
    load_manifest,
    resolve_shard_uri,
)
from fashion_attr.data.versions import version_uri as resolve_version_uri

__all__ = [
    "DEFAULT_MAX_SKIPPED_FRACTION",
    "UNLABELLED_FORMAT",
    "UNLABELLED_NAME",
    "UNLABELLED_SPLIT",
    "check_skipped",
    "ingest_batch",
    "read_unlabelled_listing",
]

#: The listing of a version's unlabelled shards (beside ``manifest.json``).
UNLABELLED_NAME = "unlabelled.json"
UNLABELLED_FORMAT = "fashion-attr-unlabelled/1"
#: Shard-name prefix of unlabelled images (never a split of the manifest).
UNLABELLED_SPLIT = "unlabelled"
#: Refuse a batch when more than this share of its records is missing or undecodable
#: (a policy, not a measured figure: a catalog export with a few broken links still trains).
DEFAULT_MAX_SKIPPED_FRACTION = 0.05
#: Missing paths a refusal names.
_FIRST_PATHS = 5


def ingest_batch(
    dest: str | os.PathLike[str],
    *,
    base: str,
    batch: str | os.PathLike[str],
    image_size: int | None = None,
    jpeg_quality: int | None = None,
    shard_max_samples: int = 1000,
    shard_max_bytes: int = 64 << 20,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION,
) -> IngestResult:
    """Fold one catalog batch into ``base``: a new version = base + the batch's new images.

    Args:
        dest: Where versions live.
        base: The version to extend: an id (``v-...``, looked up under ``dest``) or a
            version folder URI.
        batch: A ``.jsonl`` catalog file or a DeepFashion-C-layout batch folder.
        image_size: Must equal the base's when given (default: the base's).
        jpeg_quality: Must equal the base's when given (default: the base's).
        shard_max_samples: Samples per new shard.
        shard_max_bytes: Bytes per new shard.
        workers: Decode/encode processes.
        seed: Shuffle seed of the batch's records.
        progress: Show progress on stderr.
        max_skipped_fraction: Refuse the batch when more than this share of its records
            names a missing or undecodable image (duplicates do not count).

    Returns:
        The :class:`IngestResult` (``created=False`` when the version existed);
        ``unlabelled`` counts the records kept for the audit, ``notes`` say what a
        person should know (skipped images under the threshold, no labelled record).

    Raises:
        AnnotationError: a bad batch record (file and line in the message).
        IngestError: a missing batch, a format or label layout that differs from the base,
            or too many missing or undecodable images (nothing is published).
        ManifestError: the base version has no valid manifest.
    """
    dest, batch = str(dest), str(batch)
    if workers < 1:
        raise IngestError(f"workers = {workers}. Fix: pass --workers >= 1")
    base_uri = resolve_version_uri(dest, base)
    base_manifest = load_manifest(base_uri)
    base_settings = base_manifest.settings
    for name, value in (("image_size", image_size), ("jpeg_quality", jpeg_quality)):
        if value is not None and value != base_settings[name]:
            raise IngestError(
                f"{name} = {value} differs from the base version's {base_settings[name]} "
                f"({base_uri}); one version holds one image format. Fix: drop "
                f"--{name.replace('_', '-')} (it defaults to the base's)"
            )
    settings = IngestSettings(
        image_size=int(base_settings["image_size"]),
        jpeg_quality=int(base_settings["jpeg_quality"]),
        shard_max_samples=shard_max_samples,
        shard_max_bytes=shard_max_bytes,
        seed=seed,
    )
    is_jsonl = batch.endswith(".jsonl")
    if is_jsonl:
        try:
            batch_hash: Any = hash_stream(batch)
        except FileNotFoundError:
            raise IngestError(
                f"{batch}: batch file not found. Fix: pass an existing .jsonl file or folder"
            ) from None
    else:
        batch_hash = hash_annotation_dir(batch)
    categories = [Category(c.name, c.type) for c in base_manifest.categories]
    attributes = [Attribute(a.name, a.group) for a in base_manifest.attributes]
    tasks_src: list[Task] = []
    unlabelled_src: list[Task] = []
    if is_jsonl:
        batch_dir = batch.rsplit("/", 1)[0] if "/" in batch else "."
        with storage.open_text(batch) as fh:
            for rec in read_catalog_jsonl(fh, batch, categories, attributes):
                image = rec.image
                if not storage.is_s3(image) and not os.path.isabs(image):
                    image = storage.join(batch_dir, image)
                task = Task(
                    image_uri=image,
                    name=rec.image,
                    bbox=(
                        cast("tuple[int, int, int, int]", tuple(rec.bbox))
                        if rec.bbox is not None
                        else None
                    ),
                    bbox_file=batch,
                    bbox_line=rec.line,
                    split=rec.split,
                    category=rec.category if rec.category is not None else -1,
                    positives=tuple(rec.positives),
                    unknown=tuple(rec.unknown),
                )
                if rec.labelled:
                    tasks_src.append(task)
                else:
                    # Every attribute unknown and category -1: even a reader that took these
                    # shards for training data would mask them, never read negatives.
                    unlabelled_src.append(
                        replace(task, split=UNLABELLED_SPLIT, unknown=tuple(range(len(attributes))))
                    )
    else:
        dataset = load_annotations(opener(batch))
        _check_same_labels(base_manifest, dataset.categories, dataset.attributes, batch)
        img_root = storage.join(batch, "Img")
        for record in dataset.records:
            tasks_src.append(
                Task(
                    image_uri=storage.join(img_root, record.name),
                    name=record.name,
                    bbox=cast("tuple[int, int, int, int]", tuple(record.bbox)),
                    bbox_file=storage.join(batch, BBOX),
                    bbox_line=None,
                    split=record.split,
                    category=record.category,
                    positives=tuple(record.positives),
                    unknown=tuple(record.unknown),
                )
            )
    # The images' content enters the version: a fixed or replaced image is new data.
    if is_jsonl:
        images = content_digest(hash_objects(t.image_uri for t in [*tasks_src, *unlabelled_src]))
    else:
        images, _ = content_digest_of_tree(storage.join(batch, "Img"), dest)
    version = version_id(
        {
            "base": base_manifest.version,
            "batch": batch_hash,
            "images": images,
            "settings": asdict(settings),
        }
    )
    version_uri = storage.join(dest, version)
    if storage.exists(storage.join(version_uri, MANIFEST_NAME)):
        listing = read_unlabelled_listing(version_uri)
        return IngestResult(
            version,
            version_uri,
            load_manifest(version_uri),
            created=False,
            unlabelled=int(listing["count"]) if listing else 0,
        )
    order = list(range(len(tasks_src)))
    random.Random(settings.seed).shuffle(order)
    tasks = [tasks_src[j] for j in order]

    base_index = read_index(
        resolve_shard_uri(base_uri, base_manifest.index.uri), base_manifest.index.sha256
    )
    seen: dict[bytes, str] = {}
    used_keys: set[str] = set()
    for entry in iter_index(base_index):
        seen[bytes.fromhex(entry["sha256"])] = entry["image"]
        used_keys.add(entry["key"])
    out = ingest_tasks(
        tasks,
        total=len(tasks),
        version_uri=version_uri,
        part=0,
        settings=settings,
        workers=workers,
        n_attr=len(attributes),
        n_cat=len(categories),
        progress=progress,
        seen=seen,
        used_keys=used_keys,
        locate_line=lambda task: (
            find_line(task.bbox_file, task.name) if task.bbox_file.endswith(BBOX) else None
        ),
    )
    outputs = [out]
    try:
        unlabelled_out = None
        if unlabelled_src:
            # A copy of the content index: an unlabelled image already in the version is not
            # tagged twice, and the unlabelled ones never enter the version's index.
            unlabelled_out = ingest_tasks(
                unlabelled_src,
                total=len(unlabelled_src),
                version_uri=version_uri,
                part=0,
                settings=settings,
                workers=workers,
                n_attr=len(attributes),
                n_cat=len(categories),
                progress=progress,
                seen=dict(seen),
                used_keys=None,
            )
            outputs.append(unlabelled_out)
        notes = check_skipped(
            batch,
            [s for o in outputs for s in o.acc.skipped],
            tasks=[*tasks_src, *unlabelled_src],
            max_fraction=max_skipped_fraction,
        )
        unlabelled_count = unlabelled_out.index_entries if unlabelled_out is not None else 0
        if unlabelled_src and not tasks_src:
            notes.append(
                f"{batch}: all {len(unlabelled_src)} records are unlabelled: the version adds no "
                "training data; the audit tags them and ranks them for labelling"
            )
        elif unlabelled_src:
            notes.append(
                f"{batch}: {len(unlabelled_src)} unlabelled record(s) kept out of training "
                f"and evaluation ({unlabelled_count} stored for the audit's tags)"
            )
        if unlabelled_out is not None:
            _write_unlabelled_listing(version_uri, version, batch, unlabelled_out)
    except BaseException:
        _discard(version_uri, outputs)
        raise
    base_totals = {
        "counts": dict(base_manifest.counts),
        "train_attribute_counts": base_manifest.train_attribute_counts.model_dump(),
        "train_category_counts": list(base_manifest.train_category_counts),
        "skipped": [],
    }
    totals = sum_accumulated([base_totals, out.acc.to_json()])
    shards: dict[str, list[dict[str, Any]]] = {}

    def rebase(ref: str) -> str:
        return relative_ref(version_uri, resolve_shard_uri(base_uri, ref))

    for split in SPLITS:
        entries = [
            {**e.model_dump(), "uri": rebase(e.uri)} for e in base_manifest.shards.get(split, [])
        ]
        entries += out.shards.get(split, [])
        if entries:
            shards[split] = entries
    try:
        manifest = write_manifest(
            version=version,
            version_uri=version_uri,
            source=base_manifest.source,
            settings=settings,
            categories=[c.model_dump() for c in base_manifest.categories],
            attributes=[a.model_dump() for a in base_manifest.attributes],
            totals=totals,
            shards=shards,
            # gzip members concatenate into one valid stream: base entries, then the batch's.
            index_bytes=base_index + out.index_bytes,
            index_entries=base_manifest.index.entries + out.index_entries,
            batch=batch,
            base=BaseRef(version=base_manifest.version, uri=base_uri),
        )
    except BaseException:
        _discard(version_uri, outputs)
        raise
    return IngestResult(
        version,
        version_uri,
        manifest,
        created=True,
        unlabelled=unlabelled_count,
        notes=tuple(notes),
    )


def _check_same_labels(
    base: Manifest, categories: Sequence[Any], attributes: Sequence[Any], batch: str
) -> None:
    """A batch folder must define the same categories and attributes as the base version."""
    pairs: list[tuple[str, str, Sequence[Any], Sequence[Any], str]] = [
        ("Anno/list_category_cloth.txt", "category", base.categories, categories, "type"),
        ("Anno/list_attr_cloth.txt", "attribute", base.attributes, attributes, "group"),
    ]
    for rel, what, have, got, kind in pairs:
        got_list = [(g.name, int(getattr(g, kind))) for g in got]
        have_list = [(h.name, int(getattr(h, kind))) for h in have]
        if got_list == have_list:
            continue
        if len(got_list) != len(have_list):
            detail = f"it defines {len(got_list)} {what}s, the base {len(have_list)}"
        else:
            i = next(i for i, (g, h) in enumerate(zip(got_list, have_list, strict=True)) if g != h)
            detail = (
                f"{what} {i + 1} (line {i + 3}) is {got_list[i][0]!r} ({kind} {got_list[i][1]}), "
                f"the base has {have_list[i][0]!r} ({kind} {have_list[i][1]})"
            )
        raise IngestError(
            f"{storage.join(batch, rel)}: {detail}. A batch must use the base version's "
            f"{what}s in the same order. Fix: copy {rel} from the base's source ({base.source}) "
            "into the batch"
        )


def check_skipped(
    batch: str, skipped: Sequence[dict[str, str]], *, tasks: Sequence[Task], max_fraction: float
) -> list[str]:
    """Refuse a batch whose images are largely missing or undecodable; else note the skips.

    Duplicates (images the version already holds) are normal in re-delivered catalog
    exports and do not count; missing, undecodable and oversized images do. The batch
    is refused when every record is bad, or more than ``max_fraction`` of them (one bad
    record is always let through, with a note). Refusing costs a delay (the batch stays
    pending and the next run retries it, e.g. once an upload has finished); folding it
    in would mark its missing images done for good.

    Args:
        batch: the batch, named in the message.
        skipped: the skipped records of this ingest (``{"image", "reason"}``).
        tasks: every record of the batch (for its size, paths and lines).
        max_fraction: the largest share of bad records that is folded in.

    Returns:
        Notes for the log (empty when nothing was skipped for a bad image).

    Raises:
        IngestError: more than ``max_fraction`` of the records are bad; names the first
            missing paths (with their lines), the counts and the likely fix.
    """
    bad = [s for s in skipped if not s["reason"].startswith("duplicate")]
    if not bad:
        return []
    total = max(len(tasks), 1)
    by_name = {t.name: t for t in tasks}
    # File order (ingest shuffles the records): the first paths a person looks at are the
    # first lines of the file.
    order = {t.name: (t.bbox_line or 0, i) for i, t in enumerate(tasks)}
    bad = sorted(bad, key=lambda s: order.get(s["image"], (0, 0)))
    missing = [s for s in bad if s["reason"].startswith("missing")]
    other = len(bad) - len(missing)
    kinds = ", ".join(
        part
        for part, n in (
            (f"{len(missing)} missing", len(missing)),
            (f"{other} undecodable or too large", other),
        )
        if n
    )

    def where(s: dict[str, str]) -> str:
        task = by_name.get(s["image"])
        if task is None:
            return s["image"]
        line = f" (line {task.bbox_line})" if task.bbox_line else ""
        return f"{task.image_uri}{line}"

    first = ", ".join(where(s) for s in (missing or bad)[:_FIRST_PATHS])
    share = len(bad) / total
    # One broken link never blocks a batch; a batch that is all broken always is.
    allowed = max(1, math.floor(max_fraction * len(tasks)))
    if len(bad) <= allowed and len(bad) < len(tasks):
        return [
            f"{batch}: {len(bad)} of {len(tasks)} records skipped ({kinds}), within "
            f"max_skipped_fraction={max_fraction:g}; first: {first}"
        ]
    relative = any(not storage.is_s3(t.name) and not os.path.isabs(t.name) for t in tasks)
    if missing and len(missing) == len(bad) and relative:
        folder = batch.rsplit("/", 1)[0] if "/" in batch else "."
        fix = (
            f"relative image paths are read from the batch file's folder ({folder}): check that "
            "the images were copied there, or write absolute paths or s3:// URIs"
        )
    elif missing and storage.is_s3(tasks[0].image_uri):
        fix = "check the bucket and prefix of the image URIs and that the images were uploaded"
    elif missing:
        fix = "check that the image paths exist on this machine (or use s3:// URIs)"
    else:
        fix = "re-export the images (they do not decode as JPEG/PNG, or exceed the pixel limit)"
    raise IngestError(
        f"{batch}: {len(bad)} of {len(tasks)} records ({100 * share:.0f}%) name images that "
        f"cannot be used ({kinds}), more than max_skipped_fraction={max_fraction:g}; the batch "
        f"is refused and nothing was published. First: {first}. Likely fix: {fix}. To fold it "
        "in anyway, raise the threshold (--set max_skipped_fraction=...)"
    )


def _write_unlabelled_listing(version_uri: str, version: str, batch: str, out: _PartOutput) -> None:
    """Write ``unlabelled.json``: the unlabelled shards, their checksums and their images."""
    listing = {
        "format": UNLABELLED_FORMAT,
        "version": version,
        "batch": batch,
        "count": out.index_entries,
        "shards": out.shards.get(UNLABELLED_SPLIT, []),
        "skipped": out.acc.skipped,
    }
    storage.write_text(
        storage.join(version_uri, UNLABELLED_NAME), json.dumps(listing, indent=1) + "\n"
    )


def read_unlabelled_listing(version_uri: str) -> dict[str, Any] | None:
    """The ``unlabelled.json`` of a version, or None when its batch had no unlabelled record.

    Raises:
        IngestError: the listing exists but is not one (names it and the fix).
    """
    uri = storage.join(version_uri, UNLABELLED_NAME)
    try:
        data = json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise IngestError(
            f"{uri}: unreadable ({exc}). Fix: re-ingest the batch into a fresh version"
        ) from None
    if not isinstance(data, dict) or data.get("format") != UNLABELLED_FORMAT:
        raise IngestError(f"{uri}: not an unlabelled listing. Fix: re-ingest the batch")
    return data


def _discard(version_uri: str, outputs: Sequence[_PartOutput]) -> None:
    """Remove the shards (and listing) this run wrote: a refused batch leaves nothing behind."""
    if storage.exists(storage.join(version_uri, MANIFEST_NAME)):
        return  # a concurrent run published this very version: its manifest names them
    names = [e["uri"] for o in outputs for entries in o.shards.values() for e in entries]
    delete_quietly(
        [storage.join(version_uri, n) for n in [*names, UNLABELLED_NAME, "index.jsonl.gz"]]
    )
    remove_empty_local_dir(version_uri)
