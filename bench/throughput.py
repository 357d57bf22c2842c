r"""Speed of the project's code against plain PyTorch baselines, measured in one run.

Every figure is images/s, measured in the same process on the same machine, so
the project's numbers can be quoted as ratios of plain baselines (the same
steps as the reference anchors ``gpu_anchor.py`` and ``gan_loader_anchor.py``
that ``bench/device/prepare.sh`` copies in for GPU runs):

1. **baseline**: the anchor's plain training step: the same classifier
   (``--preset paper``: the anchor's VGG-16 + two-conv head, 1,000 attribute and
   50 category outputs; ``tiny``: the project's tiny network), BCE + CE through
   ``torch.nn.functional``, synthetic input already on the device, SGD momentum
   0.9; bf16 autocast + channels_last on CUDA (+ ``torch.compile`` with
   ``--compile``), fp32 on the CPU;
2. **ce / habp / habp+deact**: the project's training step, the library's own
   (:class:`~fashion_attr.classifier.trainer.ClassifierTrainer` stepped by
   :meth:`fashion_attr.training.ResumableLoop.advance`: ``prepare_images``,
   autocast, the :class:`~fashion_attr.classifier.task.ClassifierTask` objective,
   backward, SGD, the non-finite guard and the host sync every 10 steps) fed from real
   shards
   through ``make_loader`` with the preset's ``num_workers``; Deact every
   ``--deact-every`` steps (20, the paper's) with a frozen MR-GAN generator of
   the preset's size (random weights: it costs the same as a trained one) and
   the hard-label memory;
3. **MR-GAN**: one D and one G update of
   :class:`~fashion_attr.gan.trainer.GanTrainer` (decorrelation on), on synthetic
   input and, through ``ResumableLoop.advance``, fed from the shards as ``train_gan``
   does, vs the anchor's plain multi-resolution GAN step re-implemented at the same sizes;
4. **ingest**: ``ingest_full`` (hash, parse, decode, crop, resize, encode,
   shard, manifest) with 1 and 2 worker processes vs a plain PIL
   decode + crop + resize + encode loop over the same images (one process);
5. **loader**: ``make_loader`` + ``prepare_images`` (as the trainer consumes it)
   vs a plain ImageFolder-style loader (loose JPEG files, PIL, ``ToTensor`` +
   ``Normalize``) at the same batch size and worker count;
6. **evaluation**: ``predict_split`` with the metric accumulators over the
   shards (what the evaluate step and per-epoch validation run);
7. **inference**: :class:`~fashion_attr.registry.pyfunc.ImagePredictor` (the
   served model) on JPEG bytes from an exported ``model.pt``.

Data: a procedural demo dataset (DeepFashion-C layout) is generated and
ingested at the preset's image size under ``--workdir`` (cached between runs).
For ``--preset paper`` its 38 attributes are widened to DeepFashion-C's 1,000
(962 extra long-tailed synthetic labels, labels only) so that heads, losses,
memory and the generator's 1,050-dim condition have the paper's sizes.

Training rows are timed in ``--repeats`` interleaved rounds (baseline, ce,
habp, habp+deact, then again), each of ``--steps`` steps (a multiple of the
Deact interval, so every block holds the same share of Deact steps) after
``--warmup`` steps (one of them a Deact step, so compilation and cuDNN
autotuning of the doubled batch are not timed); the median round is reported
with the spread. Outputs are written after every section (CSV + markdown in
``--out``, default ``$OUT/throughput`` when ``$OUT`` is set, else
``bench/results/throughput``).

Examples::

    python bench/throughput.py --preset tiny --threads 1 --project   # CPU, ~2-3 min
    python bench/throughput.py --preset paper --project           # GPU, ~3-4 min
    python bench/throughput.py --preset paper --compile --only train,gan
    python bench/throughput.py --preset paper --device cpu --smoke   # CPU check
"""

from __future__ import annotations

# Only the standard library at module level: ingest spawns worker processes that
# re-import this file, and they should start in well under a second.
import argparse
import dataclasses
import io
import itertools
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BENCH_DIR = Path(__file__).resolve().parent
SCRIPT = "throughput"

#: DeepFashion-C sizes for --project (docs/method.md; the paper's split).
DF_IMAGES = 289_222
DF_TRAIN = 209_222
DF_EVAL = 40_000
GAN_EPOCHS = 30
CLF_EPOCHS = 15
PAPER_ATTRIBUTES = 1000

#: Per-preset defaults; --smoke shrinks ``paper`` to a CPU check of every code path.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "image_size": 64,
        "batch_sizes": (32,),
        "images": 600,
        "min_size": 96,
        "max_size": 192,
        "attributes": 0,  # keep the demo's 38
        "steps": 100,
        "warmup": 5,
        "repeats": 5,
        "gan_steps": 20,
        "infer_images": 256,
    },
    "paper": {
        "image_size": 224,
        "batch_sizes": (128, 16),
        "images": 2000,
        "min_size": 160,
        "max_size": 320,
        "attributes": PAPER_ATTRIBUTES,
        "steps": 60,
        "warmup": 5,
        "repeats": 3,
        "gan_steps": 10,
        "infer_images": 512,
    },
}
SMOKE = {
    "batch_sizes": (2,),
    "images": 160,
    "steps": 2,
    "warmup": 1,
    "repeats": 1,
    "gan_steps": 1,
    "gan_batch": 2,
    "infer_images": 8,
    "deact_every": 2,
    "eval_images": 8,
}

HEADER = ["section", "setting", "batch", "images_per_s", "ratio", "vs", "ms_per_step", "note"]


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (training)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per setting first")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds")
    p.add_argument("--gan-steps", type=int, default=None, help="timed GAN steps per round")
    p.add_argument(
        "--batch-sizes", default=None, help="classifier batch sizes, e.g. 128,16 (paper)"
    )
    p.add_argument("--deact-every", type=int, default=20, help="Deact interval (paper: 20)")
    p.add_argument("--images", type=int, default=None, help="demo images to generate")
    p.add_argument("--compile", action="store_true", help="torch.compile the classifiers (CUDA)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    p.add_argument("--profile", action="store_true", help="torch.profiler over HABP+Deact steps")
    p.add_argument("--project", action="store_true", help="project the DeepFashion-C cost")
    p.add_argument(
        "--only",
        default="train,gan,loader,eval,infer,ingest",
        help="sections to run (comma list of train,gan,loader,eval,infer,ingest)",
    )
    p.add_argument("--ingest-workers", default="1,2", help="ingest_full worker counts")
    p.add_argument(
        "--loader-workers",
        default=None,
        help="DataLoader worker counts (default 0,2 plus the preset's training workers)",
    )
    p.add_argument("--train-workers", type=int, default=None, help="default: the preset's")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("FA_BENCH_WORKDIR", "/tmp/fa-bench-throughput")),
        help="cache of the generated data (reused between runs)",
    )
    args = p.parse_args(argv)
    d = dict(PRESETS[args.preset])
    if args.smoke:
        d.update(SMOKE)
    for key in ("steps", "warmup", "repeats", "gan_steps", "images"):
        if getattr(args, key) is None:
            setattr(args, key, d[key])
    args.batch_sizes = (
        tuple(int(v) for v in args.batch_sizes.split(",")) if args.batch_sizes else d["batch_sizes"]
    )
    if args.smoke:
        args.deact_every = min(args.deact_every, d["deact_every"])
    args.defaults = d
    args.sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.sections - {"train", "gan", "loader", "eval", "infer", "ingest"}
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}")
    if min(args.steps, args.repeats, args.gan_steps, args.deact_every, *args.batch_sizes) < 1:
        p.error("--steps, --repeats, --gan-steps, --deact-every and batch sizes must be >= 1")
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first warm-up step is a Deact step)")
    # Every timed block holds the same share of Deact steps.
    args.steps = math.ceil(args.steps / args.deact_every) * args.deact_every
    if args.out is None:
        env = os.environ.get("OUT")
        args.out = Path(env) / SCRIPT if env else BENCH_DIR / "results" / SCRIPT
    tag = args.preset + ("_smoke" if args.smoke else "") + ("_compile" if args.compile else "")
    args.tag = tag
    return args


