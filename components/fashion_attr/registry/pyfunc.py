"""The served model: an MLflow ``pyfunc`` around the exported classifier.

Input: a pandas DataFrame with a column ``image`` whose values are base64-encoded
JPEG or PNG files (a ``data:image/...;base64,`` prefix is accepted; raw ``bytes``
values are accepted too when the model is called from Python), and an optional
column ``bbox``: the garment's box ``[x1, y1, x2, y2]`` in the image's pixels (or
null for the whole image). The model was trained on garment crops (ingest crops
every image to its box), so send the box when you have it: the image is then
cropped exactly as in training. Over HTTP this is
``{"dataframe_split": {"columns": ["image", "bbox"], "data": [[<b64>, [x1, y1, x2, y2]], ...]}}``.

Output: one dict per input row, in order::

    {
      "category": "Dress", "category_prob": 0.71,
      "attributes": {"texture": [{"name": "floral", "prob": 0.83}], "fabric": [], ...},
      "top_k": {"texture": [{"name": "floral", "prob": 0.83}, ...k], ...},
    }

``attributes`` lists, per attribute group (1 texture, 2 fabric, 3 shape, 4 part,
5 style), the attributes whose sigmoid probability is at least the threshold,
highest first; ``top_k`` lists the k most probable attributes of each group (the
ranking that the paper's top-k recall scores, docs/method.md section 6). Threshold and
k come from ``RegisterConfig.attribute_threshold`` / ``top_k`` (stored in the
model's ``model_config``) and can be overridden per request with the params
``threshold`` and ``top_k``. A model without a category head answers
``category = None``.

Preprocessing is the one the exported model says it was trained with
(``preprocessing`` in ``model.pt``): decode with PIL, convert to RGB (``L`` for a
one-channel model), resize the whole image to ``image_size`` x ``image_size``
bilinearly (after cropping to ``bbox`` when given, as ``preprocess`` crops every
training image to its box), scale to [0, 1] and normalise per channel,
``(x - mean) / std``. Images are decoded with JPEG and PNG decoders only, and
refused above ``MAX_IMAGE_PIXELS`` (the decompression-bomb guard of ingest).

The model is logged as MLflow "models from code" (a generated three-line entry
file that imports this module) plus the ``fashion_attr`` package as
``code_paths``: MLflow refuses to unpickle cloudpickled models by default, and
the weights themselves load with ``torch.load(weights_only=True)``, so loading a
registered model never runs pickled code. The serving environment needs only
the pinned pip requirements (:func:`pip_requirements`).
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import math
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types.schema import (
    Array,
    ColSpec,
    Map,
    Object,
    ParamSchema,
    ParamSpec,
    Property,
    Schema,
)
from PIL import Image, UnidentifiedImageError

from fashion_attr.classifier.export import MODEL_FORMAT, check_model_blob, model_from_blob
from fashion_attr.data.annotations import ATTRIBUTE_GROUPS

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MODEL_ARTIFACT",
    "MODEL_FORMAT",
    "FashionAttrPyfunc",
    "ImagePredictor",
    "log_pyfunc_model",
    "model_signature",
    "pip_requirements",
]

MODEL_ARTIFACT = "model"
# Same guard as fashion_attr.data.ingest.MAX_IMAGE_PIXELS: refuse decompression bombs.
MAX_IMAGE_PIXELS = 50_000_000
_BATCH = 64
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.I)

# The models-from-code entry file logged with every model (MLflow executes it at load time).
_ENTRY_CODE = '''"""MLflow models-from-code entry of the fashion_attr classifier (generated)."""

import mlflow

from fashion_attr.registry.pyfunc import FashionAttrPyfunc

mlflow.models.set_model(FashionAttrPyfunc())
'''

# Pinned so that the serving image resolves exactly the stack the model was tested with.
# torch is pinned to the build installed here (the PyPI wheel: CUDA on Linux x86_64, which
# also runs on CPU-only nodes); the local version suffix (e.g. "+cpu") is dropped because
# pip cannot resolve it from PyPI.
_PINNED = ("torch", "torchvision", "pillow", "numpy", "pandas", "mlflow", "pyyaml", "pydantic")


def group_name(group: int) -> str:
    """Readable name of attribute group ``group`` (``"group<g>"`` outside 1..5)."""
    return ATTRIBUTE_GROUPS.get(int(group), f"group{int(group)}")


class ImagePredictor:
    """The exported classifier plus its preprocessing; MLflow-free, used by the pyfunc.

    Args:
        blob: the dict saved by ``train_classifier`` (``model.pt``), weights included.
        threshold: attribute probability at or above which an attribute is reported.
        top_k: attributes listed per group in ``top_k``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        source: where the blob came from (for error messages).

    Raises:
        ValueError: if the blob is not a classifier export of this project or is
            missing a field.
    """

    def __init__(
        self,
        blob: Mapping[str, Any],
        *,
        threshold: float = 0.5,
        top_k: int = 3,
        device: str = "auto",
        source: str = "model.pt",
    ) -> None:
        check_model_blob(blob, source)
        _check_threshold_k(threshold, top_k, source="model config")
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model_from_blob(blob).to(self.device)
        pre = blob["preprocessing"]
        self.image_size = int(pre["image_size"])
        self.channels = int(pre["channels"])
        self.mean = torch.tensor(pre["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(pre["std"], dtype=torch.float32).view(1, -1, 1, 1)
        if self.mean.shape[1] != self.channels or self.std.shape[1] != self.channels:
            raise ValueError(
                f"{source}: preprocessing.mean/std have {self.mean.shape[1]}/"
                f"{self.std.shape[1]} entries for {self.channels} channels. Fix: re-export"
            )
        self.category_names = [str(n) for n in blob["category_names"]]
        self.attribute_names = [str(n) for n in blob["attribute_names"]]
        groups = [int(g) for g in blob["attribute_groups"]]
        if len(groups) != len(self.attribute_names):
            raise ValueError(
                f"{source}: {len(groups)} attribute_groups for {len(self.attribute_names)} "
                "attribute_names. Fix: re-export the model"
            )
        # group name -> attribute indices, groups in numeric order (texture first).
        self.groups: dict[str, list[int]] = {}
        for g in sorted(set(groups)):
            self.groups[group_name(g)] = [i for i, gi in enumerate(groups) if gi == g]

    # -- input ---------------------------------------------------------------------------
    def decode(self, value: Any, row: int, bbox: Any = None) -> torch.Tensor:
        """Decode one image into ``uint8`` ``[C, S, S]`` (cropped, resized, not normalised).

        Args:
            value: base64 text (optionally a ``data:`` URL) or raw bytes of a JPEG/PNG.
            row: the row index, named in errors.
            bbox: the garment's box ``(x1, y1, x2, y2)`` in pixels (a sequence, a
                ``"x1,y1,x2,y2"`` string, or None for the whole image): cropped first and
                clamped to the image, as ingest crops the training images.

        Raises:
            MlflowException: (``INVALID_PARAMETER_VALUE``, HTTP 400 when served) naming
                the row and the fix.
        """
        data = _image_bytes(value, row)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img: Image.Image = Image.open(io.BytesIO(data), formats=("JPEG", "PNG"))
                w, h = img.size  # header only: check before decoding the pixels
                if w * h > MAX_IMAGE_PIXELS:
                    raise _bad(
                        row, f"{w}x{h} pixels exceed the limit of {MAX_IMAGE_PIXELS}", "downscale"
                    )
                img = img.convert("L" if self.channels == 1 else "RGB")  # full decode
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bad(row, f"decompression bomb guard: {exc}", "send a smaller image") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _bad(
                row, f"not a decodable JPEG or PNG image ({exc})", "send a JPEG or PNG file"
            ) from None
        box = _box(bbox, row)
        if box is not None:
            x1, y1, x2, y2 = box
            cx1, cx2 = min(max(x1, 0), img.width), min(max(x2, 0), img.width)
            cy1, cy2 = min(max(y1, 0), img.height), min(max(y2, 0), img.height)
            if cx2 <= cx1 or cy2 <= cy1:
                raise _bad(
                    row,
                    f"bbox {list(box)} does not overlap the {img.width}x{img.height} image",
                    "send the garment's box in the image's pixels as [x1, y1, x2, y2]",
                )
            img = img.crop((cx1, cy1, cx2, cy2))
        img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.shape[2] != self.channels:  # only 1 (L) and 3 (RGB) channels are decoded
            raise _bad(
                row,
                f"the model expects {self.channels} channels, the image has {arr.shape[2]}",
                "send an RGB image (or grey for a one-channel model)",
            )
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """``uint8`` ``[B, C, S, S]`` -> ``float32`` on the model's device, ``(x/255 - mean)/std``.

        The same per-channel normalisation as training's ``normalize_on_device``.
        """
        x = images_uint8.to(self.device).float()
        return (x / 255.0 - self.mean.to(self.device)) / self.std.to(self.device)

    # -- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: Sequence[Any],
        threshold: float | None = None,
        top_k: int | None = None,
        boxes: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Classify images (base64 text or bytes); one answer dict per image, in order.

        Args:
            images: the image values.
            threshold: override of the attribute threshold.
            top_k: override of k.
            boxes: per image, the garment's box or None (see :meth:`decode`).

        Returns:
            A list of ``{"category", "category_prob", "attributes", "top_k"}`` dicts.
        """
        thr = self.threshold if threshold is None else float(threshold)
        k = self.top_k if top_k is None else int(top_k)
        _check_threshold_k(thr, k, source="request params")
        if boxes is not None and len(boxes) != len(images):
            raise _bad(0, f"{len(boxes)} boxes for {len(images)} images", "send one per image")
        boxes = boxes if boxes is not None else [None] * len(images)
        # Decode everything first: a bad row fails the request before any compute.
        decoded = [self.decode(v, i, b) for i, (v, b) in enumerate(zip(images, boxes, strict=True))]
        out: list[dict[str, Any]] = []
        for start in range(0, len(decoded), _BATCH):
            x = self.normalize(torch.stack(decoded[start : start + _BATCH]))
            attr_logits, cat_logits = self.model(x)
            attr_p = torch.sigmoid(attr_logits.float()).cpu().numpy()
            cat_p = torch.softmax(cat_logits.float(), dim=1).cpu().numpy()
            for i in range(x.shape[0]):
                out.append(self._answer(attr_p[i], cat_p[i], thr, k))
        return out

    def _answer(
        self, attr_p: np.ndarray, cat_p: np.ndarray, threshold: float, k: int
    ) -> dict[str, Any]:
        if cat_p.size:
            c = int(np.argmax(cat_p))
            category, category_prob = self.category_names[c], float(cat_p[c])
        else:
            category, category_prob = None, None
        attributes: dict[str, list[dict[str, Any]]] = {}
        top: dict[str, list[dict[str, Any]]] = {}
        for name, idx in self.groups.items():
            # Stable sort on -p: ties keep the attribute order of the dataset.
            ranked = sorted(idx, key=lambda j: -float(attr_p[j]))
            items: list[dict[str, Any]] = [
                {"name": self.attribute_names[j], "prob": float(attr_p[j])} for j in ranked
            ]
            attributes[name] = [it for it in items if it["prob"] >= threshold]
            top[name] = items[:k]
        return {
            "category": category,
            "category_prob": category_prob,
            "attributes": attributes,
            "top_k": top,
        }


