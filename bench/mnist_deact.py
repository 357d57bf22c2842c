r"""Paper's Table 3 on real MNIST: few-shot LeNet-5, + Deact with its controls, and an AC-GAN.

For every training-set size n and seed, on the same n images (drawn from the
pool, images 0-3999 of the MNIST test file), each model is scored on the
**validation** range (images 4000-4999: every choice, such as the default form of
eq. 5, is made there) and on the **test** range (images 5000-9999: reported only):

(a) **LeNet** (``lenet``): LeNet-5 (ReLU) trained with softmax cross entropy.
(b) **LeNet + Deact** (docs/method.md section 3): an MR-GAN (7 -> 28 px, category
    conditions = the n images' labels, DC weight 2e-6, Adam) is trained on the
    n images and frozen; LeNet is then trained with ``L = CE + lambda * L_SC``
    every step (lambda 0.05, eq. 11), ``L_SC`` the hardness-weighted
    deactivation loss of eq. 5/10 on perturbed synthetic images (sigma_p from
    the paper's table), the hard-label memory updated from every real batch
    with the category hardness. One method per reading of eq. 5
    (:mod:`fashion_attr.losses.deactivation`): ``deact`` (the literal form on raw
    logits), ``deact_c`` (centred logits), ``deact_ls`` (log-softmax).
(c) **Controls** of each reading, same subset, seed, budget, memory and eq. 10:
    ``noise*`` replaces the generator's images by Gaussian noise with the real
    batch's mean and std (no generator: the library's ``deact.source=noise``);
    ``sigma0*`` uses the unperturbed generator (sigma_p = 0).
(d) **AC-GAN** (``acgan``, semi-supervised GAN baseline, Odena 2016 / Salimans et al.
    2016): a LeNet-5 with C + 1 outputs (the extra one = "fake") is the
    discriminator/classifier, trained jointly with a conditional generator
    (the same MR-GAN generator, top level) on the n labelled images. D:
    ``CE(D(x), y) + CE(D(G(z, c)), fake)``; G: ``CE(D(G(z, c)), c)``. The test
    error is that of the C class logits.

The tables pair every method with LeNet on the same subset and seed, give each
Deact reading beside its controls and **the generator's share of the gain**,
``(noise error - Deact error) / (LeNet error - Deact error)`` (1: the generator earns
all of Deact's gain; 0 or below: noise does as well), and apply the selection rule
of docs/method.md section 3.5 on the validation range: a reading *qualifies* at n
when its paired validation gain over LeNet and over its noise control are both
positive on average and on more than half of the seeds.

Budgets (``--scale 1`` = paper): 500k classifier samples at batch 64, SGD lr
0.01 momentum 0.9 (all classifiers); 1M GAN samples at batch 128.
Subsets are class-balanced by default (n // 10 per digit, the remainder
spread over random digits); ``--subset random`` draws plain random images as
the paper's "n random training images" (n = 25 may then miss a digit).

GAN: Adam lr 1e-4 (docs/method.md section 4, as ``presets/mnist.yaml``), betas
(0.5, 0.999) as ``train_gan``. Departures (also in the report): the category
hardness of the memory uses ``--hardness-gamma`` 1.2 (the paper does not state
gamma for MNIST); one synthetic image per real image; the pool is images 0-3999
(the paper draws from 60,000 training images).

Runs can be split over processes or machines (``--seed``/``--seeds``, ``--ns``,
``--methods``, each with its own ``--out``) and combined afterwards with
``--merge DIR,DIR``, which rebuilds the tables from the parts' ``runs.csv`` without
training.

Examples:
    Quick CPU run (about 10-15 min on 2 cores)::

        python bench/mnist_deact.py --scale 0.02 --seeds 2 --ns 25,100,1000 \
            --gan-top-channels 16 --threads 1

    Every reading with its controls (docs/results.md's CPU table), split and merged::

        python bench/mnist_deact.py --clf-scale 0.08 --gan-scale 0.04 --seed 0 \
            --seeds 2 --gan-top-channels 16 --threads 1 --methods controls --out a &
        python bench/mnist_deact.py --clf-scale 0.08 --gan-scale 0.04 --seed 2 \
            --seeds 1 --gan-top-channels 16 --threads 1 --methods controls --out b; wait
        python bench/mnist_deact.py --merge a,b --out merged

    Paper budget on a GPU::

        python bench/mnist_deact.py --device cuda --methods controls
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from fashion_attr.classifier.deact import DeactLoss
from fashion_attr.classifier.model import build_classifier
from fashion_attr.gan.networks import MRGANSpec, MRGenerator, make_condition
from fashion_attr.hardness import HardLabelMemory
from fashion_attr.losses import bce_loss, category_hardness

SCRIPT = "mnist_deact"
NUM_CLASSES = 10

#: The paper's Table 3 (test error %, LeNet-5 with ReLU): n -> (LeNet, Deact, sigma_p, AC-GAN).
PAPER: dict[int, tuple[float, float, float, float]] = {
    25: (44.12, 40.06, 3.6, 43.71),
    50: (29.73, 26.22, 2.2, 27.65),
    100: (14.53, 12.14, 2.4, 14.33),
    500: (4.88, 4.58, 2.4, 5.01),
    1000: (3.93, 3.72, 2.2, 4.01),
}
DEFAULT_SIGMA_P = 2.4

#: Deact methods: name -> (image source, reading of eq. 5, label). ``deact`` and ``deact_c``
#: keep the names of earlier runs.csv files (the literal and the centred form).
DEACT_METHODS: dict[str, tuple[str, str, str]] = {
    "deact": ("generator", "raw", "Deact, literal eq. 5 (raw logits)"),
    "deact_c": ("generator", "centered", "Deact, centred eq. 5"),
    "deact_ls": ("generator", "log_softmax", "Deact, eq. 5 on log-softmax"),
    "noise": ("noise", "raw", "noise control, literal eq. 5"),
    "noise_c": ("noise", "centered", "noise control, centred eq. 5"),
    "noise_ls": ("noise", "log_softmax", "noise control, log-softmax eq. 5"),
    "sigma0": ("sigma0", "raw", "unperturbed G (sigma_p 0), literal eq. 5"),
    "sigma0_c": ("sigma0", "centered", "unperturbed G (sigma_p 0), centred eq. 5"),
    "sigma0_ls": ("sigma0", "log_softmax", "unperturbed G (sigma_p 0), log-softmax eq. 5"),
}
#: The Deact method of each reading, and its controls.
FORMS: dict[str, dict[str, str]] = {
    "raw": {"deact": "deact", "noise": "noise", "sigma0": "sigma0"},
    "centered": {"deact": "deact_c", "noise": "noise_c", "sigma0": "sigma0_c"},
    "log_softmax": {"deact": "deact_ls", "noise": "noise_ls", "sigma0": "sigma0_ls"},
}
METHODS = ("lenet", *DEACT_METHODS, "acgan")
#: ``--methods controls``: LeNet, every reading of Deact, its noise control, the
#: unperturbed generator for the two shift-invariant readings (the candidates).
CONTROLS = (
    "lenet",
    "deact",
    "deact_c",
    "deact_ls",
    "noise",
    "noise_c",
    "noise_ls",
    "sigma0_c",
    "sigma0_ls",
)
DEFAULT_METHODS = CONTROLS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Paper's Table 3: few-shot MNIST LeNet-5 vs + Deact, its controls (noise "
        "images, unperturbed generator, literal form) and AC-GAN; choices on a validation range.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_mnist_args(
        p,
        pool_help="index range training subsets come from",
        test_help="index range of the test images (reported, never used to choose)",
        pool_default="0:4000",
    )
    p.add_argument(
        "--val",
        default="4000:5000",
        help="index range of the validation images (every choice is made on them)",
    )
    p.add_argument("--ns", default="25,50,100,500,1000", help="training-set sizes n")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (subsets) per n")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument(
        "--subset",
        choices=("balanced", "random"),
        default="balanced",
        help="class-balanced or plain random subsets",
    )
    p.add_argument("--scale", type=float, default=1.0, help="shrinks every budget; 1 = paper")
    p.add_argument(
        "--clf-scale", type=float, default=None, help="classifier budget scale (default --scale)"
    )
    p.add_argument(
        "--gan-scale", type=float, default=None, help="GAN budget scale (default --scale)"
    )
    p.add_argument("--clf-samples", type=int, default=500_000, help="classifier samples at 1.0")
    p.add_argument("--gan-samples", type=int, default=1_000_000, help="GAN samples at scale 1.0")
    p.add_argument("--batch", type=int, default=64, help="classifier batch size")
    p.add_argument("--lr", type=float, default=0.01, help="classifier SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="classifier SGD momentum")
    p.add_argument("--gan-batch", type=int, default=128, help="GAN batch size")
    p.add_argument(
        "--gan-lr", type=float, default=1e-4, help="GAN Adam learning rate (docs/method.md sec. 4)"
    )
    p.add_argument("--dc-weight", type=float, default=2e-6, help="DC loss weight (eq. 7-8)")
    p.add_argument(
        "--gan-top-channels",
        type=int,
        default=64,
        help="MR-GAN channels at 28 px (paper 64; 32 makes CPU runs ~4x cheaper)",
    )
    p.add_argument("--deact-lambda", type=float, default=0.05, help="lambda of eq. 11")
    p.add_argument(
        "--sigma-p",
        default="",
        help="override sigma_p as n:value,... (default the paper's table, else 2.4)",
    )
    p.add_argument("--hardness-gamma", type=float, default=1.2, help="gamma of the hardness")
    p.add_argument("--syn-batch", type=int, default=64, help="synthetic images per step")
    p.add_argument(
        "--methods",
        default="controls",
        help="comma list of methods, or 'controls' (= "
        + ",".join(CONTROLS)
        + "). lenet: LeNet-5 alone. Deact, one per reading of eq. 5: deact (literal, raw "
        "logits), deact_c (centred), deact_ls (log-softmax). Their controls: noise, noise_c, "
        "noise_ls (the same loss on Gaussian-noise images, no generator) and sigma0, "
        "sigma0_c, sigma0_ls (the unperturbed generator, sigma_p = 0). acgan: the AC-GAN "
        f"baseline. Allowed: {','.join(METHODS)}",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--out", default=str(common.default_out(SCRIPT)), help="results folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --out/runs.csv and train only the missing ones",
    )
    p.add_argument(
        "--merge",
        default="",
        help="comma list of results folders of earlier (partial) runs: combine their "
        "runs.csv into one table in --out, without training",
    )
    args = p.parse_args(argv)
    args.ns_list = common.parse_int_list(args.ns, "--ns")
    names: list[str] = []
    for m in (m.strip() for m in args.methods.split(",")):
        for name in CONTROLS if m == "controls" else (m,) if m else ():
            if name not in names:
                names.append(name)
    args.method_list = names
    bad = sorted(set(args.method_list) - set(METHODS))
    if bad:
        p.error(f"--methods: unknown {bad}; allowed {list(METHODS)}")
    if args.seeds < 1 or args.scale <= 0:
        p.error("--seeds must be >= 1 and --scale > 0")
    args.sigma = {}
    if args.sigma_p:
        for item in args.sigma_p.split(","):
            try:
                n_s, v_s = item.split(":")
                args.sigma[int(n_s)] = float(v_s)
            except ValueError:
                p.error(f"--sigma-p: bad item {item!r}; expected N:VALUE, e.g. 25:3.6")
    return args


def sigma_for(args: argparse.Namespace, n: int) -> float:
    if n in args.sigma:
        return args.sigma[n]
    return PAPER[n][2] if n in PAPER else DEFAULT_SIGMA_P


@torch.no_grad()
def test_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Top-1 error in % over the first 10 logits, and the mean of their largest.

    The second number shows eq. 5 on raw logits at work: it can be met by
    lowering all logits together, which leaves the error as it was.
    """
    model.eval()
    wrong = torch.zeros((), dtype=torch.long, device=x.device)
    top = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], 1000):
        _, cat = model(x[i : i + 1000])
        wrong += (cat[:, :NUM_CLASSES].argmax(1) != y[i : i + 1000]).sum()
        top += cat[:, :NUM_CLASSES].amax(1).double().sum()
    model.train()
    return 100.0 * float(wrong) / x.shape[0], float(top) / x.shape[0]


