"""Shared helpers of the paper-replication benchmarks on real MNIST digits.

Everything here is deliberately small: an IDX (gzip) reader, seeded subset
drawing from a fixed index range, device/thread set-up, a run header that
records the exact command and the machine, a plain-text/markdown table
printer and a CSV writer. The benchmark scripts (``bench/mnist_deact.py``,
``bench/longtail.py``, ``bench/decorrelation.py``) import it as ``common``.

Data protocol of this project (the MNIST test file, see ``bench/README.md``): training
images are drawn only from indices 0-4999 of the MNIST test file, test error is
measured only on indices 5000-9999. :func:`check_disjoint` enforces it.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import platform
import shlex
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fashion_attr.gan.loss import MRGANLoss, image_pyramid
from fashion_attr.gan.networks import MRGANSpec, MRGenerator, build_gan

__all__ = [
    "DEFAULT_IMAGES",
    "DEFAULT_LABELS",
    "RunLog",
    "batch_indices",
    "check_disjoint",
    "command_line",
    "default_out",
    "draw_subset",
    "format_table",
    "load_mnist",
    "load_mnist_protocol",
    "machine_info",
    "mean_std",
    "mnist_gan_spec",
    "parse_int_list",
    "parse_range",
    "read_idx_images",
    "read_idx_labels",
    "resolve_device",
    "timer",
    "train_mrgan",
    "write_csv",
]

#: The MNIST files beside the checkout (``../shared/data/mnist``); ``FA_MNIST_DIR`` overrides.
MNIST_DIR = Path(
    os.environ.get(
        "FA_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    )
)
DEFAULT_IMAGES = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
DEFAULT_LABELS = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
BENCH_DIR = Path(__file__).resolve().parent

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
_IDX_UBYTE = 0x08


def _open(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"IDX file {p} does not exist; pass --images/--labels pointing at the MNIST IDX "
            f"files (default {MNIST_DIR})."
        )
    return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")


def _read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    with _open(path) as fh:
        data = fh.read()
    if len(data) < 4:
        raise ValueError(f"IDX file {path}: only {len(data)} bytes; the file is truncated.")
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _IDX_UBYTE or dims != ndim:
        raise ValueError(
            f"IDX file {path}, header bytes 0-3: got magic (0x{zero:04x}, type 0x{dtype:02x}, "
            f"{dims} dims); expected (0x0000, 0x08 unsigned byte, {ndim} dims). Pass the "
            f"{'images (idx3)' if ndim == 3 else 'labels (idx1)'} file here."
        )
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(
            f"IDX file {path}: header says shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(data) - header}; the file is truncated or corrupt (check SHA256SUMS)."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX3 image file (optionally gzip-compressed).

    Args:
        path: ``*-images-idx3-ubyte[.gz]``.

    Returns:
        ``uint8`` array ``[N, H, W]`` (``[N, 28, 28]`` for MNIST).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: On a wrong magic number or a truncated file (the file is named).
    """
    return _read_idx(path, 3)


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX1 label file (optionally gzip-compressed).

    Args:
        path: ``*-labels-idx1-ubyte[.gz]``.

    Returns:
        ``int64`` array ``[N]``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: On a wrong magic number or a truncated file (the file is named).
    """
    return _read_idx(path, 1).astype(np.int64)


def load_mnist(
    images: str | os.PathLike[str], labels: str | os.PathLike[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST as device tensors in the classifier's and the GAN's input range.

    Both LeNet-5 (mean 0.5, std 0.5) and the MR-GAN generator (tanh) work in
    ``[-1, 1]``, so one copy serves both.

    Args:
        images: IDX3 image file.
        labels: IDX1 label file.
        device: Where to put the tensors (MNIST fits on any GPU).

    Returns:
        ``(x [N, 1, 28, 28] float32 in [-1, 1], y [N] long)``.

    Raises:
        ValueError: If the two files hold different numbers of items.
    """
    x = read_idx_images(images)
    y = read_idx_labels(labels)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels; "
            "pass the matching pair of IDX files."
        )
    xt = torch.from_numpy(x).to(device=device, dtype=torch.float32).div_(127.5).sub_(1.0)
    return xt.unsqueeze(1), torch.from_numpy(y).to(device)


