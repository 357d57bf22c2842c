"""The versioned shard format: tar shards, their manifest, and safe readers.

A dataset version is one folder (local or ``s3://``)::

    <dest>/<version>/
        train-0000-000000.tar   webdataset-style tar shards, one set per split
        val-0000-000000.tar     (<split>-<part>-<nnnnnn>.tar)
        test-0000-000000.tar
        index.jsonl.gz          image content-hash index (for incremental dedupe)
        manifest.json           written LAST; names every shard with its sha256
        _parts/part-<i>.json    only for multi-part ingests (--part/--parts)

``version`` is ``"v-"`` plus 16 hex digits of a content hash (see
:mod:`fashion_attr.data.ingest`), so the same inputs always land in the same
folder. A reader trusts only the shards named in ``manifest.json``: shards from
a crashed run have no manifest and stay invisible until a rerun rewrites them
under the same names and writes the manifest.

Each sample is two tar members sharing a key (the webdataset convention):

* ``<key>.jpg``: the image cropped to its (clamped) bounding box, resized to
  ``image_size x image_size``, JPEG-encoded.
* ``<key>.json``: ``{"category": int (0-based), "positives": [int, ...],
  "unknown": [int, ...], "image": "<original image name>", "bbox": [x1, y1,
  x2, y2] (the clamped box used for the crop), "sha256": "<hex digest of the
  original image bytes>"}``. Attribute indices are 0-based rows of
  ``list_attr_cloth.txt``; an attribute in neither list is a known negative.

``<key>`` is :func:`sample_key` of the image name: 16 hex digits, no dots (a
dot would split webdataset's key from its extension). Members are flat
regular files with fixed metadata (mtime 0, mode 0644, uid/gid 0), so the same
samples in the same order give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fashion_attr import storage

__all__ = [
    "INDEX_NAME",
    "MANIFEST_NAME",
    "SHARD_FORMAT",
    "SPLITS",
    "AttributeCounts",
    "AttributeInfo",
    "BaseRef",
    "CategoryInfo",
    "IndexRef",
    "Manifest",
    "ManifestError",
    "ShardEntry",
    "ShardFormatError",
    "ShardMember",
    "ShardWriter",
    "SkippedImage",
    "index_shard",
    "iter_shard_samples",
    "load_manifest",
    "resolve_shard_uri",
    "sample_key",
    "sha256_file",
    "shard_name",
]

SHARD_FORMAT = "fashion-attr-shards/1"
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.jsonl.gz"
SPLITS = ("train", "val", "test")
_EXTENSIONS = ("jpg", "json")
_KEY_RE = re.compile(r"^[0-9A-Za-z_-]+$")


class ManifestError(ValueError):
    """A manifest is missing, unreadable or inconsistent."""


class ShardFormatError(ValueError):
    """A shard tar holds something the format does not allow (unsafe or malformed member)."""


def sample_key(name: str) -> str:
    """The stable shard key of an image: the first 16 hex digits of sha1(name).

    Args:
        name: The image name as the annotations give it (``img/Item/img_1.jpg``)
            or the image URI of a catalog batch record.

    Returns:
        16 lowercase hex digits (no dots, so webdataset splits key and extension right).
    """
    return hashlib.sha1(name.encode("utf-8")).hexdigest()[:16]


def shard_name(split: str, part: int, number: int) -> str:
    """The file name of shard ``number`` of ``split`` written by ingest part ``part``."""
    return f"{split}-{part:04d}-{number:06d}.tar"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- manifest


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShardEntry(_Frozen):
    """One shard named by a manifest.

    Attributes:
        uri: The shard's location: a bare name (a file in the version folder),
            ``../<version>/<name>`` (a sibling version, e.g. the base of an
            incremental version) or an absolute path / ``s3://`` URI.
        samples: Number of samples in the shard.
        bytes: Size of the tar file.
        sha256: Hex sha256 of the tar file (readers verify it).
    """

    uri: str
    samples: int = Field(ge=1)
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CategoryInfo(_Frozen):
    """A clothing category: its name and type (1 upper, 2 lower, 3 full body)."""

    name: str
    type: int


class AttributeInfo(_Frozen):
    """An attribute: its name and group (1 texture, 2 fabric, 3 shape, 4 part, 5 style)."""

    name: str
    group: int


class AttributeCounts(_Frozen):
    """Per-attribute label counts over the ingested train samples (index = attribute row)."""

    positive: list[int]
    negative: list[int]
    unknown: list[int]


class SkippedImage(_Frozen):
    """An image that ingest skipped (missing, undecodable, duplicate), with the reason."""

    image: str
    reason: str


class IndexRef(_Frozen):
    """The image content-hash index object (``index.jsonl.gz``) and its checksum.

    Each line is ``{"key", "image", "sha256", "split", "shard"}``; the file is a
    concatenation of gzip members (one per ingest part or incremental batch),
    which :mod:`gzip` reads as one stream.
    """

    uri: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    entries: int = Field(ge=0)


class BaseRef(_Frozen):
    """The version an incremental version extends."""

    version: str
    uri: str


class Manifest(_Frozen):
    """The manifest of one dataset version (``<version>/manifest.json``).

    Attributes:
        format: Always :data:`SHARD_FORMAT`.
        version: The version id, ``v-<16 hex>``.
        created_at: ISO-8601 UTC time the manifest was written.
        source: The DeepFashion-C root the version was built from (of the base, if incremental).
        batch: The incremental batch (folder or ``.jsonl``), or ``None``.
        base: The base version of an incremental version, or ``None``.
        settings: The ingest settings that entered the version hash.
        image_size: Side of the square shard images, in pixels.
        counts: Samples per split (equals the sum of that split's shard samples).
        categories: The categories, in label order.
        attributes: The attributes, in label order.
        train_attribute_counts: Positive / negative / unknown counts per attribute on train.
        train_category_counts: Train samples per category.
        shards: Shards per split.
        skipped: Images this ingest skipped, with reasons.
        index: The content-hash index object.
    """

    format: Literal["fashion-attr-shards/1"]
    version: str = Field(pattern=r"^v-[0-9a-f]{16}$")
    created_at: str
    source: str
    batch: str | None = None
    base: BaseRef | None = None
    settings: dict[str, Any]
    image_size: int = Field(ge=1)
    counts: dict[str, int]
    categories: list[CategoryInfo]
    attributes: list[AttributeInfo]
    train_attribute_counts: AttributeCounts
    train_category_counts: list[int]
    shards: dict[str, list[ShardEntry]]
    skipped: list[SkippedImage]
    index: IndexRef

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n_attr = len(self.attributes)
        for split in set(self.counts) | set(self.shards):
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
            total = sum(entry.samples for entry in self.shards.get(split, []))
            if total != self.counts.get(split, 0):
                raise ValueError(
                    f"counts[{split!r}] = {self.counts.get(split, 0)} but its shards hold {total}"
                )
        tac = self.train_attribute_counts
        for field in ("positive", "negative", "unknown"):
            if len(getattr(tac, field)) != n_attr:
                raise ValueError(
                    f"train_attribute_counts.{field} has {len(getattr(tac, field))} entries "
                    f"for {n_attr} attributes"
                )
        if len(self.train_category_counts) != len(self.categories):
            raise ValueError(
                f"train_category_counts has {len(self.train_category_counts)} entries "
                f"for {len(self.categories)} categories"
            )
        return self

    @property
    def num_attributes(self) -> int:
        """Number of attributes N."""
        return len(self.attributes)

    @property
    def num_categories(self) -> int:
        """Number of categories C."""
        return len(self.categories)

    def shard_uris(self, version_uri: str, split: str) -> list[tuple[str, ShardEntry]]:
        """The resolved URI of every shard of ``split``, with its entry, in manifest order.

        Raises:
            ManifestError: if the version has no such split.
        """
        if split not in self.shards or not self.shards[split]:
            have = ", ".join(s for s in SPLITS if self.shards.get(s)) or "none"
            raise ManifestError(
                f"version {self.version} at {version_uri} has no {split!r} samples "
                f"(splits with samples: {have}). Fix: pick one of those splits"
            )
        return [(resolve_shard_uri(version_uri, e.uri), e) for e in self.shards[split]]

    def to_json(self) -> str:
        """The manifest as indented JSON text (what ``manifest.json`` holds)."""
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=False) + "\n"


def resolve_shard_uri(version_uri: str, ref: str) -> str:
    """Resolve a manifest shard reference against the version folder.

    Args:
        version_uri: The version folder (local path or ``s3://`` URI).
        ref: A bare name, a relative path with leading ``../`` parts, an
            absolute local path or an ``s3://`` URI.

    Returns:
        The shard's absolute URI (or local path).
    """
    if storage.is_s3(ref) or os.path.isabs(ref):
        return ref
    if storage.is_s3(version_uri):
        bucket, key = storage.split_s3(version_uri)
        joined = posixpath.normpath(posixpath.join("/" + key.strip("/"), ref)).lstrip("/")
        return f"s3://{bucket}/{joined}"
    return os.path.normpath(os.path.join(str(version_uri), ref))


def load_manifest(version_uri: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``<version_uri>/manifest.json``.

    Args:
        version_uri: The version folder, local or ``s3://``.

    Returns:
        The validated :class:`Manifest`.

    Raises:
        ManifestError: if there is no manifest (an incomplete version or a wrong
            URI), it is not JSON, or it fails validation.
    """
    uri = storage.join(str(version_uri), MANIFEST_NAME)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise ManifestError(
            f"no manifest.json at {uri}: the version is incomplete or the URI is wrong. "
            "Fix: rerun the ingest step (python -m fashion_attr.steps.preprocess) for this "
            "version, or pass the folder that holds manifest.json"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{uri}: not valid JSON (line {exc.lineno}: {exc.msg}). Fix: rerun the ingest "
            "step to rewrite it"
        ) from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise ManifestError(
            f"{uri}: invalid manifest ({problems}). Fix: rerun the ingest step to rewrite it"
        ) from None


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Written:
    name: str
    samples: int
    bytes: int
    sha256: str


class ShardWriter:
    """Write samples of one split into size-bounded tar shards as they fill.

    Each shard is assembled in a local temporary file (in the version folder
    for a local destination, so the final rename is atomic; in a private temp
    folder for S3, then uploaded with one atomic put), so memory stays at one
    sample at a time whatever the shard size.

    Args:
        version_uri: The version folder (local or ``s3://``).
        split: ``train``, ``val`` or ``test``.
        part: The ingest part number (0 for single-process ingest).
        max_samples: Start a new shard once a shard holds this many samples.
        max_bytes: Start a new shard before a sample would push the tar past this size.
        first_number: The number of the first shard (incremental batches start at 0
            in their own version folder).
    """

    def __init__(
        self,
        version_uri: str,
        split: str,
        part: int,
        *,
        max_samples: int,
        max_bytes: int,
        first_number: int = 0,
    ) -> None:
        if max_samples < 1 or max_bytes < 1:
            raise ValueError(
                f"shard limits must be positive (max_samples={max_samples}, "
                f"max_bytes={max_bytes}). Fix: pass --shard-max-samples >= 1 and "
                "--shard-max-bytes >= 1"
            )
        self.version_uri = str(version_uri)
        self.split = split
        self.part = part
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self._number = first_number
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._tar: tarfile.TarFile | None = None
        self._path: Path | None = None
        self._count = 0
        self._size = 0
        self._keys: set[str] = set()
        self.written: list[_Written] = []

    def _staging_dir(self) -> Path:
        if storage.is_s3(self.version_uri):
            if self._tmpdir is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="fa-shards-")
            return Path(self._tmpdir.name)
        path = Path(self.version_uri)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _open(self) -> None:
        name = shard_name(self.split, self.part, self._number)
        # A name unique to this writer: two runs of the same version (a retried step
        # racing the original) must never write into one shared temporary file; each
        # renames its own complete, byte-identical shard into place.
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self._staging_dir())
        os.chmod(fd, 0o644)  # mkstemp creates 0600; a published shard is readable like any file
        os.close(fd)
        self._path = Path(tmp)
        # Stays open across add() calls; closed by _close_current() or abort().
        self._tar = tarfile.open(self._path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._count = 0
        self._size = 0
        self._keys = set()

    def add(self, key: str, jpeg: bytes, meta: dict[str, Any]) -> _Written | None:
        """Append one sample; return the shard that this call completed, if any.

        Args:
            key: The sample key (:func:`sample_key`), unique within the shard.
            jpeg: The encoded image.
            meta: The JSON label record (see the module docstring).

        Returns:
            The shard closed to make room for this sample, or ``None``.
        """
        if not _KEY_RE.match(key):
            raise ShardFormatError(f"sample key {key!r} must be [0-9A-Za-z_-]+ (no dots)")
        meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        # 512-byte header + data padded to 512 per member.
        sample_size = 1024 + _pad512(len(jpeg)) + _pad512(len(meta_bytes))
        done = None
        if self._tar is not None and (
            self._count >= self.max_samples or self._size + sample_size > self.max_bytes
        ):
            done = self._close_current()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        if key in self._keys:
            raise ShardFormatError(f"duplicate sample key {key!r} in one shard")
        self._keys.add(key)
        for ext, data in (("jpg", jpeg), ("json", meta_bytes)):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._size += sample_size
        return done

    def _close_current(self) -> _Written:
        assert self._tar is not None and self._path is not None
        self._tar.close()
        self._tar = None
        name = shard_name(self.split, self.part, self._number)
        digest = sha256_file(self._path)
        size = self._path.stat().st_size
        target = storage.join(self.version_uri, name)
        if storage.is_s3(self.version_uri):
            storage.upload_file(self._path, target)
            self._path.unlink()
        else:
            os.replace(self._path, target)
        self._number += 1
        written = _Written(name=name, samples=self._count, bytes=size, sha256=digest)
        self.written.append(written)
        return written

    def close(self) -> _Written | None:
        """Finish the open shard (if any); return it."""
        done = self._close_current() if self._tar is not None and self._count else None
        self.abort()
        return done

    def abort(self) -> None:
        """Drop the open, unfinished shard (its temporary file) without publishing it."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._path is not None and self._path.name.endswith(".tmp"):
            self._path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def _pad512(n: int) -> int:
    return (n + 511) // 512 * 512


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ShardMember:
    """Where one sample lives inside a shard tar (byte offsets of its two members).

    Attributes:
        key: The sample key.
        jpg_offset: Offset of the JPEG data in the tar file.
        jpg_size: Size of the JPEG data.
        json_offset: Offset of the JSON label data.
        json_size: Size of the JSON label data.
    """

    key: str
    jpg_offset: int
    jpg_size: int
    json_offset: int
    json_size: int


def _check_member(info: tarfile.TarInfo, shard: str) -> tuple[str, str]:
    """Refuse anything but a flat regular file named ``<key>.jpg``/``<key>.json``."""
    name = info.name
    if not info.isreg():
        kind = (
            "symbolic link"
            if info.issym()
            else "hard link"
            if info.islnk()
            else "directory"
            if info.isdir()
            else "special file"
        )
        raise ShardFormatError(
            f"shard {shard}: member {name!r} is a {kind}; only regular files are allowed. "
            "The shard is unsafe or not written by fashion_attr ingest. Fix: delete it and "
            "re-run the ingest step"
        )
    if (
        name.startswith(("/", "\\"))
        or "/" in name
        or "\\" in name
        or ".." in name.split(".")
        or name in {"", ".", ".."}
        or name.startswith("..")
    ):
        raise ShardFormatError(
            f"shard {shard}: member name {name!r} is a path (absolute, '..' or a folder); "
            "members must be flat '<key>.jpg' / '<key>.json' names. Fix: delete the shard "
            "and re-run the ingest step"
        )
    key, dot, ext = name.partition(".")
    if not dot or ext not in _EXTENSIONS or not _KEY_RE.match(key):
        raise ShardFormatError(
            f"shard {shard}: member {name!r} is not '<key>.jpg' or '<key>.json' "
            "(key: letters, digits, '_' or '-'). Fix: delete the shard and re-run the ingest step"
        )
    return key, ext


def index_shard(path: str | os.PathLike[str], label: str | None = None) -> list[ShardMember]:
    """Validate a local shard tar and return the offsets of its samples, in tar order.

    Only member headers are read (tarfile seeks over the data), so indexing a
    64 MB shard takes milliseconds.

    Args:
        path: Local shard file.
        label: How errors name the shard (defaults to ``path``).

    Returns:
        One :class:`ShardMember` per sample.

    Raises:
        ShardFormatError: on a link, folder, absolute or ``..`` name, an unknown
            extension, or a sample missing its ``.jpg`` or ``.json``.
    """
    label = label or str(path)
    found: dict[str, dict[str, tuple[int, int]]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                key, ext = _check_member(info, label)
                slot = found.setdefault(key, {})
                if not slot:
                    order.append(key)
                if ext in slot:
                    raise ShardFormatError(f"shard {label}: member {info.name!r} appears twice")
                slot[ext] = (info.offset_data, info.size)
    except tarfile.TarError as exc:
        raise ShardFormatError(
            f"shard {label}: not a readable tar ({exc}). Fix: delete it and re-run the ingest step"
        ) from None
    members = []
    for key in order:
        slot = found[key]
        missing = [ext for ext in _EXTENSIONS if ext not in slot]
        if missing:
            raise ShardFormatError(
                f"shard {label}: sample {key!r} lacks {', '.join('.' + m for m in missing)}. "
                "Fix: delete the shard and re-run the ingest step"
            )
        members.append(ShardMember(key, *slot["jpg"], *slot["json"]))
    return members


def iter_shard_samples(
    path: str | os.PathLike[str], label: str | None = None
) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """Yield ``(key, jpeg_bytes, label_record)`` for every sample of a local shard, in order.

    The shard is validated first (:func:`index_shard`).
    """
    members = index_shard(path, label)
    with open(path, "rb") as fh:
        for m in members:
            fh.seek(m.jpg_offset)
            jpeg = fh.read(m.jpg_size)
            fh.seek(m.json_offset)
            meta = json.loads(fh.read(m.json_size))
            yield m.key, jpeg, meta
