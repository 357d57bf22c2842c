"""Drawing one view (photo) of an item, and :func:`render_garment`.

:func:`_render` draws, in this order: the framing, the background, the wearer,
the fabric (base colour, texture pattern, surface effect), the garment onto the
image, faux fur at the hems, the parts (pocket, collar, buttons...), the style
marks (graphic, logo, beads) and a lighting change. Each step takes its random
numbers from the view's generator in turn, so the order of the steps, and of
the draws inside each, fixes the output bytes: keep both when editing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from PIL import Image, ImageDraw

from fashion_attr.demo.catalog import (
    DEMO_ATTRIBUTES,
    DEMO_GARMENTS,
    _hsv,
    _Item,
    _luma,
    _new_item,
)
from fashion_attr.demo.geometry import _FRAME_L, _UPPER, _Geom, _geometry, _star

Box = tuple[int, int, int, int]


def _u8(c: Sequence[float]) -> tuple[int, int, int]:
    """An RGB colour in 0..1 as 8-bit values (clipped)."""
    return tuple(round(min(max(v, 0.0), 1.0) * 255) for v in c)  # type: ignore[return-value]


@dataclass
class _View:
    """Where the frame lies in the image: frame units (u, w) to pixels.

    ``fx, fy`` is the pixel position of the frame origin and ``fw`` the frame
    width in pixels. ``xs, ys`` are the pixel coordinate grids and ``U, Wc``
    the same grids in frame units, for the per-pixel patterns.
    """

    width: int
    height: int
    L: float
    fx: float
    fy: float
    fw: float
    box: Box
    xs: np.ndarray = field(init=False)
    ys: np.ndarray = field(init=False)
    U: np.ndarray = field(init=False)
    Wc: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.ys = np.arange(self.height, dtype=np.float32)[:, None]
        self.xs = np.arange(self.width, dtype=np.float32)[None, :]
        self.U = (self.xs - self.fx) / self.fw
        self.Wc = (self.ys - self.fy) / self.fw

    def px(self, u: float, w: float) -> tuple[float, float]:
        """Pixel position of the frame point (u, w)."""
        return (self.fx + u * self.fw, self.fy + w * self.fw)

    def poly(self, arr: np.ndarray) -> list[tuple[float, float]]:
        """Pixel positions of an array of frame points."""
        return [self.px(float(u), float(w)) for u, w in arr]

    def lw(self, k: float) -> int:
        """Line width in pixels of ``k`` frame widths (at least 1)."""
        return max(1, round(k * self.fw))


@dataclass(frozen=True)
class _Palette:
    """Fixed colours of an item: skin, marks that stand out, and seams."""

    skin: tuple[int, int, int]
    dark: bool
    contrast: tuple[int, int, int]
    seam: tuple[int, int, int]


def _palette(item: _Item) -> _Palette:
    """The colours parts and marks are drawn in (dark marks on a light garment)."""
    dark = _luma(item.base) > 0.5
    return _Palette(
        skin=_u8(item.skin),
        dark=dark,
        contrast=_u8((0.08, 0.08, 0.08) if dark else (0.96, 0.96, 0.94)),
        seam=_u8(tuple(c * 0.55 for c in item.base)),
    )


# --------------------------------------------------------------------------- the view


def _render(
    item: _Item, rng: np.random.Generator, width: int, height: int
) -> tuple[Image.Image, Box]:
    """Draw one view of an item; return the image and its (unclamped) box."""
    geom, view = _place(item, rng, width, height)
    pal = _palette(item)
    img = _background(view, rng)
    _draw_wearer(ImageDraw.Draw(img), item, geom, view, pal)
    mask = _garment_mask(geom, view)
    fabric = _printed_fabric(item, geom, view, rng)
    fabric, alpha_g = _fabric_surface(fabric, mask, item, geom, view, rng)
    out = np.asarray(img, dtype=np.float32) / 255.0
    ag = alpha_g[..., None]
    out = out * (1 - ag) + fabric * ag
    if "faux fur" in item.attrs:
        out = _faux_fur(out, geom, view, rng)
    img = Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if "denim" in item.attrs:
        _draw_topstitching(d, geom, view)
    _draw_parts(d, img, mask, item, geom, view, pal)
    _draw_style_marks(d, item, geom, view, pal)
    return _lighting(img, rng), view.box


def _place(item: _Item, rng: np.random.Generator, width: int, height: int) -> tuple[_Geom, _View]:
    """Frame height, margins, size and position of the box; sometimes past an edge."""
    L = _FRAME_L[item.garment] * float(rng.uniform(0.94, 1.06))
    geom = _geometry(item, L)
    # Extent of everything the box must hold, in frame units.
    pts = np.concatenate([*geom.body, np.array([(0.0, 0.0), (1.0, L)])])
    u0, w0 = pts.min(axis=0)
    u1, w1 = pts.max(axis=0)
    if "hood" in item.attrs and geom.head is not None:
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
    box = (math.floor(bx), math.floor(by), math.ceil(bx + box_w), math.ceil(by + box_h))
    view = _View(width, height, L, bx - bu0 * fw, by - bw0 * fw, fw, box)
    return geom, view


def _background(view: _View, rng: np.random.Generator) -> Image.Image:
    """A plain pale colour, a gentle vertical gradient and sensor-like noise."""
    height, width = view.height, view.width
    bg = np.array(_hsv(rng.random(), rng.uniform(0.03, 0.2), rng.uniform(0.72, 0.96)), np.float32)
    grad = 1.0 + rng.uniform(-0.08, 0.08) * (view.ys / height - 0.5)
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    canvas = bg * grad[..., None] + rng.uniform(0.005, 0.04) * noise
    return Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))


def _draw_wearer(
    d: ImageDraw.ImageDraw, item: _Item, geom: _Geom, view: _View, pal: _Palette
) -> None:
    """The figure: plain top (under lower garments), skin, trousers, shoes and head."""
    L = view.L
    if geom.top is not None:
        d.polygon(view.poly(geom.top), fill=_u8((0.93, 0.93, 0.9)))
    for s in geom.skin:
        d.polygon(view.poly(s), fill=pal.skin)
    if item.garment in _UPPER:
        pants = np.array([(0.22, 0.85 * L), (0.78, 0.85 * L), (0.8, 3 * L), (0.2, 3 * L)])
        d.polygon(view.poly(pants), fill=_u8((0.2, 0.22, 0.28)))
    fw = view.fw
    for cu, cw, r in geom.shoes:
        x, y = view.px(cu, cw)
        d.ellipse([x - r * fw, y - 0.4 * r * fw, x + r * fw, y + 0.4 * r * fw], fill=(30, 25, 25))
    if geom.head is not None:
        hu, hw_, hr = geom.head
        nx0, ny0 = view.px(0.45, hw_)
        nx1, ny1 = view.px(0.55, 0.03)
        d.rectangle([nx0, ny0, nx1, ny1], fill=pal.skin)
        x, y = view.px(hu, hw_)
        head = [x - hr * fw, y - hr * fw, x + hr * fw, y + hr * fw]
        d.ellipse(head, fill=pal.skin)
        d.chord(head, 180, 360, fill=_u8(item.hair))


def _garment_mask(geom: _Geom, view: _View) -> np.ndarray:
    """Coverage of the garment body (and sleeves) in 0..1, one value per pixel."""
    mask_img = Image.new("L", (view.width, view.height), 0)
    md = ImageDraw.Draw(mask_img)
    for b in geom.body:
        md.polygon(view.poly(b), fill=255)
    return np.asarray(mask_img, dtype=np.float32) / 255.0


def _lighting(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Global lighting of the shot: half the views a little brighter or darker."""
    if rng.random() < 0.5:
        gain = float(rng.uniform(0.9, 1.1))
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) * gain, 0, 255).astype(np.uint8))
    return img