def train_lenet(
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    steps: int,
    seed: int,
    deact: DeactLoss | None = None,
) -> torch.nn.Module:
    """LeNet-5 with CE (deact None) or CE + lambda * L_SC every step (eq. 11)."""
    torch.manual_seed(seed)
    model = build_classifier("lenet5", 0, NUM_CLASSES).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    idx_all = common.batch_indices(x.shape[0], steps, args.batch, seed, x.device)
    for step in range(steps):
        idx = idx_all[step]
        xb, yb = x[idx], y[idx]
        if deact is None:
            _, cat = model(xb)
            loss = bce_loss(None, None, cat_logits=cat, cat_targets=yb)
        else:
            # Conditions come from the memory as left by the previous real batches (step 4);
            # the memory is then updated with this batch's hardness (step 3).
            # The noise control matches its images to this real batch (deact.source=noise).
            syn = deact.synthesize(args.syn_batch, like=xb)
            # LeNet has no batch norm: one forward over real ++ synthetic is exact and faster.
            _, cat_all = model(torch.cat([xb, syn.images]))
            cat, cat_syn = cat_all[: xb.shape[0]], cat_all[xb.shape[0] :]
            loss_real = bce_loss(None, None, cat_logits=cat, cat_targets=yb)
            hard = category_hardness(cat.detach(), yb, args.hardness_gamma)
            deact.memory.update(None, None, None, hard, yb)
            # eq. 11: L = L_real + lambda * L_SC, L_SC the weighted average of eq. 5/10.
            loss = loss_real + args.deact_lambda * deact.loss(None, cat_syn, syn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def train_acgan(
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    spec: MRGANSpec,
    steps: int,
    seed: int,
) -> torch.nn.Module:
    """Semi-supervised GAN with a C + 1-way LeNet discriminator/classifier."""
    device = x.device
    torch.manual_seed(seed)
    D = build_classifier("lenet5", 0, NUM_CLASSES + 1).to(device)
    G = MRGenerator(spec).to(device)
    opt_d = torch.optim.SGD(D.parameters(), lr=args.lr, momentum=args.momentum)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.gan_lr, betas=(0.5, 0.999))
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    idx_all = common.batch_indices(x.shape[0], steps, args.batch, seed, device)
    fake_class = torch.full((args.batch,), NUM_CLASSES, dtype=torch.long, device=device)
    eye = torch.eye(NUM_CLASSES, device=device)
    for step in range(steps):
        idx = idx_all[step]
        xb, yb = x[idx], y[idx]
        # Conditions follow the labelled set's class distribution.
        c = yb[torch.randperm(yb.shape[0], generator=gen, device=device)]
        z = torch.randn(c.shape[0], spec.z_dim, generator=gen, device=device)
        fake = G(z, eye[c])[-1]
        _, d_all = D(torch.cat([xb, fake.detach()]))
        loss_d = F.cross_entropy(d_all[: xb.shape[0]], yb) + F.cross_entropy(
            d_all[xb.shape[0] :], fake_class
        )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        _, d_fake = D(fake)
        loss_g = F.cross_entropy(d_fake, c)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    return D


