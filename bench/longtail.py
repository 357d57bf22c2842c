"""HABP against the paper's baselines on a long-tailed multi-label task built from real MNIST.

Task. Every image is a 2 x 2 grid (56 x 56 px) of real MNIST digits. The four
digit classes of a grid are drawn i.i.d. from a power law over the digits
(``p ∝ rank ** -alpha``, rank order :data:`RANK_ORDER`, alpha 2 by default), so
"1" appears in almost every grid and "9" in about 2.6 %; the digit images
themselves are drawn from images 0-4999 for the training grids and 5000-9999
for the test grids (protocol of the data README; the splits are fixed by
``--data-seed``). Labels (34 binary attributes in five groups, so per-group
recall means something):

1. ``digit``: the digit d occurs (10 labels);
2. ``count``: some digit repeats, occurs 3+ times, all four equal, all
   distinct, two different pairs;
3. ``arith``: digit sum > 18, sum > 22, sum < 8, all odd, two or more even,
   max - min >= 8, no "1" at all;
4. ``pair``: two given digits occur together (0&9, 3&8, 4&9, 0&3, 3&4, 0&2, 1&7);
5. ``shape``: a digit with a loop (0 6 8 9), only straight digits (1 4 7), a
   curved digit (2 3 5), two or more loop digits, two or more curved digits.

The category (10 classes, softmax head) is the rarest digit present under
the power law, itself long-tailed. Label frequencies span from ~99 % to
~0.2 % of the training grids; "tail" labels are those with fewer than
``--tail-frac`` x (training grids) positives (2 %, i.e. the paper's 100 of
5,000).

Methods (``fashion_attr.losses``): CE, focal, weighted focal, OHEM (0.17),
weighted CE-A, weighted CE-B, ASL, HABP (gamma 1.2), HABP with a weighted
CE-B base and gamma 0.1 (the paper's class-balanced setting) and HABP + Deact
(an MR-GAN conditioned on (category, attributes) trained on the training
grids at ``--gan-size`` px, frozen; ``L = L_HABP + lambda * L_SC``, eq. 11, with the
library's default reading of eq. 5, :data:`fashion_attr.losses.DEFAULT_FORM`). Deact's
controls, on the same seeds and budget: ``habp_noise`` (the same loss on Gaussian-noise
images, no generator), ``habp_sigma0`` (the unperturbed generator, sigma_p = 0) and
``habp_deact_raw`` (the paper's literal eq. 5 on raw logits); and the paper's Table 1
rows ``ce_deact`` ("Deact only": CE + Deact) and ``focal_deact`` ("FL + Deact").
Classifier: ``build_classifier("tiny", 34, 10, in_channels=1)`` at 56 px,
SGD momentum 0.9 with the paper's step schedule (lr / 10 after 6/15, 9/15 and
12/15 of the epochs).

Outputs (``--out``): ``runs.csv`` (every method x seed), ``summary.csv`` and
``summary.md`` (mean ± std), ``per_group.csv``, ``label_stats.csv``,
``lr_sensitivity.csv/png`` (HABP vs focal at 4 learning rates spanning 20x,
Fig. 6 analogue), ``loss_curve.csv/png`` (first epoch, Fig. 7 analogue),
``prob_vs_freq.csv/png`` (mean predicted probability on positives vs training
positives per label, CE vs HABP, Fig. 2 analogue), ``examples.png`` (a few
training grids with their labels).

Departures: the Deact generator is trained once (first seed) and shared by
every seed's classifier (a fixed asset, like a pretrained generator); Deact
lambda defaults to 1e-3 (the paper's class-balanced value; 1e-4 for top-k on
DeepFashion-C) and sigma_p to 1.5 (DeepFashion-C's); real and synthetic
images share one forward pass, as ``ClassifierTask`` does.

Examples:
    Quick CPU run (about 10-15 min on 2 cores)::

        python bench/longtail.py --scale 0.25 --epochs 4 --seeds 3

    Full run on a GPU::

        python bench/longtail.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from fashion_attr.classifier.deact import DeactLoss
from fashion_attr.classifier.model import build_classifier
from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics
from fashion_attr.gan.networks import MRGANSpec, make_condition
from fashion_attr.hardness import HardLabelMemory, default_positives_per_image
from fashion_attr.losses import (
    LOSSES,
    bce_loss,
    category_hardness,
    node_hardness,
    wce_pos_weight,
)

SCRIPT = "longtail"
NUM_CLASSES = 10
#: Digits from most to least frequent under the power law.
RANK_ORDER = (1, 7, 0, 3, 4, 2, 6, 5, 8, 9)
GROUP_NAMES = {1: "digit", 2: "count", 3: "arith", 4: "pair", 5: "shape"}
PAIRS = ((0, 9), (3, 8), (4, 9), (0, 3), (3, 4), (0, 2), (1, 7))


def _attributes() -> list[tuple[str, int, Callable[..., np.ndarray]]]:
    """(name, group id, rule on (digits [n, 4], presence [n, 10], counts [n, 10]))."""
    attrs: list[tuple[str, int, Callable[..., np.ndarray]]] = []
    for k in range(10):
        attrs.append((f"has_{k}", 1, lambda d, p, c, k=k: p[:, k]))
    attrs += [
        ("repeat", 2, lambda d, p, c: c.max(1) >= 2),
        ("triple", 2, lambda d, p, c: c.max(1) >= 3),
        ("all_same", 2, lambda d, p, c: c.max(1) == 4),
        ("all_distinct", 2, lambda d, p, c: c.max(1) == 1),
        ("two_pairs", 2, lambda d, p, c: (c == 2).sum(1) == 2),
        ("sum_gt_18", 3, lambda d, p, c: d.sum(1) > 18),
        ("sum_gt_22", 3, lambda d, p, c: d.sum(1) > 22),
        ("sum_lt_8", 3, lambda d, p, c: d.sum(1) < 8),
        ("all_odd", 3, lambda d, p, c: (d % 2 == 1).all(1)),
        ("two_plus_even", 3, lambda d, p, c: (d % 2 == 0).sum(1) >= 2),
        ("spread_ge_8", 3, lambda d, p, c: d.max(1) - d.min(1) >= 8),
        ("no_1", 3, lambda d, p, c: ~p[:, 1]),
    ]
    for a, b in PAIRS:
        attrs.append((f"has_{a}_and_{b}", 4, lambda d, p, c, a=a, b=b: p[:, a] & p[:, b]))
    attrs += [
        ("has_loop", 5, lambda d, p, c: p[:, [0, 6, 8, 9]].any(1)),
        ("only_straight", 5, lambda d, p, c: np.isin(d, [1, 4, 7]).all(1)),
        ("has_curve", 5, lambda d, p, c: p[:, [2, 3, 5]].any(1)),
        ("two_plus_loops", 5, lambda d, p, c: np.isin(d, [0, 6, 8, 9]).sum(1) >= 2),
        ("two_plus_curves", 5, lambda d, p, c: np.isin(d, [2, 3, 5]).sum(1) >= 2),
    ]
    return attrs


ATTRIBUTES = _attributes()
ATTR_NAMES = [a[0] for a in ATTRIBUTES]
ATTR_GROUPS = [a[1] for a in ATTRIBUTES]
NUM_ATTRS = len(ATTRIBUTES)

METHODS = (
    "ce",
    "focal",
    "weighted_focal",
    "ohem",
    "wce_a",
    "wce_b",
    "asl",
    "habp",
    "habp_cb",
    "habp_deact",
    "habp_noise",
    "habp_sigma0",
    "habp_deact_raw",
    "ce_deact",
    "focal_deact",
)
#: Deact methods: name -> (image source, reading of eq. 5 or None for the default).
DEACT_VARIANTS: dict[str, tuple[str, str | None]] = {
    "habp_deact": ("generator", None),
    "habp_noise": ("noise", None),
    "habp_sigma0": ("sigma0", None),
    "habp_deact_raw": ("generator", "raw"),
    "ce_deact": ("generator", None),
    "focal_deact": ("generator", None),
}
LABELS = {
    "ce": "CE",
    "focal": "Focal",
    "weighted_focal": "Weighted focal",
    "ohem": "OHEM 0.17",
    "wce_a": "W-CE-A",
    "wce_b": "W-CE-B",
    "asl": "ASL",
    "habp": "HABP",
    "habp_cb": "HABP (W-CE-B base, gamma 0.1)",
    "habp_deact": "HABP + Deact",
    "habp_noise": "HABP + noise control",
    "habp_sigma0": "HABP + Deact, unperturbed G",
    "habp_deact_raw": "HABP + Deact, literal eq. 5",
    "ce_deact": "CE + Deact (Deact only)",
    "focal_deact": "Focal + Deact",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="HABP vs baselines on a long-tailed multi-label MNIST-grid task.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_mnist_args(
        p,
        pool_help="digit images of the training grids",
        test_help="digit images of the test grids",
    )
    p.add_argument("--n-train", type=int, default=20000, help="training grids at scale 1")
    p.add_argument("--n-test", type=int, default=5000, help="test grids (not scaled)")
    p.add_argument("--scale", type=float, default=1.0, help="shrinks the training grids")
    p.add_argument("--alpha", type=float, default=2.0, help="power-law exponent of the digits")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the fixed splits")
    p.add_argument("--tail-frac", type=float, default=0.02, help="tail: positives < frac*n_train")
    p.add_argument("--seeds", type=int, default=3, help="number of training seeds")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    p.add_argument("--epochs", type=int, default=15, help="classifier epochs (paper 15)")
    p.add_argument("--batch", type=int, default=64, help="classifier batch size")
    p.add_argument("--lr", type=float, default=0.02, help="classifier SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    p.add_argument("--gamma", type=float, default=1.2, help="gamma of HABP/focal (top-k)")
    p.add_argument(
        "--lr-sweep",
        default="0.005,0.01,0.02,0.1",
        help="learning rates of the HABP-vs-focal sensitivity run (first seed); empty: skip",
    )
    p.add_argument("--gan-size", type=int, default=28, choices=(28, 56), help="MR-GAN side")
    p.add_argument("--gan-top-channels", type=int, default=32, help="MR-GAN channels at top")
    p.add_argument("--gan-epochs", type=float, default=30.0, help="MR-GAN epochs (paper 30)")
    p.add_argument("--gan-batch", type=int, default=128, help="MR-GAN batch size")
    p.add_argument("--gan-lr", type=float, default=2e-4, help="MR-GAN Adam learning rate")
    p.add_argument("--dc-weight", type=float, default=2e-6, help="DC loss weight")
    p.add_argument("--sigma-p", type=float, default=1.5, help="Deact perturbation std")
    p.add_argument("--deact-lambda", type=float, default=1e-3, help="lambda of eq. 11")
    p.add_argument("--deact-every", type=int, default=1, help="Deact every k iterations")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--out", default=str(common.default_out(SCRIPT)), help="results folder")
    args = p.parse_args(argv)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(args.method_list) - set(METHODS))
    if bad:
        p.error(f"--methods: unknown {bad}; allowed {list(METHODS)}")
    args.lr_list = [float(v) for v in args.lr_sweep.split(",") if v.strip()]
    if args.scale <= 0 or args.seeds < 1 or args.epochs < 1:
        p.error("--scale must be > 0, --seeds and --epochs >= 1")
    return args


# ----------------------------------------------------------------------------- data


def digit_prior(alpha: float) -> np.ndarray:
    """``p[d] ∝ rank(d) ** -alpha`` over the ten digits."""
    w = np.arange(1, NUM_CLASSES + 1, dtype=np.float64) ** -alpha
    p = np.zeros(NUM_CLASSES)
    p[list(RANK_ORDER)] = w / w.sum()
    return p


def labels_of(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attributes ``[n, N]`` (0/1 float32) and category ``[n]`` of digit grids ``[n, 4]``."""
    counts = np.stack([(digits == k).sum(1) for k in range(NUM_CLASSES)], 1)
    present = counts > 0
    attrs = np.stack([rule(digits, present, counts) for _, _, rule in ATTRIBUTES], 1)
    rank = np.argsort(RANK_ORDER)[digits]  # rank of each cell's digit
    category = digits[np.arange(digits.shape[0]), rank.argmax(1)]
    return attrs.astype(np.float32), category.astype(np.int64)


