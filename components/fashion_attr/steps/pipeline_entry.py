"""What each KFP component calls: the steps, plus KFP artifact bookkeeping.

The KFP components in ``pipelines/components.py`` are one import and one call
into this module, so all logic stays in the library (which never imports kfp).
Artifacts are handled by duck typing: anything with ``.path``, ``.metadata``
(and ``log_metric`` for metrics) works, which is what KFP passes at run time.

Large outputs live in object storage under ``storage_uri``:

- ``<storage_uri>/datasets/<version>/``: shard versions (shared across runs);
- ``<storage_uri>/runs/{gan,classifier,evaluation}/<key>/``: step outputs, where
  ``key`` hashes the step's inputs (dataset version, preset, overrides, upstream
  URIs). A retried pod (preemption) finds its own checkpoint there and resumes;
  a new run on new data gets a new folder; a run on unchanged inputs finds the
  finished output (and KFP's cache, keyed on the same inputs, skips the step).

The KFP artifacts carry pointers (URI + version in metadata, and a small JSON
file), so the KFP UI shows lineage and downstream steps find the data.
Pipeline parameters use ``"none"`` for "not set": the KFP UI rejects empty
defaults.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from fashion_attr import storage

__all__ = [
    "evaluate",
    "optional",
    "preprocess",
    "register",
    "train_classifier",
    "train_gan",
]

DEMO_SCHEME = "demo://"


class ArtifactLike(Protocol):
    """The part of a KFP artifact this module uses."""

    path: str
    metadata: dict[str, Any]


def optional(value: str | None) -> str | None:
    """``"none"``/``""`` (KFP UI-friendly "unset") -> None."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in ("", "none", "null") else text


def _overrides(text: str | None) -> list[str]:
    """Overrides as a JSON list (``'["lr=0.1"]'``) or comma/newline-separated ``k=v``."""
    text = optional(text)
    if not text:
        return []
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"overrides {text!r} must be a JSON list of 'key=value' strings")
        return items
    return [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]


def _point(artifact: ArtifactLike | None, **meta: Any) -> None:
    """Record a pointer to storage in a KFP artifact (metadata + JSON file)."""
    if artifact is None:
        return
    artifact.metadata.update({k: v for k, v in meta.items() if v is not None})
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(meta, indent=1, default=str))


def _uri_of(artifact: ArtifactLike) -> str:
    uri = artifact.metadata.get("uri")
    if not uri:
        uri = json.loads(Path(artifact.path).read_text())["uri"]
    return str(uri)


def _output(storage_uri: str, step: str, **inputs: Any) -> str:
    """The output folder of a step: a hash of everything that determines its result."""
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return storage.join(storage_uri, "runs", step, key)


def resolve_source(source_uri: str) -> str:
    """A DeepFashion-C root; ``demo://?images=N&seed=S`` generates the demo dataset.

    The demo is deterministic by seed, so every part of a fanned-out ingest
    generates the same images.
    """
    if not source_uri.startswith(DEMO_SCHEME):
        return source_uri
    from fashion_attr.data.demo import generate_demo_dataset

    query = parse_qs(urlparse(source_uri).query)
    images = int(query.get("images", ["600"])[0])
    seed = int(query.get("seed", ["0"])[0])
    root = Path(tempfile.gettempdir()) / f"fashion-attr-demo-{images}-{seed}"
    if not (root / "Eval" / "list_eval_partition.txt").exists():
        tmp = Path(tempfile.mkdtemp(prefix="demo-", dir=root.parent))
        generate_demo_dataset(tmp, images=images, seed=seed)
        # Another part may have generated it first: same seed, same content.
        with contextlib.suppress(OSError):
            os.replace(tmp, root)
    return str(root)


LATEST_POINTER = "LATEST"


def latest_version(dest: str) -> str | None:
    """The id of the newest version published by the pipeline under ``dest``, if any."""
    pointer = storage.join(dest, LATEST_POINTER)
    return storage.read_text(pointer).strip() if storage.exists(pointer) else None


