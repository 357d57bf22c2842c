"""Shapes of a garment and its wearer in frame units.

The frame is the body region the box surrounds: u runs across it (0..1 = the
frame width), w down it in frame widths (0..L = the frame height), so patterns
and parts keep their proportions on every garment. Nothing here draws random
numbers; :mod:`~fashion_attr.demo.render` maps the shapes to pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fashion_attr.demo.catalog import _Item

# Frame height / width (L) of the body region the box surrounds, per garment.
_FRAME_L = {"Tee": 1.05, "Jacket": 1.12, "Dress": 2.2, "Skirt": 1.8, "Trousers": 2.2, "Shorts": 1.3}
_UPPER = ("Tee", "Jacket")

Point = tuple[float, float]


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


def _hem_edge(right: Point, left: Point, ruffle: bool) -> list[Point]:
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
    """A limb: a quadrilateral of half-width ``half`` from (c_top, w0) to (c_bot, w1)."""
    return np.array(
        [(c_top - half, w0), (c_top + half, w0), (c_bot + half, w1), (c_bot - half, w1)]
    )


def _star(cx: float, cy: float, r: float, n: int = 5) -> list[Point]:
    """Corners of an ``n``-pointed star of outer radius ``r`` (pixels), point up."""
    pts = []
    for k in range(2 * n):
        rad = r if k % 2 == 0 else 0.45 * r
        ang = -math.pi / 2 + k * math.pi / n
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def _neckline(hw: float, vneck: bool) -> list[Point]:
    """The neckline from the left shoulder seam to the centre (a v-neck runs deep)."""
    if vneck:
        return [(0.5 - hw, 0.0), (0.5, 0.3)]
    return [(0.5 - hw, 0.0), (0.5 - 0.6 * hw, 0.045), (0.5, 0.06), (0.5 + 0.6 * hw, 0.045)]


def _sleeves(
    a: frozenset[str], shw: float, arm_top: float, arm_bot: float, w_hand: float, length: float
) -> list[np.ndarray]:
    """Left and right sleeves along the arms, ``length`` of the way to the hand."""
    if "sleeveless" in a:
        return []
    extra = 0.025 if "loose fit" in a else 0.0
    out = []
    for side in (-1, 1):
        ct = 0.5 + side * (0.5 - arm_top)
        cb = 0.5 + side * (0.5 - arm_bot)
        end = w_hand * length
        ce = ct + (cb - ct) * end / w_hand
        half = 0.075 + extra
        out.append(
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
    return out


def _geometry(item: _Item, frame_len: float) -> _Geom:
    """Shapes of an item's garment and wearer for a frame of height ``frame_len``."""
    if item.garment in _UPPER:
        return _upper_geometry(item.attrs, item.garment == "Jacket", frame_len)
    if item.garment == "Dress":
        return _dress_geometry(item.attrs, frame_len)
    return _lower_geometry(item.attrs, item.garment, frame_len)


def _upper_geometry(a: frozenset[str], jacket: bool, L: float) -> _Geom:
    """A tee or jacket on a figure with arms, head and (generic dark) trousers."""
    fitted, loose = "fitted" in a, "loose fit" in a
    ruffle = "ruffle hem" in a
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
    pts += [(1 - u, w) for u, w in reversed(right)] + _neckline(0.09, "v-neck" in a)[1:]
    body = [np.array(pts)]
    arm_top, arm_bot, w_hand = 0.5 - shw - 0.03, 0.5 - shw - 0.08, 0.85 * L
    skin = [
        _arm(0.5 + side * (0.5 - arm_top), 0.5 + side * (0.5 - arm_bot), 0.04, w_hand, 0.055)
        for side in (-1, 1)
    ]
    body += _sleeves(a, shw, arm_top, arm_bot, w_hand, 0.97 if "long sleeve" in a else 0.35)
    # Bare midriff above the (generic dark) trousers for cropped tops.
    midriff = [(0.5 - waist_hw, 0.3), (0.5 + waist_hw, 0.3)]
    midriff += [(0.5 + waist_hw, 1.4 * L), (0.5 - waist_hw, 1.4 * L)]
    skin.append(np.array(midriff))
    pockets = (
        [(0.27, 0.62 * L, 0.42, 0.76 * L), (0.58, 0.62 * L, 0.73, 0.76 * L)]
        if jacket and "cropped" not in a
        else [(0.56, 0.2, 0.7, 0.34)]
    )
    tier = [(0.5 - hem_hw, hem - 0.1), (0.5 + hem_hw, hem - 0.1)] if ruffle else []
    return _Geom(
        L=L,
        body=body,
        skin=skin,
        shoes=[],
        head=(0.5, -0.25, 0.13),
        top=None,
        hems=[(0.5 - hem_hw, 0.5 + hem_hw, hem)],
        neck=(0.5, 0.0),
        centre=(0.05, hem - 0.03),
        waist=waist,
        pockets=pockets,
        graphic=(0.5, min(0.42, 0.6 * hem), 0.15),
        logo=(0.36, 0.2, 0.06),
        tier=tier,
        open_front=jacket and not ({"zip", "button front"} & a),
    )


