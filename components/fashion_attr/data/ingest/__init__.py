"""Ingest DeepFashion-C or catalog batches into versioned tar shards, by named operation.

The pipeline's first step (CLI: :mod:`fashion_attr.steps.preprocess`) runs one of:

- :func:`ingest_full`: a whole DeepFashion-C root into a version
  (:mod:`~fashion_attr.data.ingest.full`);
- :func:`ingest_part` then :func:`merge_parts`: the same ingest split over machines;
- :func:`ingest_batch`: a catalog batch folded into a base version
  (:mod:`~fashion_attr.data.ingest.batch`).

:func:`choose_operation` is the one place the step's arguments are turned into an
operation (which combinations are allowed, and the fix for the others). Every
operation validates every annotation record before anything is written (a bad one
raises :class:`~fashion_attr.data.annotations.AnnotationError` naming file and
line), shards the images (:mod:`~fashion_attr.data.ingest.engine`), writes the
content-hash index, and ``manifest.json`` last and atomically: a reader never sees
a half-written version. The version id hashes the annotations, the settings and the
content of every image (known through a fingerprint cache,
:mod:`fashion_attr.data.fingerprints`), so an untouched source is a no-op after one
listing, and an image restored, fixed or replaced under unchanged annotations gives
a new version.
"""

from __future__ import annotations

from typing import Literal

from fashion_attr.data.ingest.batch import ingest_batch
from fashion_attr.data.ingest.engine import (
    MAX_IMAGE_PIXELS,
    IngestError,
    IngestResult,
    IngestSettings,
)
from fashion_attr.data.ingest.full import ingest_full, ingest_part, merge_parts
from fashion_attr.data.shards import ManifestError, load_manifest

__all__ = [
    "MAX_IMAGE_PIXELS",
    "IngestError",
    "IngestResult",
    "IngestSettings",
    "ManifestError",
    "Operation",
    "choose_operation",
    "ingest_batch",
    "ingest_full",
    "ingest_part",
    "load_manifest",
    "merge_parts",
]

#: The ingest operations: ``full`` (:func:`ingest_full`), ``part`` (:func:`ingest_part`),
#: ``merge`` (:func:`merge_parts`) and ``batch`` (:func:`ingest_batch`).
Operation = Literal["full", "part", "merge", "batch"]


def choose_operation(
    *,
    source: str | None,
    base: str | None,
    batch: str | None,
    part: int | None,
    parts: int | None,
    merge: bool,
) -> Operation:
    """The operation a set of ingest arguments asks for (the CLI's flags, the pipeline's).

    Args:
        source: the DeepFashion-C root (``--source``).
        base: the version a batch extends (``--base``).
        batch: the batch (``--batch`` / ``--batch-dir``).
        part: this run's part (``--part``).
        parts: the number of parts (``--parts``).
        merge: publish the parts (``--merge``).

    Returns:
        ``batch`` with a base and a batch, ``part`` with a part, ``merge`` with merge,
        else ``full``.

    Raises:
        IngestError: a combination that means nothing, naming the flags and the fix.
    """
    if base is not None or batch is not None:
        if base is None or batch is None:
            raise IngestError(
                "an incremental ingest needs both --base (the version to extend, or 'latest') "
                "and --batch/--batch-dir (the new data). Fix: pass both, or neither"
            )
        if part is not None or parts is not None or merge:
            raise IngestError(
                "--part/--parts/--merge split a full ingest; catalog batches are small and run "
                "in one process. Fix: drop --part/--parts/--merge"
            )
        return "batch"
    if parts is not None and parts < 1:
        raise IngestError(f"--parts {parts}. Fix: pass --parts >= 1")
    if merge and part is not None:
        raise IngestError("--merge runs after the parts. Fix: drop --part when merging")
    if part is not None and (parts is None or not 0 <= part < parts):
        raise IngestError(
            f"--part {part} needs --parts n with 0 <= part < n (got --parts {parts}). "
            "Fix: pass e.g. --part 0 --parts 4"
        )
    if source is None:
        raise IngestError("a full ingest needs --source (the DeepFashion-C root, or demo://...)")
    if merge:
        return "merge"
    return "part" if part is not None else "full"
