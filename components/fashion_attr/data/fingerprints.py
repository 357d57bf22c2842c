"""The content of a source's images, known cheaply, so that a dataset version follows it.

A version id hashes the annotation files, the ingest settings and the **content
digest** of the images: one sha256 over every image's path and content hash. The
content hash of a file is the MD5 of its bytes, because that is what S3 already
reports: a plain (single-part) object's ETag *is* that MD5, so an S3 source is
known from its listing alone, without reading a single image (at 289k images that
saves as many GETs as the ingest itself makes). Multipart ETags (``<md5>-<parts>``)
are not content hashes: those objects are read and hashed. MD5 is an identity of
content here, not a defence against an attacker who crafts collisions. (Objects
encrypted with SSE-KMS or SSE-C have ETags that are not the MD5 of the bytes but
change on every write: such a source can only give a *new* version too often,
never keep a stale one.) Full reads are expensive, so hashes are remembered per source in
``<dest>/_fingerprints/<source key>.json.gz`` beside a cheap fingerprint of each
file: its size and a stamp that changes when the file is rewritten (the object's
ETag on S3; the modification time in nanoseconds on a local disk). A later ingest
lists the source (one ``scandir`` walk, or one S3 listing per 1,000 objects),
re-hashes only the files whose fingerprint changed, and so decides in seconds:

- an untouched source gives the same version: a no-op, no image read;
- an image restored, fixed or replaced gives a new version;
- a file rewritten with the same bytes (``touch``, a copy to S3) gives the same
  version again: the digest is of the content, not of the stamps.

What the fast path trusts: a file whose size and stamp are those cached has the cached
content. On S3 the stamp is the ETag, which the store computes from the bytes, so nothing
can slip through. On a local disk it is the modification time: a file rewritten with
other bytes of the same size and its old modification time put back (``rsync -t``,
``cp -p``, ``tar`` or a backup restore do that) keeps its cached hash, and the source
its old version. ``rehash=True`` (the ingest's ``--rehash``) ignores the cache and reads
every image again (the cache is then rewritten from what was read).

The first ingest of a source hashes every image once. The version's index
(``index.jsonl.gz``) records each ingested image's content hash, and incremental
batches deduplicate on it. Catalog batches (``.jsonl``) are small: their images
are hashed every time, with no cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fashion_attr import storage

__all__ = [
    "CACHE_DIR",
    "content_digest",
    "content_digest_of_tree",
    "fingerprint_tree",
    "hash_objects",
]

log = logging.getLogger(__name__)
CACHE_DIR = "_fingerprints"

Fingerprint = tuple[int, str]  # (size in bytes, stamp)


def fingerprint_tree(root: str) -> dict[str, Fingerprint]:
    """``{relative path: (size, stamp)}`` of every file under ``root`` (folder or S3 prefix).

    Local: one ``os.scandir`` walk (stamp: modification time, ns). S3: one paginated
    listing, 1,000 objects a request (stamp: the ETag). A missing root gives ``{}``.
    """
    if storage.is_s3(root):
        bucket, key = storage.split_s3(root)
        prefix = key.rstrip("/") + "/" if key else ""
        out: dict[str, Fingerprint] = {}
        try:
            pages = storage.s3_client().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix) :]
                    out[rel] = (int(obj["Size"]), str(obj["ETag"]).strip('"'))
        except Exception as exc:
            storage.reraise(root, exc)
            raise
        return out
    base = Path(root)
    out = {}
    stack = [base]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file():
                st = entry.stat()
                rel = os.path.relpath(entry.path, base).replace(os.sep, "/")
                out[rel] = (int(st.st_size), str(st.st_mtime_ns))
    return out


_PLAIN_ETAG = re.compile(r"^[0-9a-f]{32}$")


def _md5(uri: str) -> str | None:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with storage.open_binary(uri) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return digest.hexdigest()


def hash_objects(
    uris: Iterable[str], workers: int = 16, what: str = "images"
) -> dict[str, str | None]:
    """``{uri: MD5 of its bytes, or None when missing}``, read in parallel threads."""
    uris = list(dict.fromkeys(uris))
    if not uris:
        return {}
    start, out = time.monotonic(), {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(uris)))) as pool:
        for i, (uri, sha) in enumerate(zip(uris, pool.map(_md5, uris), strict=True), 1):
            out[uri] = sha
            if i % 20000 == 0:
                rate = i / max(time.monotonic() - start, 1e-9)
                eta = (len(uris) - i) / rate
                log.info("hashing %s: %d/%d (%.0f/s, ETA %.0f s)", what, i, len(uris), rate, eta)
    return out


def content_digest(hashes: dict[str, str | None]) -> str:
    """One sha256 over every ``path content-hash`` line, in path order (missing: ``-``)."""
    digest = hashlib.sha256()
    for path in sorted(hashes):
        digest.update(f"{path}\t{hashes[path] or '-'}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _cache_uri(dest: str, root: str) -> str:
    key = hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:16]
    return storage.join(dest, CACHE_DIR, f"{key}.json.gz")


def _load_cache(uri: str) -> dict[str, list[Any]]:
    try:
        data = json.loads(gzip.decompress(storage.read_bytes(uri)))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, EOFError):  # a damaged cache is only a slower ingest
        log.warning("ignoring the unreadable fingerprint cache %s", uri)
        return {}
    return data.get("files", {}) if isinstance(data, dict) else {}


def content_digest_of_tree(
    root: str, dest: str, workers: int = 16, *, rehash: bool = False
) -> tuple[str, int]:
    """The content digest of every file under ``root``; re-hashes only changed files.

    Args:
        root: the folder or S3 prefix of the images (``<source>/Img``).
        dest: where versions live (the fingerprint cache goes to ``<dest>/_fingerprints``).
        workers: threads that read files to hash.
        rehash: ignore the cache and the ETags: read and hash every file (see the module
            docstring for what the fast path trusts).

    Returns:
        ``(digest, files hashed now)``.
    """
    prints = fingerprint_tree(root)
    cache_uri = _cache_uri(dest, root)
    cache = {} if rehash else _load_cache(cache_uri)
    hashes: dict[str, str | None] = {}
    stale = []
    s3 = storage.is_s3(root)
    for rel, (size, stamp) in prints.items():
        cached = cache.get(rel)
        if rehash:
            stale.append(rel)
        elif s3 and _PLAIN_ETAG.match(stamp):
            hashes[rel] = stamp  # a single-part object's ETag is the MD5 of its bytes
        elif cached and cached[0] == size and cached[1] == stamp:
            hashes[rel] = cached[2]
        else:
            stale.append(rel)
    if stale:
        log.info("hashing %d of %d images under %s (new or changed)", len(stale), len(prints), root)
        fresh = hash_objects((storage.join(root, rel) for rel in stale), workers, "images")
        for rel in stale:
            hashes[rel] = fresh[storage.join(root, rel)]
        files = {rel: [size, stamp, hashes[rel]] for rel, (size, stamp) in prints.items()}
        blob = gzip.compress(json.dumps({"root": root, "files": files}).encode(), mtime=0)
        storage.write_bytes(cache_uri, blob)
    return content_digest(hashes), len(stale)
