"""The champion's view of images: category and attribute probabilities and its features.

One pass over shard samples gives everything the audit needs: the probabilities the
label-issue finder and the tags read, and the penultimate features (the champion's
feature space) the image-drift test compares. The images are prepared exactly as the
evaluation prepares them (:func:`fashion_attr.classifier.inference.prepare_images`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fashion_attr.classifier.export import load_exported_model
from fashion_attr.classifier.inference import prepare_images
from fashion_attr.classifier.model import AttributeClassifier
from fashion_attr.data.loader import ShardDataset
from fashion_attr.data.shards import Manifest, ShardMember
from fashion_attr.progress import CountProgress
from fashion_attr.runtime import autocast, resolve_device, use_bf16

__all__ = ["Champion", "ChampionOutputs", "load_champion", "score_members"]


@dataclass
class ChampionOutputs:
    """What the champion says about a list of images, row ``i`` for image ``i``.

    Attributes:
        cat_probs: ``[n, C]`` softmax category probabilities (float32).
        attr_probs: ``[n, N]`` sigmoid attribute probabilities (float32).
        features: ``[n, D]`` penultimate features (float32).
        seconds: Wall time of the pass (reading, decoding, forward).
    """

    cat_probs: np.ndarray
    attr_probs: np.ndarray
    features: np.ndarray
    seconds: float = 0.0

    @property
    def images(self) -> int:
        """Images scored."""
        return int(self.features.shape[0])

    @property
    def images_per_s(self) -> float:
        """Images per second of the pass (NaN when nothing was scored)."""
        return self.images / self.seconds if self.images and self.seconds > 0 else float("nan")

    def take(self, rows: Sequence[int]) -> ChampionOutputs:
        """The outputs of a subset of the images (rows in the given order)."""
        idx = np.asarray(rows, dtype=np.int64)
        return ChampionOutputs(
            self.cat_probs[idx], self.attr_probs[idx], self.features[idx], self.seconds
        )


@dataclass
class Champion:
    """The champion model, on its device, with what its export says about it.

    Attributes:
        uri: The ``model.pt`` it was loaded from.
        net: The classifier (eval mode).
        meta: The export's metadata (no weights).
        device: Where it runs.
    """

    uri: str
    net: nn.Module
    meta: dict[str, Any]
    device: torch.device

    def check_layout(self, manifest: Manifest) -> None:
        """Refuse a champion trained on another label layout than the dataset.

        Raises:
            ValueError: naming the model, the version and the fix.
        """
        cats = [c.name for c in manifest.categories]
        attrs = [a.name for a in manifest.attributes]
        if list(self.meta["category_names"]) != cats or list(self.meta["attribute_names"]) != attrs:
            raise ValueError(
                f"champion {self.uri} was trained on another label layout than dataset "
                f"{manifest.version} ({len(self.meta['category_names'])} categories / "
                f"{len(self.meta['attribute_names'])} attributes vs {len(cats)} / {len(attrs)}). "
                "Fix: audit with a champion of this dataset's lineage, or run the audit without "
                "--champion (the label drift alone)"
            )

    @property
    def gamma(self) -> float:
        """The hardness exponent the champion was trained with (HABP's gamma, 1.2 default)."""
        loss = (self.meta.get("config") or {}).get("loss") or {}
        return float(loss.get("gamma", 1.2))

    @property
    def memory_momentum(self) -> float:
        """The hard-label memory's EMA momentum the champion was trained with (0.5 default)."""
        deact = (self.meta.get("config") or {}).get("deact") or {}
        return float(deact.get("memory_momentum", 0.5))


def load_champion(uri: str, device: str = "auto") -> Champion:
    """Load a champion ``model.pt`` (a local path or ``s3://`` URI).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a classifier export of this project (names it and the fix).
    """
    dev = resolve_device(device)
    net, meta = load_exported_model(str(uri), dev)
    return Champion(str(uri), net.eval(), meta, dev)


@torch.no_grad()
def score_members(
    champion: Champion,
    shards: Sequence[tuple[Path, Sequence[ShardMember]]],
    num_attributes: int,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    label: str = "audit: score",
) -> ChampionOutputs:
    """Score shard samples with the champion, in the order given.

    Args:
        champion: The loaded champion.
        shards: ``(local shard, members)`` pairs; every member is scored once, in order.
        num_attributes: N of the dataset (for the loader's label tensors, unused here).
        batch_size: Images per forward pass.
        num_workers: Loader processes (decoding runs there).
        progress: Print the rate and ETA on stderr.
        label: How the progress lines name the work.

    Returns:
        The :class:`ChampionOutputs`.
    """
    pre = champion.meta["preprocessing"]
    mean, std = tuple(pre["mean"]), tuple(pre["std"])
    size = int(pre["image_size"])
    dataset = ShardDataset([(p, list(m)) for p, m in shards], num_attributes)
    n = len(dataset)
    # load_exported_model builds an AttributeClassifier
    net, device = cast(AttributeClassifier, champion.net), champion.device
    feat_dim = int(getattr(net, "feat_dim", 0))
    outs: dict[str, list[np.ndarray]] = {"cat": [], "attr": [], "feat": []}
    t0 = time.perf_counter()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    bf16 = use_bf16("auto", device)
    with CountProgress(f"{label} {n} images", n, "img", enabled=progress) as bar:
        for images, _, _, _ in loader:
            x = prepare_images(images, device, mean, std, size=size, channels_last=False)
            with autocast(device, bf16):
                features = net.features(x)
                h = net.dropout(features)  # identity in eval mode; the forward's own path
                attr_logits, cat_logits = net.attr_head(h), net.cat_head(h)
            outs["feat"].append(features.float().cpu().numpy())
            outs["attr"].append(torch.sigmoid(attr_logits.float()).cpu().numpy())
            outs["cat"].append(torch.softmax(cat_logits.float(), dim=1).cpu().numpy())
            bar.update(images.shape[0])
    seconds = time.perf_counter() - t0

    def stack(key: str, width: int) -> np.ndarray:
        if outs[key]:
            return np.concatenate(outs[key]).astype(np.float32)
        return np.zeros((0, width), np.float32)

    return ChampionOutputs(
        cat_probs=stack("cat", int(champion.meta["num_categories"])),
        attr_probs=stack("attr", int(champion.meta["num_attributes"])),
        features=stack("feat", feat_dim),
        seconds=seconds,
    )