def _dress_geometry(a: frozenset[str], L: float) -> _Geom:
    """A dress on a figure with arms, legs, shoes and head."""
    fitted, loose, aline = "fitted" in a, "loose fit" in a, "a-line" in a
    ruffle = "ruffle hem" in a
    shw = 0.25
    waist = 0.62
    waist_hw = 0.15 if fitted else 0.22 if loose else 0.18
    hem_hw = 0.44 if aline else 0.2 if fitted else 0.34 if loose else 0.3
    hem = (0.42 if "mini" in a else 0.93 if "maxi" in a else 0.6) * L
    top_sh = shw - (0.08 if "sleeveless" in a else 0.0)
    right = [(0.5 + 0.08, 0.0), (0.5 + top_sh, 0.03), (0.5 + shw - 0.02, 0.24)]
    right += [(0.5 + waist_hw, waist)]
    pts = right + _hem_edge((0.5 + hem_hw, hem), (0.5 - hem_hw, hem), ruffle)
    pts += [(1 - u, w) for u, w in reversed(right)] + _neckline(0.08, "v-neck" in a)[1:]
    body = [np.array(pts)]
    skin: list[np.ndarray] = []
    shoes: list[tuple[float, float, float]] = []
    arm_top, arm_bot, w_hand = 0.5 - shw - 0.03, 0.5 - shw - 0.09, 0.45 * L
    for side in (-1, 1):
        skin.append(
            _arm(0.5 + side * (0.5 - arm_top), 0.5 + side * (0.5 - arm_bot), 0.04, w_hand, 0.05)
        )
        skin.append(_arm(0.5 + side * 0.065, 0.5 + side * 0.065, waist, 0.96 * L, 0.05))
        shoes.append((0.5 + side * 0.075, 0.97 * L, 0.07))
    body += _sleeves(a, shw, arm_top, arm_bot, w_hand, 0.95 if "long sleeve" in a else 0.3)
    tier = [(0.5 - hem_hw * 0.95, hem - 0.14), (0.5 + hem_hw * 0.95, hem - 0.14)] if ruffle else []
    return _Geom(
        L=L,
        body=body,
        skin=skin,
        shoes=shoes,
        head=(0.5, -0.25, 0.13),
        top=None,
        hems=[(0.5 - hem_hw, 0.5 + hem_hw, hem)],
        neck=(0.5, 0.0),
        centre=(0.05, waist + 0.35),
        waist=waist,
        pockets=[
            (0.26, waist + 0.12, 0.38, waist + 0.3),
            (0.62, waist + 0.12, 0.74, waist + 0.3),
        ],
        graphic=(0.5, 0.36, 0.12),
        logo=(0.38, 0.2, 0.04),
        tier=tier,
    )


def _lower_geometry(a: frozenset[str], g: str, L: float) -> _Geom:
    """A skirt, trousers or shorts: the frame runs from the waist down; a plain top above."""
    top = np.array([(0.28, -0.9), (0.72, -0.9), (0.74, 0.02), (0.26, 0.02)])
    skin: list[np.ndarray] = []
    shoes: list[tuple[float, float, float]] = []
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
    shape = _skirt(a, L) if g == "Skirt" else _legwear(a, g == "Shorts", L)
    pts, hems, centre, logo, graphic, tier = shape
    return _Geom(
        L=L,
        body=[np.array(pts)],
        skin=skin,
        shoes=shoes,
        head=None,
        top=top,
        hems=hems,
        neck=None,
        centre=centre,
        waist=0.03,
        pockets=[(0.27, 0.08, 0.39, 0.22), (0.61, 0.08, 0.73, 0.22)],
        graphic=graphic,
        logo=logo,
        tier=tier,
    )


# Outline, hems, centre line, logo, graphic and ruffle tier of a lower-body garment.
_LowerShape = tuple[
    list[Point],
    list[tuple[float, float, float]],
    tuple[float, float],
    tuple[float, float, float],
    tuple[float, float, float],
    list[Point],
]


def _skirt(a: frozenset[str], L: float) -> _LowerShape:
    """Outline and marks of a skirt (hem length and flare from the shape attributes)."""
    fitted, loose, aline = "fitted" in a, "loose fit" in a, "a-line" in a
    ruffle = "ruffle hem" in a
    hip_hw = 0.24
    hem_hw = 0.45 if aline else 0.23 if fitted else 0.38 if loose else 0.3
    hem = (0.28 if "mini" in a else 0.94 if "maxi" in a else 0.48) * L
    pts = [(0.5 + 0.2, 0.0), (0.5 + hip_hw, 0.25)]
    pts += _hem_edge((0.5 + hem_hw, hem), (0.5 - hem_hw, hem), ruffle)
    pts += [(0.5 - hip_hw, 0.25), (0.5 - 0.2, 0.0)]
    hems = [(0.5 - hem_hw, 0.5 + hem_hw, hem)]
    centre = (0.02, hem - 0.04) if "button front" in a else (0.02, min(0.28, hem - 0.05))
    tier = [(0.5 - hem_hw * 0.95, hem - 0.12), (0.5 + hem_hw * 0.95, hem - 0.12)] if ruffle else []
    logo = (0.36, hem - 0.1, 0.06)
    graphic = (0.5, min(0.38, 0.55 * hem), 0.12)
    return pts, hems, centre, logo, graphic, tier


def _legwear(a: frozenset[str], shorts: bool, L: float) -> _LowerShape:
    """Outline and marks of trousers or shorts (two legs, each with its hem)."""
    fitted, loose = "fitted" in a, "loose fit" in a
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
    hems = [(lc - hw / 2, lc + hw / 2, hem), (rc - hw / 2, rc + hw / 2, hem)]
    logo = (lc, hem - 0.1, 0.06)
    graphic = (lc, min(0.55, 0.6 * hem), 0.1)
    return pts, hems, (0.02, 0.3), logo, graphic, []
