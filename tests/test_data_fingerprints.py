"""Dataset versions follow the images' content: restored, fixed and replaced images are new data.

Each case starts from a fresh copy of the demo dataset, ingests it, changes the images
the way a user would, and ingests again through the CLI (what the pipeline runs).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from fashion_attr.data.fingerprints import content_digest_of_tree, fingerprint_tree
from fashion_attr.steps import preprocess
from PIL import Image


def _ingest(
    capsys: pytest.CaptureFixture[str], source: Path, dest: Path, *flags: str
) -> dict[str, Any]:
    argv = ["--source", str(source), "--dest", str(dest), "--image-size", "32", "--no-progress"]
    assert preprocess.main([*argv, *flags]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _images(root: Path) -> list[Path]:
    return sorted((root / "Img").rglob("*.jpg"))


def _skips(result: dict[str, Any]) -> int:
    return int(result["skipped"])


def test_a_restored_image_gives_a_new_version_with_it(
    demo_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = _images(demo_copy)[3]
    kept = tmp_path / "kept.jpg"
    shutil.move(victim, kept)
    missing = _ingest(capsys, demo_copy, tmp_path / "dest")
    assert _skips(missing) == 1
    shutil.move(kept, victim)  # the image is back
    restored = _ingest(capsys, demo_copy, tmp_path / "dest")
    assert restored["version"] != missing["version"] and restored["status"] == "created"
    assert _skips(restored) == 0
    assert sum(restored["counts"].values()) == sum(missing["counts"].values()) + 1


def test_a_fixed_corrupt_image_gives_a_new_version_with_it(
    demo_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = _images(demo_copy)[5]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])  # truncated: undecodable
    broken = _ingest(capsys, demo_copy, tmp_path / "dest")
    assert _skips(broken) == 1
    victim.write_bytes(good)
    fixed = _ingest(capsys, demo_copy, tmp_path / "dest")
    assert fixed["version"] != broken["version"] and _skips(fixed) == 0


def test_a_replaced_image_gives_a_new_version_and_an_untouched_one_a_no_op(
    demo_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "dest"
    first = _ingest(capsys, demo_copy, dest)
    again = _ingest(capsys, demo_copy, dest)
    assert again["version"] == first["version"] and again["status"] == "exists"
    victim = _images(demo_copy)[7]
    with Image.open(victim) as im:
        flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    flipped.save(buf, format="JPEG", quality=90)
    victim.write_bytes(buf.getvalue())  # same name, same size class, other pixels
    replaced = _ingest(capsys, demo_copy, dest)
    assert replaced["version"] != first["version"] and replaced["status"] == "created"


def test_same_bytes_under_new_stamps_keep_the_version_and_only_they_are_read(
    demo_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "dest"
    first = _ingest(capsys, demo_copy, dest)
    images = _images(demo_copy)
    for path in images[:4]:  # touched: new modification times, same content
        os.utime(path, ns=(1, 1))
    digest, rehashed = content_digest_of_tree(str(demo_copy / "Img"), str(dest))
    assert rehashed == 4  # only the touched files were read again
    again = _ingest(capsys, demo_copy, dest)
    assert again["version"] == first["version"] and again["status"] == "exists"
    assert content_digest_of_tree(str(demo_copy / "Img"), str(dest)) == (digest, 0)
    # A copy elsewhere (every stamp new) is the same content, hence the same version.
    moved = tmp_path / "moved"
    shutil.copytree(demo_copy, moved)
    assert _ingest(capsys, moved, dest)["version"] == first["version"]


def test_a_same_size_change_with_its_mtime_restored_needs_rehash(
    demo_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What rsync -t, cp -p, tar or a backup restore do: new bytes, same size, old stamp.

    The fast path trusts (size, modification time) and keeps the old version, as the
    fingerprints module documents; ``--rehash`` reads every image and sees the change.
    """
    dest = tmp_path / "dest"
    first = _ingest(capsys, demo_copy, dest)
    victim = _images(demo_copy)[9]
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the JPEG's entropy data: same size, other bytes
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the stamp put back
    assert victim.stat().st_size == stat.st_size and victim.stat().st_mtime_ns == stat.st_mtime_ns
    trusted = _ingest(capsys, demo_copy, dest)
    assert trusted["version"] == first["version"] and trusted["status"] == "exists"
    rehashed = _ingest(capsys, demo_copy, dest, "--rehash")
    assert rehashed["version"] != first["version"] and rehashed["status"] == "created"
    # The cache now holds what was read: the fast path agrees with the re-hash from here on.
    assert _ingest(capsys, demo_copy, dest)["version"] == rehashed["version"]
    # And a re-hash of an unchanged source is the same version (a no-op, nothing written).
    again = _ingest(capsys, demo_copy, dest, "--rehash")
    assert again["version"] == rehashed["version"] and again["status"] == "exists"