# --------------------------------------------------------------------------- texture


def _printed_fabric(item: _Item, geom: _Geom, view: _View, rng: np.random.Generator) -> np.ndarray:
    """The fabric colour per pixel: the base colour, printed with the texture attribute.

    Only the first texture in the order stripe, vertical stripe, polka dot,
    plaid, chevron, colorblock, floral, print is drawn.
    """
    a = item.attrs
    jitter = np.float32(rng.uniform(-0.03, 0.03))
    base = np.array(item.base, np.float32) + jitter
    fabric = np.broadcast_to(base, (view.height, view.width, 3)).copy()
    phase = float(rng.random())
    ink = _pattern_ink(a, item.pattern_k, view, phase)
    if ink is not None:
        return _blend(fabric, ink, item.ink)
    if "colorblock" in a:
        return _blend(fabric, _colorblock_ink(item, geom, view), item.ink2)
    if "floral" in a or "print" in a:
        layer = _motif_layer(item, geom, view, phase, rng)
        la = np.asarray(layer, dtype=np.float32) / 255.0
        alpha = la[..., 3:4]
        return cast(np.ndarray, fabric * (1 - alpha) + la[..., :3] * alpha)
    return fabric


def _blend(fabric: np.ndarray, ink: np.ndarray, colour: Sequence[float]) -> np.ndarray:
    """Print ``colour`` over the fabric at coverage ``ink`` (0..1)."""
    return cast(
        np.ndarray, fabric * (1 - ink[..., None]) + np.array(colour, np.float32) * ink[..., None]
    )


