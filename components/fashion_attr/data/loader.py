"""The training data loader: cached, verified shards; deterministic, DDP-aware, resumable.

``make_loader(version_uri, split, ...)`` reads a version's manifest, makes the
shards of ``split`` available locally and returns a :class:`ShardLoader` that
yields :class:`Batch` tuples ``(images, attr_targets, known, category)``:

* ``images``: ``uint8`` ``[B, 3, H, W]`` (normalise on the device with
  :func:`normalize_on_device`: moving uint8 is 4x cheaper than float, and the
  GPU does the arithmetic for free);
* ``attr_targets``: ``float32`` ``[B, N]``, 1 for positive attributes;
* ``known``: ``bool`` ``[B, N]``, ``False`` where the label is unknown (0 in
  ``list_attr_img.txt``): the mask ``u_ij`` of the losses (docs/method.md, section 1);
* ``category``: ``int64`` ``[B]``, 0-based.

Shards: a remote (``s3://``) shard is downloaded once into ``cache_dir`` under
its sha256 (so versions that share shards share the cache), written to a
temporary name and renamed, and verified against the manifest's sha256; a
cached file that no longer matches is downloaded again. Local shards are read
in place after the same check. Each shard's member offsets are indexed once
(and cached beside it) with :func:`fashion_attr.data.shards.index_shard`, which
refuses links, folders and path-like member names, so the dataset is map-style
with random access into the tar files.

Order: one global permutation of the split's samples per ``(seed, epoch)``
(``train=True``; sequential order otherwise). With ``world_size`` ranks the
permutation is first cut (``drop_last=True``, the default for training) or
padded by wrapping around (``drop_last=False``) to a multiple of
``world_size``, and rank ``r`` takes positions ``r, r + world_size, ...``; so
every rank yields the same number of batches (DDP needs that: a rank with one
batch more would wait for the others forever). With ``drop_last`` each rank
also drops its last incomplete batch. A cut epoch loses fewer than
``world_size * batch_size`` samples, different ones each epoch; a padded one
repeats up to ``world_size - 1`` samples (evaluate with ``world_size=1`` for
exact metrics).

Resume: ``start_sample`` is the number of samples this rank already consumed
in the epoch (:class:`LoaderState`); the loader yields exactly the rest of the
rank's sequence. Random augmentations draw from a generator seeded by
``(seed, epoch, sample index)``, so a resumed epoch also sees the same flips
and crops, whatever the number of workers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fashion_attr import storage
from fashion_attr.data.shards import (
    Manifest,
    ShardEntry,
    ShardFormatError,
    ShardMember,
    index_shard,
    load_manifest,
    sha256_file,
)
from fashion_attr.resources import cap_workers

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Batch",
    "LoaderState",
    "ShardDataset",
    "ShardLoader",
    "decode_batch_on_device",
    "default_cache_dir",
    "fetch_shards",
    "labels_of",
    "make_loader",
    "normalize_on_device",
    "rank_indices",
    "whole_image_view",
]

#: ImageNet channel statistics on the [0, 1] scale (for pretrained backbones).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INDEX_VERSION = 1


class Batch(NamedTuple):
    """One batch; unpacks as ``images, attr_targets, known, category``.

    With ``gpu_decode=True`` ``images`` is a list of 1-D ``uint8`` tensors (the
    JPEG bytes) for :func:`decode_batch_on_device`.
    """

    images: torch.Tensor | list[torch.Tensor]
    attr_targets: torch.Tensor
    known: torch.Tensor
    category: torch.Tensor


@dataclass
class LoaderState:
    """Where the data stream of one rank stands; the trainer checkpoints it.

    Attributes:
        epoch: The current epoch (0-based).
        samples_consumed: Samples this rank has taken from the loader in ``epoch``
            (pass as ``start_sample`` to resume mid-epoch).
    """

    epoch: int = 0
    samples_consumed: int = 0

    def to_dict(self) -> dict[str, int]:
        """The state as a plain dict (for a checkpoint)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderState:
        """Rebuild a state saved with :meth:`to_dict`."""
        return cls(epoch=int(data["epoch"]), samples_consumed=int(data["samples_consumed"]))


