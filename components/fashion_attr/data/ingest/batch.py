"""Incremental ingest: fold a catalog batch into a base version (scheduled retraining).

``base`` (a version) plus ``batch`` (a DeepFashion-C-layout folder or a ``.jsonl``
catalog file) gives a new version whose manifest references the base's shards in
place and adds shards only for new images, deduplicated by the sha256 of the image
bytes against the base's index. The version id hashes the base version, the batch
(its file, or its annotation files), the content of its images and the settings; an
incremental version keeps its base's image format.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from fashion_attr import storage
from fashion_attr.data.annotations import BBOX, Attribute, Category, load_annotations
from fashion_attr.data.catalog import read_catalog_jsonl
from fashion_attr.data.fingerprints import content_digest, content_digest_of_tree, hash_objects
from fashion_attr.data.ingest.engine import (
    IngestError,
    IngestResult,
    IngestSettings,
    Task,
    find_line,
    hash_annotation_dir,
    hash_stream,
    ingest_tasks,
    iter_index,
    opener,
    read_index,
    relative_ref,
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

__all__ = ["ingest_batch"]


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

    Returns:
        The :class:`IngestResult` (``created=False`` when the version existed).

    Raises:
        AnnotationError: a bad batch record (file and line in the message).
        IngestError: a missing batch, a format or label layout that differs from the base.
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
    if is_jsonl:
        batch_dir = batch.rsplit("/", 1)[0] if "/" in batch else "."
        with storage.open_text(batch) as fh:
            for rec in read_catalog_jsonl(fh, batch, categories, attributes):
                image = rec.image
                if not storage.is_s3(image) and not os.path.isabs(image):
                    image = storage.join(batch_dir, image)
                tasks_src.append(
                    Task(
                        image_uri=image,
                        name=rec.image,
                        bbox=tuple(rec.bbox) if rec.bbox is not None else None,
                        bbox_file=batch,
                        bbox_line=rec.line,
                        split=rec.split,
                        category=rec.category,
                        positives=tuple(rec.positives),
                        unknown=(),
                    )
                )
    else:
        dataset = load_annotations(opener(batch))
        _check_same_labels(base_manifest, dataset.categories, dataset.attributes, batch)
        img_root = storage.join(batch, "Img")
        for rec in dataset.records:
            tasks_src.append(
                Task(
                    image_uri=storage.join(img_root, rec.name),
                    name=rec.name,
                    bbox=tuple(rec.bbox),
                    bbox_file=storage.join(batch, BBOX),
                    bbox_line=None,
                    split=rec.split,
                    category=rec.category,
                    positives=tuple(rec.positives),
                    unknown=tuple(rec.unknown),
                )
            )
    # The images' content enters the version: a fixed or replaced image is new data.
    if is_jsonl:
        images = content_digest(hash_objects(t.image_uri for t in tasks_src))
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
        return IngestResult(version, version_uri, load_manifest(version_uri), created=False)
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
    return IngestResult(version, version_uri, manifest, created=True)


def _check_same_labels(
    base: Manifest, categories: Sequence[Any], attributes: Sequence[Any], batch: str
) -> None:
    """A batch folder must define the same categories and attributes as the base version."""
    pairs = [
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
