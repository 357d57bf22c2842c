"""Procedural demo data in the exact DeepFashion-C layout.

``python -m fashion_attr.data.demo --out DIR --images N --seed S`` writes::

    DIR/Img/img/<Item_Folder>/img_00000001.jpg
    DIR/Anno/list_category_cloth.txt   50 categories (the first six are drawn)
    DIR/Anno/list_category_img.txt
    DIR/Anno/list_attr_cloth.txt       38 attributes over the five groups
    DIR/Anno/list_attr_img.txt         labels -1 / 1 (and 0 = unknown at ``unknown_rate``)
    DIR/Anno/list_bbox.txt
    DIR/Eval/list_eval_partition.txt   ~70 / 15 / 15 train / val / test, split by item folder

so that every step (ingest, GAN, classifier, evaluation) runs on a laptop in
seconds without the real dataset. Each image shows a simple figure wearing one
garment (tee, dress, skirt, trousers, jacket, shorts) on a plain or noisy
background. Every attribute changes the pixels inside the box, so it is
learnable from the crop the classifier sees:

- texture: print, floral, stripe, polka dot, plaid, chevron, vertical stripe, colorblock
  (patterns scaled to the garment, so they survive the resize to 32 px);
- fabric: knit ribs, denim blue twill, lace holes, sheer (see-through), leather sheen,
  sequin sparkle, faux fur trim at the hem;
- shape: sleeve length (arms covered / bare), maxi / mini length (legs visible or not
  inside the box), fitted / loose / a-line silhouettes, cropped tops and trousers, v-neck;
- part: pocket, collar, button front, zip, belt, hood, ruffle hem;
- style: colour families (red, pastel, neon, monochrome), a large graphic, a small logo,
  embellishment beads.

Attribute frequencies follow a steep power law (``top_rate * rank ** -alpha``
before exclusions), so the most common attribute is on about a third of the
images and about a fifth of them on under 2 % (the rarest near 0.7 % at 600
images), mirroring the long tail of DeepFashion-C. So that no classifier head or
metric is left without a positive, the generator then gives every attribute at
least one item in each split (when there are at least 76 items).
Images of one item share its labels and appearance but differ in image size,
framing, background and lighting, like the product folders of the real dataset.
Boxes surround the garment's body frame with margins and now and then reach past
the image edge (as in DeepFashion-C), to exercise clamping. Output is
byte-identical for the same arguments.

Also here: :func:`write_scale_annotations`, which writes the six annotation
files at the real dataset's size (289,222 images x 1,000 attributes, no
images) for memory and speed checks of the readers.
"""

from __future__ import annotations

import argparse
import colorsys
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fashion_attr.data.annotations import (
    ATTR_CLOTH,
    ATTR_IMG,
    BBOX,
    CATEGORY_CLOTH,
    CATEGORY_IMG,
    EVAL_PARTITION,
    HEADERS,
    write_annotation_file,
)

#: The 50 categories written to list_category_cloth.txt; only the first six are drawn.
DEMO_CATEGORIES: tuple[tuple[str, int], ...] = (
    ("Tee", 1),
    ("Dress", 3),
    ("Skirt", 2),
    ("Trousers", 2),
    ("Jacket", 1),
    ("Shorts", 2),
    # Padding: further DeepFashion-C category names with their real types.
    *((n, 1) for n in ("Anorak", "Blazer", "Blouse", "Bomber", "Button-Down", "Cardigan")),
    *((n, 1) for n in ("Flannel", "Halter", "Henley", "Hoodie", "Jersey", "Parka")),
    *((n, 1) for n in ("Peacoat", "Poncho", "Sweater", "Tank", "Top", "Turtleneck")),
    *((n, 2) for n in ("Capris", "Chinos", "Culottes", "Cutoffs", "Gauchos", "Jeans")),
    *((n, 2) for n in ("Jeggings", "Jodhpurs", "Joggers", "Leggings", "Sarong", "Sweatpants")),
    *((n, 2) for n in ("Sweatshorts",)),
    *((n, 3) for n in ("Caftan", "Cape", "Coat", "Coverup", "Jumpsuit", "Kaftan", "Kimono")),
    *((n, 3) for n in ("Nightdress", "Onesie", "Robe", "Romper", "Shirtdress", "Sundress")),
)
#: The garments the generator draws (the first categories), and their share of items.
DEMO_GARMENTS: tuple[str, ...] = ("Tee", "Dress", "Skirt", "Trousers", "Jacket", "Shorts")
DEMO_GARMENT_WEIGHTS: tuple[float, ...] = (0.24, 0.2, 0.15, 0.15, 0.14, 0.12)
#: The attributes written to list_attr_cloth.txt: (name, group), group 1 texture,
#: 2 fabric, 3 shape, 4 part, 5 style.
DEMO_ATTRIBUTES: tuple[tuple[str, int], ...] = (
    *((n, 1) for n in ("print", "floral", "stripe", "polka dot", "plaid", "chevron")),
    *((n, 1) for n in ("vertical stripe", "colorblock")),
    *((n, 2) for n in ("knit", "denim", "lace", "sheer", "leather", "sequin", "faux fur")),
    *((n, 3) for n in ("long sleeve", "sleeveless", "maxi", "mini", "a-line", "fitted")),
    *((n, 3) for n in ("loose fit", "cropped", "v-neck")),
    *((n, 4) for n in ("pocket", "collar", "button front", "zip", "belted", "hood")),
    *((n, 4) for n in ("ruffle hem",)),
    *((n, 5) for n in ("red", "pastel", "graphic", "monochrome", "neon", "logo", "embellished")),
)
#: Attribute names from most to least frequent (rank 1 first), as in DeepFashion-C
#: where "print" is the most common attribute.
DEMO_POPULARITY: tuple[str, ...] = (
    "print", "long sleeve", "knit", "floral", "pocket", "maxi", "stripe", "red", "collar",
    "denim", "sleeveless", "lace", "mini", "graphic", "button front", "fitted", "polka dot",
    "pastel", "sheer", "zip", "loose fit", "plaid", "monochrome", "a-line", "belted",
    "leather", "chevron", "hood", "cropped", "logo", "vertical stripe", "v-neck", "sequin",
    "neon", "ruffle hem", "colorblock", "embellished", "faux fur",
)  # fmt: skip
DEMO_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.70, "val": 0.15, "test": 0.15}
DEMO_TOP_RATE = 0.36
DEMO_TAIL_ALPHA = 0.7

