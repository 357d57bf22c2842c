"""Dataset lineage: which version is the latest, what a version contains, what is pending.

Versions live under one ``dest`` (a folder or an ``s3://`` prefix) as
``<dest>/<version>/manifest.json``. An incremental version names its base
(``manifest.base``) and the catalog batch it folded in (``manifest.batch``),
so the chain of bases is the version's lineage.

``<dest>/LATEST`` holds the id of the newest version that ``preprocess``
published or resolved (a full ingest, an incremental chain, or an unchanged
base). Scheduled retraining reads it as ``--base latest``.

A catalog drop is a prefix of ``*.jsonl`` batches that teams name so that
lexical order is arrival order (``2026-11-26.jsonl``); a batch is also one
``.jsonl`` file or one folder in the DeepFashion-C layout.
:func:`pending_batches` lists, oldest name first, every batch of a drop that
a version's lineage does not contain yet.
"""

from __future__ import annotations

from fashion_attr import storage
from fashion_attr.data.annotations import ATTR_IMG
from fashion_attr.data.shards import Manifest, load_manifest

__all__ = [
    "LATEST_POINTER",
    "batch_kind",
    "latest_version",
    "lineage",
    "lineage_batches",
    "pending_batches",
    "set_latest",
    "version_uri",
]

LATEST_POINTER = "LATEST"


def version_uri(dest: str, ref: str) -> str:
    """The folder of a version given by id (``v-...``, looked up under ``dest``) or by URI."""
    if "/" not in ref and "\\" not in ref and ref.startswith("v-"):
        return storage.join(dest, ref)
    return ref.rstrip("/")


def latest_version(dest: str) -> str | None:
    """The id in ``<dest>/LATEST``, or None when nothing was published there yet."""
    pointer = storage.join(dest, LATEST_POINTER)
    return storage.read_text(pointer).strip() if storage.exists(pointer) else None


def set_latest(dest: str, version: str) -> str:
    """Point ``<dest>/LATEST`` at ``version`` (one atomic write); returns the pointer's URI."""
    pointer = storage.join(dest, LATEST_POINTER)
    storage.write_text(pointer, version)
    return pointer


def lineage(dest: str, ref: str) -> list[Manifest]:
    """The manifests of ``ref`` and of every base below it, newest first.

    Raises:
        ManifestError: a version of the chain has no valid manifest.
    """
    chain: list[Manifest] = []
    current: str | None = version_uri(dest, ref)
    while current:
        manifest = load_manifest(current)
        chain.append(manifest)
        base = manifest.base
        current = (base.uri or version_uri(dest, base.version)) if base is not None else None
    return chain


def lineage_batches(dest: str, ref: str) -> set[str]:
    """Every catalog batch already folded into ``ref`` (following its base chain)."""
    return {m.batch for m in lineage(dest, ref) if m.batch}


def batch_kind(batch_uri: str) -> str:
    """``"jsonl"`` (one catalog file), ``"folder"`` (a DeepFashion-C layout) or ``"drop"``."""
    if batch_uri.endswith(".jsonl"):
        return "jsonl"
    if storage.exists(storage.join(batch_uri, ATTR_IMG)):
        return "folder"
    return "drop"


def pending_batches(batch_uri: str, dest: str, base: str) -> list[str]:
    """Catalog batches under ``batch_uri`` not yet in ``base``'s lineage, oldest name first.

    Args:
        batch_uri: one batch (a ``.jsonl`` file or a DeepFashion-C-layout folder) or a drop
            prefix holding many ``*.jsonl`` batches.
        dest: where the versions live.
        base: the version (id or URI) whose lineage counts as done.

    Returns:
        The batch URIs to fold in, in order (empty for a drop with nothing new: an S3 drop
        prefix exists only once the first batch arrives, so an empty one is no error).
    """
    if batch_kind(batch_uri) == "drop":
        candidates = [u for u in storage.list_uris(batch_uri) if u.endswith(".jsonl")]
    else:
        candidates = [batch_uri]
    done = lineage_batches(dest, base)
    return [c for c in sorted(candidates) if c not in done]