def test_fingerprints_of_a_tree_are_paths_sizes_and_stamps(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"123")
    (tmp_path / "y.jpg").write_bytes(b"12345")
    prints = fingerprint_tree(str(tmp_path))
    assert set(prints) == {"a/b/x.jpg", "y.jpg"}
    assert prints["a/b/x.jpg"][0] == 3 and prints["y.jpg"][0] == 5
    assert fingerprint_tree(str(tmp_path / "missing")) == {}


def test_an_s3_source_is_known_from_its_listing_and_follows_a_replaced_object(
    demo_copy: Path, tmp_path: Path, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain ETags are the MD5 of the bytes: no image is read, yet content changes show."""
    from fashion_attr import storage

    images = _images(demo_copy)[:6]
    for path in images:
        key = f"src/Img/{path.relative_to(demo_copy / 'Img').as_posix()}"
        s3_server.client.upload_file(str(path), s3_server.bucket, key)
    root = s3_server.uri("src/Img")
    reads: list[str] = []
    real_open = storage.open_binary

    def counting_open(uri: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(uri)
        return real_open(uri, *args, **kwargs)

    monkeypatch.setattr(storage, "open_binary", counting_open)
    local = tmp_path / "local"
    for path in images:
        target = local / path.relative_to(demo_copy / "Img")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    digest_local, hashed_local = content_digest_of_tree(str(local), str(tmp_path / "d1"))
    assert hashed_local == len(images) and len(reads) == len(images)
    reads.clear()
    digest_s3, hashed_s3 = content_digest_of_tree(root, s3_server.uri("dest"))
    # The same bytes give the same digest on S3 as on disk, with not one GET of an image.
    assert (digest_s3, hashed_s3, reads) == (digest_local, 0, [])

    # Replace one object's pixels: its ETag, hence the digest, changes.
    with Image.open(images[2]) as im:
        buf = io.BytesIO()
        im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(buf, format="JPEG", quality=90)
    key2 = f"src/Img/{images[2].relative_to(demo_copy / 'Img').as_posix()}"
    s3_server.client.put_object(Bucket=s3_server.bucket, Key=key2, Body=buf.getvalue())
    assert buf.getvalue() != images[2].read_bytes()
    replaced, _ = content_digest_of_tree(root, s3_server.uri("dest"))
    assert replaced != digest_s3

    # A multipart ETag ("<md5>-<parts>") is no content hash: that object is read.
    from boto3.s3.transfer import TransferConfig

    s3_server.client.upload_file(
        str(images[2]),
        s3_server.bucket,
        key2,
        Config=TransferConfig(multipart_threshold=1024, multipart_chunksize=5 * 1024 * 1024),
    )
    head = s3_server.client.head_object(Bucket=s3_server.bucket, Key=key2)
    assert "-" in head["ETag"]
    reads.clear()
    restored, hashed = content_digest_of_tree(root, s3_server.uri("dest"))
    assert hashed == 1 and reads == [storage.join(root, key2[len("src/Img/") :])]
    assert restored == digest_s3  # the original bytes are back: the original digest
