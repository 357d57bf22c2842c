"""The demo catalog: label tables and the sampling of items (products).

An item is one product: a garment with fixed attributes, colours and looks,
photographed ``views`` times. :func:`_make_items` draws the items of a dataset
from the power-law attribute rates, splits them by item (~70 / 15 / 15 of the
images) and tops up the rarest attributes so that each has an item in every split.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

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
_SKIN = ((0.96, 0.8, 0.69), (0.87, 0.68, 0.52), (0.68, 0.48, 0.34), (0.45, 0.3, 0.2))
_HAIR = ((0.1, 0.07, 0.05), (0.35, 0.2, 0.1), (0.8, 0.65, 0.35), (0.25, 0.25, 0.25))
_NEON_HUES = (0.25, 0.83, 0.5, 0.08, 0.16)
_NEUTRAL_WORDS = ("Classic", "Essential", "Everyday", "Relaxed", "Simple", "Soft")

RGB = tuple[float, float, float]


def _hsv(h: float, s: float, v: float) -> RGB:
    """RGB of a hue (taken modulo 1), saturation and value, all in 0..1."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (r, g, b)


def _luma(c: RGB) -> float:
    """Perceived lightness (Rec. 601 luma) of an RGB colour."""
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


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


def _attribute_rates(top_rate: float, alpha: float) -> dict[str, float]:
    """Per-item probability of each attribute where eligible: ``top_rate * rank**-alpha``."""
    return {n: top_rate * (r + 1) ** -alpha for r, n in enumerate(DEMO_POPULARITY)}


def _conflicts(name: str, chosen: set[str]) -> bool:
    """Whether ``name`` shares an exclusive set with an attribute already chosen."""
    return any(name in s and chosen & (s - {name}) for s in _EXCLUSIVE)


def _sample_attrs(garment: str, rng: np.random.Generator, rates: dict[str, float]) -> set[str]:
    """Draw the attributes of one item: eligible ones at their rates, exclusions applied."""
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
    """Product folder name from the leading attributes, e.g. ``Floral_Knit_Dress_2``."""
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
    """Draw items until they hold ``images`` views, then split and top them up."""
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
    """Draw the colours and looks of an item with the given labels."""
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


def _labels(item: _Item) -> np.ndarray:
    """The -1 / 1 label vector of an item, in :data:`DEMO_ATTRIBUTES` order."""
    names = [n for n, _ in DEMO_ATTRIBUTES]
    return np.array([1 if n in item.attrs else -1 for n in names], dtype=np.int8)
