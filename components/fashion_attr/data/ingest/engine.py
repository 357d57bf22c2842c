"""The ingest engine: per-image work, worker pool, shard writing, manifests and hashes.

Every ingest operation (:mod:`~fashion_attr.data.ingest.full`,
:mod:`~fashion_attr.data.ingest.batch`) turns its records into :class:`Task` s and runs
them through :func:`ingest_tasks`: per image, read, guard against decompression
bombs, decode, convert to RGB, crop to the clamped box, resize to ``image_size``
(bilinear with antialiasing) and encode JPEG at ``jpeg_quality``. A missing or
undecodable image is skipped and listed in the manifest; a box that is empty after
clamping is fatal (file and line). Work is spread over ``workers`` processes with a
bounded window of in-flight chunks, and results are consumed in submission order,
so shard contents do not depend on the number of workers. The version's
``manifest.json`` is written last and atomically (:func:`write_manifest`).
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
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from fashion_attr import storage
from fashion_attr.data.annotations import (
    ANNOTATION_FILES,
    AnnotationError,
    clamp_bbox,
)
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
    ShardEntry,
    ShardWriter,
    SkippedImage,
    sample_key,
    shard_name,
)

#: Decompression-bomb guard: images with more pixels are skipped, not decoded.
#: DeepFashion-C images are about 300 x 300; 50 MP leaves room for any real photo.
MAX_IMAGE_PIXELS = 50_000_000


PARTS_DIR = "_parts"


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
        unlabelled: Unlabelled records of a catalog batch, stored for the audit's tags
            (``<version>/unlabelled.json``), never trained on.
        notes: What a person should know about this run (skipped images under the
            threshold, a batch without labelled records); logged as warnings.
    """

    version: str
    uri: str
    manifest: Manifest | None
    created: bool
    part: int | None = None
    unlabelled: int = 0
    notes: tuple[str, ...] = ()

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
        if self.unlabelled:
            out["unlabelled"] = self.unlabelled
        if self.manifest is not None:
            out["counts"] = dict(self.manifest.counts)
            out["skipped"] = len(self.manifest.skipped)
            out["shards"] = sum(len(v) for v in self.manifest.shards.values())
        return out


@dataclass(frozen=True, slots=True)
class Task:
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


