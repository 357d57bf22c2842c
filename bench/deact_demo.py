"""Deact on the demo catalog with its controls, through the pipeline's own steps.

Ingests one demo catalog, trains the preset's MR-GAN once, then for every variant and
seed trains the classifier with ``train_classifier`` (``--set`` overrides on the preset)
and scores it with ``evaluate`` on the validation and the test split. Variants
(:data:`VARIANTS`):

- ``habp``: HABP, Deact off (the base model);
- ``deact``: HABP + Deact as the preset configures it (the default reading of eq. 5);
- ``noise``: the same Deact loss on Gaussian-noise images (``deact.source=noise``: no
  generator, same conditions, weights, lambda and budget);
- ``sigma0``: the unperturbed generator (``deact.sigma_p=0``);
- ``raw``, ``centered``, ``log_softmax``: Deact with that reading of eq. 5
  (``deact.form``; ``raw`` is the paper's literal form) and ``noise_raw``,
  ``noise_centered``, ``noise_log_softmax`` their noise controls;
- ``ce``, ``ce_deact``, ``focal``, ``focal_deact``: the paper's Table 1 rows "Deact only"
  (CE + Deact) and "FL + Deact" beside their bases.

Every run of a seed shares that seed's initialisation and batch order, so differences
are paired. The summary gives each variant's validation and test figures (mean ± std),
the paired difference of every Deact variant against its base and against its noise
control, and the generator's share of the gain, ``(Deact - noise) / (Deact - base)`` on
the paired means of attribute top-3 recall (1: the generator earns all of Deact's gain;
0 or below: noise does as well).

Outputs (``--out``): ``runs.csv`` (one row per run) and ``summary.md``.

Example (about 20 min on 2 idle cores)::

    python bench/deact_demo.py --images 2000 --seeds 3 \
        --variants habp,deact,noise,sigma0,raw,noise_raw --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from fashion_attr.config import (
    ClassifierConfig,
    EvaluateConfig,
    GanConfig,
    load_config,
)
from fashion_attr.steps import evaluate, train_classifier, train_gan

SCRIPT = "deact_demo"
SELECT = "attr_recall@3/all"
METRICS = (SELECT, "attr_recall@3/tail", "map/all", "cat_top1_acc")

#: variant -> (train_classifier overrides, base variant, noise-control variant or None).
VARIANTS: dict[str, tuple[tuple[str, ...], str | None, str | None]] = {
    "habp": (("deact.enabled=false",), None, None),
    "deact": ((), "habp", "noise"),
    "noise": (("deact.source=noise",), "habp", None),
    "sigma0": (("deact.sigma_p=0",), "habp", None),
    "raw": (("deact.form=raw",), "habp", "noise_raw"),
    "noise_raw": (("deact.form=raw", "deact.source=noise"), "habp", None),
    "centered": (("deact.form=centered",), "habp", "noise_centered"),
    "noise_centered": (("deact.form=centered", "deact.source=noise"), "habp", None),
    "log_softmax": (("deact.form=log_softmax",), "habp", "noise_log_softmax"),
    "noise_log_softmax": (("deact.form=log_softmax", "deact.source=noise"), "habp", None),
    "ce": (("loss.name=ce", "deact.enabled=false"), None, None),
    "ce_deact": (("loss.name=ce",), "ce", None),
    "focal": (("loss.name=focal", "deact.enabled=false"), None, None),
    "focal_deact": (("loss.name=focal",), "focal", None),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Deact on the demo catalog beside its controls (noise images, unperturbed "
        "generator, literal form) and Table 1's CE/FL + Deact rows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--images", type=int, default=2000, help="demo catalog size")
    p.add_argument("--demo-seed", type=int, default=0, help="demo catalog seed")
    p.add_argument("--preset", default="tiny", help="preset of every step")
    p.add_argument(
        "--variants",
        default="habp,deact,noise,sigma0,raw,noise_raw",
        help=f"comma list of {','.join(VARIANTS)}",
    )
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds per variant")
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
    p.add_argument(
        "--from-runs",
        default="",
        help="a runs.csv of an earlier (possibly stopped) run: write its summary, no training",
    )
    p.add_argument("--out", default=str(common.default_out(SCRIPT)), help="results folder")
    args = p.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if not args.variant_list or unknown:
        p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def paired(rows: Sequence[dict], a: str, b: str, key: str) -> list[float]:
    """``a``'s value minus ``b``'s per seed with both (positive: ``a`` is better)."""
    by = {(r["variant"], r["seed"]): r[key] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    return [
        100 * (by[(a, s)] - by[(b, s)])
        for s in seeds
        if (a, s) in by and (b, s) in by and np.isfinite(by[(a, s)] - by[(b, s)])
    ]


def _cell(diffs: list[float]) -> str:
    if not diffs:
        return "n/a"
    mu, sd = common.mean_std(diffs)
    return f"{mu:+.2f} ± {sd:.2f}, {sum(d > 0 for d in diffs)}/{len(diffs)}"


def share(rows: Sequence[dict], variant: str, split: str) -> float:
    """Generator's share of ``variant``'s gain over its base: (Deact - noise) / (Deact - base)."""
    _, base, noise = VARIANTS[variant]
    if base is None or noise is None:
        return float("nan")
    key = f"{split} {SELECT}"
    gain, over_noise = paired(rows, variant, base, key), paired(rows, variant, noise, key)
    if not gain or not over_noise or np.mean(gain) <= 0:
        return float("nan")
    return float(np.mean(over_noise) / np.mean(gain))


def summarise(
    rows: list[dict], variants: Sequence[str], log: common.RunLog, preset: str = "tiny"
) -> None:
    """Print the per-variant table and the paired table (kept in the log for summary.md)."""
    seeds = len({r["seed"] for r in rows})
    header = ["variant", "seeds"] + [f"{split} {k}" for split in ("val", "test") for k in METRICS]
    table = []
    for variant in variants:
        rs = [r for r in rows if r["variant"] == variant]
        cells = [variant, str(len(rs))]
        for split in ("val", "test"):
            for k in METRICS:
                mu, sd = common.mean_std([100 * r[f"{split} {k}"] for r in rs])
                cells.append(f"{mu:.2f} ± {sd:.2f}")
        table.append(cells)
    log.print()
    log.print(
        f"Classifier ({preset} preset, overrides per variant), %, mean ± std over {seeds} seed(s):"
    )
    log.print(common.format_table(header, table))
    pair_header = ["variant", "vs"]
    for split in ("val", "test"):
        pair_header += [
            f"{split}: - base",
            f"{split}: - noise control",
            f"{split}: generator's share",
        ]
    pair_rows = []
    for variant in variants:
        _, base, noise = VARIANTS[variant]
        if base is None or base not in variants:
            continue
        cells = [variant, base]
        for split in ("val", "test"):
            key = f"{split} {SELECT}"
            sh = share(rows, variant, split)
            has_noise = noise is not None and noise in variants
            cells += [
                _cell(paired(rows, variant, base, key)),
                _cell(paired(rows, variant, noise, key)) if has_noise else "n/a",
                f"{100 * sh:.0f} %" if np.isfinite(sh) else "n/a",
            ]
        pair_rows.append(cells)
    log.print()
    log.print(
        f"Paired differences of {SELECT} in points (the variant minus its base / its noise "
        "control, same seed; mean ± std, seeds where the variant is better):"
    )
    log.print(common.format_table(pair_header, pair_rows))


def read_runs(path: Path) -> list[dict]:
    """The rows of a ``runs.csv`` this script wrote (numbers as floats)."""
    import csv

    with open(path, newline="") as fh:
        reader = csv.DictReader(line for line in fh if not line.startswith("#"))
        return [
            {
                k: (v if k == "variant" else int(v) if k == "seed" else float(v))
                for k, v in r.items()
            }
            for r in reader
        ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.resolve_device("cpu", args.threads)
    log = common.RunLog(SCRIPT, device)
    log.header()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_runs:
        rows = read_runs(Path(args.from_runs))
        present = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
        log.print(f"# summary of {args.from_runs} ({len(rows)} runs; no training)")
        summarise(rows, present, log, args.preset)
        log.write_summary(out / "summary.md", "Deact on the demo catalog, with its controls")
        log.print(f"# wrote {out}/summary.md")
        return 0
    work = Path(tempfile.mkdtemp(prefix="fa-deact-"))
    if args.data:
        data_uri = args.data
        log.print(f"# dataset version {data_uri} (reused)")
    else:
        data_uri = common.demo_dataset(None, args.images, args.demo_seed, args.preset, work, log)
    generator = args.generator or None
    if generator:
        log.print(f"# MR-GAN for Deact: {generator} (reused)")
    elif any("deact.enabled=false" not in VARIANTS[v][0] for v in args.variant_list):
        gan_cfg = load_config(GanConfig, preset=args.preset, overrides=["quality.enabled=false"])
        with common.timer() as t:
            gan = train_gan.run(gan_cfg, data_uri, str(work / "gan"))
        generator = gan.generator
        log.print(f"# MR-GAN for Deact ({args.preset} preset): {gan.steps} steps ({t['s']:.0f} s)")
    eval_cfgs = {
        split: load_config(EvaluateConfig, preset=args.preset, overrides=[f"split={split}"])
        for split in ("val", "test")
    }
    rows: list[dict] = []
    fields = ["variant", "seed", "wall_s"] + [
        f"{split} {k}" for split in ("val", "test") for k in METRICS
    ]
    for seed in range(args.seed, args.seed + args.seeds):
        for variant in args.variant_list:
            overrides = [*VARIANTS[variant][0], f"seed={seed}", *args.set]
            cfg = load_config(ClassifierConfig, preset=args.preset, overrides=overrides)
            run_dir = work / f"clf-{variant}-{seed}"
            row: dict = {"variant": variant, "seed": seed}
            with common.timer() as t:
                clf = train_classifier.run(cfg, data_uri, str(run_dir), generator=generator)
                for split, ecfg in eval_cfgs.items():
                    ev = evaluate.run(ecfg, clf.model, data_uri, str(run_dir / split))
                    for k in METRICS:
                        row[f"{split} {k}"] = ev.metrics.get(k, float("nan"))
            row["wall_s"] = t["s"]
            rows.append(row)
            log.progress(
                f"{variant} seed {seed}: val {SELECT} {100 * row[f'val {SELECT}']:.2f}, test "
                f"{100 * row[f'test {SELECT}']:.2f} ({t['s']:.0f} s)"
            )
            common.write_csv(
                out / "runs.csv",
                fields,
                [
                    [r[k] if isinstance(r[k], (int, str)) else f"{r[k]:.6g}" for k in fields]
                    for r in rows
                ],
                log.meta,
            )

    summarise(rows, args.variant_list, log, args.preset)
    log.print(f"# total wall time {log.elapsed():.0f} s")
    log.write_summary(out / "summary.md", "Deact on the demo catalog, with its controls")
    log.print(f"# wrote {out}/summary.md, runs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