# Attributes a garment cannot have (a skirt has no sleeves, trousers are never maxi...).
_INELIGIBLE: dict[str, frozenset[str]] = {
    "Tee": frozenset({"maxi", "mini", "a-line", "hood", "belted", "zip", "ruffle hem"}),
    "Dress": frozenset({"cropped", "hood"}),
    "Skirt": frozenset({"long sleeve", "sleeveless", "collar", "hood", "v-neck", "cropped"}),
    "Trousers": frozenset(
        {"long sleeve", "sleeveless", "collar", "hood", "v-neck", "maxi", "mini", "a-line"}
        | {"ruffle hem", "button front"}
    ),
    "Jacket": frozenset({"maxi", "mini", "a-line", "ruffle hem"}),
    "Shorts": frozenset(
        {"long sleeve", "sleeveless", "collar", "hood", "v-neck", "maxi", "mini", "a-line"}
        | {"cropped", "button front", "ruffle hem"}
    ),
}
# At most one attribute of each set per item (one pattern, one surface, one colour source...);
# conflicts keep the more popular attribute, which steepens the tail further.
_EXCLUSIVE: tuple[frozenset[str], ...] = (
    frozenset(n for n, g in DEMO_ATTRIBUTES if g == 1),
    frozenset({"knit", "denim", "lace", "sheer", "leather", "sequin"}),
    frozenset({"red", "pastel", "neon", "monochrome", "denim", "leather"}),
    frozenset({"long sleeve", "sleeveless"}),
    frozenset({"maxi", "mini"}),
    frozenset({"fitted", "loose fit", "a-line"}),
    frozenset({"button front", "zip"}),
    frozenset({"collar", "hood", "v-neck"}),
)
# Frame height / width (L) of the body region the box surrounds, per garment.
_FRAME_L = {"Tee": 1.05, "Jacket": 1.12, "Dress": 2.2, "Skirt": 1.8, "Trousers": 2.2, "Shorts": 1.3}
_UPPER = ("Tee", "Jacket")
_LOWER = ("Skirt", "Trousers", "Shorts")
_SKIN = ((0.96, 0.8, 0.69), (0.87, 0.68, 0.52), (0.68, 0.48, 0.34), (0.45, 0.3, 0.2))
_HAIR = ((0.1, 0.07, 0.05), (0.35, 0.2, 0.1), (0.8, 0.65, 0.35), (0.25, 0.25, 0.25))
_NEON_HUES = (0.25, 0.83, 0.5, 0.08, 0.16)
_NEUTRAL_WORDS = ("Classic", "Essential", "Everyday", "Relaxed", "Simple", "Soft")

RGB = tuple[float, float, float]


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (r, g, b)


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _u8(c: Sequence[float]) -> tuple[int, int, int]:
    return tuple(round(min(max(v, 0.0), 1.0) * 255) for v in c)  # type: ignore[return-value]


# --------------------------------------------------------------------------- items


@dataclass
class _Item:
    """One product: a garment with fixed labels and looks, photographed several times."""

    index: int
    garment: str
    attrs: frozenset[str]
    views: int
    base: RGB
    ink: RGB
    ink2: RGB
    skin: RGB
    hair: RGB
    pattern_k: float
    block_vertical: bool
    graphic_shape: int
    accent: RGB
    folder: str = ""
    split: str = "train"
    extras: dict[str, float] = field(default_factory=dict)


def _attribute_rates(top_rate: float, alpha: float) -> dict[str, float]:
    """Per-item probability of each attribute where eligible: ``top_rate * rank**-alpha``."""
    return {n: top_rate * (r + 1) ** -alpha for r, n in enumerate(DEMO_POPULARITY)}


def _conflicts(name: str, chosen: set[str]) -> bool:
    return any(name in s and chosen & (s - {name}) for s in _EXCLUSIVE)


def _sample_attrs(garment: str, rng: np.random.Generator, rates: dict[str, float]) -> set[str]:
    draws = rng.random(len(DEMO_POPULARITY))
    chosen: set[str] = set()
    for d, name in zip(draws, DEMO_POPULARITY, strict=True):  # most popular first wins conflicts
        if name in _INELIGIBLE[garment] or d >= rates[name]:
            continue
        if not _conflicts(name, chosen):
            chosen.add(name)
    return chosen


def _item_colours(attrs: frozenset[str], rng: np.random.Generator) -> tuple[RGB, RGB, RGB]:
    """Base, pattern-ink and secondary colours; colour attributes decide the base."""
    u = rng.random(8)
    if "red" in attrs:
        base = _hsv(0.99 + 0.03 * u[0], 0.75 + 0.2 * u[1], 0.6 + 0.3 * u[2])
    elif "pastel" in attrs:
        base = _hsv(u[0], 0.15 + 0.2 * u[1], 0.88 + 0.1 * u[2])
    elif "neon" in attrs:
        base = _hsv(_NEON_HUES[int(u[0] * len(_NEON_HUES))] + 0.03 * u[1], 0.95, 1.0)
    elif "monochrome" in attrs:
        g = (0.1, 0.45, 0.92)[int(u[0] * 3)] + 0.05 * (u[1] - 0.5)
        base = (g, g, g)
    elif "denim" in attrs:
        base = _hsv(0.6 + 0.03 * u[0], 0.5 + 0.2 * u[1], 0.4 + 0.2 * u[2])
    elif "leather" in attrs:
        base = (0.08, 0.07, 0.07) if u[0] < 0.5 else _hsv(0.07, 0.6, 0.22 + 0.08 * u[1])
    else:
        # Muted colours: away from red, less saturated than neon, darker than pastel.
        base = _hsv(0.07 + 0.86 * u[0], 0.3 + 0.3 * u[1], 0.35 + 0.33 * u[2])
    if "monochrome" in attrs:
        ink: RGB = (0.05, 0.05, 0.05) if _luma(base) > 0.5 else (0.95, 0.95, 0.95)
        ink2: RGB = (0.95, 0.95, 0.95) if _luma(base) < 0.5 else (0.05, 0.05, 0.05)
    else:
        dark = _luma(base) > 0.55
        ink = _hsv(u[3], 0.15 + 0.35 * u[4], 0.15 + 0.15 * u[5] if dark else 0.85 + 0.12 * u[5])
        # Second colour (colorblock): complementary hue, opposite lightness.
        h, sat, val = colorsys.rgb_to_hsv(*base)
        ink2 = _hsv(h + 0.5, max(0.5, sat), 0.9 + 0.08 * u[6] if val < 0.6 else 0.22 + 0.1 * u[7])
    return base, ink, ink2


def _folder_name(garment: str, attrs: frozenset[str], taken: dict[str, int]) -> str:
    words = [
        n
        for n in DEMO_POPULARITY
        if n in attrs and dict(DEMO_ATTRIBUTES)[n] in (1, 2, 5) and n not in ("logo",)
    ][:2]
    if not words:
        words = [n for n in DEMO_POPULARITY if n in attrs][:1]
    title = "_".join("-".join(p.capitalize() for p in w.split()) for w in words)
    base = f"{title}_{garment}" if title else f"{_NEUTRAL_WORDS[len(taken) % 6]}_{garment}"
    k = taken.get(base, 0) + 1
    taken[base] = k
    return base if k == 1 else f"{base}_{k}"


def _make_items(
    images: int, rng: np.random.Generator, top_rate: float, alpha: float
) -> list[_Item]:
    rates = _attribute_rates(top_rate, alpha)
    items: list[_Item] = []
    total = 0
    while total < images:
        views = int(min(1 + rng.poisson(2.0), 6, images - total))
        garment = DEMO_GARMENTS[int(rng.choice(len(DEMO_GARMENTS), p=DEMO_GARMENT_WEIGHTS))]
        attrs = frozenset(_sample_attrs(garment, rng, rates))
        items.append(_new_item(len(items), garment, attrs, views, rng))
        total += views
    _assign_splits(items, rng)
    _ensure_every_attribute(items, rng)
    return items