def load_mnist_protocol(
    args: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Load the IDX files of :func:`add_mnist_args` and check the protocol's ranges.

    Args:
        args: parsed arguments with ``images``, ``labels``, ``pool`` and ``test``.
        device: where the tensors go.

    Returns:
        ``(x_all, y_all, pool, test)``, the ranges as ``(start, stop)``.

    Raises:
        ValueError: a range is malformed or the pool and the test range overlap.
    """
    x_all, y_all = load_mnist(args.images, args.labels, device)
    pool = parse_range(args.pool, "--pool", x_all.shape[0])
    test = parse_range(args.test, "--test", x_all.shape[0])
    check_disjoint(pool, test)
    return x_all, y_all, pool, test


def mnist_gan_spec(top_channels: int) -> MRGANSpec:
    """The MNIST MR-GAN: 7 -> 14 -> 28 px, 10 digit conditions, 1 channel (docs/method.md 4)."""
    return MRGANSpec(
        num_categories=10,
        num_attributes=0,
        z_dim=128,
        image_size=28,
        base_size=7,
        top_channels=top_channels,
        max_channels=512,
        out_channels=1,
    )


def add_mnist_args(
    parser: Any, pool_help: str, test_help: str, pool_default: str = "0:5000"
) -> None:
    """The IDX files and the train-pool / test index ranges every MNIST script takes.

    Args:
        parser: an ``argparse.ArgumentParser``.
        pool_help: what the training pool is used for, in this script.
        test_help: what the test range is used for, in this script.
        pool_default: the pool's default range (scripts with a validation range carve it
            from the end of 0:5000).
    """
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="IDX3 image file")
    parser.add_argument("--labels", default=str(DEFAULT_LABELS), help="IDX1 label file")
    parser.add_argument("--pool", default=pool_default, help=pool_help)
    parser.add_argument("--test", default="5000:10000", help=test_help)


def parse_range(text: str, name: str, limit: int | None = None) -> tuple[int, int]:
    """Parse ``"a:b"`` into a half-open index range.

    Args:
        text: The argument value.
        name: The option name, for error messages.
        limit: Upper bound on ``b`` (the dataset size), if known.

    Returns:
        ``(a, b)`` with ``0 <= a < b``.

    Raises:
        ValueError: On a malformed or out-of-range value.
    """
    try:
        a_s, b_s = text.split(":")
        a, b = int(a_s), int(b_s)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected START:STOP, e.g. 0:5000.") from None
    if not 0 <= a < b or (limit is not None and b > limit):
        raise ValueError(
            f"{name}={text!r}: need 0 <= START < STOP"
            + (f" <= {limit} (the dataset size)" if limit is not None else "")
            + "."
        )
    return a, b


def parse_int_list(text: str, name: str) -> list[int]:
    """Parse ``"25,50,100"`` into positive integers.

    Args:
        text: The argument value.
        name: The option name, for error messages.

    Returns:
        The integers, in the given order.

    Raises:
        ValueError: On a malformed or non-positive entry.
    """
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected comma-separated integers.") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{name}={text!r}: expected positive integers, e.g. 25,50,100.")
    return values


def check_disjoint(pool: tuple[int, int], test: tuple[int, int]) -> None:
    """Enforce the protocol: the training pool and the test range must not overlap.

    Args:
        pool: ``(a, b)`` training pool range.
        test: ``(a, b)`` test range.

    Raises:
        ValueError: If they overlap (training on test images).
    """
    if pool[0] < test[1] and test[0] < pool[1]:
        raise ValueError(
            f"--pool {pool[0]}:{pool[1]} overlaps --test {test[0]}:{test[1]}; the protocol "
            "forbids training on test images (use --pool 0:5000 --test 5000:10000)."
        )


def draw_subset(
    labels: np.ndarray,
    pool: tuple[int, int],
    n: int,
    seed: int,
    balanced: bool = True,
    num_classes: int = 10,
) -> np.ndarray:
    """Draw ``n`` distinct training indices from ``labels[pool[0]:pool[1]]``.

    Class-balanced drawing gives every class ``n // C`` images and spreads the
    remaining ``n % C`` over randomly chosen classes (one more each), so even
    n = 25 has two or three images of every digit. Plain random drawing can
    leave a digit out entirely at small n.

    Args:
        labels: ``[N]`` labels of the whole file.
        pool: ``(a, b)`` index range to draw from.
        n: Number of images.
        seed: Seed of this draw (different seeds give different subsets).
        balanced: Class-balanced (True) or uniformly random (False).
        num_classes: C.

    Returns:
        Sorted ``int64`` array of ``n`` absolute indices into the file.

    Raises:
        ValueError: If the pool holds fewer images than requested.
    """
    rng = np.random.default_rng(seed)
    idx = np.arange(pool[0], pool[1])
    if n > idx.size:
        raise ValueError(f"asked for n={n} images but the pool {pool} holds only {idx.size}.")
    if not balanced:
        return np.sort(rng.choice(idx, size=n, replace=False))
    per = np.full(num_classes, n // num_classes)
    per[rng.choice(num_classes, size=n % num_classes, replace=False)] += 1
    out = []
    for c in range(num_classes):
        members = idx[labels[idx] == c]
        if per[c] > members.size:
            raise ValueError(
                f"class {c} has only {members.size} images in the pool {pool}; cannot draw "
                f"{per[c]} of them (lower n or use plain random drawing)."
            )
        out.append(rng.choice(members, size=per[c], replace=False))
    return np.sort(np.concatenate(out))


def resolve_device(arg: str, threads: int = 0) -> torch.device:
    """Resolve ``--device`` and set the CPU thread count.

    Args:
        arg: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:K``.
        threads: CPU threads of torch; 0 = ``os.cpu_count()``. On a machine shared
            with other jobs, 1 thread avoids OpenMP's spin-waiting, which can make
            a 2-thread step several times slower than a 1-thread one.

    Returns:
        The device.

    Raises:
        ValueError: If CUDA is requested but not available.
    """
    if arg == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(arg)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {arg}: CUDA is not available here; use --device cpu.")
    if dev.type == "cpu":
        torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))
    else:
        # TF32 convolutions: a large speed-up, far below the noise between seeds.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def command_line() -> str:
    """The exact command line of this process, shell-quoted."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def machine_info(device: torch.device) -> dict[str, str]:
    """Describe the machine: platform, CPUs, torch, accelerator.

    Args:
        device: The device the run uses.

    Returns:
        Ordered ``{name: value}`` strings.
    """
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    else:
        info["cuda_device"] = "none (CPU run)"
    return info