def _process_one(task: Task, image_size: int, quality: int) -> _Outcome:
    try:
        data = storage.read_bytes(task.image_uri)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return _Outcome(skip=f"missing: no such file {task.image_uri}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
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
        box = cast(
            "tuple[int, int, int, int]",  # the four of clamp_bbox
            tuple(int(v) for v in clamp_bbox(bbox, width, height, task.bbox_file, task.bbox_line)),
        )
    except AnnotationError as exc:
        return _Outcome(error=(exc.file, exc.line, exc.message, exc.fix))
    out = img.crop(box).resize((image_size, image_size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=quality)
    return _Outcome(
        jpeg=buf.getvalue(),
        sha256=digest,
        bbox=box,
        size=(width, height),
    )


def _process_chunk(image_size: int, quality: int, tasks: list[Task]) -> list[_Outcome]:
    return [_process_one(t, image_size, quality) for t in tasks]


def _chunks(items: Iterable[Task], size: int) -> Iterator[list[Task]]:
    chunk: list[Task] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_tasks(
    tasks: Iterable[Task], settings: IngestSettings, workers: int
) -> Iterator[tuple[Task, _Outcome]]:
    """Process tasks, yielding ``(task, outcome)`` in task order.

    At most ``4 * workers`` chunks are in flight, so neither the task list nor
    the results pile up in memory whatever the dataset size. ``workers <= 1``
    runs in this process (no pickling; easy to debug and to test). Workers are
    spawned, not forked: a fork of a process that holds threads (boto3, tqdm)
    can deadlock; so a script that calls :func:`~fashion_attr.data.ingest.ingest_full` with
    ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    """
    size, quality = settings.image_size, settings.jpeg_quality
    if workers <= 1:
        for chunk in _chunks(tasks, _CHUNK):
            yield from zip(chunk, _process_chunk(size, quality, chunk), strict=True)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    window: deque[tuple[list[Task], Future[list[_Outcome]]]] = deque()
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

    def add(self, task: Task) -> None:
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


def sum_accumulated(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
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


def hash_stream(uri: str) -> str:
    """The sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with storage.open_binary(uri) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_annotation_dir(root: str) -> dict[str, str]:
    """sha256 of each annotation file of a DeepFashion-C root (streamed)."""
    out = {}
    for rel in ANNOTATION_FILES:
        uri = storage.join(root, rel)
        try:
            out[rel] = hash_stream(uri)
        except (FileNotFoundError, IsADirectoryError):
            raise AnnotationError(
                uri,
                None,
                "annotation file not found",
                f"pass the dataset root (the folder that holds {', '.join(ANNOTATION_FILES)} "
                "and Img/) as --source, or a batch folder in the same layout as --batch",
            ) from None
    return out


def version_id(content: dict[str, Any]) -> str:
    """``v-`` and 16 hex of the hash of what defines a version (and the shard format)."""
    blob = json.dumps({"format": SHARD_FORMAT, **content}, sort_keys=True).encode()
    return "v-" + hashlib.sha256(blob).hexdigest()[:16]


def opener(root: str) -> Callable[[str], contextlib.AbstractContextManager[Any]]:
    """Opens annotation files relative to a dataset root (for ``load_annotations``)."""
    return lambda rel: storage.open_text(storage.join(root, rel))


def relative_ref(version_uri: str, shard_uri: str) -> str:
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


def read_index(uri: str, expected_sha: str) -> bytes:
    """A version's content-hash index, checked against the manifest's sha256."""
    data = storage.read_bytes(uri)
    if hashlib.sha256(data).hexdigest() != expected_sha:
        raise IngestError(
            f"{uri}: checksum does not match its manifest (the index was modified or truncated). "
            "Fix: re-ingest the base version"
        )
    return data


def iter_index(data: bytes) -> Iterator[dict[str, Any]]:
    """The entries of a gzip JSON Lines index."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        for line in gz:
            if line.strip():
                yield json.loads(line)


@dataclass
class _PartOutput:
    acc: _Accumulator
    shards: dict[str, list[dict[str, Any]]]
    index_bytes: bytes
    index_entries: int


def ingest_tasks(
    tasks: Iterable[Task],
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
    locate_line: Callable[[Task], int | None] | None = None,
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
                index_line = {
                    "key": key,
                    "image": task.name,
                    "sha256": outcome.sha256,
                    "split": task.split,
                    "shard": shard,
                }
                gz.write((json.dumps(index_line, separators=(",", ":")) + "\n").encode())
                entries += 1
                acc.add(task)
            for writer in writers.values():
                writer.close()
    except BaseException:
        # Unpublish what this run wrote (a rerun would overwrite it anyway; a bad
        # input should leave nothing behind) -- unless a concurrent run of the same
        # version has published it meanwhile: its manifest names these very files.
        published = manifest_exists_quietly(version_uri)
        for writer in writers.values():
            writer.abort()
            if not published:
                delete_quietly([storage.join(version_uri, w.name) for w in writer.written])
        remove_empty_local_dir(version_uri)
        raise
    # The manifest's splits first, then any other shard set (a batch's unlabelled images).
    shards = {
        split: [
            {"uri": w.name, "samples": w.samples, "bytes": w.bytes, "sha256": w.sha256}
            for w in writers[split].written
        ]
        for split in [
            *(s for s in SPLITS if s in writers),
            *(s for s in writers if s not in SPLITS),
        ]
    }
    return _PartOutput(acc, shards, index_buf.getvalue(), entries)


def manifest_exists_quietly(version_uri: str) -> bool:
    """Whether the version is published (False when storage cannot say)."""
    with contextlib.suppress(Exception):
        return storage.exists(storage.join(version_uri, MANIFEST_NAME))
    return False


def delete_quietly(uris: Iterable[str]) -> None:
    """Delete objects, best effort (cleaning up must never hide the error being raised)."""
    for uri in uris:
        with contextlib.suppress(Exception):
            storage.delete(uri)


def remove_empty_local_dir(uri: str) -> None:
    """Remove a local version folder that stayed empty."""
    if not storage.is_s3(uri):
        with contextlib.suppress(OSError):
            Path(uri).rmdir()  # only succeeds when empty: never removes others' files


def write_manifest(
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


def find_line(uri: str, image: str) -> int | None:
    """The line of ``image``'s record in an annotation file (streamed; error path only)."""
    with storage.open_text(uri) as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no > 2 and line.split(None, 1)[:1] == [image]:
                return line_no
    return None
