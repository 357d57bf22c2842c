"""Crops vs whole photos: how ``train_classifier.whole_share`` trades one for the other.

A served model gets garment crops (requests with a ``bbox``) and whole photos (without
one). Training sees crops only unless ``whole_share`` > 0, which shows that share of
the training images in their whole-image frame (:func:`fashion_attr.data.loader.
whole_image_view`). This script builds the demo catalog, ingests it, trains one MR-GAN
(``tiny`` preset, for Deact), then for each share and seed trains the classifier with
the pipeline's own steps and evaluates it on the validation and the test split, each
as garment crops and as whole photos (``evaluate``'s ``whole/`` metrics).

The share is **chosen on the validation split** by :func:`selection_score`, the mean of
category top-1 accuracy and attribute top-3 recall over both views (crops and whole
photos weigh alike, as a served model gets both); the test split is reported at every
share and at the chosen one, never used to choose.

Outputs (``--out``): ``runs.csv`` (one row per run) and ``summary.md`` (mean ± std per
share and split, the selection).

Example (about 25 min on 2 cores)::

    python bench/whole_images.py --images 2000 --shares 0,0.25,0.5 --seeds 3
"""

from __future__ import annotations

import argparse
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
from fashion_attr.steps import evaluate, train_classifier, train_gan

SCRIPT = "whole_images"
METRICS = ("cat_top1_acc", "cat_top3_acc", "attr_recall@3/all", "map/all")
SPLITS = ("val", "test")
#: What the share is chosen by: these metrics on both views, equally weighted.
SELECT_METRICS = ("cat_top1_acc", "attr_recall@3/all")


def selection_score(row: dict[str, float], split: str = "val") -> float:
    """Mean of :data:`SELECT_METRICS` on crops and on whole photos of ``split``."""
    return sum(row[f"{split} {view} {k}"] for view in ("crop", "whole") for k in SELECT_METRICS) / (
        2 * len(SELECT_METRICS)
    )


def choose_share(rows: list[dict[str, float]], shares: list[float]) -> float:
    """The share with the best mean validation :func:`selection_score` over seeds."""
    return max(
        shares,
        key=lambda v: common.mean_std([selection_score(r) for r in rows if r["share"] == v])[0],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Crop vs whole-photo accuracy for several train_classifier.whole_share.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--images", type=int, default=2000, help="demo catalog size")
    p.add_argument("--demo-seed", type=int, default=0, help="demo catalog seed")
    p.add_argument("--preset", default="tiny", help="preset of every step")
    p.add_argument("--shares", default="0,0.25,0.5", help="whole_share values to compare")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds per share")
    p.add_argument("--set", action="append", default=[], help="more train_classifier overrides")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--seed", type=int, default=0, help="first classifier seed")
    p.add_argument(
        "--data",
        default="",
        help="an ingested dataset version to reuse (skips the ingest; with --generator, runs "
        "split over processes share one catalog and one MR-GAN)",
    )
    p.add_argument("--generator", default="", help="a generator.pt to reuse (skips train_gan)")
    p.add_argument("--out", default=str(common.default_out(SCRIPT)), help="results folder")
    args = p.parse_args(argv)
    try:
        args.share_list = [float(v) for v in args.shares.split(",") if v.strip()]
    except ValueError:
        p.error(f"--shares={args.shares!r}: expected comma-separated numbers in [0, 1]")
    if not args.share_list or any(not 0 <= v <= 1 for v in args.share_list):
        p.error("--shares must list numbers in [0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.resolve_device("cpu", args.threads)
    log = common.RunLog(SCRIPT, device)
    log.header()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fa-whole-"))
    if args.data:
        data_uri = args.data
        log.print(f"# dataset version {data_uri} (reused)")
    else:
        data_uri = common.demo_dataset(None, args.images, args.demo_seed, args.preset, work, log)
    if args.generator:
        generator = args.generator
        log.print(f"# MR-GAN for Deact: {generator} (reused)")
    else:
        gan_cfg = load_config(GanConfig, preset=args.preset, overrides=["quality.enabled=false"])
        with common.timer() as t:
            gan = train_gan.run(gan_cfg, data_uri, str(work / "gan"))
        generator = gan.generator
        log.print(f"# MR-GAN for Deact: {gan.steps} steps ({t['s']:.0f} s)")
    eval_cfgs = {
        split: load_config(
            EvaluateConfig, preset=args.preset, overrides=["whole_images=100000", f"split={split}"]
        )
        for split in SPLITS
    }

    rows: list[dict[str, float]] = []
    for seed in range(args.seed, args.seed + args.seeds):
        for share in args.share_list:
            overrides = [f"whole_share={share!r}", f"seed={seed}", *args.set]
            cfg = load_config(ClassifierConfig, preset=args.preset, overrides=overrides)
            run_dir = work / f"clf-{share:g}-{seed}"
            row = {"share": share, "seed": seed}
            with common.timer() as t:
                clf = train_classifier.run(cfg, data_uri, str(run_dir), generator=generator)
                for split, ecfg in eval_cfgs.items():
                    ev = evaluate.run(ecfg, clf.model, data_uri, str(run_dir / split))
                    m = ev.metrics
                    for k in METRICS:
                        row[f"{split} crop {k}"] = m.get(k, float("nan"))
                        row[f"{split} whole {k}"] = m.get(f"whole/{k}", float("nan"))
            row["wall_s"] = t["s"]
            rows.append(row)
            log.progress(
                f"share {share:g} seed {seed}: validation score {100 * selection_score(row):.1f}; "
                + ", ".join(
                    f"test {k} crop {100 * row[f'test crop {k}']:.1f} / whole "
                    f"{100 * row[f'test whole {k}']:.1f}"
                    for k in METRICS
                )
                + f" ({t['s']:.0f} s)"
            )
            keys = [k for k in rows[0] if k not in ("share", "seed")]
            common.write_csv(
                out / "runs.csv",
                ["share", "seed", *keys],
                [[r["share"], r["seed"], *[f"{r[k]:.5f}" for k in keys]] for r in rows],
                log.meta,
            )

    chosen = choose_share(rows, args.share_list)
    header = ["whole_share", "seeds", "validation score"]
    for k in METRICS:
        header += [f"{k} crops", f"{k} whole"]
    for split in SPLITS:
        table_rows = []
        for share in args.share_list:
            rs = [r for r in rows if r["share"] == share]
            mark = " (chosen)" if share == chosen else ""
            score = common.mean_std([100 * selection_score(r) for r in rs])
            cells = [f"{share:g}{mark}", str(len(rs)), f"{score[0]:.1f} ± {score[1]:.1f}"]
            for k in METRICS:
                for view in ("crop", "whole"):
                    mu, sd = common.mean_std([100 * r[f"{split} {view} {k}"] for r in rs])
                    cells.append(f"{mu:.1f} ± {sd:.1f}")
            table_rows.append(cells)
        log.print()
        log.print(
            f"Classifier ({args.preset} preset, HABP + Deact) on the demo {split} split: garment "
            f"crops vs whole photos, %, mean ± std over {args.seeds} seed(s):"
        )
        log.print(common.format_table(header, table_rows))
    log.print()
    log.print(
        f"Chosen on the validation split: whole_share {chosen:g} (best mean validation score = "
        f"mean of {', '.join(SELECT_METRICS)} on crops and whole photos)."
    )
    log.print(f"# total wall time {log.elapsed():.0f} s")
    log.write_summary(out / "summary.md", "Crops vs whole photos")
    log.print(f"# wrote {out}/summary.md, runs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
