"""Ingest DeepFashion-C into versioned tar shards: validate, crop, resize, shard.

The pipeline's first step (CLI: :mod:`fashion_attr.steps.preprocess`). One run:

1. Hashes the six annotation files (streamed, never held whole) together with
   the ingest settings, the content digest of the image files (and, for an
   incremental run, the base version and the batch's hash) into the version id
   ``v-<16 hex>``. If
   ``<dest>/<version>/manifest.json`` already exists the run is a no-op.
2. Parses and validates every annotation file
   (:func:`fashion_attr.data.annotations.load_annotations`); a bad file raises
   :class:`~fashion_attr.data.annotations.AnnotationError` naming file and line
   before anything is written.
3. Shuffles the records with ``seed`` (the source is ordered by item folder,
   and a shard should be a random sample), then per image: read, guard against
   decompression bombs, decode, convert to RGB, crop to the clamped box, resize
   to ``image_size`` (bilinear with antialiasing), encode JPEG at
   ``jpeg_quality``. A missing or undecodable image is skipped and listed in
   the manifest; a box that is empty after clamping is fatal (file and line).
4. Writes shards as they fill (:class:`~fashion_attr.data.shards.ShardWriter`),
   then the content-hash index, then ``manifest.json`` last and atomically.

Work is spread over ``workers`` processes with a bounded window of in-flight
chunks, and results are consumed in submission order, so shard contents do not
depend on the number of workers. ``part``/``parts`` split one ingest over
several machines (part ``i`` takes shuffled positions ``p`` with
``p % parts == i``; each writes ``_parts/part-<i>.json``) and ``merge``
assembles the manifest from all parts.

Incremental (scheduled retraining): ``base`` (a version) plus ``batch`` (a
DeepFashion-C-layout folder or a ``.jsonl`` catalog file) gives a new version
whose manifest references the base's shards in place and adds shards only for
new images, deduplicated by the sha256 of the image bytes against the base's
index. Deduplication applies only to incremental batches: a full ingest keeps
the dataset exactly as shipped (its test split must stay the benchmark's).

The version id hashes the annotations, the settings and the content of every
image file, known through a fingerprint cache (:mod:`fashion_attr.data.fingerprints`:
only files whose size, ETag or modification time changed are read), so the
no-op check on an untouched source is one listing; an image restored, fixed or
replaced under unchanged annotations gives a new version. The index records each
ingested image's content hash (sha256).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import posixpath
import random
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fashion_attr import storage
from fashion_attr.data.annotations import (
    ANNOTATION_FILES,
    BBOX,
    AnnotationError,
    Attribute,
    Category,
    clamp_bbox,
    load_annotations,
)
from fashion_attr.data.catalog import read_catalog_jsonl
from fashion_attr.data.fingerprints import content_digest, content_digest_of_tree, hash_objects
from fashion_attr.data.shards import (
    INDEX_NAME,
    MANIFEST_NAME,
    SHARD_FORMAT,
    SPLITS,
    AttributeCounts,
    AttributeInfo,
    BaseRef,
    CategoryInfo,
    IndexRef,
    Manifest,
    ManifestError,
    ShardEntry,
    ShardWriter,
    SkippedImage,
    load_manifest,
    resolve_shard_uri,
    sample_key,
    shard_name,
)
from fashion_attr.data.versions import version_uri as resolve_version_uri

__all__ = [
    "MAX_IMAGE_PIXELS",
    "IngestError",
    "IngestResult",
    "IngestSettings",
    "ManifestError",
    "load_manifest",
    "run_preprocess",
]

#: Decompression-bomb guard: images with more pixels are skipped, not decoded.
#: DeepFashion-C images are about 300 x 300; 50 MP leaves room for any real photo.
MAX_IMAGE_PIXELS = 50_000_000

_PARTS_DIR = "_parts"
_CHUNK = 16  # records per worker task: amortises pickling without hurting ordering latency


class IngestError(ValueError):
    """Bad ingest arguments or inputs other than annotation files (which raise AnnotationError)."""


@dataclass(frozen=True)
class IngestSettings:
    """The settings that define a version's content (all enter the version hash).

    Attributes:
        image_size: Side of the square output images, pixels.
        jpeg_quality: JPEG quality of the shard images (1-100; 90 is the default).
        shard_max_samples: Samples per shard before a new one starts.
        shard_max_bytes: Bytes per shard before a new one starts.
        seed: Seed of the sample shuffle before sharding.
    """

    image_size: int = 224
    jpeg_quality: int = 90
    shard_max_samples: int = 1000
    shard_max_bytes: int = 64 << 20
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("image_size", "--image-size", 8 <= self.image_size <= 4096, "8..4096"),
            ("jpeg_quality", "--jpeg-quality", 1 <= self.jpeg_quality <= 100, "1..100"),
            ("shard_max_samples", "--shard-max-samples", self.shard_max_samples >= 1, ">= 1"),
            ("shard_max_bytes", "--shard-max-bytes", self.shard_max_bytes >= 4096, ">= 4096"),
        ]
        for name, flag, ok, allowed in checks:
            if not ok:
                raise IngestError(
                    f"{name} = {getattr(self, name)} is out of range. Fix: pass {flag} in {allowed}"
                )


@dataclass(frozen=True)
class IngestResult:
    """What one ingest run produced.

    Attributes:
        version: The version id ``v-<16 hex>``.
        uri: The version folder.
        manifest: The version's manifest; ``None`` after a ``part`` run (which
            writes a part manifest; ``merge`` writes the manifest).
        created: ``False`` when the manifest (or this part's manifest) already existed
            and the run did nothing.
        part: The part this run wrote, or ``None``.
    """

    version: str
    uri: str
    manifest: Manifest | None
    created: bool
    part: int | None = None

    def summary(self) -> dict[str, Any]:
        """A one-line JSON-able summary (what the CLI prints)."""
        out: dict[str, Any] = {
            "version": self.version,
            "uri": self.uri,
            "created": self.created,
            "status": ("created" if self.created else "exists")
            if self.part is None
            else ("part-written" if self.created else "part-exists"),
        }
        if self.part is not None:
            out["part"] = self.part
        if self.manifest is not None:
            out["counts"] = dict(self.manifest.counts)
            out["skipped"] = len(self.manifest.skipped)
            out["shards"] = sum(len(v) for v in self.manifest.shards.values())
        return out


# --------------------------------------------------------------------------- per-image work


@dataclass(frozen=True, slots=True)
class _Task:
    """One image to ingest (small and picklable: it crosses to worker processes)."""

    image_uri: str
    name: str
    bbox: tuple[int, int, int, int] | None
    bbox_file: str
    bbox_line: int | None  # None: looked up in bbox_file only if the box proves bad
    split: str
    category: int
    positives: tuple[int, ...]
    unknown: tuple[int, ...]


@dataclass(slots=True)
class _Outcome:
    jpeg: bytes | None = None
    sha256: str = ""
    bbox: tuple[int, int, int, int] | None = None
    size: tuple[int, int] | None = None  # the source image's (width, height)
    skip: str | None = None
    # (file, line, message, fix) of a fatal AnnotationError, raised by the main
    # process after it has found the line (ImageRecord does not carry it).
    error: tuple[str, int | None, str, str] | None = None


def _process_one(task: _Task, image_size: int, quality: int) -> _Outcome:
    try:
        data = storage.read_bytes(task.image_uri)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return _Outcome(skip=f"missing: no such file {task.image_uri}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size  # header only: check before decoding the pixels
            if width * height > MAX_IMAGE_PIXELS:
                return _Outcome(
                    sha256=digest,
                    skip=f"decompression bomb guard: {width}x{height} pixels exceeds "
                    f"{MAX_IMAGE_PIXELS}",
                )
            img = img.convert("RGB")  # forces the full decode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _Outcome(sha256=digest, skip=f"decompression bomb guard: {exc}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        return _Outcome(sha256=digest, skip=f"undecodable: {exc}")
    bbox = task.bbox if task.bbox is not None else (0, 0, width, height)
    try:
        box = tuple(int(v) for v in clamp_bbox(bbox, width, height, task.bbox_file, task.bbox_line))
    except AnnotationError as exc:
        return _Outcome(error=(exc.file, exc.line, exc.message, exc.fix))
    out = img.crop(box).resize((image_size, image_size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=quality)
    return _Outcome(
        jpeg=buf.getvalue(),
        sha256=digest,
        bbox=box,  # type: ignore[arg-type]
        size=(width, height),
    )


def _process_chunk(image_size: int, quality: int, tasks: list[_Task]) -> list[_Outcome]:
    return [_process_one(t, image_size, quality) for t in tasks]


def _chunks(items: Iterable[_Task], size: int) -> Iterator[list[_Task]]:
    chunk: list[_Task] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_tasks(
    tasks: Iterable[_Task], settings: IngestSettings, workers: int
) -> Iterator[tuple[_Task, _Outcome]]:
    """Process tasks, yielding ``(task, outcome)`` in task order.

    At most ``4 * workers`` chunks are in flight, so neither the task list nor
    the results pile up in memory whatever the dataset size. ``workers <= 1``
    runs in this process (no pickling; easy to debug and to test). Workers are
    spawned, not forked: a fork of a process that holds threads (boto3, tqdm)
    can deadlock; so a script that calls :func:`run_preprocess` with
    ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    """
    size, quality = settings.image_size, settings.jpeg_quality
    if workers <= 1:
        for chunk in _chunks(tasks, _CHUNK):
            yield from zip(chunk, _process_chunk(size, quality, chunk), strict=True)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    window: deque[tuple[list[_Task], Future[list[_Outcome]]]] = deque()
    try:
        for chunk in _chunks(tasks, _CHUNK):
            window.append((chunk, pool.submit(_process_chunk, size, quality, chunk)))
            if len(window) >= 4 * workers:
                done, future = window.popleft()
                yield from zip(done, future.result(), strict=True)
        while window:
            done, future = window.popleft()
            yield from zip(done, future.result(), strict=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- accumulating


@dataclass
class _Accumulator:
    """Counts, skipped images and index lines of the samples written so far."""

    n_attr: int
    n_cat: int
    counts: dict[str, int] = field(default_factory=dict)
    pos: np.ndarray = field(init=False)
    neg: np.ndarray = field(init=False)
    unk: np.ndarray = field(init=False)
    cat: np.ndarray = field(init=False)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pos = np.zeros(self.n_attr, np.int64)
        self.neg = np.zeros(self.n_attr, np.int64)
        self.unk = np.zeros(self.n_attr, np.int64)
        self.cat = np.zeros(self.n_cat, np.int64)

    def add(self, task: _Task) -> None:
        self.counts[task.split] = self.counts.get(task.split, 0) + 1
        if task.split != "train":
            return
        pos = np.asarray(task.positives, np.int64)
        unk = np.asarray(task.unknown, np.int64)
        self.pos[pos] += 1
        self.unk[unk] += 1
        # Everything neither positive nor unknown is a known negative.
        self.neg += 1
        self.neg[pos] -= 1
        self.neg[unk] -= 1
        self.cat[task.category] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {s: self.counts[s] for s in SPLITS if s in self.counts},
            "train_attribute_counts": {
                "positive": self.pos.tolist(),
                "negative": self.neg.tolist(),
                "unknown": self.unk.tolist(),
            },
            "train_category_counts": self.cat.tolist(),
            "skipped": self.skipped,
        }


def _sum_accumulated(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add up the ``_Accumulator.to_json`` records of several parts (or base + batch)."""
    counts: dict[str, int] = {}
    tac: dict[str, np.ndarray] = {}
    cat: np.ndarray | None = None
    skipped: list[dict[str, str]] = []
    for p in parts:
        for s, n in p["counts"].items():
            counts[s] = counts.get(s, 0) + n
        for k, v in p["train_attribute_counts"].items():
            tac[k] = tac.get(k, 0) + np.asarray(v, np.int64)
        c = np.asarray(p["train_category_counts"], np.int64)
        cat = c if cat is None else cat + c
        skipped.extend(p["skipped"])
    return {
        "counts": {s: counts[s] for s in SPLITS if s in counts},
        "train_attribute_counts": {k: v.tolist() for k, v in tac.items()},
        "train_category_counts": cat.tolist() if cat is not None else [],
        "skipped": skipped,
    }


# --------------------------------------------------------------------------- hashing & naming


def _hash_stream(uri: str) -> str:
    digest = hashlib.sha256()
    with storage.open_binary(uri) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_annotation_dir(root: str) -> dict[str, str]:
    """sha256 of each annotation file of a DeepFashion-C root (streamed)."""
    out = {}
    for rel in ANNOTATION_FILES:
        uri = storage.join(root, rel)
        try:
            out[rel] = _hash_stream(uri)
        except (FileNotFoundError, IsADirectoryError):
            raise AnnotationError(
                uri,
                None,
                "annotation file not found",
                f"pass the dataset root (the folder that holds {', '.join(ANNOTATION_FILES)} "
                "and Img/) as --source, or a batch folder in the same layout as --batch",
            ) from None
    return out


def _version_id(content: dict[str, Any]) -> str:
    blob = json.dumps({"format": SHARD_FORMAT, **content}, sort_keys=True).encode()
    return "v-" + hashlib.sha256(blob).hexdigest()[:16]


def _opener(root: str) -> Callable[[str], contextlib.AbstractContextManager[Any]]:
    return lambda rel: storage.open_text(storage.join(root, rel))


def _relative_ref(version_uri: str, shard_uri: str) -> str:
    """How the manifest of ``version_uri`` names a shard of another version.

    ``../<sibling>/<name>`` when the shard lies in a sibling version folder
    under the same parent (so a dataset root can be moved or copied whole),
    else the absolute URI.
    """
    if storage.is_s3(version_uri) != storage.is_s3(shard_uri):
        return shard_uri
    if storage.is_s3(version_uri):
        vb, vk = storage.split_s3(version_uri)
        sb, sk = storage.split_s3(shard_uri)
        if vb != sb:
            return shard_uri
        rel = posixpath.relpath("/" + sk, "/" + vk.rstrip("/"))
    else:
        rel = os.path.relpath(os.path.abspath(shard_uri), os.path.abspath(version_uri))
        rel = rel.replace(os.sep, "/")
    pieces = rel.split("/")
    if len(pieces) == 3 and pieces[0] == ".." and ".." not in pieces[1:]:
        return rel
    return shard_uri


def _read_index(uri: str, expected_sha: str) -> bytes:
    data = storage.read_bytes(uri)
    if hashlib.sha256(data).hexdigest() != expected_sha:
        raise IngestError(
            f"{uri}: checksum does not match its manifest (the index was modified or truncated). "
            "Fix: re-ingest the base version"
        )
    return data


def _iter_index(data: bytes) -> Iterator[dict[str, Any]]:
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        for line in gz:
            if line.strip():
                yield json.loads(line)


# --------------------------------------------------------------------------- the ingest loop


@dataclass
class _PartOutput:
    acc: _Accumulator
    shards: dict[str, list[dict[str, Any]]]
    index_bytes: bytes
    index_entries: int


def _ingest_tasks(
    tasks: Iterable[_Task],
    *,
    total: int,
    version_uri: str,
    part: int,
    settings: IngestSettings,
    workers: int,
    n_attr: int,
    n_cat: int,
    progress: bool,
    seen: dict[bytes, str] | None = None,
    used_keys: set[str] | None = None,
    locate_line: Callable[[_Task], int | None] | None = None,
) -> _PartOutput:
    """Process ``tasks`` in order and write their shards; clean up this run's shards on error.

    Args:
        tasks: The images, in shard order (consumed lazily).
        total: Number of tasks (for the progress bar).
        version_uri: The version folder the shards go to.
        part: The part number in shard names (0 for a single-process ingest).
        settings: Image and shard settings.
        workers: Processes (1: this process).
        n_attr: Number of attributes.
        n_cat: Number of categories.
        progress: Show the progress bar.
        seen: For incremental batches, image sha256 digest -> image name of
            every image already in the version; duplicates are skipped. ``None``
            turns deduplication off.
        used_keys: Keys already taken (the base's); a new image whose name key
            collides gets a key that also hashes its content.
        locate_line: Finds the annotation line of a task whose box proves empty
            after clamping (only called on that error path).
    """
    from fashion_attr.progress import CountProgress

    writers: dict[str, ShardWriter] = {}
    acc = _Accumulator(n_attr, n_cat)
    index_buf = io.BytesIO()
    entries = 0
    try:
        with (
            gzip.GzipFile(fileobj=index_buf, mode="wb", mtime=0) as gz,
            CountProgress(
                f"ingest {posixpath.basename(version_uri.rstrip('/'))} part {part}",
                total,
                "img",
                enabled=progress,
            ) as bar,
        ):
            for task, outcome in _run_tasks(tasks, settings, workers):
                bar.update(1)
                if outcome.error is not None:
                    file, line, message, fix = outcome.error
                    if line is None and locate_line is not None:
                        line = locate_line(task)
                    raise AnnotationError(file, line, f"image {task.name}: {message}", fix)
                if outcome.skip is not None:
                    acc.skipped.append({"image": task.name, "reason": outcome.skip})
                    continue
                assert outcome.jpeg is not None and outcome.bbox is not None
                if seen is not None:
                    raw = bytes.fromhex(outcome.sha256)
                    if raw in seen:
                        acc.skipped.append(
                            {"image": task.name, "reason": f"duplicate: same bytes as {seen[raw]}"}
                        )
                        continue
                    seen[raw] = task.name
                key = sample_key(task.name)
                if used_keys is not None:
                    if key in used_keys:
                        key = sample_key(f"{task.name}#{outcome.sha256}")
                    used_keys.add(key)
                writer = writers.get(task.split)
                if writer is None:
                    writer = writers[task.split] = ShardWriter(
                        version_uri,
                        task.split,
                        part,
                        max_samples=settings.shard_max_samples,
                        max_bytes=settings.shard_max_bytes,
                    )
                meta = {
                    "category": task.category,
                    "positives": list(task.positives),
                    "unknown": list(task.unknown),
                    "image": task.name,
                    "bbox": list(outcome.bbox),
                    "size": list(outcome.size or ()),
                    "sha256": outcome.sha256,
                }
                writer.add(key, outcome.jpeg, meta)
                # The shard this sample lands in: the writer's open one, numbered after
                # the shards it has completed.
                shard = shard_name(task.split, part, len(writer.written))
                line = {
                    "key": key,
                    "image": task.name,
                    "sha256": outcome.sha256,
                    "split": task.split,
                    "shard": shard,
                }
                gz.write((json.dumps(line, separators=(",", ":")) + "\n").encode())
                entries += 1
                acc.add(task)
            for writer in writers.values():
                writer.close()
    except BaseException:
        # Unpublish what this run wrote (a rerun would overwrite it anyway; a bad
        # input should leave nothing behind) -- unless a concurrent run of the same
        # version has published it meanwhile: its manifest names these very files.
        published = _manifest_exists_quietly(version_uri)
        for writer in writers.values():
            writer.abort()
            if not published:
                _delete_quietly([storage.join(version_uri, w.name) for w in writer.written])
        _remove_empty_local_dir(version_uri)
        raise
    shards = {
        split: [
            {"uri": w.name, "samples": w.samples, "bytes": w.bytes, "sha256": w.sha256}
            for w in writers[split].written
        ]
        for split in SPLITS
        if split in writers
    }
    return _PartOutput(acc, shards, index_buf.getvalue(), entries)


def _manifest_exists_quietly(version_uri: str) -> bool:
    with contextlib.suppress(Exception):
        return storage.exists(storage.join(version_uri, MANIFEST_NAME))
    return False


def _delete_quietly(uris: Iterable[str]) -> None:
    for uri in uris:
        with contextlib.suppress(Exception):
            storage.delete(uri)


def _remove_empty_local_dir(uri: str) -> None:
    if not storage.is_s3(uri):
        with contextlib.suppress(OSError):
            Path(uri).rmdir()  # only succeeds when empty: never removes others' files


# --------------------------------------------------------------------------- manifests


def _write_manifest(
    *,
    version: str,
    version_uri: str,
    source: str,
    settings: IngestSettings,
    categories: Sequence[dict[str, Any]],
    attributes: Sequence[dict[str, Any]],
    totals: dict[str, Any],
    shards: dict[str, list[dict[str, Any]]],
    index_bytes: bytes,
    index_entries: int,
    batch: str | None = None,
    base: BaseRef | None = None,
) -> Manifest:
    """Write the index, then the manifest (last: its presence publishes the version)."""
    storage.write_bytes(storage.join(version_uri, INDEX_NAME), index_bytes)
    manifest = Manifest(
        format=SHARD_FORMAT,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source,
        batch=batch,
        base=base,
        settings=asdict(settings),
        image_size=settings.image_size,
        counts=totals["counts"],
        categories=[CategoryInfo(**c) for c in categories],
        attributes=[AttributeInfo(**a) for a in attributes],
        train_attribute_counts=AttributeCounts(**totals["train_attribute_counts"]),
        train_category_counts=totals["train_category_counts"],
        shards={s: [ShardEntry(**e) for e in v] for s, v in shards.items() if v},
        skipped=[SkippedImage(**s) for s in totals["skipped"]],
        index=IndexRef(
            uri=INDEX_NAME,
            sha256=hashlib.sha256(index_bytes).hexdigest(),
            bytes=len(index_bytes),
            entries=index_entries,
        ),
    )
    storage.write_text(storage.join(version_uri, MANIFEST_NAME), manifest.to_json())
    return manifest


def _part_uri(version_uri: str, part: int) -> str:
    return storage.join(version_uri, _PARTS_DIR, f"part-{part}.json")


def _merge_parts(
    *, version: str, version_uri: str, parts: int | None, settings: IngestSettings
) -> Manifest:
    """Assemble the manifest of a multi-part ingest from its part manifests."""
    if parts is None:
        found = [u for u in storage.list_uris(storage.join(version_uri, _PARTS_DIR))]
        names = [posixpath.basename(u) for u in found if u.endswith(".json")]
        if not names:
            raise IngestError(
                f"{storage.join(version_uri, _PARTS_DIR)}: no part manifests to merge. Fix: run "
                "every part first (--part i --parts n), then --merge with the same settings"
            )
        first = json.loads(storage.read_text(storage.join(version_uri, _PARTS_DIR, names[0])))
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
            f"(expected {_PARTS_DIR}/part-<i>.json). Fix: run the ingest step with "
            f"--part <i> --parts {parts} for each missing part, then --merge again"
        )
    for i, rec in enumerate(records):
        if rec["parts"] != parts or rec["version"] != version:
            raise IngestError(
                f"{_part_uri(version_uri, i)}: written for version {rec['version']} with "
                f"--parts {rec['parts']}, not {version} with --parts {parts}. Fix: merge with "
                "the --parts and settings the parts were run with"
            )
    totals = _sum_accumulated(records)
    shards: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        for split, entries in rec["shards"].items():
            shards.setdefault(split, []).extend(entries)
    index = bytearray()
    entries_total = 0
    for rec in records:
        uri = storage.join(version_uri, rec["index"]["uri"])
        index += _read_index(uri, rec["index"]["sha256"])
        entries_total += rec["index"]["entries"]
    first = records[0]
    return _write_manifest(
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


# --------------------------------------------------------------------------- entry point


def run_preprocess(
    source: str | os.PathLike[str] | None,
    dest: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    jpeg_quality: int | None = None,
    shard_max_samples: int = 1000,
    shard_max_bytes: int = 64 << 20,
    workers: int = 1,
    seed: int = 0,
    part: int | None = None,
    parts: int | None = None,
    merge: bool = False,
    base: str | None = None,
    batch: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> IngestResult:
    """Ingest a DeepFashion-C root (or an incremental batch) into a shard version.

    Args:
        source: DeepFashion-C root, local or ``s3://`` (unused for an incremental run).
        dest: Where versions live; the version folder is ``<dest>/<version>``.
        image_size: Output side in pixels (default 224; an incremental run
            defaults to, and must equal, the base's).
        jpeg_quality: Output JPEG quality (default 90; incremental: the base's).
        shard_max_samples: Samples per shard.
        shard_max_bytes: Bytes per shard.
        workers: Decode/encode processes (1 = in this process). Workers are
            spawned, so a script calling this with ``workers > 1`` needs an
            ``if __name__ == "__main__":`` guard (the CLI has one).
        seed: Shuffle seed (enters the version hash).
        part: This run's part, ``0 <= part < parts`` (needs ``parts``).
        parts: Number of parts a multi-machine ingest is split into.
        merge: Write the manifest from all part manifests (with ``parts`` or
            the count the part manifests record).
        base: Incremental: the base version, a version folder URI or an id
            (``v-...``, looked up under ``dest``).
        batch: Incremental: a DeepFashion-C-layout folder or a ``.jsonl`` catalog file.
        progress: Show progress on stderr (a bar in a terminal, else lines: images/s, ETA).

    Returns:
        The :class:`IngestResult`.

    Raises:
        AnnotationError: a bad annotation record (file and line in the message).
        IngestError: bad arguments, missing files, a base/batch mismatch, missing parts.
        ManifestError: the base version has no valid manifest.
    """
    dest = str(dest)
    if workers < 1:
        raise IngestError(f"workers = {workers}. Fix: pass --workers >= 1")
    if (base is None) != (batch is None):
        raise IngestError(
            "an incremental ingest needs both --base (the version to extend) and --batch "
            "(the new data). Fix: pass both, or neither for a full ingest"
        )
    if part is not None or merge:
        if base is not None:
            raise IngestError(
                "--part/--merge split a full ingest; incremental batches are small and run in one "
                "process. Fix: drop --part/--parts/--merge"
            )
        if merge and part is not None:
            raise IngestError("--merge runs after the parts. Fix: drop --part when merging")
        if part is not None and (parts is None or not 0 <= part < parts):
            raise IngestError(
                f"--part {part} needs --parts n with 0 <= part < n (got --parts {parts}). "
                "Fix: pass e.g. --part 0 --parts 4"
            )
    if parts is not None and parts < 1:
        raise IngestError(f"--parts {parts}. Fix: pass --parts >= 1")
    if base is not None:
        return _run_incremental(
            dest,
            base=base,
            batch=str(batch),
            image_size=image_size,
            jpeg_quality=jpeg_quality,
            shard_max_samples=shard_max_samples,
            shard_max_bytes=shard_max_bytes,
            workers=workers,
            seed=seed,
            progress=progress,
        )
    if source is None:
        raise IngestError("a full ingest needs --source (the DeepFashion-C root)")
    source = str(source)
    settings = IngestSettings(
        image_size=224 if image_size is None else image_size,
        jpeg_quality=90 if jpeg_quality is None else jpeg_quality,
        shard_max_samples=shard_max_samples,
        shard_max_bytes=shard_max_bytes,
        seed=seed,
    )
    digests = _hash_annotation_dir(source)
    # The images' content enters the version (cheaply: only files whose size, ETag or mtime
    # changed are read): restoring, fixing or replacing an image gives a new version.
    images, _ = content_digest_of_tree(storage.join(source, "Img"), dest, max(workers, 1) * 8)
    version = _version_id({"annotations": digests, "images": images, "settings": asdict(settings)})
    version_uri = storage.join(dest, version)
    if storage.exists(storage.join(version_uri, MANIFEST_NAME)):
        return IngestResult(version, version_uri, load_manifest(version_uri), created=False)
    if merge:
        manifest = _merge_parts(
            version=version, version_uri=version_uri, parts=parts, settings=settings
        )
        return IngestResult(version, version_uri, manifest, created=True)
    if part is not None and storage.exists(_part_uri(version_uri, part)):
        return IngestResult(version, version_uri, None, created=False, part=part)

    dataset = load_annotations(_opener(source))  # validates everything before any write
    categories = [{"name": c.name, "type": int(c.type)} for c in dataset.categories]
    attributes = [{"name": a.name, "group": int(a.group)} for a in dataset.attributes]
    records = dataset.records
    del dataset
    order = list(range(len(records)))
    random.Random(settings.seed).shuffle(order)
    this_part, n_parts = (0, 1) if part is None else (part, parts or 1)
    positions = range(this_part, len(order), n_parts)
    img_root = storage.join(source, "Img")

    def tasks() -> Iterator[_Task]:
        # Built lazily, one chunk ahead of the workers: no second copy of 289k records.
        for position in positions:
            rec = records[order[position]]
            yield _Task(
                image_uri=storage.join(img_root, rec.name),
                name=rec.name,
                bbox=tuple(rec.bbox),
                bbox_file=BBOX,
                bbox_line=None,
                split=rec.split,
                category=rec.category,
                positives=tuple(rec.positives),
                unknown=tuple(rec.unknown),
            )

    out = _ingest_tasks(
        tasks(),
        total=len(positions),
        version_uri=version_uri,
        part=this_part,
        settings=settings,
        workers=workers,
        n_attr=len(attributes),
        n_cat=len(categories),
        progress=progress,
        locate_line=lambda task: _find_line(storage.join(source, BBOX), task.name),
    )
    if not out.index_entries:
        _remove_empty_local_dir(version_uri)
        if part is None:
            raise IngestError(
                f"{source}: no image could be ingested ({len(out.acc.skipped)} skipped, first: "
                f"{out.acc.skipped[:1]}). Fix: check that {img_root} holds the images"
            )
    if part is not None:
        index_rel = f"{_PARTS_DIR}/index-{part}.jsonl.gz"
        storage.write_bytes(storage.join(version_uri, index_rel), out.index_bytes)
        record = {
            "version": version,
            "part": part,
            "parts": n_parts,
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
    manifest = _write_manifest(
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


def _find_line(uri: str, image: str) -> int | None:
    """The line of ``image``'s record in an annotation file (streamed; error path only)."""
    with storage.open_text(uri) as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no > 2 and line.split(None, 1)[:1] == [image]:
                return line_no
    return None


# --------------------------------------------------------------------------- incremental


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


def _run_incremental(
    dest: str,
    *,
    base: str,
    batch: str,
    image_size: int | None,
    jpeg_quality: int | None,
    shard_max_samples: int,
    shard_max_bytes: int,
    workers: int,
    seed: int,
    progress: bool,
) -> IngestResult:
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
            batch_hash: Any = _hash_stream(batch)
        except FileNotFoundError:
            raise IngestError(
                f"{batch}: batch file not found. Fix: pass an existing .jsonl file or folder"
            ) from None
    else:
        batch_hash = _hash_annotation_dir(batch)
    categories = [Category(c.name, c.type) for c in base_manifest.categories]
    attributes = [Attribute(a.name, a.group) for a in base_manifest.attributes]
    tasks_src: list[_Task] = []
    if is_jsonl:
        batch_dir = batch.rsplit("/", 1)[0] if "/" in batch else "."
        with storage.open_text(batch) as fh:
            for rec in read_catalog_jsonl(fh, batch, categories, attributes):
                image = rec.image
                if not storage.is_s3(image) and not os.path.isabs(image):
                    image = storage.join(batch_dir, image)
                tasks_src.append(
                    _Task(
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
        dataset = load_annotations(_opener(batch))
        _check_same_labels(base_manifest, dataset.categories, dataset.attributes, batch)
        img_root = storage.join(batch, "Img")
        for rec in dataset.records:
            tasks_src.append(
                _Task(
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
    version = _version_id(
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

    base_index = _read_index(
        resolve_shard_uri(base_uri, base_manifest.index.uri), base_manifest.index.sha256
    )
    seen: dict[bytes, str] = {}
    used_keys: set[str] = set()
    for entry in _iter_index(base_index):
        seen[bytes.fromhex(entry["sha256"])] = entry["image"]
        used_keys.add(entry["key"])
    out = _ingest_tasks(
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
            _find_line(task.bbox_file, task.name) if task.bbox_file.endswith(BBOX) else None
        ),
    )
    base_totals = {
        "counts": dict(base_manifest.counts),
        "train_attribute_counts": base_manifest.train_attribute_counts.model_dump(),
        "train_category_counts": list(base_manifest.train_category_counts),
        "skipped": [],
    }
    totals = _sum_accumulated([base_totals, out.acc.to_json()])
    shards: dict[str, list[dict[str, Any]]] = {}

    def rebase(ref: str) -> str:
        return _relative_ref(version_uri, resolve_shard_uri(base_uri, ref))

    for split in SPLITS:
        entries = [
            {**e.model_dump(), "uri": rebase(e.uri)} for e in base_manifest.shards.get(split, [])
        ]
        entries += out.shards.get(split, [])
        if entries:
            shards[split] = entries
    manifest = _write_manifest(
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