# --------------------------------------------------------------------------- report


class Report:
    """Rows, machine description and notes; rewritten to disk after every section."""

    def __init__(self, args: argparse.Namespace, meta: dict[str, str]) -> None:
        self.args = args
        self.meta = meta
        self.rows: list[list[Any]] = []
        self.notes: list[str] = []
        self.extra: list[str] = []

    def add(
        self,
        section: str,
        setting: str,
        batch: int | str,
        rate: float | None,
        ratio: float | None = None,
        vs: str = "",
        ms: float | None = None,
        note: str = "",
    ) -> None:
        """Append a row (and print it); ``rate``/``ratio``/``ms`` may be None."""
        row = [
            section,
            setting,
            batch,
            _fmt(rate, 1),
            _fmt(ratio, 3),
            vs,
            _fmt(ms, 2),
            note,
        ]
        self.rows.append(row)
        print(
            f"  -> {setting} (batch {batch}): {_fmt(rate, 1)} img/s"
            + (f", {_fmt(ratio, 3)}x {vs}" if ratio is not None else "")
            + (f"  [{note}]" if note else ""),
            flush=True,
        )

    def error(self, section: str, exc: BaseException) -> None:
        """Record a failed section as an ERROR row (the other sections still run)."""
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        self.rows.append([section, "ERROR", "", "", "", "", "", msg])
        print(f"  !! {section} failed: {msg}", flush=True)
        traceback.print_exc()

    def table(self) -> str:
        """The rows as a pipe table."""
        import common

        return common.format_table(HEADER, self.rows)

    def write(self) -> None:
        """Write ``throughput_<tag>.csv`` and ``.md`` into ``--out``."""
        import common

        out: Path = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta)
        meta["load_average_now"] = _loadavg()
        common.write_csv(out / f"throughput_{self.args.tag}.csv", HEADER, self.rows, meta)
        md = [
            f"# Throughput, preset {self.args.tag}",
            "",
            "\n".join(f"- {k}: `{v}`" for k, v in meta.items()),
            "",
            self.table(),
            "",
            *(f"- {n}" for n in self.notes),
        ]
        if self.extra:
            md += ["", *self.extra]
        (out / f"throughput_{self.args.tag}.md").write_text("\n".join(md) + "\n")


