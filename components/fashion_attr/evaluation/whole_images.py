"""Score a classifier on *whole* photos of a split, as a served model receives them.

Training and the main test metrics use garment crops (ingest crops every image to
its box). A served model also gets whole photos (``pyfunc`` without a ``bbox``),
which it squashes to its square input. This module reads the split's source
images from the dataset's source (``manifest.source``; the index names each
sample's image), resizes each whole image exactly as ``pyfunc`` does, and yields
loader-shaped batches with the sample's labels, so the usual metric accumulators
score them. The caller passes a source this machine can read
(:func:`fashion_attr.demo.sources.readable_source` regenerates a demo catalog that
is not cached here).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from fashion_attr import storage
from fashion_attr.data.loader import ShardDataset, labels_of

__all__ = ["WholeImages"]

log = logging.getLogger(__name__)


def _image_uri(source: str, name: str) -> str:
    if "://" in name or name.startswith("/"):
        return name  # catalog batches name their images by URI
    return storage.join(source, "Img", name)


class WholeImages:
    """Loader-shaped batches of whole source images for the first ``limit`` samples.

    Args:
        dataset: the split's shard dataset (its label records name the images).
        source: the dataset's source root, readable from this machine.
        limit: at most this many images.
        image_size: the side whole images are resized to (the shards' side).
        batch_size: images per batch.

    Attributes:
        read: images scored so far; ``missing``: images the source no longer has.
    """

    def __init__(
        self, dataset: ShardDataset, source: str, *, limit: int, image_size: int, batch_size: int
    ) -> None:
        self.dataset, self.source = dataset, source
        self.limit, self.size, self.batch_size = limit, image_size, batch_size
        self.read = self.missing = 0

    def _load(self, uri: str) -> torch.Tensor | None:
        try:
            with Image.open(io.BytesIO(storage.read_bytes(uri))) as opened:
                img = opened.convert("RGB").resize(
                    (self.size, self.size), Image.Resampling.BILINEAR
                )
                array = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError):
            return None
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        batch: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        for index in range(min(self.limit, len(self.dataset))):
            _, meta = self.dataset.read_raw(index)
            image = self._load(_image_uri(self.source, str(meta.get("image", ""))))
            if image is None:
                self.missing += 1
                continue
            batch.append((image, *labels_of(meta, self.dataset.num_attributes)))
            self.read += 1
            if len(batch) == self.batch_size:
                yield _stack(batch)
                batch = []
        if batch:
            yield _stack(batch)
        if self.missing:
            log.warning(
                "%d of %d whole images are not readable under %s (scored without them)",
                self.missing,
                self.missing + self.read,
                self.source,
            )


def _stack(
    items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, targets, known, cats = zip(*items, strict=True)
    return torch.stack(images), torch.stack(targets), torch.stack(known), torch.tensor(cats)