def _new_item(
    index: int, garment: str, attrs: frozenset[str], views: int, rng: np.random.Generator
) -> _Item:
    base, ink, ink2 = _item_colours(attrs, rng)
    u = rng.random(6)
    return _Item(
        index=index,
        garment=garment,
        attrs=attrs,
        views=views,
        base=base,
        ink=ink,
        ink2=ink2,
        skin=_SKIN[int(u[0] * len(_SKIN))],
        hair=_HAIR[int(u[1] * len(_HAIR))],
        pattern_k=float(3.5 + 2.0 * u[2]),
        block_vertical=bool(u[3] < 0.5),
        graphic_shape=int(u[4] * 4),
        accent=_hsv(u[5], 0.85, 0.95),
    )


def _ensure_every_attribute(items: list[_Item], rng: np.random.Generator) -> None:
    """Give each attribute at least one item in every split (when there are enough items).

    With a few hundred images the rarest attributes may not be drawn at all, or
    only in one split, which would leave a classifier head without a training
    positive or a metric without a test positive. Rarest first, each missing
    (attribute, split) pair is added to a random eligible item of that split,
    preferring items where no other attribute has to make way.
    """
    if len(items) < 2 * len(DEMO_ATTRIBUTES):
        return
    for name in reversed(DEMO_POPULARITY):
        for split in DEMO_SPLIT_FRACTIONS:
            members = [i for i, it in enumerate(items) if it.split == split]
            if any(name in items[i].attrs for i in members):
                continue
            eligible = [i for i in members if name not in _INELIGIBLE[items[i].garment]]
            free = [i for i in eligible if not _conflicts(name, set(items[i].attrs))]
            pool = free or eligible
            if not pool:
                continue
            i = pool[int(rng.integers(len(pool)))]
            it = items[i]
            keep = {a for a in it.attrs if not any(name in s and a in s for s in _EXCLUSIVE)}
            new = _new_item(it.index, it.garment, frozenset(keep | {name}), it.views, rng)
            new.split = it.split
            items[i] = new


def _assign_splits(items: list[_Item], rng: np.random.Generator) -> None:
    """Split by item folder (no near-duplicate views across splits), ~70/15/15 of images."""
    total = sum(it.views for it in items)
    order = rng.permutation(len(items))
    targets = [
        ("test", round(DEMO_SPLIT_FRACTIONS["test"] * total)),
        ("val", round(DEMO_SPLIT_FRACTIONS["val"] * total)),
    ]
    pos = 0
    for split, target in targets:
        got = 0
        # Leave at least one item for train.
        while got < target and pos < len(order) - 1:
            items[order[pos]].split = split
            got += items[order[pos]].views
            pos += 1
    for k in order[pos:]:
        items[k].split = "train"


# --------------------------------------------------------------------------- geometry


@dataclass
class _Geom:
    """A garment and its wearer in frame units.

    u runs across (0..1 = the frame width), w down in frame widths (0..L = the
    frame height), so patterns and parts keep their proportions on every garment.
    """

    L: float
    body: list[np.ndarray]
    skin: list[np.ndarray]
    shoes: list[tuple[float, float, float]]
    head: tuple[float, float, float] | None
    top: np.ndarray | None
    hems: list[tuple[float, float, float]]
    neck: tuple[float, float] | None
    centre: tuple[float, float]
    waist: float
    pockets: list[tuple[float, float, float, float]]
    graphic: tuple[float, float, float]
    logo: tuple[float, float, float]
    tier: list[tuple[float, float]] = field(default_factory=list)
    open_front: bool = False


def _hem_edge(right: tuple[float, float], left: tuple[float, float], ruffle: bool) -> list:
    """Points from the right hem corner to the left one; scalloped for a ruffle hem."""
    if not ruffle:
        return [right, left]
    n = 14
    pts = []
    for t in range(n + 1):
        u = right[0] + (left[0] - right[0]) * t / n
        w = right[1] + (left[1] - right[1]) * t / n + (0.05 if t % 2 else 0.0)
        pts.append((u, w))
    return pts


def _arm(c_top: float, c_bot: float, w0: float, w1: float, half: float) -> np.ndarray:
    return np.array(
        [(c_top - half, w0), (c_top + half, w0), (c_bot + half, w1), (c_bot - half, w1)]
    )