def _fmt(v: float | None, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{digits}f}"


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_meta(device: torch.device, args: argparse.Namespace) -> dict[str, str]:
    import common
    import torch
    import torchvision

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"script": SCRIPT, "command": common.command_line(), **common.machine_info(device)}
    info["cpu_model"] = cpu or "unknown"
    info["cpu_affinity"] = str(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    info["torchvision"] = torchvision.__version__
    info["load_average_start"] = _loadavg()
    try:
        info["dev_shm_free_gb"] = f"{shutil.disk_usage('/dev/shm').free / 2**30:.1f}"
    except OSError:
        info["dev_shm_free_gb"] = "n/a"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["cuda_memory_gb"] = f"{props.total_memory / 2**30:.1f}"
        info["cuda_runtime"] = str(torch.version.cuda)
    info["settings"] = (
        f"preset={args.preset} smoke={args.smoke} compile={args.compile} steps={args.steps} "
        f"warmup={args.warmup} repeats={args.repeats} deact_every={args.deact_every} "
        f"batch_sizes={','.join(map(str, args.batch_sizes))} images={args.images}"
    )
    return info


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Runner:
    """One timed setting: ``step(i)`` runs training step number ``i`` (1-based)."""

    section: str
    setting: str
    batch: int
    step: Callable[[int], None]
    baseline: str | None = None  # setting name of the row this one is divided by
    note: str = ""
    rates: list[float] = dataclasses.field(default_factory=list)
    wait_s: float = 0.0  # host time spent waiting for the loader
    wait_frac: list[float] = dataclasses.field(default_factory=list)
    peak_gb: float = 0.0


def warmup_numbers(warmup: int, every: int) -> list[int]:
    """Step numbers of the warm-up: one Deact step (``every``) first, then non-Deact ones."""
    others = (j for j in itertools.count(1) if j % every != 0)
    return [every, *itertools.islice(others, warmup - 1)]


def time_block(r: Runner, numbers: Sequence[int], device: torch.device) -> None:
    import torch

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    w0 = r.wait_s
    t0 = time.perf_counter()
    for i in numbers:
        r.step(i)
    _sync(device)
    dt = time.perf_counter() - t0
    r.rates.append(r.batch * len(numbers) / dt)
    r.wait_frac.append((r.wait_s - w0) / dt)
    if device.type == "cuda":
        r.peak_gb = max(r.peak_gb, torch.cuda.max_memory_allocated(device) / 2**30)


def run_interleaved(
    runners: Sequence[Runner],
    *,
    warmup: int,
    steps: int,
    repeats: int,
    every: int,
    device: torch.device,
    log: Callable[[str], None],
) -> None:
    """Warm every runner up, then time ``repeats`` rounds of ``steps`` steps, round-robin."""
    for r in runners:
        t0 = time.perf_counter()
        for i in warmup_numbers(warmup, every):
            r.step(i)
        _sync(device)
        log(f"warm-up {r.setting} b{r.batch}: {time.perf_counter() - t0:.1f} s")
    for k in range(repeats):
        for r in runners:
            time_block(r, range(k * steps + 1, (k + 1) * steps + 1), device)
        log(
            f"round {k + 1}/{repeats}: "
            + ", ".join(f"{r.setting} b{r.batch} {r.rates[-1]:.1f}" for r in runners)
        )


def report_runners(rep: Report, runners: Sequence[Runner], device: torch.device) -> None:
    medians = {(r.setting, r.batch): statistics.median(r.rates) for r in runners if r.rates}
    for r in runners:
        if not r.rates:
            continue
        med = medians[(r.setting, r.batch)]
        base = medians.get((r.baseline, r.batch)) if r.baseline else None
        notes = []
        if len(r.rates) > 1:
            notes.append(f"spread {100 * (max(r.rates) - min(r.rates)) / med:.0f}%")
        if r.wait_frac and max(r.wait_frac) > 0.005:
            notes.append(f"loader wait {100 * statistics.median(r.wait_frac):.0f}%")
        if device.type == "cuda" and r.peak_gb:
            notes.append(f"peak {r.peak_gb:.1f} GB")
        if r.note:
            notes.append(r.note)
        rep.add(
            r.section,
            r.setting,
            r.batch,
            med,
            med / base if base else None,
            r.baseline or "",
            1000 * r.batch / med,
            "; ".join(notes),
        )


# --------------------------------------------------------------------------- data


def widen_attributes(root: Path, total: int, seed: int) -> None:
    """Append synthetic long-tailed attributes to a demo dataset's labels (labels only).

    DeepFashion-C has 1,000 attributes; the demo has 38. The extra attributes
    get positive rates ``0.15 * rank ** -0.8`` (about 2.3 extra positives per
    image, so ~3.3 in all, like the paper's statistics), in the five groups in turn.
    """
    import numpy as np
    from fashion_attr.data.annotations import ATTR_CLOTH, ATTR_IMG, HEADERS, write_annotation_file

    cloth = (root / ATTR_CLOTH).read_text().splitlines()[2:]
    attrs = [line.rsplit(None, 1) for line in cloth if line.strip()]
    extra = total - len(attrs)
    if extra <= 0:
        return
    attrs += [[f"synthetic attribute {j + 1}", str(j % 5 + 1)] for j in range(extra)]
    write_annotation_file(root / ATTR_CLOTH, HEADERS[ATTR_CLOTH], attrs)
    rows = [line.split() for line in (root / ATTR_IMG).read_text().splitlines()[2:] if line]
    rng = np.random.default_rng([seed, 7])
    rates = 0.15 * np.arange(1, extra + 1, dtype=np.float64) ** -0.8
    labels = np.where(rng.random((len(rows), extra)) < rates, 1, -1)
    out = [[r[0], *r[1:], *(f"{v:2d}" for v in lab)] for r, lab in zip(rows, labels, strict=True)]
    write_annotation_file(root / ATTR_IMG, HEADERS[ATTR_IMG], out)


@dataclasses.dataclass
class Data:
    """The generated source folder, its ingested version and a loose-JPEG copy of train."""

    source: Path
    version: str
    cache: Path
    loose: Path
    image_size: int


def prepare_data(args: argparse.Namespace, log: Callable[[str], None]) -> Data:
    from fashion_attr.data.ingest import ingest_full
    from fashion_attr.demo import generate_demo_dataset

    d = args.defaults
    size = d["image_size"]
    attrs = 0 if args.smoke and args.preset == "tiny" else d["attributes"]
    key = f"{args.preset}-n{args.images}-s{size}-a{attrs}-{d['min_size']}-{d['max_size']}"
    base = args.workdir / key
    src = base / "src"
    marker = base / "src.done"
    if not marker.exists():
        t0 = time.perf_counter()
        if src.exists():
            shutil.rmtree(src)
        generate_demo_dataset(
            src, images=args.images, seed=args.seed, min_size=d["min_size"], max_size=d["max_size"]
        )
        if attrs:
            widen_attributes(src, attrs, args.seed)
        marker.write_text("ok\n")
        log(f"generated {args.images} demo images in {time.perf_counter() - t0:.1f} s -> {src}")
    t0 = time.perf_counter()
    res = ingest_full(src, base / "versions", image_size=size, workers=1, progress=False)
    if res.created:
        log(f"ingested to {res.uri} in {time.perf_counter() - t0:.1f} s")
    loose = base / "loose"
    if not (base / "loose.done").exists():
        from fashion_attr.data.shards import iter_shard_samples, load_manifest

        if loose.exists():
            shutil.rmtree(loose)
        manifest = load_manifest(res.uri)
        for uri, _ in manifest.shard_uris(res.uri, "train"):
            for k, jpeg, meta in iter_shard_samples(uri):
                folder = loose / f"{meta['category']:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{k}.jpg").write_bytes(jpeg)
        (base / "loose.done").write_text("ok\n")
    return Data(src, res.uri, base / "cache", loose, size)


def batch_stream(
    data: Data,
    split: str,
    batch: int,
    workers: int,
    device: torch.device,
    *,
    batches: int,
    seed: int,
    flip: bool = False,
    train: bool = True,
) -> Iterator[Any]:
    """One long stream of ``batches`` loader batches (several epochs, one set of workers).

    A real epoch of DeepFashion-C is 209k images; the demo's is a few hundred,
    so restarting the DataLoader workers every epoch (as the trainer does
    between epochs) would time worker start-up instead of the steady state.
    The epochs' permutations (``rank_indices``) are concatenated into one
    :class:`~fashion_attr.data.loader.ShardLoader` instead.
    """
    import numpy as np
    from fashion_attr.data.loader import ShardLoader, make_loader, rank_indices

    first = make_loader(
        data.version,
        split,
        batch_size=batch,
        cache_dir=data.cache,
        train=train,
        seed=seed,
        epoch=0,
        num_workers=workers,
        flip=flip,
        pin_memory=device.type == "cuda",
        drop_last=train,
    )
    n = len(first.dataset)
    per_epoch = len(first.indices)
    if per_epoch == 0:
        raise ValueError(
            f"split {split} of {data.version} has {n} images, fewer than batch {batch}. "
            "Fix: pass a larger --images or smaller --batch-sizes"
        )
    epochs = math.ceil(batches * batch / per_epoch) + 1
    idx = np.concatenate(
        [
            rank_indices(n, shuffle=train, seed=seed, epoch=e, drop_last=train, batch_size=batch)
            for e in range(epochs)
        ]
    )
    loader = ShardLoader(
        first.manifest,
        first.dataset,
        idx,
        samples_per_epoch=len(idx),
        start_sample=0,
        batch_size=batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        epoch=0,
    )

    def forever() -> Iterator[Any]:
        while True:
            yield from loader

    return forever()


