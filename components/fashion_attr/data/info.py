"""What the training and evaluation steps need to know about a dataset version.

A thin, typed view over the version's ``manifest.json``: label names and
groups, split sizes, and the train-split label statistics that the weighted
losses, the hard-label memory and the tail metrics use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fashion_attr.data.shards import Manifest, load_manifest

__all__ = ["DatasetInfo"]


@dataclass(frozen=True)
class DatasetInfo:
    """Label layout and train statistics of one dataset version."""

    uri: str
    manifest: Manifest

    @classmethod
    def load(cls, version_uri: str | os.PathLike[str]) -> DatasetInfo:
        """Read the manifest of ``version_uri`` (raises ManifestError if incomplete)."""
        uri = str(version_uri).rstrip("/")
        return cls(uri, load_manifest(uri))

    @property
    def version(self) -> str:
        """Version id (content hash)."""
        return self.manifest.version

    @property
    def category_names(self) -> list[str]:
        """Category names, index order."""
        return [c.name for c in self.manifest.categories]

    @property
    def attribute_names(self) -> list[str]:
        """Attribute names, index order."""
        return [a.name for a in self.manifest.attributes]

    @property
    def attribute_groups(self) -> list[int]:
        """Group id (1 texture, 2 fabric, 3 shape, 4 part, 5 style) per attribute."""
        return [a.group for a in self.manifest.attributes]

    @property
    def num_categories(self) -> int:
        """C."""
        return len(self.manifest.categories)

    @property
    def num_attributes(self) -> int:
        """N."""
        return len(self.manifest.attributes)

    def split_count(self, split: str) -> int:
        """Images in a split (0 when absent)."""
        return int(self.manifest.counts.get(split, 0))

    @property
    def num_train(self) -> int:
        """Images in the train split."""
        return self.split_count("train")

    @property
    def train_pos_counts(self) -> torch.Tensor:
        """Positives per attribute in train (int64 [N])."""
        return torch.tensor(self.manifest.train_attribute_counts.positive, dtype=torch.long)

    @property
    def train_neg_counts(self) -> torch.Tensor:
        """Known negatives per attribute in train (int64 [N])."""
        return torch.tensor(self.manifest.train_attribute_counts.negative, dtype=torch.long)

    @property
    def train_category_counts(self) -> torch.Tensor:
        """Images per category in train (int64 [C])."""
        return torch.tensor(self.manifest.train_category_counts, dtype=torch.long)

    def category_prior(self) -> torch.Tensor:
        """Train category frequencies as a pmf (uniform if train is empty)."""
        counts = self.train_category_counts.double()
        if counts.sum() <= 0:
            return torch.full((self.num_categories,), 1.0 / max(self.num_categories, 1))
        return (counts / counts.sum()).float()

    def attribute_prior(self) -> torch.Tensor:
        """Train positive rate per attribute (float [N])."""
        return self.train_pos_counts.float() / max(self.num_train, 1)
