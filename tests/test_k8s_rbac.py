"""The pipeline runs' Role: exactly what the KFP backend needs, plus the project's own needs.

KFP's own ``pipeline-runner`` role (manifests/kustomize/base/pipeline/pipeline-runner-role.yaml)
grants far more than its pods use; what the KFP v2 pods of a run actually do with the API,
read in the backend's sources at the tags named, is :data:`KFP_BACKEND`. The Role in
``k8s/pipeline/rbac.yaml`` must grant each of those, the project's :data:`PROJECT` rules,
and nothing else, in both KFP modes (multi-user: the profile namespace fashion-attr;
standalone: kubeflow).
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")

Grant = tuple[str, str, str, str | None]  # (apiGroup, resource, verb, resourceName or None)

#: What every KFP v2 pod of a run does with the API (backend 2.15.0-2.17.x, Argo 3.7-4.0).
KFP_BACKEND: dict[Grant, str] = {
    **{
        ("argoproj.io", "workflowtaskresults", verb, None): (
            "Argo's executor reports outputs; mandatory from KFP 2.14 / Argo 3.6: "
            "pipeline-runner-role.yaml @2.14.0 81-87, workflow/executor/executor.go @v3.6.7 826"
        )
        for verb in ("create", "patch")
    },
    ("", "configmaps", "get", "kfp-launcher"): (
        "root DAG driver reads the launcher settings: backend/src/v2/config/env.go @2.17.0 72-83"
    ),
    ("", "secrets", "get", "mlpipeline-minio-artifact"): (
        "the launcher opens the artifact store before user code: component/launcher_v2.go "
        "@2.17.0 252-277, objectstore/object_store.go 377-406"
    ),
}

#: What the project's own code does with the API (fashion_attr/cluster/).
PROJECT: dict[Grant, str] = {
    **{
        ("", "secrets", "get", name): "the launcher checks the training pods' Secrets exist"
        for name in ("object-store-credentials", "mlflow-credentials")
    },
    **{
        (group, resource, verb, None): "the multi-node launcher submits, watches, replaces, "
        "adopts (patch: its pod becomes an owner) and reaps orphaned jobs"
        for group, resource in (
            ("trainer.kubeflow.org", "trainjobs"),
            ("kubeflow.org", "pytorchjobs"),
        )
        for verb in ("get", "list", "watch", "create", "delete", "patch")
    },
    **{
        ("", resource, verb, None): "the launcher copies failed training pods' logs"
        for resource in ("pods", "pods/log")
        for verb in ("get", "list", "watch")
    },
}


@cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def _grants(role: dict[str, Any]) -> set[Grant]:
    out: set[Grant] = set()
    for rule in role["rules"]:
        names = rule.get("resourceNames") or [None]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out |= {(group, resource, verb, name) for name in names}
    return out


@pytest.mark.parametrize(
    ("overlay", "namespace"),
    [("minio", "fashion-attr"), ("cloud", "fashion-attr"), ("kfp-standalone", "kubeflow")],
)
def test_the_role_grants_what_the_backend_and_the_project_need_and_nothing_else(
    overlay: str, namespace: str
) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _render(overlay)}
    role = objects["Role", "fashion-attr-pipeline-runner"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
    granted = _grants(role)
    missing = set(KFP_BACKEND) - granted
    assert not missing, f"the KFP backend's pods need {sorted(missing, key=str)}"
    assert not set(PROJECT) - granted, sorted(set(PROJECT) - granted, key=str)
    extra = granted - set(KFP_BACKEND) - set(PROJECT)
    assert not extra, f"not needed by the backend or the project: {sorted(extra, key=str)}"
    binding = objects["RoleBinding", "fashion-attr-pipeline-runner"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "fashion-attr-pipeline-runner",
    }
    subject = {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": namespace}
    assert binding["subjects"] == [subject]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"] == namespace
    # The launcher reads the TrainJob CRD (and nothing else cluster-wide) to pick the shape.
    crd_reader = next(o for (kind, _), o in objects.items() if kind == "ClusterRoleBinding")
    assert crd_reader["subjects"] == [subject]
    (reader,) = [o for (kind, _), o in objects.items() if kind == "ClusterRole"]
    assert _grants(reader) == {
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "get",
            "trainjobs.trainer.kubeflow.org",
        )
    }


def test_standalone_leaves_kfps_own_pipeline_runner_alone() -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in _render("kfp-standalone")}
    assert ("ServiceAccount", "pipeline-runner") not in names
    assert ("Role", "pipeline-runner") not in names and (
        "RoleBinding",
        "pipeline-runner",
    ) not in names
    multi = {(o["kind"], o["metadata"]["name"]) for o in _render("minio")}
    cluster = {n for n in names if n[0].startswith("Cluster")}
    # Both modes may be installed in one cluster: their cluster-scoped bindings differ.
    assert {n for n in cluster if n[0] == "ClusterRoleBinding"}.isdisjoint(multi)