def _lineage_batches(dest: str, version: str) -> set[str]:
    """Every catalog batch already folded into ``version`` (following its base chain)."""
    from fashion_attr.data.shards import load_manifest

    seen: set[str] = set()
    current: str | None = version
    while current:
        manifest = load_manifest(storage.join(dest, current))
        if manifest.batch:
            seen.add(manifest.batch)
        current = manifest.base.version if manifest.base else None
    return seen


def pending_batches(batch_uri: str, dest: str, base: str) -> list[str]:
    """Catalog batches under ``batch_uri`` not yet in ``base``'s lineage, oldest name first.

    ``batch_uri`` is one batch (a ``.jsonl`` file or a DeepFashion-C-layout
    folder) or a drop prefix holding many ``*.jsonl`` batches, which teams
    name so that lexical order is arrival order (e.g. ``2026-11-26.jsonl``).
    """
    is_folder_batch = storage.exists(storage.join(batch_uri, "Anno", "list_attr_img.txt"))
    if batch_uri.endswith(".jsonl") or is_folder_batch:
        candidates = [batch_uri]
    else:
        candidates = [u for u in storage.list_uris(batch_uri) if u.endswith(".jsonl")]
    done = _lineage_batches(dest, base)
    return [c for c in sorted(candidates) if c not in done]


def preprocess(
    *,
    source_uri: str,
    storage_uri: str,
    preset: str,
    part: int,
    parts: int | Sequence[int],
    batch_uri: str = "none",
    base_version: str = "none",
    workers: int = 1,
    merge: bool = False,
    dataset: ArtifactLike | None = None,
) -> tuple[str, str]:
    """Ingest one part (``merge=False``) or publish the version (``merge=True``).

    Three modes:

    - full ingest of ``source_uri`` (``base_version`` "none"): parts fan out,
      merge publishes;
    - incremental (``base_version`` an id/URI or "latest", ``batch_uri`` a
      batch or a catalog drop prefix): the merge task folds every pending
      batch into a chain of versions on top of the base (parts are no-ops;
      catalog batches are small). With "latest" and no version yet, the source
      is ingested first (bootstrap). With nothing pending, the base is reused:
      unchanged data, so the downstream steps hit KFP's cache.

    Returns:
        ``(dataset version URI, version id)``; ``("", "")`` for a no-op part.
    """
    from fashion_attr.config import PreprocessConfig, load_config
    from fashion_attr.data.ingest import run_preprocess

    if not isinstance(parts, int):
        # The pipeline passes its ParallelFor list of part indices; its length is the count.
        parts = len(list(parts))
    cfg = load_config(PreprocessConfig, preset=optional(preset))
    dest = storage.join(storage_uri, "datasets")
    batch = optional(batch_uri)
    base = optional(base_version)
    if batch and not base:
        raise ValueError(
            "batch_uri is set but base_version is 'none'. Fix: name the base version, or "
            "'latest' for scheduled retraining"
        )
    common: dict[str, Any] = {
        "shard_max_samples": cfg.shard_max_samples,
        "shard_max_bytes": cfg.shard_max_bytes,
        "workers": max(workers, cfg.workers),
        "seed": cfg.seed,
        "progress": False,
    }
    full = {"image_size": cfg.image_size, "jpeg_quality": cfg.jpeg_quality, **common}

    if base:
        if not merge:
            return "", ""  # incremental work happens in the merge task
        if base == "latest":
            base = latest_version(dest)
            if base is None:  # bootstrap: the first scheduled run ingests the source
                base = run_preprocess(resolve_source(source_uri), dest, **full).version
        result = None
        for pending in pending_batches(resolve_source(batch), dest, base) if batch else []:
            result = run_preprocess(None, dest, base=base, batch=pending, **common)
            base = result.version
        if result is None:
            from fashion_attr.data.shards import load_manifest

            uri = storage.join(dest, base) if not base.startswith(("s3://", "/")) else base
            manifest = load_manifest(uri)
            uri, version, created = uri, manifest.version, False
        else:
            uri, version, manifest, created = result.uri, result.version, result.manifest, True
    else:
        kwargs = dict(full)
        if parts > 1:
            kwargs.update(parts=parts, **({"merge": True} if merge else {"part": part}))
        result = run_preprocess(resolve_source(source_uri), dest, **kwargs)
        if not merge and parts > 1:
            return str(result.uri), str(result.version)
        uri, version, manifest, created = (
            result.uri,
            result.version,
            result.manifest,
            result.created,
        )
    storage.write_text(storage.join(dest, LATEST_POINTER), str(version))
    _point(
        dataset,
        uri=str(uri),
        version=str(version),
        counts=dict(manifest.counts) if manifest is not None else None,
        created=created,
    )
    return str(uri), str(version)


