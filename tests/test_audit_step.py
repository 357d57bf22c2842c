"""The audit step end to end: a batch folded into the demo version, a tiny champion, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fashion_attr.checkpoint import save_artifact
from fashion_attr.classifier.export import export_blob
from fashion_attr.classifier.model import build_classifier
from fashion_attr.config import AuditConfig, PreprocessConfig, load_config
from fashion_attr.data.annotations import load_annotations_from_dir
from fashion_attr.data.loader import make_loader
from fashion_attr.data.shards import iter_shard_samples, load_manifest, resolve_shard_uri
from fashion_attr.results import AuditResult
from fashion_attr.steps import audit, preprocess

pytestmark = pytest.mark.usefixtures("one_thread")


def _champion(path: Path, manifest, *, layout_names: list[str] | None = None) -> str:
    """A tiny champion that says 'Tee' to everything and no attribute (a confident one)."""
    cats = [c.name for c in manifest.categories]
    attrs = layout_names or [a.name for a in manifest.attributes]
    torch.manual_seed(0)
    net = build_classifier("tiny", len(attrs), len(cats))
    with torch.no_grad():
        net.cat_head.linear.bias.fill_(-8.0)
        net.cat_head.linear.bias[0] = 8.0
        net.attr_head.linear.bias.fill_(-6.0)
    blob = export_blob(
        net,
        arch="tiny",
        config={"loss": {"gamma": 1.2}},
        image_size=32,
        category_names=cats,
        attribute_names=attrs,
        attribute_groups=[a.group for a in manifest.attributes][: len(attrs)]
        + [1] * max(0, len(attrs) - len(manifest.attributes)),
        train_pos_counts=[0] * len(attrs),
        dataset_version=manifest.version,
        val_metrics={},
        step=1,
    )
    save_artifact(path, blob)
    return str(path)


@pytest.fixture(scope="module")
def folded(demo_version, tmp_path_factory):
    """The demo version + a batch of 30 new images (24 labelled, 6 unlabelled)."""
    from fashion_attr.demo import generate_demo_dataset

    work = tmp_path_factory.mktemp("audit")
    src = generate_demo_dataset(work / "new", images=30, seed=7, min_size=48, max_size=64)
    ds = load_annotations_from_dir(src)
    cats, attrs = [c.name for c in ds.categories], [a.name for a in ds.attributes]
    rows = []
    for i, r in enumerate(ds.records):
        row = {"image": str(src / "Img" / r.name), "bbox": list(r.bbox), "split": "train"}
        if i % 5 != 4:
            row |= {"category": cats[r.category], "attributes": [attrs[j] for j in r.positives]}
        rows.append(row)
    drop = work / "drop"
    drop.mkdir()
    (drop / "2026-11-26.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = work / "datasets"
    cfg = load_config(PreprocessConfig, overrides=["shard_max_samples=16"])
    done = preprocess.run(cfg, str(dest), base=demo_version, batch=str(drop), progress=False)
    model = _champion(work / "champion" / "model.pt", load_manifest(demo_version))
    return {
        "work": work,
        "dest": str(dest),
        "ingest": done,
        "champion": model,
        "base": demo_version,
    }


def _cli(capsys, *args) -> tuple[int, dict | None, str]:
    rc = audit.main([*map(str, args), "--no-progress"])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return rc, (json.loads(lines[-1]) if lines else None), err


def test_the_audit_writes_its_files_beside_the_version(folded, capsys):
    ing = folded["ingest"]
    rc, result, err = _cli(
        capsys, "--data", ing.uri, "--base", folded["base"], "--champion", folded["champion"]
    )
    assert rc == 0, err
    assert result["status"] == "audited" and result["out"] == f"{ing.uri}/audit"
    assert (result["records"], result["labelled"], result["unlabelled"]) == (30, 24, 6)
    assert result["batches"] == [str(Path(folded["work"]) / "drop" / "2026-11-26.jsonl")]
    assert AuditResult.read(result["out"]).files == result["files"]
    assert f"audit: wrote 6 files to {ing.uri}/audit" in err
    issues = [json.loads(x) for x in Path(result["files"]["label_issues"]).read_text().splitlines()]
    # The champion says 'Tee' and no attribute: every non-Tee record is a wrong category,
    # every given attribute spurious; ranked most suspicious first.
    assert len(issues) == result["label_issues"] > 0
    assert [i["rank"] for i in issues] == list(range(1, len(issues) + 1))
    assert [i["score"] for i in issues] == sorted((i["score"] for i in issues), reverse=True)
    wrong = [i for i in issues if "wrong_category" in i["issues"]]
    assert wrong and all(i["suspected"]["category"] == "Tee" for i in wrong)
    assert all(i["line"] and i["image"].endswith(".jpg") for i in issues)
    tags = [json.loads(x) for x in Path(result["files"]["tags"]).read_text().splitlines()]
    assert len(tags) == result["tagged"] == 6
    assert {"category", "category_prob", "attributes", "top_k", "top_k_all"} <= set(tags[0])
    assert tags[0]["category"] == "Tee" and set(tags[0]["top_k"]) == {
        "texture",
        "fabric",
        "shape",
        "part",
        "style",
    }
    queue = [json.loads(x) for x in Path(result["files"]["to_label"]).read_text().splitlines()]
    assert [q["rank"] for q in queue] == [1, 2, 3, 4, 5, 6]
    assert queue[0]["hardness"].startswith("rebuilt from the champion on")  # no checkpoint
    drift = json.loads(Path(result["files"]["drift"]).read_text())
    assert isinstance(drift["flagged"], bool) and drift["features"]["tested"]
    html = Path(result["files"]["report_html"]).read_text()
    assert "<img src='data:image/jpeg;base64," in html and "Top label issues" in html
    md = Path(result["files"]["report_md"]).read_text()
    assert "![" in md and "thumbnails/01.jpg" in md
    assert (Path(result["out"]) / "thumbnails" / "01.jpg").stat().st_size > 0
    assert result["metrics"]["audit/label_issues"] == len(issues)


def test_an_unusable_training_checkpoint_is_named_and_the_memory_rebuilt(folded, capsys, tmp_path):
    """A torn checkpoint.pt beside the champion: the audit goes on, and says why."""
    import shutil

    champion = tmp_path / "champion" / "model.pt"
    champion.parent.mkdir()
    shutil.copy(folded["champion"], champion)
    (champion.parent / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    dest = tmp_path / "datasets"
    shutil.copytree(folded["dest"], dest)
    data = str(dest / Path(folded["ingest"].uri).name)
    rc, result, err = _cli(capsys, "--data", data, "--base", folded["base"], "--champion", champion)
    assert rc == 0, err
    assert f"audit: warning: {champion.parent / 'checkpoint.pt'} not usable" in err
    queue = [json.loads(x) for x in Path(result["files"]["to_label"]).read_text().splitlines()]
    assert queue[0]["hardness"].startswith("rebuilt from the champion on")
    assert "checkpoint.pt not usable" in queue[0]["hardness"]


def test_exclude_and_downweight_publish_versions_that_say_what_they_left_out(folded):
    ing, dest = folded["ingest"], folded["dest"]
    cfg = load_config(AuditConfig, overrides=["label_issues=exclude"])
    done = audit.run(cfg, ing.uri, base=folded["base"], champion=folded["champion"], progress=False)
    assert done.derived and done.excluded > 0 and done.dataset_version != ing.version
    assert done.latest == f"{dest}/LATEST"
    assert Path(done.latest).read_text() == done.dataset_version
    derived = load_manifest(done.dataset_uri)
    audited = load_manifest(ing.uri)
    assert derived.base.version == ing.version
    assert derived.counts["train"] == audited.counts["train"] - done.excluded
    left_out = [s for s in derived.skipped if s.reason.startswith("audit: excluded")]
    assert len(left_out) == done.excluded
    assert "label_issues.jsonl" in left_out[0].reason
    record = json.loads(Path(done.policy_record).read_text())
    assert record["policy"] == "exclude" and len(record["excluded"]) == done.excluded
    assert sum(derived.train_category_counts) == derived.counts["train"]
    loader = make_loader(done.dataset_uri, "train", batch_size=64, train=False)
    assert loader.num_samples == derived.counts["train"]
    # A rerun is a no-op: the same derived version.
    again = audit.run(
        cfg, ing.uri, base=folded["base"], champion=folded["champion"], progress=False
    )
    assert again.dataset_version == done.dataset_version

    down = audit.run(
        load_config(AuditConfig, overrides=["label_issues=downweight"]),
        ing.uri,
        base=folded["base"],
        champion=folded["champion"],
        progress=False,
    )
    kept = load_manifest(down.dataset_uri)
    assert down.masked > 0
    assert kept.counts["train"] == audited.counts["train"] - down.excluded
    assert sum(kept.train_attribute_counts.unknown) > sum(audited.train_attribute_counts.unknown)
    own = [e for e in kept.shards["train"] if not e.uri.startswith("..")]
    metas = [
        m for e in own for _, _, m in iter_shard_samples(resolve_shard_uri(down.dataset_uri, e.uri))
    ]
    assert any(m["unknown"] for m in metas)  # disputed labels now unknown, not negatives


def test_without_a_champion_the_label_drift_is_reported(folded, tmp_path):
    ing = folded["ingest"]
    done = audit.run(
        AuditConfig(), ing.uri, base=folded["base"], out=str(tmp_path / "a"), progress=False
    )
    assert done.status == "no-champion" and done.label_issues == 0
    assert set(done.files) == {"drift", "report_md", "report_html"}
    assert any("no champion yet" in n for n in done.notes)
    drift = json.loads(Path(done.files["drift"]).read_text())
    assert drift["labels"]["products"] > 0 and drift["features"] is None


def test_bad_input_gets_a_clear_message_and_keeps_what_was_written(folded, capsys, tmp_path):
    ing = folded["ingest"]
    out = tmp_path / "kept"
    rc, _, _ = _cli(
        capsys, "--data", ing.uri, "--base", folded["base"], "--champion", folded["champion"],
        "--out", out,
    )  # fmt: skip
    assert rc == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # A base that is not an ancestor of --data.
    rc, _, err = _cli(capsys, "--data", folded["base"], "--base", ing.uri, "--out", out)
    assert rc == 2 and "is not in the lineage" in err and "Fix:" in err
    # A champion trained on another label layout.
    other = _champion(
        tmp_path / "other.pt", load_manifest(folded["base"]), layout_names=["a", "b", "c"]
    )
    rc, _, err = _cli(
        capsys, "--data", ing.uri, "--base", folded["base"], "--champion", other, "--out", out
    )
    assert rc == 2 and "another label layout" in err and "Fix:" in err
    rc, _, err = _cli(
        capsys, "--data", ing.uri, "--base", folded["base"], "--champion", tmp_path / "no.pt",
        "--out", out,
    )  # fmt: skip
    assert rc == 2 and "no.pt" in err
    rc, _, err = _cli(
        capsys, "--data", ing.uri, "--base", folded["base"], "--champion", "models:/m@champion",
        "--out", out,
    )  # fmt: skip
    assert rc == 2 and "MLFLOW_TRACKING_URI" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
