"""Per-attribute recall change for the gate record; the champion through MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fashion_attr.audit.recall_change import recall_change, render_recall_change
from fashion_attr.evaluation.report import write_per_attribute_csv


def _rec(j: int, positives: int, recall: float, tail: bool = False) -> dict:
    return {
        "index": j,
        "group": "texture",
        "group_id": 1,
        "is_tail": tail,
        "train_positives": 10,
        "test_positives": positives,
        "test_negatives": 50,
        "ap": 0.5,
        "recall@3": recall,
        "recall@5": recall,
    }


def test_recall_change_pairs_attributes_worst_first_and_reads_the_csv(tmp_path: Path):
    names = ["floral", "denim", "maxi", "pocket"]
    challenger = [
        _rec(0, 10, 0.5),
        _rec(1, 4, 1.0, tail=True),
        _rec(2, 0, math.nan),
        _rec(3, 8, 0.5),
    ]
    champion = [_rec(0, 10, 0.7), _rec(1, 4, 0.5, tail=True), _rec(2, 0, math.nan), _rec(3, 8, 0.5)]
    rows = recall_change(challenger, champion, attribute_names=names, k=3)
    assert [r["name"] for r in rows] == ["floral", "pocket", "denim"]  # no test positive: out
    assert rows[0]["delta"] == pytest.approx(-0.2) and rows[-1]["is_tail"]
    md = render_recall_change(rows, k=3)
    assert "1 attribute(s) worse, 1 better, 1 unchanged" in md
    assert "| floral | texture |  | 10 | 70.0 | 50.0 | -20.0 |" in md
    # The evaluate step's per_attribute.csv is read the same way.
    a = write_per_attribute_csv(tmp_path / "a.csv", challenger, names)
    b = write_per_attribute_csv(tmp_path / "b.csv", champion, names)
    from_csv = recall_change(str(a), str(b), k=3)
    assert [(r["name"], round(r["delta"], 6)) for r in from_csv] == [
        (r["name"], round(r["delta"], 6)) for r in rows
    ]


def test_recall_change_refuses_two_different_splits():
    with pytest.raises(ValueError, match="not the same split"):
        recall_change([_rec(0, 10, 0.5)], [_rec(0, 9, 0.5)])
    with pytest.raises(ValueError, match="paired split"):
        recall_change([_rec(0, 10, 0.5)], [])


def test_the_champion_alias_resolves_through_mlflow_and_the_audit_is_logged(tmp_path, monkeypatch):
    from fashion_attr.results import AuditResult
    from fashion_attr.steps.audit import _log_mlflow, resolve_champion
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    assert resolve_champion("models:/nobody@champion") is None  # nothing registered yet
    client = MlflowClient(uri)
    client.create_registered_model("fa")
    assert resolve_champion("models:/fa@champion") is None  # registered, no champion yet
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.pt").write_bytes(b"weights")
    mv = client.create_model_version("fa", str(artifact))
    client.set_registered_model_alias("fa", "champion", mv.version)
    local = resolve_champion("models:/fa@champion", workdir=str(tmp_path / "dl"))
    assert Path(local).read_bytes() == b"weights"
    with pytest.raises(ValueError, match="models:/<name>@<alias>"):
        resolve_champion("models:/fa")

    run = client.create_run(
        client.create_experiment("audit", artifact_location=str(tmp_path / "artifacts"))
    )
    out = tmp_path / "audit"
    out.mkdir()
    (out / "report.md").write_text("# report\n")
    result = AuditResult(
        status="audited",
        dataset_version="v-1",
        dataset_uri="x",
        audited_version="v-1",
        audited_uri="x",
        base_version="v-0",
        out=str(out),
        files={"report_md": str(out / "report.md")},
        label_issues=3,
        drift_flagged=True,
        metrics={"audit/label_issues": 3.0},
    )
    assert _log_mlflow(result, run.info.run_id, f"fa/{mv.version}", None) == run.info.run_id
    logged = client.get_run(run.info.run_id)
    assert logged.data.metrics["audit/label_issues"] == 3.0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "audit")] == ["audit/report.md"]
    tags = client.get_model_version("fa", mv.version).tags
    assert tags["audit.label_issues"] == "3" and tags["audit.drift_flagged"] == "true"