def compose(
    x: torch.Tensor,
    y_np: np.ndarray,
    index_range: tuple[int, int],
    n: int,
    prior: np.ndarray,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, np.ndarray]:
    """Build ``n`` 2 x 2 grids from digit images in ``index_range`` only.

    Returns:
        ``(images [n, 1, 56, 56] in [-1, 1] on x's device, digits [n, 4])``; the
        cells are top-left, top-right, bottom-left, bottom-right.
    """
    digits = rng.choice(NUM_CLASSES, size=(n, 4), p=prior)
    members = [
        np.flatnonzero(y_np[index_range[0] : index_range[1]] == k) + index_range[0]
        for k in range(NUM_CLASSES)
    ]
    src = np.empty((n, 4), dtype=np.int64)
    for k in range(NUM_CLASSES):
        mask = digits == k
        src[mask] = rng.choice(members[k], size=int(mask.sum()))
    assert src.min() >= index_range[0] and src.max() < index_range[1]  # protocol
    cells = x[torch.as_tensor(src, device=x.device)][:, :, 0]  # [n, 4, 28, 28]
    grid = cells.view(n, 2, 2, 28, 28).permute(0, 1, 3, 2, 4).reshape(n, 1, 56, 56)
    return grid.contiguous(), digits


class Data:
    """The fixed train/test splits on the device, with training label statistics."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        x_all, y_all, pool, test = common.load_mnist_protocol(args, device)
        y_np = y_all.cpu().numpy()
        prior = digit_prior(args.alpha)
        rng = np.random.default_rng(args.data_seed)
        self.n_train = max(args.batch, round(args.n_train * args.scale))
        self.x_train, d_train = compose(x_all, y_np, pool, self.n_train, prior, rng)
        self.x_test, d_test = compose(x_all, y_np, test, args.n_test, prior, rng)
        a_tr, c_tr = labels_of(d_train)
        a_te, c_te = labels_of(d_test)
        self.a_train = torch.as_tensor(a_tr, device=device)
        self.c_train = torch.as_tensor(c_tr, device=device)
        self.a_test = torch.as_tensor(a_te, device=device)
        self.c_test = torch.as_tensor(c_te, device=device)
        self.pos = a_tr.sum(0).astype(np.int64)
        self.neg = self.n_train - self.pos
        self.test_pos = a_te.sum(0).astype(np.int64)
        self.cat_counts = np.bincount(c_tr, minlength=NUM_CLASSES)
        self.tail_threshold = max(1, round(args.tail_frac * self.n_train))
        self.prior = prior


def loss_kwargs(method: str, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    dev = data.a_train.device
    pos = torch.as_tensor(data.pos, dtype=torch.float32, device=dev)
    neg = torch.as_tensor(data.neg, dtype=torch.float32, device=dev)
    if method in ("focal", "habp", "focal_deact") or (
        method.startswith("habp_") and method != "habp_cb"
    ):
        return {"gamma": args.gamma}
    if method == "weighted_focal":
        return {"gamma": args.gamma, "priors": pos / data.n_train}
    if method == "ohem":
        return {"ratio": 0.17}
    if method in ("wce_a", "wce_b"):
        return {"pos_counts": pos, "neg_counts": neg}
    if method == "habp_cb":
        return {"gamma": 0.1, "pos_weight": wce_pos_weight("B", pos, neg)}
    return {}


def loss_fn(method: str) -> Callable[..., torch.Tensor]:
    if method.startswith("habp_"):
        return LOSSES["habp"]
    return LOSSES[{"ce_deact": "ce", "focal_deact": "focal"}.get(method, method)]


# ----------------------------------------------------------------------------- training


def lr_at(base: float, frac: float) -> float:
    """The paper's schedule over 15 epochs: / 10 after epochs 6, 9 and 12."""
    drops = sum(frac >= m / 15 for m in (6, 9, 12))
    return base * 0.1**drops