def _pattern_ink(a: frozenset[str], k: float, view: _View, phase: float) -> np.ndarray | None:
    """Coverage of a repeating pattern with ``k`` repeats per frame width, or None."""
    U, Wc = view.U, view.Wc
    if "stripe" in a:
        return ((Wc * k + phase) % 1.0 < 0.45).astype(np.float32)
    if "vertical stripe" in a:
        return ((U * (k + 1) + phase) % 1.0 < 0.3).astype(np.float32)
    if "polka dot" in a:
        kk = k + 0.5
        row = np.floor(Wc * kk)
        cu = (U * kk + 0.5 * (row % 2) + phase) % 1.0 - 0.5
        cw = (Wc * kk) % 1.0 - 0.5
        return (cu * cu + cw * cw < 0.22**2).astype(np.float32)
    if "plaid" in a:
        lu = (U * k + phase) % 1.0 < 0.3
        lv = (Wc * k + phase) % 1.0 < 0.3
        return 0.55 * (lu | lv).astype(np.float32) + 0.45 * (lu & lv).astype(np.float32)
    if "chevron" in a:
        return ((Wc * k + 1.2 * np.abs((U * k) % 1.0 - 0.5) + phase) % 1.0 < 0.5).astype(np.float32)
    return None


def _colorblock_ink(item: _Item, geom: _Geom, view: _View) -> np.ndarray:
    """Coverage of the second colour: the right half, or below the middle of the hem."""
    shape = (view.height, view.width)
    if item.block_vertical:
        return np.broadcast_to(view.U > 0.5, shape).astype(np.float32)
    return np.broadcast_to(view.Wc > 0.5 * (geom.hems[0][2]), shape).astype(np.float32)


def _motif_layer(
    item: _Item, geom: _Geom, view: _View, phase: float, rng: np.random.Generator
) -> Image.Image:
    """An RGBA layer of 9-14 flowers (floral) or print marks, over the garment body."""
    layer = Image.new("RGBA", (view.width, view.height), (0, 0, 0, 0))
    ld = ImageDraw.Draw(layer)
    n = int(rng.integers(9, 15))
    # Motifs centred over the garment body (not the whole frame).
    body_pts = np.concatenate(geom.body)
    lo, hi = body_pts.min(axis=0), body_pts.max(axis=0)
    cs = lo + (hi - lo) * rng.uniform(-0.05, 1.05, size=(n, 2))
    centres = [view.px(float(cs[i, 0]), float(cs[i, 1])) for i in range(n)]
    if "floral" in item.attrs:
        _draw_flowers(ld, centres, view, phase, rng)
    else:
        _draw_print_marks(ld, centres, item, view, rng)
    return layer