def default_out(script: str) -> Path:
    """Default results folder ``bench/results/<script>/``."""
    return BENCH_DIR / "results" / script


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """Measure the wall time of a block; the seconds are in ``box["s"]`` afterwards."""
    box = {"s": float("nan")}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - t0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value), NaN-aware.

    Args:
        values: The numbers.

    Returns:
        ``(mean, std)``; NaN when no finite value.
    """
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a pipe table that reads both as plain text and as markdown.

    Args:
        header: Column names.
        rows: Rows of cells (anything ``str()``-able; floats as given).

    Returns:
        The table, one line per row, columns padded to equal width.
    """
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def write_csv(
    path: str | os.PathLike[str],
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    meta: dict[str, str] | None = None,
) -> Path:
    """Write a CSV, with ``# key: value`` comment lines first (read with ``comment="#"``).

    Args:
        path: Output file (parent folders are created).
        header: Column names.
        rows: Data rows.
        meta: Lines to record above the header (command, machine).

    Returns:
        The path written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        for k, v in (meta or {}).items():
            fh.write(f"# {k}: {v}\n")
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(p)
    return p


class RunLog:
    """Print to stdout and keep a copy for the markdown report.

    Every line is flushed at once, so ``nohup ... > log`` shows progress live.

    Args:
        script: Script name, for the header.
        device: The device of the run.
    """

    def __init__(self, script: str, device: torch.device) -> None:
        self.lines: list[str] = []
        self.t0 = time.perf_counter()
        self.meta = {"script": script, "command": command_line(), **machine_info(device)}

    def header(self) -> None:
        """Print the command line and the machine description."""
        for k, v in self.meta.items():
            self.print(f"# {k}: {v}")

    def print(self, text: str = "") -> None:
        """Print a line (flushed) and keep it."""
        print(text, flush=True)
        self.lines.append(text)

    def progress(self, text: str) -> None:
        """Print a progress line with the elapsed time (not kept for the report)."""
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {text}", flush=True)

    def elapsed(self) -> float:
        """Seconds since the log was created."""
        return time.perf_counter() - self.t0

    def meta_markdown(self) -> str:
        """The command and machine as a markdown bullet list."""
        return "\n".join(f"- {k}: `{v}`" for k, v in self.meta.items())

    def write_summary(self, path: Path, title: str) -> None:
        """Write ``summary.md``: the title, the command and machine, then the kept lines.

        Args:
            path: The file to write.
            title: Its heading.
        """
        body = "\n".join(self.lines[len(self.meta) :])
        path.write_text(f"# {title}\n\n{self.meta_markdown()}\n\n{body}\n")


def demo_dataset(
    source: str | None, images: int, seed: int, preset: str, work: Path, log: RunLog
) -> str:
    """Ingest ``source`` (default: the demo catalog of ``images`` at ``seed``); its version URI.

    The ingest every demo-catalog benchmark starts with, two workers, no progress bar.

    Args:
        source: A DeepFashion-C root or ``demo://`` URI; ``None`` for the demo catalog.
        images: Demo catalog size.
        seed: Demo catalog seed.
        preset: The preset whose preprocess config is used.
        work: The bench's scratch folder (the dataset goes to ``work/datasets``).
        log: Where the version and its counts are printed.

    Returns:
        The dataset version's URI.
    """
    from fashion_attr.config import PreprocessConfig, load_config
    from fashion_attr.demo.sources import demo_uri
    from fashion_attr.steps import preprocess

    source = source or demo_uri(images, seed)
    ingest = preprocess.run(
        load_config(PreprocessConfig, preset=preset, overrides=["workers=2"]),
        str(work / "datasets"),
        source=source,
        progress=False,
    )
    log.print(f"# source {source}: version {ingest.version} ({ingest.counts})")
    return ingest.uri


def batch_indices(n: int, steps: int, batch: int, seed: int, device: torch.device) -> torch.Tensor:
    """Index batches that sweep the ``n`` training images epoch by epoch.

    Consecutive random permutations of ``range(n)`` are concatenated and cut
    into ``steps`` batches, so every image is seen equally often (``n`` may be
    smaller than ``batch``: a batch then spans several permutations).

    Args:
        n: Number of training images.
        steps: Number of batches.
        batch: Batch size.
        seed: Seed of the permutations.
        device: Where the index tensor lives.

    Returns:
        ``[steps, batch]`` long tensor.
    """
    g = torch.Generator().manual_seed(seed)
    total = steps * batch
    perms = [torch.randperm(n, generator=g) for _ in range(-(-total // n))]
    return torch.cat(perms)[:total].view(steps, batch).to(device)


def train_mrgan(
    images: torch.Tensor,
    cond: torch.Tensor,
    spec: MRGANSpec,
    *,
    steps: int,
    batch: int,
    lr: float,
    dc_weight: float,
    seed: int,
    betas: tuple[float, float] = (0.5, 0.999),
    dc_reduction: str = "mean",
    log_every: int = 0,
    log: RunLog | None = None,
    tag: str = "",
) -> tuple[MRGenerator, list[dict[str, float]]]:
    """Train an MR-GAN with the library's objective (docs/method.md section 4).

    Each step is one discriminator and one generator update through
    :class:`fashion_attr.gan.loss.MRGANLoss` (non-saturating loss averaged over
    the resolutions, plus ``dc_weight`` times the DC loss of eq. 7-8 on G).

    Args:
        images: ``[N, C, S, S]`` training images in ``[-1, 1]`` on the training device
            (``S = spec.image_size``).
        cond: ``[N, cond_dim]`` condition of each image (``make_condition``).
        spec: Network sizes.
        steps: Number of D/G update pairs.
        batch: Real images per step.
        lr: Adam learning rate of both networks.
        dc_weight: Weight of the DC loss (paper 2e-6; 0 turns it off).
        seed: Seed of the initialisation, the batches and the noise.
        betas: Adam betas (DCGAN's (0.5, 0.999), the project's default).
        dc_reduction: ``"mean"`` (eq. 7-8) or ``"sum"`` (unnormalised, docs/method.md 4).
        log_every: Record losses and the projection's mean squared cosine every
            this many steps (0: only at the end).
        log: Where to print progress.
        tag: Prefix of the progress lines.

    Returns:
        ``(generator in train mode, history)``; history rows have ``step``,
        ``loss_d``, ``loss_g``, ``msc`` (Fig. 8 quantity) and ``dc``.
    """
    device = images.device
    torch.manual_seed(seed)
    G, D = build_gan(spec)
    G.to(device)
    D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    objective = MRGANLoss(G, D, spec.z_dim, dc_weight, dc_reduction)
    noise = torch.Generator(device=device).manual_seed(seed + 7919)
    idx_all = batch_indices(images.shape[0], steps, batch, seed, device)
    levels = list(spec.levels)
    history: list[dict[str, float]] = []

    def record(step: int, d: Any, g: Any) -> None:
        row = {
            "step": float(step),
            "loss_d": float(d.total) if d is not None else float("nan"),
            "loss_g": float(g.total) if g is not None else float("nan"),
            "msc": objective.projection_correlation(),
            "dc": float(g.dc) if g is not None and g.dc is not None else float("nan"),
        }
        history.append(row)

    record(0, None, None)
    d_terms = g_terms = None
    progress_every = max(1, steps // 10)
    for step in range(1, steps + 1):
        idx = idx_all[step - 1]
        real = image_pyramid(images[idx], levels)
        c = cond[idx]
        opt_d.zero_grad(set_to_none=True)
        d_terms = objective.discriminator_step(real, c, noise)
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        g_terms = objective.generator_step(c, noise)
        opt_g.step()
        if (log_every and step % log_every == 0) or step == steps:
            record(step, d_terms, g_terms)
        if log is not None and (step % progress_every == 0 or step == steps):
            log.progress(
                f"{tag} GAN step {step}/{steps} loss_d {float(d_terms.total):.3f} "
                f"loss_g {float(g_terms.total):.3f} msc {objective.projection_correlation():.4f}"
            )
    return G, history