def train(
    method: str,
    data: Data,
    args: argparse.Namespace,
    seed: int,
    lr: float,
    deact: DeactLoss | None = None,
    curve: list[dict[str, float]] | None = None,
) -> torch.nn.Module:
    """Train the tiny classifier with one loss; optionally record the first epoch's curve."""
    dev = data.x_train.device
    torch.manual_seed(seed)
    model = build_classifier("tiny", NUM_ATTRS, NUM_CLASSES, in_channels=1).to(dev)
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    fn, kw = loss_fn(method), loss_kwargs(method, data, args)
    per_epoch = max(1, data.n_train // args.batch)
    steps = per_epoch * args.epochs
    idx_all = common.batch_indices(data.n_train, steps, args.batch, seed, dev)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(lr, step / steps)
        idx = idx_all[step]
        xb, ab, cb = data.x_train[idx], data.a_train[idx], data.c_train[idx]
        m = xb.shape[0]
        syn = None
        if deact is not None and (step + 1) % args.deact_every == 0:
            syn = deact.synthesize(m, like=xb)  # the noise control matches the real batch
            xb = torch.cat([xb, syn.images])
        attr, cat = model(xb)
        loss = fn(attr[:m], ab, None, cat[:m], cb, **kw)
        if deact is not None:
            # Hard-label memory, step 3: EMA of the real batch's hardness.
            with torch.no_grad():
                deact.memory.update(
                    node_hardness(attr[:m].detach(), ab, args.gamma),
                    ab,
                    None,
                    category_hardness(cat[:m].detach(), cb, args.gamma),
                    cb,
                )
            if syn is not None:
                loss = loss + args.deact_lambda * deact.loss(attr[m:], cat[m:], syn)  # eq. 11
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if curve is not None and step < per_epoch:
            with torch.no_grad():
                plain = bce_loss(attr[:m], ab, None, cat[:m], cb)
            curve.append({"step": step + 1, "objective": float(loss.detach()), "bce": float(plain)})
    return model


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data) -> tuple[dict[str, float], list[dict]]:
    """Every metric of docs/method.md section 6 on the test grids, plus per-label records."""
    model.eval()
    am = AttributeMetrics(
        ATTR_GROUPS,
        GROUP_NAMES,
        train_pos_counts=data.pos.tolist(),
        tail_threshold=data.tail_threshold,
        ks=(3, 5),
    )
    cm = CategoryMetrics(NUM_CLASSES, ks=(3,))
    for i in range(0, data.x_test.shape[0], 500):
        attr, cat = model(data.x_test[i : i + 500])
        am.update(attr, data.a_test[i : i + 500])
        cm.update(cat, data.c_test[i : i + 500])
    model.train()
    metrics = am.compute() | cm.compute()
    # Category accuracy balanced over classes (the categories are long-tailed too).
    conf = cm.confusion_matrix()
    with np.errstate(invalid="ignore"):
        per_class = np.diag(conf) / conf.sum(1)
    metrics["cat_balanced_acc"] = float(np.nanmean(per_class))
    return metrics, am.per_attribute()


