"""Whole photos, not only garment crops: the training view and the evaluation on whole images.

- ingest keeps each source image's size beside its box, so a crop can be put back where
  it sits in its whole photo (:func:`whole_image_view`), at the scale a served model
  sees it when a request has no ``bbox``;
- ``whole_share`` shows that share of training images in that frame, seeded per sample
  (a resume draws the same), and 0 leaves the crops untouched;
- ``evaluate`` scores the same test images as whole photos read from the source
  (``whole/...`` metrics and a crops-vs-whole table in ``report.md``), regenerating a
  demo catalog whose cache is not on this machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fashion_attr.config import EvaluateConfig, load_config
from fashion_attr.data.loader import make_loader, whole_image_view
from fashion_attr.data.shards import load_manifest
from fashion_attr.demo.sources import readable_source
from fashion_attr.steps import evaluate
from small_runs import CLF_SMALL, GAN_QUICK, run_classifier, run_gan

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_whole_image_view_puts_the_crop_where_its_box_is() -> None:
    crop = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    crop[:, 0, :] = crop[:, -1, :] = crop[:, :, 0] = crop[:, :, -1] = 40  # the border
    meta = {"bbox": [50, 25, 150, 75], "size": [200, 100]}  # x 1/4..3/4, y 1/4..3/4
    view = whole_image_view(crop, meta, np.random.default_rng(0))
    assert view.shape == crop.shape and view.dtype == torch.uint8
    inside = view[:, 8:24, 8:24].float()
    assert inside.mean() > 100  # the garment, shrunk to its place
    outside = torch.cat([view[:, :8].flatten(1), view[:, 24:].flatten(1)], dim=1)
    assert torch.all(outside == 40)  # the border colour fills the unknown surroundings
    # A record without the size: a random place and scale, still the whole frame.
    other = whole_image_view(crop, {"bbox": [1, 2, 3, 4]}, np.random.default_rng(1))
    assert other.shape == crop.shape and (other == 40).any()


def test_ingest_records_each_image_size_and_whole_share_is_seeded(demo_version: str) -> None:
    loader = make_loader(demo_version, "train", batch_size=8, train=True, seed=3)
    _, meta = loader.dataset.read_raw(0)
    assert len(meta["size"]) == 2 and meta["size"][0] >= meta["bbox"][2]
    plain = next(iter(make_loader(demo_version, "train", batch_size=8, seed=3)))[0]
    none = next(iter(make_loader(demo_version, "train", batch_size=8, seed=3, whole_share=0)))[0]
    assert torch.equal(plain, none)  # share 0: exactly the crops of before
    a = next(iter(make_loader(demo_version, "train", batch_size=8, seed=3, whole_share=1.0)))[0]
    b = next(iter(make_loader(demo_version, "train", batch_size=8, seed=3, whole_share=1.0)))[0]
    assert torch.equal(a, b) and not torch.equal(a, plain)
    with pytest.raises(ValueError, match="whole_share"):
        make_loader(demo_version, "train", batch_size=8, whole_share=1.5)


@pytest.fixture(scope="module")
def model(demo_version: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("whole")
    gan = run_gan(demo_version, work / "gan", GAN_QUICK)
    clf = run_classifier(
        demo_version, work / "clf", [*CLF_SMALL, "whole_share=0.3"], generator=gan.generator
    )
    return clf.model


def test_evaluate_scores_whole_photos_of_the_test_split(
    model: str, demo_version: str, tmp_path: Path
) -> None:
    cfg = load_config(EvaluateConfig, preset="tiny", overrides=["num_workers=0"])
    result = evaluate.run(cfg, model, demo_version, str(tmp_path / "eval"))
    whole = {k: v for k, v in result.metrics.items() if k.startswith("whole/")}
    assert {"whole/cat_top1_acc", "whole/attr_recall@3/all"} <= set(whole)
    assert any(whole[k] != result.metrics[k[len("whole/") :]] for k in whole)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["extra"]["whole_images"] == result.images  # every test image was found
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Garment crops vs whole photos" in report
    off = load_config(EvaluateConfig, preset="tiny", overrides=["whole_images=0"])
    plain = evaluate.run(off, model, demo_version, str(tmp_path / "eval0"))
    assert not any(k.startswith("whole/") for k in plain.metrics)
    assert "Garment crops vs whole" not in (tmp_path / "eval0" / "report.md").read_text()


def test_a_demo_source_not_on_this_machine_is_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_version: str
) -> None:
    monkeypatch.setenv("FA_CACHE_DIR", str(tmp_path / "cache"))
    gone = "/elsewhere/cache/demo/images-40-seed-3"
    root = Path(readable_source(gone))
    assert root.name == "images-40-seed-3" and (root / "Img").is_dir()
    assert readable_source(str(root)) == str(root)
    source = load_manifest(demo_version).source
    assert readable_source(source) == source  # present: used as it is
    shutil.rmtree(root)