def train_gan(
    *,
    dataset_uri: str,
    dataset_version: str,
    storage_uri: str,
    preset: str,
    overrides: str = "none",
    reuse_generator: str = "none",
    gpus: int = 1,
    nodes: int = 1,
    job_kind: str = "trainjob",
    image: str = "none",
    generator: ArtifactLike | None = None,
) -> str:
    """Train MR-GAN (or validate and pass through ``reuse_generator``).

    Returns:
        The generator URI.
    """
    from fashion_attr.gan.training_loop import load_generator

    reuse = optional(reuse_generator)
    if reuse:
        _, meta = load_generator(reuse)  # validates format and weights_only load
        _point(generator, uri=reuse, reused=True, dataset_version=meta.get("dataset_version"))
        return reuse
    data = dataset_uri
    out = _output(storage_uri, "gan", data=data, preset=preset, overrides=_overrides(overrides))
    args = ["--data", data, "--out", out, *_config_args(preset, overrides)]
    _run_step("train_gan", args, gpus, nodes=nodes, job_kind=job_kind, image=image, out=out)
    uri = storage.join(out, "generator.pt")
    _point(generator, uri=uri, reused=False, dataset_version=dataset_version)
    return uri


def train_classifier(
    *,
    dataset_uri: str,
    dataset_version: str,
    generator: ArtifactLike,
    storage_uri: str,
    preset: str,
    overrides: str = "none",
    gpus: int = 1,
    nodes: int = 1,
    job_kind: str = "trainjob",
    image: str = "none",
    model: ArtifactLike | None = None,
) -> str:
    """Train the classifier with HABP + Deact. Returns the exported model URI."""
    data, gen = dataset_uri, _uri_of(generator)
    out = _output(
        storage_uri,
        "classifier",
        data=data,
        generator=gen,
        preset=preset,
        overrides=_overrides(overrides),
    )
    args = ["--data", data, "--out", out, "--generator", gen]
    _run_step(
        "train_classifier",
        args + _config_args(preset, overrides),
        gpus,
        nodes=nodes,
        job_kind=job_kind,
        image=image,
        out=out,
    )
    uri = storage.join(out, "model.pt")
    _point(model, uri=uri, dataset_version=dataset_version)
    return uri


def evaluate(
    *,
    dataset_uri: str,
    dataset_version: str,
    model: ArtifactLike,
    storage_uri: str,
    preset: str,
    metrics: Any = None,
    report: ArtifactLike | None = None,
    plots: ArtifactLike | None = None,
    evaluation: ArtifactLike | None = None,
) -> str:
    """Evaluate on the test split; fill the KFP Metrics, Markdown and HTML artifacts."""
    from fashion_attr.steps.evaluate import run as run_evaluate

    data, model_uri = dataset_uri, _uri_of(model)
    out = _output(storage_uri, "evaluation", data=data, model=model_uri, preset=preset)
    summary = run_evaluate(model_uri, data, out, preset=optional(preset))
    if metrics is not None:
        for key, value in sorted(summary["metrics"].items()):
            metrics.log_metric(key.replace("@", "_at_").replace("/", "."), float(value))
    files = {Path(f).name: f for f in summary["files"]}
    if report is not None:
        Path(report.path).write_text(storage.read_text(files["report.md"]))
    if plots is not None:
        parts = ["<html><body><h2>Evaluation plots</h2>"]
        for name in ("group_recall.png", "prob_vs_frequency.png", "confusion.png"):
            if name in files:
                data = base64.b64encode(storage.read_bytes(files[name])).decode()
                parts.append(f'<h3>{name}</h3><img src="data:image/png;base64,{data}"/>')
        parts.append("</body></html>")
        Path(plots.path).write_text("\n".join(parts))
    _point(
        evaluation,
        uri=summary["metrics_uri"],
        images=summary["images"],
        dataset_version=dataset_version,
    )
    return summary["metrics_uri"]