def _geometry(item: _Item, frame_len: float) -> _Geom:
    L = frame_len
    a = item.attrs
    g = item.garment
    fitted, loose, aline = "fitted" in a, "loose fit" in a, "a-line" in a
    ruffle = "ruffle hem" in a
    vneck = "v-neck" in a
    body: list[np.ndarray] = []
    skin: list[np.ndarray] = []
    shoes: list[tuple[float, float, float]] = []
    head = None
    top = None
    tier: list[tuple[float, float]] = []

    def neckline(hw: float) -> list[tuple[float, float]]:
        if vneck:
            return [(0.5 - hw, 0.0), (0.5, 0.3)]
        return [(0.5 - hw, 0.0), (0.5 - 0.6 * hw, 0.045), (0.5, 0.06), (0.5 + 0.6 * hw, 0.045)]

    def sleeves(shw: float, arm_top: float, arm_bot: float, w_hand: float, length: float):
        if "sleeveless" in a:
            return
        extra = 0.025 if loose else 0.0
        for side in (-1, 1):
            ct = 0.5 + side * (0.5 - arm_top)
            cb = 0.5 + side * (0.5 - arm_bot)
            end = w_hand * length
            ce = ct + (cb - ct) * end / w_hand
            half = 0.075 + extra
            body.append(
                np.array(
                    [
                        (0.5 + side * (shw - 0.05), 0.0),
                        (ct + side * half, 0.03),
                        (ce + side * half, end),
                        (ce - side * half, end),
                        (0.5 + side * (shw - 0.02), 0.24),
                    ]
                )
            )

    if g in _UPPER:
        jacket = g == "Jacket"
        shw = (0.32 if jacket else 0.30) + (0.04 if loose else 0.0)
        waist_hw = shw + (-0.08 if fitted else 0.03 if loose else -0.02)
        hem_hw = shw + (-0.05 if fitted else 0.06 if loose else -0.01)
        hem = (0.55 if "cropped" in a else 0.98 if jacket else 0.92) * L
        waist = min(0.5 * L, 0.8 * hem)
        top_sh = shw - (0.09 if "sleeveless" in a else 0.0)
        pit = shw - (0.03 if "sleeveless" in a else 0.01)
        right = [(0.5 + 0.09, 0.0), (0.5 + top_sh, 0.03), (0.5 + pit, 0.24)]
        right += [(0.5 + waist_hw, waist)]
        pts = right + _hem_edge((0.5 + hem_hw, hem), (0.5 - hem_hw, hem), ruffle)
        pts += [(1 - u, w) for u, w in reversed(right)] + neckline(0.09)[1:]
        body.append(np.array(pts))
        arm_top, arm_bot, w_hand = 0.5 - shw - 0.03, 0.5 - shw - 0.08, 0.85 * L
        for side in (-1, 1):
            skin.append(
                _arm(
                    0.5 + side * (0.5 - arm_top), 0.5 + side * (0.5 - arm_bot), 0.04, w_hand, 0.055
                )
            )
        sleeves(shw, arm_top, arm_bot, w_hand, 0.97 if "long sleeve" in a else 0.35)
        # Bare midriff above the (generic dark) trousers for cropped tops.
        midriff = [(0.5 - waist_hw, 0.3), (0.5 + waist_hw, 0.3)]
        midriff += [(0.5 + waist_hw, 1.4 * L), (0.5 - waist_hw, 1.4 * L)]
        skin.append(np.array(midriff))
        head = (0.5, -0.25, 0.13)
        hems = [(0.5 - hem_hw, 0.5 + hem_hw, hem)]
        neck: tuple[float, float] | None = (0.5, 0.0)
        centre = (0.05, hem - 0.03)
        pockets = (
            [(0.27, 0.62 * L, 0.42, 0.76 * L), (0.58, 0.62 * L, 0.73, 0.76 * L)]
            if jacket and "cropped" not in a
            else [(0.56, 0.2, 0.7, 0.34)]
        )
        graphic = (0.5, min(0.42, 0.6 * hem), 0.15)
        logo = (0.36, 0.2, 0.06)
        if ruffle:
            tier = [(0.5 - hem_hw, hem - 0.1), (0.5 + hem_hw, hem - 0.1)]
        open_front = jacket and not ({"zip", "button front"} & a)
        return _Geom(
            L,
            body,
            skin,
            shoes,
            head,
            top,
            hems,
            neck,
            centre,
            waist,
            pockets,
            graphic,
            logo,
            tier,
            open_front,
        )

    if g == "Dress":
        shw = 0.25
        waist = 0.62
        waist_hw = 0.15 if fitted else 0.22 if loose else 0.18
        hem_hw = 0.44 if aline else 0.2 if fitted else 0.34 if loose else 0.3
        hem = (0.42 if "mini" in a else 0.93 if "maxi" in a else 0.6) * L
        top_sh = shw - (0.08 if "sleeveless" in a else 0.0)
        right = [(0.5 + 0.08, 0.0), (0.5 + top_sh, 0.03), (0.5 + shw - 0.02, 0.24)]
        right += [(0.5 + waist_hw, waist)]
        pts = right + _hem_edge((0.5 + hem_hw, hem), (0.5 - hem_hw, hem), ruffle)
        pts += [(1 - u, w) for u, w in reversed(right)] + neckline(0.08)[1:]
        body.append(np.array(pts))
        arm_top, arm_bot, w_hand = 0.5 - shw - 0.03, 0.5 - shw - 0.09, 0.45 * L
        for side in (-1, 1):
            skin.append(
                _arm(0.5 + side * (0.5 - arm_top), 0.5 + side * (0.5 - arm_bot), 0.04, w_hand, 0.05)
            )
            skin.append(_arm(0.5 + side * 0.065, 0.5 + side * 0.065, waist, 0.96 * L, 0.05))
            shoes.append((0.5 + side * 0.075, 0.97 * L, 0.07))
        sleeves(shw, arm_top, arm_bot, w_hand, 0.95 if "long sleeve" in a else 0.3)
        head = (0.5, -0.25, 0.13)
        if ruffle:
            tier = [(0.5 - hem_hw * 0.95, hem - 0.14), (0.5 + hem_hw * 0.95, hem - 0.14)]
        return _Geom(
            L,
            body,
            skin,
            shoes,
            head,
            top,
            [(0.5 - hem_hw, 0.5 + hem_hw, hem)],
            (0.5, 0.0),
            (0.05, waist + 0.35),
            waist,
            [(0.26, waist + 0.12, 0.38, waist + 0.3), (0.62, waist + 0.12, 0.74, waist + 0.3)],
            (0.5, 0.36, 0.12),
            (0.38, 0.2, 0.04),
            tier,
        )

    # Lower-body garments: the frame runs from the waist down; a plain top above it.
    top = np.array([(0.28, -0.9), (0.72, -0.9), (0.74, 0.02), (0.26, 0.02)])
    leg_w0 = 0.2 if g != "Shorts" else 0.28
    for side in (-1, 1):
        skin.append(
            _arm(
                0.5 + side * 0.1,
                0.5 + side * 0.09,
                leg_w0,
                (0.96 if g != "Shorts" else 1.25) * L,
                0.055,
            )
        )
        if g != "Shorts":
            shoes.append((0.5 + side * 0.1, 0.97 * L, 0.075))
    if g == "Skirt":
        hip_hw = 0.24
        hem_hw = 0.45 if aline else 0.23 if fitted else 0.38 if loose else 0.3
        hem = (0.28 if "mini" in a else 0.94 if "maxi" in a else 0.48) * L
        pts = [(0.5 + 0.2, 0.0), (0.5 + hip_hw, 0.25)]
        pts += _hem_edge((0.5 + hem_hw, hem), (0.5 - hem_hw, hem), ruffle)
        pts += [(0.5 - hip_hw, 0.25), (0.5 - 0.2, 0.0)]
        body.append(np.array(pts))
        hems = [(0.5 - hem_hw, 0.5 + hem_hw, hem)]
        centre = (0.02, hem - 0.04) if "button front" in a else (0.02, min(0.28, hem - 0.05))
        if ruffle:
            tier = [(0.5 - hem_hw * 0.95, hem - 0.12), (0.5 + hem_hw * 0.95, hem - 0.12)]
        logo = (0.36, hem - 0.1, 0.06)
        graphic = (0.5, min(0.38, 0.55 * hem), 0.12)
    else:
        shorts = g == "Shorts"
        hip_hw = 0.29 if shorts else 0.25
        crotch = 0.42 if shorts else 0.55
        hw = (
            (0.3 if loose else 0.2 if fitted else 0.24)
            if shorts
            else (0.26 if loose else 0.11 if fitted else 0.17)
        )
        hem = 0.58 if shorts else (0.74 if "cropped" in a else 0.95) * L
        lc, rc = 0.36 if shorts else 0.37, 0.64 if shorts else 0.63
        pts = [(0.5 + hip_hw - 0.03, 0.0), (0.5 + hip_hw, 0.3), (rc + hw / 2, hem)]
        pts += [(rc - hw / 2, hem), (0.5, crotch), (lc + hw / 2, hem), (lc - hw / 2, hem)]
        pts += [(0.5 - hip_hw, 0.3), (0.5 - hip_hw + 0.03, 0.0)]
        body.append(np.array(pts))
        hems = [(lc - hw / 2, lc + hw / 2, hem), (rc - hw / 2, rc + hw / 2, hem)]
        centre = (0.02, 0.3)
        logo = (lc, hem - 0.1, 0.06)
        graphic = (lc, min(0.55, 0.6 * hem), 0.1)
    pockets = [(0.27, 0.08, 0.39, 0.22), (0.61, 0.08, 0.73, 0.22)]
    return _Geom(
        L, body, skin, shoes, None, top, hems, None, centre, 0.03, pockets, graphic, logo, tier
    )


# --------------------------------------------------------------------------- rendering


