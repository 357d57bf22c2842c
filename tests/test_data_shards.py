"""The shard format: keys, writer roll-over, safe reading, manifest validation."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from fashion_attr.data.shards import (
    Manifest,
    ManifestError,
    ShardFormatError,
    ShardWriter,
    index_shard,
    iter_shard_samples,
    load_manifest,
    resolve_shard_uri,
    sample_key,
    sha256_file,
    shard_name,
)


def test_sample_key_is_stable_16_hex_without_dots() -> None:
    # sha1("img/Sheer_Blouse/img_00000001.jpg") = 9d9ac4520c65535f5035...
    assert sample_key("img/Sheer_Blouse/img_00000001.jpg") == "9d9ac4520c65535f"
    assert sample_key("a.b.c.jpg").count(".") == 0


def test_shard_name_layout() -> None:
    assert shard_name("train", 3, 12) == "train-0003-000012.tar"


def _meta(i: int) -> dict:
    return {"category": i % 3, "positives": [i % 5], "unknown": [], "image": f"img/x/{i}.jpg"}


def test_writer_rolls_over_by_sample_count(tmp_path: Path) -> None:
    w = ShardWriter(str(tmp_path), "train", 0, max_samples=3, max_bytes=1 << 20)
    for i in range(7):
        w.add(f"k{i}", bytes([i]) * 10, _meta(i))
    w.close()
    assert [s.samples for s in w.written] == [3, 3, 1]
    assert [s.name for s in w.written] == [
        "train-0000-000000.tar",
        "train-0000-000001.tar",
        "train-0000-000002.tar",
    ]
    # Only the published shards are in the folder: no temporary files left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [s.name for s in w.written]
    got = [key for s in w.written for key, _, _ in iter_shard_samples(tmp_path / s.name)]
    assert got == [f"k{i}" for i in range(7)]
    for s in w.written:
        assert sha256_file(tmp_path / s.name) == s.sha256
        assert (tmp_path / s.name).stat().st_size == s.bytes


def test_writer_rolls_over_by_bytes(tmp_path: Path) -> None:
    # One sample = 512 header + 2048 (2000 padded) + 512 header + 512 (json padded) = 3584
    # bytes, so a 6000-byte limit holds one sample per shard (two would be 7168).
    w = ShardWriter(str(tmp_path), "val", 1, max_samples=100, max_bytes=6000)
    for i in range(3):
        w.add(f"k{i}", b"x" * 2000, _meta(i))
    w.close()
    assert [s.samples for s in w.written] == [1, 1, 1]
    assert w.written[0].name == "val-0001-000000.tar"


def test_same_samples_give_byte_identical_shards(tmp_path: Path) -> None:
    digests = []
    for run in ("a", "b"):
        w = ShardWriter(str(tmp_path / run), "train", 0, max_samples=10, max_bytes=1 << 20)
        for i in range(4):
            w.add(f"k{i}", b"jpeg%d" % i, _meta(i))
        w.close()
        digests.append([s.sha256 for s in w.written])
    assert digests[0] == digests[1]


def test_writer_rejects_keys_with_dots(tmp_path: Path) -> None:
    w = ShardWriter(str(tmp_path), "train", 0, max_samples=10, max_bytes=1 << 20)
    with pytest.raises(ShardFormatError, match="no dots"):
        w.add("a.b", b"x", _meta(0))
    w.abort()


def test_index_offsets_read_back_exact_bytes(tmp_path: Path) -> None:
    w = ShardWriter(str(tmp_path), "train", 0, max_samples=10, max_bytes=1 << 20)
    payloads = [b"\xff\xd8" + bytes((i + k) % 256 for k in range(700)) for i in (0, 20, 40)]
    for i, p in enumerate(payloads):
        w.add(f"s{i}", p, _meta(i))
    w.close()
    path = tmp_path / w.written[0].name
    members = index_shard(path)
    data = path.read_bytes()
    for m, p in zip(members, payloads, strict=True):
        assert data[m.jpg_offset : m.jpg_offset + m.jpg_size] == p
        meta = json.loads(data[m.json_offset : m.json_offset + m.json_size])
        assert meta["image"] == f"img/x/{members.index(m)}.jpg"


def _tar_with(path: Path, *members: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w") as tar:
        for info in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _reg(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_reg("../evil.jpg")], "is a path"),
        ([_reg("/etc/evil.jpg")], "is a path"),
        ([_reg("sub/a.jpg")], "is a path"),
        ([_reg("a.jpg"), _link("a.json", "/etc/passwd", tarfile.SYMTYPE)], "symbolic link"),
        ([_reg("a.jpg"), _link("a.json", "a.jpg", tarfile.LNKTYPE)], "hard link"),
        ([_link("d", "", tarfile.DIRTYPE)], "directory"),
        ([_reg("a.png")], "not '<key>.jpg'"),
        ([_reg("a.jpg")], r"lacks \.json"),
    ],
)
def test_unsafe_or_malformed_members_are_refused(
    tmp_path: Path, members: list[tarfile.TarInfo], message: str
) -> None:
    path = _tar_with(tmp_path / "bad-shard.tar", *members)
    with pytest.raises(ShardFormatError, match=message) as err:
        index_shard(path)
    assert "bad-shard.tar" in str(err.value)  # the error names the shard


def _manifest_dict(**over) -> dict:
    sha = "a" * 64
    base = {
        "format": "fashion-attr-shards/1",
        "version": "v-0123456789abcdef",
        "created_at": "2024-01-01T00:00:00+00:00",
        "source": "/data",
        "settings": {},
        "image_size": 32,
        "counts": {"train": 3},
        "categories": [{"name": "Tee", "type": 1}],
        "attributes": [{"name": "floral", "group": 1}, {"name": "knit", "group": 2}],
        "train_attribute_counts": {"positive": [1, 0], "negative": [2, 3], "unknown": [0, 0]},
        "train_category_counts": [3],
        "shards": {"train": [{"uri": "train-0000-000000.tar", "samples": 3, "bytes": 10,
                              "sha256": sha}]},
        "skipped": [],
        "index": {"uri": "index.jsonl.gz", "sha256": sha, "bytes": 0, "entries": 3},
    }  # fmt: skip
    base.update(over)
    return base


def test_load_manifest_missing_names_the_uri(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no manifest\.json at .*incomplete or the URI"):
        load_manifest(tmp_path / "v-0000000000000000")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"counts": {"train": 4}}, "counts\\['train'\\] = 4 but its shards hold 3"),
        ({"train_category_counts": [1, 2]}, "train_category_counts has 2 entries"),
        (
            {"train_attribute_counts": {"positive": [1], "negative": [2], "unknown": [0]}},
            "positive has 1 entries for 2 attributes",
        ),
        ({"counts": {"train": 3, "holdout": 0}}, "unknown split 'holdout'"),
    ],
)
def test_inconsistent_manifest_is_refused(tmp_path: Path, over: dict, message: str) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest_dict(**over)))
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path)


def test_valid_manifest_loads_and_resolves_shards(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest_dict()))
    m = load_manifest(tmp_path)
    assert isinstance(m, Manifest)
    assert (m.num_attributes, m.num_categories) == (2, 1)
    [(uri, entry)] = m.shard_uris(str(tmp_path), "train")
    assert uri == str(tmp_path / "train-0000-000000.tar") and entry.samples == 3
    with pytest.raises(ManifestError, match="no 'val' samples"):
        m.shard_uris(str(tmp_path), "val")


def test_resolve_shard_uri() -> None:
    assert resolve_shard_uri("s3://b/data/v-2", "t.tar") == "s3://b/data/v-2/t.tar"
    assert resolve_shard_uri("s3://b/data/v-2", "../v-1/t.tar") == "s3://b/data/v-1/t.tar"
    assert resolve_shard_uri("/d/v-2", "../v-1/t.tar") == "/d/v-1/t.tar"
    assert resolve_shard_uri("/d/v-2", "s3://x/y.tar") == "s3://x/y.tar"
    assert resolve_shard_uri("s3://b/v-2", "/abs/y.tar") == "/abs/y.tar"