def _draw_flowers(
    ld: ImageDraw.ImageDraw,
    centres: list[tuple[float, float]],
    view: _View,
    phase: float,
    rng: np.random.Generator,
) -> None:
    """A five-petal flower with a leaf at each centre, petals in a random colour."""
    petals = [(0.95, 0.55, 0.7), (0.98, 0.95, 0.9), (0.95, 0.85, 0.3), (0.7, 0.5, 0.9)]
    r = 0.045 * view.fw
    for x, y in centres:
        col = (*_u8(petals[int(rng.integers(len(petals)))]), 255)
        lx, ly = x + 2.2 * r, y + 1.5 * r
        ld.ellipse([lx - r, ly - 0.6 * r, lx + r, ly + 0.6 * r], fill=(60, 140, 60, 255))
        for p in range(5):
            ang = 2 * math.pi * p / 5 + phase
            ex, ey = x + 1.1 * r * math.cos(ang), y + 1.1 * r * math.sin(ang)
            ld.ellipse([ex - r, ey - r, ex + r, ey + r], fill=col)
        ld.ellipse([x - 0.6 * r, y - 0.6 * r, x + 0.6 * r, y + 0.6 * r], fill=(240, 200, 40, 255))


def _draw_print_marks(
    ld: ImageDraw.ImageDraw,
    centres: list[tuple[float, float]],
    item: _Item,
    view: _View,
    rng: np.random.Generator,
) -> None:
    """Abstract print: strokes, triangles and arcs in turn, in the item's three colours."""
    cols = [(*_u8(c), 255) for c in (item.ink, item.ink2, item.accent)]
    for i, (x, y) in enumerate(centres):
        s = float(rng.uniform(0.06, 0.14)) * view.fw
        col = cols[i % 3]
        kind = i % 3
        if kind == 0:
            ang = float(rng.uniform(0, math.pi))
            dx, dy = s * math.cos(ang), s * math.sin(ang)
            ld.line([x - dx, y - dy, x + dx, y + dy], fill=col, width=view.lw(0.035))
        elif kind == 1:
            ld.polygon([(x, y - s), (x + s, y + s * 0.7), (x - s, y + s * 0.5)], fill=col)
        else:
            ld.arc([x - s, y - s, x + s, y + s], 0, 220, fill=col, width=view.lw(0.03))


# --------------------------------------------------------------------------- fabric


