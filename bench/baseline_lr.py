"""Fair baselines: tune each loss's learning rate on the validation split.

Focal and weighted focal loss average ``h * L`` over all nodes, with no normaliser, so
their gradient is smaller than CE's or HABP's by about the mean node hardness, and the
paper tuned their learning rates separately (docs/method.md section 2 does not record the
values). This script finds them for a given catalog and preset: it ingests the source
once, then for each loss, learning rate and seed trains the classifier with the
pipeline's own steps (Deact off: a loss-only comparison, as in the paper's Table 1;
``--deact`` trains the preset's MR-GAN once and keeps Deact on),
scores it on the validation split, picks each loss's best rate by mean validation
attribute top-3 recall ("all") and reports the test split at that rate. A run the
non-finite guard stops counts as diverged.

The chosen rates are printed as ``train_classifier`` overrides, e.g.
``--set loss.name=focal --set lr=0.3`` for the step CLI; the pipeline's
``classifier_overrides`` parameter takes the same as ``loss.name=focal,lr=0.3``.

Outputs (``--out``): ``runs.csv`` (one row per run) and ``summary.md``.

Examples::

    # the demo catalog, tiny preset (about 20 min on 2 cores)
    python bench/baseline_lr.py --images 2000 --lrs 0.03,0.1,0.3,1,3 --seeds 3
    # your DeepFashion-C copy, paper preset (needs a GPU; hours)
    python bench/baseline_lr.py --source /data/DeepFashion-C --preset paper --device cuda
        --losses focal,weighted_focal --lrs 0.01,0.03,0.1 --seeds 1  # (one line)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from fashion_attr.config import (
    ClassifierConfig,
    EvaluateConfig,
    GanConfig,
    load_config,
)
from fashion_attr.runtime import NonFiniteLossError
from fashion_attr.steps import evaluate, train_classifier, train_gan

SCRIPT = "baseline_lr"
SELECT = "attr_recall@3/all"
METRICS = (SELECT, "attr_recall@3/tail", "map/all", "cat_top1_acc")
LOSSES = ("ce", "focal", "weighted_focal", "ohem", "wce_a", "wce_b", "asl", "habp")


def _floats(text: str, name: str, p: argparse.ArgumentParser) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        p.error(f"{name}={text!r}: expected comma-separated positive numbers")
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        p.error(f"{name}={text!r}: expected comma-separated positive numbers")
    return values


def _cell(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tune each loss's learning rate on the validation split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--source", default=None, help="DeepFashion-C root, catalog or s3:// (default: demo)"
    )
    p.add_argument("--images", type=int, default=1000, help="demo catalog size")
    p.add_argument("--demo-seed", type=int, default=0, help="demo catalog seed")
    p.add_argument("--preset", default="tiny", help="preset of every step")
    p.add_argument("--losses", default="habp,ce,focal,weighted_focal", help="loss names")
    p.add_argument("--lrs", default="0.03,0.1,0.3,1.0", help="learning rates to try")
    p.add_argument("--seeds", type=int, default=2, help="classifier seeds per cell")
    p.add_argument(
        "--deact",
        action="store_true",
        help="train one MR-GAN (the preset's) and keep Deact on: tunes HABP + Deact's rate",
    )
    p.add_argument("--set", action="append", default=[], help="more train_classifier overrides")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--out", default=str(common.default_out(SCRIPT)), help="results folder")
    args = p.parse_args(argv)
    args.loss_list = [v.strip() for v in args.losses.split(",") if v.strip()]
    unknown = [v for v in args.loss_list if v not in LOSSES]
    if not args.loss_list or unknown:
        p.error(f"--losses: unknown {unknown}; choose from {', '.join(LOSSES)}")
    args.lr_list = _floats(args.lrs, "--lrs", p)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def best_rates(rows: Sequence[dict], losses: Sequence[str]) -> dict[str, float | None]:
    """Each loss's learning rate with the best mean validation score.

    A cell with a diverged run is not eligible (a rate that diverges on one seed is not
    one to recommend); a loss whose every rate diverged maps to None.

    Args:
        rows: One dict per run with ``loss``, ``lr``, ``diverged`` and ``val <SELECT>``.
        losses: The losses to pick for.

    Returns:
        ``{loss: lr or None}``.
    """
    best: dict[str, float | None] = {}
    for loss in losses:
        cells: dict[float, list[dict]] = {}
        for r in rows:
            if r["loss"] == loss:
                cells.setdefault(r["lr"], []).append(r)
        scored = [
            (common.mean_std([r[f"val {SELECT}"] for r in rs])[0], lr)
            for lr, rs in cells.items()
            if not any(r["diverged"] for r in rs)
        ]
        best[loss] = max(scored)[1] if scored else None
    return best


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.resolve_device(args.device, args.threads)
    log = common.RunLog(SCRIPT, device)
    log.header()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fa-lr-"))
    data_uri = common.demo_dataset(args.source, args.images, args.demo_seed, args.preset, work, log)
    generator = None
    if args.deact:
        gan_cfg = load_config(
            GanConfig,
            preset=args.preset,
            overrides=[f"device={args.device}", "quality.enabled=false"],
        )
        with common.timer() as t:
            gan = train_gan.run(gan_cfg, data_uri, str(work / "gan"))
        generator = gan.generator
        log.print(f"# MR-GAN for Deact: {gan.steps} steps ({t['s']:.0f} s)")
    dev = [f"device={args.device}"]
    eval_cfgs = {
        split: load_config(EvaluateConfig, preset=args.preset, overrides=[f"split={split}", *dev])
        for split in ("val", "test")
    }

    rows: list[dict] = []
    fields = ["loss", "lr", "seed", "diverged", "wall_s"] + [
        f"{split} {k}" for split in ("val", "test") for k in METRICS
    ]
    for seed in range(args.seeds):
        for loss in args.loss_list:
            for lr in args.lr_list:
                overrides = [
                    f"loss.name={loss}",
                    f"lr={lr!r}",
                    f"seed={seed}",
                    f"deact.enabled={str(args.deact).lower()}",
                    *dev,
                    *args.set,
                ]
                cfg = load_config(ClassifierConfig, preset=args.preset, overrides=overrides)
                run_dir = work / f"clf-{loss}-{lr:g}-{seed}"
                row: dict = {"loss": loss, "lr": lr, "seed": seed, "diverged": 0}
                with common.timer() as t:
                    try:
                        clf = train_classifier.run(cfg, data_uri, str(run_dir), generator=generator)
                    except NonFiniteLossError as exc:
                        row["diverged"] = 1
                        log.progress(f"{loss} lr {lr:g} seed {seed}: diverged ({exc})")
                    else:
                        for split, ecfg in eval_cfgs.items():
                            ev = evaluate.run(ecfg, clf.model, data_uri, str(run_dir / split))
                            for k in METRICS:
                                row[f"{split} {k}"] = ev.metrics.get(k, float("nan"))
                row["wall_s"] = t["s"]
                for k in fields:
                    row.setdefault(k, float("nan"))
                rows.append(row)
                if not row["diverged"]:
                    log.progress(
                        f"{loss} lr {lr:g} seed {seed}: val {SELECT} "
                        f"{100 * row[f'val {SELECT}']:.2f}, test {SELECT} "
                        f"{100 * row[f'test {SELECT}']:.2f} ({t['s']:.0f} s)"
                    )
                common.write_csv(
                    out / "runs.csv",
                    fields,
                    [[_cell(r[k]) for k in fields] for r in rows],
                    log.meta,
                )

    header = ["loss", "lr", "seeds", "diverged"] + [
        f"{split} {k}" for split in ("val", "test") for k in METRICS
    ]
    table_rows = []
    best = best_rates(rows, args.loss_list)
    for loss in args.loss_list:
        for lr in args.lr_list:
            rs = [r for r in rows if r["loss"] == loss and r["lr"] == lr]
            ok = [r for r in rs if not r["diverged"]]
            mark = " **best**" if best[loss] == lr else ""
            cells = [loss, f"{lr:g}{mark}", str(len(rs)), str(len(rs) - len(ok))]
            for split in ("val", "test"):
                for k in METRICS:
                    if ok:
                        mu, sd = common.mean_std([100 * r[f"{split} {k}"] for r in ok])
                        cells.append(f"{mu:.2f} ± {sd:.2f}")
                    else:
                        cells.append("-")
            table_rows.append(cells)
    log.print()
    log.print(
        f"Classifier ({args.preset} preset, Deact {'on' if args.deact else 'off'}), %, "
        f"mean ± std over {args.seeds} seed(s); best = highest mean validation {SELECT} "
        "among rates that never diverged:"
    )
    log.print(common.format_table(header, table_rows))
    log.print()
    for loss in args.loss_list:
        if best[loss] is None:
            log.print(f"{loss}: every rate diverged; try smaller --lrs")
        else:
            log.print(f"{loss}: --set loss.name={loss} --set lr={best[loss]:g}")
    log.print(f"# total wall time {log.elapsed():.0f} s")
    log.write_summary(out / "summary.md", "Learning rate per loss")
    log.print(f"# wrote {out}/summary.md, runs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
