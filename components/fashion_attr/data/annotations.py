"""DeepFashion-C annotation files: streaming readers, validation, and the join into one index.

The Category and Attribute Prediction Benchmark ships six text files (see
``docs/deepfashion-c-format.md``)::

    Anno/list_category_cloth.txt   category_name category_type        (50 records)
    Anno/list_category_img.txt     image_name category_label          (1-based label)
    Anno/list_attr_cloth.txt       attribute_name attribute_type      (names contain spaces)
    Anno/list_attr_img.txt         image_name + one label per attribute (-1, 0 = unknown, 1)
    Anno/list_bbox.txt             image_name x_1 y_1 x_2 y_2
    Eval/list_eval_partition.txt   image_name evaluation_status       (train / val / test)

Every file has the record count on line 1, the column names on line 2, then one
record per line with fields separated by runs of whitespace. The readers take any
iterable of text lines (an open local file, a ``io.TextIOWrapper`` around an S3
body, a list of strings in a test) plus the display name of the file, so every
error names the file and the line. :func:`load_annotations` joins the per-image
files by image name with memory bounded by the number of images: the 600 MB
``list_attr_img.txt`` is streamed one line at a time and only the indices of the
positive and unknown labels are kept.

A label of 0 means "unknown" (some releases use it): it is reported separately
and must be masked out of losses and metrics (``u_ij = 0`` in docs/method.md), never
read as a negative.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

import numpy as np

from fashion_attr import storage

CATEGORY_CLOTH = "Anno/list_category_cloth.txt"
CATEGORY_IMG = "Anno/list_category_img.txt"
ATTR_CLOTH = "Anno/list_attr_cloth.txt"
ATTR_IMG = "Anno/list_attr_img.txt"
BBOX = "Anno/list_bbox.txt"
EVAL_PARTITION = "Eval/list_eval_partition.txt"
#: The six annotation files, relative to the dataset root, as DeepFashion-C ships them.
ANNOTATION_FILES: tuple[str, ...] = (
    CATEGORY_CLOTH,
    CATEGORY_IMG,
    ATTR_CLOTH,
    ATTR_IMG,
    BBOX,
    EVAL_PARTITION,
)
#: Column-name line (line 2) of each file, as written by :func:`write_annotation_file` users.
HEADERS: dict[str, str] = {
    CATEGORY_CLOTH: "category_name  category_type",
    CATEGORY_IMG: "image_name  category_label",
    ATTR_CLOTH: "attribute_name  attribute_type",
    ATTR_IMG: "image_name  attribute_labels",
    BBOX: "image_name  x_1  y_1  x_2  y_2",
    EVAL_PARTITION: "image_name  evaluation_status",
}
SPLITS: tuple[str, ...] = ("train", "val", "test")
CATEGORY_TYPES: dict[int, str] = {1: "upper-body", 2: "lower-body", 3: "full-body"}
ATTRIBUTE_GROUPS: dict[int, str] = {1: "texture", 2: "fabric", 3: "shape", 4: "part", 5: "style"}

_LAYOUT_FIX = (
    "line 1 must be the record count, line 2 the column names, then one record per line "
    "(docs/deepfashion-c-format.md)"
)
_INT_RE = re.compile(r"[+-]?[0-9]+")
# Longest integer field accepted (sign included). No count, label or pixel coordinate
# needs more, and Python refuses int() of a string beyond 4300 digits with a bare
# ValueError that names neither file nor line.
_MAX_INT_CHARS = 19
# Last whitespace-separated field is the type; everything before it (trimmed) is the name.
_NAME_TYPE_RE = re.compile(r"^(.*?\S)\s+(\S+)$")
# One canonical str object per split, so 289k records share three strings.
_SPLIT_CANON = {s: s for s in SPLITS}
# Bytes allowed in a label field list; anything else sends the line to the exact slow path.
_LABEL_BYTES = b" \t\r\n-01"
_LABEL_VALUES = {"-1": -1, "0": 0, "1": 1}


class AnnotationError(ValueError):
    """Bad DeepFashion-C (or catalog) annotation input, with its place and the fix.

    Attributes:
        file: Display name of the file (e.g. ``"Anno/list_bbox.txt"`` or an S3 URI).
        line: 1-based line number, or None when the problem concerns the whole file.
        message: What is wrong (no trailing period).
        fix: What the user should do about it.
    """

    def __init__(self, file: str, line: int | None, message: str, fix: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        place = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{place}: {self.message}. Fix: {self.fix}"

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[type[AnnotationError], tuple[str, int | None, str, str]]:
        # Keeps the error picklable across DataLoader/multiprocessing workers.
        return (type(self), (self.file, self.line, self.message, self.fix))


@dataclass(frozen=True)
class Category:
    """One record of ``list_category_cloth.txt``.

    Attributes:
        name: Category name, e.g. ``"Blouse"``.
        type: 1 upper-body, 2 lower-body, 3 full-body.
    """

    name: str
    type: int


@dataclass(frozen=True)
class Attribute:
    """One record of ``list_attr_cloth.txt``.

    Attributes:
        name: Attribute name; may contain spaces (``"abstract chevron print"``).
        group: 1 texture, 2 fabric, 3 shape, 4 part, 5 style.
    """

    name: str
    group: int


@dataclass(slots=True)
class ImageRecord:
    """Everything the annotation files say about one image.

    Attributes:
        name: Image path relative to ``<root>/Img/``, e.g.
            ``"img/Sheer_Pleated-Front_Blouse/img_00000001.jpg"``.
        category: 0-based index into the category list.
        bbox: ``(x_1, y_1, x_2, y_2)`` in pixels as written (clamp with :func:`clamp_bbox`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        positives: Sorted 0-based indices of the attributes labelled 1.
        unknown: Sorted 0-based indices of the attributes labelled 0 (masked out of losses).
    """

    name: str
    category: int
    bbox: tuple[int, int, int, int]
    split: str
    positives: tuple[int, ...]
    unknown: tuple[int, ...]


@dataclass
class DatasetIndex:
    """The joined annotations of one DeepFashion-C-layout dataset.

    Attributes:
        categories: The category list (index = category label - 1).
        attributes: The attribute list (index = label column).
        records: One record per image, in the order of ``list_eval_partition.txt``.
    """

    categories: list[Category]
    attributes: list[Attribute]
    records: list[ImageRecord]

    def split_records(self, split: str) -> list[ImageRecord]:
        """Return the records of one split, in file order.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.

        Returns:
            The records whose ``split`` equals ``split``.

        Raises:
            ValueError: If ``split`` is not one of :data:`SPLITS`.
        """
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == split]

    def positive_counts(self, split: str | None = None) -> np.ndarray:
        """Count the positive labels of every attribute.

        Args:
            split: Restrict to one split; None counts every image.

        Returns:
            ``int64`` array of shape ``(len(attributes),)``.
        """
        counts = np.zeros(len(self.attributes), dtype=np.int64)
        for r in self.records:
            if split is None or r.split == split:
                counts[list(r.positives)] += 1
        return counts


# --------------------------------------------------------------------------- writing


def write_annotation_file(
    path: str | os.PathLike[str],
    header: str | Sequence[str],
    records: Iterable[Sequence[object]],
    count: int | None = None,
    align: bool = True,
) -> Path:
    """Write one annotation file in the DeepFashion-C layout, atomically.

    Used by the demo generator and by tests to build good and deliberately bad
    inputs: pass ``count`` to write a wrong record count on line 1, or records
    with too few/many fields or bad values; nothing is validated here.

    Args:
        path: Destination file; parent folders are created.
        header: Line 2, the column names (a string, or names joined by two spaces).
        records: One sequence of fields per record; each field is written with ``str()``.
        count: Number written on line 1; defaults to the number of records.
        align: Pad the first field to a common width, as the shipped files do.

    Returns:
        The path written.
    """
    path = Path(path)
    rows = [[str(f) for f in rec] for rec in records]
    head = header if isinstance(header, str) else "  ".join(header)
    width = max((len(r[0]) for r in rows if r), default=0) if align else 0
    lines = [str(len(rows) if count is None else count), head]
    for r in rows:
        if not r:
            lines.append("")
            continue
        first = r[0].ljust(width) if align and len(r) > 1 else r[0]
        lines.append(" ".join([first, *r[1:]]))
    storage.write_text(path, "\n".join(lines) + "\n")  # atomic: no reader sees half a file
    return path


# --------------------------------------------------------------------------- readers


def _as_str(raw: str | bytes, name: str, line_no: int) -> str:
    if type(raw) is str:
        return raw
    try:
        return raw.decode("utf-8")  # type: ignore[union-attr]
    except UnicodeDecodeError as e:
        raise AnnotationError(
            name, line_no, f"line is not UTF-8 text ({e.reason})", "save the file as UTF-8 text"
        ) from e


def _iter_records(lines: Iterable[str | bytes], name: str) -> Iterator[tuple[int, str]]:
    """Check the count/header lines and yield ``(line_no, line)`` for every record.

    The declared count is checked against the records at the end of the stream
    (or as soon as the records exceed it), so the file is read only once.
    """
    it = iter(lines)
    first = next(it, None)
    if first is None:
        raise AnnotationError(name, 1, "the file is empty", _LAYOUT_FIX)
    head = _as_str(first, name, 1).strip().lstrip("\ufeff")  # tolerate a UTF-8 BOM
    if len(head) > _MAX_INT_CHARS and _INT_RE.fullmatch(head):
        raise AnnotationError(
            name, 1, f"line 1 declares a record count of {len(head)} digits", _LAYOUT_FIX
        )
    if not _INT_RE.fullmatch(head) or int(head) < 0:
        raise AnnotationError(
            name, 1, f"line 1 must be the record count, found {head[:60]!r}", _LAYOUT_FIX
        )
    declared = int(head)
    header = next(it, None)
    if header is None:
        if declared == 0:
            raise AnnotationError(name, 2, "the column-name line is missing", _LAYOUT_FIX)
        raise AnnotationError(
            name,
            1,
            f"line 1 declares {declared} records but the file has 0 (no column-name line either)",
            _LAYOUT_FIX,
        )
    header_s = _as_str(header, name, 2)
    if header_s.lstrip().startswith("img/"):
        raise AnnotationError(
            name,
            2,
            "line 2 must hold the column names but holds an image record",
            "insert the column-name line (e.g. 'image_name  category_label') as line 2",
        )
    count = 0
    line_no = 2
    for raw in it:
        line_no += 1
        s = raw if type(raw) is str else _as_str(raw, name, line_no)
        if not s or s.isspace():
            continue  # blank lines (typically trailing) are not records
        count += 1
        if count > declared:
            raise AnnotationError(
                name,
                1,
                f"line 1 declares {declared} records but the file has more "
                f"(record {count} is on line {line_no})",
                "set line 1 to the number of records, or remove the extra records",
            )
        yield line_no, s
    if count != declared:
        raise AnnotationError(
            name,
            1,
            f"line 1 declares {declared} records but the file has {count} (expected {declared}, "
            f"actual {count})",
            f"set line 1 to {count}, or restore the missing records (a truncated copy or "
            "download is the usual cause)",
        )


def _wrong_fields(
    name: str, line_no: int, columns: str, expected: int, found: int
) -> AnnotationError:
    return AnnotationError(
        name,
        line_no,
        f"expected {expected} fields ({columns}), found {found}",
        f"write each record as {expected} whitespace-separated fields: {columns}",
    )


def _int_field(tok: str, name: str, line_no: int, column: str) -> int:
    if not _INT_RE.fullmatch(tok):
        raise AnnotationError(
            name,
            line_no,
            f"field '{column}' must be an integer, found {tok!r}",
            f"write {column} as a whole number",
        )
    if len(tok) > _MAX_INT_CHARS:
        raise AnnotationError(
            name,
            line_no,
            f"field '{column}' is an integer of {len(tok)} characters, too large "
            f"(at most {_MAX_INT_CHARS})",
            f"write {column} as a whole number of at most {_MAX_INT_CHARS - 1} digits",
        )
    return int(tok)


def _name_type_records(
    lines: Iterable[str | bytes], name: str, columns: str, type_col: str, allowed: dict[int, str]
) -> Iterator[tuple[int, str, int]]:
    for line_no, s in _iter_records(lines, name):
        m = _NAME_TYPE_RE.match(s.strip())
        if m is None:
            raise _wrong_fields(name, line_no, columns, 2, 1)
        item, tok = m.group(1), m.group(2)
        value = _int_field(tok, name, line_no, type_col)
        if value not in allowed:
            valid = ", ".join(f"{k} {v}" for k, v in allowed.items())
            raise AnnotationError(
                name,
                line_no,
                f"{type_col} {value} of {item!r} is not one of {sorted(allowed)}",
                f"use one of: {valid}",
            )
        yield line_no, item, value


def read_category_cloth(lines: Iterable[str | bytes], name: str = CATEGORY_CLOTH) -> list[Category]:
    """Read ``list_category_cloth.txt``.

    Args:
        lines: Text lines of the file (an open file, a list of strings, ...).
        name: Display name of the file for errors.

    Returns:
        The categories in file order (index = category label - 1).

    Raises:
        AnnotationError: Bad layout, non-integer or out-of-range type, duplicate name.
    """
    cats: list[Category] = []
    seen: dict[str, int] = {}
    recs = _name_type_records(
        lines, name, "category_name category_type", "category_type", CATEGORY_TYPES
    )
    for line_no, item, value in recs:
        if item in seen:
            raise AnnotationError(
                name,
                line_no,
                f"category {item!r} is listed twice (first on line {seen[item]})",
                "keep one record per category name",
            )
        seen[item] = line_no
        cats.append(Category(item, value))
    return cats


def read_attr_cloth(lines: Iterable[str | bytes], name: str = ATTR_CLOTH) -> list[Attribute]:
    """Read ``list_attr_cloth.txt``; names may contain spaces, the type is the last field.

    Args:
        lines: Text lines of the file.
        name: Display name of the file for errors.

    Returns:
        The attributes in file order (index = label column of ``list_attr_img.txt``).

    Raises:
        AnnotationError: Bad layout, non-integer type, or a type outside 1..5.
    """
    recs = _name_type_records(
        lines, name, "attribute_name attribute_type", "attribute_type", ATTRIBUTE_GROUPS
    )
    return [Attribute(item, value) for _, item, value in recs]


def iter_category_img(
    lines: Iterable[str | bytes], num_categories: int, name: str = CATEGORY_IMG
) -> Iterator[tuple[int, str, int]]:
    """Stream ``list_category_img.txt``.

    Args:
        lines: Text lines of the file.
        num_categories: Number of records of ``list_category_cloth.txt``.
        name: Display name of the file for errors.

    Yields:
        ``(line_no, image_name, category0)`` with the 1-based label turned 0-based.

    Raises:
        AnnotationError: Bad layout, or a label outside ``1..num_categories``.
    """
    columns = "image_name category_label"
    for line_no, s in _iter_records(lines, name):
        toks = s.split()
        if len(toks) != 2:
            raise _wrong_fields(name, line_no, columns, 2, len(toks))
        label = _int_field(toks[1], name, line_no, "category_label")
        if not 1 <= label <= num_categories:
            raise AnnotationError(
                name,
                line_no,
                f"category_label {label} of {toks[0]} is out of range 1..{num_categories} "
                f"({CATEGORY_CLOTH} has {num_categories} categories; labels are 1-based)",
                f"use a label between 1 and {num_categories}",
            )
        yield line_no, toks[0], label - 1


def iter_bbox(
    lines: Iterable[str | bytes], name: str = BBOX
) -> Iterator[tuple[int, str, tuple[int, int, int, int]]]:
    """Stream ``list_bbox.txt``.

    Coordinates may lie outside the image (they are clamped at crop time by
    :func:`clamp_bbox`), but a box with ``x_2 <= x_1`` or ``y_2 <= y_1`` is
    rejected here already: clamping can never make it valid.

    Args:
        lines: Text lines of the file.
        name: Display name of the file for errors.

    Yields:
        ``(line_no, image_name, (x_1, y_1, x_2, y_2))``.

    Raises:
        AnnotationError: Bad layout, non-integer coordinate, or an empty box.
    """
    columns = "image_name x_1 y_1 x_2 y_2"
    cols = ("x_1", "y_1", "x_2", "y_2")
    for line_no, s in _iter_records(lines, name):
        toks = s.split()
        if len(toks) != 5:
            raise _wrong_fields(name, line_no, columns, 5, len(toks))
        x1, y1, x2, y2 = (
            _int_field(t, name, line_no, c) for t, c in zip(toks[1:], cols, strict=True)
        )
        if x2 <= x1 or y2 <= y1:
            raise AnnotationError(
                name,
                line_no,
                f"box ({x1}, {y1}, {x2}, {y2}) of {toks[0]} is empty (needs x_2 > x_1 and "
                "y_2 > y_1)",
                "correct the box corners (x_1 y_1 is the top-left, x_2 y_2 the bottom-right)",
            )
        yield line_no, toks[0], (x1, y1, x2, y2)


def iter_partition(
    lines: Iterable[str | bytes], name: str = EVAL_PARTITION
) -> Iterator[tuple[int, str, str]]:
    """Stream ``list_eval_partition.txt``.

    Args:
        lines: Text lines of the file.
        name: Display name of the file for errors.

    Yields:
        ``(line_no, image_name, split)`` with split one of ``train``/``val``/``test``.

    Raises:
        AnnotationError: Bad layout or an unknown evaluation status.
    """
    columns = "image_name evaluation_status"
    for line_no, s in _iter_records(lines, name):
        toks = s.split()
        if len(toks) != 2:
            raise _wrong_fields(name, line_no, columns, 2, len(toks))
        split = _SPLIT_CANON.get(toks[1])
        if split is None:
            raise AnnotationError(
                name,
                line_no,
                f"evaluation_status {toks[1]!r} of {toks[0]} is not one of {', '.join(SPLITS)}",
                "use train, val or test",
            )
        yield line_no, toks[0], split


def _parse_labels_exact(
    rest: str, num_attributes: int, name: str, line_no: int, image: str
) -> np.ndarray:
    """Token-by-token label parse, used when the fast path declines; exact errors."""
    toks = rest.split()
    if len(toks) != num_attributes:
        raise _wrong_fields(
            name,
            line_no,
            f"image_name then {num_attributes} attribute labels, one per record of {ATTR_CLOTH}",
            num_attributes + 1,
            len(toks) + 1,
        )
    out = np.empty(num_attributes, dtype=np.int8)
    for j, tok in enumerate(toks):
        v = _LABEL_VALUES.get(tok)
        if v is None:
            what = "outside {-1, 0, 1}" if _INT_RE.fullmatch(tok) else "not an integer"
            raise AnnotationError(
                name,
                line_no,
                f"label {tok!r} of {image} for attribute {j + 1} (field {j + 2}) is {what}",
                "write -1 (negative), 1 (positive) or 0 (unknown)",
            )
        out[j] = v
    return out


_TEMPLATES: dict[int, np.ndarray] = {}


def _template(n: int) -> np.ndarray:
    """Bytes of a shipped-layout line of n negatives: ``"-1 -1 ... -1"`` (fields ``%2d``)."""
    t = _TEMPLATES.get(n)
    if t is None:
        t = np.frombuffer(b"-1 " * n, dtype=np.uint8)[: 3 * n - 1]
        _TEMPLATES[n] = t
    return t


def _parse_fixed_width(rb: bytes, n: int, dtype: type) -> tuple[np.ndarray, np.ndarray] | None:
    """Parse the shipped layout (each label ``%2d``, one space apart) by diffing a template.

    Against an all-negative line only positives (``" 1"``: a space for the sign)
    and unknowns (``" 0"``: space and a ``0``) differ, so a line costs one
    vectorised comparison plus a short loop over the few differences. Any other
    difference returns None (not this layout, or a bad label).
    """
    if len(rb) == 3 * n - 2 and rb[:1] in (b"0", b"1"):
        rb = b" " + rb  # the split after the image name ate the first label's padding
    if len(rb) != 3 * n - 1:
        return None
    diff = np.flatnonzero(np.frombuffer(rb, dtype=np.uint8) != _template(n))
    if not diff.size:
        return np.empty(0, dtype), np.empty(0, dtype)
    if diff.size > 256:
        return None  # dense line: the generic path is as fast
    pos: list[int] = []
    unk: list[int] = []
    d = diff.tolist()
    i, m = 0, len(d)
    while i < m:
        p = d[i]
        if p % 3 or rb[p] != 32:  # only the sign position may differ, and only to a space
            return None
        if i + 1 < m and d[i + 1] == p + 1:
            if rb[p + 1] != 48:  # " 0" is the only other allowed difference
                return None
            unk.append(p // 3)
            i += 2
        else:
            pos.append(p // 3)
            i += 1
    return np.array(pos, dtype=dtype), np.array(unk, dtype=dtype)


def _parse_labels(
    rest: str, num_attributes: int, name: str, line_no: int, image: str, dtype: type
) -> tuple[np.ndarray, np.ndarray]:
    r"""Parse one line's labels into (positive indices, unknown indices).

    Three paths, fastest first: the shipped fixed-width layout (template diff);
    any whitespace layout through numpy's C parser, accepted only once proven
    that every token was exactly ``-1``, ``0`` or ``1`` (only the bytes
    ``' \t\r\n-01'`` occur, one digit per value so no ``11`` or ``10``,
    every ``-`` directly followed by ``1`` so no ``- 1`` or ``-0``, values in
    {-1, 0, 1}); otherwise the exact token parser, which also words the error.
    """
    try:
        rb = rest.encode("ascii").rstrip()
    except UnicodeEncodeError:
        rb = b""
    else:
        fast = _parse_fixed_width(rb, num_attributes, dtype)
        if fast is not None:
            return fast
    labels = None
    if rb and not rb.translate(None, _LABEL_BYTES):
        try:
            a = np.fromstring(rb, dtype=np.int8, sep=" ")
        except ValueError:
            a = None
        if (
            a is not None
            and a.size == num_attributes
            and rb.count(b"1") + rb.count(b"0") == num_attributes
            and rb.count(b"-") == rb.count(b"-1")
            and (num_attributes == 0 or (a.max() <= 1 and a.min() >= -1))
        ):
            labels = a
    if labels is None:
        labels = _parse_labels_exact(rest, num_attributes, name, line_no, image)
    return np.flatnonzero(labels == 1).astype(dtype), np.flatnonzero(labels == 0).astype(dtype)


def iter_attr_img(
    lines: Iterable[str | bytes], num_attributes: int, name: str = ATTR_IMG
) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
    """Stream ``list_attr_img.txt`` with constant memory per line.

    Args:
        lines: Text lines of the file.
        num_attributes: Number of records of ``list_attr_cloth.txt``.
        name: Display name of the file for errors.

    Yields:
        ``(line_no, image_name, positives, unknown)``: sorted 0-based indices of
        the labels equal to 1 and to 0 (unknown, to be masked, never negative);
        ``int16`` arrays (``int32`` beyond 32767 attributes).

    Raises:
        AnnotationError: Bad layout, wrong number of labels, or a label outside {-1, 0, 1}.
    """
    dtype = np.int16 if num_attributes <= np.iinfo(np.int16).max else np.int32
    for line_no, s in _iter_records(lines, name):
        parts = s.split(None, 1)
        image = parts[0]
        if len(parts) == 1:
            if num_attributes == 0:
                yield line_no, image, np.empty(0, dtype), np.empty(0, dtype)
                continue
            raise _wrong_fields(
                name,
                line_no,
                f"image_name then {num_attributes} attribute labels, one per record of "
                f"{ATTR_CLOTH}",
                num_attributes + 1,
                1,
            )
        pos, unk = _parse_labels(parts[1], num_attributes, name, line_no, image, dtype)
        yield line_no, image, pos, unk


def clamp_bbox(
    bbox: Sequence[int], width: int, height: int, file: str, line: int | None
) -> tuple[int, int, int, int]:
    """Clamp a box to the image ``[0, width] x [0, height]``; reject it if nothing is left.

    Args:
        bbox: ``(x_1, y_1, x_2, y_2)`` as read from ``list_bbox.txt``.
        width: Image width in pixels.
        height: Image height in pixels.
        file: Display name of the file the box came from, for the error.
        line: Line of the box in that file, for the error.

    Returns:
        The clamped box.

    Raises:
        AnnotationError: If ``x_2 <= x_1`` or ``y_2 <= y_1`` after clamping.
    """
    x1, y1, x2, y2 = (int(v) for v in bbox)
    cx1, cx2 = min(max(x1, 0), width), min(max(x2, 0), width)
    cy1, cy2 = min(max(y1, 0), height), min(max(y2, 0), height)
    if cx2 <= cx1 or cy2 <= cy1:
        raise AnnotationError(
            file,
            line,
            f"box ({x1}, {y1}, {x2}, {y2}) is empty after clamping to the {width}x{height} "
            f"image: ({cx1}, {cy1}, {cx2}, {cy2})",
            "correct the box so that it overlaps the image (x_2 > x_1 and y_2 > y_1 inside it)",
        )
    return cx1, cy1, cx2, cy2


# --------------------------------------------------------------------------- join


def _duplicate(file: str, line_no: int, image: str, first: int) -> AnnotationError:
    return AnnotationError(
        file,
        line_no,
        f"image {image} is listed twice (first on line {first})",
        "keep one record per image",
    )


def _missing(
    image: str, where: str, line_no: int, missing_from: str, more: int = 0
) -> AnnotationError:
    extra = f" ({more} more images are missing from it too)" if more else ""
    return AnnotationError(
        where,
        line_no,
        f"image {image} appears in {where} (line {line_no}) but is missing from "
        f"{missing_from}{extra}",
        f"add a record for it to {missing_from}, or remove it from {where}: every image "
        f"must appear in {CATEGORY_IMG}, {ATTR_IMG}, {BBOX} and {EVAL_PARTITION}",
    )


def _open(
    open_text: Callable[[str], AbstractContextManager[TextIO]], rel: str
) -> AbstractContextManager[TextIO]:
    try:
        return open_text(rel)
    except FileNotFoundError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise AnnotationError(
            rel,
            None,
            f"file not found under the dataset root{where}",
            f"point the dataset root at the folder that holds {', '.join(ANNOTATION_FILES)} "
            "(the DeepFashion-C layout, docs/deepfashion-c-format.md)",
        ) from e


def load_annotations(
    open_text: Callable[[str], AbstractContextManager[TextIO]], progress: bool = False
) -> DatasetIndex:
    """Read, validate and join the six annotation files of one dataset.

    Memory stays bounded by the number of images: the small files are read into
    numpy arrays indexed by the partition order, and ``list_attr_img.txt`` is
    streamed, keeping only the positive/unknown index tuples.

    Args:
        open_text: ``open_text("Anno/list_bbox.txt")`` returns a context manager
            yielding the text stream of that file under the dataset root (the
            caller decides between a local folder and an S3 prefix).
        progress: Show a progress bar while streaming ``list_attr_img.txt``.

    Returns:
        The joined index, records in the order of ``list_eval_partition.txt``.

    Raises:
        AnnotationError: Any bad input of the format page: count mismatch,
            wrong number of fields, label outside {-1, 0, 1}, category out of
            range, empty box, an image present in one file and missing from
            another, a duplicate image, or a missing file.
    """
    with _open(open_text, CATEGORY_CLOTH) as f:
        categories = read_category_cloth(f, CATEGORY_CLOTH)
    with _open(open_text, ATTR_CLOTH) as f:
        attributes = read_attr_cloth(f, ATTR_CLOTH)

    # The partition fixes the order and the index of every image.
    index: dict[str, int] = {}
    names: list[str] = []
    splits: list[str] = []
    part_lines: list[int] = []
    with _open(open_text, EVAL_PARTITION) as f:
        for line_no, image, split in iter_partition(f, EVAL_PARTITION):
            i = index.get(image)
            if i is not None:
                raise _duplicate(EVAL_PARTITION, line_no, image, part_lines[i])
            index[image] = len(names)
            names.append(image)
            splits.append(split)
            part_lines.append(line_no)
    n = len(names)

    def place(file: str, line_no: int, image: str, lines_arr: np.ndarray) -> int:
        i = index.get(image)
        if i is None:
            raise _missing(image, file, line_no, EVAL_PARTITION)
        if lines_arr[i]:
            raise _duplicate(file, line_no, image, int(lines_arr[i]))
        lines_arr[i] = line_no
        return i

    def check_complete(file: str, lines_arr: np.ndarray) -> None:
        absent = np.flatnonzero(lines_arr == 0)
        if absent.size:
            i = int(absent[0])
            raise _missing(names[i], EVAL_PARTITION, part_lines[i], file, absent.size - 1)

    cat = np.zeros(n, dtype=np.int32)
    cat_lines = np.zeros(n, dtype=np.int64)
    with _open(open_text, CATEGORY_IMG) as f:
        for line_no, image, c in iter_category_img(f, len(categories), CATEGORY_IMG):
            cat[place(CATEGORY_IMG, line_no, image, cat_lines)] = c
    check_complete(CATEGORY_IMG, cat_lines)

    boxes = np.zeros((n, 4), dtype=np.int64)
    box_lines = np.zeros(n, dtype=np.int64)
    with _open(open_text, BBOX) as f:
        for line_no, image, box in iter_bbox(f, BBOX):
            boxes[place(BBOX, line_no, image, box_lines)] = box
    check_complete(BBOX, box_lines)

    positives: list[tuple[int, ...]] = [()] * n
    unknown: list[tuple[int, ...]] = [()] * n
    attr_lines = np.zeros(n, dtype=np.int64)
    # Share one int object per attribute index instead of one per label occurrence.
    ints = list(range(len(attributes)))
    with _open(open_text, ATTR_IMG) as f:
        stream = iter_attr_img(f, len(attributes), ATTR_IMG)
        if progress:
            from tqdm import tqdm

            stream = tqdm(stream, total=n, desc=ATTR_IMG, unit="img", mininterval=1.0)
        for line_no, image, pos, unk in stream:
            i = place(ATTR_IMG, line_no, image, attr_lines)
            if pos.size:
                positives[i] = tuple([ints[j] for j in pos.tolist()])
            if unk.size:
                unknown[i] = tuple([ints[j] for j in unk.tolist()])
    check_complete(ATTR_IMG, attr_lines)

    cat_list = cat.tolist()
    box_list = boxes.tolist()
    records = [
        ImageRecord(
            names[i],
            cat_list[i],
            cast("tuple[int, int, int, int]", tuple(box_list[i])),  # the four columns of BBOX
            splits[i],
            positives[i],
            unknown[i],
        )
        for i in range(n)
    ]
    return DatasetIndex(categories=categories, attributes=attributes, records=records)


def load_annotations_from_dir(root: str | os.PathLike[str], progress: bool = False) -> DatasetIndex:
    """Load the annotations of a dataset stored in a local folder.

    Args:
        root: The dataset root (holding ``Anno/``, ``Eval/`` and ``Img/``).
        progress: Show a progress bar while streaming ``list_attr_img.txt``.

    Returns:
        The joined index (see :func:`load_annotations`).

    Raises:
        AnnotationError: As :func:`load_annotations`; a missing file names its path.
    """
    base = Path(root)

    def open_text(rel: str) -> TextIO:
        return open(base / rel, encoding="utf-8")

    return load_annotations(open_text, progress=progress)