def _fabric_surface(
    fabric: np.ndarray,
    mask: np.ndarray,
    item: _Item,
    geom: _Geom,
    view: _View,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Surface of the printed fabric, its weave noise and shading; and its opacity.

    Only the first fabric in the order knit, denim, leather, lace, sheer, sequin
    is drawn. Returns the fabric colour and its per-pixel opacity (the garment
    mask, with holes for lace and see-through for sheer).
    """
    a = item.attrs
    height, width = view.height, view.width
    alpha_g = mask.copy()
    if "knit" in a:
        fabric = _knit(fabric, geom, view, rng)
    elif "denim" in a:
        twill = np.where(((view.xs + view.ys) / max(2.0, 0.03 * view.fw)) % 2.0 < 1.0, 1.12, 0.88)
        fabric = fabric * twill.astype(np.float32)[..., None]
        fabric += 0.05 * rng.standard_normal((height, width, 1), dtype=np.float32)
    elif "leather" in a:
        c = float(rng.uniform(0.2, 0.5))
        spec = np.exp(-(((view.U - c - 0.25 * view.Wc / view.L) / 0.08) ** 2)).astype(np.float32)
        fabric = fabric + 0.45 * spec[..., None]
    elif "lace" in a:
        alpha_g = alpha_g * (1 - 0.85 * _lace_holes(view))
    elif "sheer" in a:
        fabric = 0.7 * fabric + 0.3
        alpha_g = alpha_g * 0.45
    elif "sequin" in a:
        fabric = _sequins(fabric, view, rng)
    if "leather" not in a:
        fabric += 0.015 * rng.standard_normal((height, width, 1), dtype=np.float32)
    # Soft shading across the body.
    fabric *= (0.86 + 0.14 * np.cos(np.pi * np.clip(view.U - 0.5, -0.5, 0.5)))[..., None]
    return fabric, alpha_g


def _knit(fabric: np.ndarray, geom: _Geom, view: _View, rng: np.random.Generator) -> np.ndarray:
    """Vertical ribs, raised (lighter) and recessed (darker), and a ribbed band at the hem."""
    rib = (view.U * 12.0) % 1.0 < 0.5
    gain = np.where(rib, 1.1, 0.85).astype(np.float32)
    lift = np.where(rib, 0.16, -0.03).astype(np.float32)
    band = np.zeros((view.height, view.width), np.float32)
    Wc = view.Wc
    for _, _, hw in geom.hems:
        band = np.maximum(band, ((Wc > hw - 0.1) & (Wc < hw + 0.01)).astype(np.float32))
    fabric = (fabric * gain[..., None] + lift[..., None]) * (1 - 0.15 * band[..., None])
    fabric += 0.035 * rng.standard_normal((view.height, view.width, 1), dtype=np.float32)
    return fabric


def _lace_holes(view: _View) -> np.ndarray:
    """Where lace is open: a staggered grid of round holes (1 = hole)."""
    kk = 10.0
    row = np.floor(view.Wc * kk)
    cu = (view.U * kk + 0.5 * (row % 2)) % 1.0 - 0.5
    cw = (view.Wc * kk) % 1.0 - 0.5
    return (cu * cu + cw * cw < 0.3**2).astype(np.float32)


def _sequins(fabric: np.ndarray, view: _View, rng: np.random.Generator) -> np.ndarray:
    """Paler fabric with random bright square sparkles on a grid."""
    height, width = view.height, view.width
    cell = max(1, round(0.025 * view.fw))
    gh, gw = -(-height // cell), -(-width // cell)
    sp = (rng.random((gh, gw)) < 0.12).astype(np.float32)
    sp = np.repeat(np.repeat(sp, cell, axis=0), cell, axis=1)[:height, :width]
    fabric = fabric * 0.85 + 0.1
    return fabric * (1 - sp[..., None]) + np.float32(0.98) * sp[..., None]


def _faux_fur(out: np.ndarray, geom: _Geom, view: _View, rng: np.random.Generator) -> np.ndarray:
    """A rough cream fur trim along every hem, over whatever is drawn there."""
    fur = np.zeros((view.height, view.width), bool)
    rough = rng.random((view.height, view.width))
    U, Wc = view.U, view.Wc
    for h0, h1, hw in geom.hems:
        dist = np.abs(Wc - hw) / 0.07
        fur |= (dist < 0.5 + 0.8 * rough) & (h0 - 0.03 < U) & (h1 + 0.03 > U)
    tone = np.array((0.93, 0.88, 0.78), np.float32) + 0.1 * (rough[..., None] - 0.5)
    return np.where(fur[..., None], tone, out)


def _draw_topstitching(d: ImageDraw.ImageDraw, geom: _Geom, view: _View) -> None:
    """Gold topstitching above every hem, the classic denim cue."""
    for h0, h1, hw in geom.hems:
        for off in (0.04, 0.07):
            d.line(
                [view.px(h0 + 0.02, hw - off), view.px(h1 - 0.02, hw - off)],
                fill=(215, 160, 60),
                width=view.lw(0.012),
            )


# --------------------------------------------------------------------------- parts


def _draw_parts(
    d: ImageDraw.ImageDraw,
    img: Image.Image,
    mask: np.ndarray,
    item: _Item,
    geom: _Geom,
    view: _View,
    pal: _Palette,
) -> None:
    """Open front, hood, collar, pockets, buttons, zip, belt and ruffle tier, in that order."""
    a = item.attrs
    if geom.open_front:
        _draw_open_front(d, a, geom, view, pal)
    if "hood" in a and geom.head is not None:
        _draw_hood(d, item, geom.head, view, pal)
    if "collar" in a and geom.neck is not None:
        _draw_collar(d, view, pal)
    if "pocket" in a:
        _draw_pockets(d, geom, view, pal)
    if "button front" in a:
        _draw_buttons(d, geom, view, pal)
    if "zip" in a:
        _draw_zip(d, geom, view)
    if "belted" in a:
        _draw_belt(d, img, mask, geom, view)
    if geom.tier:
        _draw_ruffle_tier(d, geom, view, pal)


def _draw_open_front(
    d: ImageDraw.ImageDraw, a: frozenset[str], geom: _Geom, view: _View, pal: _Palette
) -> None:
    """An open jacket: the shirt showing down the centre, and the lapel edges."""
    c0, c1 = geom.centre
    s0 = 0.3 if "v-neck" in a else c0 - 0.05  # the shirt shows below a v-neck
    d.polygon(
        view.poly(np.array([(0.43, s0), (0.57, s0), (0.57, c1), (0.43, c1)])),
        fill=_u8((0.95, 0.95, 0.93)),
    )
    d.line([view.px(0.41, 0.0), view.px(0.45, 0.3)], fill=pal.seam, width=view.lw(0.03))
    d.line([view.px(0.59, 0.0), view.px(0.55, 0.3)], fill=pal.seam, width=view.lw(0.03))


def _draw_hood(
    d: ImageDraw.ImageDraw,
    item: _Item,
    head: tuple[float, float, float],
    view: _View,
    pal: _Palette,
) -> None:
    """A hood in a darker shade of the garment around the face."""
    hu, hw_, hr = head
    x, y = view.px(hu, hw_)
    r = 1.5 * hr * view.fw
    hood = _u8(tuple(c * 0.85 for c in item.base))
    d.polygon(view.poly(np.array([(0.32, 0.03), (0.68, 0.03), (0.7, hw_), (0.3, hw_)])), fill=hood)
    d.ellipse([x - r, y - 1.1 * r, x + r, y + 0.9 * r], fill=hood)
    fr = 0.95 * hr * view.fw
    d.ellipse([x - fr, y - fr, x + fr, y + fr], fill=pal.skin)


def _draw_collar(d: ImageDraw.ImageDraw, view: _View, pal: _Palette) -> None:
    """Two pointed collar flaps at the neck."""
    for side in (-1, 1):
        flap = [(0.5 + side * 0.13, -0.02), (0.5 + side * 0.01, 0.07), (0.5 + side * 0.15, 0.17)]
        d.polygon(view.poly(np.array(flap)), fill=pal.contrast)


def _draw_pockets(d: ImageDraw.ImageDraw, geom: _Geom, view: _View, pal: _Palette) -> None:
    """Outlined patch pockets with a flap line."""
    for p0, q0, p1, q1 in geom.pockets:
        x0, y0 = view.px(p0, q0)
        x1, y1 = view.px(p1, q1)
        d.rectangle([x0, y0, x1, y1], outline=pal.contrast, width=view.lw(0.03))
        flap = y0 + 0.3 * (y1 - y0)
        d.line([x0, flap, x1, flap], fill=pal.contrast, width=view.lw(0.02))


def _draw_buttons(d: ImageDraw.ImageDraw, geom: _Geom, view: _View, pal: _Palette) -> None:
    """A placket seam down the centre with five buttons."""
    c0, c1 = geom.centre
    d.line([view.px(0.5, c0), view.px(0.5, c1)], fill=pal.seam, width=view.lw(0.02))
    r = max(1.2, 0.032 * view.fw)
    for t in np.linspace(c0 + 0.05, c1 - 0.05, 5):
        x, y = view.px(0.5, float(t))
        d.ellipse([x - r, y - r, x + r, y + r], fill=pal.contrast)


def _draw_zip(d: ImageDraw.ImageDraw, geom: _Geom, view: _View) -> None:
    """A metal zip down the centre with its pull at the top."""
    c0, c1 = geom.centre
    d.line([view.px(0.5, c0), view.px(0.5, c1)], fill=(190, 190, 200), width=view.lw(0.03))
    x, y = view.px(0.5, c0 + 0.02)
    s = max(1.5, 0.035 * view.fw)
    d.rectangle([x - s, y, x + s, y + 2.2 * s], fill=(210, 210, 220))


def _draw_belt(
    d: ImageDraw.ImageDraw, img: Image.Image, mask: np.ndarray, geom: _Geom, view: _View
) -> None:
    """A brown belt across the waist, inside the garment, with a gold buckle."""
    y0 = geom.waist - 0.035
    x0, ya = view.px(0.0, y0)
    x1, yb = view.px(1.0, y0 + 0.075)
    band = Image.new("L", (view.width, view.height), 0)
    ImageDraw.Draw(band).rectangle([x0, ya, x1, yb], fill=255)
    belt_mask = Image.fromarray(((np.asarray(band) > 0) & (mask > 0.5)).astype(np.uint8) * 255)
    img.paste((45, 30, 20), mask=belt_mask)
    x, y = view.px(0.5, y0 + 0.0375)
    s = 0.055 * view.fw
    d.rectangle([x - s, y - s, x + s, y + s], outline=(230, 190, 60), width=view.lw(0.02))


def _draw_ruffle_tier(d: ImageDraw.ImageDraw, geom: _Geom, view: _View, pal: _Palette) -> None:
    """A wavy seam above a ruffle hem, where the ruffle is sewn on."""
    (ua, wa), (ub, _) = geom.tier
    n = 12
    wave = [view.px(ua + (ub - ua) * t / n, wa + (0.03 if t % 2 else 0.0)) for t in range(n + 1)]
    d.line(wave, fill=pal.seam, width=view.lw(0.02))


# --------------------------------------------------------------------------- style marks


def _draw_style_marks(
    d: ImageDraw.ImageDraw, item: _Item, geom: _Geom, view: _View, pal: _Palette
) -> None:
    """Graphic, logo and bead embellishment, in that order."""
    a = item.attrs
    if "graphic" in a:
        _draw_graphic(d, item, geom, view, pal)
    if "logo" in a:
        lu, lw_, lr = geom.logo
        x, y = view.px(lu, lw_)
        r = max(1.5, lr * view.fw)
        d.rectangle([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=pal.contrast)
    if "embellished" in a:
        _draw_beads(d, geom, view)


def _draw_graphic(
    d: ImageDraw.ImageDraw, item: _Item, geom: _Geom, view: _View, pal: _Palette
) -> None:
    """A large star, ring, triangle or bolt in the accent colour (darker on light garments)."""
    gu, gw, gr = geom.graphic
    x, y = view.px(gu, gw)
    r = gr * view.fw
    col = _u8(item.accent) if not pal.dark else _u8(tuple(c * 0.6 for c in item.accent))
    if item.graphic_shape == 0:
        d.polygon(_star(x, y, r), fill=col)
    elif item.graphic_shape == 1:
        d.ellipse([x - r, y - r, x + r, y + r], fill=col)
        d.ellipse([x - 0.5 * r, y - 0.5 * r, x + 0.5 * r, y + 0.5 * r], fill=pal.contrast)
    elif item.graphic_shape == 2:
        d.polygon([(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)], fill=col)
    else:
        bolt = [(-0.2, -1), (0.5, -1), (0, 0), (0.4, 0), (-0.4, 1), (-0.1, 0.1), (-0.5, 0.1)]
        d.polygon([(x + p * r, y + q * r) for p, q in bolt], fill=col)


def _draw_beads(d: ImageDraw.ImageDraw, geom: _Geom, view: _View) -> None:
    """Gold beads around the neckline and along every hem."""
    beads: list[tuple[float, float]] = []
    if geom.neck is not None:
        beads += [
            view.px(0.5 + 0.13 * math.cos(t), 0.01 + 0.09 * math.sin(t))
            for t in np.linspace(0.2, math.pi - 0.2, 7)
        ]
    for h0, h1, hw in geom.hems:
        beads += [view.px(float(u), hw - 0.04) for u in np.linspace(h0 + 0.03, h1 - 0.03, 5)]
    r = max(1.2, 0.028 * view.fw)
    for x, y in beads:
        d.ellipse([x - r, y - r, x + r, y + r], fill=(245, 205, 70))


# --------------------------------------------------------------------------- public


def render_garment(
    garment: str,
    attributes: Sequence[str] = (),
    seed: int = 0,
    width: int = 160,
    height: int = 160,
) -> tuple[Image.Image, Box]:
    """Draw one image of a garment with the given attributes, as the generator does.

    The same ``seed`` gives the same colours, framing and background, so two
    calls that differ only in one attribute show what that attribute changes.
    Attributes are drawn as given: eligibility and exclusions are not applied.

    Args:
        garment: One of :data:`~fashion_attr.demo.DEMO_GARMENTS`.
        attributes: Names from :data:`~fashion_attr.demo.DEMO_ATTRIBUTES`.
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
