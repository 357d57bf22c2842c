"""DeepFashion-C annotation readers, validation and join (fashion_attr.data.annotations)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fashion_attr.data.annotations import (
    ATTR_CLOTH,
    ATTR_IMG,
    BBOX,
    CATEGORY_CLOTH,
    CATEGORY_IMG,
    EVAL_PARTITION,
    HEADERS,
    AnnotationError,
    Attribute,
    Category,
    ImageRecord,
    clamp_bbox,
    iter_attr_img,
    iter_bbox,
    iter_category_img,
    iter_partition,
    load_annotations,
    load_annotations_from_dir,
    read_attr_cloth,
    read_category_cloth,
    write_annotation_file,
)
from hypothesis import given, settings
from hypothesis import strategies as st

COMPONENTS = Path(__file__).resolve().parents[1] / "components"

IMGS = [
    "img/Sheer_Pleated-Front_Blouse/img_00000001.jpg",
    "img/Sheer_Pleated-Front_Blouse/img_00000002.jpg",
    "img/Denim_Mini_Skirt/img_00000001.jpg",
    "img/Floral_Maxi_Dress/img_00000001.jpg",
]


def lines(*rows: str) -> list[str]:
    return [r + "\n" for r in rows]


def raises_at(exc: pytest.ExceptionInfo[AnnotationError], file: str, line: int | None) -> str:
    """The error names the file and the line, in the attributes and in the message."""
    e = exc.value
    assert e.file == file
    assert e.line == line
    text = str(e)
    assert text.startswith(f"{file}:{line}: " if line is not None else f"{file}: ")
    assert "Fix: " in text
    return text


# --------------------------------------------------------------------- error type


def test_error_format_and_pickle() -> None:
    e = AnnotationError("Anno/list_bbox.txt", 7, "box is empty", "fix the box")
    assert str(e) == "Anno/list_bbox.txt:7: box is empty. Fix: fix the box"
    assert isinstance(e, ValueError)
    e2 = AnnotationError("Anno/x.txt", None, "file not found", "add it")
    assert str(e2) == "Anno/x.txt: file not found. Fix: add it"
    back = pickle.loads(pickle.dumps(e))
    assert (back.file, back.line, back.message, back.fix) == (e.file, 7, e.message, e.fix)
    assert str(back) == str(e)


# --------------------------------------------------------------------- small files


def test_read_category_cloth_good() -> None:
    cats = read_category_cloth(
        lines("3", "category_name  category_type", "Anorak   1", "Capris  2", "Caftan       3", "")
    )
    assert cats == [Category("Anorak", 1), Category("Capris", 2), Category("Caftan", 3)]


def test_read_category_cloth_bad_type_and_duplicate() -> None:
    with pytest.raises(AnnotationError) as exc:
        read_category_cloth(lines("2", "category_name  category_type", "Anorak 1", "Capris 4"))
    assert "category_type 4" in raises_at(exc, CATEGORY_CLOTH, 4)
    with pytest.raises(AnnotationError) as exc:
        read_category_cloth(lines("2", "category_name  category_type", "Tee 1", "Tee 1"))
    assert "first on line 3" in raises_at(exc, CATEGORY_CLOTH, 4)


def test_read_attr_cloth_names_with_spaces() -> None:
    attrs = read_attr_cloth(
        lines(
            "4",
            "attribute_name  attribute_type",
            "abstract chevron print 1    1",
            "  a-line                    3",
            "long sleeve\t3",
            "faux   fur  2   ",
        )
    )
    assert attrs == [
        Attribute("abstract chevron print 1", 1),
        Attribute("a-line", 3),
        Attribute("long sleeve", 3),
        Attribute("faux   fur", 2),  # inner spacing kept verbatim, ends trimmed
    ]


def test_read_attr_cloth_bad_group_and_missing_type() -> None:
    with pytest.raises(AnnotationError) as exc:
        read_attr_cloth(lines("1", "attribute_name  attribute_type", "floral 6"))
    assert "attribute_type 6" in raises_at(exc, ATTR_CLOTH, 3)
    with pytest.raises(AnnotationError) as exc:
        read_attr_cloth(lines("1", "attribute_name  attribute_type", "floral"))
    assert "expected 2 fields" in raises_at(exc, ATTR_CLOTH, 3)
    with pytest.raises(AnnotationError) as exc:
        read_attr_cloth(lines("1", "attribute_name  attribute_type", "long sleeve three"))
    assert "must be an integer" in raises_at(exc, ATTR_CLOTH, 3)


# --------------------------------------------------------------------- layout rules


def test_count_mismatch_fewer_records_names_line_1() -> None:
    src = lines("3", "image_name  evaluation_status", f"{IMGS[0]} train", f"{IMGS[1]} val")
    it = iter_partition(src)
    assert next(it)[1] == IMGS[0]  # streams: the first records come out before the check
    with pytest.raises(AnnotationError) as exc:
        list(it)
    text = raises_at(exc, EVAL_PARTITION, 1)
    assert "declares 3 records but the file has 2" in text
    assert "expected 3, actual 2" in text


def test_count_mismatch_more_records_names_line_1() -> None:
    src = lines("1", "image_name  evaluation_status", f"{IMGS[0]} train", f"{IMGS[1]} val")
    with pytest.raises(AnnotationError) as exc:
        list(iter_partition(src))
    assert "record 2 is on line 4" in raises_at(exc, EVAL_PARTITION, 1)


def test_line_1_not_a_count_and_missing_header() -> None:
    with pytest.raises(AnnotationError) as exc:
        list(iter_partition(lines("image_name  evaluation_status", f"{IMGS[0]} train")))
    assert "record count" in raises_at(exc, EVAL_PARTITION, 1)
    with pytest.raises(AnnotationError) as exc:
        list(iter_partition(lines("1", f"{IMGS[0]} train")))
    assert "column names" in raises_at(exc, EVAL_PARTITION, 2)
    with pytest.raises(AnnotationError) as exc:
        list(iter_partition([]))
    assert "empty" in raises_at(exc, EVAL_PARTITION, 1)


def test_blank_trailing_lines_and_whitespace_runs_are_fine() -> None:
    src = lines("2", "image_name  evaluation_status", f"{IMGS[0]}\t\t train  ", f"{IMGS[1]}   test")
    src += ["\n", "   \n", ""]
    assert list(iter_partition(src, "p.txt")) == [(3, IMGS[0], "train"), (4, IMGS[1], "test")]


def test_utf8_bom_before_the_count_is_tolerated() -> None:
    src = lines("\ufeff1", "image_name  evaluation_status", f"{IMGS[0]} val")
    assert list(iter_partition(src)) == [(3, IMGS[0], "val")]


def test_non_utf8_line_names_the_line() -> None:
    src = [b"1\n", b"image_name  category_label\n", b"img/caf\xe9.jpg 1\n"]
    with pytest.raises(AnnotationError) as exc:
        list(iter_category_img(src, 3))
    assert "UTF-8" in raises_at(exc, CATEGORY_IMG, 3)


def test_bytes_lines_are_accepted() -> None:
    src = [b"1\n", b"image_name  category_label\n", IMGS[0].encode() + b"  2\n"]
    assert list(iter_category_img(src, 3)) == [(3, IMGS[0], 1)]


# --------------------------------------------------------------------- per-image files


def test_iter_category_img_good_and_out_of_range() -> None:
    src = lines("2", "image_name  category_label", f"{IMGS[0]}  1", f"{IMGS[1]}  50")
    assert list(iter_category_img(src, 50)) == [(3, IMGS[0], 0), (4, IMGS[1], 49)]
    for bad in ("51", "0", "-3"):
        src = lines("2", "image_name  category_label", f"{IMGS[0]}  1", f"{IMGS[1]}  {bad}")
        with pytest.raises(AnnotationError) as exc:
            list(iter_category_img(src, 50))
        assert "out of range 1..50" in raises_at(exc, CATEGORY_IMG, 4)


def test_iter_category_img_wrong_fields_and_non_integer() -> None:
    src = lines("1", "image_name  category_label", f"{IMGS[0]}  1 7")
    with pytest.raises(AnnotationError) as exc:
        list(iter_category_img(src, 50))
    assert "expected 2 fields (image_name category_label), found 3" in raises_at(
        exc, CATEGORY_IMG, 3
    )
    src = lines("1", "image_name  category_label", f"{IMGS[0]}  1.5")
    with pytest.raises(AnnotationError) as exc:
        list(iter_category_img(src, 50))
    assert "must be an integer" in raises_at(exc, CATEGORY_IMG, 3)


def test_iter_bbox_good_and_bad() -> None:
    src = lines("2", HEADERS[BBOX], f"{IMGS[0]}  72 79 232 273", f"{IMGS[1]} -5 0 300 301")
    assert list(iter_bbox(src)) == [
        (3, IMGS[0], (72, 79, 232, 273)),
        (4, IMGS[1], (-5, 0, 300, 301)),
    ]
    src = lines("1", HEADERS[BBOX], f"{IMGS[0]}  72 79 232")
    with pytest.raises(AnnotationError) as exc:
        list(iter_bbox(src))
    assert "expected 5 fields" in raises_at(exc, BBOX, 3)
    src = lines("1", HEADERS[BBOX], f"{IMGS[0]}  72 79 x 273")
    with pytest.raises(AnnotationError) as exc:
        list(iter_bbox(src))
    assert "'x_2' must be an integer" in raises_at(exc, BBOX, 3)
    # x_2 <= x_1 cannot be repaired by clamping: rejected at read time already.
    src = lines("1", HEADERS[BBOX], f"{IMGS[0]}  72 79 72 273")
    with pytest.raises(AnnotationError) as exc:
        list(iter_bbox(src))
    assert "empty" in raises_at(exc, BBOX, 3)


def test_iter_partition_bad_status() -> None:
    src = lines("1", HEADERS[EVAL_PARTITION], f"{IMGS[0]}  validation")
    with pytest.raises(AnnotationError) as exc:
        list(iter_partition(src))
    assert "'validation'" in raises_at(exc, EVAL_PARTITION, 3)


def test_clamp_bbox_values() -> None:
    # Reaches past the left, top and right edges of a 200 x 300 image.
    assert clamp_bbox((-5, -1, 230, 120), 200, 300, BBOX, 9) == (0, 0, 200, 120)
    assert clamp_bbox((10, 20, 30, 40), 200, 300, BBOX, 9) == (10, 20, 30, 40)
    with pytest.raises(AnnotationError) as exc:
        clamp_bbox((210, 20, 260, 40), 200, 300, BBOX, 9)  # entirely right of the image
    assert "(200, 20, 200, 40)" in raises_at(exc, BBOX, 9)
    with pytest.raises(AnnotationError) as exc:
        clamp_bbox((10, -50, 30, -2), 200, 300, BBOX, 11)  # entirely above
    raises_at(exc, BBOX, 11)


# --------------------------------------------------------------------- list_attr_img


ATTR_HEAD = HEADERS[ATTR_IMG]


def test_iter_attr_img_positives_unknown_and_layouts() -> None:
    src = lines(
        "4",
        ATTR_HEAD,
        f"{IMGS[0]}        -1 -1  1 -1  1",  # shipped fixed-width layout
        f"{IMGS[1]}  1 -1 -1  0 -1",  # first label positive, one unknown
        f"{IMGS[2]}\t-1\t1  -1 -1 -1   ",  # tabs and runs of spaces
        f"{IMGS[3]} 0 0 0 0 0",
    )
    out = [(ln, name, p.tolist(), u.tolist()) for ln, name, p, u in iter_attr_img(src, 5)]
    assert out == [
        (3, IMGS[0], [2, 4], []),
        (4, IMGS[1], [0], [3]),
        (5, IMGS[2], [1], []),
        (6, IMGS[3], [], [0, 1, 2, 3, 4]),
    ]
    _, _, p, u = next(iter_attr_img(src, 5))
    assert p.dtype == np.int16 and u.dtype == np.int16


@pytest.mark.parametrize("bad", ["2", "-2", "11", "10", "+1", "-0", "x", "1.0", "--1", "1-1"])
def test_iter_attr_img_label_outside_set(bad: str) -> None:
    src = lines("2", ATTR_HEAD, f"{IMGS[0]} -1 -1 1", f"{IMGS[1]} -1 {bad} 1")
    it = iter_attr_img(src, 3)
    next(it)
    with pytest.raises(AnnotationError) as exc:
        next(it)
    text = raises_at(exc, ATTR_IMG, 4)
    assert IMGS[1] in text
    assert "attribute 2 (field 3)" in text or "expected 4 fields" in text


def test_iter_attr_img_label_2_message() -> None:
    src = lines("1", ATTR_HEAD, f"{IMGS[0]} -1  2  1")
    with pytest.raises(AnnotationError) as exc:
        list(iter_attr_img(src, 3))
    assert "label '2'" in raises_at(exc, ATTR_IMG, 3)
    assert "outside {-1, 0, 1}" in str(exc.value)


@pytest.mark.parametrize("row", [f"{IMGS[0]} -1 1", f"{IMGS[0]} -1 1 1 -1", f"{IMGS[0]}"])
def test_iter_attr_img_wrong_number_of_labels(row: str) -> None:
    with pytest.raises(AnnotationError) as exc:
        list(iter_attr_img(lines("1", ATTR_HEAD, row), 3))
    assert "expected 4 fields" in raises_at(exc, ATTR_IMG, 3)


def test_iter_attr_img_fixed_width_extra_field_is_not_swallowed() -> None:
    # 3 labels in the shipped layout plus a junk 4th: must not pass the fast path.
    src = lines("1", ATTR_HEAD, f"{IMGS[0]} -1  1 -1  1")
    with pytest.raises(AnnotationError) as exc:
        list(iter_attr_img(src, 3))
    assert "found 5" in raises_at(exc, ATTR_IMG, 3)


TOKENS = ["-1", "1", "0", " 1", "2", "11", "-0", "+1", "- 1", "--1", "x", "1-1", "01", "10"]


@settings(max_examples=300, deadline=None)
@given(
    toks=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12),
    seps=st.lists(st.sampled_from([" ", "  ", "\t", " \t "]), min_size=12, max_size=12),
    n=st.integers(1, 12),
)
def test_iter_attr_img_matches_reference_parser(toks: list[str], seps: list[str], n: int) -> None:
    """Whatever the fast paths do, the result equals a naive token-by-token reading."""
    row = IMGS[0] + "".join(s + t for s, t in zip(seps, toks, strict=False))
    fields = row.split()[1:]
    valid = len(fields) == n and all(f in ("-1", "0", "1") for f in fields)
    src = lines("1", ATTR_HEAD, row)
    if valid:
        ((_, _, p, u),) = list(iter_attr_img(src, n))
        assert p.tolist() == [j for j, f in enumerate(fields) if f == "1"]
        assert u.tolist() == [j for j, f in enumerate(fields) if f == "0"]
    else:
        with pytest.raises(AnnotationError) as exc:
            list(iter_attr_img(src, n))
        assert exc.value.line == 3


def test_iter_attr_img_streams_lazily() -> None:
    def source():
        yield "3\n"
        yield ATTR_HEAD + "\n"
        yield f"{IMGS[0]} -1  1\n"
        raise RuntimeError("read past the first record")

    it = iter_attr_img(source(), 2)
    assert next(it)[2].tolist() == [1]


# --------------------------------------------------------------------- join


CATS = [["Blouse", 1], ["Skirt", 2], ["Dress", 3]]
ATTRS = [["floral", 1], ["denim", 2], ["long sleeve", 3], ["button front", 4], ["red", 5]]


def write_dataset(root: Path, drop: dict[str, str] | None = None) -> Path:
    """A 4-image dataset; ``drop`` = {file: image} leaves that image out of that file."""
    drop = drop or {}

    def rows(file: str, recs: list[list[object]]) -> list[list[object]]:
        return [r for r in recs if drop.get(file) != r[0]]

    write_annotation_file(root / CATEGORY_CLOTH, HEADERS[CATEGORY_CLOTH], CATS)
    write_annotation_file(root / ATTR_CLOTH, HEADERS[ATTR_CLOTH], ATTRS)
    cat = [[IMGS[0], 1], [IMGS[1], 1], [IMGS[2], 2], [IMGS[3], 3]]
    write_annotation_file(root / CATEGORY_IMG, HEADERS[CATEGORY_IMG], rows(CATEGORY_IMG, cat))
    labels = [
        [IMGS[0], -1, -1, 1, 1, -1],
        [IMGS[1], 1, -1, 0, -1, -1],
        [IMGS[2], -1, 1, -1, -1, -1],
        [IMGS[3], 1, -1, -1, -1, 1],
    ]
    labels = [[r[0], *(f"{v:2d}" for v in r[1:])] for r in labels]
    write_annotation_file(root / ATTR_IMG, HEADERS[ATTR_IMG], rows(ATTR_IMG, labels))
    boxes = [[IMGS[0], 10, 20, 110, 220], [IMGS[1], -4, 0, 90, 100]]
    boxes += [[IMGS[2], 1, 2, 3, 4], [IMGS[3], 0, 0, 64, 128]]
    write_annotation_file(root / BBOX, HEADERS[BBOX], rows(BBOX, boxes))
    # The partition order differs from the other files' order on purpose.
    part = [[IMGS[2], "val"], [IMGS[0], "train"], [IMGS[1], "train"], [IMGS[3], "test"]]
    write_annotation_file(
        root / EVAL_PARTITION, HEADERS[EVAL_PARTITION], rows(EVAL_PARTITION, part)
    )
    return root


def test_write_annotation_file_layout_and_count_override(tmp_path: Path) -> None:
    p = write_annotation_file(tmp_path / "a.txt", ["image_name", "x"], [["img/a.jpg", 1], ["b", 2]])
    assert p.read_text() == "2\nimage_name  x\nimg/a.jpg 1\nb         2\n"
    p = write_annotation_file(tmp_path / "b.txt", "h", [["a", 1]], count=5, align=False)
    assert p.read_text() == "5\nh\na 1\n"


def test_load_annotations_joins_in_partition_order(tmp_path: Path) -> None:
    index = load_annotations_from_dir(write_dataset(tmp_path))
    assert index.categories == [Category("Blouse", 1), Category("Skirt", 2), Category("Dress", 3)]
    assert [a.name for a in index.attributes] == [a for a, _ in ATTRS]
    assert index.records == [
        ImageRecord(IMGS[2], 1, (1, 2, 3, 4), "val", (1,), ()),
        ImageRecord(IMGS[0], 0, (10, 20, 110, 220), "train", (2, 3), ()),
        ImageRecord(IMGS[1], 0, (-4, 0, 90, 100), "train", (0,), (2,)),
        ImageRecord(IMGS[3], 2, (0, 0, 64, 128), "test", (0, 4), ()),
    ]
    assert index.positive_counts().tolist() == [2, 1, 1, 1, 1]
    assert index.positive_counts("train").tolist() == [1, 0, 1, 1, 0]
    assert [r.name for r in index.split_records("test")] == [IMGS[3]]
    with pytest.raises(ValueError, match="train, val, test"):
        index.split_records("dev")


def test_load_annotations_with_custom_opener(tmp_path: Path) -> None:
    root = write_dataset(tmp_path)
    opened: list[str] = []

    def open_text(rel: str):
        opened.append(rel)
        return open(root / rel, encoding="utf-8")

    index = load_annotations(open_text)
    assert len(index.records) == 4
    assert sorted(opened) == sorted(
        [CATEGORY_CLOTH, ATTR_CLOTH, CATEGORY_IMG, ATTR_IMG, BBOX, EVAL_PARTITION]
    )


@pytest.mark.parametrize("file", [CATEGORY_IMG, ATTR_IMG, BBOX])
def test_image_missing_from_one_file(tmp_path: Path, file: str) -> None:
    # IMGS[0] is on line 4 of the partition file.
    with pytest.raises(AnnotationError) as exc:
        load_annotations_from_dir(write_dataset(tmp_path, {file: IMGS[0]}))
    text = raises_at(exc, EVAL_PARTITION, 4)
    assert IMGS[0] in text and file in text and "missing from" in text


def test_image_missing_from_partition(tmp_path: Path) -> None:
    # IMGS[1] is on line 4 of list_category_img.txt (read before the other per-image files).
    with pytest.raises(AnnotationError) as exc:
        load_annotations_from_dir(write_dataset(tmp_path, {EVAL_PARTITION: IMGS[1]}))
    text = raises_at(exc, CATEGORY_IMG, 4)
    assert IMGS[1] in text and EVAL_PARTITION in text


def test_duplicate_image_in_a_file(tmp_path: Path) -> None:
    root = write_dataset(tmp_path)
    boxes = [[IMGS[i], 0, 0, 5, 5] for i in (0, 1, 2, 3, 1)]
    write_annotation_file(root / BBOX, HEADERS[BBOX], boxes)
    with pytest.raises(AnnotationError) as exc:
        load_annotations_from_dir(root)
    assert "first on line 4" in raises_at(exc, BBOX, 7)


def test_bad_input_in_dataset_names_file_and_line(tmp_path: Path) -> None:
    root = write_dataset(tmp_path)
    text = (root / ATTR_IMG).read_text()
    assert text.startswith("4\n")
    (root / ATTR_IMG).write_text("5\n" + text[2:])  # count says 5, the file has 4
    with pytest.raises(AnnotationError) as exc:
        load_annotations_from_dir(root)
    assert "declares 5 records but the file has 4" in raises_at(exc, ATTR_IMG, 1)


def test_missing_file(tmp_path: Path) -> None:
    root = write_dataset(tmp_path)
    (root / BBOX).unlink()
    with pytest.raises(AnnotationError) as exc:
        load_annotations_from_dir(root)
    assert "not found" in raises_at(exc, BBOX, None)


# --------------------------------------------------------------------- scale


SCALE_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from fashion_attr.data.annotations import ATTR_IMG, iter_attr_img, load_annotations_from_dir

    def peak_mib():
        # VmHWM is this process image's own peak RSS; ru_maxrss would carry over the
        # parent's peak across fork + exec and hide the growth.
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    root = Path(sys.argv[1])
    base = peak_mib()
    t = time.perf_counter()
    n = npos = 0
    with open(root / ATTR_IMG, encoding="utf-8") as f:
        for _, _, pos, unk in iter_attr_img(f, 1000):
            n += 1
            npos += pos.size
    parse_s = time.perf_counter() - t
    parse_growth = peak_mib() - base
    t = time.perf_counter()
    index = load_annotations_from_dir(root)
    print(json.dumps({
        "lines": n, "positives_per_image": npos / n,
        "parse_lines_per_s": n / parse_s, "parse_peak_rss_growth_mib": parse_growth,
        "load_s": time.perf_counter() - t, "records": len(index.records),
        "load_peak_rss_growth_mib": peak_mib() - base, "baseline_mib": base,
    }))
    """
)


@pytest.mark.slow
def test_real_size_attr_img_memory_and_speed(tmp_path: Path) -> None:
    """289,222 x 1,000 labels (~880 MB): streaming stays far below 1 GiB of peak RSS growth."""
    from fashion_attr.demo import write_scale_annotations

    write_scale_annotations(tmp_path, images=289_222, attributes=1000, mean_positives=3.3)
    # A fresh process, so ru_maxrss growth measures this parse alone.
    out = subprocess.run(
        [sys.executable, "-c", SCALE_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(COMPONENTS), "PATH": "/usr/bin:/bin"},
    )
    stats = json.loads(out.stdout)
    print("\nlist_attr_img.txt at real size:", json.dumps(stats, indent=1))
    assert stats["lines"] == 289_222 and stats["records"] == 289_222
    assert 3.0 < stats["positives_per_image"] < 3.6
    assert stats["parse_peak_rss_growth_mib"] < 1024
    assert stats["load_peak_rss_growth_mib"] < 1024
