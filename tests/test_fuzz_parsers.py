"""Fuzzing of every input parser: annotation files, catalog JSON Lines, and image files.

Promise (README "Reliability and security"): whatever text arrives, the DeepFashion-C
readers and the catalog reader raise only :class:`AnnotationError` (a ``ValueError``
subclass that names the file, the line and the fix), never another exception type,
and never hang. Each parser gets 1,000 generated inputs: mutations of a valid file
(tokens deleted, duplicated, inserted or replaced by huge numbers, unicode, tabs,
empty strings; lines deleted, duplicated, swapped, inserted; the record count
rewritten; the text truncated; invalid UTF-8 bytes) and fully random lines. Every
call runs under a 2 s alarm (a hang fails the test). An input that was not mutated
must parse to the known records, so a parser that rejects everything also fails.

Images: a demo copy with a truncated JPEG, a zero-byte file, a text file named
``.jpg`` and two decompression bombs (a PNG whose header claims 100000 x 100000
pixels, crafted with a valid CRC, and a real, highly compressible 8000 x 8000 PNG)
ingests with exit 0, skipping exactly those images, each listed with its reason.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fashion_attr.data.annotations import (
    ATTR_CLOTH,
    ATTR_IMG,
    BBOX,
    CATEGORY_CLOTH,
    CATEGORY_IMG,
    EVAL_PARTITION,
    AnnotationError,
    Attribute,
    Category,
    iter_attr_img,
    iter_bbox,
    iter_category_img,
    iter_partition,
    load_annotations_from_dir,
    read_attr_cloth,
    read_category_cloth,
)
from fashion_attr.data.catalog import read_catalog_jsonl
from fashion_attr.data.shards import load_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

EXAMPLES = 1000
CALL_LIMIT_S = 2.0
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # deterministic per run; no .hypothesis folder in the repository
    derandomize=True,
)

# --------------------------------------------------------------------------- valid files

IMGS = [
    "img/Sheer_Pleated-Front_Blouse/img_00000001.jpg",
    "img/Denim_Mini_Skirt/img_00000002.jpg",
    "img/Floral_Maxi_Dress/img_00000003.jpg",
]
VALID: dict[str, list[str]] = {
    CATEGORY_CLOTH: ["3", "category_name  category_type", "Blouse 1", "Skirt 2", "Dress 3"],
    ATTR_CLOTH: [
        "4",
        "attribute_name  attribute_type",
        "floral 1",
        "denim 2",
        "long sleeve 3",
        "button front 4",
    ],
    CATEGORY_IMG: [
        "3",
        "image_name  category_label",
        f"{IMGS[0]} 1",
        f"{IMGS[1]} 2",
        f"{IMGS[2]} 3",
    ],
    BBOX: [
        "3",
        "image_name  x_1  y_1  x_2  y_2",
        f"{IMGS[0]} 10 20 110 220",
        f"{IMGS[1]} -4 0 90 100",
        f"{IMGS[2]} 1 2 3 4",
    ],
    EVAL_PARTITION: [
        "3",
        "image_name  evaluation_status",
        f"{IMGS[0]} train",
        f"{IMGS[1]} val",
        f"{IMGS[2]} test",
    ],
    # The shipped fixed-width layout (%2d labels) and a tab-separated row.
    ATTR_IMG: [
        "3",
        "image_name  attribute_labels",
        f"{IMGS[0]}                 -1  1 -1  0",
        f"{IMGS[1]}  1 -1 -1 -1",
        f"{IMGS[2]}\t1\t1\t0\t-1",
    ],
}
N_CATEGORIES = 3
N_ATTRIBUTES = 4


def _bbox_rows(lines: list[Any]) -> list[tuple[str, tuple[int, ...]]]:
    return [(img, box) for _, img, box in iter_bbox(lines)]


def _attr_rows(lines: list[Any]) -> list[tuple[str, list[int], list[int]]]:
    return [(img, p.tolist(), u.tolist()) for _, img, p, u in iter_attr_img(lines, N_ATTRIBUTES)]


# name -> (parse function returning comparable records, expected records of VALID[name])
PARSERS: dict[str, tuple[Callable[[list[Any]], Any], Any]] = {
    CATEGORY_CLOTH: (
        lambda lines: read_category_cloth(lines),
        [Category("Blouse", 1), Category("Skirt", 2), Category("Dress", 3)],
    ),
    ATTR_CLOTH: (
        lambda lines: read_attr_cloth(lines),
        [
            Attribute("floral", 1),
            Attribute("denim", 2),
            Attribute("long sleeve", 3),
            Attribute("button front", 4),
        ],
    ),
    CATEGORY_IMG: (
        lambda lines: [(img, c) for _, img, c in iter_category_img(lines, N_CATEGORIES)],
        [(IMGS[0], 0), (IMGS[1], 1), (IMGS[2], 2)],
    ),
    BBOX: (
        _bbox_rows,
        [(IMGS[0], (10, 20, 110, 220)), (IMGS[1], (-4, 0, 90, 100)), (IMGS[2], (1, 2, 3, 4))],
    ),
    EVAL_PARTITION: (
        lambda lines: [(img, s) for _, img, s in iter_partition(lines)],
        [(IMGS[0], "train"), (IMGS[1], "val"), (IMGS[2], "test")],
    ),
    ATTR_IMG: (
        _attr_rows,
        [(IMGS[0], [1], [3]), (IMGS[1], [0], []), (IMGS[2], [0, 1], [2])],
    ),
}

# --------------------------------------------------------------------------- mutations

HUGE = "9" * 5000  # beyond Python's 4300-digit int() limit
SPECIAL_TOKENS = [
    "",
    "0",
    "1",
    "-1",
    "+1",
    "-0",
    "2",
    "11",
    "1.0",
    "1e9",
    "NaN",
    "inf",
    "-",
    "--1",
    "99999999999999999999",
    "-9223372036854775809",
    "18446744073709551616",
    HUGE,
    "-" + HUGE,
    "x" * 20_000,
    "img/a.jpg",
    "train",
    "val",
    "test",
    "TRAIN",
    "\t",
    "\ufeff",
    "\ufeff3",
    "\x00",
    "\x0b",
    "\x1c",  # str.split() treats \x1c-\x1f as whitespace
    "\u00a0",
    "\u2028",
    "\u3000",
    "١٢٣",  # Arabic-Indic digits: isdigit() but not [0-9]
    "²",
    "é",
    "日本語",
    "😀",
    "\r",
    "\\",
    '"',
    "{}",
]
SEPARATORS = [" ", "  ", "\t", " \t ", "\u3000", "\x0b", ""]
token_st = st.one_of(
    st.sampled_from(SPECIAL_TOKENS),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=12),
)


@st.composite
def mutated_lines(draw: st.DrawFn, base: list[str]) -> tuple[list[str | bytes], bool]:
    """A mutation of ``base`` as the lines of a file; the bool says whether it changed."""
    rows: list[list[str]] = [line.split() or [""] for line in base]
    seps: list[str] = [" "] * len(rows)
    ops = draw(st.integers(0, 6))
    raw_text: str | None = None
    for _ in range(ops):
        op = draw(
            st.sampled_from(
                [
                    "del_tok",
                    "dup_tok",
                    "ins_tok",
                    "set_tok",
                    "del_line",
                    "dup_line",
                    "ins_line",
                    "swap",
                    "count",
                    "blank",
                    "sep",
                    "truncate",
                ]
            )
        )
        if not rows and op not in ("ins_line", "blank"):
            op = "ins_line"
        i = draw(st.integers(0, max(len(rows) - 1, 0)))
        if op in ("del_tok", "dup_tok", "ins_tok", "set_tok"):
            toks = rows[i]
            j = draw(st.integers(0, max(len(toks) - 1, 0)))
            if op == "del_tok" and toks:
                del toks[j]
            elif op == "dup_tok" and toks:
                toks.insert(j, toks[j])
            elif op == "ins_tok":
                toks.insert(j, draw(token_st))
            elif toks:
                toks[j] = draw(token_st)
        elif op == "del_line":
            del rows[i], seps[i]
        elif op == "dup_line":
            rows.insert(i, list(rows[i]))
            seps.insert(i, seps[i])
        elif op == "ins_line":
            rows.insert(i, draw(st.lists(token_st, max_size=6)))
            seps.insert(i, draw(st.sampled_from(SEPARATORS)))
        elif op == "swap":
            k = draw(st.integers(0, len(rows) - 1))
            rows[i], rows[k] = rows[k], rows[i]
        elif op == "count":
            rows[0] = [draw(token_st)]
        elif op == "blank":
            rows.insert(i, [draw(st.sampled_from(["", " ", "\t", "  \t"]))])
            seps.insert(i, "")
        elif op == "sep":
            seps[i] = draw(st.sampled_from(SEPARATORS))
        else:  # truncate the whole text at a random character
            text = "\n".join(s.join(t) for s, t in zip(seps, rows, strict=True))
            raw_text = text[: draw(st.integers(0, len(text)))]
            break
    changed = ops > 0
    if raw_text is None:
        raw_text = "\n".join(s.join(t) for s, t in zip(seps, rows, strict=True)) + "\n"
    newline = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    lines: list[str | bytes] = [ln + newline for ln in raw_text.split("\n")]
    if lines and lines[-1] == newline:
        lines.pop()
    if draw(st.integers(0, 9)) == 0 and lines:  # a line of bytes that is not UTF-8
        k = draw(st.integers(0, len(lines) - 1))
        lines[k] = str(lines[k]).encode("utf-8", "surrogatepass") + b"\xff\xfe"
        changed = True
    return lines, changed


random_lines = st.lists(
    st.one_of(
        st.text(max_size=80).map(lambda s: s + "\n"),
        st.binary(max_size=40),
    ),
    max_size=8,
)

# --------------------------------------------------------------------------- guards


class ParserHangError(AssertionError):
    """A parser call ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`ParserHangError` if the block runs longer than ``seconds`` (main thread)."""

    def _alarm(signum: int, frame: Any) -> None:
        raise ParserHangError(f"parser call did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_or_annotation_error(call: Callable[[], Any], name: str, n_lines: int) -> tuple[bool, Any]:
    """Run ``call``; only AnnotationError naming ``name`` and a real line may escape it.

    Returns:
        ``(True, result)`` on success, ``(False, error)`` on an AnnotationError.
    """
    try:
        with time_limit(CALL_LIMIT_S):
            return True, call()
    except AnnotationError as err:
        assert err.file == name
        # A missing line is reported as the line after the end (e.g. "line 2 missing").
        assert err.line is None or 1 <= err.line <= n_lines + 1, (err.line, n_lines)
        assert "Fix: " in str(err) and str(err).startswith(name)
        return False, err


# --------------------------------------------------------------------------- annotation files


@pytest.mark.parametrize("name", list(PARSERS))
def test_valid_file_parses_to_the_known_records(name: str) -> None:
    parse, expected = PARSERS[name]
    assert parse([ln + "\n" for ln in VALID[name]]) == expected


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(PARSERS))
def test_mutated_annotation_files_raise_only_annotation_error(name: str) -> None:
    parse, expected = PARSERS[name]
    seen = {"ok": 0, "error": 0}

    @FUZZ
    @given(case=mutated_lines(VALID[name]))
    def run(case: tuple[list[str | bytes], bool]) -> None:
        lines, changed = case
        ok, result = parse_or_annotation_error(lambda: parse(list(lines)), name, len(lines))
        seen["ok" if ok else "error"] += 1
        if not changed:
            assert ok and result == expected

    run()
    # Both outcomes occurred: the mutations reach the error paths and spare some files.
    assert seen["ok"] > 0 and seen["error"] > 0, seen
    assert seen["ok"] + seen["error"] >= EXAMPLES


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(PARSERS))
def test_random_lines_raise_only_annotation_error(name: str) -> None:
    parse, _ = PARSERS[name]
    calls = []

    @settings(FUZZ, max_examples=EXAMPLES // 4)
    @given(lines=random_lines)
    def run(lines: list[str | bytes]) -> None:
        parse_or_annotation_error(lambda: parse(list(lines)), name, len(lines))
        calls.append(1)

    run()
    assert len(calls) >= EXAMPLES // 4


def test_huge_numbers_are_annotation_errors_naming_the_line() -> None:
    """Regression: int() of > 4300 digits raised a bare ValueError without file or line."""
    with pytest.raises(AnnotationError, match=r"list_category_cloth\.txt:1: .*5000 digits"):
        read_category_cloth([HUGE + "\n", "h\n"])
    with pytest.raises(AnnotationError, match=r"list_bbox\.txt:3: field 'x_2' .* too large"):
        list(iter_bbox(["1\n", "h\n", f"img/a.jpg 1 2 {HUGE} 4\n"]))
    # 19 characters still parse (a coordinate far outside the image is clamped later).
    ((_, _, box),) = list(iter_bbox(["1\n", "h\n", "img/a.jpg 1 2 999999999999999999 4\n"]))
    assert box == (1, 2, 999_999_999_999_999_999, 4)


# --------------------------------------------------------------------------- catalog JSON Lines

CATALOG = "s3://bucket/incoming/batch.jsonl"
CATS = [Category("Tee", 1), Category("Skirt", 2), Category("Dress", 3)]
ATTRS = [Attribute("floral", 1), Attribute("denim", 2), Attribute("long sleeve", 3)]
GOOD_RECORDS = [
    {"image": "new/1.jpg", "category": "Tee", "attributes": ["floral"]},
    {
        "image": "s3://b/new/2.jpg",
        "category": "Dress",
        "attributes": ["denim", "long sleeve"],
        "bbox": [1.4, 2, 30, 40.6],
        "split": "val",
    },
    {"image": "new/3.jpg", "category": "Skirt", "attributes": [], "bbox": None, "split": "test"},
]
GOOD_PARSED = [
    ("new/1.jpg", 0, (0,), None, "train"),
    ("s3://b/new/2.jpg", 2, (1, 2), (1, 2, 30, 41), "val"),
    ("new/3.jpg", 1, (), None, "test"),
]
json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**400), 10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=10),
        st.sampled_from(["Tee", "floral", "train", "", "\ud800"]),
    ),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children)
    ),
    max_leaves=10,
)
FIELDS = ["image", "category", "attributes", "bbox", "split", "extra", "imgae"]
JSON_TOKENS = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    '"',
    "null",
    "NaN",
    "-Infinity",
    "1e999",
    HUGE,
    "[" * 5000,
    "\\ud800",
    "\\u0000",
    "\t",
    "",
    "😀",
]


@st.composite
def catalog_lines(draw: st.DrawFn) -> tuple[list[str | bytes], bool]:
    """Catalog text: good records whose fields, values or characters are mutated."""
    records = [dict(r) for r in GOOD_RECORDS]
    changed = False
    for _ in range(draw(st.integers(0, 4))):
        r = draw(st.sampled_from(records))
        op = draw(st.sampled_from(["set", "del", "dup_record", "drop_record"]))
        if op == "set":
            r[draw(st.sampled_from(FIELDS))] = draw(json_value)
        elif op == "del" and r:
            del r[draw(st.sampled_from(sorted(r)))]
        elif op == "dup_record":
            records.append(dict(r))
        elif len(records) > 1:
            records.remove(r)
        changed = True
    lines: list[str | bytes] = [json.dumps(r, allow_nan=True) + "\n" for r in records]
    for _ in range(draw(st.integers(0, 3))):  # character-level damage
        k = draw(st.integers(0, len(lines) - 1))
        text = str(lines[k])
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "cut", "blank", "bytes", "garbage"]))
        if op == "insert":
            lines[k] = (
                text[:pos] + draw(st.sampled_from(JSON_TOKENS) | st.text(max_size=4)) + (text[pos:])
            )
        elif op == "delete":
            lines[k] = text[:pos] + text[pos + draw(st.integers(1, 8)) :]
        elif op == "cut":
            lines[k] = text[:pos]
        elif op == "blank":
            lines.insert(k, draw(st.sampled_from(["\n", "  \n", "\t\n", ""])))
        elif op == "bytes":
            lines[k] = text.encode("utf-8") + b"\xc3\x28\n"
        else:
            lines[k] = draw(st.text(max_size=60)) + "\n"
        changed = True
    return lines, changed


def _catalog(lines: list[str | bytes]) -> list[tuple[Any, ...]]:
    return [
        (r.image, r.category, r.positives, r.bbox, r.split)
        for r in read_catalog_jsonl(lines, CATALOG, CATS, ATTRS)
    ]


@pytest.mark.timeout(120)
def test_mutated_catalog_raises_only_annotation_error() -> None:
    seen = {"ok": 0, "error": 0}

    @FUZZ
    @given(case=catalog_lines())
    def run(case: tuple[list[str | bytes], bool]) -> None:
        lines, changed = case
        ok, result = parse_or_annotation_error(lambda: _catalog(list(lines)), CATALOG, len(lines))
        seen["ok" if ok else "error"] += 1
        if not changed:
            assert ok and result == GOOD_PARSED

    run()
    assert seen["ok"] > 0 and seen["error"] > 0, seen


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image": "a.jpg", "category": "Tee", "attributes": [], "bbox": [1, 2, ' + HUGE + ", 4]}",
         "unreadable JSON (Exceeds the limit"),
        ("[" * 100_000, "unreadable JSON (nested too deeply)"),
        ('{"image": "a\\ud800.jpg", "category": "Tee", "attributes": []}',
         "field 'image' must be a path of valid Unicode characters"),
    ],
)  # fmt: skip
def test_catalog_regressions_found_by_fuzzing(line: str, message: str) -> None:
    """Each raised a bare ValueError/RecursionError naming no line (a lone surrogate: in ingest)."""
    with pytest.raises(AnnotationError, match=rf"^{re.escape(CATALOG)}:1: .*{re.escape(message)}"):
        _catalog([line + "\n"])


def test_catalog_bbox_int_beyond_float_range_is_a_box() -> None:
    """Regression: math.isfinite(10**400) raised OverflowError; an int is a finite number."""
    big = 10**400
    line = json.dumps(
        {"image": "a.jpg", "category": "Tee", "attributes": [], "bbox": [0, 0, big, 5]}
    )
    assert _catalog([line])[0][3] == (0, 0, big, 5)


# --------------------------------------------------------------------------- image files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def claimed_size_png(width: int, height: int) -> bytes:
    """A 100-byte PNG whose IHDR claims ``width`` x ``height`` (valid CRCs, one row of data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def test_crafted_png_header_claims_the_size() -> None:
    import io

    with Image.open(io.BytesIO(claimed_size_png(1000, 1000))) as im:  # under PIL's own limit
        assert im.size == (1000, 1000)


@pytest.mark.timeout(120)
def test_bad_image_files_are_skipped_with_reasons_and_exit_0(demo_copy: Path, tmp_path: Path):
    idx = load_annotations_from_dir(demo_copy)
    names = [r.name for r in idx.records]
    victims = {
        "truncated": names[2],
        "zero-byte": names[7],
        "text": names[11],
        "claimed": names[19],
        "compressible": names[23],
    }
    img = demo_copy / "Img"
    whole = (img / victims["truncated"]).read_bytes()
    assert whole[:2] == b"\xff\xd8" and len(whole) > 600
    (img / victims["truncated"]).write_bytes(whole[: len(whole) // 2])
    (img / victims["zero-byte"]).write_bytes(b"")
    (img / victims["text"]).write_text("name,price\nshirt,12.99\n")  # a CSV saved as .jpg
    (img / victims["claimed"]).write_bytes(claimed_size_png(100_000, 100_000))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")  # 64 M pixels in a few KB
    assert bomb.stat().st_size < 100_000
    (img / victims["compressible"]).write_bytes(bomb.read_bytes())

    dest = tmp_path / "dest"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fashion_attr.steps.preprocess",
            "--source",
            str(demo_copy),
            "--dest",
            str(dest),
            "--image-size",
            "32",
            "--shard-max-samples",
            "16",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "created" and summary["skipped"] == 5
    manifest = load_manifest(summary["uri"])
    reasons = {s.image: s.reason for s in manifest.skipped}
    assert set(reasons) == set(victims.values())
    assert reasons[victims["truncated"]].startswith("undecodable:")
    assert "truncated" in reasons[victims["truncated"]]
    assert reasons[victims["zero-byte"]].startswith("undecodable:")
    assert reasons[victims["text"]].startswith("undecodable:")
    assert reasons[victims["claimed"]].startswith("decompression bomb guard:")
    assert "10000000000" in reasons[victims["claimed"]]  # PIL's own error: 1e10 pixels
    assert reasons[victims["compressible"]] == (
        "decompression bomb guard: 8000x8000 pixels exceeds 50000000"
    )
    assert sum(manifest.counts.values()) == len(names) - 5