def _box(value: Any, row: int) -> tuple[int, int, int, int] | None:
    """A box from a request cell: None/NaN/empty (whole image), 4 numbers, or "x1,y1,x2,y2"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        value = value.replace(",", " ").split()
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise _bad(row, f"bbox {value!r} is not four numbers", "send [x1, y1, x2, y2] in pixels")
    x1, y1, x2, y2 = (round(v) for v in numbers)
    return x1, y1, x2, y2


def _image_bytes(value: Any, row: int) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        text = _DATA_URL.sub("", value.strip())
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(
                row, f"the value is not valid base64 ({exc})", "base64-encode the file's bytes"
            ) from None
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        raise _bad(row, "the value is empty", "send one base64-encoded image per row")
    else:
        raise _bad(
            row,
            f"expected base64 text or bytes, got {type(value).__name__}",
            "send one base64-encoded image per row",
        )
    if not data:
        raise _bad(row, "the image is empty (0 bytes)", "send the image file's bytes")
    return data


def _bad(row: int, problem: str, fix: str) -> MlflowException:
    return cast(
        MlflowException,
        MlflowException.invalid_parameter_value(
            f"input column 'image', row {row}: {problem}. Fix: {fix}"
        ),
    )


def _check_threshold_k(threshold: float, top_k: int, source: str) -> None:
    if not (isinstance(threshold, int | float) and 0.0 < float(threshold) < 1.0):
        raise MlflowException.invalid_parameter_value(
            f"{source}: threshold={threshold!r} must lie strictly between 0 and 1"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or int(top_k) < 1:
        raise MlflowException.invalid_parameter_value(
            f"{source}: top_k={top_k!r} must be an integer >= 1"
        )


class FashionAttrPyfunc(PythonModel):
    """MLflow ``pyfunc`` serving the exported classifier (see the module docstring)."""

    def __init__(self) -> None:
        self._predictor: ImagePredictor | None = None

    def load_context(self, context: PythonModelContext) -> None:
        """Load ``model.pt`` (``weights_only``) onto CUDA when available, else CPU."""
        from fashion_attr.checkpoint import load_artifact

        path = context.artifacts[MODEL_ARTIFACT]
        config = dict(context.model_config or {})
        self._predictor = ImagePredictor(
            load_artifact(path, map_location="cpu"),
            threshold=float(config.get("attribute_threshold", 0.5)),
            top_k=int(config.get("top_k", 3)),
            device=str(config.get("device", "auto")),
            source=path,
        )

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Classify the images in column ``image``; one answer dict per row.

        Raises:
            MlflowException: a missing ``image`` column or a bad image (names the row).
        """
        if self._predictor is None:
            raise MlflowException("FashionAttrPyfunc.predict called before load_context")
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                raise MlflowException.invalid_parameter_value(
                    f"input has columns {list(model_input.columns)}; expected a column 'image' "
                    "of base64-encoded JPEG/PNG images. Fix: send "
                    '{"dataframe_split": {"columns": ["image"], "data": [[<base64>], ...]}}'
                )
            values = model_input["image"].tolist()
            boxes = model_input["bbox"].tolist() if "bbox" in model_input.columns else None
        else:
            values, boxes = list(model_input), None
        params = params or {}
        return self._predictor.predict(
            values, threshold=params.get("threshold"), top_k=params.get("top_k"), boxes=boxes
        )


