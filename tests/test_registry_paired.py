"""Like-for-like promotion: the champion is scored on the challenger's test split.

Two tiny classifiers trained on the session's demo version; a local MLflow store
(SQLite). Also: a non-finite metric refuses registration, register needs a tracking
URI, and a version carries only the gated metrics as tags.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow
import pytest
from fashion_attr.checkpoint import load_artifact, save_artifact
from fashion_attr.classifier.scoring import score_model
from fashion_attr.config import EvaluateConfig, RegisterConfig, load_config
from fashion_attr.steps import register
from small_runs import CLF_SMALL, run_classifier, run_evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
GATES = ("attr_recall@3/all", "attr_recall@3/tail", "cat_top3_acc")


@pytest.fixture(scope="module")
def models(demo_version: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("paired")
    out: dict[str, str] = {}
    for name, seed in (("a", 0), ("b", 1)):
        quick = [*CLF_SMALL, "deact.enabled=false", "epochs=1", "max_steps=3", f"seed={seed}"]
        out[name] = run_classifier(demo_version, root / name, quick).model
    # A model of another label layout (an attribute renamed): it cannot be scored here.
    blob = load_artifact(out["a"])
    blob["attribute_names"] = [*blob["attribute_names"][:-1], "renamed-attribute"]
    save_artifact(root / "other.pt", blob)
    out["other"] = str(root / "other.pt")
    return out


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "paired"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    mlflow.MlflowClient(uri).create_experiment(
        experiment, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    return uri


def _register(
    store: str,
    model: str,
    metrics: str,
    run: str,
    data: str | None,
    **extra: Any,
) -> register.RegisterResult:
    cfg = load_config(RegisterConfig, preset="tiny", extra={"model_name": "paired", **extra})
    return register.run(
        cfg,
        model,
        metrics,
        pipeline_run=run,
        tracking_uri=store,
        data=data,
        evaluate_config=load_config(EvaluateConfig, preset="tiny"),
    )


def _champion_column(result: register.RegisterResult) -> dict[str, float | None]:
    return {row["metric"]: row["champion"] for row in result.decision["table"]}


def test_the_champion_is_scored_on_the_challengers_test_split(
    models: dict[str, str], demo_version: str, store: str, tmp_path: Path
) -> None:
    # The champion was registered with metrics from another split (val): as registered,
    # its figures are not comparable with the challenger's test figures.
    val = run_evaluate(models["a"], demo_version, tmp_path / "ev-a", ["split=val"])
    first = _register(store, models["a"], val.metrics_uri, "run-a", demo_version)
    assert first.promoted and first.decision["basis"] == "first"
    test_b = run_evaluate(models["b"], demo_version, tmp_path / "ev-b")
    second = _register(store, models["b"], test_b.metrics_uri, "run-b", demo_version)
    assert second.decision["basis"] == "paired" and "paired" in second.reason
    # The champion's column is model A scored now on the test split, with the same tail set.
    paired = score_model(load_config(EvaluateConfig, preset="tiny"), models["a"], demo_version)
    for metric, value in _champion_column(second).items():
        assert value == pytest.approx(paired.metrics[metric], abs=1e-12), metric
    recorded = {k: v for k, v in val.metrics.items() if k in GATES}
    assert _champion_column(second) != pytest.approx(recorded)  # it is not the val figures
    # Each row shows n and the 95 % paired bootstrap interval of the difference, computed
    # on the same test images (evaluate's per_image.npz, the champion scored now).
    for row in second.decision["table"]:
        assert row["images"] == test_b.images, row
        assert row["ci_low"] <= row["delta"] <= row["ci_high"], row
        if row["metric"].endswith("/tail"):
            assert row["tail_attributes"] == test_b.tail_attributes, row
    assert f"{test_b.images} images" in second.gate_table
    # Both tables are recorded on the version (and reach run_local's summary).
    assert "scored on this test split" in second.gate_table
    assert "as registered" in second.gate_table
    mv = mlflow.MlflowClient(store).get_model_version("paired", second.version)
    assert mv.tags["gate.basis"] == "paired" and "as registered" in mv.description
    # Only the gated metrics are tags of the version (all are logged to its run).
    assert {k for k in mv.tags if k.startswith("metric.")} == {
        "metric.attr_recall_at_3/all",
        "metric.attr_recall_at_3/tail",
        "metric.cat_top3_acc",
    }


@pytest.mark.parametrize(("rule", "promoted"), [("keep", False), ("promote", True)])
def test_a_champion_that_cannot_be_scored_here_follows_on_incomparable(
    rule: str,
    promoted: bool,
    models: dict[str, str],
    demo_version: str,
    store: str,
    tmp_path: Path,
) -> None:
    ev_b = run_evaluate(models["b"], demo_version, tmp_path / "ev-b")
    first = _register(store, models["other"], ev_b.metrics_uri, "run-other", None)
    assert first.promoted
    second = _register(
        store, models["b"], ev_b.metrics_uri, "run-b", demo_version, on_incomparable=rule
    )
    assert second.decision["basis"] == "incomparable"
    assert "could not be scored on this test split" in second.reason
    assert "another label layout" in second.reason and "by hand" in second.reason
    assert second.promoted is promoted
    assert second.champion_version == (second.version if promoted else first.version)


def test_a_non_finite_metric_refuses_registration_even_if_not_gated(
    models: dict[str, str], demo_version: str, store: str, tmp_path: Path
) -> None:
    ev = run_evaluate(models["b"], demo_version, tmp_path / "ev")
    doc = json.loads(Path(ev.metrics_uri).read_text())
    doc["metrics"]["map/style"] = math.nan  # not gated; json.dumps writes NaN
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"map/style = nan are not finite"):
        _register(store, models["b"], str(broken), "run-nan", demo_version)
    assert mlflow.MlflowClient(store).search_registered_models() == []
    # An undefined metric (null: a group without positives) is not an error.
    doc["metrics"]["map/style"] = None
    broken.write_text(json.dumps(doc))
    assert _register(store, models["b"], str(broken), "run-null", demo_version).promoted


def test_register_without_a_tracking_uri_refuses_naming_the_variable(
    models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"metrics": dict.fromkeys(GATES, 0.5)}))
    argv = ["--model", models["b"], "--metrics", str(metrics), "--pipeline-run", "r1"]
    assert register.main(argv) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI is not set" in err and "Fix:" in err
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
