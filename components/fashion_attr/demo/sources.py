"""Where a dataset source is: a DeepFashion-C root, or ``demo://`` for the generated demo.

``demo://?images=N&seed=S`` names the procedural demo catalog
(:mod:`fashion_attr.demo`) in the DeepFashion-C layout. It is generated once
per (images, seed) into the cache folder and reused: the generator is
deterministic, so every part of a fanned-out ingest sees the same images.
Only the newest :data:`KEEP_DEMO_CATALOGS` demo catalogs are kept (each is
about 20 MB at 2,000 images); the folder is logged when one is made.

The cache folder is ``FA_CACHE_DIR`` when set (``make run`` sets it to
``.local_pipeline/cache``), else ``~/.cache/fashion-attr``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from fashion_attr import storage
from fashion_attr.demo.dataset import generate_demo_dataset

__all__ = [
    "DEMO_SCHEME",
    "KEEP_DEMO_CATALOGS",
    "cache_root",
    "demo_params",
    "demo_uri",
    "readable_source",
    "resolve_source",
]

DEMO_SCHEME = "demo://"
_DEMO_CACHE = re.compile(r"images-(\d+)-seed-(\d+)/?$")
KEEP_DEMO_CATALOGS = 3

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The local cache folder of this machine (``FA_CACHE_DIR`` or ``~/.cache/fashion-attr``)."""
    configured = os.environ.get("FA_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "fashion-attr"


def demo_uri(images: int, seed: int) -> str:
    """The source URI of the demo catalog with ``images`` images drawn with ``seed``."""
    return f"{DEMO_SCHEME}?images={images}&seed={seed}"


def demo_params(uri: str) -> tuple[int, int]:
    """``(images, seed)`` of a ``demo://`` URI.

    Raises:
        ValueError: unknown parameters, non-integers, or fewer than 20 images.
    """
    query = parse_qs(urlparse(uri).query)
    unknown = sorted(set(query) - {"images", "seed"})
    if unknown:
        raise ValueError(
            f"source {uri!r}: unknown demo parameter(s) {unknown}. Fix: use demo://?images=N&seed=S"
        )
    try:
        images = int(query.get("images", ["600"])[0])
        seed = int(query.get("seed", ["0"])[0])
    except ValueError:
        raise ValueError(
            f"source {uri!r}: images and seed must be integers. Fix: e.g. demo://?images=600&seed=0"
        ) from None
    if images < 20:
        raise ValueError(f"source {uri!r}: images={images} is too few. Fix: use images >= 20")
    return images, seed


def resolve_source(uri: str) -> str:
    """A DeepFashion-C root for ``uri``: itself, or the generated demo catalog for ``demo://``.

    Raises:
        ValueError: a malformed ``demo://`` URI (names the parameter and the fix).
    """
    if not uri.startswith(DEMO_SCHEME):
        return uri
    images, seed = demo_params(uri)
    parent = cache_root() / "demo"
    root = parent / f"images-{images}-seed-{seed}"
    if (root / "Eval" / "list_eval_partition.txt").exists():
        return str(root)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=parent))
    generate_demo_dataset(tmp, images=images, seed=seed)
    try:
        os.replace(tmp, root)
    except OSError:  # another part generated it first: same seed, same content
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("generated the demo catalog %s in %s", uri, root)
    _prune(parent, keep=root)
    return str(root)


def readable_source(source: str) -> str:
    """``source``, or the regenerated demo catalog when it is a demo cache not on this host.

    A dataset version made from ``demo://`` records the cache folder it was generated in;
    another machine (a container, a later evaluation pod) regenerates the same catalog
    from the folder's name (the generator is deterministic).
    """
    if storage.is_s3(source) or Path(source).exists():
        return source
    match = _DEMO_CACHE.search(source)
    if match:
        return resolve_source(demo_uri(int(match.group(1)), int(match.group(2))))
    return source


def _prune(parent: Path, keep: Path) -> None:
    """Delete all but the newest demo catalogs (never ``keep``)."""
    catalogs = sorted(
        (p for p in parent.glob("images-*-seed-*") if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in catalogs[KEEP_DEMO_CATALOGS:]:
        if old != keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
            log.info("removed the old demo catalog %s", old)
