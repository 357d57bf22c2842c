"""JSON Lines reader for new catalog batches (scheduled retraining).

New catalog data may arrive as a small JSON Lines file per batch instead of the
DeepFashion-C layout, one JSON object per line::

    {"image": "s3://bucket/new/0001.jpg", "category": "Tee",
     "attributes": ["floral", "long sleeve"], "bbox": [12, 8, 180, 240], "split": "train"}

Fields:

- ``image`` (required, non-empty string): a local path or an S3 URI, kept as given.
- ``category`` (string): a category name of ``list_category_cloth.txt``.
- ``attributes`` (list of strings, may be empty): the positive attributes by
  name; every attribute not listed is negative. Listing a name twice is harmless.
- ``bbox`` (optional): ``[x1, y1, x2, y2]`` in pixels with ``x2 > x1`` and
  ``y2 > y1``. Numbers may be floats (detector output); they are rounded to the
  nearest pixel. Absent or ``null`` means the whole image (``bbox=None``).
  The box is clamped to the image at crop time, like DeepFashion-C boxes.
- ``split`` (optional): ``"train"`` (default), ``"val"`` or ``"test"``.

Labels may be omitted (absent or ``null``), which is how new products arrive:

- both ``category`` and ``attributes``: a labelled record (trained on);
- ``category`` alone: the category is known and every attribute is *unknown*
  (masked out of losses and metrics, never read as a negative);
- neither: an *unlabelled* record (``labelled=False``). It is never trained or
  evaluated on; the batch audit tags it with the champion and ranks it for
  labelling (:mod:`fashion_attr.audit`);
- ``attributes`` without ``category`` is an error: every trained record needs its
  category (give it, or drop both to hand the image in unlabelled).

Names are matched exactly (case-sensitive). An unknown name is an error that
lists the valid names (the first 20 and how many more) and the closest matches.
If ``list_attr_cloth.txt`` lists one name more than once, a catalog name marks
every attribute of that name positive.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from fashion_attr.data.annotations import (
    ATTR_CLOTH,
    CATEGORY_CLOTH,
    SPLITS,
    AnnotationError,
    Attribute,
    Category,
)

REQUIRED_FIELDS: tuple[str, ...] = ("image",)
#: ``category`` and ``attributes`` may be omitted: see the module docstring.
LABEL_FIELDS: tuple[str, ...] = ("category", "attributes")
OPTIONAL_FIELDS: tuple[str, ...] = (*LABEL_FIELDS, "bbox", "split")
DEFAULT_SPLIT = "train"
#: How many valid names an "unknown name" error lists before summarising the rest.
MAX_LISTED_NAMES = 20
_EXAMPLE = (
    '{"image": "s3://bucket/img.jpg", "category": "Tee", "attributes": ["floral"], '
    '"bbox": [10, 10, 200, 300], "split": "train"}'
)


@dataclass(slots=True)
class CatalogRecord:
    """One image of a catalog batch, shaped like :class:`ImageRecord`.

    Attributes:
        image: Local path or S3 URI, as given in the file.
        category: 0-based category index; ``None`` for an unlabelled record.
        positives: Sorted 0-based indices of the listed attributes.
        bbox: ``(x1, y1, x2, y2)`` or None for the whole image.
        split: ``"train"``, ``"val"`` or ``"test"``.
        unknown: Attribute indices whose label is unknown: every attribute of a
            record that gives its category but no ``attributes``, else empty.
        line: Line of the record in its file, for later error messages.
        labelled: False for a record without labels (neither category nor
            attributes): kept out of training and evaluation, tagged by the audit.
    """

    image: str
    category: int | None
    positives: tuple[int, ...]
    bbox: tuple[int, int, int, int] | None
    split: str
    unknown: tuple[int, ...] = ()
    line: int = 0
    labelled: bool = True


def describe_names(valid: Sequence[str], limit: int = MAX_LISTED_NAMES) -> str:
    """List names for an error message: the first ``limit``, then how many more.

    Args:
        valid: The valid names, in file order.
        limit: How many names to show.

    Returns:
        E.g. ``"'Tee', 'Dress', ... and 30 more"``.
    """
    shown = ", ".join(repr(v) for v in valid[:limit])
    rest = len(valid) - limit
    return f"{shown}, ... and {rest} more" if rest > 0 else shown


def close_matches(value: str, valid: Sequence[str], n: int = 3) -> list[str]:
    """Suggest the valid names closest to a misspelt one (case-insensitive first).

    Args:
        value: The unknown name.
        valid: The valid names.
        n: Maximum number of suggestions.

    Returns:
        Up to ``n`` valid names, best first.
    """
    lowered = {v.lower(): v for v in valid}
    out: list[str] = []
    if value.lower() in lowered:
        out.append(lowered[value.lower()])
    for m in difflib.get_close_matches(value.lower(), list(lowered), n=n, cutoff=0.6):
        if lowered[m] not in out:
            out.append(lowered[m])
    return out[:n]


def _unknown_name(
    file: str, line: int, field: str, kind: str, value: str, valid: Sequence[str], source: str
) -> AnnotationError:
    close = close_matches(value, valid)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return AnnotationError(
        file,
        line,
        f"field '{field}': unknown {kind} {value!r}{hint}",
        f"use one of the {len(valid)} {kind} names of {source}: {describe_names(valid)}",
    )


def _type_error(file: str, line: int, field: str, expected: str, value: object) -> AnnotationError:
    return AnnotationError(
        file,
        line,
        f"field '{field}' must be {expected}, found {json.dumps(value)[:80]}",
        f"write '{field}' as {expected}, e.g. {_EXAMPLE}",
    )


def _parse_bbox(value: object, file: str, line: int) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    expected = "a list of 4 numbers [x1, y1, x2, y2] (or absent/null for the whole image)"
    if not isinstance(value, list) or len(value) != 4:
        raise _type_error(file, line, "bbox", expected, value)
    coords: list[int] = []
    for v in value:
        # bool is an int subclass; true/false is never a coordinate.
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _type_error(file, line, "bbox", expected, value)
        # An int is always finite (and math.isfinite overflows on one beyond 1e308).
        if isinstance(v, float) and not math.isfinite(v):
            raise _type_error(file, line, "bbox", expected, value)
        coords.append(round(v))
    x1, y1, x2, y2 = coords
    if x2 <= x1 or y2 <= y1:
        raise AnnotationError(
            file,
            line,
            f"field 'bbox': box [{x1}, {y1}, {x2}, {y2}] is empty (needs x2 > x1 and y2 > y1)",
            "give the top-left corner first and the bottom-right corner second, or omit "
            "'bbox' to use the whole image",
        )
    return x1, y1, x2, y2


def read_catalog_jsonl(
    lines: Iterable[str | bytes],
    name: str,
    categories: Sequence[Category],
    attributes: Sequence[Attribute],
) -> Iterator[CatalogRecord]:
    """Stream and validate a catalog batch in JSON Lines.

    Args:
        lines: Text lines of the file (an open file, an S3 text stream, a list).
        name: Display name of the file for errors.
        categories: The dataset's categories (names resolve to their index).
        attributes: The dataset's attributes (names resolve to their index).

    Yields:
        One :class:`CatalogRecord` per non-blank line (``labelled=False`` for a
        record without labels).

    Raises:
        AnnotationError: Invalid JSON, a line that is not an object, missing or
            extra fields, wrong types, unknown category or attribute name,
            attributes without a category, bad split, empty box, or an image
            listed twice; each names the file and line.
    """
    cat_index: dict[str, int] = {}
    for i, c in enumerate(categories):
        cat_index.setdefault(c.name, i)
    attr_index: dict[str, list[int]] = {}
    for j, a in enumerate(attributes):
        attr_index.setdefault(a.name, []).append(j)
    cat_names = [c.name for c in categories]
    attr_names = list(attr_index)
    allowed = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
    seen: dict[str, int] = {}

    for line_no, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                s = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise AnnotationError(
                    name, line_no, f"line is not UTF-8 text ({e.reason})", "save the file as UTF-8"
                ) from e
        else:
            s = raw
        if not s.strip():
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise AnnotationError(
                name,
                line_no,
                f"invalid JSON at column {e.colno}: {e.msg}",
                f"write one JSON object per line, e.g. {_EXAMPLE}",
            ) from e
        except (ValueError, RecursionError) as e:
            # json.loads raises a bare ValueError for an integer literal beyond Python's
            # 4300-digit limit and RecursionError for arrays/objects nested ~1000 deep.
            problem = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
            raise AnnotationError(
                name,
                line_no,
                f"unreadable JSON ({problem})",
                f"write one flat JSON object per line, e.g. {_EXAMPLE}",
            ) from None
        if not isinstance(obj, dict):
            raise AnnotationError(
                name,
                line_no,
                f"each line must be a JSON object, found {type(obj).__name__}",
                f"write one JSON object per line, e.g. {_EXAMPLE}",
            )
        missing = [f for f in REQUIRED_FIELDS if f not in obj]
        if missing:
            raise AnnotationError(
                name,
                line_no,
                f"missing field(s) {', '.join(repr(f) for f in missing)}",
                f"every record needs {', '.join(REQUIRED_FIELDS)} (optional: "
                f"{', '.join(OPTIONAL_FIELDS)}; omit both category and attributes for an "
                f"unlabelled image), e.g. {_EXAMPLE}",
            )
        extra = [k for k in obj if k not in allowed]
        if extra:
            guesses = [m for k in extra for m in difflib.get_close_matches(k, allowed, n=1)]
            hint = f"; did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else ""
            raise AnnotationError(
                name,
                line_no,
                f"unexpected field(s) {', '.join(repr(k) for k in extra)}{hint}",
                f"use only the fields {', '.join(allowed)}",
            )

        image = obj["image"]
        if not isinstance(image, str) or not image.strip():
            raise _type_error(name, line_no, "image", "a non-empty path or s3:// URI", image)
        try:
            image.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate escape ("\\ud800") decodes to a str that no file system
            # path, S3 key or shard name can hold: refuse it here, with the line.
            raise _type_error(
                name, line_no, "image", "a path of valid Unicode characters", image
            ) from None
        if image in seen:
            raise AnnotationError(
                name,
                line_no,
                f"image {image} is listed twice (first on line {seen[image]})",
                "keep one record per image",
            )
        seen[image] = line_no

        category = obj.get("category")
        attrs = obj.get("attributes")
        if category is None and attrs is not None:
            raise AnnotationError(
                name,
                line_no,
                "field 'attributes' is given without a 'category'",
                "add the record's category, or drop 'attributes' too to hand the image in "
                "unlabelled (the audit then tags it and ranks it for labelling)",
            )
        if category is not None:
            if not isinstance(category, str):
                raise _type_error(name, line_no, "category", "a category name (string)", category)
            if category not in cat_index:
                raise _unknown_name(
                    name, line_no, "category", "category", category, cat_names, CATEGORY_CLOTH
                )

        pos: set[int] = set()
        if attrs is not None:
            if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
                raise _type_error(
                    name, line_no, "attributes", "a list of attribute names (strings)", attrs
                )
            for a in attrs:
                idx = attr_index.get(a)
                if idx is None:
                    raise _unknown_name(
                        name, line_no, "attributes", "attribute", a, attr_names, ATTR_CLOTH
                    )
                pos.update(idx)

        split = obj.get("split", DEFAULT_SPLIT)
        if not isinstance(split, str) or split not in SPLITS:
            raise AnnotationError(
                name,
                line_no,
                f"field 'split' must be one of {', '.join(SPLITS)}, found {json.dumps(split)}",
                f'use "train", "val" or "test" (or omit it for {DEFAULT_SPLIT!r})',
            )

        # A category without attributes: every attribute is unknown (masked), never a
        # negative; no category at all: unlabelled.
        unknown = tuple(range(len(attributes))) if category is not None and attrs is None else ()
        yield CatalogRecord(
            image=image,
            category=cat_index[category] if category is not None else None,
            positives=tuple(sorted(pos)),
            bbox=_parse_bbox(obj.get("bbox"), name, line_no),
            split=split,
            unknown=unknown,
            line=line_no,
            labelled=category is not None,
        )
