"""Fail fast: check a pipeline run's parameters, overrides, URIs and credentials in seconds.

The retraining DAG runs :func:`check_pipeline_inputs` as its first task, and
``pipelines.run_local`` runs it before submitting, so a typo in an override, an
unknown preset, a wrong bucket or a refused MLflow password is reported before
any GPU pod starts, all problems at once, each naming the parameter and the
fix. A failure here is a user error (exit 2): it is never retried.

Each remote check is one request without retries (a few seconds at most for
an endpoint that does not answer).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel

from fashion_attr import storage
from fashion_attr.config import (
    PRESETS,
    ClassifierConfig,
    EvaluateConfig,
    GanConfig,
    PreprocessConfig,
    RegisterConfig,
    load_config,
)

__all__ = [
    "Plan",
    "PreflightError",
    "build_parser",
    "check_mlflow",
    "check_pipeline_inputs",
    "main",
]


class PreflightError(ValueError):
    """One or more pipeline inputs are wrong (the message lists each with its fix).

    Attributes:
        retryable: every problem is an endpoint that could not be reached (a fault, exit 3,
            not a user error: nothing in the inputs needs fixing).
    """

    retryable = False


@dataclass
class Plan:
    """What the checks resolved.

    Attributes:
        parts: the part indices of the ingest fan-out (``range(ingest_parts)``).
        configs: every step's resolved config, by step name.
        notes: remarks that are not errors (e.g. an empty catalog drop).
    """

    parts: list[int]
    configs: dict[str, BaseModel] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_mlflow(tracking_uri: str | None = None, timeout_s: float = 5.0) -> None:
    """One bounded check of the tracking server: is it set, reachable, and are we let in?

    :func:`fashion_attr.endpoints.check_mlflow`: two tries of ``timeout_s`` each, so an
    unreachable server fails in seconds (MLflow's own client would retry for minutes).

    Raises:
        ValueError: no tracking URI, or the server refused the credentials.
        RuntimeError: the server could not be reached (``retryable``; names the URI).
    """
    from fashion_attr.endpoints import check_mlflow as check_endpoint

    check_endpoint(tracking_uri, timeout_s=timeout_s, attempts=2)


def _demo_or_path(uri: str) -> None:
    from fashion_attr.data.annotations import ATTR_IMG
    from fashion_attr.demo.sources import DEMO_SCHEME, demo_params

    if uri.startswith(DEMO_SCHEME):
        demo_params(uri)
        return
    storage.check_access(storage.join(uri, ATTR_IMG))


def check_pipeline_inputs(
    *,
    source_uri: str | None,
    storage_uri: str,
    batch_uri: str | None = None,
    base_version: str | None = None,
    preset: str | None = None,
    gan_overrides: Sequence[str] = (),
    classifier_overrides: Sequence[str] = (),
    reuse_generator: str | None = None,
    ingest_parts: int = 1,
    model_name: str | None = None,
    gate_metrics: Sequence[str] = (),
    gate_tolerance: float | None = None,
    train_nodes: int = 1,
    mlflow: bool = True,
) -> Plan:
    """Check everything a pipeline run will need; raise once, listing every problem.

    Args:
        source_uri: DeepFashion-C root or ``demo://...`` (None: not needed).
        storage_uri: where datasets and step outputs go (must be writable).
        batch_uri: a catalog batch or drop (with ``base_version``).
        base_version: the version to extend (id, URI or ``latest``).
        preset: the configuration preset.
        gan_overrides: ``key=value`` overrides of ``train_gan``.
        classifier_overrides: ``key=value`` overrides of ``train_classifier``.
        reuse_generator: a generator to reuse instead of training one.
        ingest_parts: parts of the ingest fan-out (>= 1).
        model_name: the registered model name.
        gate_metrics: the metrics the promotion gate compares.
        gate_tolerance: the gate's tolerance.
        train_nodes: GPU nodes per training step (> 1 needs s3:// storage).
        mlflow: also check the MLflow tracking server.

    Returns:
        The :class:`Plan`.

    Raises:
        PreflightError: listing every problem found.
    """
    problems: list[str] = []
    faults: list[str] = []
    plan = Plan(parts=list(range(max(int(ingest_parts), 1))))

    def check(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # every problem is collected, then reported together
            problems.append(f"{what}: {exc}")
            if getattr(exc, "retryable", False):
                faults.append(problems[-1])
            return None

    if preset and preset not in PRESETS:
        problems.append(f"preset: {preset!r} is unknown. Fix: use one of {', '.join(PRESETS)}")
        preset = None
    register_extra = {
        "model_name": model_name,
        "tolerance": gate_tolerance,
        "gate_metrics": list(gate_metrics) or None,
    }
    steps: tuple[tuple[str, type[BaseModel], Sequence[str], dict[str, Any] | None], ...] = (
        ("preprocess", PreprocessConfig, (), None),
        ("train_gan", GanConfig, gan_overrides, None),
        ("train_classifier", ClassifierConfig, classifier_overrides, None),
        ("evaluate", EvaluateConfig, (), None),
        ("register", RegisterConfig, (), register_extra),
    )
    for name, model, extra_overrides, extra in steps:

        def resolve(
            m: type[BaseModel] = model,
            o: Sequence[str] = extra_overrides,
            e: dict[str, Any] | None = extra,
        ) -> BaseModel:
            return load_config(m, preset=preset, overrides=list(o), extra=e)

        cfg = check(f"{name} config", resolve)
        if cfg is not None:
            plan.configs[name] = cfg
    ev = cast(EvaluateConfig | None, plan.configs.get("evaluate"))
    reg = cast(RegisterConfig | None, plan.configs.get("register"))
    if ev is not None and reg is not None:
        from fashion_attr.evaluation.metrics import metric_names

        known = metric_names(ev.ks)
        unknown = [m for m in reg.gate_metrics if m not in known]
        if unknown:
            problems.append(
                f"gate_metrics: {unknown} are not metrics evaluate reports. Fix: use names such "
                f"as {', '.join(known[:3])}, cat_top3_acc (all: {', '.join(known)})"
            )
    if int(ingest_parts) < 1:
        problems.append(f"ingest_parts: {ingest_parts}. Fix: use 1 or more")
    if int(train_nodes) > 1 and not storage.is_s3(storage_uri):
        problems.append(
            f"train_nodes={train_nodes} with storage_uri {storage_uri!r}: the training nodes "
            "cannot see a local folder. Fix: use an s3:// storage_uri"
        )
    if batch_uri and not base_version:
        problems.append(
            "batch_uri is set but base_version is 'none'. Fix: name the base version, or "
            "'latest' for scheduled retraining"
        )
    check("storage_uri", lambda: storage.check_access(storage_uri, write=True))
    dest = storage.join(storage_uri, "datasets")
    needs_source = not base_version
    if base_version == "latest":
        from fashion_attr.data.versions import latest_version

        needs_source = check("base_version", lambda: latest_version(dest)) is None
    elif base_version:
        from fashion_attr.data.shards import load_manifest
        from fashion_attr.data.versions import version_uri

        check("base_version", lambda: load_manifest(version_uri(dest, base_version)))
    if needs_source:
        if not source_uri:
            problems.append("source_uri: not set, and there is no dataset version to start from")
        else:
            check("source_uri", lambda: _demo_or_path(source_uri))
    if batch_uri:
        from fashion_attr.data.versions import batch_kind

        kind = check("batch_uri", lambda: batch_kind(batch_uri))
        if kind in ("jsonl", "folder"):
            check("batch_uri", lambda: storage.check_access(batch_uri))
    if reuse_generator:
        check("reuse_generator", lambda: storage.check_access(reuse_generator))
    clf = cast(ClassifierConfig | None, plan.configs.get("train_classifier"))
    if clf is not None and getattr(clf, "pretrained", None):
        # torch loads only for presets with pretrained weights (the paper ones).
        from fashion_attr.classifier.model import check_pretrained

        note = check(
            "train_classifier pretrained", lambda: check_pretrained(clf.arch, clf.pretrained)
        )
        if note:
            plan.notes.append(f"pretrained weights: {note}")
    if mlflow:
        check("MLflow", check_mlflow)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        error = PreflightError(
            f"the pipeline inputs have {len(problems)} problem(s); nothing was run:\n{listed}"
        )
        error.retryable = len(faults) == len(problems)
        raise error
    return plan


def build_parser() -> argparse.ArgumentParser:
    """The CLI of ``python -m fashion_attr.orchestration.preflight``."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_attr.orchestration.preflight",
        description="Check a pipeline run's parameters as the DAG's validation task does: "
        "every override, preset, URI, credential, the MLflow server and the pretrained "
        "weights, in seconds, before any work. Exit 0: every input checks out; 2: the "
        "problems are listed, each with its fix.",
    )
    parser.add_argument("--source-uri", default=None, help="DeepFashion-C root or demo://...")
    parser.add_argument("--storage-uri", required=True, help="datasets and step outputs")
    parser.add_argument("--batch-uri", default=None, help="a catalog batch or drop")
    parser.add_argument("--base-version", default=None, help="v-..., a URI, or latest")
    parser.add_argument("--preset", default=None, choices=PRESETS)
    parser.add_argument("--gan-overrides", default="none", help="key=value,... (train_gan)")
    parser.add_argument(
        "--classifier-overrides", default="none", help="key=value,... (train_classifier)"
    )
    parser.add_argument("--reuse-generator", default=None)
    parser.add_argument("--ingest-parts", type=int, default=1)
    parser.add_argument("--model-name", default="fashion-attr")
    parser.add_argument(
        "--gate-metrics", default="attr_recall@3/all,attr_recall@3/tail,cat_top3_acc"
    )
    parser.add_argument("--gate-tolerance", type=float, default=0.005)
    parser.add_argument("--train-nodes", type=int, default=1)
    parser.add_argument("--no-mlflow", action="store_true", help="skip the MLflow check")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Check a full parameter set; print the result; exit 0 or 2."""
    from fashion_attr.orchestration.params import names, overrides

    args = build_parser().parse_args(argv)
    try:
        plan = check_pipeline_inputs(
            source_uri=args.source_uri,
            storage_uri=args.storage_uri,
            batch_uri=args.batch_uri,
            base_version=args.base_version,
            preset=args.preset,
            gan_overrides=overrides(args.gan_overrides),
            classifier_overrides=overrides(args.classifier_overrides),
            reuse_generator=args.reuse_generator,
            ingest_parts=args.ingest_parts,
            model_name=args.model_name,
            gate_metrics=names(args.gate_metrics),
            gate_tolerance=args.gate_tolerance,
            train_nodes=args.train_nodes,
            mlflow=not args.no_mlflow,
        )
    except (PreflightError, ValueError) as exc:
        fault = getattr(exc, "retryable", False)
        print(f"preflight: {'failed' if fault else 'error'}: {exc}", file=sys.stderr)
        return 3 if fault else 2
    for note in plan.notes:
        print(f"preflight: {note}")
    print(f"preflight: every input checks out; ingest in {len(plan.parts)} part(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
