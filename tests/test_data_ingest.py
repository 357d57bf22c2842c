"""Ingest: DeepFashion-C (local or S3) -> versioned shards; bad input; crash; parts; increments."""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fashion_attr.data.annotations import (
    HEADERS,
    clamp_bbox,
    load_annotations_from_dir,
    write_annotation_file,
)
from fashion_attr.data.ingest import IngestError, engine, ingest_batch, ingest_full
from fashion_attr.data.shards import (
    ManifestError,
    ShardWriter,
    iter_shard_samples,
    load_manifest,
    resolve_shard_uri,
    sample_key,
    sha256_file,
)
from fashion_attr.steps.preprocess import main
from PIL import Image

SIZE = 32
PER_SHARD = 16


def _run(src, dest, **kw):
    kw.setdefault("image_size", SIZE)
    kw.setdefault("shard_max_samples", PER_SHARD)
    return ingest_full(src, dest, progress=False, **kw)


def _fold(dest, base, batch, **kw):
    return ingest_batch(dest, base=base, batch=batch, progress=False, **kw)


def _cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    rc = main([*map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return rc, (json.loads(lines[-1]) if lines else None), err


def _content(result, *, local_dir: Path | None = None) -> dict[str, tuple[str, bytes, dict]]:
    """key -> (split, jpeg bytes, label record) over every shard the manifest names."""
    out = {}
    for split, entries in result.manifest.shards.items():
        for e in entries:
            uri = resolve_shard_uri(result.uri, e.uri)
            if local_dir is not None:  # an S3 shard, downloaded by the caller
                uri = str(local_dir / Path(uri).name)
            for key, jpeg, meta in iter_shard_samples(uri):
                assert key not in out
                out[key] = (split, jpeg, meta)
    return out


def _set_line(path: Path, line_no: int, new: str | None) -> None:
    lines = path.read_text().split("\n")
    if new is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = new
    path.write_text("\n".join(lines))


def _line(path: Path, line_no: int) -> str:
    return path.read_text().split("\n")[line_no - 1]


# --------------------------------------------------------------------------- happy path


def test_local_ingest_matches_annotations_sample_by_sample(demo_dataset: Path, tmp_path: Path):
    res = _run(demo_dataset, tmp_path / "dest")
    idx = load_annotations_from_dir(demo_dataset)
    records = {r.name: r for r in idx.records}
    m = res.manifest
    assert res.created and res.uri == str(tmp_path / "dest" / res.version)
    assert m.skipped == []
    assert m.counts == dict(collections.Counter(r.split for r in idx.records))
    assert [c.name for c in m.categories] == [c.name for c in idx.categories]
    assert [(a.name, a.group) for a in m.attributes] == [(a.name, a.group) for a in idx.attributes]

    content = _content(res)
    assert len(content) == len(records) == 96
    for key, (split, jpeg, meta) in content.items():
        rec = records[meta["image"]]
        assert key == sample_key(rec.name)
        assert split == rec.split
        assert meta["category"] == rec.category
        assert meta["positives"] == list(rec.positives)
        assert meta["unknown"] == list(rec.unknown)
        with Image.open(io.BytesIO(jpeg)) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (SIZE, SIZE))
        src_bytes = (demo_dataset / "Img" / rec.name).read_bytes()
        assert meta["sha256"] == hashlib.sha256(src_bytes).hexdigest()
        with Image.open(demo_dataset / "Img" / rec.name) as src:
            w, h = src.size
        assert tuple(meta["bbox"]) == clamp_bbox(rec.bbox, w, h, "x", 0)

    # Train label statistics, counted from the annotations directly.
    train = [r for r in idx.records if r.split == "train"]
    n_attr = len(idx.attributes)
    pos = [sum(j in r.positives for r in train) for j in range(n_attr)]
    unk = [sum(j in r.unknown for r in train) for j in range(n_attr)]
    tac = m.train_attribute_counts
    assert tac.positive == pos and tac.unknown == unk
    assert tac.negative == [len(train) - p - u for p, u in zip(pos, unk, strict=True)]
    assert sum(unk) > 0  # the fixture writes some unknown (0) labels
    cats = collections.Counter(r.category for r in train)
    assert m.train_category_counts == [cats.get(c, 0) for c in range(len(idx.categories))]

    # Shards: names, sizes, checksums; at most PER_SHARD samples each; shuffled order.
    version_dir = Path(res.uri)
    for split, entries in m.shards.items():
        for i, e in enumerate(entries):
            assert e.uri == f"{split}-0000-{i:06d}.tar"
            path = version_dir / e.uri
            assert e.samples <= PER_SHARD and sha256_file(path) == e.sha256
            assert path.stat().st_size == e.bytes
    in_shards = [c[2]["image"] for c in content.values() if c[0] == "train"]
    assert in_shards != sorted(in_shards)  # the source is sorted by folder; shards are not

    # The index: one entry per sample with the image's content hash, checksum in the manifest.
    raw = (version_dir / m.index.uri).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == m.index.sha256
    entries = [json.loads(ln) for ln in gzip.decompress(raw).splitlines()]
    assert len(entries) == m.index.entries == 96
    for e in entries:
        split, _, meta = content[e["key"]]
        assert (e["split"], e["image"], e["sha256"]) == (split, meta["image"], meta["sha256"])
    # manifest.json is written last.
    assert all(
        p.stat().st_mtime_ns <= (version_dir / "manifest.json").stat().st_mtime_ns
        for p in version_dir.iterdir()
    )


def _two_colour(path: Path, size: tuple[int, int], split_x: int | None, split_y: int | None,
                a: tuple, b: tuple) -> None:  # fmt: skip
    im = Image.new("RGB", size, a)
    if split_x is not None:
        im.paste(b, (split_x, 0, size[0], size[1]))
    if split_y is not None:
        im.paste(b, (0, split_y, size[0], size[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=95)


def _write_dataset(root: Path, rows: list[tuple[str, int, list[int], tuple, str]]) -> Path:
    """rows: (name, category 1-based, labels, bbox, split); 2 categories, 3 attributes."""
    anno = root / "Anno"
    write_annotation_file(anno / "list_category_cloth.txt", HEADERS["Anno/list_category_cloth.txt"],
                          [["Tee", 1], ["Skirt", 2]])  # fmt: skip
    write_annotation_file(anno / "list_attr_cloth.txt", HEADERS["Anno/list_attr_cloth.txt"],
                          [["floral", 1], ["abstract chevron print", 1], ["knit", 2]])  # fmt: skip
    write_annotation_file(anno / "list_category_img.txt", HEADERS["Anno/list_category_img.txt"],
                          [[n, c] for n, c, _, _, _ in rows])  # fmt: skip
    write_annotation_file(anno / "list_attr_img.txt", HEADERS["Anno/list_attr_img.txt"],
                          [[n, *lab] for n, _, lab, _, _ in rows])  # fmt: skip
    write_annotation_file(anno / "list_bbox.txt", HEADERS["Anno/list_bbox.txt"],
                          [[n, *box] for n, _, _, box, _ in rows])  # fmt: skip
    write_annotation_file(root / "Eval/list_eval_partition.txt",
                          HEADERS["Eval/list_eval_partition.txt"],
                          [[n, s] for n, _, _, _, s in rows])  # fmt: skip
    return root


def _mean_rgb(jpeg: bytes) -> tuple[float, float, float]:
    with Image.open(io.BytesIO(jpeg)) as im:
        px = list(im.getdata())
    return tuple(sum(p[c] for p in px) / len(px) for c in range(3))  # type: ignore[return-value]


def test_crop_clamp_and_resize_hand_computed(tmp_path: Path):
    red, blue, green, white = (255, 0, 0), (0, 0, 255), (0, 160, 0), (255, 255, 255)
    img = tmp_path / "src" / "Img" / "img" / "Item"
    # a: 100x60, left half red, right half blue; box = right half -> all blue.
    _two_colour(img / "a.jpg", (100, 60), 50, None, red, blue)
    # b: same picture; box reaches past the top-left edge -> clamped to the left half: red.
    _two_colour(img / "b.jpg", (100, 60), 50, None, red, blue)
    # c: 40x40, top half green, bottom half white; box = bottom half -> white.
    _two_colour(img / "c.jpg", (40, 40), None, 20, green, white)
    src = _write_dataset(tmp_path / "src", [
        ("img/Item/a.jpg", 1, [1, -1, 0], (50, 0, 100, 60), "train"),
        ("img/Item/b.jpg", 2, [-1, 1, 1], (-20, -20, 50, 200), "train"),
        ("img/Item/c.jpg", 1, [-1, -1, -1], (0, 20, 40, 40), "test"),
    ])  # fmt: skip
    res = _run(src, tmp_path / "dest", image_size=16)
    got = {meta["image"]: (jpeg, meta) for _, jpeg, meta in _content(res).values()}
    expected = {
        "img/Item/a.jpg": (blue, [50, 0, 100, 60], 0, [0], [2]),
        "img/Item/b.jpg": (red, [0, 0, 50, 60], 1, [1, 2], []),
        "img/Item/c.jpg": (white, [0, 20, 40, 40], 0, [], []),
    }
    for name, (colour, box, cat, pos, unk) in expected.items():
        jpeg, meta = got[name]
        assert meta["bbox"] == box
        assert (meta["category"], meta["positives"], meta["unknown"]) == (cat, pos, unk)
        assert all(abs(m - c) <= 6 for m, c in zip(_mean_rgb(jpeg), colour, strict=True)), name
    tac = res.manifest.train_attribute_counts
    # train = a (floral +, chevron -, knit unknown) and b (floral -, chevron +, knit +).
    assert (tac.positive, tac.negative, tac.unknown) == ([1, 1, 1], [1, 1, 0], [0, 0, 1])
    assert res.manifest.counts == {"train": 2, "test": 1}


def test_s3_source_and_dest_give_the_same_version(demo_dataset: Path, tmp_path: Path, s3_server):
    for path in demo_dataset.rglob("*"):
        if path.is_file():
            key = "raw/" + path.relative_to(demo_dataset).as_posix()
            s3_server.client.upload_file(str(path), s3_server.bucket, key)
    res = _run(s3_server.uri("raw"), s3_server.uri("versions"))
    local = _run(demo_dataset, tmp_path / "dest")
    assert res.version == local.version  # same annotations and settings -> same id
    assert res.uri == s3_server.uri(f"versions/{res.version}")
    assert load_manifest(res.uri).counts == local.manifest.counts
    prefix = f"versions/{res.version}/"  # (versions/_fingerprints/ holds the source's cache)
    listed = s3_server.client.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"])
    shard_names = sorted(e.uri for es in res.manifest.shards.values() for e in es)
    assert names == sorted([*shard_names, "index.jsonl.gz", "manifest.json"])
    down = tmp_path / "down"
    down.mkdir()
    for name in shard_names:
        s3_server.client.download_file(
            s3_server.bucket, f"versions/{res.version}/{name}", str(down / name)
        )
    remote = _content(res, local_dir=down)
    assert remote == _content(local)


# --------------------------------------------------------------------------- bad input


def _no_version_visible(dest: Path) -> bool:
    return not dest.exists() or (
        not any(dest.rglob("manifest.json")) and not any(dest.rglob("*.tar"))
    )


def _count_mismatch(root: Path) -> tuple[str, int, str]:
    p = root / "Anno/list_bbox.txt"
    _set_line(p, 1, str(int(_line(p, 1)) + 1))
    return "Anno/list_bbox.txt", 1, "declares 97 records but the file has 96"


def _wrong_fields(root: Path) -> tuple[str, int, str]:
    p = root / "Anno/list_category_img.txt"
    _set_line(p, 5, _line(p, 5).split()[0])
    return "Anno/list_category_img.txt", 5, "expected 2 fields"


def _missing_from_other(root: Path) -> tuple[str, int, str]:
    p = root / "Anno/list_bbox.txt"
    image = _line(p, 7).split()[0]
    _set_line(p, 7, None)
    _set_line(p, 1, "95")
    part = (root / "Eval/list_eval_partition.txt").read_text().split("\n")
    line = next(i + 1 for i, ln in enumerate(part) if ln.split()[:1] == [image])
    return "Eval/list_eval_partition.txt", line, f"{image} .* missing from Anno/list_bbox.txt"


def _label_out_of_range(root: Path) -> tuple[str, int, str]:
    p = root / "Anno/list_attr_img.txt"
    toks = _line(p, 4).split()
    toks[3] = "2"
    _set_line(p, 4, " ".join(toks))
    return "Anno/list_attr_img.txt", 4, "label '2' .* attribute 3 .* outside"


def _category_out_of_range(root: Path) -> tuple[str, int, str]:
    p = root / "Anno/list_category_img.txt"
    _set_line(p, 6, _line(p, 6).split()[0] + " 51")
    return "Anno/list_category_img.txt", 6, "category_label 51 .* out of range 1..50"


def _empty_box(root: Path) -> tuple[str, int, str]:
    p = root / "Anno/list_bbox.txt"
    name, x1, y1, _x2, y2 = _line(p, 8).split()
    _set_line(p, 8, f"{name} {x1} {y1} {x1} {y2}")
    return "Anno/list_bbox.txt", 8, "is empty"


def _empty_after_clamping(root: Path) -> tuple[str, int, str]:
    p = root / "Anno/list_bbox.txt"
    name = _line(p, 9).split()[0]
    _set_line(p, 9, f"{name} 5000 5000 6000 6000")
    return "Anno/list_bbox.txt", 9, "empty after clamping"


@pytest.mark.parametrize(
    "corrupt",
    [
        _count_mismatch,
        _wrong_fields,
        _missing_from_other,
        _label_out_of_range,
        _category_out_of_range,
        _empty_box,
        _empty_after_clamping,
    ],
)
def test_bad_input_exits_2_naming_file_and_line_and_publishes_nothing(
    demo_copy: Path, tmp_path: Path, capsys, corrupt
):
    file, line, message = corrupt(demo_copy)
    dest = tmp_path / "dest"
    rc, summary, err = _cli(capsys, "--source", demo_copy, "--dest", dest, "--image-size", SIZE,
                            "--shard-max-samples", 8)  # fmt: skip
    assert rc == 2 and summary is None
    assert f"{file}:{line}:" in err
    assert re.search(message, err), err
    assert "Fix:" in err
    assert _no_version_visible(dest)


def test_missing_annotation_file_is_reported(demo_copy: Path, tmp_path: Path, capsys):
    (demo_copy / "Anno/list_attr_cloth.txt").unlink()
    rc, _, err = _cli(capsys, "--source", demo_copy, "--dest", tmp_path / "d")
    assert rc == 2 and "list_attr_cloth.txt" in err and "not found" in err
    assert not (tmp_path / "d").exists()


def test_missing_and_corrupt_images_are_skipped_and_listed(demo_copy: Path, tmp_path: Path):
    idx = load_annotations_from_dir(demo_copy)
    gone, broken = idx.records[3].name, idx.records[10].name
    (demo_copy / "Img" / gone).unlink()
    (demo_copy / "Img" / broken).write_bytes(b"\xff\xd8 this is not a jpeg")
    res = _run(demo_copy, tmp_path / "dest")
    skipped = {s.image: s.reason for s in res.manifest.skipped}
    assert set(skipped) == {gone, broken}
    assert skipped[gone].startswith("missing: no such file")
    assert skipped[broken].startswith("undecodable:")
    assert sum(res.manifest.counts.values()) == 94
    images = {meta["image"] for _, _, meta in _content(res).values()}
    assert gone not in images and broken not in images and len(images) == 94


def test_decompression_bomb_guard_skips_large_images(demo_copy, tmp_path, monkeypatch):
    idx = load_annotations_from_dir(demo_copy)
    areas = {}
    for r in idx.records:
        with Image.open(demo_copy / "Img" / r.name) as im:
            areas[r.name] = im.size[0] * im.size[1]
    cap = sorted(areas.values())[len(areas) // 2]
    monkeypatch.setattr(engine, "MAX_IMAGE_PIXELS", cap)
    res = _run(demo_copy, tmp_path / "dest")
    big = {n for n, a in areas.items() if a > cap}
    assert {s.image for s in res.manifest.skipped} == big and big
    assert all("decompression bomb guard" in s.reason for s in res.manifest.skipped)


# --------------------------------------------------------------------------- reruns, crashes


def test_rerun_is_a_noop(demo_dataset: Path, tmp_path: Path, capsys):
    args = ("--source", demo_dataset, "--dest", tmp_path, "--image-size", SIZE)
    rc, first, _ = _cli(capsys, *args)
    assert rc == 0 and first["status"] == "created" and first["created"] is True
    version_dir = Path(first["uri"])
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in version_dir.iterdir()}
    rc, second, _ = _cli(capsys, *args)
    assert rc == 0 and second["status"] == "exists" and second["created"] is False
    assert second["version"] == first["version"] and second["counts"] == first["counts"]
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in version_dir.iterdir()}
    assert after == before


def test_killed_run_is_invisible_and_a_rerun_completes(demo_dataset: Path, tmp_path: Path):
    dest = tmp_path / "dest"
    # Die abruptly (no cleanup, no finally blocks) right after the 2nd shard is published.
    script = textwrap.dedent(
        """
        import os, sys
        from fashion_attr.data import shards
        from fashion_attr.data.ingest import ingest_full
        original = shards.ShardWriter._close_current
        published = []
        def close_then_die(self):
            out = original(self)
            published.append(out)
            if len(published) == 2:
                os._exit(9)
            return out
        shards.ShardWriter._close_current = close_then_die
        ingest_full(sys.argv[1], sys.argv[2], image_size=32, shard_max_samples=16,
                       progress=False)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(demo_dataset), str(dest)], capture_output=True
    )
    assert proc.returncode == 9, proc.stderr.decode()
    [version_dir] = list(dest.glob("v-*"))
    assert len(list(version_dir.glob("*.tar"))) == 2
    assert not (version_dir / "manifest.json").exists()
    with pytest.raises(ManifestError, match=r"no manifest\.json at"):
        load_manifest(version_dir)

    res = _run(demo_dataset, dest)
    assert res.created and res.uri == str(version_dir)
    idx = load_annotations_from_dir(demo_dataset)
    assert res.manifest.counts == dict(collections.Counter(r.split for r in idx.records))
    assert {m["image"] for _, _, m in _content(res).values()} == {r.name for r in idx.records}
    named = {e.uri for es in res.manifest.shards.values() for e in es}
    assert {p.name for p in version_dir.glob("*.tar")} == named  # the rerun overwrote them


def test_error_midway_removes_this_runs_shards(demo_dataset, tmp_path, monkeypatch):
    original = ShardWriter._close_current
    calls = []

    def close_then_fail(self):
        calls.append(original(self))
        if len(calls) == 3:
            raise OSError("disk full")
        return calls[-1]

    monkeypatch.setattr(ShardWriter, "_close_current", close_then_fail)
    with pytest.raises(OSError, match="disk full"):
        _run(demo_dataset, tmp_path / "dest")
    # Shards and the version folder removed (the source's fingerprint cache stays: a cache).
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["_fingerprints"]


# --------------------------------------------------------------------------- parts


def test_parts_and_merge_equal_single_process(demo_dataset: Path, tmp_path: Path, capsys):
    single = _run(demo_dataset, tmp_path / "single", workers=2)
    serial = _run(demo_dataset, tmp_path / "serial", workers=1)
    # Shard bytes do not depend on the number of workers.
    assert single.manifest.shards == serial.manifest.shards

    dest = tmp_path / "parts"
    base = ("--source", demo_dataset, "--dest", dest, "--image-size", SIZE,
            "--shard-max-samples", PER_SHARD)  # fmt: skip
    for i in range(3):
        rc, summary, _ = _cli(capsys, *base, "--part", i, "--parts", 3)
        assert rc == 0 and summary["status"] == "part-written" and summary["part"] == i
        with pytest.raises(ManifestError):
            load_manifest(summary["uri"])  # not visible before the merge
    rc, summary, _ = _cli(capsys, *base, "--part", 1, "--parts", 3)
    assert rc == 0 and summary["status"] == "part-exists"
    rc, summary, _ = _cli(capsys, *base, "--merge", "--parts", 3)
    assert rc == 0 and summary["status"] == "created"
    merged = load_manifest(summary["uri"])
    assert summary["version"] == single.version
    assert merged.counts == single.manifest.counts
    assert merged.train_attribute_counts == single.manifest.train_attribute_counts
    assert merged.train_category_counts == single.manifest.train_category_counts
    assert {e.uri.split("-")[1] for es in merged.shards.values() for e in es} == {
        "0000", "0001", "0002"
    }  # fmt: skip

    class _Res:  # what _content needs
        manifest, uri = merged, summary["uri"]

    assert _content(_Res) == _content(single)

    def index(uri: str) -> dict[str, dict]:
        raw = gzip.decompress((Path(uri) / "index.jsonl.gz").read_bytes())
        return {e["key"]: e for e in map(json.loads, raw.splitlines())}

    merged_index, single_index = index(summary["uri"]), index(single.uri)
    assert merged_index.keys() == single_index.keys()
    for key, entry in merged_index.items():
        shard = entry.pop("shard")  # names differ (part number); the shard must hold the key
        assert key in {k for k, _, _ in iter_shard_samples(Path(summary["uri"]) / shard)}
        single_index[key].pop("shard")
        assert entry == single_index[key]


def test_merge_names_missing_parts(demo_dataset: Path, tmp_path: Path, capsys):
    base = ("--source", demo_dataset, "--dest", tmp_path, "--image-size", SIZE)
    for i in (0, 2):
        assert _cli(capsys, *base, "--part", i, "--parts", 4)[0] == 0
    rc, _, err = _cli(capsys, *base, "--merge", "--parts", 4)
    assert rc == 2 and "missing part manifests for part(s) 1, 3 of 4" in err
    assert not any(tmp_path.rglob("manifest.json"))


def test_bad_arguments_exit_2(demo_dataset: Path, tmp_path: Path, capsys):
    rc, _, err = _cli(capsys, "--source", demo_dataset, "--dest", tmp_path, "--part", "3",
                      "--parts", "2")  # fmt: skip
    assert rc == 2 and "--part 3 needs --parts n with 0 <= part < n" in err
    rc, _, err = _cli(capsys, "--dest", tmp_path, "--batch", "x.jsonl")
    assert rc == 2 and "needs both --base" in err
    with pytest.raises(IngestError, match="workers"):
        ingest_full(demo_dataset, tmp_path, workers=0)


# --------------------------------------------------------------------------- incremental


def _jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def test_incremental_jsonl_batch(demo_dataset: Path, tmp_path: Path, capsys):
    dest = tmp_path / "versions"
    base = _run(demo_dataset, dest)
    idx = load_annotations_from_dir(demo_dataset)
    attr_names = [a.name for a in idx.attributes]
    batch = tmp_path / "batch"
    _jpeg(batch / "new1.jpg", (80, 90), (10, 200, 30))
    _jpeg(batch / "img" / "new2.jpg", (70, 50), (200, 10, 30))
    dup_of = idx.records[5].name
    shutil.copy(demo_dataset / "Img" / dup_of, batch / "dup.jpg")
    rows = [
        {"image": "new1.jpg", "category": "Dress", "attributes": ["print", "floral"],
         "bbox": [5, 5, 200, 80]},
        {"image": "img/new2.jpg", "category": "Tee", "attributes": [], "split": "val"},
        {"image": "dup.jpg", "category": "Tee", "attributes": ["knit"]},
        {"image": str(batch / "missing.jpg"), "category": "Tee", "attributes": []},
    ]  # fmt: skip
    jsonl = batch / "batch.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))

    rc, summary, err = _cli(capsys, "--dest", dest, "--base", base.version, "--batch", jsonl)
    assert rc == 0, err
    new = load_manifest(summary["uri"])
    assert new.base is not None and new.base.version == base.version
    assert new.image_size == SIZE  # inherited from the base
    b = base.manifest.counts
    assert new.counts == {"train": b["train"] + 1, "val": b["val"] + 1, "test": b["test"]}
    reasons = {s.image: s.reason for s in new.skipped}
    assert reasons["dup.jpg"] == f"duplicate: same bytes as {dup_of}"
    assert reasons[str(batch / "missing.jpg")].startswith("missing")
    # Train statistics: base + new1 (positives "print" and "floral", all else negative).
    p, f = attr_names.index("print"), attr_names.index("floral")
    bt = base.manifest.train_attribute_counts
    assert new.train_attribute_counts.positive == [
        v + (j in (p, f)) for j, v in enumerate(bt.positive)
    ]
    assert new.train_attribute_counts.negative == [
        v + (j not in (p, f)) for j, v in enumerate(bt.negative)
    ]
    dress = [c.name for c in idx.categories].index("Dress")
    assert new.train_category_counts[dress] == base.manifest.train_category_counts[dress] + 1

    # The base's shards are referenced in place; only the new images were written.
    version_dir = Path(summary["uri"])
    assert sorted(p.name for p in version_dir.glob("*.tar")) == [
        "train-0000-000000.tar", "val-0000-000000.tar"
    ]  # fmt: skip
    base_refs = [e.uri for e in new.shards["train"][:-1]]
    assert base_refs == [f"../{base.version}/{e.uri}" for e in base.manifest.shards["train"]]
    samples = list(iter_shard_samples(version_dir / "train-0000-000000.tar"))
    [(key, jpeg, meta)] = samples
    assert key == sample_key("new1.jpg")
    assert meta["bbox"] == [5, 5, 80, 80] and meta["positives"] == sorted([p, f])
    assert meta["category"] == dress and _mean_rgb(jpeg)[1] > 150
    # The index grows by the two new images (base entries first).
    entries = gzip.decompress((version_dir / "index.jsonl.gz").read_bytes()).splitlines()
    assert len(entries) == new.index.entries == base.manifest.index.entries + 2

    rc, again, _ = _cli(capsys, "--dest", dest, "--base", base.version, "--batch", jsonl)
    assert rc == 0 and again["status"] == "exists" and again["version"] == summary["version"]


def test_incremental_unknown_attribute_lists_valid_names(demo_dataset, tmp_path, capsys):
    dest = tmp_path / "versions"
    base = _run(demo_dataset, dest)
    _jpeg(tmp_path / "a.jpg", (60, 60), (1, 2, 3))
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(
        json.dumps({"image": "a.jpg", "category": "Tee", "attributes": []}) + "\n"
        + json.dumps({"image": "a2.jpg", "category": "Tee", "attributes": ["flowery"]}) + "\n"
    )  # fmt: skip
    rc, _, err = _cli(capsys, "--dest", dest, "--base", base.uri, "--batch", jsonl)
    assert rc == 2
    assert f"{jsonl}:2:" in err and "unknown attribute 'flowery'" in err
    assert "'print', 'floral'" in err  # the valid names are listed
    assert sorted(p.name for p in dest.glob("v-*")) == [base.version]


def test_incremental_folder_batch_dedupes_and_checks_labels(demo_dataset, tmp_path, capsys):
    dest = tmp_path / "versions"
    base = _run(demo_dataset, dest)
    idx = load_annotations_from_dir(demo_dataset)
    batch = tmp_path / "batch"
    for rel in ("Anno/list_category_cloth.txt", "Anno/list_attr_cloth.txt"):
        (batch / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_dataset / rel, batch / rel)
    n_attr = len(idx.attributes)
    _jpeg(batch / "Img/img/New_Item/img_00000001.jpg", (90, 90), (0, 0, 250))
    _jpeg(batch / "Img/img/New_Item/img_00000002.jpg", (90, 70), (250, 250, 0))
    (batch / "Img/img/New_Item/img_00000003.jpg").write_bytes(
        (demo_dataset / "Img" / idx.records[0].name).read_bytes()
    )
    rows = [
        ("img/New_Item/img_00000001.jpg", 1, [1] + [-1] * (n_attr - 1), (0, 0, 90, 90), "train"),
        ("img/New_Item/img_00000002.jpg", 2, [0] + [-1] * (n_attr - 1), (10, 10, 80, 60), "test"),
        ("img/New_Item/img_00000003.jpg", 1, [-1] * n_attr, (0, 0, 40, 40), "train"),
    ]
    anno = batch / "Anno"
    write_annotation_file(anno / "list_category_img.txt", HEADERS["Anno/list_category_img.txt"],
                          [[n, c] for n, c, _, _, _ in rows])  # fmt: skip
    write_annotation_file(anno / "list_attr_img.txt", HEADERS["Anno/list_attr_img.txt"],
                          [[n, *lab] for n, _, lab, _, _ in rows])  # fmt: skip
    write_annotation_file(anno / "list_bbox.txt", HEADERS["Anno/list_bbox.txt"],
                          [[n, *box] for n, _, _, box, _ in rows])  # fmt: skip
    write_annotation_file(batch / "Eval/list_eval_partition.txt",
                          HEADERS["Eval/list_eval_partition.txt"],
                          [[n, s] for n, _, _, _, s in rows])  # fmt: skip

    res = _fold(dest, base.version, batch)
    b = base.manifest.counts
    assert res.manifest.counts == {"train": b["train"] + 1, "val": b["val"], "test": b["test"] + 1}
    assert [s.model_dump() for s in res.manifest.skipped] == [
        {"image": "img/New_Item/img_00000003.jpg",
         "reason": f"duplicate: same bytes as {idx.records[0].name}"}
    ]  # fmt: skip
    bt, nt = base.manifest.train_attribute_counts, res.manifest.train_attribute_counts
    assert nt.positive[0] == bt.positive[0] + 1 and nt.negative[1] == bt.negative[1] + 1
    assert nt.unknown == bt.unknown  # the unknown label is on a test image

    # A batch whose attribute list differs from the base's is refused, naming file and line.
    p = batch / "Anno/list_attr_cloth.txt"
    lines = p.read_text().split("\n")
    lines[4] = "renamed attribute  1"
    p.write_text("\n".join(lines))
    with pytest.raises(IngestError, match=r"list_attr_cloth.txt: attribute 3 \(line 5\)"):
        _fold(dest, base.version, batch)
    with pytest.raises(IngestError, match="image_size = 64 differs from the base"):
        _fold(dest, base.version, batch, image_size=64)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"source": "s"}, "full"),
        ({"source": "s", "part": 1, "parts": 3}, "part"),
        ({"source": "s", "merge": True, "parts": 3}, "merge"),
        ({"source": "s", "merge": True}, "merge"),
        ({"base": "latest", "batch": "b.jsonl"}, "batch"),
        ({"source": "s", "base": "latest", "batch": "drop/"}, "batch"),
    ],
)
def test_the_arguments_choose_one_named_operation(args, expected):
    from fashion_attr.data.ingest import choose_operation

    full = {"source": None, "base": None, "batch": None, "part": None, "parts": None}
    assert choose_operation(**{**full, "merge": False, **args}) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"base": "v-1"}, "needs both --base"),
        ({"batch": "b.jsonl"}, "needs both --base"),
        ({"base": "v-1", "batch": "b", "part": 0, "parts": 2}, "drop --part"),
        ({"base": "v-1", "batch": "b", "merge": True}, "drop --part"),
        ({"source": "s", "part": 0, "merge": True}, "drop --part when merging"),
        ({"source": "s", "part": 3, "parts": 3}, "0 <= part < n"),
        ({"source": "s", "part": 0}, "needs --parts"),
        ({"source": "s", "parts": 0}, "--parts >= 1"),
        ({}, "needs --source"),
    ],
)
def test_meaningless_argument_sets_are_refused_with_the_fix(args, message):
    from fashion_attr.data.ingest import choose_operation

    full = {"source": None, "base": None, "batch": None, "part": None, "parts": None}
    with pytest.raises(IngestError, match=re.escape(message)):
        choose_operation(**{**full, "merge": False, **args})
