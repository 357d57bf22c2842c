"""Score an exported classifier on one split of a dataset version (docs/method.md section 6).

One function, used by the ``evaluate`` step for the challenger and by ``register``
for the champion, so that the promotion gate compares like with like: the same
images, the same tail-attribute set (fewer train positives than the threshold, in
*this* dataset's train split) and the same k values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashion_attr.classifier.export import load_exported_model
from fashion_attr.classifier.inference import predict_split
from fashion_attr.config import EvaluateConfig
from fashion_attr.data.info import DatasetInfo
from fashion_attr.data.loader import make_loader
from fashion_attr.demo.sources import readable_source
from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics, PerImageStats
from fashion_attr.evaluation.whole_images import WholeImages
from fashion_attr.runtime import resolve_device, use_bf16

__all__ = ["Scores", "score_model"]


@dataclass
class Scores:
    """What scoring a model on a split produced.

    Attributes:
        metrics: every metric (fractions; NaN where undefined, e.g. a group without
            positives in the split).
        per_attribute: one record per attribute (for the CSV and the plots).
        confusion: the category confusion matrix, or None without a category head.
        images: images scored.
        tail_attributes: attributes in the tail set.
        dataset_version: the version scored.
        model_meta: the export's metadata (no weights).
        attribute_names: the dataset's attribute names.
        category_names: the dataset's category names.
        whole_images: whole source photos scored (their metrics are ``whole/<name>``).
        per_image: per image of the split, in loader order, what the top-k metrics sum
            over (the promotion gate's paired bootstrap resamples these).
    """

    metrics: dict[str, float]
    per_attribute: list[dict[str, Any]] = field(default_factory=list)
    confusion: np.ndarray | None = None
    images: int = 0
    tail_attributes: int = 0
    dataset_version: str = ""
    model_meta: dict[str, Any] = field(default_factory=dict)
    attribute_names: list[str] = field(default_factory=list)
    category_names: list[str] = field(default_factory=list)
    whole_images: int = 0
    per_image: PerImageStats | None = None


def score_model(
    cfg: EvaluateConfig, model: str | Path, data: str, *, cache_dir: str | None = None
) -> Scores:
    """Score ``model`` (a ``model.pt``) on ``cfg.split`` of dataset version ``data``.

    Raises:
        ValueError: the model was trained on another label layout than the dataset, the
            split is empty, or the file is not a classifier export (names it and the fix).
    """
    device = resolve_device(cfg.device)
    info = DatasetInfo.load(data)
    net, meta = load_exported_model(str(model), device)
    if list(meta["attribute_names"]) != list(info.attribute_names) or list(
        meta["category_names"]
    ) != list(info.category_names):
        raise ValueError(
            f"model {model} was trained on another label layout than dataset {info.version}. "
            "Fix: evaluate on the dataset version the model was trained on (or a descendant)"
        )
    if info.split_count(cfg.split) == 0:
        raise ValueError(f"dataset {info.version} has no {cfg.split} images. Fix: use split=val")
    pre = meta["preprocessing"]

    def accumulators() -> tuple[AttributeMetrics | None, CategoryMetrics | None]:
        attr = (
            AttributeMetrics(
                info.attribute_groups,
                train_pos_counts=info.train_pos_counts.tolist(),
                tail_threshold=cfg.tail_threshold,
                ks=cfg.ks,
            )
            if info.num_attributes
            else None
        )
        cat = CategoryMetrics(info.num_categories, ks=cfg.ks) if info.num_categories else None
        return attr, cat

    attr_m, cat_m = accumulators()
    loader = make_loader(
        data,
        cfg.split,
        batch_size=cfg.batch_size,
        cache_dir=cache_dir,
        train=False,
        seed=0,
        epoch=0,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )

    def predict(batches: Any, attr: AttributeMetrics | None, cat: CategoryMetrics | None) -> int:
        return predict_split(
            net,
            batches,
            device=device,
            image_size=pre["image_size"],
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            attr_metrics=attr,
            cat_metrics=cat,
            bf16=use_bf16("auto", device),
        )

    images = predict(loader, attr_m, cat_m)
    scores = Scores(
        metrics={},
        images=images,
        dataset_version=info.version,
        model_meta=meta,
        attribute_names=list(info.attribute_names),
        category_names=list(info.category_names),
    )
    if attr_m is not None:
        scores.metrics.update(attr_m.compute())
        scores.per_attribute = attr_m.per_attribute()
        scores.tail_attributes = attr_m.num_tail_attributes
    if cat_m is not None:
        scores.metrics.update(cat_m.compute())
        scores.confusion = cat_m.confusion_matrix()
    scores.per_image = PerImageStats.collect(attr_m, cat_m)
    if cfg.whole_images > 0:
        # The same metrics on whole photos, squashed to the input as pyfunc does without
        # a bbox: what a served model gets when the caller knows no box.
        whole_attr, whole_cat = accumulators()
        whole = WholeImages(
            loader.dataset,
            readable_source(loader.manifest.source),
            limit=cfg.whole_images,
            image_size=loader.manifest.image_size,
            batch_size=cfg.batch_size,
        )
        scored = predict(whole, whole_attr, whole_cat)
        if scored:
            scores.whole_images = scored
            for acc in (whole_attr, whole_cat):
                if acc is not None:
                    scores.metrics.update({f"whole/{k}": v for k, v in acc.compute().items()})
    return scores
