"""Step tests of ``evaluate`` on a hand-made dataset and a model with known logits.

The dataset (DeepFashion-C layout, written here) has 3 categories, 4 attributes
(print, floral: texture; denim: fabric; red: style), 4 train, 1 val and 3 test
images. The model is a ``tiny`` classifier whose head weights are zero, so its
logits are its biases whatever the image: attributes (2, 1, 0, -1), categories
(0.5, 1.5, -1). Every expected number below is worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from fashion_attr.checkpoint import load_artifact, save_artifact
from fashion_attr.data.annotations import (
    ATTR_CLOTH,
    ATTR_IMG,
    BBOX,
    CATEGORY_CLOTH,
    CATEGORY_IMG,
    EVAL_PARTITION,
    HEADERS,
    write_annotation_file,
)
from fashion_attr.steps import evaluate
from PIL import Image
from small_runs import run_classifier, run_evaluate

CATEGORIES = [("Tee", 1), ("Skirt", 2), ("Dress", 3)]
ATTRIBUTES = [("print", 1), ("floral", 1), ("denim", 2), ("red", 5)]
# name, split, category (1-based), labels for (print, floral, denim, red)
IMAGES = [
    ("img/Item_A/img_00000001.jpg", "train", 1, (1, 1, -1, -1)),
    ("img/Item_A/img_00000002.jpg", "train", 2, (1, -1, 1, -1)),
    ("img/Item_B/img_00000003.jpg", "train", 2, (1, -1, -1, -1)),
    ("img/Item_B/img_00000004.jpg", "train", 3, (-1, 1, -1, 1)),
    ("img/Item_C/img_00000005.jpg", "val", 1, (1, -1, -1, -1)),
    ("img/Item_D/img_00000006.jpg", "test", 2, (1, -1, 1, -1)),  # T1
    ("img/Item_D/img_00000007.jpg", "test", 1, (-1, 1, -1, 1)),  # T2
    ("img/Item_E/img_00000008.jpg", "test", 3, (-1, -1, 1, 0)),  # T3 (red unknown)
]
ATTR_BIAS = [2.0, 1.0, 0.0, -1.0]
CAT_BIAS = [0.5, 1.5, -1.0]


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_dataset(root: Path, attributes: list[tuple[str, int]]) -> Path:
    for i, (name, *_rest) in enumerate(IMAGES):
        path = root / "Img" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 48), (40 * i, 100, 200 - 20 * i)).save(path, quality=95)
    write_annotation_file(root / CATEGORY_CLOTH, HEADERS[CATEGORY_CLOTH], CATEGORIES)
    write_annotation_file(root / ATTR_CLOTH, HEADERS[ATTR_CLOTH], attributes)
    write_annotation_file(
        root / CATEGORY_IMG, HEADERS[CATEGORY_IMG], [(n, c) for n, _, c, _ in IMAGES]
    )
    write_annotation_file(
        root / ATTR_IMG, HEADERS[ATTR_IMG], [(n, *labels) for n, _, _, labels in IMAGES]
    )
    write_annotation_file(root / BBOX, HEADERS[BBOX], [(n, 2, 2, 38, 46) for n, *_rest in IMAGES])
    write_annotation_file(
        root / EVAL_PARTITION, HEADERS[EVAL_PARTITION], [(n, s) for n, s, _, _ in IMAGES]
    )
    return root


@pytest.fixture(scope="module")
def hand_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from fashion_attr.data.ingest import ingest_full

    root = tmp_path_factory.mktemp("hand")
    data = ingest_full(
        _write_dataset(root / "src", ATTRIBUTES), root / "versions", image_size=32, progress=False
    ).uri
    # A real export (format, preprocessing, label layout) from a one-step run ...
    out = root / "clf"
    run_classifier(
        data,
        out,
        ["deact.enabled=false", "batch_size=4", "max_steps=1", "image_size=16", "export=last"],
    )
    # ... whose heads are then set by hand: zero weights, known biases.
    blob = load_artifact(out / "model.pt")
    sd = blob["state_dict"]
    for head, bias in (("attr_head", ATTR_BIAS), ("cat_head", CAT_BIAS)):
        weight_key = next(k for k in sd if k.startswith(head) and k.endswith("weight"))
        bias_key = next(k for k in sd if k.startswith(head) and k.endswith("bias"))
        sd[weight_key] = torch.zeros_like(sd[weight_key])
        sd[bias_key] = torch.tensor(bias)
    save_artifact(out / "model.pt", blob)
    return {"data": data, "model": str(out / "model.pt"), "root": root}


def test_hand_computed_metrics(hand_case: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    summary = run_evaluate(
        hand_case["model"], hand_case["data"], out, ["ks=[1, 2]", "tail_threshold=2"]
    )
    assert summary.images == 3
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    # Ranking of every image: print (2) > floral (1) > denim (0) > red (-1).
    # Test positives: T1 {print, denim}, T2 {floral, red}, T3 {denim} -> 5 in all.
    # all@1 = {print}: T1 1 hit                                    -> 1/5
    # all@2 = {print, floral}: T1 1, T2 1                           -> 2/5
    assert m["attr_recall@1/all"] == pytest.approx(1 / 5)
    assert m["attr_recall@2/all"] == pytest.approx(2 / 5)
    # texture {print, floral}: T1 (1 positive) and T2 (1); T3 has none and is left out.
    # @1 = print: T1 hit -> 1/2; @2 takes the whole group -> 2/2.
    assert m["attr_recall@1/texture"] == pytest.approx(1 / 2)
    assert m["attr_recall@2/texture"] == pytest.approx(1.0)
    # fabric {denim}: positives T1, T3, both hit.  style {red}: T2 hit (T3 unknown).
    assert m["attr_recall@1/fabric"] == pytest.approx(1.0)
    assert m["attr_recall@1/style"] == pytest.approx(1.0)
    # shape and part have no attributes here: undefined (null in JSON).
    assert m["attr_recall@1/shape"] is None and m["attr_recall@1/part"] is None
    # Train positives: print 3, floral 2, denim 1, red 1; tail (< 2) = {denim, red}.
    # tail@1 = denim: T1 hit, T2 (red positive) miss, T3 hit -> 2/3; @2 = all -> 3/3.
    assert m["attr_recall@1/tail"] == pytest.approx(2 / 3)
    assert m["attr_recall@2/tail"] == pytest.approx(1.0)
    # Categories rank Skirt (1.5) > Tee (0.5) > Dress (-1): T1 Skirt top-1, T2 Tee top-2,
    # T3 Dress top-3.
    assert m["cat_top1_acc"] == pytest.approx(1 / 3)
    assert m["cat_top2_acc"] == pytest.approx(2 / 3)
    # sigmoid >= 0.5 for logits 2, 1, 0 (all positive), < 0.5 for -1 (all negative):
    # every attribute has TPR + TNR = 1 -> class-balanced accuracy 0.5 everywhere.
    assert m["cb_acc/all"] == pytest.approx(0.5)
    assert m["cb_acc/texture"] == pytest.approx(0.5)

    extra = json.loads((out / "metrics.json").read_text())["extra"]
    assert extra["images"] == 3 and extra["split"] == "test" and extra["tail_attributes"] == 2

    rows = list(csv.DictReader((out / "per_attribute.csv").open()))
    assert len(rows) == 4
    by_name = {r[next(k for k in r if "name" in k)]: r for r in rows}
    assert set(by_name) == {"print", "floral", "denim", "red"}
    # red: test positives T2 only (T3 unknown), negatives T1; predicted negative.
    assert int(by_name["red"]["test_positives"]) == 1
    assert int(by_name["red"]["test_negatives"]) == 1
    assert float(by_name["red"]["tpr"]) == 0.0 and float(by_name["red"]["tnr"]) == 1.0
    assert float(by_name["print"]["tpr"]) == 1.0 and float(by_name["print"]["tnr"]) == 0.0
    # Confusion and plots exist and are PNGs.
    for name in ("prob_vs_frequency.png", "group_recall.png", "confusion.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    report = (out / "report.md").read_text()
    assert "20.00" in report  # all@1 = 20 % in the paper-style table
    assert "Comparison" not in report
    assert summary.metrics_uri == str(out / "metrics.json")


def test_compare_to_adds_a_comparison_table(
    hand_case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion = tmp_path / "champion.json"
    champion.write_text(
        json.dumps({"metrics": {"attr_recall@1/all": 0.1, "cat_top1_acc": 0.5}, "extra": {}})
    )
    out = tmp_path / "eval"
    argv = ["--model", hand_case["model"], "--data", hand_case["data"], "--out", str(out)]
    argv += ["--preset", "tiny", "--set", "ks=[1, 2]", "--compare-to", str(champion)]
    assert evaluate.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 3
    report = (out / "report.md").read_text()
    assert "## Comparison: challenger vs champion" in report
    table = report.split("## Comparison: challenger vs champion")[1]
    line = next(row for row in table.splitlines() if "attr_recall@1/all" in row)
    # challenger 20.00 %, champion 10.00 %: +10.00 pp.
    assert "20.00" in line and "10.00" in line and "+10.00" in line
    cat_line = next(row for row in table.splitlines() if "cat_top1_acc" in row)
    assert "33.33" in cat_line and "50.00" in cat_line and "-16.67" in cat_line

    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert evaluate.main([*argv[:-1], str(bad)]) == 2
    assert "field 'metrics' is missing" in capsys.readouterr().err


def test_model_for_another_label_layout_is_refused(
    hand_case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fashion_attr.data.ingest import ingest_full

    renamed = [("print", 1), ("floral", 1), ("denim", 2), ("blue", 5)]
    other = ingest_full(
        _write_dataset(tmp_path / "src", renamed), tmp_path / "v", image_size=32, progress=False
    ).uri
    out = tmp_path / "eval"
    code = evaluate.main(["--model", hand_case["model"], "--data", other, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "another label layout" in err and "Fix:" in err
    assert not out.exists()


def test_not_a_model_file_is_refused(
    hand_case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "model.pt"
    save_artifact(fake, {"format": "something-else"})
    code = evaluate.main(["--model", str(fake), "--data", hand_case["data"], "--out", "x"])
    assert code == 2
    assert "not a classifier artifact" in capsys.readouterr().err