def _cap_workers(workers: int, batch: int, size: int, streams: int) -> tuple[int, str]:
    """Cap DataLoader workers to the CPU count and to what /dev/shm holds (docker: 64 MB)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    w = min(workers, cpus or 1)
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return w, ""
    per_batch = batch * 3 * size * size * 1.2  # uint8 images + labels, 2 batches per worker
    while w > 0 and streams * w * 2 * per_batch > 0.5 * free:
        w -= 1
    note = f"workers capped {workers}->{w}" if w != workers else ""
    return w, note


# --------------------------------------------------------------------------- baselines


def anchor_vgg(num_attributes: int, num_categories: int) -> Any:
    """The anchor's ``PaperVGG`` (gpu_anchor.py), with its own head sizes."""
    import torchvision
    from torch import nn

    class PaperVGG(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torchvision.models.vgg16().features  # -> 512x7x7
            self.head = nn.Sequential(
                nn.Conv2d(512, 2048, 3),
                nn.ReLU(True),
                nn.Conv2d(2048, 4096, 3),
                nn.ReLU(True),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Dropout(0.5),
            )
            self.attr = nn.Linear(4096, num_attributes)
            self.cat = nn.Linear(4096, num_categories)

        def forward(self, x: Any) -> tuple[Any, Any]:
            h = self.head(self.features(x))
            return self.attr(h), self.cat(h)

    return PaperVGG()


def plain_gan(sizes: Sequence[int], top: int, cap: int, nz: int, nc: int) -> tuple[Any, Any]:
    """The anchor's plain multi-resolution GAN (gan_loader_anchor.py) at the given sizes."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    top_size = sizes[-1]

    def chans(size: int) -> int:
        return min(cap, top * (top_size // size))

    class G(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c0 = chans(sizes[0])
            self.proj = nn.Sequential(
                nn.ConvTranspose2d(nz + nc, c0, sizes[0]), nn.BatchNorm2d(c0), nn.LeakyReLU(0.2)
            )
            self.blocks = nn.ModuleList()
            self.rgb = nn.ModuleList([nn.Conv2d(c0, 3, 1)])
            for a, b in itertools.pairwise(sizes):
                ci, co = chans(a), chans(b)
                self.blocks.append(
                    nn.Sequential(
                        nn.ConvTranspose2d(ci, co, 4, 2, 1),
                        nn.BatchNorm2d(co),
                        nn.LeakyReLU(0.2),
                        nn.Conv2d(co, co, 3, 1, 1),
                        nn.BatchNorm2d(co),
                        nn.LeakyReLU(0.2),
                    )
                )
                self.rgb.append(nn.Conv2d(co, 3, 1))

        def forward(self, z: Any, c: Any) -> list[Any]:
            h = self.proj(torch.cat([z, c], 1)[:, :, None, None])
            outs = [torch.tanh(self.rgb[0](h))]
            for blk, rgb in zip(self.blocks, self.rgb[1:], strict=True):
                h = blk(h)
                outs.append(torch.tanh(rgb(h)))
            return outs

    class D(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frgb = nn.ModuleList([nn.Conv2d(3, chans(s), 1) for s in sizes])
            self.down = nn.ModuleList()
            for a, b in itertools.pairwise(sizes[::-1]):
                self.down.append(
                    nn.Sequential(
                        nn.Conv2d(chans(a), chans(b), 3, 1, 1),
                        nn.LeakyReLU(0.2),
                        nn.Conv2d(chans(b), chans(b), 4, 2, 1),
                        nn.LeakyReLU(0.2),
                    )
                )
            c0 = chans(sizes[0])
            self.out = nn.Linear(c0, 1)
            self.embed = nn.Linear(nc, c0)

        def forward(self, imgs: Sequence[Any], c: Any) -> list[Any]:
            res = []
            for level, x in enumerate(imgs):
                h = F.leaky_relu(self.frgb[level](x), 0.2)
                for blk in self.down[len(sizes) - 1 - level :]:
                    h = blk(h)
                h = h.sum((2, 3))
                res.append(self.out(h).squeeze(1) + (self.embed(c) * h).sum(1))
            return res

    return G(), D()


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass
class Ctx:
    """Everything the sections share."""

    args: argparse.Namespace
    device: torch.device
    bf16: bool
    channels_last: bool
    data: Data
    info: Any
    rep: Report
    t0: float
    train_workers: int = 0
    worker_note: str = ""
    model: Any = None  # the project's classifier (for eval/infer after training)
    model_spec: Any = None  # its expected_input()
    clf_cfg: Any = None
    profile_runner: Runner | None = None

    def log(self, text: str) -> None:
        """Print a progress line with the elapsed time."""
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {text}", flush=True)


def clf_config(ctx: Ctx, batch: int, loss: str, deact: bool) -> Any:
    from fashion_attr.config import ClassifierConfig, load_config

    return load_config(
        ClassifierConfig,
        preset=ctx.args.preset,
        extra={
            "batch_size": batch,
            "pretrained": None,
            "device": ctx.device.type,
            "compile": ctx.args.compile,
            "num_workers": ctx.train_workers,
            "loss": {"name": loss},
            "deact": {"enabled": deact, "every": ctx.args.deact_every},
        },
    )


def build_deact(ctx: Ctx, cfg: Any) -> Any:
    """``make_deact`` (memory + DeactLoss) around a random-weight generator of the preset."""
    from fashion_attr.classifier.deact import make_deact
    from fashion_attr.config import GanConfig, load_config
    from fashion_attr.gan.networks import MRGenerator
    from fashion_attr.gan.trainer import spec_from_config

    gcfg = load_config(GanConfig, preset=ctx.args.preset)
    g = MRGenerator(spec_from_config(gcfg, ctx.info)).to(ctx.device).eval()
    return make_deact(
        cfg,
        ctx.info,
        g,
        ctx.device,
        in_channels=3,
        mean=tuple(ctx.model_spec["mean"]),
        std=tuple(ctx.model_spec["std"]),
        channels_last=ctx.channels_last,
    )


def library_loop(proc: Any, batch: int, dev: Any) -> Any:
    """The library's training loop around a trainer, for timing its per-step work.

    :meth:`~fashion_attr.training.ResumableLoop.advance` is exactly what a training
    step runs per batch (the trainer's step, the non-finite guard, the interval means
    and the host reads of every 10th step); no checkpoint falls in a timed window.
    """
    from fashion_attr.runtime import DistContext
    from fashion_attr.tracking import Tracker
    from fashion_attr.training import ResumableLoop, Schedule

    return ResumableLoop(
        proc,
        out=str(Path(tempfile.mkdtemp(prefix="fa-bench-"))),
        ctx=DistContext(),
        schedule=Schedule(epochs=1, batch_size=batch, checkpoint_every=10**9),
        make_loader=lambda epoch, start: [],
        tracker=Tracker(None, proc.name, enabled=False),
        device=dev,
        config={},
        resume=False,
    )


def section_train(ctx: Ctx) -> None:
    import torch
    import torch.nn.functional as F
    from fashion_attr.classifier.model import build_classifier
    from fashion_attr.classifier.trainer import ClassifierTrainer
    from fashion_attr.runtime import DistContext, autocast
    from torch.profiler import record_function

    args, dev, info = ctx.args, ctx.device, ctx.info
    size = ctx.data.image_size
    arch = "vgg16_paper" if args.preset == "paper" else "tiny"
    n_attr, n_cat = info.num_attributes, info.num_categories
    cl, bf16 = ctx.channels_last, ctx.bf16
    ctx.model_spec = build_classifier(arch, n_attr, n_cat, pretrained=None).expected_input()

    runners: list[Runner] = []
    streams_needed = len(args.batch_sizes)
    for batch in args.batch_sizes:
        # Baseline: the anchor's plain step on synthetic input already on the device.
        torch.manual_seed(args.seed)
        bmodel = (
            anchor_vgg(n_attr, n_cat)
            if arch == "vgg16_paper"
            else build_classifier("tiny", n_attr, n_cat)
        )
        bmodel.to(dev)
        if cl:
            bmodel.to(memory_format=torch.channels_last)
        bopt = torch.optim.SGD(bmodel.parameters(), lr=0.01, momentum=0.9)
        bstep_m = torch.compile(bmodel) if args.compile and dev.type == "cuda" else bmodel
        x = torch.randn(batch, 3, size, size, device=dev)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        ya = (torch.rand(batch, n_attr, device=dev) < 0.01).float()
        yc = torch.randint(0, n_cat, (batch,), device=dev)

        def base_step(i: int, m=bstep_m, opt=bopt, x=x, ya=ya, yc=yc) -> None:
            with autocast(dev, bf16):
                a, c = m(x)
                loss = F.binary_cross_entropy_with_logits(a.float(), ya) + F.cross_entropy(
                    c.float(), yc
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        runners.append(
            Runner(
                "train",
                "baseline (plain BCE+CE, synthetic input)",
                batch,
                base_step,
                note="anchor's step",
            )
        )

        # The project's step, fed from the shards; one stream per batch size, and one
        # ClassifierTrainer (model, SGD, task) per setting, stepped by the library's loop.
        workers, cap_note = _cap_workers(ctx.train_workers, batch, size, streams_needed)
        need = args.warmup * 3 + args.steps * args.repeats * 3 + 2 * args.deact_every + 8
        stream = batch_stream(ctx.data, "train", batch, workers, dev, batches=need, seed=args.seed)
        for loss_name, deact_on, label in (
            ("ce", False, "project CE (shards, ClassifierTrainer)"),
            ("habp", False, "project HABP"),
            ("habp", True, f"project HABP + Deact every {args.deact_every}"),
        ):
            cfg = clf_config(ctx, batch, loss_name, deact_on)
            ctx.clf_cfg = cfg
            deact = build_deact(ctx, cfg) if deact_on else None
            trainer = ClassifierTrainer(cfg, info, dev, DistContext(), deact=deact)
            ctx.model = trainer.model
            loop = library_loop(trainer, batch, dev)
            runner = Runner(
                "train",
                label,
                batch,
                lambda i: None,
                baseline="baseline (plain BCE+CE, synthetic input)",
                note=f"{workers} loader workers" + (f", {cap_note}" if cap_note else ""),
            )

            def step(i: int, loop=loop, runner=runner, stream=stream) -> None:
                w = time.perf_counter()
                with record_function("fa.loader_wait"):
                    batch_ = next(stream)
                runner.wait_s += time.perf_counter() - w
                loop.advance(batch_)  # the library's per-step work, as train_classifier

            runner.step = step
            runners.append(runner)
            if deact_on and ctx.profile_runner is None:
                ctx.profile_runner = runner
    run_interleaved(
        runners,
        warmup=args.warmup,
        steps=args.steps,
        repeats=args.repeats,
        every=args.deact_every,
        device=dev,
        log=ctx.log,
    )
    report_runners(ctx.rep, runners, dev)
    if args.profile and ctx.profile_runner is not None:
        profile(ctx, ctx.profile_runner)
    ctx.profile_runner = None


def phase_table(averages: Any, steps: int, runner: Runner, cuda: bool) -> str:
    """The step's phases (the ``fa.*`` profiler regions): host ms and device ms per step.

    Host time of a region includes the kernel launches it makes; on CUDA the
    device time is what its kernels ran (under a region, nested ones included).
    """
    import common

    rows = []
    for ev in averages:
        if not ev.key.startswith("fa."):
            continue
        cpu_ms = ev.cpu_time_total / 1e3 / steps
        dev_ms = getattr(ev, "device_time_total", 0.0) / 1e3 / steps if cuda else None
        rows.append([ev.key, ev.count, f"{cpu_ms:.2f}", "" if dev_ms is None else f"{dev_ms:.2f}"])
    rows.sort(key=lambda r: -float(r[2]))
    return (
        f"Phases of '{runner.setting}', batch {runner.batch}, per step (mean over {steps} "
        f"steps, one of them a Deact step):\n\n"
        + common.format_table(["region", "calls", "host ms/step", "device ms/step"], rows)
    )


def profile(ctx: Ctx, runner: Runner) -> None:
    """torch.profiler over ``deact_every`` HABP+Deact steps (one of them a Deact step)."""
    import torch
    from torch.profiler import ProfilerActivity

    dev = ctx.device
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    n = max(ctx.args.deact_every, 2)
    _sync(dev)
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(1, n + 1):
            runner.step(i)
        _sync(dev)
    keys = ["self_device_time_total"] if dev.type == "cuda" else []
    keys.append("self_cpu_time_total")  # host overhead (Python, launches, loader waits)
    averages = prof.key_averages()
    text = "\n\n".join(
        [phase_table(averages, n, runner, dev.type == "cuda")]
        + [
            f"torch.profiler: {n} steps of '{runner.setting}', batch {runner.batch} "
            f"(one Deact step), sorted by {key}\n\n{averages.table(sort_by=key, row_limit=25)}"
            for key in keys
        ]
    )
    print(text, flush=True)
    out = ctx.args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_{ctx.args.tag}.txt").write_text(text + "\n")
    ctx.rep.notes.append(f"profile: `profile_{ctx.args.tag}.txt` ({n} HABP+Deact steps)")


def section_gan(ctx: Ctx) -> None:
    import torch
    import torch.nn.functional as F
    from fashion_attr.config import GanConfig, load_config
    from fashion_attr.gan.networks import make_condition
    from fashion_attr.gan.trainer import GanTrainer, spec_from_config
    from fashion_attr.runtime import DistContext

    args, dev, info = ctx.args, ctx.device, ctx.info
    cl, bf16 = ctx.channels_last, ctx.bf16
    gcfg = load_config(GanConfig, preset=args.preset)
    spec = spec_from_config(gcfg, info)
    batch = args.defaults.get("gan_batch", gcfg.batch_size)
    levels = list(spec.levels)
    n_cat = spec.num_categories

    def fmt(t: Any) -> Any:
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    real = [fmt(torch.randn(batch, 3, s, s, device=dev)) for s in levels]
    cat = torch.randint(0, n_cat, (batch,), device=dev)
    attrs = (torch.rand(batch, spec.num_attributes, device=dev) < 0.005).float()
    cond = make_condition(cat, attrs, n_cat)

    # Plain (anchor) GAN step at the same sizes.
    torch.manual_seed(args.seed)
    pg, pd = plain_gan(levels, spec.top_channels, spec.max_channels, spec.z_dim, spec.cond_dim)
    pg.to(dev)
    pd.to(dev)
    if cl:
        pg.to(memory_format=torch.channels_last)
        pd.to(memory_format=torch.channels_last)
    pog = torch.optim.Adam(pg.parameters(), 1e-4, betas=(0.0, 0.99))
    pod = torch.optim.Adam(pd.parameters(), 1e-4, betas=(0.0, 0.99))

    def plain_step(i: int) -> None:
        z = torch.randn(batch, spec.z_dim, device=dev)
        with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            fake = pg(z, cond)
            lr_ = pd(real, cond)
            lf = pd([f.detach() for f in fake], cond)
            ld = sum(
                F.softplus(-a).mean() + F.softplus(b).mean() for a, b in zip(lr_, lf, strict=True)
            ) / len(lr_)
        pod.zero_grad(set_to_none=True)
        ld.backward()
        pod.step()
        with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            lg = sum(F.softplus(-o).mean() for o in pd(fake, cond)) / len(fake)
        pog.zero_grad(set_to_none=True)
        lg.backward()
        pog.step()

    # The project's MR-GAN: GanTrainer (MRGANLoss, DC on), as train_gan runs it.
    torch.manual_seed(args.seed)
    gcfg = load_config(
        GanConfig, preset=args.preset, extra={"device": dev.type, "batch_size": batch}
    )
    trainer = GanTrainer(gcfg, info, dev, DistContext())

    def mr_synth(i: int) -> None:
        trainer.update(real, cond)

    wanted = args.train_workers if args.train_workers is not None else gcfg.num_workers
    workers, cap_note = _cap_workers(wanted, batch, ctx.data.image_size, 1)
    need = args.warmup + args.gan_steps * args.repeats + 4
    stream = batch_stream(
        ctx.data, "train", batch, workers, dev, batches=need, seed=args.seed, flip=True
    )
    shard_runner = Runner(
        "gan",
        "project MR-GAN D+G step (shards, as train_gan)",
        batch,
        lambda i: None,
        baseline="plain GAN D+G step (synthetic input)",
        note=f"{workers} loader workers" + (f", {cap_note}" if cap_note else ""),
    )
    loop = library_loop(trainer, batch, dev)

    def mr_shards(i: int) -> None:
        w = time.perf_counter()
        batch_ = next(stream)
        shard_runner.wait_s += time.perf_counter() - w
        loop.advance(batch_)  # the library's per-step work, as train_gan

    shard_runner.step = mr_shards
    base = "plain GAN D+G step (synthetic input)"
    runners = [
        Runner("gan", base, batch, plain_step, note="anchor's step"),
        Runner("gan", "project MR-GAN D+G step (synthetic input)", batch, mr_synth, baseline=base),
        shard_runner,
    ]
    run_interleaved(
        runners,
        warmup=args.warmup,
        steps=args.gan_steps,
        repeats=args.repeats,
        every=10**9,
        device=dev,
        log=ctx.log,
    )
    report_runners(ctx.rep, runners, dev)
    ctx.rep.notes.append(
        f"GAN: MR-GAN {levels[0]}->{levels[-1]} px, {spec.top_channels} ch at the top, "
        f"cap {spec.max_channels}, condition {spec.cond_dim}-dim, batch {batch}; plain GAN = "
        "gan_loader_anchor.py's G/D at the same sizes"
    )


def section_loader(ctx: Ctx) -> None:
    import torch
    from fashion_attr.classifier.inference import prepare_images
    from fashion_attr.data.loader import IMAGENET_MEAN, IMAGENET_STD, make_loader
    from torch.utils.data import DataLoader, Dataset

    args, dev = ctx.args, ctx.device
    size = ctx.data.image_size
    batch = args.batch_sizes[0]
    if args.loader_workers:
        counts = [int(v) for v in args.loader_workers.split(",")]
    else:
        counts = sorted({0, 2, ctx.train_workers})
    repeats = min(args.repeats, 2) if args.preset == "paper" else args.repeats

    class LooseJpegFolder(Dataset):
        """Plain ImageFolder-style dataset: PIL + ToTensor + Normalize."""

        def __init__(self, root: Path) -> None:
            from torchvision import transforms

            classes = sorted(p.name for p in root.iterdir() if p.is_dir())
            self.items = [
                (path, i)
                for i, c in enumerate(classes)
                for path in sorted((root / c).glob("*.jpg"))
            ]
            self.tf = transforms.Compose(
                [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
            )

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            from PIL import Image

            path, label = self.items[i]
            with Image.open(path) as im:
                return self.tf(im.convert("RGB")), label

    loose = LooseJpegFolder(ctx.data.loose)

    def ours(w: int, epoch: int) -> float:
        loader = make_loader(
            ctx.data.version,
            "train",
            batch_size=batch,
            cache_dir=ctx.data.cache,
            seed=0,
            epoch=epoch,
            num_workers=w,
            drop_last=False,
            pin_memory=dev.type == "cuda",
        )
        t0, n = time.perf_counter(), 0
        for images, _t, _k, _c in loader:
            x = prepare_images(
                images, dev, IMAGENET_MEAN, IMAGENET_STD, size=size, channels_last=ctx.channels_last
            )
            n += x.shape[0]
        _sync(dev)
        return n / (time.perf_counter() - t0)

    def plain(w: int, epoch: int) -> float:
        g = torch.Generator().manual_seed(epoch)
        loader = DataLoader(
            loose,
            batch_size=batch,
            shuffle=True,
            num_workers=w,
            generator=g,
            pin_memory=dev.type == "cuda",
        )
        t0, n = time.perf_counter(), 0
        for x, _ in loader:
            x = x.to(dev, non_blocking=True)
            n += x.shape[0]
        _sync(dev)
        return n / (time.perf_counter() - t0)

    done: set[int] = set()
    for w in counts:
        w_eff, note = _cap_workers(w, batch, size, 1)
        if w_eff in done:
            continue
        done.add(w_eff)
        ours(w_eff, 0)  # warm: page cache, shard index cache
        plain(w_eff, 0)
        a, b = [], []
        for r in range(1, repeats + 1):
            a.append(ours(w_eff, r))
            b.append(plain(w_eff, r))
        ma, mb = statistics.median(a), statistics.median(b)
        spread = f"spread {100 * (max(a) - min(a)) / ma:.0f}%" if len(a) > 1 else ""
        ctx.rep.add(
            "loader",
            f"plain PIL ImageFolder + ToTensor/Normalize, {w_eff} workers",
            batch,
            mb,
            note=f"{len(loose)} loose JPEGs",
        )
        ctx.rep.add(
            "loader",
            f"project make_loader + prepare_images, {w_eff} workers",
            batch,
            ma,
            ma / mb,
            "plain loader, same workers",
            note="; ".join(v for v in (spread, note) if v),
        )


def section_eval(ctx: Ctx) -> None:
    import numpy as np
    from fashion_attr.classifier.inference import predict_split
    from fashion_attr.config import EvaluateConfig, load_config
    from fashion_attr.data.loader import ShardLoader, make_loader
    from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics
    from fashion_attr.runtime import use_bf16

    args, dev, info = ctx.args, ctx.device, ctx.info
    ecfg = load_config(EvaluateConfig, preset=args.preset)
    batch = ecfg.batch_size if not args.smoke else 4
    workers, note = _cap_workers(ecfg.num_workers, batch, ctx.data.image_size, 1)
    model = ctx.model
    spec = model.expected_input()
    first = make_loader(
        ctx.data.version,
        "test",
        batch_size=batch,
        cache_dir=ctx.data.cache,
        train=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    want = args.defaults.get("eval_images", 4 * batch * max(workers, 1) * 2)
    reps = max(1, math.ceil(want / max(len(first.indices), 1)))
    idx = np.tile(first.indices, reps)
    loader = ShardLoader(
        first.manifest,
        first.dataset,
        idx,
        samples_per_epoch=len(idx),
        start_sample=0,
        batch_size=batch,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        epoch=0,
    )

    def once() -> tuple[float, int]:
        attr_m = AttributeMetrics(
            info.attribute_groups, train_pos_counts=info.train_pos_counts.tolist()
        )
        cat_m = CategoryMetrics(info.num_categories)
        t0 = time.perf_counter()
        n = predict_split(
            model,
            loader,
            device=dev,
            image_size=ctx.data.image_size,
            mean=tuple(spec["mean"]),
            std=tuple(spec["std"]),
            attr_metrics=attr_m,
            cat_metrics=cat_m,
            bf16=use_bf16("auto", dev),
        )
        attr_m.compute()
        cat_m.compute()
        return n / (time.perf_counter() - t0), n

    once()  # warm (cuDNN autotuning of the eval batch, page cache)
    rates = [once()[0] for _ in range(min(args.repeats, 2))]
    rate = statistics.median(rates)
    ctx.rep.add(
        "eval",
        "project predict_split + metrics (shards, as the evaluate step)",
        batch,
        rate,
        note=f"{len(idx)} images per pass, {workers} loader workers"
        + (f", {note}" if note else ""),
    )


def section_infer(ctx: Ctx) -> None:
    import torch
    from fashion_attr.checkpoint import load_artifact, save_artifact
    from fashion_attr.classifier.export import export_blob
    from fashion_attr.registry.pyfunc import ImagePredictor

    args, dev = ctx.args, ctx.device
    out = args.workdir / "export" / args.tag
    out.mkdir(parents=True, exist_ok=True)
    uri = str(out / "model.pt")
    info = ctx.info
    blob = export_blob(
        ctx.model,
        arch=ctx.clf_cfg.arch,
        config={},
        image_size=ctx.data.image_size,
        category_names=list(info.category_names),
        attribute_names=list(info.attribute_names),
        attribute_groups=[int(g) for g in info.attribute_groups],
        train_pos_counts=[int(c) for c in info.train_pos_counts.tolist()],
        dataset_version=info.version,
        val_metrics={},
        step=0,
    )
    save_artifact(uri, blob)
    blob = load_artifact(uri)
    predictor = ImagePredictor(blob, device=dev.type)
    files = sorted((ctx.data.source / "Img").rglob("*.jpg"))[: args.defaults["infer_images"]]
    payload = [f.read_bytes() for f in files]
    predictor.predict(payload[: min(8, len(payload))])  # warm
    rates = []
    for _ in range(min(args.repeats, 2)):
        _sync(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            answers = predictor.predict(payload)
        _sync(dev)
        rates.append(len(answers) / (time.perf_counter() - t0))
    d = args.defaults
    ctx.rep.add(
        "infer",
        "ImagePredictor.predict on JPEG bytes (exported model.pt)",
        64,
        statistics.median(rates),
        note=f"{len(payload)} source JPEGs {d['min_size']}-{d['max_size']} px, "
        "PIL decode + resize in one thread, batches of 64",
    )


def _ingest_worker_count(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def plain_ingest(source: Path, size: int, quality: int = 90) -> int:
    """Plain PIL loop: decode, crop to the box, resize, encode JPEG (one process)."""
    from PIL import Image

    lines = (source / "Anno" / "list_bbox.txt").read_text().splitlines()[2:]
    n = 0
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        name, box = parts[0], tuple(int(v) for v in parts[1:5])
        with Image.open(source / "Img" / name) as im:
            im = im.convert("RGB")
            x1, y1 = max(0, box[0]), max(0, box[1])
            x2, y2 = min(im.width, box[2]), min(im.height, box[3])
            out = im.crop((x1, y1, x2, y2)).resize((size, size), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            out.save(buf, format="JPEG", quality=quality)
        n += 1
    return n


def section_ingest(ctx: Ctx) -> None:
    from fashion_attr.data.ingest import engine, ingest_full

    # Time stamps of the first and last processed image (as bench/ingest.py does), so the
    # steady per-worker rate can be told apart from the spawned workers' start-up.
    stamps: list[float] = []
    original = engine._run_tasks

    def timed(tasks: Any, settings: Any, workers: int) -> Iterator[Any]:
        for item in original(tasks, settings, workers):
            stamps.append(time.perf_counter())
            yield item

    args = ctx.args
    size = ctx.data.image_size
    tmp = args.workdir / f"ingest-bench-{os.getpid()}"
    counts = _ingest_worker_count(args.ingest_workers)
    try:
        plain_ingest(ctx.data.source, size)  # warm the page cache
        t0 = time.perf_counter()
        n = plain_ingest(ctx.data.source, size)
        plain_rate = n / (time.perf_counter() - t0)
        ctx.rep.add(
            "ingest",
            "plain PIL decode+crop+resize+encode, 1 process",
            1,
            plain_rate,
            note=f"{n} images -> {size} px",
        )
        engine._run_tasks = timed
        for w in counts:
            dest = tmp / f"w{w}"
            stamps.clear()
            t0 = time.perf_counter()
            res = ingest_full(ctx.data.source, dest, image_size=size, workers=w, progress=False)
            secs = time.perf_counter() - t0
            total = sum(int(v) for v in res.manifest.counts.values()) if res.manifest else n
            rate = total / secs
            steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 2 else rate
            start_up = stamps[0] - t0 if stamps else float("nan")
            ctx.rep.add(
                "ingest",
                f"project ingest_full, {w} worker(s) (per worker: {rate / w:.1f})",
                w,
                rate,
                rate / w / plain_rate,
                "plain loop, per worker",
                note=f"{total} images in {secs:.1f} s, incl. hashing, shards, manifest"
                + (", spawn start-up" if w > 1 else "")
                + f"; first image after {start_up:.2f} s; steady {steady / w:.1f} img/s per "
                "worker between first and last image",
            )
            shutil.rmtree(dest, ignore_errors=True)
    finally:
        engine._run_tasks = original
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- projection


def _rate(rep: Report, section: str, prefix: str, batch: int | None = None) -> float | None:
    for row in rep.rows:
        same_batch = batch is None or str(row[2]) == str(batch)
        if row[0] == section and str(row[1]).startswith(prefix) and row[3] and same_batch:
            return float(row[3])
    return None


def project_cost(ctx: Ctx) -> None:
    rep, args = ctx.rep, ctx.args
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    per_worker = None
    for row in rep.rows:  # the single-worker ingest row gives the per-worker rate
        if row[0] == "ingest" and str(row[1]).startswith("project ingest_full, 1 ") and row[3]:
            per_worker = float(row[3])
    gan = _rate(rep, "gan", "project MR-GAN D+G step (shards") or _rate(
        rep, "gan", "project MR-GAN D+G step (synthetic"
    )
    evaluation = _rate(rep, "eval", "project predict_split")
    lines = [
        "",
        f"## Projected DeepFashion-C cost ({DF_IMAGES:,} images ingested, {GAN_EPOCHS} GAN "
        f"epochs and {CLF_EPOCHS} classifier epochs over {DF_TRAIN:,} train images, "
        f"{DF_EVAL:,} images per evaluation)",
        "",
        "Assumptions: the rates measured above hold for the full dataset (steady state, "
        "same image size and batch); 8 devices scale linearly (DDP for GAN and classifier, "
        "8 ingest machines via --part/--parts); ingest on one machine uses "
        f"{cpus} workers at the measured single-worker rate (linear in workers).",
    ]
    if args.preset != "paper" or args.smoke:
        lines.append(
            "**Preset is not `paper` (or --smoke): these rates are for small models and images; "
            "the projection below is NOT DeepFashion-C's cost at the paper's sizes.**"
        )
    work: list[tuple[str, float, float | None]] = []
    if per_worker:
        work.append((f"ingest ({cpus} workers)", DF_IMAGES, per_worker * cpus))
    if gan:
        work.append((f"MR-GAN, {GAN_EPOCHS} epochs", GAN_EPOCHS * DF_TRAIN, gan))
    table_rows = []
    totals: dict[int, float] = {}
    for batch in args.batch_sizes:
        clf = _rate(rep, "train", "project HABP + Deact", batch)
        rows = list(work)
        if clf:
            rows.append(
                (
                    f"classifier HABP+Deact, batch {batch}, {CLF_EPOCHS} epochs",
                    CLF_EPOCHS * DF_TRAIN,
                    clf,
                )
            )
        if evaluation:
            rows.append(
                (
                    f"validation each epoch ({CLF_EPOCHS} x {DF_EVAL:,})",
                    CLF_EPOCHS * DF_EVAL,
                    evaluation,
                )
            )
            rows.append(("evaluate step (test split)", DF_EVAL, evaluation))
        total = 0.0
        for name, images, rate in rows:
            secs = images / rate if rate else float("nan")
            total += secs
            table_rows.append(
                [batch, name, f"{images:,.0f}", f"{rate:,.1f}", _hm(secs), _hm(secs / 8)]
            )
        totals[batch] = total
        table_rows.append([batch, "**total**", "", "", _hm(total), _hm(total / 8)])
    import common

    lines += [
        "",
        common.format_table(
            ["clf batch", "stage", "images", "images/s", "1 device", "8 devices (linear)"],
            table_rows,
        ),
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    rep.extra.append(text)


def _hm(secs: float) -> str:
    if not math.isfinite(secs):
        return "n/a"
    h, rem = divmod(round(secs), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR))
    import torch
    from fashion_attr.config import ClassifierConfig, load_config
    from fashion_attr.data.info import DatasetInfo
    from fashion_attr.runtime import use_bf16

    t_start = time.perf_counter()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("--device cuda: CUDA is not available here; use --device cpu", file=sys.stderr)
            return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the anchor; see the note in the report
    meta = machine_meta(device, args)
    rep = Report(args, meta)
    for k, v in meta.items():
        print(f"# {k}: {v}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)

    ccfg = load_config(ClassifierConfig, preset=args.preset)
    ctx = Ctx(
        args=args,
        device=device,
        bf16=use_bf16(ccfg.precision, device),
        channels_last=ccfg.channels_last and device.type == "cuda",
        data=None,  # type: ignore[arg-type]
        info=None,
        rep=rep,
        t0=t_start,
    )
    tw = args.train_workers if args.train_workers is not None else ccfg.num_workers
    ctx.train_workers = tw
    ctx.log("preparing data")
    ctx.data = prepare_data(args, ctx.log)
    ctx.info = DatasetInfo.load(ctx.data.version)
    info = ctx.info
    rep.notes.append(
        f"data: {args.images} procedural demo images ({args.defaults['min_size']}-"
        f"{args.defaults['max_size']} px) ingested at {ctx.data.image_size} px; "
        f"{info.num_train} train / {info.split_count('val')} val / {info.split_count('test')} "
        f"test; {info.num_attributes} attributes, {info.num_categories} categories"
        + (
            " (demo's 38 widened with synthetic long-tailed labels)"
            if info.num_attributes > 38
            else ""
        )
    )
    rep.notes.append(
        f"precision: {'bf16 autocast + channels_last' if ctx.bf16 else 'fp32'}"
        + (", torch.compile" if args.compile and device.type == "cuda" else "")
        + (
            ", cudnn.benchmark on for every row (the anchor sets it; the engine leaves the "
            "default, off)"
            if device.type == "cuda"
            else ""
        )
    )
    rep.notes.append(
        "ratios: training rows / baseline at the same batch (same run); GAN rows / plain GAN "
        "step; loader rows / plain loader at the same workers; ingest rows: per-worker rate / "
        "plain PIL loop"
    )
    cpus = os.cpu_count() or 1
    if device.type == "cpu" and torch.get_num_threads() > 1 and os.getloadavg()[0] >= cpus - 0.5:
        warn = (
            f"load average {_loadavg()} on {cpus} CPUs with {torch.get_num_threads()} torch "
            "threads: OpenMP spin-waiting makes multi-threaded steps erratic on a shared "
            "machine; rerun with --threads 1 for steadier figures"
        )
        print(f"WARNING: {warn}", flush=True)
        rep.notes.append(f"warning: {warn}")
    if device.type == "cuda" and args.preset == "paper":
        rep.notes.append(
            "published anchor figures (NOT this run; 2026-11-26, PyTorch 2.11): VGG head bf16+cl "
            "batch 128: 3,092 (H100) / 3,375 (H200) img/s, compiled 4,306 / 4,645; batch 16: "
            "1,885 / 2,104; plain GAN bf16 batch 128: 816 (H200)"
        )
    rep.write()

    sections: list[tuple[str, Callable[[Ctx], None]]] = [
        ("train", section_train),
        ("gan", section_gan),
        ("loader", section_loader),
        ("eval", section_eval),
        ("infer", section_infer),
        ("ingest", section_ingest),
    ]
    for name, fn in sections:
        if name not in args.sections:
            continue
        if name in ("eval", "infer") and ctx.model is None:
            # Without the training section: a fresh classifier of the preset's arch.
            from fashion_attr.classifier.model import build_classifier

            arch = "vgg16_paper" if args.preset == "paper" else "tiny"
            ctx.model = build_classifier(
                arch, info.num_attributes, info.num_categories, pretrained=None
            ).to(device)
            ctx.clf_cfg = load_config(
                ClassifierConfig, preset=args.preset, extra={"pretrained": None}
            )
        ctx.log(f"section {name}")
        try:
            fn(ctx)
        except Exception as exc:  # one failing section must not lose the others' figures
            rep.error(name, exc)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next section starts from a clean allocator
        rep.write()
        ctx.log(f"section {name} done")

    rep.notes.append(f"total wall time {time.perf_counter() - t_start:.0f} s")
    if args.project:
        project_cost(ctx)
    rep.write()
    print()
    for k in ("cpu_model", "cpu_count", "torch", "cuda_device", "load_average_start"):
        print(f"# {k}: {meta.get(k)}")
    print(f"# load_average_end: {_loadavg()}")
    print(rep.table())
    for n in rep.notes:
        print(f"- {n}")
    print(f"\nwrote {args.out}/throughput_{args.tag}.csv and .md", flush=True)
    return 1 if any(r[1] == "ERROR" for r in rep.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