def model_signature(threshold: float, top_k: int) -> ModelSignature:
    """Signature: columns ``image`` (string) and optional ``bbox``, the answer, threshold/top_k."""
    item = Object([Property("name", "string"), Property("prob", "double")])
    outputs = Schema(
        [
            ColSpec("string", "category", required=False),
            ColSpec("double", "category_prob", required=False),
            ColSpec(Map(Array(item)), "attributes"),
            ColSpec(Map(Array(item)), "top_k"),
        ]
    )
    params = ParamSchema(
        [ParamSpec("threshold", "double", float(threshold)), ParamSpec("top_k", "long", int(top_k))]
    )
    inputs = Schema([ColSpec("string", "image"), ColSpec(Array("double"), "bbox", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pip_requirements() -> list[str]:
    """Pinned requirements of the serving environment, read from the installed packages."""
    reqs = []
    for name in _PINNED:
        version = importlib.metadata.version(name).split("+", 1)[0]
        reqs.append(f"{name}=={version}")
    return reqs


def _example_image() -> str:
    """A 16x16 PNG (base64) used as the logged input example."""
    img = Image.new("RGB", (16, 16), (200, 30, 60))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def log_pyfunc_model(
    model_pt_local_path: str | Path,
    artifact_path: str,
    *,
    threshold: float,
    top_k: int,
    registered_model_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the exported classifier as a ``pyfunc`` model to the active MLflow run.

    Args:
        model_pt_local_path: local ``model.pt`` from ``train_classifier``.
        artifact_path: the model's name inside the run (e.g. ``"model"``).
        threshold: attribute probability threshold (``RegisterConfig.attribute_threshold``).
        top_k: attributes per group in ``top_k`` (``RegisterConfig.top_k``).
        registered_model_name: also register a new version under this name.
        metadata: extra entries for the MLmodel metadata (dataset version, ...).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``, ``registered_model_version``, ...).

    Raises:
        ValueError: the file is not a classifier export of this project.
    """
    import fashion_attr
    from fashion_attr.checkpoint import load_artifact

    path = Path(model_pt_local_path)
    blob = load_artifact(path)
    # Build the predictor once here: a broken export fails before anything is logged.
    ImagePredictor(blob, threshold=threshold, top_k=top_k, device="cpu", source=str(path))
    meta = {
        "fashion_attr.format": MODEL_FORMAT,
        "arch": str(blob["arch"]),
        "num_attributes": int(blob["num_attributes"]),
        "num_categories": int(blob["num_categories"]),
        "preprocessing": {k: v for k, v in dict(blob["preprocessing"]).items() if k != "resize"},
        "dataset_version": str(blob.get("dataset_version", "")),
        "attribute_threshold": float(threshold),
        "top_k": int(top_k),
        **dict(metadata or {}),
    }
    package_dir = str(Path(fashion_attr.__file__).parent)
    with tempfile.TemporaryDirectory(prefix="fa-pyfunc-") as tmp:
        entry = Path(tmp) / "fashion_attr_model.py"
        entry.write_text(_ENTRY_CODE)
        return cast(
            "mlflow.models.model.ModelInfo",
            mlflow.pyfunc.log_model(
                name=artifact_path,
                python_model=str(entry),
                artifacts={MODEL_ARTIFACT: str(path)},
                code_paths=[package_dir],
                model_config={"attribute_threshold": float(threshold), "top_k": int(top_k)},
                signature=model_signature(threshold, top_k),
                input_example=pd.DataFrame(
                    {"image": [_example_image()], "bbox": [[2.0, 2.0, 14.0, 14.0]]}
                ),
                pip_requirements=pip_requirements(),
                registered_model_name=registered_model_name,
                metadata=meta,
            ),
        )