def _star(cx: float, cy: float, r: float, n: int = 5) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        rad = r if k % 2 == 0 else 0.45 * r
        ang = -math.pi / 2 + k * math.pi / n
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def _render(
    item: _Item, rng: np.random.Generator, width: int, height: int
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Draw one view of an item; return the image and its (unclamped) box."""
    a = item.attrs
    L = _FRAME_L[item.garment] * float(rng.uniform(0.94, 1.06))
    geom = _geometry(item, L)

    # Extent of everything the box must hold, in frame units.
    pts = np.concatenate([*geom.body, np.array([(0.0, 0.0), (1.0, L)])])
    u0, w0 = pts.min(axis=0)
    u1, w1 = pts.max(axis=0)
    if "hood" in a and geom.head is not None:
        w0 = min(w0, geom.head[1] - 0.24)
    mx, my = rng.uniform(0.03, 0.09, size=2)
    bu0, bu1 = u0 - mx, u1 + mx
    bw0, bw1 = w0 - my * L, w1 + my * L
    # Frame width in pixels so that the box takes 70-95% of the limiting image side.
    fill = float(rng.uniform(0.7, 0.95))
    fw = fill * min(width / (bu1 - bu0), height / (bw1 - bw0))
    box_w, box_h = fw * (bu1 - bu0), fw * (bw1 - bw0)
    bx = float(rng.uniform(0, width - box_w))
    by = float(rng.uniform(0, height - box_h))
    if rng.random() < 0.12:  # box reaches past an image edge, as in DeepFashion-C
        side = int(rng.integers(4))
        over = float(rng.uniform(1.0, 0.08 * min(box_w, box_h) + 1.0))
        if side == 0:
            bx = -over
        elif side == 1:
            bx = width - box_w + over
        elif side == 2:
            by = -over
        else:
            by = height - box_h + over
    fx, fy = bx - bu0 * fw, by - bw0 * fw

    def px(u: float, w: float) -> tuple[float, float]:
        return (fx + u * fw, fy + w * fw)

    def poly(arr: np.ndarray) -> list[tuple[float, float]]:
        return [px(float(u), float(w)) for u, w in arr]

    def lw(k: float) -> int:
        return max(1, round(k * fw))

    # Background: a plain pale colour, a gentle gradient and sensor-like noise.
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    bg = np.array(_hsv(rng.random(), rng.uniform(0.03, 0.2), rng.uniform(0.72, 0.96)), np.float32)
    grad = 1.0 + rng.uniform(-0.08, 0.08) * (ys / height - 0.5)
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    canvas = bg * grad[..., None] + rng.uniform(0.005, 0.04) * noise
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))

    # The wearer.
    d = ImageDraw.Draw(img)
    skin = _u8(item.skin)
    if geom.top is not None:
        d.polygon(poly(geom.top), fill=_u8((0.93, 0.93, 0.9)))
    if item.garment in _UPPER:
        pants = np.array([(0.22, 0.85 * L), (0.78, 0.85 * L), (0.8, 3 * L), (0.2, 3 * L)])
    else:
        pants = None
    for s in geom.skin:
        d.polygon(poly(s), fill=skin)
    if pants is not None:
        d.polygon(poly(pants), fill=_u8((0.2, 0.22, 0.28)))
    for cu, cw, r in geom.shoes:
        x, y = px(cu, cw)
        d.ellipse([x - r * fw, y - 0.4 * r * fw, x + r * fw, y + 0.4 * r * fw], fill=(30, 25, 25))
    if geom.head is not None:
        hu, hw_, hr = geom.head
        nx0, ny0 = px(0.45, hw_)
        nx1, ny1 = px(0.55, 0.03)
        d.rectangle([nx0, ny0, nx1, ny1], fill=skin)
        x, y = px(hu, hw_)
        d.ellipse([x - hr * fw, y - hr * fw, x + hr * fw, y + hr * fw], fill=skin)
        d.chord([x - hr * fw, y - hr * fw, x + hr * fw, y + hr * fw], 180, 360, fill=_u8(item.hair))

    # Garment mask.
    mask_img = Image.new("L", (width, height), 0)
    md = ImageDraw.Draw(mask_img)
    for b in geom.body:
        md.polygon(poly(b), fill=255)
    mask = np.asarray(mask_img, dtype=np.float32) / 255.0

    U = (xs - fx) / fw
    Wc = (ys - fy) / fw
    jitter = np.float32(rng.uniform(-0.03, 0.03))
    base = np.array(item.base, np.float32) + jitter
    fabric = np.broadcast_to(base, (height, width, 3)).copy()
    k = item.pattern_k
    phase = float(rng.random())

    # Texture: an ink coverage map printed in the ink colour (or a drawn layer).
    ink = None
    layer = None
    if "stripe" in a:
        ink = ((Wc * k + phase) % 1.0 < 0.45).astype(np.float32)
    elif "vertical stripe" in a:
        ink = ((U * (k + 1) + phase) % 1.0 < 0.3).astype(np.float32)
    elif "polka dot" in a:
        kk = k + 0.5
        row = np.floor(Wc * kk)
        cu = (U * kk + 0.5 * (row % 2) + phase) % 1.0 - 0.5
        cw = (Wc * kk) % 1.0 - 0.5
        ink = (cu * cu + cw * cw < 0.22**2).astype(np.float32)
    elif "plaid" in a:
        lu = (U * k + phase) % 1.0 < 0.3
        lv = (Wc * k + phase) % 1.0 < 0.3
        ink = 0.55 * (lu | lv).astype(np.float32) + 0.45 * (lu & lv).astype(np.float32)
    elif "chevron" in a:
        ink = ((Wc * k + 1.2 * np.abs((U * k) % 1.0 - 0.5) + phase) % 1.0 < 0.5).astype(np.float32)
    elif "colorblock" in a:
        if item.block_vertical:
            ink = np.broadcast_to(U > 0.5, (height, width)).astype(np.float32)
        else:
            ink = np.broadcast_to(Wc > 0.5 * (geom.hems[0][2]), (height, width)).astype(np.float32)
        fabric = fabric * (1 - ink[..., None]) + np.array(item.ink2, np.float32) * ink[..., None]
        ink = None
    elif "floral" in a or "print" in a:
        layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        ld = ImageDraw.Draw(layer)
        n = int(rng.integers(9, 15))
        # Motifs centred over the garment body (not the whole frame).
        body_pts = np.concatenate(geom.body)
        lo, hi = body_pts.min(axis=0), body_pts.max(axis=0)
        cs = lo + (hi - lo) * rng.uniform(-0.05, 1.05, size=(n, 2))
        if "floral" in a:
            petals = [(0.95, 0.55, 0.7), (0.98, 0.95, 0.9), (0.95, 0.85, 0.3), (0.7, 0.5, 0.9)]
            for i in range(n):
                x, y = px(float(cs[i, 0]), float(cs[i, 1]))
                r = 0.045 * fw
                col = (*_u8(petals[int(rng.integers(len(petals)))]), 255)
                lx, ly = x + 2.2 * r, y + 1.5 * r
                ld.ellipse([lx - r, ly - 0.6 * r, lx + r, ly + 0.6 * r], fill=(60, 140, 60, 255))
                for p in range(5):
                    ang = 2 * math.pi * p / 5 + phase
                    ex, ey = x + 1.1 * r * math.cos(ang), y + 1.1 * r * math.sin(ang)
                    ld.ellipse([ex - r, ey - r, ex + r, ey + r], fill=col)
                ld.ellipse(
                    [x - 0.6 * r, y - 0.6 * r, x + 0.6 * r, y + 0.6 * r], fill=(240, 200, 40, 255)
                )
        else:
            cols = [(*_u8(c), 255) for c in (item.ink, item.ink2, item.accent)]
            for i in range(n):
                x, y = px(float(cs[i, 0]), float(cs[i, 1]))
                s = float(rng.uniform(0.06, 0.14)) * fw
                col = cols[i % 3]
                kind = i % 3
                if kind == 0:
                    ang = float(rng.uniform(0, math.pi))
                    dx, dy = s * math.cos(ang), s * math.sin(ang)
                    ld.line([x - dx, y - dy, x + dx, y + dy], fill=col, width=lw(0.035))
                elif kind == 1:
                    ld.polygon([(x, y - s), (x + s, y + s * 0.7), (x - s, y + s * 0.5)], fill=col)
                else:
                    ld.arc([x - s, y - s, x + s, y + s], 0, 220, fill=col, width=lw(0.03))
    if ink is not None:
        fabric = fabric * (1 - ink[..., None]) + np.array(item.ink, np.float32) * ink[..., None]
    if layer is not None:
        la = np.asarray(layer, dtype=np.float32) / 255.0
        alpha = la[..., 3:4]
        fabric = fabric * (1 - alpha) + la[..., :3] * alpha

    # Fabric: surface modulation of the printed fabric.
    alpha_g = mask.copy()
    if "knit" in a:
        # Vertical ribs, raised (lighter) and recessed (darker) on any base colour,
        # plus a darker ribbed band at the hem.
        rib = (U * 12.0) % 1.0 < 0.5
        gain = np.where(rib, 1.1, 0.85).astype(np.float32)
        lift = np.where(rib, 0.16, -0.03).astype(np.float32)
        band = np.zeros((height, width), np.float32)
        for _, _, hw in geom.hems:
            band = np.maximum(band, ((Wc > hw - 0.1) & (Wc < hw + 0.01)).astype(np.float32))
        fabric = (fabric * gain[..., None] + lift[..., None]) * (1 - 0.15 * band[..., None])
        fabric += 0.035 * rng.standard_normal((height, width, 1), dtype=np.float32)
    elif "denim" in a:
        twill = np.where(((xs + ys) / max(2.0, 0.03 * fw)) % 2.0 < 1.0, 1.12, 0.88)
        fabric = fabric * twill.astype(np.float32)[..., None]
        fabric += 0.05 * rng.standard_normal((height, width, 1), dtype=np.float32)
    elif "leather" in a:
        c = float(rng.uniform(0.2, 0.5))
        spec = np.exp(-(((U - c - 0.25 * Wc / L) / 0.08) ** 2)).astype(np.float32)
        fabric = fabric + 0.45 * spec[..., None]
    elif "lace" in a:
        kk = 10.0
        row = np.floor(Wc * kk)
        cu = (U * kk + 0.5 * (row % 2)) % 1.0 - 0.5
        cw = (Wc * kk) % 1.0 - 0.5
        holes = (cu * cu + cw * cw < 0.3**2).astype(np.float32)
        alpha_g = alpha_g * (1 - 0.85 * holes)
    elif "sheer" in a:
        fabric = 0.7 * fabric + 0.3
        alpha_g = alpha_g * 0.45
    elif "sequin" in a:
        cell = max(1, round(0.025 * fw))
        gh, gw = -(-height // cell), -(-width // cell)
        sp = (rng.random((gh, gw)) < 0.12).astype(np.float32)
        sp = np.repeat(np.repeat(sp, cell, axis=0), cell, axis=1)[:height, :width]
        fabric = fabric * 0.85 + 0.1
        fabric = fabric * (1 - sp[..., None]) + np.float32(0.98) * sp[..., None]
    if "leather" not in a:
        fabric += 0.015 * rng.standard_normal((height, width, 1), dtype=np.float32)
    # Soft shading across the body.
    fabric *= (0.86 + 0.14 * np.cos(np.pi * np.clip(U - 0.5, -0.5, 0.5)))[..., None]

    out = np.asarray(img, dtype=np.float32) / 255.0
    ag = alpha_g[..., None]
    out = out * (1 - ag) + fabric * ag

    if "faux fur" in a:
        fur = np.zeros((height, width), bool)
        rough = rng.random((height, width))
        for h0, h1, hw in geom.hems:
            dist = np.abs(Wc - hw) / 0.07
            fur |= (dist < 0.5 + 0.8 * rough) & (h0 - 0.03 < U) & (h1 + 0.03 > U)
        tone = np.array((0.93, 0.88, 0.78), np.float32) + 0.1 * (rough[..., None] - 0.5)
        out = np.where(fur[..., None], tone, out)

    img = Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    dark = _luma(item.base) > 0.5
    contrast = _u8((0.08, 0.08, 0.08) if dark else (0.96, 0.96, 0.94))
    seam = _u8(tuple(c * 0.55 for c in item.base))

    if "denim" in a:  # gold topstitching above every hem, the classic denim cue
        for h0, h1, hw in geom.hems:
            for off in (0.04, 0.07):
                d.line(
                    [px(h0 + 0.02, hw - off), px(h1 - 0.02, hw - off)],
                    fill=(215, 160, 60),
                    width=lw(0.012),
                )

    # Parts.
    if geom.open_front:
        c0, c1 = geom.centre
        s0 = 0.3 if "v-neck" in a else c0 - 0.05  # the shirt shows below a v-neck
        d.polygon(
            poly(np.array([(0.43, s0), (0.57, s0), (0.57, c1), (0.43, c1)])),
            fill=_u8((0.95, 0.95, 0.93)),
        )
        d.line([px(0.41, 0.0), px(0.45, 0.3)], fill=seam, width=lw(0.03))
        d.line([px(0.59, 0.0), px(0.55, 0.3)], fill=seam, width=lw(0.03))
    if "hood" in a and geom.head is not None:
        hu, hw_, hr = geom.head
        x, y = px(hu, hw_)
        r = 1.5 * hr * fw
        hood = _u8(tuple(c * 0.85 for c in item.base))
        d.polygon(poly(np.array([(0.32, 0.03), (0.68, 0.03), (0.7, hw_), (0.3, hw_)])), fill=hood)
        d.ellipse([x - r, y - 1.1 * r, x + r, y + 0.9 * r], fill=hood)
        fr = 0.95 * hr * fw
        d.ellipse([x - fr, y - fr, x + fr, y + fr], fill=skin)
    if "collar" in a and geom.neck is not None:
        for side in (-1, 1):
            d.polygon(
                poly(
                    np.array(
                        [
                            (0.5 + side * 0.13, -0.02),
                            (0.5 + side * 0.01, 0.07),
                            (0.5 + side * 0.15, 0.17),
                        ]
                    )
                ),
                fill=contrast,
            )
    if "pocket" in a:
        for p0, q0, p1, q1 in geom.pockets:
            x0, y0 = px(p0, q0)
            x1, y1 = px(p1, q1)
            d.rectangle([x0, y0, x1, y1], outline=contrast, width=lw(0.03))
            flap = y0 + 0.3 * (y1 - y0)
            d.line([x0, flap, x1, flap], fill=contrast, width=lw(0.02))
    if "button front" in a:
        c0, c1 = geom.centre
        d.line([px(0.5, c0), px(0.5, c1)], fill=seam, width=lw(0.02))
        r = max(1.2, 0.032 * fw)
        for t in np.linspace(c0 + 0.05, c1 - 0.05, 5):
            x, y = px(0.5, float(t))
            d.ellipse([x - r, y - r, x + r, y + r], fill=contrast)
    if "zip" in a:
        c0, c1 = geom.centre
        d.line([px(0.5, c0), px(0.5, c1)], fill=(190, 190, 200), width=lw(0.03))
        x, y = px(0.5, c0 + 0.02)
        s = max(1.5, 0.035 * fw)
        d.rectangle([x - s, y, x + s, y + 2.2 * s], fill=(210, 210, 220))
    if "belted" in a:
        y0 = geom.waist - 0.035
        x0, ya = px(0.0, y0)
        x1, yb = px(1.0, y0 + 0.075)
        band = Image.new("L", (width, height), 0)
        ImageDraw.Draw(band).rectangle([x0, ya, x1, yb], fill=255)
        belt_mask = Image.fromarray(((np.asarray(band) > 0) & (mask > 0.5)).astype(np.uint8) * 255)
        img.paste((45, 30, 20), mask=belt_mask)
        x, y = px(0.5, y0 + 0.0375)
        s = 0.055 * fw
        d.rectangle([x - s, y - s, x + s, y + s], outline=(230, 190, 60), width=lw(0.02))
    if geom.tier:
        (ua, wa), (ub, _) = geom.tier
        n = 12
        wave = [px(ua + (ub - ua) * t / n, wa + (0.03 if t % 2 else 0.0)) for t in range(n + 1)]
        d.line(wave, fill=seam, width=lw(0.02))

    # Style marks.
    if "graphic" in a:
        gu, gw, gr = geom.graphic
        x, y = px(gu, gw)
        r = gr * fw
        col = _u8(item.accent) if not dark else _u8(tuple(c * 0.6 for c in item.accent))
        if item.graphic_shape == 0:
            d.polygon(_star(x, y, r), fill=col)
        elif item.graphic_shape == 1:
            d.ellipse([x - r, y - r, x + r, y + r], fill=col)
            d.ellipse([x - 0.5 * r, y - 0.5 * r, x + 0.5 * r, y + 0.5 * r], fill=contrast)
        elif item.graphic_shape == 2:
            d.polygon([(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)], fill=col)
        else:
            bolt = [(-0.2, -1), (0.5, -1), (0, 0), (0.4, 0), (-0.4, 1), (-0.1, 0.1), (-0.5, 0.1)]
            d.polygon([(x + p * r, y + q * r) for p, q in bolt], fill=col)
    if "logo" in a:
        lu, lw_, lr = geom.logo
        x, y = px(lu, lw_)
        r = max(1.5, lr * fw)
        d.rectangle([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=contrast)
    if "embellished" in a:
        beads: list[tuple[float, float]] = []
        if geom.neck is not None:
            beads += [
                px(0.5 + 0.13 * math.cos(t), 0.01 + 0.09 * math.sin(t))
                for t in np.linspace(0.2, math.pi - 0.2, 7)
            ]
        for h0, h1, hw in geom.hems:
            beads += [px(float(u), hw - 0.04) for u in np.linspace(h0 + 0.03, h1 - 0.03, 5)]
        r = max(1.2, 0.028 * fw)
        for x, y in beads:
            d.ellipse([x - r, y - r, x + r, y + r], fill=(245, 205, 70))

    # Global lighting of this shot.
    if rng.random() < 0.5:
        gain = float(rng.uniform(0.9, 1.1))
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) * gain, 0, 255).astype(np.uint8))

    box = (
        math.floor(bx),
        math.floor(by),
        math.ceil(bx + box_w),
        math.ceil(by + box_h),
    )
    return img, box


def render_garment(
    garment: str,
    attributes: Sequence[str] = (),
    seed: int = 0,
    width: int = 160,
    height: int = 160,
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Draw one image of a garment with the given attributes, as the generator does.

    The same ``seed`` gives the same colours, framing and background, so two
    calls that differ only in one attribute show what that attribute changes.
    Attributes are drawn as given: eligibility and exclusions are not applied.

    Args:
        garment: One of :data:`DEMO_GARMENTS`.
        attributes: Names from :data:`DEMO_ATTRIBUTES`.
        seed: Random seed of the item and the view.
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        The RGB image and its box ``(x_1, y_1, x_2, y_2)`` (may reach past the edge).

    Raises:
        ValueError: For an unknown garment or attribute name.
    """
    if garment not in DEMO_GARMENTS:
        raise ValueError(f"garment {garment!r} is not one of {', '.join(DEMO_GARMENTS)}")
    known = {n for n, _ in DEMO_ATTRIBUTES}
    bad = [a for a in attributes if a not in known]
    if bad:
        raise ValueError(f"unknown attribute(s) {bad}; known: {', '.join(sorted(known))}")
    item = _new_item(0, garment, frozenset(attributes), 1, np.random.default_rng([seed, 0]))
    return _render(item, np.random.default_rng([seed, 1]), width, height)


# --------------------------------------------------------------------------- dataset


def _labels(item: _Item) -> np.ndarray:
    names = [n for n, _ in DEMO_ATTRIBUTES]
    return np.array([1 if n in item.attrs else -1 for n in names], dtype=np.int8)


def generate_demo_dataset(
    out: str | Path,
    images: int = 600,
    seed: int = 0,
    min_size: int = 96,
    max_size: int = 192,
    unknown_rate: float = 0.0,
    top_rate: float = DEMO_TOP_RATE,
    tail_alpha: float = DEMO_TAIL_ALPHA,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a procedural dataset in the DeepFashion-C layout.

    Args:
        out: Dataset root to create (``Img/``, ``Anno/``, ``Eval/`` go inside).
        images: Number of images.
        seed: Random seed; the same arguments give byte-identical files.
        min_size: Smallest image side in pixels.
        max_size: Largest image side in pixels (each side drawn independently).
        unknown_rate: Fraction of labels written as 0 (unknown) instead of -1/1.
        top_rate: Per-item probability of the most popular attribute.
        tail_alpha: Power-law exponent of the attribute frequencies by rank.
        overwrite: Replace an existing dataset under ``out``; otherwise refuse.
        progress: Show a progress bar.

    Returns:
        The dataset root.

    Raises:
        ValueError: For an argument out of range (the message names it).
        FileExistsError: If ``out`` already holds a dataset and ``overwrite`` is False.
    """
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if not 32 <= min_size <= max_size:
        raise ValueError(
            f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}"
        )
    if not 0.0 <= unknown_rate < 1.0:
        raise ValueError(f"unknown_rate must be in [0, 1), got {unknown_rate}")
    if not 0.0 < top_rate <= 1.0 or tail_alpha < 0:
        raise ValueError(
            f"need 0 < top_rate <= 1 and tail_alpha >= 0, got {top_rate}, {tail_alpha}"
        )
    root = Path(out)
    existing = [root / p for p in ("Img", "Anno", "Eval") if (root / p).exists()]
    if existing:
        if not overwrite:
            raise FileExistsError(
                f"{root} already holds a dataset ({', '.join(p.name for p in existing)}); "
                "choose an empty folder or pass overwrite=True (--overwrite)"
            )
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    rng = np.random.default_rng(seed)
    items = _make_items(images, rng, top_rate, tail_alpha)
    taken: dict[str, int] = {}
    for it in items:
        it.folder = _folder_name(it.garment, it.attrs, taken)
    items.sort(key=lambda it: it.folder)  # files list items folder by folder, like the real one
    label_rng = np.random.default_rng([seed, 1])

    cat_rows: list[list[object]] = []
    attr_rows: list[list[object]] = []
    bbox_rows: list[list[object]] = []
    part_rows: list[list[object]] = []
    cat_index = {n: i for i, (n, _) in enumerate(DEMO_CATEGORIES)}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=images, desc="demo images", unit="img")
    for it in items:
        folder = root / "Img" / "img" / it.folder
        folder.mkdir(parents=True, exist_ok=True)
        labels = _labels(it)
        for v in range(it.views):
            view_rng = np.random.default_rng([seed, 2, it.index, v])
            w = int(view_rng.integers(min_size, max_size + 1))
            h = int(view_rng.integers(min_size, max_size + 1))
            img, box = _render(it, view_rng, w, h)
            rel = f"img/{it.folder}/img_{v + 1:08d}.jpg"
            img.save(root / "Img" / rel, format="JPEG", quality=90)
            lab = labels.copy()
            if unknown_rate > 0:
                lab[label_rng.random(lab.size) < unknown_rate] = 0
            cat_rows.append([rel, cat_index[it.garment] + 1])
            attr_rows.append([rel, *(f"{x:2d}" for x in lab.tolist())])
            bbox_rows.append([rel, *box])
            part_rows.append([rel, it.split])
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    # Annotations last, the partition very last: a crash leaves no half-valid dataset.
    write_annotation_file(
        root / CATEGORY_CLOTH, HEADERS[CATEGORY_CLOTH], [[n, t] for n, t in DEMO_CATEGORIES]
    )
    write_annotation_file(
        root / ATTR_CLOTH, HEADERS[ATTR_CLOTH], [[n, g] for n, g in DEMO_ATTRIBUTES]
    )
    write_annotation_file(root / CATEGORY_IMG, HEADERS[CATEGORY_IMG], cat_rows)
    write_annotation_file(root / ATTR_IMG, HEADERS[ATTR_IMG], attr_rows)
    write_annotation_file(root / BBOX, HEADERS[BBOX], bbox_rows)
    write_annotation_file(root / EVAL_PARTITION, HEADERS[EVAL_PARTITION], part_rows)
    return root


def write_scale_annotations(
    root: str | Path,
    images: int = 289_222,
    attributes: int = 1000,
    mean_positives: float = 3.3,
    seed: int = 0,
) -> Path:
    """Write the six annotation files at DeepFashion-C scale, without images.

    For memory and speed checks of the readers: ``list_attr_img.txt`` holds
    ``images x attributes`` labels in the shipped fixed-width layout (about
    870 MB at the defaults), with Poisson(``mean_positives``) positives per
    image drawn from a long-tailed attribute distribution.

    Args:
        root: Dataset root to write ``Anno/`` and ``Eval/`` into.
        images: Number of image records.
        attributes: Number of attributes.
        mean_positives: Mean positives per image (the paper reports about 3.3).
        seed: Random seed.

    Returns:
        The dataset root.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"img/Scale_Item_{i // 4 + 1:06d}/img_{i % 4 + 1:08d}.jpg" for i in range(images)]
    write_annotation_file(
        root / CATEGORY_CLOTH, HEADERS[CATEGORY_CLOTH], [[n, t] for n, t in DEMO_CATEGORIES]
    )
    write_annotation_file(
        root / ATTR_CLOTH,
        HEADERS[ATTR_CLOTH],
        [[f"synthetic attribute {j + 1}", j % 5 + 1] for j in range(attributes)],
    )
    cats = rng.integers(1, 47, size=images)
    write_annotation_file(
        root / CATEGORY_IMG,
        HEADERS[CATEGORY_IMG],
        ([n, int(c)] for n, c in zip(names, cats, strict=True)),
    )
    xy = rng.integers(0, 60, size=(images, 2))
    wh = rng.integers(40, 200, size=(images, 2))
    write_annotation_file(
        root / BBOX,
        HEADERS[BBOX],
        (
            [n, int(x), int(y), int(x + w), int(y + h)]
            for n, (x, y), (w, h) in zip(names, xy, wh, strict=True)
        ),
    )
    n_val = n_test = round(images * 40_000 / 289_222)
    splits = ["train"] * (images - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    write_annotation_file(
        root / EVAL_PARTITION,
        HEADERS[EVAL_PARTITION],
        ([n, s] for n, s in zip(names, splits, strict=True)),
    )

    # list_attr_img.txt, streamed: "-1" everywhere, " 1" at the positives ("%2d" fields).
    pmf = np.arange(1, attributes + 1, dtype=np.float64) ** -0.8
    pmf /= pmf.sum()
    counts = np.minimum(rng.poisson(mean_positives, size=images), attributes)
    picks = rng.choice(attributes, size=int(counts.sum()), p=pmf)
    ends = np.cumsum(counts)
    template = np.frombuffer(b"-1 " * attributes, dtype=np.uint8)
    width = max(len(n) for n in names)
    path = root / ATTR_IMG
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(f"{images}\n{HEADERS[ATTR_IMG]}\n".encode())
        chunk: list[bytes] = []
        start = 0
        for i, name in enumerate(names):
            seg = template.copy()
            seg[3 * picks[start : ends[i]]] = 32  # "-1" -> " 1"
            start = ends[i]
            chunk.append(name.ljust(width).encode() + b" " + seg[:-1].tobytes() + b"\n")
            if len(chunk) == 2000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
    tmp.replace(path)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m fashion_attr.data.demo --out DIR --images N --seed S``.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a bad argument or an occupied output folder.
    """
    p = argparse.ArgumentParser(
        prog="python -m fashion_attr.data.demo",
        description="Write a procedural demo dataset in the DeepFashion-C layout.",
    )
    p.add_argument("--out", required=True, type=Path, help="dataset root to create")
    p.add_argument("--images", type=int, default=600, help="number of images (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--min-size", type=int, default=96, help="smallest image side (px)")
    p.add_argument("--max-size", type=int, default=192, help="largest image side (px)")
    p.add_argument(
        "--unknown-rate",
        type=float,
        default=0.0,
        help="fraction of labels written as 0 = unknown (default 0)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        root = generate_demo_dataset(
            args.out,
            images=args.images,
            seed=args.seed,
            min_size=args.min_size,
            max_size=args.max_size,
            unknown_rate=args.unknown_rate,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from fashion_attr.data.annotations import load_annotations_from_dir

    index = load_annotations_from_dir(root)
    counts = index.positive_counts()
    n = len(index.records)
    splits = {s: len(index.split_records(s)) for s in ("train", "val", "test")}
    print(f"wrote {n} images to {root} ({', '.join(f'{k} {v}' for k, v in splits.items())})")
    print(
        f"{len(index.attributes)} attributes, {counts.sum() / n:.2f} positives per image, "
        f"attribute frequency {counts.min() / n:.1%} .. {counts.max() / n:.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
