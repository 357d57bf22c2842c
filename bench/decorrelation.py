"""MR-GAN on real MNIST with and without the decorrelation (DC) loss (paper's Fig. 8, Table 4).

For every DC weight in ``--dc-weights`` (0 = off, 2e-6 = the paper, plus a
larger one to make the effect visible) and seed, an MR-GAN (7 -> 28 px,
category-conditional, Adam) is trained on the pool (images 0-4999) with the
same initialisation, batches and noise, so only the DC term differs.

Why a weight as large as 100: with the normalisation of eq. 7-8
(``1 / (N_F N_Z^2)``), the DC gradient on the projection weight is about 255
times smaller than the GAN gradient at initialisation at weight 1 (measured
with the 32-channel MNIST generator), so at the paper's 2e-6 it is ~1e8 times
smaller and cannot change training; differences between the 0 and 2e-6 rows
are GAN training noise (any perturbation changes the trajectory), which
``--seeds`` > 1 quantifies. Logged:

* the mean squared cosine between the projection's noise filters
  (``mean_squared_cosine``, the quantity of the paper's Fig. 8) every
  ``--log-every`` steps, plotted against the step;
* sample quality in the feature space of a LeNet-5 trained here on the pool
  (no Inception weights offline): **LeNet-FD**, the Frechet distance between
  Gaussian fits of LeNet's penultimate (84-d) features of 5,000 generated
  images (conditioned on the test half's labels) and of the test half
  (images 5000-9999). This is *not* Inception FID; its values are not
  comparable with published FIDs, only across the rows of one run. The
  LeNet-FD of the real pool against the test half is printed as the floor;
* conditional accuracy: LeNet's accuracy at recognising the conditioned digit
  in the generated images;
* diversity: mean pairwise Euclidean distance of LeNet features within a
  class, averaged over classes (the test half's value printed for reference).

Outputs (``--out``): ``history.csv``, ``quality.csv``, ``summary.md``,
``msc.png`` (Fig. 8 analogue), ``samples.png`` (side-by-side grids: one row
per digit, the same noise in every panel).

Examples:
    Quick CPU run (about 8-10 min on 2 cores)::

        python bench/decorrelation.py --scale 0.03 --gan-top-channels 32

    Paper budget on a GPU::

        python bench/decorrelation.py --device cuda --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from fashion_attr.classifier.model import build_classifier
from fashion_attr.evaluation.gan_quality import diversity, frechet_distance
from fashion_attr.gan.networks import MRGenerator, make_condition
from fashion_attr.losses.decorrelation import msc_floor

SCRIPT = "decorrelation"
NUM_CLASSES = 10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="MR-GAN with/without DC loss: filter correlation, LeNet-FD, diversity.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_mnist_args(
        p, pool_help="training images (GAN and LeNet)", test_help="reference images of LeNet-FD"
    )
    p.add_argument("--dc-weights", default="0,2e-6,100", help="DC weights to compare")
    p.add_argument(
        "--dc-reduction",
        choices=("mean", "sum"),
        default="mean",
        help="mean: eq. 7-8 as written (/ N_F N_Z^2); sum: the unnormalised sum, under which "
        "the paper's 2e-6 acts (docs/method.md section 4)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="shrinks the GAN budget")
    p.add_argument("--gan-samples", type=int, default=1_000_000, help="GAN samples at scale 1")
    p.add_argument("--gan-batch", type=int, default=128, help="GAN batch size")
    p.add_argument("--gan-lr", type=float, default=2e-4, help="GAN Adam learning rate")
    p.add_argument("--gan-top-channels", type=int, default=64, help="channels at 28 px (paper 64)")
    p.add_argument("--log-every", type=int, default=0, help="msc logging period (0: steps/50)")
    p.add_argument("--lenet-epochs", type=int, default=20, help="epochs of the feature LeNet")
    p.add_argument("--n-gen", type=int, default=5000, help="generated images per setting")
    p.add_argument("--seeds", type=int, default=1, help="GAN seeds per DC weight")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--lenet-seed", type=int, default=0, help="seed of the feature LeNet")
    p.add_argument(
        "--merge",
        default=None,
        help="comma-separated result folders of runs split over seeds: one table, no training",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--out", default=str(common.default_out(SCRIPT)), help="results folder")
    args = p.parse_args(argv)
    if args.merge:
        args.merge = [Path(v) for v in args.merge.split(",") if v.strip()]
        return args
    try:
        args.weights = [float(v) for v in args.dc_weights.split(",") if v.strip()]
    except ValueError:
        p.error(f"--dc-weights={args.dc_weights!r}: expected comma-separated numbers")
    if not args.weights or any(w < 0 for w in args.weights):
        p.error("--dc-weights must list numbers >= 0")
    if args.scale <= 0 or args.seeds < 1:
        p.error("--scale must be > 0 and --seeds >= 1")
    return args


# ----------------------------------------------------------------------------- features


def train_feature_lenet(
    x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int
) -> torch.nn.Module:
    """LeNet-5 on the pool (SGD 0.01, momentum 0.9, batch 64): the feature extractor."""
    torch.manual_seed(seed)
    model = build_classifier("lenet5", 0, NUM_CLASSES).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = epochs * (x.shape[0] // 64)
    idx_all = common.batch_indices(x.shape[0], steps, 64, seed, x.device)
    for step in range(steps):
        _, cat = model(x[idx_all[step]])
        loss = F.cross_entropy(cat, y[idx_all[step]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def features(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate LeNet features ``[n, 84]`` (float64) and the class predictions."""
    feats, preds = [], []
    for i in range(0, x.shape[0], 1000):
        f = model.features(x[i : i + 1000])
        feats.append(f.double().cpu())
        preds.append(model.cat_head(f).argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


@torch.no_grad()
def generate(G: MRGenerator, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Top-level images in [-1, 1] for the given labels (eval-mode batch norm, no perturbation)."""
    G.eval()
    gen = torch.Generator(device=labels.device).manual_seed(seed)
    out = []
    for i in range(0, labels.shape[0], 500):
        cond = make_condition(labels[i : i + 500], None, NUM_CLASSES)
        out.append(G.sample(cond, generator=gen))
    G.train()
    return torch.cat(out)


# ----------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_msc(history: list[dict[str, float]], weights: list[float], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for w in weights:
        for seed in sorted({h["seed"] for h in history}):
            rows = [h for h in history if h["weight"] == w and h["seed"] == seed]
            ax.plot(
                [h["step"] for h in rows],
                [h["msc"] for h in rows],
                label=f"DC weight {w:g}" + (f" seed {seed:g}" if seed else ""),
            )
    ax.set_xlabel("generator step")
    ax.set_ylabel("mean squared cosine of projection filters")
    ax.set_title("Projection filter correlation (Fig. 8 analogue)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grids(panels: list[tuple[str, torch.Tensor]], path: Path) -> None:
    """Side-by-side 10 x 10 grids (row = digit)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.5))
    axes = np.atleast_1d(axes)
    for ax, (title, imgs) in zip(axes, panels, strict=True):
        g = imgs.detach().float().cpu().add(1).div(2).clamp(0, 1)[:, 0]  # [100, 28, 28]
        g = g.view(10, 10, 28, 28).permute(0, 2, 1, 3).reshape(280, 280)
        ax.imshow(g.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    device = common.resolve_device(args.device, args.threads)
    log = common.RunLog(SCRIPT, device)
    log.header()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_all, y_all, pool, test = common.load_mnist_protocol(args, device)
    x_pool, y_pool = x_all[pool[0] : pool[1]], y_all[pool[0] : pool[1]]
    x_test, y_test = x_all[test[0] : test[1]], y_all[test[0] : test[1]]
    steps = max(1, round(args.gan_samples * args.scale / args.gan_batch))
    log_every = args.log_every or max(1, steps // 50)
    spec = common.mnist_gan_spec(args.gan_top_channels)
    log.print(
        f"# GAN: {steps} steps x {args.gan_batch} on {pool}, channels {spec.channels}, "
        f"lr {args.gan_lr}; DC weights {args.weights}; seeds {args.seeds}; msc every "
        f"{log_every} steps"
    )

    with common.timer() as t:
        # Its own seed, not --seed: runs split over seeds (--merge) share one feature space.
        lenet = train_feature_lenet(x_pool, y_pool, args.lenet_epochs, args.lenet_seed)
    f_test, p_test = features(lenet, x_test)
    f_pool, _ = features(lenet, x_pool)
    y_test_np = y_test.cpu().numpy()
    lenet_err = 100 * float((p_test != y_test_np).mean())
    fd_floor = frechet_distance(f_pool, f_test)
    div_test = diversity(f_test, y_test_np)
    log.print(
        f"# feature LeNet: test error {lenet_err:.2f} % ({t['s']:.0f} s); LeNet-FD(pool, test) "
        f"= {fd_floor:.3f} (floor); test within-class diversity {div_test:.3f}"
    )

    gen_labels = y_test[: args.n_gen] if args.n_gen <= y_test.shape[0] else y_test
    history: list[dict[str, float]] = []
    quality: list[dict[str, float]] = []
    panels: list[tuple[str, torch.Tensor]] = []
    show_labels = torch.arange(NUM_CLASSES, device=device).repeat_interleave(10)
    for seed in range(args.seed, args.seed + args.seeds):
        for w in args.weights:
            with common.timer() as t:
                cond = make_condition(y_pool, None, NUM_CLASSES)
                G, hist = common.train_mrgan(
                    x_pool,
                    cond,
                    spec,
                    steps=steps,
                    batch=args.gan_batch,
                    lr=args.gan_lr,
                    dc_weight=w,
                    dc_reduction=args.dc_reduction,
                    seed=seed,
                    log_every=log_every,
                    log=log,
                    tag=f"dc {w:g} seed {seed}",
                )
            history += [{"weight": w, "seed": float(seed)} | h for h in hist]
            fake = generate(G, gen_labels, seed + 12345)
            f_fake, p_fake = features(lenet, fake)
            labels_np = gen_labels.cpu().numpy()
            row = {
                "weight": w,
                "seed": seed,
                "lenet_fd": frechet_distance(f_fake, f_test),
                "cond_acc": float((p_fake == labels_np).mean()),
                "diversity": diversity(f_fake, labels_np),
                "final_msc": hist[-1]["msc"],
                "wall_s": t["s"],
            }
            quality.append(row)
            log.progress(
                f"dc {w:g} seed {seed}: LeNet-FD {row['lenet_fd']:.3f}, cond acc "
                f"{row['cond_acc']:.3f}, diversity {row['diversity']:.3f}, final msc "
                f"{row['final_msc']:.4f} ({t['s']:.0f} s)"
            )
            if seed == args.seed:
                panels.append((f"DC weight {w:g}", generate(G, show_labels, 2024)))
            common.write_csv(
                out / "history.csv",
                ["weight", "seed", "step", "loss_d", "loss_g", "msc", "dc"],
                [
                    [h[k] for k in ("weight", "seed", "step", "loss_d", "loss_g", "msc", "dc")]
                    for h in history
                ],
                log.meta,
            )

    reference = {
        "fd_floor": fd_floor,
        "lenet_err": lenet_err,
        "div_test": div_test,
        "msc_floor": msc_floor(spec.z_dim, spec.base_size**2),
        "steps": steps,
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    real_idx = torch.cat([torch.nonzero(y_test == c)[:10, 0] for c in range(NUM_CLASSES)])
    panels.append(("real (test half)", x_test[real_idx]))
    plot_msc(history, args.weights, out / "msc.png")
    plot_grids(panels, out / "samples.png")
    write_summary(out, quality, history, reference, log, args.seeds)
    log.print(f"# wrote {out}/summary.md, quality.csv, history.csv, msc.png, samples.png")
    return 0


HISTORY_KEYS = ("weight", "seed", "step", "loss_d", "loss_g", "msc", "dc")
QUALITY_KEYS = ("lenet_fd", "cond_acc", "diversity", "final_msc", "wall_s")


def write_summary(
    out: Path,
    quality: list[dict[str, float]],
    history: list[dict[str, float]],
    reference: dict[str, float],
    log: common.RunLog,
    seeds: int,
) -> None:
    """quality.csv and summary.md: per DC weight, mean ± std over the seeds."""
    common.write_csv(
        out / "quality.csv",
        ["weight", "seed", *QUALITY_KEYS],
        [[q["weight"], q["seed"], *[f"{q[k]:.5f}" for k in QUALITY_KEYS]] for q in quality],
        log.meta,
    )
    weights = sorted({q["weight"] for q in quality})
    rows = []
    for w in weights:
        qs = [q for q in quality if q["weight"] == w]
        cells = [f"{w:g}", str(len(qs))]
        for k, fmt in (
            ("lenet_fd", ".3f"),
            ("cond_acc", ".3f"),
            ("diversity", ".3f"),
            ("final_msc", ".4f"),
        ):
            mu, sd = common.mean_std([q[k] for q in qs])
            cells.append(f"{mu:{fmt}} ± {sd:{fmt}}")
        init = [h["msc"] for h in history if h["weight"] == w and h["step"] == 0]
        cells.insert(5, f"{np.mean(init):.4f}" if init else "")
        rows.append(cells)
    rows.append(
        [
            "real pool (floor)",
            "",
            f"{reference['fd_floor']:.3f}",
            f"{1 - reference['lenet_err'] / 100:.3f}",
            f"{reference['div_test']:.3f} (test)",
            "",
            f"{reference['msc_floor']:.4f} (floor)",
        ]
    )
    table = common.format_table(
        [
            "DC weight",
            "seeds",
            "LeNet-FD (lower better)",
            "cond. acc",
            "diversity",
            "msc at init",
            "final msc",
        ],
        rows,
    )
    log.print()
    log.print(
        f"MR-GAN on MNIST pool, {reference['steps']} steps; LeNet-FD vs test half (not "
        f"Inception FID); mean ± std over {seeds} seed(s); msc floor = the lowest mean squared "
        "cosine these filters can have (frame bound):"
    )
    log.print(table)
    log.print(f"# total wall time {log.elapsed():.0f} s")
    (out / "summary.md").write_text(
        "# MR-GAN decorrelation on MNIST\n\n"
        + log.meta_markdown()
        + f"\n- total wall time: {log.elapsed():.0f} s\n\n"
        + "\n".join(log.lines[len(log.meta) :])
        + "\n"
    )


def _read_csv(path: Path) -> list[dict[str, float]]:
    import csv

    if not path.is_file():
        raise SystemExit(f"--merge: {path} not found; pass folders written by this script")
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(lines)]


def merge(args: argparse.Namespace) -> int:
    """``--merge``: one table from runs split over seeds (same LeNet, same budget)."""
    log = common.RunLog(SCRIPT, torch.device("cpu"))
    log.header()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quality: list[dict[str, float]] = []
    history: list[dict[str, float]] = []
    references = []
    for folder in args.merge:
        ref_path = folder / "reference.json"
        if not ref_path.is_file():
            raise SystemExit(f"--merge: {ref_path} not found; pass folders written by this script")
        references.append(json.loads(ref_path.read_text()))
        part = _read_csv(folder / "quality.csv")
        seen = {(q["weight"], q["seed"]) for q in quality}
        clash = [k for k in ((q["weight"], q["seed"]) for q in part) if k in seen]
        if clash:
            raise SystemExit(f"--merge: weight/seed {clash[0]} of {folder} is already merged")
        quality += part
        history += _read_csv(folder / "history.csv")
    if any(r != references[0] for r in references[1:]):
        raise SystemExit(
            "--merge: the parts differ in feature LeNet or budget (reference.json); run them "
            "with the same --lenet-seed, --scale and data"
        )
    common.write_csv(
        out / "history.csv",
        list(HISTORY_KEYS),
        [[h[k] for k in HISTORY_KEYS] for h in history],
        log.meta,
    )
    (out / "reference.json").write_text(json.dumps(references[0], indent=1) + "\n")
    seeds = len({q["seed"] for q in quality})
    write_summary(out, quality, history, references[0], log, seeds)
    log.print(f"# wrote {out}/summary.md, quality.csv, history.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
