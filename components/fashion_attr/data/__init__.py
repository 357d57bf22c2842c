"""DeepFashion-C data: annotation reader, catalog batches, shards, ingest, loader.

Modules:

* :mod:`~fashion_attr.data.annotations`: streaming, validating reader of the six
  annotation files (:func:`load_annotations`).
* :mod:`~fashion_attr.data.catalog`: JSON Lines catalog batches (:func:`read_catalog_jsonl`).
* :mod:`~fashion_attr.data.shards`: the versioned tar-shard format and its manifest.
* :mod:`~fashion_attr.data.ingest`: DeepFashion-C and batches -> shard versions.
* :mod:`~fashion_attr.data.loader`: the resumable, DDP-aware training loader (:func:`make_loader`).

Names are re-exported lazily (PEP 562): ``from fashion_attr.data import make_loader``
imports torch, but ``import fashion_attr.data.ingest`` (what ingest worker
processes do) does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fashion_attr.data.annotations import (
        ANNOTATION_FILES,
        AnnotationError,
        Attribute,
        Category,
        DatasetIndex,
        ImageRecord,
        clamp_bbox,
        load_annotations,
        load_annotations_from_dir,
        write_annotation_file,
    )
    from fashion_attr.data.catalog import CatalogRecord, read_catalog_jsonl
    from fashion_attr.data.ingest import (
        IngestError,
        IngestResult,
        IngestSettings,
        ingest_batch,
        ingest_full,
    )
    from fashion_attr.data.loader import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        Batch,
        LoaderState,
        ShardDataset,
        ShardLoader,
        decode_batch_on_device,
        fetch_shards,
        make_loader,
        normalize_on_device,
        rank_indices,
    )
    from fashion_attr.data.shards import (
        SPLITS,
        Manifest,
        ManifestError,
        ShardFormatError,
        ShardWriter,
        index_shard,
        iter_shard_samples,
        load_manifest,
        resolve_shard_uri,
        sample_key,
    )

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "ANNOTATION_FILES",
            "AnnotationError",
            "Attribute",
            "Category",
            "DatasetIndex",
            "ImageRecord",
            "clamp_bbox",
            "load_annotations",
            "load_annotations_from_dir",
            "write_annotation_file",
        ],
        "annotations",
    ),
    **dict.fromkeys(["CatalogRecord", "read_catalog_jsonl"], "catalog"),
    **dict.fromkeys(
        ["IngestError", "IngestResult", "IngestSettings", "ingest_batch", "ingest_full"], "ingest"
    ),
    **dict.fromkeys(
        [
            "IMAGENET_MEAN",
            "IMAGENET_STD",
            "Batch",
            "LoaderState",
            "ShardDataset",
            "ShardLoader",
            "decode_batch_on_device",
            "fetch_shards",
            "make_loader",
            "normalize_on_device",
            "rank_indices",
        ],
        "loader",
    ),
    **dict.fromkeys(
        [
            "SPLITS",
            "Manifest",
            "ManifestError",
            "ShardFormatError",
            "ShardWriter",
            "index_shard",
            "iter_shard_samples",
            "load_manifest",
            "resolve_shard_uri",
            "sample_key",
        ],
        "shards",
    ),
}

__all__ = [
    "ANNOTATION_FILES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "AnnotationError",
    "Attribute",
    "Batch",
    "CatalogRecord",
    "Category",
    "DatasetIndex",
    "ImageRecord",
    "IngestError",
    "IngestResult",
    "IngestSettings",
    "LoaderState",
    "Manifest",
    "ManifestError",
    "ShardDataset",
    "ShardFormatError",
    "ShardLoader",
    "ShardWriter",
    "clamp_bbox",
    "decode_batch_on_device",
    "fetch_shards",
    "index_shard",
    "ingest_batch",
    "ingest_full",
    "iter_shard_samples",
    "load_annotations",
    "load_annotations_from_dir",
    "load_manifest",
    "make_loader",
    "normalize_on_device",
    "rank_indices",
    "read_catalog_jsonl",
    "resolve_shard_uri",
    "sample_key",
    "write_annotation_file",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
