"""Tests of fashion_attr.evaluation.report: files written, numbers shown, valid JSON/PNG."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from fashion_attr.evaluation.metrics import AttributeMetrics, CategoryMetrics
from fashion_attr.evaluation.report import (
    markdown_report,
    plot_confusion,
    plot_group_recall,
    plot_prob_vs_frequency,
    write_metrics_json,
    write_per_attribute_csv,
    write_report,
)
from PIL import Image

GROUPS = ("texture", "fabric", "shape", "part", "style")

# The paper's HABP row (Table 1 as far as it can be read) and CE baseline, as fractions.
HABP = {
    "cat_top1_acc": 0.75,
    "cat_top3_acc": 0.8990,
    "cat_top5_acc": 0.9500,
    "attr_recall@3/all": 0.5217,
    "attr_recall@5/all": 0.6207,
    "attr_recall@3/texture": 0.4000,
    "attr_recall@5/texture": 0.5000,
    "attr_recall@3/tail": float("nan"),
    "cb_acc/all": 0.7729,
    "cb_acc/fabric": 0.7,
    "map/all": 0.3125,
}
BASELINE = {
    "cat_top3_acc": 0.9093,
    "cat_top5_acc": 0.9573,
    "attr_recall@3/all": 0.4984,
    "attr_recall@5/all": 0.5954,
    "cb_acc/all": 0.7673,
}


def _line_starting(md: str, prefix: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r}"
    return lines[0]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_write_metrics_json_nan_is_null(tmp_path):
    path = write_metrics_json(
        tmp_path / "m.json",
        {"a": 0.5, "b": float("nan"), "c": np.float32(0.25)},
        {"images": np.int64(3), "inf": float("inf"), "nested": [float("nan"), 1]},
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    assert doc == {
        "metrics": {"a": 0.5, "b": None, "c": 0.25},
        "extra": {"images": 3, "inf": None, "nested": [None, 1]},
    }
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_markdown_tables_show_the_numbers():
    md = markdown_report(HABP, [], ["Tee", "Dress"], title="Run 7", model_name="HABP")
    assert md.startswith("# Run 7\n")
    header = _cells(_line_starting(md, "| Model | Category top-3"))
    row = _cells(_line_starting(md, "| HABP | 89.90"))
    assert len(header) == len(row) == 1 + 2 + 2 * (len(GROUPS) + 1)
    values = dict(zip(header, row, strict=True))
    assert values["Category top-3"] == "89.90"
    assert values["Category top-5"] == "95.00"
    assert values["Texture top-3"] == "40.00"
    assert values["Texture top-5"] == "50.00"
    assert values["Fabric top-3"] == "n/a"  # absent key
    assert values["All top-3"] == "52.17"
    assert values["All top-5"] == "62.07"
    cb_row = _cells(_line_starting(md, "| HABP | Class-balanced acc."))
    assert cb_row[2:] == ["n/a", "70.00", "n/a", "n/a", "n/a", "77.29"]
    map_row = _cells(_line_starting(md, "| HABP | mAP"))
    assert map_row[-1] == "31.25"
    # No training counts in the (empty) per-attribute records: no tail set.
    assert "no tail set is defined" in md


def test_markdown_comparison_deltas():
    md = markdown_report(HABP, [], [], comparison=BASELINE, model_name="HABP", comparison_name="CE")
    assert _cells(_line_starting(md, "| CE | 90.93"))[1:3] == ["90.93", "95.73"]
    assert _cells(_line_starting(md, "| attr_recall@3/all |")) == [
        "attr_recall@3/all",
        "52.17",
        "49.84",
        "+2.33",
    ]
    assert _cells(_line_starting(md, "| cat_top3_acc |"))[-1] == "-1.03"
    assert _cells(_line_starting(md, "| cb_acc/all |"))[-1] == "+0.56"
    # Present on one side only: no delta.
    assert _cells(_line_starting(md, "| map/all |")) == ["map/all", "31.25", "n/a", "n/a"]


def _hand_run():
    """Four attributes in two groups; attributes 0 and 3 are in the tail."""
    attr = AttributeMetrics([1, 1, 2, 2], train_pos_counts=[10, 200, 300, 5])
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5], [-1.0, 0.0, 3.0, 1.0]])
    targets = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]])
    attr.update(logits, targets)
    cat = CategoryMetrics(3)
    cat.update(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([0, 1]))
    return attr, cat


def test_tail_table_and_hardest_list():
    attr, cat = _hand_run()
    metrics = {**attr.compute(), **cat.compute()}
    md = markdown_report(
        metrics,
        attr.per_attribute(),
        ["a", "b", "c"],
        model_name="M",
        attribute_names=["floral", "lace", "denim", "v-neck | deep"],
        confusion=cat.confusion_matrix(),
    )
    # Tail {0, 3}: AP of attribute 0 is 1 (pos 2.0 > neg -1.0); attribute 3: pos 0.5 below
    # neg 1.0 -> 1/2. Tail recall@3: each image ranks its 2 tail attributes (both taken).
    tail = _cells(_line_starting(md, "| M | tail (2)"))
    assert tail[2:] == ["100.00", "100.00", "75.00", "75.00"]
    # Hardest tail attribute first; "|" in a name is escaped.
    hardest = _line_starting(md, "| v-neck \\| deep |")
    assert _cells(hardest.replace("\\|", "/"))[4] == "50.00"
    # Per-category: category 1's single image is predicted as 2.
    assert _cells(_line_starting(md, "| b | 1 |")) == ["b", "1", "0.00", "c (1)"]
    assert "2 of 3 categories occur" in md


def test_per_attribute_csv(tmp_path):
    attr, _ = _hand_run()
    path = write_per_attribute_csv(
        tmp_path / "pa.csv", attr.per_attribute(), ["floral", "lace", "denim", "v-neck"]
    )
    rows = list(csv.DictReader(path.open()))
    assert [r["name"] for r in rows] == ["floral", "lace", "denim", "v-neck"]
    assert rows[3]["ap"] == "0.5"
    assert rows[3]["is_tail"] == "True"
    assert rows[0]["train_positives"] == "10"
    # Attribute 1 (lace): positive only in image 1 at logit 0.0 -> TP, negative in image 0
    # at 1.0 -> FP: TNR 0, cb 0.5.
    assert rows[1]["tnr"] == "0" and rows[1]["cb_acc"] == "0.5"
    with pytest.raises(ValueError, match="3 attribute names for 4"):
        write_per_attribute_csv(tmp_path / "x.csv", attr.per_attribute(), ["a", "b", "c"])


def test_csv_nan_is_empty_cell(tmp_path):
    recs = [{"index": 0, "group": "texture", "ap": float("nan"), "train_positives": None}]
    path = write_per_attribute_csv(tmp_path / "pa.csv", recs, ["x"])
    assert path.read_text().splitlines() == ["index,name,group,ap,train_positives", "0,x,texture,,"]


def _assert_png(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 100 and im.size[1] > 100
        arr = np.asarray(im.convert("L"))
        assert arr.std() > 0  # not a blank canvas


def test_plots_are_valid_pngs(tmp_path):
    attr, cat = _hand_run()
    metrics = attr.compute()
    _assert_png(plot_prob_vs_frequency(tmp_path / "f.png", attr.per_attribute()))
    _assert_png(plot_group_recall(tmp_path / "g.png", metrics))
    _assert_png(plot_confusion(tmp_path / "c.png", cat.confusion_matrix(), ["a", "b", "c"]))
    # Degenerate inputs still give a readable figure.
    _assert_png(plot_prob_vs_frequency(tmp_path / "f0.png", []))
    _assert_png(plot_confusion(tmp_path / "c0.png", np.zeros((3, 3), dtype=np.int64), []))
    with pytest.raises(ValueError, match="square"):
        plot_confusion(tmp_path / "bad.png", np.zeros((2, 3)), [])


def test_write_report_end_to_end(tmp_path):
    attr, cat = _hand_run()
    metrics = {**attr.compute(), **cat.compute()}
    out = tmp_path / "report"
    paths = write_report(
        out,
        metrics,
        attr.per_attribute(),
        ["floral", "lace", "denim", "v-neck"],
        ["a", "b", "c"],
        cat.confusion_matrix(),
        extra={"test_images": attr.num_images},
        comparison={"attr_recall@3/all": 0.5},
    )
    names = [p.name for p in paths]
    assert names == [
        "metrics.json",
        "report.md",
        "per_attribute.csv",
        "prob_vs_frequency.png",
        "group_recall.png",
        "confusion.png",
    ]
    assert all(p.parent == out and p.exists() for p in paths)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["extra"] == {"test_images": 2}
    assert doc["metrics"]["cat_top1_acc"] == 0.5
    assert doc["metrics"]["attr_recall@3/shape"] is None  # NaN: no shape attributes
    assert math.isnan(metrics["attr_recall@3/shape"])
    md = (out / "report.md").read_text()
    # All 4 attributes, top-3: img0 order 0, 1, 3 with positives {0, 3} -> 2; img1 order
    # 2, 3, 1 with positives {1, 2} -> 2. 4 of 4 positives.
    assert _cells(_line_starting(md, "| attr_recall@3/all |")) == [
        "attr_recall@3/all",
        "100.00",
        "50.00",
        "+50.00",
    ]
    for p in paths[3:]:
        _assert_png(p)
    # Without a confusion matrix there is no confusion plot.
    paths = write_report(tmp_path / "r2", metrics, [], [], [])
    assert [p.name for p in paths][-1] == "group_recall.png"
