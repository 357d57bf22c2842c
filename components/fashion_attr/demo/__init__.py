"""Procedural demo data in the exact DeepFashion-C layout.

``python -m fashion_attr.demo --out DIR --images N --seed S`` (or
:func:`generate_demo_dataset`) writes::

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

:func:`write_scale_annotations` writes the six annotation files at the real
dataset's size (289,222 images x 1,000 attributes, no images) for memory and
speed checks of the readers.

Modules: :mod:`~fashion_attr.demo.catalog` (label tables, item sampling),
:mod:`~fashion_attr.demo.geometry` (garment and figure shapes),
:mod:`~fashion_attr.demo.render` (drawing one view, :func:`render_garment`),
:mod:`~fashion_attr.demo.dataset` (:func:`generate_demo_dataset`),
:mod:`~fashion_attr.demo.scale` (:func:`write_scale_annotations`) and
:mod:`~fashion_attr.demo.cli` (the command line).
"""

from fashion_attr.demo.catalog import (
    DEMO_ATTRIBUTES,
    DEMO_CATEGORIES,
    DEMO_GARMENT_WEIGHTS,
    DEMO_GARMENTS,
    DEMO_POPULARITY,
    DEMO_SPLIT_FRACTIONS,
    DEMO_TAIL_ALPHA,
    DEMO_TOP_RATE,
)
from fashion_attr.demo.dataset import generate_demo_dataset
from fashion_attr.demo.render import render_garment
from fashion_attr.demo.scale import write_scale_annotations

__all__ = [
    "DEMO_ATTRIBUTES",
    "DEMO_CATEGORIES",
    "DEMO_GARMENTS",
    "DEMO_GARMENT_WEIGHTS",
    "DEMO_POPULARITY",
    "DEMO_SPLIT_FRACTIONS",
    "DEMO_TAIL_ALPHA",
    "DEMO_TOP_RATE",
    "generate_demo_dataset",
    "render_garment",
    "write_scale_annotations",
]
