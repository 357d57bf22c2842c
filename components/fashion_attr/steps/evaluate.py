"""Step 4a: evaluate the exported classifier on the test split and write the reports.

Usage::

    python -m fashion_attr.steps.evaluate --model <train_classifier out>/model.pt \
        --data <dataset version URI> --out <URI> [--compare-to <other metrics.json>] \
        [--preset ...] [--config ...] [--set key=value ...]

Writes to ``--out``: ``metrics.json`` (every metric of method.md section 6, per
group, overall and on tail attributes), ``report.md`` (the paper's Table 1 and
Table 2 layouts), ``per_attribute.csv``, ``prob_vs_frequency.png`` (paper
Fig. 2), ``group_recall.png`` and ``confusion.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fashion_attr import storage
from fashion_attr.config import EvaluateConfig, config_to_dict, load_config
from fashion_attr.steps.common import add_config_args, run_cli, scrub_tracking_uri

__all__ = ["main", "read_metrics", "run"]


def read_metrics(uri: str) -> dict[str, float | None]:
    """Read the flat metrics of a ``metrics.json`` written by this step.

    Raises:
        ValueError: if the file is not a metrics file (names the URI).
    """
    try:
        data = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri} is not valid JSON ({exc}). Fix: pass a metrics.json") from exc
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{uri} has no 'metrics' mapping. Fix: pass evaluate's metrics.json")
    return data["metrics"]


def run(
    model: str,
    data: str,
    out: str,
    *,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | None = None,
    compare_to: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the configured split of ``data``; write reports to ``out``."""
    from fashion_attr.classifier.engine import load_exported_model, predict_split
    from fashion_attr.data.info import DatasetInfo
    from fashion_attr.data.loader import make_loader
    from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics
    from fashion_attr.evaluation.report import write_report
    from fashion_attr.runtime import resolve_device, use_bf16
    from fashion_attr.tracking import Tracker

    cfg = load_config(EvaluateConfig, preset=preset, config_file=config_file, overrides=overrides)
    comparison = read_metrics(compare_to) if compare_to else None
    device = resolve_device(cfg.device)
    info = DatasetInfo.load(data)
    net, meta = load_exported_model(model, device)
    if list(meta["attribute_names"]) != list(info.attribute_names) or list(
        meta["category_names"]
    ) != list(info.category_names):
        raise ValueError(
            f"model {model} was trained on another label layout than dataset {info.version}. "
            "Fix: evaluate on the dataset version the model was trained on (or a descendant)"
        )
    if info.split_count(cfg.split) == 0:
        raise ValueError(f"dataset {info.version} has no {cfg.split} images. Fix: use split=val")
    pre = meta["preprocessing"]
    attr_m = (
        AttributeMetrics(
            info.attribute_groups,
            train_pos_counts=info.train_pos_counts.tolist(),
            tail_threshold=cfg.tail_threshold,
            ks=cfg.ks,
        )
        if info.num_attributes
        else None
    )
    cat_m = CategoryMetrics(info.num_categories, ks=cfg.ks) if info.num_categories else None
    loader = make_loader(
        data,
        cfg.split,
        batch_size=cfg.batch_size,
        cache_dir=cache_dir,
        train=False,
        seed=0,
        epoch=0,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    n = predict_split(
        net,
        loader,
        device=device,
        image_size=pre["image_size"],
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        attr_metrics=attr_m,
        cat_metrics=cat_m,
        bf16=use_bf16("auto", device),
    )
    metrics: dict[str, float] = {}
    per_attribute: list[dict[str, Any]] = []
    if attr_m is not None:
        metrics.update(attr_m.compute())
        per_attribute = attr_m.per_attribute()
    confusion = None
    if cat_m is not None:
        metrics.update(cat_m.compute())
        confusion = cat_m.confusion_matrix()
    extra = {
        "model": model,
        "dataset_version": info.version,
        "split": cfg.split,
        "images": n,
        "tail_attributes": attr_m.num_tail_attributes if attr_m is not None else 0,
        "config": config_to_dict(cfg),
        "train_step": meta.get("step"),
    }
    workdir = Path(tempfile.mkdtemp(prefix="fa-eval-"))
    paths = write_report(
        workdir,
        metrics,
        per_attribute,
        list(info.attribute_names),
        list(info.category_names),
        confusion,
        title=f"Evaluation of {Path(model).name} on {info.version} ({cfg.split})",
        extra=extra,
        comparison=comparison,
        model_name="challenger" if comparison else "this model",
        comparison_name="champion" if comparison else "reference",
        ks=cfg.ks,
        tail_threshold=cfg.tail_threshold,
    )
    scrub_tracking_uri()  # also when called in-process (the KFP component), not via main()
    tracker = Tracker(None, "evaluate")
    tracker.set_tags({"dataset_version": info.version})
    tracker.log_metrics({k: v for k, v in metrics.items() if v is not None})
    for p in paths:
        # metrics.json goes last: a reader that sees it sees the whole report.
        if p.name != "metrics.json":
            storage.upload_file(p, storage.join(out, p.name))
            tracker.log_artifact(p, "evaluation")
    storage.upload_file(workdir / "metrics.json", storage.join(out, "metrics.json"))
    tracker.close()
    finite = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
    return {
        "metrics_uri": storage.join(out, "metrics.json"),
        "images": n,
        "metrics": finite,
        "files": [storage.join(out, p.name) for p in paths],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m fashion_attr.steps.evaluate", description=__doc__
    )
    parser.add_argument("--model", required=True, help="model.pt from train_classifier.")
    parser.add_argument("--data", required=True, help="Dataset version URI.")
    parser.add_argument("--out", required=True, help="Output URI for the reports.")
    parser.add_argument("--compare-to", default=None, help="Another model's metrics.json.")
    parser.add_argument("--cache-dir", default=None, help="Local shard cache.")
    add_config_args(parser)
    args = parser.parse_args(argv)
    return run_cli(
        "evaluate",
        lambda: run(
            args.model,
            args.data,
            args.out,
            preset=args.preset,
            config_file=args.config,
            overrides=args.overrides,
            cache_dir=args.cache_dir,
            compare_to=args.compare_to,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
