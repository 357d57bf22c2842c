"""Full ingests of a DeepFashion-C root: in one process, or split into parts and merged.

- :func:`ingest_full`: the whole source in one run (``workers`` processes).
- :func:`ingest_part`: part ``i`` of ``n`` (shuffled positions ``p`` with
  ``p % n == i``) on one machine; writes ``_parts/part-<i>.json``, publishes nothing.
- :func:`merge_parts`: publishes the version from all part manifests.

The three agree on the version id: the six annotation files (streamed, never held
whole), the settings and the content digest of the image files (through the
fingerprint cache of :mod:`fashion_attr.data.fingerprints`: only files whose size,
ETag or modification time changed are read). If ``<dest>/<version>/manifest.json``
exists already, each is a no-op. Records are shuffled with ``seed`` before sharding
(the source is ordered by item folder, and a shard should be a random sample). A full
ingest keeps the dataset exactly as shipped (no deduplication: its test split must
stay the benchmark's).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import random
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, cast

from fashion_attr import storage
from fashion_attr.data.annotations import BBOX, load_annotations
from fashion_attr.data.fingerprints import content_digest_of_tree
from fashion_attr.data.ingest.engine import (
    PARTS_DIR,
    IngestError,
    IngestResult,
    IngestSettings,
    Task,
    find_line,
    hash_annotation_dir,
    ingest_tasks,
    opener,
    read_index,
    remove_empty_local_dir,
    sum_accumulated,
    version_id,
    write_manifest,
)
from fashion_attr.data.shards import MANIFEST_NAME, Manifest, load_manifest

__all__ = ["ingest_full", "ingest_part", "merge_parts"]


def _settings(
    image_size: int | None,
    jpeg_quality: int | None,
    shard_max_samples: int,
    shard_max_bytes: int,
    seed: int,
) -> IngestSettings:
    return IngestSettings(
        image_size=224 if image_size is None else image_size,
        jpeg_quality=90 if jpeg_quality is None else jpeg_quality,
        shard_max_samples=shard_max_samples,
        shard_max_bytes=shard_max_bytes,
        seed=seed,
    )


def _version(
    source: str, dest: str, settings: IngestSettings, workers: int, rehash: bool = False
) -> tuple[str, str]:
    """The version id and folder of ``source`` ingested with ``settings`` into ``dest``."""
    digests = hash_annotation_dir(source)
    # The images' content enters the version (cheaply: only files whose size, ETag or mtime
    # changed are read, every file with ``rehash``): restoring, fixing or replacing an image
    # gives a new version.
    images, _ = content_digest_of_tree(
        storage.join(source, "Img"), dest, max(workers, 1) * 8, rehash=rehash
    )
    version = version_id({"annotations": digests, "images": images, "settings": asdict(settings)})
    return version, storage.join(dest, version)


def _existing(version: str, version_uri: str) -> IngestResult | None:
    if storage.exists(storage.join(version_uri, MANIFEST_NAME)):
        return IngestResult(version, version_uri, load_manifest(version_uri), created=False)
    return None


def _ingest_records(
    source: str,
    version_uri: str,
    settings: IngestSettings,
    *,
    part: int,
    parts: int,
    workers: int,
    progress: bool,
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """Ingest positions ``part, part + parts, ...`` of the shuffled records; write shards."""
    dataset = load_annotations(opener(source))  # validates everything before any write
    categories = [{"name": c.name, "type": int(c.type)} for c in dataset.categories]
    attributes = [{"name": a.name, "group": int(a.group)} for a in dataset.attributes]
    records = dataset.records
    del dataset
    order = list(range(len(records)))
    random.Random(settings.seed).shuffle(order)
    positions = range(part, len(order), parts)
    img_root = storage.join(source, "Img")

    def tasks() -> Iterator[Task]:
        # Built lazily, one chunk ahead of the workers: no second copy of 289k records.
        for position in positions:
            rec = records[order[position]]
            yield Task(
                image_uri=storage.join(img_root, rec.name),
                name=rec.name,
                bbox=cast("tuple[int, int, int, int]", tuple(rec.bbox)),
                bbox_file=BBOX,
                bbox_line=None,
                split=rec.split,
                category=rec.category,
                positives=tuple(rec.positives),
                unknown=tuple(rec.unknown),
            )

    out = ingest_tasks(
        tasks(),
        total=len(positions),
        version_uri=version_uri,
        part=part,
        settings=settings,
        workers=workers,
        n_attr=len(attributes),
        n_cat=len(categories),
        progress=progress,
        locate_line=lambda task: find_line(storage.join(source, BBOX), task.name),
    )
    return out, categories, attributes


def ingest_full(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    jpeg_quality: int | None = None,
    shard_max_samples: int = 1000,
    shard_max_bytes: int = 64 << 20,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    rehash: bool = False,
) -> IngestResult:
    """Ingest a whole DeepFashion-C root into a new version (a no-op if it exists).

    Args:
        source: DeepFashion-C root, local or ``s3://``.
        dest: Where versions live; the version folder is ``<dest>/<version>``.
        image_size: Output side in pixels (default 224).
        jpeg_quality: Output JPEG quality (default 90).
        shard_max_samples: Samples per shard.
        shard_max_bytes: Bytes per shard.
        workers: Decode/encode processes (1 = in this process). Workers are
            spawned, so a script calling this with ``workers > 1`` needs an
            ``if __name__ == "__main__":`` guard (the CLI has one).
        seed: Shuffle seed (enters the version hash).
        progress: Show progress on stderr (a bar in a terminal, else lines: images/s, ETA).
        rehash: Read and hash every source image instead of trusting the fingerprint
            cache (a same-size rewrite with its modification time restored is then seen).

    Returns:
        The :class:`IngestResult`.

    Raises:
        AnnotationError: a bad annotation record (file and line in the message).
        IngestError: bad settings, or no image could be ingested.
    """
    source, dest = str(source), str(dest)
    _check_workers(workers)
    settings = _settings(image_size, jpeg_quality, shard_max_samples, shard_max_bytes, seed)
    version, version_uri = _version(source, dest, settings, workers, rehash)
    done = _existing(version, version_uri)
    if done is not None:
        return done
    out, categories, attributes = _ingest_records(
        source, version_uri, settings, part=0, parts=1, workers=workers, progress=progress
    )
    if not out.index_entries:
        remove_empty_local_dir(version_uri)
        raise IngestError(
            f"{source}: no image could be ingested ({len(out.acc.skipped)} skipped, first: "
            f"{out.acc.skipped[:1]}). Fix: check that {storage.join(source, 'Img')} holds "
            "the images"
        )
    manifest = write_manifest(
        version=version,
        version_uri=version_uri,
        source=source,
        settings=settings,
        categories=categories,
        attributes=attributes,
        totals=out.acc.to_json(),
        shards=out.shards,
        index_bytes=out.index_bytes,
        index_entries=out.index_entries,
    )
    return IngestResult(version, version_uri, manifest, created=True)


def ingest_part(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    part: int,
    parts: int,
    image_size: int | None = None,
    jpeg_quality: int | None = None,
    shard_max_samples: int = 1000,
    shard_max_bytes: int = 64 << 20,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    rehash: bool = False,
) -> IngestResult:
    """Ingest part ``part`` of ``parts`` of a full ingest (see :func:`merge_parts`).

    Writes the part's shards and ``_parts/part-<part>.json``; publishes nothing. A part
    already written (or a version already published) is a no-op. The other arguments
    are those of :func:`ingest_full`, and every part must get the same ones.

    Raises:
        AnnotationError: a bad annotation record (file and line in the message).
        IngestError: ``part`` is not in ``[0, parts)``, or bad settings.
    """
    source, dest = str(source), str(dest)
    _check_workers(workers)
    if parts < 1 or not 0 <= part < parts:
        raise IngestError(
            f"--part {part} needs --parts n with 0 <= part < n (got --parts {parts}). "
            "Fix: pass e.g. --part 0 --parts 4"
        )
    settings = _settings(image_size, jpeg_quality, shard_max_samples, shard_max_bytes, seed)
    version, version_uri = _version(source, dest, settings, workers, rehash)
    done = _existing(version, version_uri)
    if done is not None:
        return done
    if storage.exists(_part_uri(version_uri, part)):
        return IngestResult(version, version_uri, None, created=False, part=part)
    out, categories, attributes = _ingest_records(
        source, version_uri, settings, part=part, parts=parts, workers=workers, progress=progress
    )
    if not out.index_entries:
        remove_empty_local_dir(version_uri)
    index_rel = f"{PARTS_DIR}/index-{part}.jsonl.gz"
    storage.write_bytes(storage.join(version_uri, index_rel), out.index_bytes)
    record = {
        "version": version,
        "part": part,
        "parts": parts,
        "source": source,
        "settings": asdict(settings),
        "categories": categories,
        "attributes": attributes,
        "shards": out.shards,
        "index": {
            "uri": index_rel,
            "sha256": hashlib.sha256(out.index_bytes).hexdigest(),
            "entries": out.index_entries,
        },
        **out.acc.to_json(),
    }
    storage.write_text(_part_uri(version_uri, part), json.dumps(record) + "\n")
    return IngestResult(version, version_uri, None, created=True, part=part)


def merge_parts(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    parts: int | None = None,
    image_size: int | None = None,
    jpeg_quality: int | None = None,
    shard_max_samples: int = 1000,
    shard_max_bytes: int = 64 << 20,
    workers: int = 1,
    seed: int = 0,
    rehash: bool = False,
) -> IngestResult:
    """Publish the version of a split full ingest from its part manifests.

    Args:
        source: the DeepFashion-C root the parts ingested (it names the version).
        dest: Where versions live.
        parts: the number of parts (default: the count the part manifests record).
        image_size: the parts' output side (it names the version, as the rest below).
        jpeg_quality: the parts' JPEG quality.
        shard_max_samples: the parts' samples per shard.
        shard_max_bytes: the parts' bytes per shard.
        seed: the parts' shuffle seed.
        workers: processes for the fingerprint check of the source.
        rehash: hash every source image again (as the parts were run).

    Returns:
        The :class:`IngestResult` (``created=False`` when the version existed).

    Raises:
        IngestError: a part is missing or was written for another version or count.
    """
    source, dest = str(source), str(dest)
    _check_workers(workers)
    if parts is not None and parts < 1:
        raise IngestError(f"--parts {parts}. Fix: pass --parts >= 1")
    settings = _settings(image_size, jpeg_quality, shard_max_samples, shard_max_bytes, seed)
    version, version_uri = _version(source, dest, settings, workers, rehash)
    done = _existing(version, version_uri)
    if done is not None:
        return done
    manifest = _merge_parts(
        version=version, version_uri=version_uri, parts=parts, settings=settings
    )
    return IngestResult(version, version_uri, manifest, created=True)


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise IngestError(f"workers = {workers}. Fix: pass --workers >= 1")


def _part_uri(version_uri: str, part: int) -> str:
    return storage.join(version_uri, PARTS_DIR, f"part-{part}.json")


def _merge_parts(
    *, version: str, version_uri: str, parts: int | None, settings: IngestSettings
) -> Manifest:
    """Assemble the manifest of a multi-part ingest from its part manifests."""
    if parts is None:
        found = [u for u in storage.list_uris(storage.join(version_uri, PARTS_DIR))]
        names = [posixpath.basename(u) for u in found if u.endswith(".json")]
        if not names:
            raise IngestError(
                f"{storage.join(version_uri, PARTS_DIR)}: no part manifests to merge. Fix: run "
                "every part first (--part i --parts n), then --merge with the same settings"
            )
        first = json.loads(storage.read_text(storage.join(version_uri, PARTS_DIR, names[0])))
        parts = int(first["parts"])
    records = []
    missing = []
    for i in range(parts):
        uri = _part_uri(version_uri, i)
        try:
            records.append(json.loads(storage.read_text(uri)))
        except FileNotFoundError:
            missing.append(i)
    if missing:
        raise IngestError(
            f"cannot merge version {version} at {version_uri}: missing part manifests for "
            f"part(s) {', '.join(map(str, missing))} of {parts} "
            f"(expected {PARTS_DIR}/part-<i>.json). Fix: run the ingest step with "
            f"--part <i> --parts {parts} for each missing part, then --merge again"
        )
    for i, rec in enumerate(records):
        if rec["parts"] != parts or rec["version"] != version:
            raise IngestError(
                f"{_part_uri(version_uri, i)}: written for version {rec['version']} with "
                f"--parts {rec['parts']}, not {version} with --parts {parts}. Fix: merge with "
                "the --parts and settings the parts were run with"
            )
    totals = sum_accumulated(records)
    shards: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        for split, entries in rec["shards"].items():
            shards.setdefault(split, []).extend(entries)
    index = bytearray()
    entries_total = 0
    for rec in records:
        uri = storage.join(version_uri, rec["index"]["uri"])
        index += read_index(uri, rec["index"]["sha256"])
        entries_total += rec["index"]["entries"]
    first = records[0]
    return write_manifest(
        version=version,
        version_uri=version_uri,
        source=first["source"],
        settings=settings,
        categories=first["categories"],
        attributes=first["attributes"],
        totals=totals,
        shards=shards,
        index_bytes=bytes(index),
        index_entries=entries_total,
    )
