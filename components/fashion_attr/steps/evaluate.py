r"""Step 4a: evaluate the exported classifier on the test split and write the reports.

Usage::

    python -m fashion_attr.steps.evaluate --model <model.pt from train_classifier> \
        --data <dataset version URI> --out <URI> [--compare-to <other metrics.json>] \
        [--preset ...] [--config ...] [--set key=value ...]

Writes to ``--out``: ``metrics.json`` (every metric of docs/method.md section 6, per
group, overall and on tail attributes), ``report.md`` (the paper's Table 1 and
Table 2 layouts), ``per_attribute.csv``, ``prob_vs_frequency.png`` (paper
Fig. 2), ``group_recall.png`` and ``confusion.png``, ``per_image.npz`` (per test
image, the top-k hits and positives behind the metrics: ``register`` resamples them
for the gate's paired confidence intervals), then ``result.json`` (the
:class:`EvaluateResult`, also printed as one line of JSON).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fashion_attr import storage
from fashion_attr.config import EvaluateConfig, config_to_dict, load_config
from fashion_attr.resources import apply_cpu_budget
from fashion_attr.results import EvaluateResult
from fashion_attr.steps.contract import add_config_args, run_cli, step_parser

__all__ = ["EvaluateResult", "main", "run"]

PLOTS = ("group_recall.png", "prob_vs_frequency.png", "confusion.png")


def run(
    cfg: EvaluateConfig,
    model: str,
    data: str,
    out: str,
    *,
    cache_dir: str | None = None,
    compare_to: str | None = None,
) -> EvaluateResult:
    """Evaluate ``model`` on the configured split of ``data``; write reports to ``out``.

    Args:
        cfg: the resolved :class:`EvaluateConfig`.
        model: ``model.pt`` from ``train_classifier``.
        data: the dataset version URI.
        out: the output URI.
        cache_dir: local shard cache.
        compare_to: another model's ``metrics.json``, shown side by side in the report.

    Returns:
        The :class:`EvaluateResult` (also written to ``<out>/result.json``).

    Raises:
        ValueError: the model was trained on another label layout, the split is empty,
            or a file is not what it should be (names it and the fix).
    """
    # Threads and workers sized to the container's CPU limit, not the node's cores.
    apply_cpu_budget()
    from fashion_attr.classifier.scoring import score_model
    from fashion_attr.evaluation.metrics import PER_IMAGE_NAME
    from fashion_attr.evaluation.report import read_metrics_json, write_report
    from fashion_attr.steps.contract import scrub_tracking_uri
    from fashion_attr.tracking import Tracker

    comparison = read_metrics_json(compare_to) if compare_to else None
    scores = score_model(cfg, model, data, cache_dir=cache_dir)
    metrics, n, tail = scores.metrics, scores.images, scores.tail_attributes
    extra = {
        "model": model,
        "dataset_version": scores.dataset_version,
        "split": cfg.split,
        "images": n,
        "tail_attributes": tail,
        "whole_images": scores.whole_images,
        "config": config_to_dict(cfg),
        "train_step": scores.model_meta.get("step"),
    }
    workdir = Path(tempfile.mkdtemp(prefix="fa-eval-"))
    paths = write_report(
        workdir,
        metrics,
        scores.per_attribute,
        scores.attribute_names,
        scores.category_names,
        scores.confusion,
        title=f"Evaluation of {Path(model).name} on {scores.dataset_version} ({cfg.split})",
        extra=extra,
        comparison=comparison,
        model_name="challenger" if comparison else "this model",
        comparison_name="champion" if comparison else "reference",
        ks=cfg.ks,
        tail_threshold=cfg.tail_threshold,
    )
    scrub_tracking_uri()  # also when called in-process (the KFP adapter), not via main()
    tracker = Tracker(None, "evaluate")
    tracker.set_tags({"dataset_version": scores.dataset_version})
    tracker.log_metrics({k: v for k, v in metrics.items() if v is not None})
    uris = {p.name: storage.join(out, p.name) for p in paths}
    for p in paths:
        # metrics.json goes last: a reader that sees it sees the whole report.
        if p.name != "metrics.json":
            storage.upload_file(p, uris[p.name])
            tracker.log_artifact(p, "evaluation")
    if scores.per_image is not None:  # what register's paired bootstrap resamples
        per_image = storage.join(out, PER_IMAGE_NAME)
        storage.write_bytes(per_image, scores.per_image.to_bytes())
    storage.upload_file(workdir / "metrics.json", uris["metrics.json"])
    tracker.close()
    result = EvaluateResult(
        metrics_uri=uris["metrics.json"],
        report=uris["report.md"],
        per_attribute=uris["per_attribute.csv"],
        plots=[uris[name] for name in PLOTS if name in uris],
        files=[*(u for name, u in uris.items() if name != "metrics.json"), uris["metrics.json"]],
        metrics={k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)},
        images=n,
        split=cfg.split,
        dataset_version=scores.dataset_version,
        tail_attributes=tail,
        model=model,
    )
    result.write(out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the step from the command line (exit codes: :mod:`fashion_attr.steps.contract`)."""
    parser = step_parser("evaluate", __doc__)
    parser.add_argument("--model", required=True, help="model.pt from train_classifier")
    parser.add_argument("--data", required=True, help="dataset version URI")
    parser.add_argument("--out", required=True, help="output URI for the reports")
    parser.add_argument("--compare-to", default=None, help="another model's metrics.json")
    parser.add_argument("--cache-dir", default=None, help="local shard cache")
    add_config_args(parser)
    args = parser.parse_args(argv)

    def body() -> EvaluateResult:
        cfg = load_config(
            EvaluateConfig, preset=args.preset, config_file=args.config, overrides=args.overrides
        )
        return run(
            cfg,
            args.model,
            args.data,
            args.out,
            cache_dir=args.cache_dir,
            compare_to=args.compare_to,
        )

    return run_cli("evaluate", body)


if __name__ == "__main__":
    raise SystemExit(main())