def row(
    n: int,
    seed: int,
    method: str,
    err: float,
    sigma: float,
    wall: float,
    max_logit: float = float("nan"),
    val_err: float = float("nan"),
) -> dict:
    return {
        "n": n,
        "seed": seed,
        "method": method,
        "error": err,
        "sigma_p": sigma,
        "wall_s": wall,
        "real_max_logit": max_logit,
        "val_error": val_err,
    }


def fmt(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}" if np.isfinite(mean) else "n/a"


def paired_differences(
    cell: list[dict[str, float]],
    method: str = "deact",
    base: str = "lenet",
    key: str = "error",
) -> list[float]:
    """``base``'s error minus ``method``'s per seed that has both (positive: method better).

    Args:
        cell: the runs of one n.
        method: the method compared.
        base: the method it is compared with (LeNet, or a control).
        key: ``error`` (test range) or ``val_error`` (validation range).

    Returns:
        One difference per seed, in seed order (seeds without a finite value skipped).
    """
    by_seed: dict[int, dict[str, float]] = {}
    for r in cell:
        by_seed.setdefault(int(r["seed"]), {})[str(r["method"])] = float(r.get(key, np.nan))
    return [
        e[base] - e[method]
        for _, e in sorted(by_seed.items())
        if {base, method} <= e.keys() and np.isfinite(e[base] - e[method])
    ]