def register(
    *,
    model: ArtifactLike,
    evaluation: ArtifactLike,
    dataset_version: str,
    pipeline_run: str,
    preset: str,
    model_name: str,
    gate_metrics: str,
    tolerance: float,
    registration: ArtifactLike | None = None,
) -> str:
    """Register the model in MLflow and apply the promotion gate."""
    from fashion_attr.steps.register import run as run_register

    overrides = [f"model_name={model_name}", f"tolerance={tolerance}"]
    gates = [g.strip() for g in gate_metrics.split(",") if g.strip()]
    if gates:
        overrides.append("gate_metrics=" + json.dumps(gates))
    model_uri, metrics_uri = _uri_of(model), _uri_of(evaluation)
    reports = _collect_reports(model_uri, metrics_uri)
    summary = run_register(
        model=model_uri,
        metrics=metrics_uri,
        pipeline_run=pipeline_run,
        preset=optional(preset),
        overrides=overrides,
        dataset_version=dataset_version,
        code_version=_code_version(),
        reports=reports,
    )
    summary = {**summary, "metrics_uri": metrics_uri, "dataset_version": dataset_version}
    _point(registration, **summary)
    return json.dumps(summary, sort_keys=True, default=str)


def _collect_reports(model_uri: str, metrics_uri: str) -> list[str]:
    """Local copies of the evaluation report, plots and training logs, for the MLflow run."""
    workdir = Path(tempfile.mkdtemp(prefix="fa-reports-"))
    wanted = [
        (storage.join(_parent(metrics_uri), name), name)
        for name in (
            "report.md",
            "per_attribute.csv",
            "group_recall.png",
            "prob_vs_frequency.png",
            "confusion.png",
        )
    ]
    wanted.append((storage.join(_parent(model_uri), "metrics.jsonl"), "train_classifier.jsonl"))
    out = []
    for uri, name in wanted:
        if storage.exists(uri):
            storage.download_file(uri, workdir / name)
            out.append(str(workdir / name))
    return out


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if storage.is_s3(uri) else str(Path(uri).parent)


def _config_args(preset: str, overrides: str) -> list[str]:
    args: list[str] = []
    if optional(preset):
        args += ["--preset", str(optional(preset))]
    for item in _overrides(overrides):
        args += ["--set", item]
    return args


def _code_version() -> str:
    from fashion_attr import __version__

    return os.environ.get("FA_CODE_VERSION", __version__)


def _run_step(
    step: str,
    args: Sequence[str],
    gpus: int,
    *,
    nodes: int = 1,
    job_kind: str = "trainjob",
    image: str = "none",
    out: str = "",
) -> None:
    """Run a training step in-process, under torchrun, or as a multi-node job.

    One device: in this process. Several GPUs in this pod: torchrun over all of
    them. ``nodes`` > 1: a Kubeflow Trainer TrainJob (or PyTorchJob) over that
    many GPU nodes, which this pod launches and waits for.
    """
    import importlib

    module = f"fashion_attr.steps.{step}"
    if nodes > 1:
        from fashion_attr.launch import run_step_on_cluster

        if not storage.is_s3(out):
            raise ValueError(
                f"multi-node training writes to {out!r}, which the other nodes cannot see. "
                "Fix: use an s3:// storage_uri with train_nodes > 1"
            )
        if not optional(image):
            raise ValueError("multi-node training needs the project image. Fix: set FA_IMAGE")
        run_step_on_cluster(
            step,
            list(args),
            key=out.rstrip("/").rsplit("/", 1)[-1],
            nodes=nodes,
            gpus_per_node=gpus,
            image=str(image),
            kind=job_kind,
        )
        return
    if gpus > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            "-m",
            module,
            *args,
        ]
        code = subprocess.call(cmd)
    else:
        code = importlib.import_module(module).main(list(args))
    if code != 0:
        raise RuntimeError(f"{module} failed with exit code {code} (see its log above)")
