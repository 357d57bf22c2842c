"""The training loader: DDP split, deterministic order, exact resume, cache, shard safety."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fashion_attr import storage
from fashion_attr.data.ingest import ingest_full
from fashion_attr.data.loader import (
    LoaderState,
    decode_batch_on_device,
    make_loader,
    normalize_on_device,
    rank_indices,
)
from fashion_attr.data.shards import ManifestError, ShardFormatError, load_manifest, sha256_file


def _batches(loader) -> list:
    return [tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in b) for b in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x, y) for x, y in zip(ba, bb, strict=True))
        for ba, bb in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------------- order


def test_rank_indices_hand_computed() -> None:
    kw = {"shuffle": False, "seed": 0, "epoch": 0, "world_size": 3, "batch_size": 2}
    # 10 samples, 3 ranks, padded to 12 by wrapping around: 0..9, 0, 1.
    pad = [rank_indices(10, rank=r, drop_last=False, **kw).tolist() for r in range(3)]
    assert pad == [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]
    # Cut to 9, then each rank's 3 samples to whole batches of 2.
    cut = [rank_indices(10, rank=r, drop_last=True, **kw).tolist() for r in range(3)]
    assert cut == [[0, 3], [1, 4], [2, 5]]


def test_order_depends_on_seed_and_epoch_only() -> None:
    kw = {"shuffle": True, "drop_last": False, "batch_size": 4}
    a = rank_indices(50, seed=1, epoch=2, **kw)
    assert np.array_equal(a, rank_indices(50, seed=1, epoch=2, **kw))
    assert not np.array_equal(a, rank_indices(50, seed=1, epoch=3, **kw))
    assert not np.array_equal(a, rank_indices(50, seed=2, epoch=2, **kw))
    assert sorted(a.tolist()) == list(range(50))


def test_two_ranks_cover_every_sample_exactly_once(demo_version: str, tmp_path: Path) -> None:
    n_train = load_manifest(demo_version).counts["train"]
    assert n_train % 2 == 0  # 66 train images in the demo fixture
    loaders = [
        make_loader(
            demo_version,
            "train",
            batch_size=8,
            cache_dir=tmp_path,
            seed=3,
            epoch=1,
            rank=r,
            world_size=2,
            drop_last=False,
        )
        for r in range(2)
    ]
    seen = [ld.indices.tolist() for ld in loaders]
    assert len(seen[0]) == len(seen[1]) == n_train // 2
    assert sorted(seen[0] + seen[1]) == list(range(n_train))
    assert len(loaders[0]) == len(loaders[1]) == 5  # ceil(33 / 8)
    # What the loader yields is exactly those samples, in that order.
    for ld in loaders:
        images = torch.cat([b.images for b in ld])
        expected = torch.stack([ld.dataset[i][0] for i in ld.indices.tolist()])
        assert torch.equal(images, expected)


def test_drop_last_gives_equal_whole_batches_per_rank(demo_version: str, tmp_path: Path) -> None:
    loaders = [
        make_loader(demo_version, "train", batch_size=5, cache_dir=tmp_path, rank=r, world_size=4)
        for r in range(4)
    ]
    # 66 -> 64 (4 x 16) -> 15 per rank (3 batches of 5), all distinct.
    assert [len(ld) for ld in loaders] == [3, 3, 3, 3]
    assert [ld.samples_per_epoch for ld in loaders] == [15] * 4
    assert all(b.images.shape[0] == 5 for ld in loaders for b in ld)
    every = np.concatenate([ld.indices for ld in loaders])
    assert len(set(every.tolist())) == 60


def test_same_seed_and_epoch_give_the_same_batches(demo_version: str, tmp_path: Path) -> None:
    def run(epoch: int) -> list:
        return _batches(
            make_loader(
                demo_version,
                "train",
                batch_size=8,
                cache_dir=tmp_path,
                seed=5,
                epoch=epoch,
                flip=True,
                random_resized_crop=0.4,
            )
        )

    first = run(0)
    assert _same(first, run(0))
    assert not _same(first, run(1))


def test_resume_mid_epoch_yields_exactly_the_rest(demo_version: str, tmp_path: Path) -> None:
    kw = {
        "batch_size": 8,
        "cache_dir": tmp_path,
        "seed": 7,
        "epoch": 2,
        "flip": True,
        "random_resized_crop": 0.5,
        "rank": 1,
        "world_size": 2,
    }
    full_loader = make_loader(demo_version, "train", **kw)
    full = _batches(full_loader)
    assert len(full) == 4  # 66 -> 33 per rank -> 4 whole batches of 8
    state = full_loader.state_after(3 * 8)
    assert state == LoaderState(epoch=2, samples_consumed=24)
    restored = LoaderState.from_dict(json.loads(json.dumps(state.to_dict())))
    rest = make_loader(demo_version, "train", start_sample=restored.samples_consumed, **kw)
    assert _same(_batches(rest), full[3:])
    # Off a batch boundary: the next batch starts at the 14th sample of the rank's sequence.
    odd = make_loader(demo_version, "train", start_sample=13, **kw)
    assert odd.indices.tolist() == full_loader.indices.tolist()[13:]
    images = torch.cat([b[0] for b in odd])
    assert torch.equal(images, torch.cat([b[0] for b in full])[13:])


def test_worker_processes_give_the_same_batches(demo_version: str, tmp_path: Path) -> None:
    kw = {
        "batch_size": 8,
        "cache_dir": tmp_path,
        "seed": 1,
        "flip": True,
        "random_resized_crop": 0.3,
    }
    serial = _batches(make_loader(demo_version, "train", num_workers=0, **kw))
    parallel = _batches(make_loader(demo_version, "train", num_workers=2, **kw))
    assert _same(serial, parallel)


# --------------------------------------------------------------------------- contents


def test_targets_known_and_category_match_the_label_records(demo_version, tmp_path) -> None:
    ld = make_loader(demo_version, "val", batch_size=4, cache_dir=tmp_path, train=False)
    assert ld.indices.tolist() == list(range(ld.num_samples))  # sequential for evaluation
    n_attr = load_manifest(demo_version).num_attributes
    unknown_seen = 0
    row = 0
    for images, targets, known, category in ld:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        assert targets.dtype == torch.float32 and known.dtype == torch.bool
        assert targets.shape[1] == known.shape[1] == n_attr and category.dtype == torch.long
        for i in range(images.shape[0]):
            _, meta = ld.dataset.read_raw(row)
            row += 1
            assert targets[i].nonzero().flatten().tolist() == meta["positives"]
            assert (~known[i]).nonzero().flatten().tolist() == meta["unknown"]
            assert int(category[i]) == meta["category"]
            unknown_seen += len(meta["unknown"])
    assert row == 16 and unknown_seen > 0


def test_flip_mirrors_the_decoded_image(demo_version: str, tmp_path: Path) -> None:
    plain = make_loader(demo_version, "test", batch_size=14, cache_dir=tmp_path, train=False)
    flipped = make_loader(
        demo_version, "test", batch_size=14, cache_dir=tmp_path, train=False, flip=True
    )
    [a], [b] = _batches(plain), _batches(flipped)
    mirrored = [torch.equal(b[0][i], a[0][i].flip(-1)) for i in range(14)]
    unchanged = [torch.equal(b[0][i], a[0][i]) for i in range(14)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert 0 < sum(mirrored) < 14  # p = 0.5 per image


def test_normalize_on_device_hand_computed() -> None:
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 3, 1, 3)
    out = normalize_on_device(x.contiguous(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    # (0/255 - .5)/.5 = -1; (255/255 - .5)/.5 = 1; (51/255 - .5)/.5 = -0.6
    assert torch.allclose(out[0, 0, 0], torch.tensor([-1.0, 1.0, -0.6]), atol=1e-6)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    imagenet = normalize_on_device(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    # ImageNet red channel: (1 - 0.485) / 0.229 = 2.24891
    assert abs(float(imagenet[0, 0, 0, 0]) - 2.24891) < 1e-4
    with pytest.raises(ValueError, match="uint8"):
        normalize_on_device(torch.zeros(1, 3, 2, 2))


def test_gpu_decode_batches_decode_to_the_same_images(demo_version: str, tmp_path: Path) -> None:
    kw = {"batch_size": 5, "cache_dir": tmp_path, "train": False}
    [raw, *_] = list(make_loader(demo_version, "val", gpu_decode=True, **kw))
    [ref, *_] = list(make_loader(demo_version, "val", **kw))
    assert isinstance(raw.images, list) and raw.images[0].dim() == 1
    assert torch.equal(decode_batch_on_device(raw.images, "cpu"), ref.images)
    assert torch.equal(raw.attr_targets, ref.attr_targets)
    with pytest.raises(ValueError, match="gpu_decode"):
        make_loader(demo_version, "val", gpu_decode=True, flip=True, **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_batch_on_cuda(demo_version: str, tmp_path: Path) -> None:
    kw = {"batch_size": 5, "cache_dir": tmp_path, "train": False}
    [raw, *_] = list(make_loader(demo_version, "val", gpu_decode=True, **kw))
    [ref, *_] = list(make_loader(demo_version, "val", **kw))
    got = decode_batch_on_device(raw.images, "cuda")
    assert got.device.type == "cuda" and got.shape == ref.images.shape
    # nvJPEG and libjpeg may round differently by a level or two.
    assert (got.cpu().int() - ref.images.int()).abs().max() <= 3
    out = normalize_on_device(got)
    assert out.device.type == "cuda" and out.dtype == torch.float32


def test_bad_arguments_are_refused(demo_version: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="start_sample = 40 but rank 0 has 33"):
        make_loader(
            demo_version, "train", batch_size=3, cache_dir=tmp_path, world_size=2, start_sample=40
        )
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        make_loader(demo_version, "train", batch_size=3, cache_dir=tmp_path, rank=2, world_size=2)
    with pytest.raises(ManifestError, match="no 'holdout' samples"):
        make_loader(demo_version, "holdout", batch_size=3, cache_dir=tmp_path)
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        make_loader(tmp_path / "nowhere", "train", batch_size=3, cache_dir=tmp_path)


# --------------------------------------------------------------------------- cache, safety


def test_s3_shards_are_cached_verified_and_redownloaded(
    demo_dataset, tmp_path, s3_server, monkeypatch
) -> None:
    res = ingest_full(
        demo_dataset, s3_server.uri("v"), image_size=32, shard_max_samples=16, progress=False
    )
    downloads: list[str] = []
    original = storage.download_file

    def counting(uri, path):
        downloads.append(str(uri))
        return original(uri, path)

    monkeypatch.setattr(storage, "download_file", counting)
    cache = tmp_path / "cache"
    kw = {"batch_size": 8, "cache_dir": cache, "train": False}
    first = _batches(make_loader(res.uri, "train", **kw))
    entries = res.manifest.shards["train"]
    assert len(downloads) == len(entries) == 5
    cached = [cache / "shards" / e.sha256[:2] / f"{e.sha256}.tar" for e in entries]
    assert all(sha256_file(p) == e.sha256 for p, e in zip(cached, entries, strict=True))

    downloads.clear()
    assert _same(_batches(make_loader(res.uri, "train", **kw)), first)
    assert downloads == []  # served from the cache

    data = bytearray(cached[2].read_bytes())
    data[600] ^= 0xFF  # flip bits inside the first JPEG: same size, wrong checksum
    cached[2].write_bytes(bytes(data))
    assert _same(_batches(make_loader(res.uri, "train", **kw)), first)
    assert downloads == [f"{res.uri}/{entries[2].uri}"]
    assert sha256_file(cached[2]) == entries[2].sha256


def test_modified_local_shard_is_refused(demo_version: str, tmp_path: Path) -> None:
    copy = tmp_path / "v"
    shutil.copytree(demo_version, copy)
    shard = copy / load_manifest(copy).shards["val"][0].uri
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ShardFormatError, match=r"sha256 does not match the manifest"):
        make_loader(copy, "val", batch_size=4, cache_dir=tmp_path / "c")


def _replace_shard(version: Path, members: list[tarfile.TarInfo]) -> str:
    """Swap the version's first val shard for a crafted tar, fixing its manifest entry."""
    manifest = json.loads((version / "manifest.json").read_text())
    entry = manifest["shards"]["val"][0]
    path = version / entry["uri"]
    with tarfile.open(path, "w") as tar:
        for info in members:
            if info.isreg():
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))
            else:
                tar.addfile(info)
    entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
    (version / "manifest.json").write_text(json.dumps(manifest))
    return entry["uri"]


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([tarfile.TarInfo("../escape.jpg"), tarfile.TarInfo("../escape.json")], "is a path"),
        ([tarfile.TarInfo("k.jpg"), _symlink("k.json", "/etc/passwd")], "symbolic link"),
    ],
)
def test_unsafe_shard_members_are_refused_naming_the_shard(
    demo_version, tmp_path, members, message
) -> None:
    copy = tmp_path / "v"
    shutil.copytree(demo_version, copy)
    name = _replace_shard(copy, members)
    with pytest.raises(ShardFormatError, match=message) as err:
        make_loader(copy, "val", batch_size=4, cache_dir=tmp_path / "c")
    assert name in str(err.value)
    assert not (tmp_path / "escape.jpg").exists() and not (copy.parent / "escape.jpg").exists()