def default_cache_dir() -> Path:
    """``$FA_CACHE_DIR`` or ``~/.cache/fashion_attr`` (where remote shards are cached)."""
    env = os.environ.get("FA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fashion_attr"


# --------------------------------------------------------------------------- shard cache


def _fetch_one(uri: str, entry: ShardEntry, cache: Path) -> Path:
    """Make one shard available locally and verified; return its path."""
    if not storage.is_s3(uri):
        path = Path(uri)
        if not path.exists():
            raise FileNotFoundError(
                f"shard {uri} named by the manifest does not exist. Fix: re-ingest the version "
                "(or restore the folder the manifest points to)"
            )
        if sha256_file(path) != entry.sha256:
            raise ShardFormatError(
                f"shard {uri}: sha256 does not match the manifest (the file changed after "
                "ingest). Fix: delete the version folder and re-run the ingest step"
            )
        return path
    path = cache / "shards" / entry.sha256[:2] / f"{entry.sha256}.tar"
    if path.exists() and sha256_file(path) == entry.sha256:
        return path
    # Missing, partial from an older tool, or corrupted: (re)download atomically.
    storage.download_file(uri, path)
    got = sha256_file(path)
    if got != entry.sha256:
        path.unlink(missing_ok=True)
        raise ShardFormatError(
            f"shard {uri}: downloaded sha256 {got[:12]}... does not match the manifest's "
            f"{entry.sha256[:12]}... (the object changed after ingest). Fix: re-run the ingest "
            "step for this version"
        )
    return path


def _index_cached(path: Path, entry: ShardEntry, uri: str, cache: Path) -> list[ShardMember]:
    """The member offsets of a verified shard, cached under its sha256 (content-addressed)."""
    idx_path = cache / "index" / entry.sha256[:2] / f"{entry.sha256}.json"
    if idx_path.exists():
        try:
            data = json.loads(idx_path.read_text())
            if data.get("v") == _INDEX_VERSION:
                return [ShardMember(*row) for row in data["members"]]
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable cache entry: rebuild it below
    members = index_shard(path, uri)
    if len(members) != entry.samples:
        raise ShardFormatError(
            f"shard {uri}: holds {len(members)} samples, the manifest says {entry.samples}. "
            "Fix: re-run the ingest step for this version"
        )
    rows = [[m.key, m.jpg_offset, m.jpg_size, m.json_offset, m.json_size] for m in members]
    with storage.atomic_local_write(idx_path) as fh:
        fh.write(json.dumps({"v": _INDEX_VERSION, "members": rows}).encode())
    return members


def fetch_shards(
    version_uri: str,
    split: str,
    cache_dir: str | os.PathLike[str] | None = None,
    manifest: Manifest | None = None,
) -> list[tuple[Path, list[ShardMember]]]:
    """Download (once), verify and index every shard of ``split``.

    Args:
        version_uri: The version folder (local or ``s3://``).
        split: ``train``, ``val`` or ``test``.
        cache_dir: Local cache (default :func:`default_cache_dir`).
        manifest: The version's manifest if already loaded.

    Returns:
        ``(local path, members)`` per shard, in manifest order.
    """
    manifest = manifest or load_manifest(version_uri)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = []
    for uri, entry in manifest.shard_uris(str(version_uri), split):
        path = _fetch_one(uri, entry, cache)
        out.append((path, _index_cached(path, entry, uri, cache)))
    return out


# --------------------------------------------------------------------------- dataset


def _resized_crop_params(
    rng: np.random.Generator, height: int, width: int, min_scale: float
) -> tuple[int, int, int, int]:
    """Torchvision's RandomResizedCrop sampling (scale [min_scale, 1], ratio [3/4, 4/3])."""
    area = height * width
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return 0, 0, height, width


def whole_image_view(
    crop: torch.Tensor, meta: dict[str, Any], rng: np.random.Generator
) -> torch.Tensor:
    """The garment crop where it sits in its whole image, as a whole-image request sees it.

    A served model gets whole photos too; ``pyfunc`` resizes them to the model's
    square input, as ingest resized the crops. This view maps the crop's box from
    the source image (``meta["bbox"]`` in the ``meta["size"]`` image) into that square
    frame, pastes the crop there at that scale, and fills the rest with the mean
    colour of the crop's border (the garment's surroundings are not in the shard).
    Records written before the size was kept place the crop at a random scale in
    [0.4, 1] and a random position.

    Args:
        crop: ``uint8`` ``[C, S, S]`` (a decoded shard image).
        meta: the sample's label record.
        rng: the sample's seeded draws.

    Returns:
        ``uint8`` ``[C, S, S]``.
    """
    c, h, w = crop.shape
    size, box = meta.get("size") or [], meta.get("bbox") or []
    if len(size) == 2 and len(box) == 4 and size[0] > 0 and size[1] > 0:
        x1, y1, x2, y2 = (box[0] / size[0], box[1] / size[1], box[2] / size[0], box[3] / size[1])
    else:
        scale = rng.uniform(0.4, 1.0)
        x1, y1 = rng.uniform(0, 1 - scale), rng.uniform(0, 1 - scale)
        x2, y2 = x1 + scale, y1 + scale
    left, top = round(x1 * w), round(y1 * h)
    bw, bh = max(1, round(x2 * w) - left), max(1, round(y2 * h) - top)
    left, top = min(left, w - bw), min(top, h - bh)
    border = torch.cat([crop[:, 0], crop[:, -1], crop[:, :, 0], crop[:, :, -1]], dim=1)
    canvas = border.float().mean(dim=1).round().to(torch.uint8).view(c, 1, 1).expand(c, h, w)
    canvas = canvas.clone()
    small = torch.nn.functional.interpolate(
        crop.unsqueeze(0).float(), size=(bh, bw), mode="bilinear", antialias=True
    )
    canvas[:, top : top + bh, left : left + bw] = small[0].round().clamp(0, 255).to(torch.uint8)
    return canvas


class ShardDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]):
    """Map-style dataset over the samples of verified local shards.

    Sample ``i`` is the ``i``-th sample in manifest shard order; reading it is
    two seeks into its tar file (offsets from :func:`index_shard`) and a JPEG
    decode with :func:`torchvision.io.decode_jpeg` straight to ``uint8``.

    Args:
        shards: ``(path, members)`` per shard (:func:`fetch_shards`).
        num_attributes: N, the length of the target vectors.
        flip: Random horizontal flip (p = 0.5).
        random_resized_crop: Minimum area scale of a random resized crop, or ``None``.
        whole_share: Share of samples shown as :func:`whole_image_view` (the garment in
            its whole-image frame), so a whole photo is classified too.
        seed: Seed of the augmentation draws.
        epoch: Epoch of the augmentation draws.
        gpu_decode: Return the JPEG bytes instead of decoding (no augmentation then).
    """

    def __init__(
        self,
        shards: Sequence[tuple[Path, Sequence[ShardMember]]],
        num_attributes: int,
        *,
        flip: bool = False,
        random_resized_crop: float | None = None,
        whole_share: float = 0.0,
        seed: int = 0,
        epoch: int = 0,
        gpu_decode: bool = False,
    ) -> None:
        if not 0 <= whole_share <= 1:
            raise ValueError(
                f"whole_share = {whole_share}: a share must be in [0, 1]. Fix: pass e.g. 0.3"
            )
        if random_resized_crop is not None and not 0 < random_resized_crop <= 1:
            raise ValueError(
                f"random_resized_crop = {random_resized_crop}: the minimum area scale must be "
                "in (0, 1]. Fix: pass e.g. 0.5, or None for no crop"
            )
        if gpu_decode and (flip or random_resized_crop is not None or whole_share > 0):
            raise ValueError(
                "gpu_decode=True returns undecoded JPEG bytes, so the loader cannot flip, crop or "
                "reframe them. Fix: set flip=False, random_resized_crop=None and whole_share=0 "
                "with gpu_decode"
            )
        self.paths = [str(p) for p, _ in shards]
        rows = [
            (s, m.jpg_offset, m.jpg_size, m.json_offset, m.json_size)
            for s, (_, members) in enumerate(shards)
            for m in members
        ]
        # Compact arrays instead of 200k Python objects: cheap to pickle into workers.
        self._index = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
        self.num_attributes = num_attributes
        self.flip = flip
        self.random_resized_crop = random_resized_crop
        self.whole_share = whole_share
        self.seed = seed
        self.epoch = epoch
        self.gpu_decode = gpu_decode
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}  # open files do not cross into worker processes
        return state

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch the augmentation draws depend on."""
        self.epoch = epoch

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        fh = self._files.get(shard)
        if fh is None:
            fh = self._files[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 - kept open
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise ShardFormatError(
                f"shard {self.paths[shard]}: truncated (wanted {size} bytes at {offset}). "
                "Fix: clear the cache entry and load again"
            )
        return data

    def read_raw(self, index: int) -> tuple[bytes, dict[str, Any]]:
        """The JPEG bytes and the label record of sample ``index``."""
        shard, jpg_off, jpg_size, json_off, json_size = (int(v) for v in self._index[index])
        return self._read(shard, jpg_off, jpg_size), json.loads(
            self._read(shard, json_off, json_size)
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2.functional import resized_crop

        jpeg, meta = self.read_raw(index)
        data = torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)
        if self.gpu_decode:
            image = data
        else:
            image = decode_jpeg(data, mode=ImageReadMode.RGB)
            if self.flip or self.random_resized_crop is not None or self.whole_share > 0:
                # Seeded per (seed, epoch, sample): identical draws after a resume.
                rng = np.random.default_rng([self.seed, self.epoch, index])
                if self.whole_share > 0 and rng.random() < self.whole_share:
                    image = whole_image_view(image, meta, rng)
                elif self.random_resized_crop is not None:
                    h, w = image.shape[-2:]
                    top, left, ch, cw = _resized_crop_params(rng, h, w, self.random_resized_crop)
                    image = resized_crop(image, top, left, ch, cw, [h, w], antialias=True)
                if self.flip and rng.random() < 0.5:
                    image = image.flip(-1)
        return (image, *labels_of(meta, self.num_attributes))


def labels_of(meta: dict[str, Any], num_attributes: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A label record's ``(targets, known, category)`` as the loader yields them."""
    targets = torch.zeros(num_attributes, dtype=torch.float32)
    known = torch.ones(num_attributes, dtype=torch.bool)
    if meta["positives"]:
        targets[torch.as_tensor(meta["positives"], dtype=torch.long)] = 1.0
    if meta["unknown"]:
        known[torch.as_tensor(meta["unknown"], dtype=torch.long)] = False
    return targets, known, int(meta["category"])


