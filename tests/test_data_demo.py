"""Procedural demo dataset in the DeepFashion-C layout (fashion_attr.demo)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fashion_attr.data.annotations import (
    ANNOTATION_FILES,
    ATTR_IMG,
    DatasetIndex,
    clamp_bbox,
    iter_attr_img,
    load_annotations_from_dir,
)
from fashion_attr.demo import (
    DEMO_ATTRIBUTES,
    DEMO_CATEGORIES,
    DEMO_GARMENTS,
    generate_demo_dataset,
    render_garment,
)
from fashion_attr.demo.catalog import _INELIGIBLE
from fashion_attr.demo.cli import main
from PIL import Image

N = 600


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetIndex]:
    root = generate_demo_dataset(tmp_path_factory.mktemp("demo") / "ds", images=N, seed=0)
    return root, load_annotations_from_dir(root)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_exact_layout(demo: tuple[Path, DatasetIndex]) -> None:
    root, index = demo
    assert sorted(p.name for p in root.iterdir()) == ["Anno", "Eval", "Img"]
    for rel in ANNOTATION_FILES:
        text = (root / rel).read_text().splitlines()
        assert int(text[0]) == len(text) - 2  # line 1 = count, line 2 = header
    assert len(index.records) == N
    jpgs = sorted(str(p.relative_to(root / "Img")) for p in (root / "Img").rglob("*.jpg"))
    assert jpgs == sorted(r.name for r in index.records)
    assert all(p.parent == root / "Img" / "img" for p in (root / "Img" / "img").iterdir())
    # Product folders of a few images each, numbered from img_00000001.jpg.
    per_folder = Counter(r.name.split("/")[1] for r in index.records)
    assert min(per_folder.values()) >= 1 and max(per_folder.values()) <= 6
    assert 1.5 < N / len(per_folder) < 5
    for folder, k in per_folder.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]+", folder)
        names = sorted(r.name for r in index.records if r.name.split("/")[1] == folder)
        assert names == [f"img/{folder}/img_{i:08d}.jpg" for i in range(1, k + 1)]
    # Records are listed folder by folder, as in the real files.
    folders = [r.name.split("/")[1] for r in index.records]
    assert folders == sorted(folders)


def test_categories_and_attributes(demo: tuple[Path, DatasetIndex]) -> None:
    _, index = demo
    assert len(index.categories) == 50
    assert len({c.name for c in index.categories}) == 50
    assert [c.name for c in index.categories[:6]] == list(DEMO_GARMENTS)
    types = {c.name: c.type for c in index.categories}
    assert (types["Tee"], types["Skirt"], types["Dress"], types["Jacket"]) == (1, 2, 3, 1)
    assert (types["Blazer"], types["Jeans"], types["Kimono"]) == (1, 2, 3)
    # Only the drawn garments occur (as only 46 of 50 occur in DeepFashion-C).
    used = {r.category for r in index.records}
    assert used == set(range(6))
    assert 30 <= len(index.attributes) <= 40
    assert {a.group for a in index.attributes} == {1, 2, 3, 4, 5}
    assert sum(" " in a.name for a in index.attributes) >= 5
    assert [(a.name, a.group) for a in index.attributes] == list(DEMO_ATTRIBUTES)


def test_long_tail(demo: tuple[Path, DatasetIndex]) -> None:
    _, index = demo
    freq = index.positive_counts() / N
    assert freq.min() < 0.02  # some attributes on fewer than 2% of images
    assert 0.3 <= freq.max() <= 0.45  # the most common on ~30-40%
    assert (freq < 0.02).sum() >= 3
    # Every attribute has a positive in every split (the generator tops up the rarest).
    for split in ("train", "val", "test"):
        assert index.positive_counts(split).min() >= 1
    per_image = index.positive_counts().sum() / N
    assert 1.5 < per_image < 3.5


def test_splits_by_folder(demo: tuple[Path, DatasetIndex]) -> None:
    _, index = demo
    counts = Counter(r.split for r in index.records)
    assert abs(counts["train"] / N - 0.70) < 0.04
    assert abs(counts["val"] / N - 0.15) < 0.03
    assert abs(counts["test"] / N - 0.15) < 0.03
    by_folder: dict[str, set[str]] = {}
    for r in index.records:
        by_folder.setdefault(r.name.split("/")[1], set()).add(r.split)
    assert all(len(s) == 1 for s in by_folder.values())  # no product in two splits


def test_varied_sizes_and_boxes(demo: tuple[Path, DatasetIndex]) -> None:
    root, index = demo
    sizes = []
    past_edge = 0
    for r in index.records:
        with Image.open(root / "Img" / r.name) as im:
            w, h = im.size
            assert im.mode == "RGB" and im.format == "JPEG"
        sizes.append((w, h))
        x1, y1, x2, y2 = r.bbox
        past_edge += x1 < 0 or y1 < 0 or x2 > w or y2 > h
        cx1, cy1, cx2, cy2 = clamp_bbox(r.bbox, w, h, "Anno/list_bbox.txt", None)
        # The garment fills most of the image along its limiting side.
        assert max((cx2 - cx1) / w, (cy2 - cy1) / h) > 0.6
    ws, hs = zip(*sizes, strict=True)
    assert min(ws + hs) >= 96 and max(ws + hs) <= 192
    assert len(set(sizes)) > N // 3
    assert sum(w != h for w, h in sizes) > 0.9 * N
    assert 0.04 * N < past_edge < 0.25 * N  # some boxes reach past the edge, to be clamped


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = tree_digest(generate_demo_dataset(tmp_path / "a", images=40, seed=7))
    b = tree_digest(generate_demo_dataset(tmp_path / "b", images=40, seed=7))
    c = tree_digest(generate_demo_dataset(tmp_path / "c", images=40, seed=8))
    assert a == b
    assert a != c
    assert len(a) == 40 + 6


def test_unknown_rate_writes_zero_labels(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "u", images=60, seed=1, unknown_rate=0.25)
    text = (root / ATTR_IMG).read_text()
    with open(root / ATTR_IMG) as f:
        unknown = sum(u.size for _, _, _, u in iter_attr_img(f, len(DEMO_ATTRIBUTES)))
    assert " 0" in text
    frac = unknown / (60 * len(DEMO_ATTRIBUTES))
    assert 0.2 < frac < 0.3
    index = load_annotations_from_dir(root)
    assert sum(len(r.unknown) for r in index.records) == unknown
    # Unknown is never also positive.
    assert all(not set(r.unknown) & set(r.positives) for r in index.records)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path / "d", images=5, seed=0)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_demo_dataset(tmp_path / "d", images=5, seed=0)
    generate_demo_dataset(tmp_path / "d", images=7, seed=1, overwrite=True)
    assert len(load_annotations_from_dir(tmp_path / "d").records) == 7
    assert len(list((tmp_path / "d" / "Img").rglob("*.jpg"))) == 7


@pytest.mark.parametrize(
    "kwargs",
    [{"images": 0}, {"min_size": 200, "max_size": 100}, {"unknown_rate": 1.0}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate_demo_dataset(tmp_path / "x", **kwargs)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--images", "12", "--seed", "3", "--quiet"]) == 0
    assert "wrote 12 images" in capsys.readouterr().out
    assert main(["--out", str(out), "--images", "12", "--quiet"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["--out", str(out), "--images", "9", "--quiet", "--overwrite"]) == 0


# --------------------------------------------------------------------- learnable from pixels


def changed_fraction(garment: str, attr: str, seed: int) -> float:
    """Share of box pixels that change by more than 40/255 when one attribute is added."""
    base, box = render_garment(garment, [], seed=seed, width=180, height=180)
    with_attr, _ = render_garment(garment, [attr], seed=seed, width=180, height=180)
    x1, y1, x2, y2 = clamp_bbox(box, 180, 180, "render", None)
    a = np.asarray(base, np.int16)[y1:y2, x1:x2]
    b = np.asarray(with_attr, np.int16)[y1:y2, x1:x2]
    return float((np.abs(a - b).max(axis=2) > 40).mean())


@pytest.mark.parametrize("attr", [n for n, _ in DEMO_ATTRIBUTES])
def test_every_attribute_changes_the_pixels_in_the_box(attr: str) -> None:
    garment = next(g for g in DEMO_GARMENTS if attr not in _INELIGIBLE[g])
    fracs = [changed_fraction(garment, attr, seed) for seed in range(3)]
    assert min(fracs) > 0.002, fracs


def test_colour_attributes_show_in_the_crop(demo: tuple[Path, DatasetIndex]) -> None:
    """Red garments are redder and denim bluer, inside the box, than the rest."""
    root, index = demo
    names = [a.name for a in index.attributes]
    red, denim = names.index("red"), names.index("denim")
    redness: dict[bool, list[float]] = {True: [], False: []}
    blueness: dict[bool, list[float]] = {True: [], False: []}
    for r in index.records[::2]:
        with Image.open(root / "Img" / r.name) as im:
            w, h = im.size
            x1, y1, x2, y2 = clamp_bbox(r.bbox, w, h, "", None)
            px = np.asarray(im.convert("RGB"), np.float32)[y1:y2, x1:x2].reshape(-1, 3) / 255
        redness[red in r.positives].append(float((px[:, 0] - px[:, 1:].mean(1)).mean()))
        blueness[denim in r.positives].append(float((px[:, 2] - px[:, 0]).mean()))
    assert np.mean(redness[True]) > np.mean(redness[False]) + 0.1
    assert np.mean(blueness[True]) > np.mean(blueness[False]) + 0.05


def test_render_garment_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="Tee"):
        render_garment("Poncho")
    with pytest.raises(ValueError, match="flroal"):
        render_garment("Tee", ["flroal"])


def test_categories_constant_matches_deepfashion_types() -> None:
    types = Counter(t for _, t in DEMO_CATEGORIES)
    # DeepFashion-C: 20 upper-body, 16 lower-body, 14 full-body categories; the demo
    # adds Trousers (lower) and drops Trunks to keep 50.
    assert len(DEMO_CATEGORIES) == 50
    assert types == {1: 20, 2: 16, 3: 14}