def build_generator(data: Data, args: argparse.Namespace, log: common.RunLog) -> Any:
    """Train the conditional MR-GAN on the training grids (frozen by DeactLoss)."""
    spec = MRGANSpec(
        num_categories=NUM_CLASSES,
        num_attributes=NUM_ATTRS,
        z_dim=64,
        image_size=args.gan_size,
        base_size=7,
        top_channels=args.gan_top_channels,
        max_channels=256,
        out_channels=1,
    )
    x = data.x_train
    if args.gan_size != 56:
        x = F.interpolate(x, size=(args.gan_size, args.gan_size), mode="area")
    cond = make_condition(data.c_train, data.a_train, NUM_CLASSES)
    steps = max(1, round(args.gan_epochs * data.n_train / args.gan_batch))
    log.progress(f"MR-GAN {spec.levels} channels {spec.channels}: {steps} steps")
    G, _ = common.train_mrgan(
        x,
        cond,
        spec,
        steps=steps,
        batch=args.gan_batch,
        lr=args.gan_lr,
        dc_weight=args.dc_weight,
        seed=args.seed,
        log=log,
        tag="deact",
    )
    return G


def build_deact(method: str, generator: Any, data: Data, args: argparse.Namespace) -> DeactLoss:
    """A fresh Deact loss (new hard-label memory) of one Deact method or control."""
    source, form = DEACT_VARIANTS[method]
    memory = HardLabelMemory(
        NUM_ATTRS,
        NUM_CLASSES,
        positives_per_image=default_positives_per_image(int(data.pos.sum()), data.n_train),
        device=data.x_train.device,
    )
    return DeactLoss(
        None if source == "noise" else generator,
        memory,
        sigma_p=0.0 if source == "sigma0" else args.sigma_p,
        threshold=-4.6,
        image_size=56,
        mean=(0.5,),
        std=(0.5,),
        in_channels=1,
        seed=args.seed,
        form=form,  # type: ignore[arg-type]
        source="noise" if source == "noise" else "generator",
    )


