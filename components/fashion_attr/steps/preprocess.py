r"""Step 1: ingest DeepFashion-C (or new catalog batches) into a versioned shard set.

Usage::

    # full ingest of a local folder or an S3 prefix (demo://?images=N&seed=S: the demo)
    python -m fashion_attr.steps.preprocess --source /data/DeepFashion-C --dest s3://bucket/datasets

    # split over machines, then merge
    python -m fashion_attr.steps.preprocess --source ... --dest ... --part 0 --parts 4
    python -m fashion_attr.steps.preprocess --source ... --dest ... --merge --parts 4

    # incremental: a new version = base + the new images of a batch (folder or .jsonl)
    python -m fashion_attr.steps.preprocess --dest s3://bucket/datasets --base v-0123456789abcdef \
        --batch s3://bucket/incoming/2024-06.jsonl

    # what the scheduled pipeline does: fold every pending batch of a catalog drop into the
    # latest version (the first run ingests --source first)
    python -m fashion_attr.steps.preprocess --dest s3://bucket/datasets --base latest \
        --batch-dir s3://bucket/catalog/ --source s3://bucket/deepfashion-c

Settings come from :class:`fashion_attr.config.PreprocessConfig` (defaults <
``--preset`` < ``--config`` < ``--set`` < the explicit flags below). An
incremental run takes ``image_size`` and ``jpeg_quality`` from its base
version unless they are set explicitly (and then they must match it).

Every run that publishes or resolves a version points ``<dest>/LATEST`` at it
(:mod:`fashion_attr.data.versions`); a part run does not. On success the step
prints its :class:`PreprocessResult` as one line of JSON and writes it to
``<version>/result.json`` (part runs: nowhere; the merge publishes). Bad input
(annotation errors, which name file and line; bad arguments; a missing or
invalid base manifest; missing parts) prints the message on stderr and exits 2
with nothing published. See :mod:`fashion_attr.data.ingest` for what an ingest
does and :mod:`fashion_attr.data.shards` for the output format.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from fashion_attr import storage
from fashion_attr.config import PreprocessConfig, load_config
from fashion_attr.data import versions
from fashion_attr.data.ingest import (
    IngestError,
    IngestResult,
    choose_operation,
    ingest_batch,
    ingest_full,
    ingest_part,
    merge_parts,
)
from fashion_attr.data.shards import load_manifest
from fashion_attr.demo.sources import resolve_source
from fashion_attr.resources import cap_workers
from fashion_attr.results import PreprocessResult
from fashion_attr.steps.contract import add_config_args, run_cli, step_parser

__all__ = ["PreprocessResult", "main", "run"]


def _settings(cfg: PreprocessConfig, *, incremental: bool) -> dict[str, Any]:
    explicit = cfg.model_fields_set
    return {
        # An incremental version inherits its base's image format unless one is asked for.
        "image_size": cfg.image_size if not incremental or "image_size" in explicit else None,
        "jpeg_quality": (
            cfg.jpeg_quality if not incremental or "jpeg_quality" in explicit else None
        ),
        "shard_max_samples": cfg.shard_max_samples,
        "shard_max_bytes": cfg.shard_max_bytes,
        # Decode/encode processes beyond the container's CPU limit only get throttled.
        "workers": cap_workers(cfg.workers, "ingest workers", keep_one=False),
        "seed": cfg.seed,
        # A full ingest's image digest; a batch's images are hashed every time anyway.
        **({} if incremental else {"rehash": cfg.rehash}),
    }


def _result(ingest: IngestResult, **extra: Any) -> PreprocessResult:
    manifest = ingest.manifest
    summary = ingest.summary()
    return PreprocessResult(
        version=ingest.version,
        uri=ingest.uri,
        status=summary["status"],
        created=ingest.created,
        part=ingest.part,
        counts=dict(manifest.counts) if manifest else {},
        skipped=len(manifest.skipped) if manifest else 0,
        shards=sum(len(v) for v in manifest.shards.values()) if manifest else 0,
        **extra,
    )


def run(
    cfg: PreprocessConfig,
    dest: str,
    *,
    source: str | None = None,
    base: str | None = None,
    batch: str | None = None,
    part: int | None = None,
    parts: int | None = None,
    merge: bool = False,
    progress: bool = True,
) -> PreprocessResult:
    """Ingest a source, one part of it, or fold catalog batches into a base version.

    The arguments choose the operation (:func:`~fashion_attr.data.ingest.choose_operation`):
    a base and a batch fold the batch in; a part ingests that part; ``merge`` publishes
    the parts; a source alone is a full ingest.

    Args:
        cfg: the resolved :class:`PreprocessConfig`.
        dest: where versions live (folder or ``s3://`` prefix).
        source: DeepFashion-C root or ``demo://?images=N&seed=S``; for ``base="latest"``
            with no version yet, the source the first run ingests.
        base: incremental: the version to extend (id, URI, or ``latest``).
        batch: incremental: a ``.jsonl`` batch, a DeepFashion-C-layout batch folder, or a
            drop prefix of ``*.jsonl`` batches (every pending one is folded in, in order).
        part: this run's part of a fanned-out full ingest (with ``parts``).
        parts: number of parts.
        merge: publish the version from all part manifests.
        progress: progress bar (images/s, ETA) on stderr.

    Returns:
        The :class:`PreprocessResult`.

    Raises:
        AnnotationError: a bad annotation record (file and line in the message).
        IngestError: bad arguments, missing files, a base/batch mismatch, missing parts.
        ManifestError: the base version has no valid manifest.
    """
    operation = choose_operation(
        source=source, base=base, batch=batch, part=part, parts=parts, merge=merge
    )
    if operation == "batch":
        assert base is not None and batch is not None
        return _incremental(cfg, dest, source=source, base=base, batch=batch, progress=progress)
    assert source is not None
    root = resolve_source(source)
    settings = _settings(cfg, incremental=False)
    if operation == "part":
        assert part is not None and parts is not None
        return _result(
            ingest_part(root, dest, part=part, parts=parts, progress=progress, **settings)
        )
    if operation == "merge":
        ingest = merge_parts(root, dest, parts=parts, **settings)
    else:
        ingest = ingest_full(root, dest, progress=progress, **settings)
    latest = versions.set_latest(dest, ingest.version)
    result = _result(ingest, chain=[ingest.version] if ingest.created else [], latest=latest)
    if ingest.created:
        result.write(ingest.uri)
    return result


def _incremental(
    cfg: PreprocessConfig, dest: str, *, source: str | None, base: str, batch: str, progress: bool
) -> PreprocessResult:
    chain: list[str] = []
    current: IngestResult | None = None
    start = versions.latest_version(dest) if base == "latest" else base
    if start is None:  # the first scheduled run: ingest the source, then fold the batches
        if source is None:
            raise IngestError(
                f"--base latest: {storage.join(dest, versions.LATEST_POINTER)} does not exist "
                "yet and no --source was given to start from. Fix: pass --source (the first "
                "run ingests it), or name a base version"
            )
        first = ingest_full(
            resolve_source(source), dest, progress=progress, **_settings(cfg, incremental=False)
        )
        start, current = first.version, first
        if first.created:
            chain.append(first.version)
    pending = versions.pending_batches(batch, dest, start)
    ref = start
    for uri in pending:
        current = ingest_batch(
            dest,
            base=ref,
            batch=uri,
            progress=progress,
            max_skipped_fraction=cfg.max_skipped_fraction,
            **_settings(cfg, incremental=True),
        )
        for note in current.notes:  # skipped images, unlabelled records: said, not silent
            print(f"preprocess: note: {note}", file=sys.stderr)
        ref = current.version
        if current.created:
            chain.append(current.version)
    if current is None:  # nothing new: the base is the answer
        uri = versions.version_uri(dest, start)
        manifest = load_manifest(uri)
        current = IngestResult(manifest.version, uri, manifest, created=False)
    latest = versions.set_latest(dest, current.version)
    result = _result(current, base=start, batches=pending, chain=chain, latest=latest)
    if current.created:
        result.write(current.uri)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ingest step from the command line.

    Args:
        argv: Arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on bad input (message on stderr, nothing published).
    """
    p = step_parser("preprocess", __doc__)
    p.add_argument("--source", help="DeepFashion-C root (folder, s3:// prefix or demo://...)")
    p.add_argument("--dest", required=True, help="where versions live (folder or s3:// prefix)")
    p.add_argument("--image-size", type=int, default=None, help="output side in px")
    p.add_argument("--jpeg-quality", type=int, default=None, help="output JPEG quality")
    p.add_argument("--shard-max-samples", type=int, default=None, help="samples per shard")
    p.add_argument("--shard-max-bytes", type=int, default=None, help="bytes per shard")
    p.add_argument("--workers", type=int, default=None, help="decode/encode processes")
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (part of the version)")
    p.add_argument("--part", type=int, default=None, help="this run's part, 0 <= part < parts")
    p.add_argument("--parts", type=int, default=None, help="number of parts")
    p.add_argument("--merge", action="store_true", help="write the manifest from all parts")
    p.add_argument("--base", default=None, help="incremental: base version (id, URI or latest)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", default=None, help="incremental: a batch folder or .jsonl")
    batch.add_argument(
        "--batch-dir", dest="batch", default=None, help="incremental: a drop of *.jsonl batches"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--rehash",
        action="store_true",
        default=None,
        help="hash every source image again, trusting no cached fingerprint (size + mtime)",
    )
    add_config_args(p)
    args = p.parse_args(argv)
    flags = {
        "image_size": args.image_size,
        "jpeg_quality": args.jpeg_quality,
        "shard_max_samples": args.shard_max_samples,
        "shard_max_bytes": args.shard_max_bytes,
        "workers": args.workers,
        "seed": args.seed,
        "rehash": args.rehash,
    }

    def body() -> PreprocessResult:
        cfg = load_config(
            PreprocessConfig,
            preset=args.preset,
            config_file=args.config,
            overrides=args.overrides,
            extra=flags,
        )
        return run(
            cfg,
            args.dest,
            source=args.source,
            base=args.base,
            batch=args.batch,
            part=args.part,
            parts=args.parts,
            merge=args.merge,
            progress=not args.no_progress,
        )

    return run_cli("preprocess", body)


if __name__ == "__main__":
    raise SystemExit(main())