def _collate(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]) -> Batch:
    images, targets, known, category = zip(*items, strict=True)
    stacked: torch.Tensor | list[torch.Tensor]
    # Raw JPEG byte tensors (gpu_decode) differ in length: keep them as a list.
    stacked = list(images) if images[0].dim() == 1 else torch.stack(images)
    return Batch(
        stacked, torch.stack(targets), torch.stack(known), torch.tensor(category, dtype=torch.long)
    )


# --------------------------------------------------------------------------- order


def rank_indices(
    num_samples: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool,
    batch_size: int,
) -> np.ndarray:
    """The sample indices rank ``rank`` visits in ``epoch``, in order.

    Args:
        num_samples: Samples in the split.
        shuffle: Permute with ``(seed, epoch)``; otherwise sequential.
        seed: Permutation seed.
        epoch: Epoch (a new permutation each epoch).
        rank: This rank, ``0 <= rank < world_size``.
        world_size: Number of ranks.
        drop_last: Cut the global order to a multiple of ``world_size`` and each
            rank's share to a multiple of ``batch_size``; otherwise pad the global
            order by wrapping around and keep a last partial batch.
        batch_size: Batch size (for ``drop_last``).

    Returns:
        ``int64`` indices; every rank gets the same count.
    """
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank} is outside 0..{world_size - 1}. Fix: pass 0 <= rank < world_size"
        )
    order = (
        np.random.default_rng([seed, epoch]).permutation(num_samples)
        if shuffle
        else np.arange(num_samples)
    )
    if drop_last:
        order = order[: num_samples // world_size * world_size]
    else:
        total = -(-num_samples // world_size) * world_size
        if total > num_samples and num_samples:
            order = np.resize(order, total)  # wraps around: repeats the first samples
    mine = order[rank::world_size]
    if drop_last:
        mine = mine[: len(mine) // batch_size * batch_size]
    return mine.astype(np.int64)


class _ListSampler(Sampler[int]):
    def __init__(self, indices: np.ndarray) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------- loader


class ShardLoader:
    """An iterable of :class:`Batch` for one rank and one epoch (from ``start_sample`` on).

    Attributes:
        manifest: The version's manifest.
        dataset: The underlying :class:`ShardDataset`.
        indices: The sample indices still to visit, in order.
        samples_per_epoch: This rank's samples in a whole epoch.
        start_sample: Samples of the epoch skipped because already consumed.
    """

    def __init__(
        self,
        manifest: Manifest,
        dataset: ShardDataset,
        indices: np.ndarray,
        *,
        samples_per_epoch: int,
        start_sample: int,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        epoch: int,
    ) -> None:
        self.manifest = manifest
        self.dataset = dataset
        self.indices = indices
        self.samples_per_epoch = samples_per_epoch
        self.start_sample = start_sample
        self.batch_size = batch_size
        self.epoch = epoch
        self._loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=_ListSampler(indices),
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin_memory and torch.cuda.is_available(),
            drop_last=False,  # rank_indices already applied drop_last
            persistent_workers=False,
        )

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._loader)

    def __len__(self) -> int:
        """Batches still to come."""
        return len(self._loader)

    @property
    def num_samples(self) -> int:
        """Samples still to come."""
        return len(self.indices)

    def state_after(self, samples_consumed_now: int) -> LoaderState:
        """The :class:`LoaderState` after taking ``samples_consumed_now`` more samples."""
        return LoaderState(self.epoch, self.start_sample + samples_consumed_now)


def make_loader(
    version_uri: str | os.PathLike[str],
    split: str,
    *,
    batch_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
    train: bool = True,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    flip: bool = False,
    random_resized_crop: float | None = None,
    whole_share: float = 0.0,
    pin_memory: bool = False,
    start_sample: int = 0,
    drop_last: bool | None = None,
    gpu_decode: bool = False,
    manifest: Manifest | None = None,
) -> ShardLoader:
    """Build the loader of one split of a version for one rank and epoch.

    Args:
        version_uri: The version folder (local or ``s3://``).
        split: ``train``, ``val`` or ``test``.
        batch_size: Samples per batch.
        cache_dir: Local shard cache (default :func:`default_cache_dir`).
        train: Shuffle with ``(seed, epoch)`` (else sequential order).
        seed: Order and augmentation seed.
        epoch: Epoch (new order each epoch).
        rank: This process's rank.
        world_size: Number of ranks.
        num_workers: DataLoader worker processes.
        flip: Random horizontal flip.
        random_resized_crop: Minimum area scale of a random resized crop, or ``None``.
        whole_share: Share of train samples shown in their whole-image frame.
        pin_memory: Pin batches (only when CUDA is available).
        start_sample: Samples of this epoch this rank already consumed (resume).
        drop_last: See :func:`rank_indices`; default ``train``.
        gpu_decode: Yield JPEG bytes for :func:`decode_batch_on_device`.
        manifest: The version's manifest if already loaded.

    Returns:
        The :class:`ShardLoader`.

    Raises:
        ManifestError: no or invalid manifest, or no such split.
        ShardFormatError: a shard fails its checksum or holds unsafe members.
        ValueError: a bad argument (message names it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}. Fix: pass batch_size >= 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank} / world_size {world_size}: need world_size >= 1 and "
            "0 <= rank < world_size. Fix: pass the values torch.distributed reports"
        )
    version_uri = str(version_uri).rstrip("/")
    manifest = manifest or load_manifest(version_uri)
    shards = fetch_shards(version_uri, split, cache_dir, manifest)
    dataset = ShardDataset(
        shards,
        manifest.num_attributes,
        flip=flip,
        random_resized_crop=random_resized_crop,
        whole_share=whole_share,
        seed=seed,
        epoch=epoch,
        gpu_decode=gpu_decode,
    )
    drop = train if drop_last is None else drop_last
    # Workers beyond the container's CPU limit only get throttled (the order of the samples
    # does not depend on the worker count).
    num_workers = cap_workers(num_workers, "loader workers")
    everything = rank_indices(
        len(dataset),
        shuffle=train,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        drop_last=drop,
        batch_size=batch_size,
    )
    if not 0 <= start_sample <= len(everything):
        raise ValueError(
            f"start_sample = {start_sample} but rank {rank} has {len(everything)} samples in "
            f"epoch {epoch}. Fix: pass the samples_consumed of a LoaderState saved with the same "
            "batch_size, world_size and drop_last"
        )
    return ShardLoader(
        manifest,
        dataset,
        everything[start_sample:],
        samples_per_epoch=len(everything),
        start_sample=start_sample,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        epoch=epoch,
    )


# --------------------------------------------------------------------------- on device


def normalize_on_device(
    images_uint8: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
    std: Sequence[float] | torch.Tensor = IMAGENET_STD,
    channels_last: bool = True,
) -> torch.Tensor:
    """Turn a ``uint8`` ``[B, C, H, W]`` batch into normalised ``float32`` on its device.

    ``out = (x / 255 - mean) / std`` per channel, with mean and std on the [0, 1]
    scale. Call it after moving the uint8 batch to the GPU.

    Args:
        images_uint8: ``uint8`` images ``[B, C, H, W]``.
        mean: Per-channel mean (length C).
        std: Per-channel standard deviation (length C).
        channels_last: Return NHWC memory format (faster convolutions with cuDNN/AMP).

    Returns:
        ``float32`` ``[B, C, H, W]`` on the input's device.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError(
            f"expected a uint8 [B, C, H, W] batch, got {images_uint8.dtype} of shape "
            f"{tuple(images_uint8.shape)}. Fix: pass the loader's images unchanged"
        )
    device = images_uint8.device
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if mean_t.shape[1] != images_uint8.shape[1] or std_t.shape[1] != images_uint8.shape[1]:
        raise ValueError(
            f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} entries for "
            f"{images_uint8.shape[1]} channels. Fix: give one value per channel"
        )
    if channels_last:
        # Reorder while still uint8 (a quarter of the bytes of float32); .float() keeps it.
        images_uint8 = images_uint8.contiguous(memory_format=torch.channels_last)
    out = images_uint8.float()
    # One fused multiply-add per pixel: x / (255 std) - mean / std.
    return out.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)


def decode_batch_on_device(
    jpegs: Sequence[torch.Tensor], device: str | torch.device
) -> torch.Tensor:
    """Decode a ``gpu_decode`` batch of JPEG byte tensors on ``device`` (nvJPEG on CUDA).

    Args:
        jpegs: 1-D ``uint8`` tensors of JPEG bytes (the ``images`` of a gpu_decode batch).
        device: Where to decode, e.g. ``"cuda"``.

    Returns:
        ``uint8`` ``[B, 3, H, W]`` on ``device`` (all shard images share one size).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=device)
    return torch.stack(decoded)