# ----------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_examples(data: Data, path: Path, n: int = 12) -> None:
    """A few training grids with their category and positive labels."""
    plt = _plt()
    fig, axes = plt.subplots(2, n // 2, figsize=(2.2 * n // 2, 6.4))
    for i, ax in enumerate(axes.flat):
        img = data.x_train[i, 0].float().cpu().add(1).div(2).numpy()
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        pos = [ATTR_NAMES[j] for j in torch.nonzero(data.a_train[i]).flatten().tolist()]
        rest = [a for a in pos if not a.startswith("has_") or "_and_" in a]
        ax.set_title(f"cat {int(data.c_train[i])}\n" + "\n".join(rest[:3]), fontsize=6)
        ax.axis("off")
    fig.suptitle("Training grids: category (rarest digit) and some derived labels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lr(rows: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax, title in (
        ("attr_recall@3/all", axes[0], "top-3 recall, all labels"),
        ("map/all", axes[1], "mAP, all labels"),
    ):
        for method in ("focal", "habp"):
            pts = sorted((r["lr"], r[key]) for r in rows if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=LABELS[method])
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("Learning-rate sensitivity (Fig. 6 analogue)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curve(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for method, rows in curves.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["objective"] for r in rows], label=LABELS[method])
        axes[1].plot(steps, [r["bce"] for r in rows], label=LABELS[method])
    axes[0].set_title("training objective (own scale)")
    axes[1].set_title("plain CE on the same batch")
    for ax in axes:
        ax.set_xlabel("iteration (first epoch)")
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle("Loss over the first epoch (Fig. 7 analogue)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_prob(records: dict[str, list[dict]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, marker in (("ce", "o"), ("habp", "^")):
        if method not in records:
            continue
        rec = records[method]
        ax.scatter(
            [r["train_positives"] for r in rec],
            [r["mean_prob_pos"] for r in rec],
            marker=marker,
            label=LABELS[method],
            alpha=0.8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training positives of the label")
    ax.set_ylabel("mean predicted probability on test positives")
    ax.set_title("Fig. 2 analogue")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

SUMMARY_KEYS = (
    ("attr_recall@3/all", "top-3 recall all"),
    ("attr_recall@3/tail", "top-3 recall tail"),
    ("attr_recall@5/all", "top-5 recall all"),
    ("cb_acc/all", "CB acc all"),
    ("cb_acc/tail", "CB acc tail"),
    ("map/all", "mAP all"),
    ("map/tail", "mAP tail"),
    ("cat_top1_acc", "cat top-1"),
    ("cat_balanced_acc", "cat balanced acc"),
)


#: The base loss each Deact method is compared with.
DEACT_BASE = {m: "habp" for m in DEACT_VARIANTS} | {"ce_deact": "ce", "focal_deact": "focal"}
CONTROL_KEYS = (
    ("attr_recall@3/all", "top-3"),
    ("attr_recall@3/tail", "top-3 tail"),
    ("map/all", "mAP"),
)


def paired(runs: Sequence[dict[str, Any]], a: str, b: str, key: str) -> list[float]:
    """``a``'s metric minus ``b``'s in points, per seed with both (positive: ``a`` better)."""
    by = {(r["method"], r["seed"]): r[key] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    return [100 * (by[(a, s)] - by[(b, s)]) for s in seeds if (a, s) in by and (b, s) in by]


def deact_controls_table(runs: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """Every Deact method against its base, and HABP + Deact against its noise control."""

    def cell(d: list[float]) -> str:
        if not d:
            return "n/a"
        mu, sd = common.mean_std(d)
        return f"{mu:+.2f} ± {sd:.2f}, {sum(x > 0 for x in d)}/{len(d)}"

    pairs = [(m, DEACT_BASE[m]) for m in methods if m in DEACT_BASE and DEACT_BASE[m] in methods]
    if "habp_deact" in methods and "habp_noise" in methods:
        pairs.append(("habp_deact", "habp_noise"))
    rows = [
        [f"{LABELS[a]} - {LABELS[b]}", *[cell(paired(runs, a, b, k)) for k, _ in CONTROL_KEYS]]
        for a, b in pairs
    ]
    if {"habp", "habp_deact", "habp_noise"} <= set(methods):
        gain = paired(runs, "habp_deact", "habp", CONTROL_KEYS[0][0])
        over = paired(runs, "habp_deact", "habp_noise", CONTROL_KEYS[0][0])
        share = np.mean(over) / np.mean(gain) if gain and np.mean(gain) > 0 else float("nan")
        rows.append(
            ["generator's share of the gain"]
            + [f"{100 * share:.0f} %" if np.isfinite(share) else "n/a (no gain)"]
            + [""] * (len(CONTROL_KEYS) - 1)
        )
    return common.format_table(["pair", *[v for _, v in CONTROL_KEYS]], rows) if rows else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = common.resolve_device(args.device, args.threads)
    log = common.RunLog(SCRIPT, device)
    log.header()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Data(args, device)
    tail = data.pos < data.tail_threshold
    log.print(
        f"# data: {data.n_train} training grids (digit images {args.pool}), {args.n_test} test "
        f"grids ({args.test}); {NUM_ATTRS} labels, tail = fewer than {data.tail_threshold} "
        f"training positives ({int(tail.sum())} labels); epochs {args.epochs}, batch "
        f"{args.batch}, lr {args.lr}"
    )
    log.print(f"# digit prior (0-9): {np.round(data.prior, 4).tolist()}")
    log.print(f"# category counts (train): {data.cat_counts.tolist()}")
    stats_rows = [
        [name, GROUP_NAMES[g], int(p), int(tp), bool(t)]
        for name, g, p, tp, t in zip(
            ATTR_NAMES, ATTR_GROUPS, data.pos, data.test_pos, tail, strict=True
        )
    ]
    common.write_csv(
        out / "label_stats.csv",
        ["label", "group", "train_pos", "test_pos", "tail"],
        stats_rows,
        log.meta,
    )
    log.print(
        "# training positives per label: "
        + ", ".join(f"{n}={int(p)}" for n, p in zip(ATTR_NAMES, data.pos, strict=True))
    )

    plot_examples(data, out / "examples.png")

    generator = None
    if any(DEACT_VARIANTS.get(m, ("noise",))[0] != "noise" for m in args.method_list):
        with common.timer() as t:
            generator = build_generator(data, args, log)
        log.progress(f"MR-GAN trained in {t['s']:.0f} s")

    runs: list[dict[str, Any]] = []
    records: dict[str, list[dict]] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    groups = [GROUP_NAMES[g] for g in sorted(GROUP_NAMES)]
    run_keys = [k for k, _ in SUMMARY_KEYS] + [f"attr_recall@3/{g}" for g in groups]
    for s in range(args.seed, args.seed + args.seeds):
        for method in args.method_list:
            first = s == args.seed
            curve = [] if first and method in ("focal", "habp") else None
            d = build_deact(method, generator, data, args) if method in DEACT_VARIANTS else None
            with common.timer() as t:
                model = train(method, data, args, 100 * s + 1, args.lr, deact=d, curve=curve)
                metrics, per_attr = evaluate(model, data)
            if curve is not None:
                curves[method] = curve
            if first:
                records[method] = per_attr
            runs.append({"method": method, "seed": s, "lr": args.lr, "wall_s": t["s"]} | metrics)
            log.progress(
                f"seed {s} {method:15s} top3 all {metrics['attr_recall@3/all']:.4f} tail "
                f"{metrics['attr_recall@3/tail']:.4f} mAP {metrics['map/all']:.4f} CB "
                f"{metrics['cb_acc/all']:.4f} cat {metrics['cat_top1_acc']:.4f} ({t['s']:.0f} s)"
            )
            common.write_csv(
                out / "runs.csv",
                ["method", "seed", "lr", "wall_s", *run_keys],
                [
                    [r["method"], r["seed"], r["lr"], f"{r['wall_s']:.1f}"]
                    + [f"{r[k]:.5f}" for k in run_keys]
                    for r in runs
                ],
                log.meta,
            )

    # Summary: mean ± std over seeds.
    header = ["method", *[label for _, label in SUMMARY_KEYS]]
    md_rows, csv_rows, group_rows = [], [], []
    for method in args.method_list:
        rows = [r for r in runs if r["method"] == method]
        md = [LABELS[method]]
        cr: list[Any] = [method]
        for key, _ in SUMMARY_KEYS:
            mu, sd = common.mean_std([r[key] for r in rows])
            md.append(f"{100 * mu:.2f} ± {100 * sd:.2f}")
            cr += [f"{mu:.5f}", f"{sd:.5f}"]
        md_rows.append(md)
        csv_rows.append(cr)
        gr: list[Any] = [method]
        for g in groups:
            mu, sd = common.mean_std([r[f"attr_recall@3/{g}"] for r in rows])
            gr.append(f"{100 * mu:.2f} ± {100 * sd:.2f}")
        group_rows.append(gr)
    csv_header = ["method"]
    for key, _ in SUMMARY_KEYS:
        csv_header += [f"{key}_mean", f"{key}_std"]
    common.write_csv(out / "summary.csv", csv_header, csv_rows, log.meta)
    common.write_csv(
        out / "per_group.csv", ["method", *[f"top3_{g}" for g in groups]], group_rows, log.meta
    )
    table = common.format_table(header, md_rows)
    gtable = common.format_table(["method", *[f"top-3 {g}" for g in groups]], group_rows)
    log.print()
    log.print(f"Long-tailed MNIST grids, % mean ± std over {args.seeds} seeds:")
    log.print(table)
    log.print()
    log.print("Top-3 recall per group (%):")
    log.print(gtable)
    controls = deact_controls_table(runs, args.method_list)
    if controls:
        log.print()
        log.print(
            "Deact beside its controls: paired differences in points (the method minus the "
            "other on the same seed; mean ± std, seeds where the method is better); "
            "generator's share = (Deact - noise) / (Deact - HABP) on top-3 recall (all):"
        )
        log.print(controls)

    # Fig. 6 analogue: learning-rate sensitivity, first seed.
    lr_rows: list[dict[str, Any]] = []
    if args.lr_list:
        for method in ("focal", "habp"):
            for lr in args.lr_list:
                same = [
                    r
                    for r in runs
                    if r["method"] == method
                    and r["seed"] == args.seed
                    and math.isclose(lr, r["lr"])
                ]
                if same:
                    metrics = same[0]
                else:
                    model = train(method, data, args, 100 * args.seed + 1, lr)
                    metrics, _ = evaluate(model, data)
                lr_rows.append({"method": method, "lr": lr} | metrics)
                log.progress(
                    f"lr sweep {method} lr {lr}: top3 {metrics['attr_recall@3/all']:.4f} "
                    f"mAP {metrics['map/all']:.4f}"
                )
        keys = ("attr_recall@3/all", "attr_recall@3/tail", "map/all", "cb_acc/all")
        common.write_csv(
            out / "lr_sensitivity.csv",
            ["method", "lr", *keys],
            [[r["method"], r["lr"], *[f"{r[k]:.5f}" for k in keys]] for r in lr_rows],
            log.meta,
        )
        plot_lr(lr_rows, out / "lr_sensitivity.png")
        lr_table = common.format_table(
            ["lr", *[f"{LABELS[m]} top-3 / mAP" for m in ("focal", "habp")]],
            [
                [lr]
                + [
                    " / ".join(
                        f"{100 * r[k]:.2f}"
                        for r in lr_rows
                        if r["method"] == m and r["lr"] == lr
                        for k in ("attr_recall@3/all", "map/all")
                    )
                    for m in ("focal", "habp")
                ]
                for lr in args.lr_list
            ],
        )
        log.print()
        log.print("Learning-rate sensitivity (first seed; %):")
        log.print(lr_table)

    if curves:
        common.write_csv(
            out / "loss_curve.csv",
            ["method", "step", "objective", "bce"],
            [[m, r["step"], r["objective"], r["bce"]] for m, rows in curves.items() for r in rows],
            log.meta,
        )
        plot_curve(curves, out / "loss_curve.png")
    if records:
        common.write_csv(
            out / "prob_vs_freq.csv",
            ["method", "label", "train_positives", "mean_prob_pos", "ap"],
            [
                [m, ATTR_NAMES[r["index"]], r["train_positives"], r["mean_prob_pos"], r["ap"]]
                for m, rec in records.items()
                for r in rec
            ],
            log.meta,
        )
        plot_prob(records, out / "prob_vs_freq.png")

    log.print(f"# total wall time {log.elapsed():.0f} s")
    md = (
        "# Long-tailed multi-label MNIST grids: HABP vs baselines\n\n"
        + log.meta_markdown()
        + f"\n- total wall time: {log.elapsed():.0f} s\n\n"
        + "\n".join(log.lines[len(log.meta) :])
        + "\n"
    )
    (out / "summary.md").write_text(md)
    log.print(f"# wrote {out}/summary.md, summary.csv, runs.csv, per_group.csv and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