def beats(diffs: list[float]) -> bool:
    """The selection rule's "beats": positive on average and on more than half the seeds."""
    return bool(diffs) and float(np.mean(diffs)) > 0 and sum(d > 0 for d in diffs) > len(diffs) / 2


def generator_share(cell: list[dict[str, float]], form: str, key: str = "error") -> float:
    """Share of Deact's gain over LeNet that its noise control does not recover.

    ``mean(noise - deact) / mean(lenet - deact)`` over the seeds with all three; NaN
    when a method is missing or Deact gained nothing.
    """
    m = FORMS[form]
    over_noise = paired_differences(cell, m["deact"], m["noise"], key)
    over_lenet = paired_differences(cell, m["deact"], "lenet", key)
    if not over_noise or not over_lenet or np.mean(over_lenet) <= 0:
        return float("nan")
    return float(np.mean(over_noise) / np.mean(over_lenet))


RUN_HEADER = ["n", "seed", "method", "error", "sigma_p", "wall_s", "real_max_logit", "val_error"]
#: runs.csv of earlier versions lack the last columns; --merge still reads them.
RUN_HEADER_V1 = RUN_HEADER[:-2]
RUN_HEADER_V2 = RUN_HEADER[:-1]


def read_runs(folder: Path) -> tuple[list[dict[str, float]], dict[str, str]]:
    """Read a results folder's ``runs.csv``: the rows and its ``# key: value`` lines.

    Raises:
        SystemExit: The file is missing or a row is malformed (names file and line).
    """
    path = folder / "runs.csv"
    if not path.is_file():
        raise SystemExit(f"--merge: {path} not found; pass folders written by this script")
    meta: dict[str, str] = {}
    runs: list[dict[str, float]] = []
    header: list[str] | None = None
    with open(path, newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("#"):
                key, _, value = line[1:].strip().partition(": ")
                meta[key] = value
                continue
            fields = next(csv.reader([line]))
            if header is None:
                header = fields
                if header not in (RUN_HEADER, RUN_HEADER_V1, RUN_HEADER_V2):
                    raise SystemExit(f"{path}:{lineno}: header {header}, expected {RUN_HEADER}")
                continue
            try:
                rec = dict(zip(header, fields, strict=True))
                runs.append(
                    {
                        "n": int(rec["n"]),
                        "seed": int(rec["seed"]),
                        "method": rec["method"],
                        "error": float(rec["error"]),
                        "sigma_p": float(rec["sigma_p"]),
                        "wall_s": float(rec["wall_s"]),
                        "real_max_logit": float(rec.get("real_max_logit") or "nan"),
                        "val_error": float(rec.get("val_error") or "nan"),
                    }
                )
            except (ValueError, KeyError) as exc:
                raise SystemExit(f"{path}:{lineno}: bad row {fields!r} ({exc})") from exc
    return runs, meta


def merge_runs(folders: list[Path]) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
    """Concatenate the runs of several folders; a repeated (n, seed, method) is an error."""
    runs: list[dict[str, float]] = []
    metas: list[dict[str, str]] = []
    seen: dict[tuple[int, int, str], Path] = {}
    for folder in folders:
        part, meta = read_runs(folder)
        for r in part:
            key = (int(r["n"]), int(r["seed"]), str(r["method"]))
            if key in seen:
                raise SystemExit(
                    f"--merge: n={key[0]} seed={key[1]} {key[2]} is in both {seen[key]} and "
                    f"{folder}; give parts disjoint --seed/--seeds or --ns"
                )
            seen[key] = folder
        runs += part
        metas.append(meta)
    return runs, metas


def write_merged(args: argparse.Namespace, log: common.RunLog) -> int:
    """``--merge``: one table from the parts' runs.csv (no training)."""
    folders = [Path(f) for f in args.merge.split(",") if f.strip()]
    runs, metas = merge_runs(folders)
    ns = sorted({int(r["n"]) for r in runs})
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.write_csv(
        out / "runs.csv", RUN_HEADER, [[r[k] for k in RUN_HEADER] for r in runs], log.meta
    )
    _, _, csv_table = summarise(runs, ns, methods)
    common.write_csv(out / "table3.csv", csv_table[0], csv_table[1:], log.meta)
    table = report(runs, ns, methods)
    parts = "".join(
        f"- part `{f}`: `{m.get('command', '?')}` on `{m.get('device', '?')}`, "
        f"{m.get('cpu_count', '?')} CPUs, torch threads {m.get('torch_threads', '?')}\n"
        for f, m in zip(folders, metas, strict=True)
    )
    wall = sum(float(r["wall_s"]) for r in runs)
    (out / "table3.md").write_text(
        "# MNIST few-shot (paper's Table 3), merged\n\n"
        + log.meta_markdown()
        + "\n"
        + parts
        + f"- training wall time summed over runs: {wall:.0f} s\n\n"
        + table
    )
    log.print("MNIST, merged from " + args.merge)
    log.print(table)
    log.print(f"# wrote {out / 'runs.csv'}, {out / 'table3.csv'}, {out / 'table3.md'}")
    return 0


def max_logit_table(runs: list[dict[str, float]], ns: list[int], methods: list[str]) -> str:
    """Mean over seeds of the mean max category logit on the test images, per n and method.

    Softmax CE ignores a shift common to all logits, so a Deact that lowers every logit
    (eq. 5 on raw logits) shows here while the error stays put. Empty when not recorded.
    """
    rows = []
    for n in ns:
        vals = [
            common.mean_std(
                [
                    r.get("real_max_logit", float("nan"))
                    for r in runs
                    if r["n"] == n and r["method"] == m
                ]
            )[0]
            for m in methods
        ]
        if any(np.isfinite(v) for v in vals):
            rows.append([str(n)] + [f"{v:.2f}" if np.isfinite(v) else "n/a" for v in vals])
    if not rows:
        return ""
    return (
        "\nMean largest category logit on the test images (mean over seeds):\n\n"
        + common.format_table(["n", *methods], rows)
        + "\n"
    )


def _reduction(stats: dict[str, tuple[float, float]], method: str) -> float:
    """Relative error reduction of ``method`` against LeNet (means over seeds)."""
    if "lenet" in stats and method in stats and stats["lenet"][0] > 0:
        return (stats["lenet"][0] - stats[method][0]) / stats["lenet"][0]
    return float("nan")


def _paired_cell(diffs: list[float]) -> str:
    """``mean ± std, wins/seeds`` of paired differences (positive: the method is better)."""
    if not diffs:
        return "n/a"
    mu, sd = common.mean_std(diffs)
    return f"{fmt(mu, sd)}, {sum(d > 0 for d in diffs)}/{len(diffs)}"


PAPER_COL = {"lenet": 0, "deact": 1, "acgan": 3}


def summarise(
    runs: list[dict[str, float]], ns: list[int], methods: list[str]
) -> tuple[list[str], list[list[str]], list[list[object]]]:
    """Per n: each method's test error (mean ± std), the paper's, paired gains over LeNet.

    Returns:
        ``(markdown header, markdown rows, [csv header, *csv rows])``.
    """
    others = [m for m in methods if m != "lenet"]
    header = ["n", "seeds"]
    for m in methods:
        header.append(f"{m} (paper)" if m in PAPER_COL else m)
    header += [f"LeNet - {m}, wins" for m in others]
    csv_header = ["n", "seeds"]
    for m in methods:
        csv_header += [f"{m}_mean", f"{m}_std", f"{m}_val_mean", f"{m}_val_std", f"{m}_paper"]
    for m in others:
        csv_header += [f"paired_{m}_mean", f"paired_{m}_std", f"{m}_better", f"paired_{m}_seeds"]
    csv_header += ["rel_reduction", "rel_reduction_paper", "sigma_p"]
    md_rows: list[list[str]] = []
    csv_rows: list[list[object]] = []
    for n in ns:
        cell = [r for r in runs if r["n"] == n]
        if not cell:
            continue
        paper = PAPER.get(n)
        seeds = len({r["seed"] for r in cell})
        md: list[str] = [str(n), str(seeds)]
        cr: list[object] = [n, seeds]
        stats = {}
        for m in methods:
            stats[m] = common.mean_std([r["error"] for r in cell if r["method"] == m])
            val = common.mean_std([r.get("val_error", np.nan) for r in cell if r["method"] == m])
            pv = paper[PAPER_COL[m]] if paper and m in PAPER_COL else float("nan")
            md.append(fmt(*stats[m]) + (f" ({pv:.2f})" if np.isfinite(pv) else ""))
            cr += [f"{stats[m][0]:.4f}", f"{stats[m][1]:.4f}", f"{val[0]:.4f}", f"{val[1]:.4f}", pv]
        for m in others:
            # Same subset, same seed: the paired difference removes the subset's own variance,
            # which dominates the per-method spread at small n.
            diffs = paired_differences(cell, m)
            md.append(_paired_cell(diffs))
            mu, sd = common.mean_std(diffs)
            cr += [f"{mu:.4f}", f"{sd:.4f}", sum(d > 0 for d in diffs), len(diffs)]
        red = _reduction(stats, "deact")
        red_p = (paper[0] - paper[1]) / paper[0] if paper else float("nan")
        sig = [r["sigma_p"] for r in cell if r["method"] == "deact"]
        cr += [f"{red:.4f}", f"{red_p:.4f}", sig[0] if sig else ""]
        md_rows.append(md)
        csv_rows.append(cr)
    return header, md_rows, [csv_header, *csv_rows]


def controls_table(runs: list[dict[str, float]], ns: list[int], key: str = "error") -> str:
    """Each reading of eq. 5 beside its controls, paired per seed, on one index range.

    Args:
        runs: every run.
        ns: the training-set sizes.
        key: ``error`` (test range) or ``val_error`` (validation range).

    Returns:
        A markdown table (empty when no reading has its noise control).
    """
    header = [
        "n",
        "reading of eq. 5",
        "LeNet - Deact",
        "LeNet - noise control",
        "LeNet - unperturbed G",
        "noise - Deact",
        "generator's share",
    ]
    rows = []
    for n in ns:
        cell = [r for r in runs if r["n"] == n]
        present = {str(r["method"]) for r in cell}
        for form, m in FORMS.items():
            if m["deact"] not in present:
                continue
            share = generator_share(cell, form, key)
            rows.append(
                [
                    str(n),
                    form,
                    _paired_cell(paired_differences(cell, m["deact"], "lenet", key)),
                    _paired_cell(paired_differences(cell, m["noise"], "lenet", key)),
                    _paired_cell(paired_differences(cell, m["sigma0"], "lenet", key)),
                    _paired_cell(paired_differences(cell, m["deact"], m["noise"], key)),
                    f"{100 * share:.0f} %" if np.isfinite(share) else "n/a",
                ]
            )
    return common.format_table(header, rows) if rows else ""


def select_form(runs: list[dict[str, float]], ns: list[int]) -> tuple[str | None, list[str]]:
    """The rule of docs/method.md section 3.5, on the validation range only.

    A reading qualifies at n when it :func:`beats` LeNet and its noise control there
    (paired validation errors). The default is the reading that qualifies at the most
    n (ties: the larger mean validation gain over its noise control); when none
    qualifies anywhere, there is no default by this rule and the reading that beats
    LeNet at the most n is named as the best available.

    Returns:
        ``(chosen reading or None, report lines)``.
    """
    lines = []
    score: dict[str, tuple[int, int, float, float]] = {}
    for form, m in FORMS.items():
        wins_both = wins_lenet = 0
        gains_noise, gains_lenet = [], []
        seen = False
        for n in ns:
            cell = [r for r in runs if r["n"] == n]
            d_l = paired_differences(cell, m["deact"], "lenet", "val_error")
            d_n = paired_differences(cell, m["deact"], m["noise"], "val_error")
            if not d_l or not d_n:
                continue
            seen = True
            wins_lenet += beats(d_l)
            wins_both += beats(d_l) and beats(d_n)
            gains_noise.append(float(np.mean(d_n)))
            gains_lenet.append(float(np.mean(d_l)))
        if not seen:
            continue
        score[form] = (
            wins_both,
            wins_lenet,
            float(np.mean(gains_noise)),
            float(np.mean(gains_lenet)),
        )
        lines.append(
            f"- {form}: beats LeNet and its noise control at {wins_both} n, LeNet at "
            f"{wins_lenet} n; mean validation gain over noise {np.mean(gains_noise):+.2f}, "
            f"over LeNet {np.mean(gains_lenet):+.2f} points"
        )
    if not score:
        return None, ["(no reading ran with its noise control and validation errors)"]
    best = max(score, key=lambda f: (score[f][0], score[f][2]))
    if score[best][0] > 0:
        lines.append(f"Chosen on validation: **{best}** (the rule: beats LeNet AND noise).")
        return best, lines
    fallback = max(score, key=lambda f: (score[f][1], score[f][3]))
    lines.append(
        "No reading beats its noise control on validation at any n: the rule picks nothing. "
        f"Best against LeNet alone: {fallback}."
    )
    return None, lines


def report(runs: list[dict[str, float]], ns: list[int], methods: list[str]) -> str:
    """Every table of a run or a merge, as markdown."""
    header, md_rows, _ = summarise(runs, ns, methods)
    out = [
        "Test error % on the test range (mean ± std over seeds; the paper's in brackets), "
        "and each method's paired gain over LeNet (LeNet's error minus the method's on the "
        "same subset and seed: mean ± std, seeds where the method is better):",
        "",
        common.format_table(header, md_rows),
        "",
    ]
    test_controls = controls_table(runs, ns, "error")
    if test_controls:
        _, lines = select_form(runs, ns)
        out += [
            "Each reading of eq. 5 beside its controls, test range, paired points of error "
            "(positive: the second is better); generator's share = (noise - Deact) / "
            "(LeNet - Deact):",
            "",
            test_controls,
            "",
            "The same on the validation range (where the default is chosen):",
            "",
            controls_table(runs, ns, "val_error"),
            "",
            "Selection (docs/method.md section 3.5; 'beats' = positive mean paired "
            "difference, positive on more than half of the seeds):",
            "",
            *lines,
            "",
        ]
    out.append(max_logit_table(runs, ns, methods))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.resolve_device(args.device, args.threads)
    log = common.RunLog(SCRIPT, device)
    log.header()
    if args.merge:
        return write_merged(args, log)
    x_all, y_all, pool, test = common.load_mnist_protocol(args, device)
    val = common.parse_range(args.val, "--val", x_all.shape[0])
    # Protocol: subsets from the pool, choices on the validation range, the test range
    # only reported; the three never overlap.
    common.check_disjoint(pool, val)
    common.check_disjoint(val, test)
    x_test, y_test = x_all[test[0] : test[1]], y_all[test[0] : test[1]]
    x_val, y_val = x_all[val[0] : val[1]], y_all[val[0] : val[1]]
    labels_np = y_all.cpu().numpy()
    clf_scale = args.scale if args.clf_scale is None else args.clf_scale
    gan_scale = args.scale if args.gan_scale is None else args.gan_scale
    clf_steps = max(1, round(args.clf_samples * clf_scale / args.batch))
    gan_steps = max(1, round(args.gan_samples * gan_scale / args.gan_batch))
    spec = common.mnist_gan_spec(args.gan_top_channels)
    log.print(
        f"# budgets: classifier {clf_steps} steps x {args.batch} = {clf_steps * args.batch} "
        f"samples; GAN {gan_steps} steps x {args.gan_batch} = {gan_steps * args.gan_batch} "
        f"samples; subsets {args.subset}; GAN channels {spec.channels}; pool {pool}, "
        f"validation {val}, test {test}; methods {','.join(args.method_list)}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, float]] = []
    if args.resume and (out / "runs.csv").is_file():
        runs, _ = read_runs(out)
        log.print(f"# resumed: {len(runs)} runs already in {out / 'runs.csv'}")
    done = {(int(r["n"]), int(r["seed"]), str(r["method"])) for r in runs}

    def record(n: int, s: int, method: str, model: torch.nn.Module, sigma: float, t: float) -> None:
        err, max_logit = test_error(model, x_test, y_test)
        val_err, _ = test_error(model, x_val, y_val)
        runs.append(row(n, s, method, err, sigma, t, max_logit, val_err))
        log.progress(
            f"n={n} seed={s} {method} (sigma_p {sigma}) val error {val_err:.2f} %, test error "
            f"{err:.2f} % (mean max logit on test images {max_logit:.2f}; {t:.1f} s)"
        )
        common.write_csv(
            out / "runs.csv", RUN_HEADER, [[r[k] for k in RUN_HEADER] for r in runs], log.meta
        )

    for n in args.ns_list:
        for s in range(args.seed, args.seed + args.seeds):
            todo = [m for m in args.method_list if (n, s, m) not in done]
            if not todo:
                continue
            idx = common.draw_subset(labels_np, pool, n, s, balanced=args.subset == "balanced")
            assert idx.min() >= pool[0] and idx.max() < pool[1]  # protocol: pool only
            idx_t = torch.as_tensor(idx, device=device)
            x, y = x_all[idx_t], y_all[idx_t]
            seed = 1000 * s + n
            sigma = sigma_for(args, n)
            if "lenet" in todo:
                with common.timer() as t:
                    model = train_lenet(x, y, args, clf_steps, seed)
                record(n, s, "lenet", model, 0.0, t["s"])
            G = None
            for method in [m for m in todo if m in DEACT_METHODS]:
                source, form, _ = DEACT_METHODS[method]
                with common.timer() as t:
                    if G is None and source != "noise":  # one generator per cell, shared
                        G, _ = common.train_mrgan(
                            x,
                            make_condition(y, None, NUM_CLASSES),
                            spec,
                            steps=gan_steps,
                            batch=args.gan_batch,
                            lr=args.gan_lr,
                            dc_weight=args.dc_weight,
                            seed=seed,
                            log=log,
                            tag=f"n={n} seed={s}",
                        )
                    sig = 0.0 if source == "sigma0" else sigma
                    deact = DeactLoss(
                        None if source == "noise" else G,
                        HardLabelMemory(0, NUM_CLASSES, device=device),
                        sigma_p=sig,
                        threshold=-4.6,
                        image_size=28,
                        mean=(0.5,),
                        std=(0.5,),
                        in_channels=1,
                        seed=seed,
                        form=form,  # type: ignore[arg-type]
                        source="noise" if source == "noise" else "generator",
                    )
                    model = train_lenet(x, y, args, clf_steps, seed, deact=deact)
                record(n, s, method, model, sig, t["s"])
            if "acgan" in todo:
                with common.timer() as t:
                    D = train_acgan(x, y, args, spec, clf_steps, seed)
                record(n, s, "acgan", D, 0.0, t["s"])
    ns = [n for n in args.ns_list if any(r["n"] == n for r in runs)]
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    _, _, csv_table = summarise(runs, ns, methods)
    common.write_csv(out / "table3.csv", csv_table[0], csv_table[1:], log.meta)
    table = report(runs, ns, methods)
    log.print()
    log.print(table)
    log.print(f"# total wall time {log.elapsed():.0f} s")
    (out / "table3.md").write_text(
        "# MNIST few-shot (paper's Table 3) with the Deact controls\n\n"
        + log.meta_markdown()
        + f"\n- budgets: classifier {clf_steps * args.batch} samples, GAN "
        + f"{gan_steps * args.gan_batch} samples (scales {clf_scale} / {gan_scale}), subsets "
        + f"{args.subset}, GAN channels {spec.channels}; pool {pool}, validation {val}, "
        + f"test {test}\n"
        + f"- total wall time: {log.elapsed():.0f} s\n\n"
        + table
    )
    log.print(f"# wrote {out / 'runs.csv'}, {out / 'table3.csv'}, {out / 'table3.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
