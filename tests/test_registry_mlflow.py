"""register step against a REAL MLflow tracking server (sqlite, proxied artifacts, loopback).

One server is shared by the module; each test uses its own registered model name, so the
tests are independent of each other and of their order.
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).parent))
from fashion_attr.registry.mlflow_registry import use_tracking_uri
from fashion_attr.steps.register import main
from mlflow_server import (
    ServerProcess,
    export_tiny_model,
    garment_image,
    running_tracking_server,
    write_metrics,
)

GOOD = {
    "attr_recall@3/all": 0.50,
    "attr_recall@3/tail": 0.30,
    "cat_top3_acc": 0.90,
    "cb_acc/all": 0.70,
    "map/all": None,  # an ungated null metric is fine
}
# Hand-checkable heads: weights zero, biases = these logits (see export_tiny_model).
TEE_ATTR = [2.0, -1.0, 0.5, -3.0, 0.0, 1.0]
TEE_CAT = [0.0, math.log(3.0), 0.0]  # softmax -> [0.2, 0.6, 0.2]: "Tee" 0.6
SKIRT_CAT = [0.0, 0.0, math.log(4.0)]  # softmax -> [1/6, 1/6, 4/6]: "Skirt" 0.6667


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_tracking_server(tmp_path_factory.mktemp("mlflow-registry")) as srv:
        yield srv


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    export_tiny_model(root / "tee.pt", seed=1, attr_logits=TEE_ATTR, cat_logits=TEE_CAT)
    export_tiny_model(root / "skirt.pt", seed=2, attr_logits=TEE_ATTR, cat_logits=SKIRT_CAT)
    return {"tee": root / "tee.pt", "skirt": root / "skirt.pt"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "FA_PIPELINE_RUN",
    ):
        monkeypatch.delenv(var, raising=False)


def _register(
    capsys: pytest.CaptureFixture[str],
    server: ServerProcess,
    model: Path,
    metrics: Path,
    name: str,
    pipeline_run: str,
    *extra: str,
) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    rc = main(
        [
            "--model",
            str(model),
            "--metrics",
            str(metrics),
            "--model-name",
            name,
            "--pipeline-run",
            pipeline_run,
            "--tracking-uri",
            server.url,
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1]) if rc == 0 else None
    return rc, summary, err


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (client.get_registered_model(name).aliases or {}).items()}


def _versions(client: MlflowClient, name: str) -> list[str]:
    return sorted(mv.version for mv in client.search_model_versions(f"name = '{name}'"))


def test_gate_moves_champion_alias_only_for_a_better_model(
    server: ServerProcess, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name = "fa-gate"
    client = MlflowClient(server.url)
    m0 = write_metrics(tmp_path / "m0.json", GOOD)
    worse_tail = write_metrics(tmp_path / "m1.json", {**GOOD, "attr_recall@3/tail": 0.25})
    better = write_metrics(tmp_path / "m2.json", {**GOOD, "attr_recall@3/all": 0.53})

    rc, s1, err1 = _register(capsys, server, models["tee"], m0, name, "run-a")
    assert rc == 0 and s1 is not None
    assert (s1["version"], s1["alias"], s1["promoted"], s1["champion_version"]) == (
        "1",
        "champion",
        True,
        "1",
    )
    assert _aliases(client, name) == {"champion": "1", "challenger": "1"}

    # A challenger better overall but 0.05 worse on tail attributes: registered, not promoted.
    rc, s2, err2 = _register(capsys, server, models["skirt"], worse_tail, name, "run-b")
    assert rc == 0 and s2 is not None
    # No "Registered model 'fa-gate' already exists" (MLflow's register_model printed it on
    # the first registration too, the project having created the model just before).
    assert "already exists" not in err1 + err2, err1 + err2
    assert (s2["version"], s2["alias"], s2["promoted"], s2["champion_version"]) == (
        "2",
        "challenger",
        False,
        "1",
    )
    assert _aliases(client, name) == {"champion": "1", "challenger": "2"}
    v2 = client.get_model_version(name, "2")
    assert v2.tags["gate.promoted"] == "false"
    assert v2.tags["gate.compared_to"] == "1"
    assert "| attr_recall@3/tail | 0.3000 | 0.2500 | -0.0500 | - | - | worse |" in v2.description
    assert "KEEP CHAMPION" in v2.description

    # Better by 0.03 on the overall recall, ties elsewhere: the champion alias moves.
    rc, s3, _ = _register(capsys, server, models["skirt"], better, name, "run-c")
    assert rc == 0 and s3 is not None
    assert (s3["version"], s3["promoted"], s3["previous_champion"]) == ("3", True, "1")
    assert _aliases(client, name) == {"champion": "3", "challenger": "3"}
    assert client.get_model_version(name, "3").tags["gate.promoted"] == "true"
    assert _versions(client, name) == ["1", "2", "3"]  # nothing deleted

    # The alias really serves the new artifact: the skirt model answers "Skirt".
    with use_tracking_uri(server.url):
        pm = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    img = io.BytesIO()
    garment_image(2).save(img, format="JPEG")  # type: ignore[attr-defined]
    import pandas as pd

    out = pm.predict(pd.DataFrame({"image": [base64.b64encode(img.getvalue()).decode()]}))
    assert out[0]["category"] == "Skirt"
    assert out[0]["category_prob"] == pytest.approx(4 / 6, rel=1e-5)


def test_rerun_of_a_pipeline_run_reuses_its_version(
    server: ServerProcess, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name = "fa-idem"
    client = MlflowClient(server.url)
    m0 = write_metrics(tmp_path / "m0.json", GOOD)
    worse = write_metrics(tmp_path / "m1.json", {**GOOD, "cat_top3_acc": 0.80})

    _, first, _ = _register(capsys, server, models["tee"], m0, name, "kfp-1")
    _, again, _ = _register(capsys, server, models["tee"], m0, name, "kfp-1")
    assert first is not None and again is not None
    assert (first["version"], first["reused"]) == ("1", False)
    assert (again["version"], again["reused"], again["promoted"]) == ("1", True, True)
    assert again["reason"] == first["reason"]  # the recorded decision, not a new one
    assert _versions(client, name) == ["1"]
    # Another model file under the same pipeline run id is refused, nothing registered.
    rc, _, err = _register(capsys, server, models["skirt"], m0, name, "kfp-1")
    assert rc == 2 and "from another model file" in err and "new --pipeline-run" in err
    assert _versions(client, name) == ["1"]

    _, second, _ = _register(capsys, server, models["skirt"], worse, name, "kfp-2")
    _, retry, _ = _register(capsys, server, models["skirt"], worse, name, "kfp-2")
    assert second is not None and retry is not None
    assert (second["version"], second["promoted"]) == ("2", False)
    assert (retry["version"], retry["reused"], retry["promoted"]) == ("2", True, False)
    assert _versions(client, name) == ["1", "2"]
    assert _aliases(client, name) == {"champion": "1", "challenger": "2"}
    exp = client.get_experiment_by_name("fashion-attr")
    assert exp is not None
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.`fashion_attr.step` = 'register' and tags.`fashion_attr.pipeline_run` = 'kfp-2'",
    )
    assert len(runs) == 1  # the retry logged no second run


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (math.nan, "attr_recall@3/tail = nan"),
        (None, "attr_recall@3/tail = None"),
        (math.inf, "attr_recall@3/tail = inf"),
        ("drop", "attr_recall@3/tail (missing)"),
    ],
)
def test_non_finite_gated_metric_exits_2_and_writes_nothing(
    server: ServerProcess,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    bad: object,
    message: str,
) -> None:
    name = "fa-nan"
    client = MlflowClient(server.url)
    if not any(m.name == name for m in client.search_registered_models()):
        m0 = write_metrics(tmp_path / "m0.json", GOOD)
        assert _register(capsys, server, models["tee"], m0, name, "ok-1")[0] == 0
    exp = client.get_experiment_by_name("fashion-attr")
    assert exp is not None
    runs_before = len(client.search_runs([exp.experiment_id], max_results=1000))

    metrics = dict(GOOD)
    if bad == "drop":
        del metrics["attr_recall@3/tail"]
    else:
        metrics["attr_recall@3/tail"] = bad  # type: ignore[assignment]
    path = write_metrics(tmp_path / "bad.json", metrics)
    rc, summary, err = _register(capsys, server, models["skirt"], path, name, f"bad-{bad}")
    assert rc == 2 and summary is None
    assert message in err and str(path) in err and "Fix:" in err
    assert _versions(client, name) == ["1"]
    assert _aliases(client, name) == {"champion": "1", "challenger": "1"}
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == runs_before


def test_bad_inputs_exit_2_before_touching_mlflow(
    server: ServerProcess, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name = "fa-never"
    client = MlflowClient(server.url)
    good = write_metrics(tmp_path / "m.json", GOOD)
    not_model = tmp_path / "notes.pt"
    not_model.write_bytes(b"this is not a torch file")
    rc, _, err = _register(capsys, server, not_model, good, name, "x")
    assert (rc == 2 and "not a classifier artifact" in err) or "cannot be read" in err
    (tmp_path / "broken.json").write_text('{"metrics": {"cat_top3_acc": 0.9,}}')
    rc, _, err = _register(capsys, server, models["tee"], tmp_path / "broken.json", name, "x")
    assert rc == 2 and "not valid JSON (line 1" in err
    rc, _, err = _register(capsys, server, models["tee"], tmp_path / "missing.json", name, "x")
    assert rc == 2
    rc, _, err = _register(
        capsys, server, models["tee"], good, name, "x", "--set", "tie_rule=sometimes"
    )
    assert rc == 2 and "tie_rule" in err
    assert not [m for m in client.search_registered_models() if m.name == name]


def test_champion_pyfunc_predicts_real_jpeg_with_documented_keys(
    server: ServerProcess, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name = "fa-pred"
    m0 = write_metrics(tmp_path / "m0.json", GOOD)
    rc, _, _ = _register(capsys, server, models["tee"], m0, name, "pred-1", "--set", "top_k=2")
    assert rc == 0
    with use_tracking_uri(server.url):
        pm = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        reqs = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{name}@champion")).read_text()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs
    assert f"mlflow=={mlflow.__version__}" in reqs
    inputs = pm.metadata.get_input_schema().to_dict()
    assert inputs == [
        {"type": "string", "name": "image", "required": True},
        {"type": "array", "items": {"type": "double"}, "name": "bbox", "required": False},
    ]

    jpegs = []
    for kind in range(3):
        buf = io.BytesIO()
        garment_image(kind).save(buf, format="JPEG", quality=85)  # type: ignore[attr-defined]
        jpegs.append(buf.getvalue())
    import pandas as pd

    frame = pd.DataFrame({"image": [base64.b64encode(jpegs[0]).decode(), jpegs[1], jpegs[2]]})
    out = pm.predict(frame)
    assert isinstance(out, list) and len(out) == 3
    for answer in out:
        assert set(answer) == {"category", "category_prob", "attributes", "top_k"}
        assert answer["category"] == "Tee"
        assert answer["category_prob"] == pytest.approx(0.6, rel=1e-5)
        # sigmoid of the head biases [2, -1, 0.5, -3, 0, 1]; threshold 0.5 (inclusive).
        got = {
            g: [(a["name"], round(a["prob"], 5)) for a in v]
            for g, v in answer["attributes"].items()
        }
        assert got == {
            "texture": [("floral", round(_sig(2.0), 5))],
            "fabric": [("cotton", round(_sig(0.5), 5))],
            "shape": [],
            "part": [("collar", 0.5)],
            "style": [("boho", round(_sig(1.0), 5))],
        }
        assert [a["name"] for a in answer["top_k"]["texture"]] == ["floral", "striped"]  # k=2
        assert answer["top_k"]["shape"][0]["prob"] == pytest.approx(_sig(-3.0), rel=1e-5)
    # Per-request override of threshold and k through params.
    out = pm.predict(frame.iloc[:1], params={"threshold": 0.85, "top_k": 1})
    assert out[0]["attributes"]["texture"][0]["name"] == "floral"
    assert out[0]["attributes"]["style"] == []
    assert len(out[0]["top_k"]["texture"]) == 1


def test_run_is_nested_and_records_params_metrics_reports_and_tags(
    server: ServerProcess, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name = "fa-record"
    client = MlflowClient(server.url)
    m0 = write_metrics(tmp_path / "m0.json", GOOD)
    report = tmp_path / "report.md"
    report.write_text("# test report\n")
    rc, summary, _ = _register(
        capsys,
        server,
        models["tee"],
        m0,
        name,
        "rec-1",
        "--report",
        str(report),
        "--code-version",
        "abc1234",
        "--dataset-version",
        "catalog-2026-11",
    )
    assert rc == 0 and summary is not None
    mv = client.get_model_version(name, summary["version"])
    assert mv.tags["fashion_attr.pipeline_run"] == "rec-1"
    assert mv.tags["dataset_version"] == "catalog-2026-11"
    assert mv.tags["code_version"] == "abc1234"
    assert float(mv.tags["metric.attr_recall_at_3/tail"]) == 0.30
    assert "metric.map/all" not in mv.tags  # null metrics are not recorded
    run = client.get_run(mv.run_id)
    assert run.data.metrics["attr_recall_at_3/all"] == 0.50
    assert run.data.params["config.tolerance"] == "0.005"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["fashion_attr.role"] == "pipeline"
    assert parent.data.tags["fashion_attr.pipeline_run"] == "rec-1"
    paths = {f.path for f in client.list_artifacts(run.info.run_id, "reports")}
    assert paths == {"reports/report.md"}
    gate = {f.path for f in client.list_artifacts(run.info.run_id, "gate")}
    assert gate == {"gate/decision.md", "gate/decision.json"}
