"""Crops vs whole photos: how ``train_classifier.whole_share`` trades one for the other.

A served model gets garment crops (requests with a ``bbox``) and whole photos (without
one). Training sees crops only unless ``whole_share`` > 0, which shows that share of
the training images in their whole-image frame (:func:`fashion_attr.data.loader.
whole_image_view`). This script builds the demo catalog, ingests it, trains one MR-GAN
(``tiny`` preset, for Deact), then for each share and seed trains the classifier with
the pipeline's own steps and evaluates it on the test split's crops and on the same
test images as whole photos (``evaluate``'s ``whole/`` metrics).

Outputs (``--out``): ``runs.csv`` (one row per run) and ``summary.md`` (mean ± std per
share).

Example (about 15 min on 2 cores)::

    python bench/whole_images.py --images 2000 --shares 0,0.25,0.5 --seeds 2
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
    PreprocessConfig,
    load_config,
)
from fashion_attr.steps import evaluate, preprocess, train_classifier, train_gan

SCRIPT = "whole_images"
METRICS = ("cat_top1_acc", "cat_top3_acc", "attr_recall@3/all", "map/all")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Crop vs whole-photo accuracy for several train_classifier.whole_share.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--images", type=int, default=2000, help="demo catalog size")
    p.add_argument("--demo-seed", type=int, default=0, help="demo catalog seed")
    p.add_argument("--preset", default="tiny", help="preset of every step")
    p.add_argument("--shares", default="0,0.25,0.5", help="whole_share values to compare")
    p.add_argument("--seeds", type=int, default=2, help="classifier seeds per share")
    p.add_argument("--set", action="append", default=[], help="more train_classifier overrides")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
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
    from fashion_attr.demo.sources import demo_uri

    ingest = preprocess.run(
        load_config(PreprocessConfig, preset=args.preset, overrides=["workers=2"]),
        str(work / "datasets"),
        source=demo_uri(args.images, args.demo_seed),
        progress=False,
    )
    log.print(f"# demo catalog: {args.images} images, version {ingest.version} ({ingest.counts})")
    gan_cfg = load_config(GanConfig, preset=args.preset, overrides=["quality.enabled=false"])
    with common.timer() as t:
        gan = train_gan.run(gan_cfg, ingest.uri, str(work / "gan"))
    log.print(f"# MR-GAN for Deact: {gan.steps} steps ({t['s']:.0f} s)")
    eval_cfg = load_config(EvaluateConfig, preset=args.preset, overrides=["whole_images=100000"])

    rows: list[dict[str, float]] = []
    for seed in range(args.seeds):
        for share in args.share_list:
            overrides = [f"whole_share={share!r}", f"seed={seed}", *args.set]
            cfg = load_config(ClassifierConfig, preset=args.preset, overrides=overrides)
            run_dir = work / f"clf-{share:g}-{seed}"
            with common.timer() as t:
                clf = train_classifier.run(cfg, ingest.uri, str(run_dir), generator=gan.generator)
                ev = evaluate.run(eval_cfg, clf.model, ingest.uri, str(run_dir / "eval"))
            m = ev.metrics
            row = {"share": share, "seed": seed, "wall_s": t["s"]}
            for k in METRICS:
                row[f"crop {k}"] = m.get(k, float("nan"))
                row[f"whole {k}"] = m.get(f"whole/{k}", float("nan"))
            rows.append(row)
            log.progress(
                f"share {share:g} seed {seed}: "
                + ", ".join(
                    f"{k} crop {100 * row[f'crop {k}']:.1f} / whole {100 * row[f'whole {k}']:.1f}"
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

    header = ["whole_share", "seeds"]
    for k in METRICS:
        header += [f"{k} crops", f"{k} whole"]
    table_rows = []
    for share in args.share_list:
        rs = [r for r in rows if r["share"] == share]
        cells = [f"{share:g}", str(len(rs))]
        for k in METRICS:
            for view in ("crop", "whole"):
                mu, sd = common.mean_std([100 * r[f"{view} {k}"] for r in rs])
                cells.append(f"{mu:.1f} ± {sd:.1f}")
        table_rows.append(cells)
    log.print()
    log.print(
        f"Classifier ({args.preset} preset, HABP + Deact) on the demo test split ({ev.images} "
        f"images): garment crops vs whole photos, %, mean ± std over {args.seeds} seed(s):"
    )
    log.print(common.format_table(header, table_rows))
    log.print(f"# total wall time {log.elapsed():.0f} s")
    log.write_summary(out / "summary.md", "Crops vs whole photos")
    log.print(f"# wrote {out}/summary.md, runs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
