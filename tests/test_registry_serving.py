"""The served model: preprocessing, answers and errors (in-process), then `mlflow models serve`.

The first group runs the pyfunc's predictor in-process (fast). The last test starts a
real tracking server, registers a model, serves ``models:/<name>@champion`` with
``mlflow models serve --env-manager local`` on loopback and queries /invocations.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from fashion_attr.checkpoint import load_artifact
from fashion_attr.registry.pyfunc import (
    MODEL_FORMAT,
    FashionAttrPyfunc,
    ImagePredictor,
    pip_requirements,
)
from mlflow_server import (
    export_tiny_model,
    garment_image,
    jpeg_b64,
    running_tracking_server,
    start_model_server,
    write_metrics,
)

ATTR = [2.0, -1.0, 0.5, -3.0, 0.0, 1.0]
CAT = [0.0, math.log(3.0), 0.0]  # softmax [0.2, 0.6, 0.2]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("serve") / "model.pt"
    export_tiny_model(path, attr_logits=ATTR, cat_logits=CAT)
    return load_artifact(path)


@pytest.fixture(scope="module")
def predictor(blob: dict) -> ImagePredictor:
    return ImagePredictor(blob, threshold=0.5, top_k=3, device="cpu")


def test_model_format_has_one_home_shared_with_the_training_export() -> None:
    from fashion_attr.classifier import export

    assert MODEL_FORMAT is export.MODEL_FORMAT == "fashion_attr.classifier/v1"


def test_a_bbox_crops_the_photo_as_ingest_crops_the_training_images(
    predictor: ImagePredictor,
) -> None:
    # Left half red, right half blue: the box of the right half gives a blue crop.
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (40, 0, 80, 40))
    raw = _png(img)
    whole = predictor.decode(raw, 0)
    assert whole[0].float().mean() > 100 and whole[2].float().mean() > 100  # both colours
    for box in ([40, 0, 80, 40], "40,0,80,40", (40.0, -5.0, 120.0, 60.0)):  # clamped like ingest
        crop = predictor.decode(raw, 0, box)
        assert int(crop[0].max()) == 0 and int(crop[2].min()) == 255, box
    assert torch.equal(predictor.decode(raw, 0, None), whole)
    assert torch.equal(predictor.decode(raw, 0, float("nan")), whole)
    for bad, words in (([90, 0, 100, 10], "does not overlap"), ([1, 2, 3], "four numbers")):
        with pytest.raises(MlflowException, match=words):
            predictor.decode(raw, 3, bad)
    answers = predictor.predict([raw, raw], boxes=[None, [40, 0, 80, 40]])
    assert len(answers) == 2


def test_preprocessing_is_resize_then_per_channel_normalisation(predictor: ImagePredictor) -> None:
    # A solid colour stays solid under bilinear resizing; (c / 255 - mean) / std per channel.
    raw = _png(Image.new("RGB", (40, 30), (200, 30, 60)))
    u8 = predictor.decode(raw, 0)
    assert u8.dtype == torch.uint8 and tuple(u8.shape) == (3, 32, 32)
    x = predictor.normalize(u8[None])
    expected = [(200 / 255 - 0.485) / 0.229, (30 / 255 - 0.456) / 0.224, (60 / 255 - 0.406) / 0.225]
    assert expected == pytest.approx([1.307047, -1.510504, -0.758693], abs=1e-6)
    for c in range(3):
        assert torch.allclose(x[0, c], torch.full((32, 32), expected[c]), atol=1e-5)


def test_one_channel_model_decodes_grey(tmp_path: Path) -> None:
    from fashion_attr.checkpoint import save_artifact
    from fashion_attr.classifier.model import build_classifier

    model = build_classifier("tiny", 2, 0, in_channels=1)
    grey = {
        "format": MODEL_FORMAT,
        "arch": "tiny",
        "num_attributes": 2,
        "num_categories": 0,
        "in_channels": 1,
        "state_dict": model.state_dict(),
        "category_names": [],
        "attribute_names": ["a", "b"],
        "attribute_groups": [1, 7],
        "preprocessing": {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.5]},
    }
    save_artifact(tmp_path / "grey.pt", grey)
    p = ImagePredictor(load_artifact(tmp_path / "grey.pt"), device="cpu")
    u8 = p.decode(_png(Image.new("RGB", (20, 20), (200, 30, 60))), 0)
    # ITU-R 601-2 luma as PIL computes it: 200*0.299 + 30*0.587 + 60*0.114 = 84.25 -> 84.
    assert tuple(u8.shape) == (1, 16, 16) and int(u8[0, 0, 0]) == 84
    assert float(p.normalize(u8[None])[0, 0, 0, 0]) == pytest.approx((84 / 255 - 0.5) / 0.5)
    (answer,) = p.predict([_png(Image.new("L", (9, 9), 3))])
    assert answer["category"] is None and answer["category_prob"] is None
    assert set(answer["top_k"]) == {"texture", "group7"}


def test_answers_follow_threshold_and_k(predictor: ImagePredictor) -> None:
    b64 = jpeg_b64(garment_image(0))
    (a,) = predictor.predict([b64])
    assert a["category"] == "Tee" and a["category_prob"] == pytest.approx(0.6, rel=1e-6)
    assert [x["name"] for x in a["attributes"]["texture"]] == ["floral"]
    assert a["attributes"]["part"] == [{"name": "collar", "prob": 0.5}]  # 0.5 >= 0.5
    assert a["attributes"]["shape"] == []
    assert [x["name"] for x in a["top_k"]["texture"]] == ["floral", "striped"]  # group has 2
    assert a["top_k"]["style"][0]["prob"] == pytest.approx(_sig(1.0), rel=1e-6)
    (b,) = predictor.predict([b64], threshold=0.7, top_k=1)
    assert b["attributes"]["fabric"] == [] and [x["name"] for x in b["attributes"]["style"]] == [
        "boho"
    ]
    assert len(b["top_k"]["texture"]) == 1
    (c,) = predictor.predict(["data:image/jpeg;base64," + b64])
    assert c["category"] == "Tee"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([None], "row 0: the value is empty"),
        (["ok", "%%% not base64 %%%"], "row 1: the value is not valid base64"),
        ([""], "row 0: the image is empty (0 bytes)"),
        ([base64.b64encode(b"plain text, not an image").decode()], "row 0: not a decodable"),
        ([12.5], "row 0: expected base64 text or bytes, got float"),
    ],
)
def test_bad_images_name_the_row(
    predictor: ImagePredictor, values: list[object], message: str
) -> None:
    values = [jpeg_b64(garment_image(1)) if v == "ok" else v for v in values]
    with pytest.raises(MlflowException, match=re.escape(message)) as err:
        predictor.predict(values)
    assert "input column 'image'" in str(err.value) and "Fix:" in str(err.value)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_only_jpeg_and_png_are_decoded_and_bombs_are_refused(predictor: ImagePredictor) -> None:
    gif = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(gif, format="GIF")
    with pytest.raises(MlflowException, match="row 0: not a decodable JPEG or PNG"):
        predictor.predict([gif.getvalue()])
    bomb = _png(Image.new("1", (8000, 7000)))  # 56 M pixels, a few KB compressed
    with pytest.raises(MlflowException, match=r"row 0: 8000x7000 pixels exceed the limit"):
        predictor.predict([bomb])


def test_bad_params_and_missing_column_are_refused(
    predictor: ImagePredictor, blob: dict, tmp_path: Path
) -> None:
    with pytest.raises(MlflowException, match=r"threshold=1\.5 must lie strictly between 0 and 1"):
        predictor.predict([jpeg_b64(garment_image(0))], threshold=1.5)
    with pytest.raises(MlflowException, match="top_k=0 must be an integer >= 1"):
        predictor.predict([jpeg_b64(garment_image(0))], top_k=0)
    model = FashionAttrPyfunc()
    model._predictor = predictor
    with pytest.raises(MlflowException, match="expected a column 'image'"):
        model.predict(None, pd.DataFrame({"img": ["x"]}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a classifier artifact"):
        ImagePredictor({**blob, "format": "something/else"})
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['attribute_groups'\]"):
        ImagePredictor({k: v for k, v in blob.items() if k != "attribute_groups"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_answers_match_cpu(blob: dict, predictor: ImagePredictor) -> None:
    gpu = ImagePredictor(blob, device="auto")
    assert gpu.device.type == "cuda"
    images = [jpeg_b64(garment_image(k)) for k in range(3)]
    for a, b in zip(gpu.predict(images), predictor.predict(images), strict=True):
        assert a["category"] == b["category"]
        assert a["category_prob"] == pytest.approx(b["category_prob"], abs=1e-4)


def test_pip_requirements_pin_the_installed_stack() -> None:
    reqs = dict(r.split("==") for r in pip_requirements())
    assert reqs["torch"] == "2.14.1" and reqs["torchvision"] == "0.29.1"
    assert set(reqs) >= {"pillow", "numpy", "pandas", "mlflow", "pyyaml", "pydantic"}


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fashion_attr.steps.register import main

    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    export_tiny_model(tmp_path / "model.pt", attr_logits=ATTR, cat_logits=CAT)
    metrics = write_metrics(
        tmp_path / "metrics.json",
        {"attr_recall@3/all": 0.5, "attr_recall@3/tail": 0.3, "cat_top3_acc": 0.9},
    )
    with running_tracking_server(tmp_path / "tracking") as tracking:
        rc = main(
            [
                "--model",
                str(tmp_path / "model.pt"),
                "--metrics",
                str(metrics),
                "--model-name",
                "fa-serve",
                "--pipeline-run",
                "serve-1",
                "--tracking-uri",
                tracking.url,
            ]
        )
        assert rc == 0, capsys.readouterr().err
        serving = start_model_server("models:/fa-serve@champion", tracking.url, tmp_path / "s")
        try:
            images = [jpeg_b64(garment_image(k, size=(120 + 10 * k, 160))) for k in range(3)]
            status, body = _post(
                serving.url + "/invocations",
                {"dataframe_split": {"columns": ["image"], "data": [[b] for b in images]}},
            )
            assert status == 200, body
            preds = body["predictions"]
            assert len(preds) == 3
            for p in preds:
                assert set(p) == {"category", "category_prob", "attributes", "top_k"}
                assert p["category"] == "Tee"
                assert p["category_prob"] == pytest.approx(0.6, rel=1e-5)
                assert [a["name"] for a in p["attributes"]["texture"]] == ["floral"]
                assert p["top_k"]["shape"][0]["prob"] == pytest.approx(_sig(-3.0), rel=1e-5)
            status, body = _post(
                serving.url + "/invocations",
                {
                    "dataframe_split": {"columns": ["image"], "data": [[images[0]], ["bm90IGFu"]]},
                    "params": {"top_k": 1},
                },
            )
            assert status == 400
            assert "row 1: not a decodable JPEG or PNG image" in body["message"]
            status, body = _post(
                serving.url + "/invocations",
                {
                    "dataframe_split": {"columns": ["image"], "data": [[images[1]]]},
                    "params": {"top_k": 1},
                },
            )
            assert status == 200 and len(body["predictions"][0]["top_k"]["texture"]) == 1
        finally:
            serving.stop()
        assert serving.proc.poll() is not None
