"""JSON Lines catalog batches (fashion_attr.data.catalog)."""

from __future__ import annotations

import json

import pytest
from fashion_attr.data.annotations import AnnotationError, Attribute, Category
from fashion_attr.data.catalog import (
    CatalogRecord,
    close_matches,
    describe_names,
    read_catalog_jsonl,
)

NAME = "s3://bucket/batches/2026-11-01.jsonl"
CATS = [Category("Tee", 1), Category("Skirt", 2), Category("Dress", 3)]
ATTRS = [
    Attribute("floral", 1),
    Attribute("denim", 2),
    Attribute("long sleeve", 3),
    Attribute("button front", 4),
    Attribute("red", 5),
]


def read(*objs: object, cats=CATS, attrs=ATTRS) -> list[CatalogRecord]:
    rows = [o if isinstance(o, str) else json.dumps(o) for o in objs]
    return list(read_catalog_jsonl([r + "\n" for r in rows], NAME, cats, attrs))


def error(*objs: object, cats=CATS, attrs=ATTRS) -> AnnotationError:
    with pytest.raises(AnnotationError) as exc:
        read(*objs, cats=cats, attrs=attrs)
    e = exc.value
    assert e.file == NAME
    assert str(e).startswith(f"{NAME}:{e.line}: ")
    return e


GOOD = {"image": "s3://b/new/1.jpg", "category": "Dress", "attributes": ["red", "floral"]}


def test_good_records() -> None:
    recs = read(
        {**GOOD, "bbox": [10, 20, 110, 220], "split": "val"},
        "",
        {"image": "local/2.jpg", "category": "Tee", "attributes": []},
        {"image": "3.jpg", "category": "Skirt", "attributes": ["long sleeve"], "bbox": None},
        {**GOOD, "image": "4.jpg", "bbox": [10.4, 19.6, 110.5, 220.0], "split": "test"},
    )
    assert recs == [
        CatalogRecord("s3://b/new/1.jpg", 2, (0, 4), (10, 20, 110, 220), "val", (), 1),
        CatalogRecord("local/2.jpg", 0, (), None, "train", (), 3),
        CatalogRecord("3.jpg", 1, (2,), None, "train", (), 4),
        # Floats round to the nearest pixel (round-half-even: 110.5 -> 110).
        CatalogRecord("4.jpg", 2, (0, 4), (10, 20, 110, 220), "test", (), 5),
    ]


def test_duplicate_attribute_names_in_a_record_are_harmless() -> None:
    (rec,) = read({**GOOD, "attributes": ["red", "red"]})
    assert rec.positives == (4,)


def test_invalid_json() -> None:
    e = error(GOOD, '{"image": "x.jpg", "category": "Tee",')
    assert e.line == 2 and "invalid JSON" in e.message


def test_not_an_object() -> None:
    e = error(["x.jpg", "Tee"])
    assert e.line == 1 and "JSON object" in e.message


def test_missing_field() -> None:
    e = error(GOOD, {"category": "Tee", "attributes": []})
    assert e.line == 2 and "'image'" in e.message
    assert "omit both category and attributes for an unlabelled image" in e.fix


def test_records_without_labels_are_unlabelled_never_negatives() -> None:
    unlabelled, category_only, null_labels = read(
        {"image": "new/1.jpg"},
        {"image": "new/2.jpg", "category": "Tee"},
        {"image": "new/3.jpg", "category": None, "attributes": None, "split": "val"},
    )
    assert not unlabelled.labelled and unlabelled.category is None
    assert unlabelled.positives == () and unlabelled.unknown == ()
    # A category alone: known category, every attribute unknown (masked, not negative).
    assert category_only.labelled and category_only.category == 0
    assert category_only.positives == () and category_only.unknown == (0, 1, 2, 3, 4)
    assert not null_labels.labelled and null_labels.split == "val"
    # An explicitly empty list still means "all negative".
    (all_negative,) = read({"image": "x.jpg", "category": "Tee", "attributes": []})
    assert all_negative.labelled and all_negative.unknown == ()


def test_attributes_without_category_is_refused_with_the_fix() -> None:
    e = error(GOOD, {"image": "b.jpg", "attributes": ["red"]})
    assert e.line == 2 and "without a 'category'" in e.message
    assert "add the record's category" in e.fix and "unlabelled" in e.fix


def test_extra_field_suggests_close_name() -> None:
    e = error({**GOOD, "splt": "val"})
    assert "'splt'" in e.message and "did you mean 'split'" in e.message


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"image": ""}, "image"),
        ({"image": 7}, "image"),
        ({"category": 3}, "category"),
        ({"attributes": "red"}, "attributes"),
        ({"attributes": ["red", 1]}, "attributes"),
        ({"bbox": [1, 2, 3]}, "bbox"),
        ({"bbox": [1, 2, 3, "4"]}, "bbox"),
        ({"bbox": [1, 2, 3, True]}, "bbox"),
        ({"bbox": {"x1": 1}}, "bbox"),
    ],
)
def test_wrong_types(patch: dict, field: str) -> None:
    e = error(GOOD | {"image": "ok.jpg"}, {**GOOD, **patch})
    assert e.line == 2
    assert f"field '{field}'" in e.message


def test_empty_box() -> None:
    e = error({**GOOD, "bbox": [50, 10, 40, 90]})
    assert "empty" in e.message and e.line == 1


def test_bad_split() -> None:
    e = error({**GOOD, "split": "validation"})
    assert "'split'" in e.message and "validation" in e.message


def test_unknown_category_lists_valid_names_and_close_match() -> None:
    e = error({**GOOD, "category": "dres"})
    assert "unknown category 'dres'" in e.message
    assert "did you mean 'Dress'" in e.message
    assert "'Tee', 'Skirt', 'Dress'" in e.fix


def test_unknown_attribute_long_list_is_truncated() -> None:
    attrs = [Attribute(f"attr {i:02d}", 1) for i in range(30)] + [Attribute("floral print", 1)]
    e = error({**GOOD, "attributes": ["floral prnt"]}, attrs=attrs)
    assert "did you mean 'floral print'" in e.message
    assert "31 attribute names" in e.fix
    assert "'attr 19', ... and 11 more" in e.fix
    assert "'attr 20'" not in e.fix


def test_duplicate_image() -> None:
    e = error(GOOD, {**GOOD, "attributes": []})
    assert e.line == 2 and "first on line 1" in e.message


def test_name_helpers() -> None:
    assert describe_names(["a", "b", "c"], limit=2) == "'a', 'b', ... and 1 more"
    assert describe_names(["a", "b"], limit=2) == "'a', 'b'"
    assert close_matches("TEE", ["Tee", "Top"]) == ["Tee"]
    assert close_matches("zzz", ["Tee", "Top"]) == []


def test_repeated_attribute_name_in_attr_cloth_marks_all() -> None:
    attrs = [Attribute("print", 1), Attribute("floral", 1), Attribute("print", 5)]
    (rec,) = read({**GOOD, "attributes": ["print"]}, attrs=attrs)
    assert rec.positives == (0, 2)


def test_bytes_lines_and_non_utf8() -> None:
    good = json.dumps(GOOD).encode() + b"\n"
    (rec,) = read_catalog_jsonl([good], NAME, CATS, ATTRS)
    assert rec.category == 2
    with pytest.raises(AnnotationError) as exc:
        list(read_catalog_jsonl([good, b'{"image": "caf\xe9.jpg"}\n'], NAME, CATS, ATTRS))
    assert exc.value.line == 2 and "UTF-8" in exc.value.message
