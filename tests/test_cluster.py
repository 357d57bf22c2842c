"""Multi-node launcher (fashion_attr.cluster): rendering, release detection, the wait loop.

No cluster: the pod parts of the rendered jobs are validated as core Pods with
kubernetes-validate, the Trainer release is read from the release CRDs in tests/fixtures/
served by a fake API, and the wait loop runs against a fake CustomObjectsApi that plays the
controller. tests/test_training_job_models.py checks the jobs against the upstream models
and CRD schemas of each supported release.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
from fashion_attr import cluster as launch
from fashion_attr.cluster import JobResult, job_name_for, launch_and_wait, render_job
from fashion_attr.cluster import jobs as cluster_jobs
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[1]
TRAINER_CRDS = ROOT / "tests/fixtures/trainer_crds"
RELEASES = ("2.1", "2.2", "2.3")
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NS = "fashion-attr"
NAME = "fa-train-classifier-0123456789abcdef"
IMAGE = "registry.example.com/fashion-attr:0.1.0"
STEP_ARGS = [
    "--data",
    "s3://fashion-attr/datasets/v-1",
    "--out",
    "s3://fashion-attr/runs/classifier/0123456789abcdef",
    "--generator",
    "s3://fashion-attr/runs/gan/fedcba9876543210/generator.pt",
    "--preset",
    "paper",
    "--set",
    "habp.gamma=2",
]
CREDENTIAL_ENV = {
    "AWS_ACCESS_KEY_ID": "object-store-credentials",
    "AWS_SECRET_ACCESS_KEY": "object-store-credentials",
    "MLFLOW_TRACKING_USERNAME": "mlflow-credentials",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-credentials",
}


def render(kind: str, nodes: int = 2, gpus: int = 4, **kw: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "step": "train_classifier",
        "args": STEP_ARGS,
        "nodes": nodes,
        "gpus_per_node": gpus,
        "image": IMAGE,
        "namespace": NS,
        "name": "fa-train-classifier-0123456789abcdef",
    }
    params.update(kw)
    return render_job(kind, **params)  # type: ignore[arg-type]


def trainjob_pod_override(job: dict[str, Any]) -> dict[str, Any]:
    """The per-pod part of a TrainJob: metadata and spec, whatever the Trainer release."""
    spec = job["spec"]
    if "podTemplateOverrides" in spec:  # Trainer v2.1
        assert "runtimePatches" not in spec
        (override,) = spec["podTemplateOverrides"]
        assert override["targetJobs"] == [{"name": "node"}]
        return {"metadata": override["metadata"], "spec": override["spec"]}
    assert set(spec) == {"runtimeRef", "trainer", "runtimePatches"}  # v2.2+: no labels field
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "fashion-attr.io/launcher"  # domain-prefixed (Trainer webhook)
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    return replicated["template"]["spec"]["template"]


def trainjob_pod(job: dict[str, Any]) -> dict[str, Any]:
    """The node pod as the Trainer assembles it: trainer fields + the pod override or patch."""
    trainer = job["spec"]["trainer"]
    override = trainjob_pod_override(job)
    (mounts,) = override["spec"]["containers"]
    spec = {k: v for k, v in override["spec"].items() if k != "containers"}
    spec["containers"] = [
        {
            "name": mounts["name"],
            "image": trainer["image"],
            "command": trainer["command"],
            "args": trainer["args"],
            "env": trainer["env"],
            "resources": trainer["resourcesPerNode"],
            "volumeMounts": mounts["volumeMounts"],
        }
    ]
    return {"metadata": override["metadata"], "spec": spec}


def pod_templates(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if job["kind"] == "TrainJob":
        return {"node": trainjob_pod(job)}
    return {role: r["template"] for role, r in job["spec"]["pytorchReplicaSpecs"].items()}


def assert_valid_pod(template: dict[str, Any], where: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "t", **template.get("metadata", {})},
        "spec": template["spec"],
    }
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where} pod invalid for Kubernetes {version}: {err.message}")


def assert_gpu_pod(template: dict[str, Any], gpus: int, where: str) -> None:
    spec = template["spec"]
    assert spec["nodeSelector"] == {"node-pool": "gpu"}, where
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ], where
    assert spec["serviceAccountName"] == "fashion-attr-training", where
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "train-config" not in volumes, where  # config travels as flags, not a ConfigMap
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "/etc/fashion-attr" not in mounts, where
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", where
    res = container["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == str(gpus)
    assert container["image"] == IMAGE, where
    labels = template["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "fashion-attr-pipeline", where
    assert labels["app.kubernetes.io/component"] == "training", where  # training-peers policy


def assert_credentials_from_secrets(template: dict[str, Any]) -> None:
    (container,) = template["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name, secret in CREDENTIAL_ENV.items():
        assert "value" not in env[name], f"{name} must not be a literal"
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": name}
    for e in container["env"]:
        assert "value" not in e, f"literal env {e['name']} in a training pod"


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("release", RELEASES)
def test_trainjob_for_two_nodes_of_four_gpus(release: str) -> None:
    job = render("trainjob", trainer_release=release)
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["metadata"]["name"] == "fa-train-classifier-0123456789abcdef"
    assert job["metadata"]["namespace"] == NS
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "fashion-attr-pipeline"
    assert labels["app.kubernetes.io/name"] == "fashion-attr-train-classifier"
    assert labels["app.kubernetes.io/instance"] == "fa-train-classifier-0123456789abcdef"
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    # v2.1 has the pod settings in podTemplateOverrides; v2.2 removed it for runtimePatches
    field = "podTemplateOverrides" if release == "2.1" else "runtimePatches"
    assert field in job["spec"]
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2
    assert trainer["command"] == ["torchrun"]
    # Rank, master address and port come from the runtime's PET_* variables.
    assert trainer["args"] == [
        "--nnodes",
        "2",
        "--nproc_per_node",
        "4",
        "-m",
        "fashion_attr.steps.train_classifier",
        *STEP_ARGS,
    ]
    assert not any(e["name"].startswith("PET_") for e in trainer["env"])  # webhook rejects them
    env = {e["name"]: e["valueFrom"] for e in trainer["env"]}
    assert env["MLFLOW_TRACKING_URI"] == {
        "configMapKeyRef": {"name": "pipeline-config", "key": "MLFLOW_TRACKING_URI"}
    }
    assert env["AWS_ENDPOINT_URL"]["configMapKeyRef"]["optional"] is True  # minio overlay only
    assert trainer["resourcesPerNode"]["limits"]["memory"] == "64Gi"
    (pod,) = pod_templates(job).values()
    assert_gpu_pod(pod, 4, "TrainJob")
    assert_credentials_from_secrets(pod)
    assert_valid_pod(pod, "TrainJob")


def test_pytorchjob_for_two_nodes_of_four_gpus() -> None:
    job = render("pytorchjob")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fashion-attr-pipeline"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 1)
    assert replicas["Master"]["template"] == replicas["Worker"]["template"]
    for role, pod in pod_templates(job).items():
        (container,) = pod["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert container["command"] == ["torchrun"]
        assert container["args"] == [
            "--nnodes",
            "2",
            "--nproc_per_node",
            "4",
            "--node_rank",
            "$(RANK)",
            "--master_addr",
            "$(MASTER_ADDR)",
            "--master_port",
            "$(MASTER_PORT)",
            "-m",
            "fashion_attr.steps.train_classifier",
            *STEP_ARGS,
        ]
        # locked down like every pod of k8s/
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert container["ports"] == [
            {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}
        ]
        assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [
            "pipeline-config",
            "object-store-config",
        ]
        assert replicas[role]["restartPolicy"] == "OnFailure"
        assert_gpu_pod(pod, 4, role)
        assert_credentials_from_secrets(pod)
        assert_valid_pod(pod, f"PyTorchJob {role}")
    assert job["spec"]["runPolicy"] == {
        "cleanPodPolicy": "None",
        "backoffLimit": 3,
        "ttlSecondsAfterFinished": 86400,
    }


def test_node_counts_map_to_replicas() -> None:
    three = render("pytorchjob", nodes=3, gpus=1)["spec"]["pytorchReplicaSpecs"]
    assert (three["Master"]["replicas"], three["Worker"]["replicas"]) == (1, 2)
    one = render("pytorchjob", nodes=1, gpus=2)["spec"]["pytorchReplicaSpecs"]
    assert set(one) == {"Master"}
    assert render("trainjob", nodes=5, gpus=8)["spec"]["trainer"]["numNodes"] == 5


@pytest.mark.parametrize("release", RELEASES)
def test_gan_step_and_custom_placement(release: str) -> None:
    job = render(
        "trainjob",
        trainer_release=release,
        step="train_gan",
        args=["--data", "d", "--out", "o"],
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        service_account="trainer-sa",
    )
    assert job["spec"]["trainer"]["args"][-5:] == [
        "fashion_attr.steps.train_gan",
        "--data",
        "d",
        "--out",
        "o",
    ]
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "fashion-attr-train-gan"
    spec = trainjob_pod_override(job)["spec"]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert spec["serviceAccountName"] == "trainer-sa"
    no_selector = render("pytorchjob", node_selector={})
    assert (
        "nodeSelector"
        not in no_selector["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    )
    assert "nodeSelector" not in trainjob_pod_override(render("trainjob", node_selector={}))["spec"]


def test_dollar_signs_in_args_stay_literal() -> None:
    # Kubernetes expands $(VAR) in args and turns $$ into $: user text is escaped.
    job = render("pytorchjob", args=["--set", "note=$(HOME) costs $5"])
    args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--set", "note=$$(HOME) costs $$5"]
    assert "$(RANK)" in args  # the launcher's own references are not escaped


def test_rendering_does_not_change_the_next_render() -> None:
    first = render("trainjob", nodes=4, gpus=2)
    second = render("trainjob")
    assert first["spec"]["trainer"]["numNodes"] == 4
    assert second["spec"]["trainer"]["numNodes"] == 2
    trainjob_pod_override(first)["metadata"]["labels"]["x"] = "y"
    assert "x" not in trainjob_pod_override(render("trainjob"))["metadata"]["labels"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"nodes": 0}, "nodes=0"),
        ({"nodes": True}, "nodes=True"),
        ({"gpus": 0}, "gpus_per_node=0"),
        ({"gpus": 1.5}, "gpus_per_node=1.5"),
        ({"name": "Fa_job"}, "name 'Fa_job'"),
        ({"name": "1fa-job"}, "name '1fa-job'"),
        ({"name": "fa-job-"}, "name 'fa-job-'"),
        ({"name": "f" * 46}, "at most 45"),
        ({"namespace": "Fashion"}, "namespace 'Fashion'"),
        ({"image": ""}, "image ''"),
        ({"step": "evaluate"}, "step 'evaluate'"),
        ({"args": "--data x"}, "list of strings"),
        ({"args": ["--config", "/tmp/c.yaml"]}, "object storage"),
        ({"trainer_release": "2.0"}, "Trainer v2.0 is not supported"),
        ({"trainer_release": "2.4"}, "trainer_release '2.4' is not supported"),
        ({"args": ["--set", "a=b"] * 62}, "at most 128 args"),
    ],
)
def test_bad_inputs_raise_value_error(change: dict[str, Any], fragment: str) -> None:
    change = dict(change)
    nodes, gpus = change.pop("nodes", 2), change.pop("gpus", 4)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        render("trainjob", nodes=nodes, gpus=gpus, **change)


def test_bad_kind_raises_value_error() -> None:
    with pytest.raises(ValueError, match="kind 'mpijob'"):
        render("mpijob")


def test_v2_1_override_keeps_to_the_v2_1_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    # The v2.1 envelope takes the pinned (v2.3) models' pod patch: a field v2.1 lacks fails.
    monkeypatch.setattr(cluster_jobs, "_V21_POD_FIELDS", cluster_jobs._V21_POD_FIELDS - {"volumes"})
    with pytest.raises(ValueError, match=r"no field\(s\) \['volumes'\]"):
        render("trainjob", trainer_release="2.1")
    monkeypatch.setattr(cluster_jobs, "_V21_CONTAINER_FIELDS", frozenset({"name"}))
    monkeypatch.setattr(cluster_jobs, "_V21_POD_FIELDS", cluster_jobs._V21_POD_FIELDS | {"volumes"})
    with pytest.raises(ValueError, match=r"\['containers\[\]\.volumeMounts'\]"):
        render("trainjob", trainer_release="2.1")
    assert "runtimePatches" in render("trainjob", trainer_release="2.3")["spec"]


def test_config_from_object_storage_is_passed() -> None:
    args = ["--data", "d", "--out", "s3://b/o", "--config", "s3://b/o/step_config.yaml"]
    assert render("trainjob", args=args)["spec"]["trainer"]["args"][-6:] == args


def test_arg_limit_is_the_trainer_v2_2_one() -> None:
    many = ["--set", "a=b"] * 62  # 124 + torchrun's 6 > 128
    assert (
        len(render("trainjob", args=many, trainer_release="2.1")["spec"]["trainer"]["args"]) == 130
    )
    assert render("pytorchjob", args=many)["kind"] == "PyTorchJob"
    assert render("trainjob", args=many[:-2], trainer_release="2.3")["kind"] == "TrainJob"
    # a release is only needed for a TrainJob
    assert render("pytorchjob", trainer_release="2.0")["kind"] == "PyTorchJob"


def test_job_name_for_is_deterministic_and_valid() -> None:
    assert job_name_for("train_classifier", "0123456789abcdef") == (
        "fa-train-classifier-0123456789abcdef"
    )
    assert job_name_for("train_gan", "fedcba9876543210") == "fa-train-gan-fedcba9876543210"
    # keys that are not short lower-case tokens are hashed: same input, same name
    odd = job_name_for("train_gan", "runs/gan/Some Key")
    assert odd == job_name_for("train_gan", "runs/gan/Some Key")
    assert odd != job_name_for("train_gan", "runs/gan/Other Key")
    assert re.fullmatch(r"fa-train-gan-[0-9a-f]{16}", odd)
    longest = job_name_for("train_classifier", "x" * 500)
    assert len(longest) == 36 <= launch.MAX_NAME_LENGTH
    render("trainjob", name=longest)  # accepted by the renderer
    with pytest.raises(ValueError, match="step 'preprocess'"):
        job_name_for("preprocess", "abc")
    with pytest.raises(ValueError, match="key is empty"):
        job_name_for("train_gan", "")


# --------------------------------------------------------------------------- waiting


def api_error(status: int, message: str = "") -> ApiException:
    err = ApiException(status=status, reason={404: "Not Found", 409: "Conflict"}.get(status, "x"))
    if message:
        err.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return err


def load_crd(tag: str) -> dict[str, Any]:
    return json.loads((TRAINER_CRDS / f"trainjobs-{tag}.json").read_text())


class FakeCustomObjects:
    """Plays the API server and the controller: each read advances the job's status."""

    def __init__(
        self, statuses: list[dict[str, Any]] | None = None, crd: dict[str, Any] | None = None
    ) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.statuses = list(statuses or [])
        self.calls: list[tuple[str, str]] = []
        self.read_errors: list[Exception] = []
        self.create_error: Exception | None = None
        self.create_kwargs: list[dict[str, Any]] = []
        self.delete_kwargs: list[dict[str, Any]] = []
        self.crds = {"trainjobs.trainer.kubeflow.org": crd} if crd is not None else {}
        self.crd_errors: list[Exception] = []

    def _key(self, group: str, namespace: str, plural: str, name: str) -> tuple[str, ...]:
        return (group, namespace, plural, name)

    def get_cluster_custom_object(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any]:
        assert (group, version, plural) == (
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
        )
        self.calls.append(("get-crd", name))
        if self.crd_errors:
            raise self.crd_errors.pop(0)
        if name not in self.crds:
            raise api_error(404)
        return copy.deepcopy(self.crds[name])

    def create_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        body: dict[str, Any],
        **kw: Any,
    ) -> dict[str, Any]:
        self.calls.append(("create", body["metadata"]["name"]))
        self.create_kwargs.append(kw)
        if self.create_error is not None:
            raise self.create_error
        key = self._key(group, namespace, plural, body["metadata"]["name"])
        if key in self.objects:
            raise api_error(409)
        self.objects[key] = copy.deepcopy(body)
        return body

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        self.calls.append(("get", name))
        if self.read_errors:
            raise self.read_errors.pop(0)
        key = self._key(group, namespace, plural, name)
        if key not in self.objects:
            raise api_error(404)
        obj = self.objects[key]
        if self.statuses:
            obj["status"] = self.statuses.pop(0)
        return copy.deepcopy(obj)

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kw: Any
    ) -> None:
        self.calls.append(("delete", name))
        self.delete_kwargs.append(kw)
        assert kw.get("propagation_policy") == "Foreground"
        if self.objects.pop(self._key(group, namespace, plural, name), None) is None:
            raise api_error(404)

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> dict[str, Any]:
        self.calls.append(("patch", name))
        obj = self.objects[self._key(group, namespace, plural, name)]
        obj["metadata"].update(copy.deepcopy(body["metadata"]))
        return obj

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, label_selector: str
    ) -> dict[str, Any]:
        self.calls.append(("list", plural))
        key, _, value = label_selector.partition("=")
        items = [
            copy.deepcopy(obj)
            for (g, ns, pl, _), obj in self.objects.items()
            if (g, ns, pl) == (group, namespace, plural)
            and obj["metadata"].get("labels", {}).get(key) == value
        ]
        return {"items": items}

    def count(self, verb: str) -> int:
        return sum(1 for v, _ in self.calls if v == verb)


def cond(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}


RUNNING = {
    "conditions": [
        {"type": "Created", "status": "True", "reason": "JobsCreationSucceeded"},
        {"type": "Running", "status": "True", "reason": "Running"},
    ]
}


def test_trainjob_created_once_then_attached() -> None:
    job = render("trainjob")
    api = FakeCustomObjects([{}, RUNNING, cond("Complete", "JobSetCompleted", "done")])
    result = launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    assert result == JobResult(
        kind="trainjob",
        name="fa-train-classifier-0123456789abcdef",
        namespace=NS,
        created=True,
        condition="Complete",
        reason="JobSetCompleted",
        message="done",
        elapsed_s=result.elapsed_s,
        logs_command=result.logs_command,
    )
    assert api.count("create") == 1
    # the API server rejects what the CRD does not declare instead of dropping it
    assert api.create_kwargs == [{"field_validation": "Strict"}]
    assert "jobset.sigs.k8s.io/jobset-name=fa-train-classifier-0123456789abcdef" in (
        result.logs_command
    )
    stored = {k: v for k, v in next(iter(api.objects.values())).items() if k != "status"}
    assert stored == job  # submitted exactly as rendered
    # A retried launcher (same name) attaches: no second create.
    again = launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    assert api.count("create") == 1
    assert (again.created, again.condition) == (False, "Complete")


def test_running_job_found_is_watched_not_recreated() -> None:
    job = render("pytorchjob")
    api = FakeCustomObjects()
    api.create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", job)
    api.calls.clear()
    api.statuses = [RUNNING, RUNNING, cond("Succeeded", "PyTorchJobSucceeded", "ok")]
    result = launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    assert (result.created, result.condition, result.reason) == (
        False,
        "Succeeded",
        "PyTorchJobSucceeded",
    )
    assert api.count("create") == 0


def test_failed_job_raises_with_reason_and_log_command() -> None:
    job = render("pytorchjob")
    api = FakeCustomObjects(
        [RUNNING, cond("Failed", "BackoffLimitExceeded", "Master pod exited with code 3")]
    )
    with pytest.raises(RuntimeError) as info:
        launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    text = str(info.value)
    assert "PyTorchJob fashion-attr/fa-train-classifier-0123456789abcdef failed" in text
    assert "BackoffLimitExceeded" in text and "Master pod exited with code 3" in text
    assert (
        "kubectl -n fashion-attr logs -l "
        "training.kubeflow.org/job-name=fa-train-classifier-0123456789abcdef"
    ) in text


def test_condition_with_status_false_is_not_terminal() -> None:
    job = render("trainjob")
    not_failed = {"conditions": [{"type": "Failed", "status": "False", "reason": "x"}]}
    api = FakeCustomObjects([not_failed, cond("Complete")])
    assert launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5).condition == "Complete"


def test_timeout_raises_and_deletes_the_job() -> None:
    job = render("trainjob")
    api = FakeCustomObjects([RUNNING])  # stays running
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s and was deleted"):
        launch_and_wait(job, api=api, poll_s=0.01, timeout_s=0.05)
    assert api.count("delete") == 1 and not api.objects


def test_timeout_can_keep_the_job() -> None:
    job = render("trainjob")
    api = FakeCustomObjects([RUNNING])
    with pytest.raises(TimeoutError, match=r"within 0\.03 s\. Logs"):
        launch_and_wait(job, api=api, poll_s=0.01, timeout_s=0.03, delete_on_timeout=False)
    assert api.count("delete") == 0 and len(api.objects) == 1


def test_existing_failed_job_is_replaced() -> None:
    job = render("trainjob")
    api = FakeCustomObjects()
    api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", job)
    api.calls.clear()
    api.statuses = [cond("Failed", "DeadlineExceeded", "old"), RUNNING, cond("Complete")]
    result = launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    verbs = [v for v, _ in api.calls]
    assert verbs[:4] == ["get", "delete", "get", "create"]
    assert (result.created, result.condition) == (True, "Complete")


def test_existing_failed_job_is_reported_when_not_replacing() -> None:
    job = render("trainjob")
    api = FakeCustomObjects()
    api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", job)
    api.statuses = [cond("Failed", "DeadlineExceeded", "old")]
    with pytest.raises(RuntimeError, match="DeadlineExceeded: old"):
        launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5, replace_failed=False)
    assert api.count("delete") == 0


def test_create_conflict_attaches() -> None:
    job = render("trainjob")
    api = FakeCustomObjects([{}, cond("Complete")])
    api.create_error = api_error(409)
    # get -> 404 (absent), create -> 409 (another launcher won), then the job is watched
    api.objects[("trainer.kubeflow.org", NS, "trainjobs", job["metadata"]["name"])] = {}
    api.read_errors = [api_error(404)]
    result = launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    assert (result.created, result.condition) == (False, "Complete")


def test_missing_crd_names_the_operator() -> None:
    api = FakeCustomObjects()
    api.create_error = api_error(404)
    with pytest.raises(RuntimeError, match="install the Kubeflow Training Operator v1"):
        launch_and_wait(render("pytorchjob"), api=api, poll_s=0.001, timeout_s=5)


def test_strictly_rejected_field_is_explained() -> None:
    # What a Trainer v2.3 API server answers a v2.1 TrainJob under fieldValidation=Strict.
    api = FakeCustomObjects()
    api.create_error = api_error(
        400, ".spec.podTemplateOverrides: field not declared in schema (strict decoding error)"
    )
    job = render("trainjob", trainer_release="2.1")
    with pytest.raises(RuntimeError) as info:
        launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    text = str(info.value)
    assert "rejected TrainJob fashion-attr/fa-train-classifier-0123456789abcdef" in text
    assert ".spec.podTemplateOverrides: field not declared in schema" in text
    assert "FA_TRAINER_RELEASE" in text
    api.create_error = api_error(422, "spec.pytorchReplicaSpecs.Worker.replicas: Invalid value")
    with pytest.raises(RuntimeError, match=r"Training Operator v1\.7, v1\.8 or v1\.9"):
        launch_and_wait(render("pytorchjob"), api=api, poll_s=0.001, timeout_s=5)
    api.create_error = api_error(500)  # not the job's fault: the ApiException itself
    with pytest.raises(ApiException):
        launch_and_wait(render("pytorchjob"), api=api, poll_s=0.001, timeout_s=5)


def test_installed_kubernetes_client_sends_strict_field_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real CustomObjectsApi (not a fake) takes the keyword and puts it in the query.
    api_client = k8s_client.ApiClient()
    sent: dict[str, Any] = {}

    def call_api(*args: Any, **kw: Any) -> dict[str, Any]:
        path, method, _path_params, query = args[:4]
        sent.update(path=path, method=method, query=dict(query), body=kw["body"])
        return {}

    monkeypatch.setattr(api_client, "call_api", call_api)
    api = k8s_client.CustomObjectsApi(api_client)
    job = render("trainjob")
    api.create_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", job, field_validation="Strict"
    )
    assert (sent["path"], sent["method"]) == (
        "/apis/{group}/{version}/namespaces/{namespace}/{plural}",
        "POST",
    )
    assert sent["query"] == {"fieldValidation": "Strict"}
    assert sent["body"] == job


def test_transient_read_errors_are_retried_others_raise() -> None:
    job = render("trainjob")
    api = FakeCustomObjects([RUNNING, cond("Complete")])
    launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)  # creates
    api.statuses = [cond("Complete")]
    api.read_errors = [api_error(404), api_error(503), api_error(500), api_error(429)]
    api.objects.clear()
    result = launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    assert result.condition == "Complete"
    api.read_errors = [api_error(403)]
    with pytest.raises(ApiException):
        launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)
    api.read_errors = [api_error(503)] * 3
    with pytest.raises(ApiException):
        launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5, max_api_errors=1)


def test_job_deleted_while_waiting() -> None:
    job = render("trainjob")
    api = FakeCustomObjects([RUNNING])
    api.read_errors = [api_error(404)]  # absent at first: created
    original_create = api.create_namespaced_custom_object

    def create_then_vanish(*a: Any, **kw: Any) -> dict[str, Any]:
        body = original_create(*a, **kw)
        api.objects.clear()
        return body

    api.create_namespaced_custom_object = create_then_vanish  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="was deleted while the launcher waited"):
        launch_and_wait(job, api=api, poll_s=0.001, timeout_s=5)


def test_not_a_training_job_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a TrainJob"):
        launch_and_wait({"apiVersion": "batch/v1", "kind": "Job"}, api=FakeCustomObjects())


class FakeCore:
    def __init__(self, secrets: set[str], status: int = 404) -> None:
        self.secrets, self.status = secrets, status
        self.read: list[str] = []

    def read_namespaced_secret(self, name: str, namespace: str) -> object:
        self.read.append(name)
        if name not in self.secrets:
            raise api_error(self.status)
        return object()

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        assert label_selector == f"jobset.sigs.k8s.io/jobset-name={NAME}"
        pod = SimpleNamespace(metadata=SimpleNamespace(name="fa-node-0-0-abcde"))
        return SimpleNamespace(items=[pod])

    def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> str:
        assert kw["tail_lines"] == 50
        return "train_classifier: failed: loss is NaN"


def test_missing_secret_fails_before_submitting() -> None:
    api = FakeCustomObjects()
    core = FakeCore({"object-store-credentials"})
    missing = r"Secret\(s\) mlflow-credentials do not exist in namespace fashion-attr"
    with pytest.raises(RuntimeError, match=missing):
        launch_and_wait(render("trainjob"), api=api, core_api=core, poll_s=0.001, timeout_s=5)
    assert api.count("create") == 0
    # AWS_ENDPOINT_URL's ConfigMap is optional and ConfigMaps are not checked: Secrets only
    assert sorted(core.read) == ["mlflow-credentials", "object-store-credentials"]
    forbidden = FakeCore(set(), status=403)
    with pytest.raises(RuntimeError, match="service_account='pipeline-runner'"):
        launch_and_wait(render("trainjob"), api=api, core_api=forbidden, timeout_s=5)


def test_failure_copies_pod_log_tails(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeCustomObjects([cond("Failed", "JobSetFailed", "node-0 failed")])
    core = FakeCore({"object-store-credentials", "mlflow-credentials"})
    with (
        caplog.at_level(logging.ERROR, logger="fashion_attr.cluster"),
        pytest.raises(RuntimeError, match="JobSetFailed"),
    ):
        launch_and_wait(render("trainjob"), api=api, core_api=core, poll_s=0.001, timeout_s=5)
    assert "loss is NaN" in caplog.text and "fa-node-0-0-abcde" in caplog.text


def run_gan(api: FakeCustomObjects, kind: str = "trainjob") -> JobResult:
    return launch.run_step_on_cluster(
        "train_gan",
        ["--data", "d", "--out", "s3://b/runs/gan/fedcba9876543210", "--config", "s3://b/c.yaml"],
        key="fedcba9876543210",
        nodes=2,
        gpus_per_node=8,
        image=IMAGE,
        kind=kind,  # type: ignore[arg-type]
        api=api,
        poll_s=0.001,
        timeout_s=5,
    )


@pytest.fixture
def no_release_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FA_TRAINER_RELEASE", raising=False)


def test_run_step_on_cluster_names_the_job_from_the_key(
    monkeypatch: pytest.MonkeyPatch, no_release_env: None
) -> None:
    monkeypatch.setenv("FA_NAMESPACE", "team-a")
    api = FakeCustomObjects([cond("Complete")], crd=load_crd("v2.3.0"))
    result = run_gan(api)
    assert (result.name, result.namespace) == ("fa-train-gan-fedcba9876543210", "team-a")
    (stored,) = api.objects.values()
    assert stored["spec"]["trainer"]["args"][:4] == ["--nnodes", "2", "--nproc_per_node", "8"]
    assert "runtimePatches" in stored["spec"]
    assert api.create_kwargs == [{"field_validation": "Strict"}]


@pytest.mark.parametrize(
    ("tag", "release", "field"),
    [
        ("v2.1.0", "2.1", "podTemplateOverrides"),
        ("v2.2.1", "2.2", "runtimePatches"),
        ("v2.3.0", "2.3", "runtimePatches"),
    ],
)
def test_trainer_release_is_read_from_the_crd(
    tag: str, release: str, field: str, no_release_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    crd = load_crd(tag)
    assert launch.trainer_release_from_crd(crd) == release
    api = FakeCustomObjects([cond("Complete")], crd=crd)
    with caplog.at_level(logging.INFO, logger="fashion_attr.cluster"):
        run_gan(api)
    assert api.calls[0] == ("get-crd", "trainjobs.trainer.kubeflow.org")
    (stored,) = api.objects.values()
    assert field in stored["spec"]
    assert f"Kubeflow Trainer v{release} TrainJob API (spec.{field})" in caplog.text


def test_crd_is_read_through_the_real_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # get_cluster_custom_object on apiextensions.k8s.io/v1: the CRD as plain JSON.
    api_client = k8s_client.ApiClient()
    sent: dict[str, Any] = {}

    def call_api(*args: Any, **kw: Any) -> dict[str, Any]:
        sent.update(path=args[0], method=args[1], params=dict(args[2]))
        return load_crd("v2.2.1")

    monkeypatch.setattr(api_client, "call_api", call_api)
    assert launch.detect_trainer_release(k8s_client.CustomObjectsApi(api_client)) == "2.2"
    assert (sent["path"], sent["method"]) == ("/apis/{group}/{version}/{plural}/{name}", "GET")
    assert sent["params"] == {
        "group": "apiextensions.k8s.io",
        "version": "v1",
        "plural": "customresourcedefinitions",
        "name": "trainjobs.trainer.kubeflow.org",
    }


def test_trainer_v2_0_is_refused(no_release_env: None) -> None:
    crd = load_crd("v2.0.1")
    with pytest.raises(RuntimeError, match=r"Trainer v2\.0 is not supported.*cannot label"):
        launch.trainer_release_from_crd(crd)
    api = FakeCustomObjects(crd=crd)
    with pytest.raises(RuntimeError, match="NetworkPolicies training-peers and pipeline-egress"):
        run_gan(api)
    assert api.count("create") == 0


def test_missing_trainer_crd_says_install_or_use_pytorchjob(no_release_env: None) -> None:
    api = FakeCustomObjects()
    with pytest.raises(RuntimeError) as info:
        run_gan(api)
    text = str(info.value)
    assert "Kubeflow Trainer is not installed" in text and "trainjobs.trainer.kubeflow.org" in text
    assert "train_job_kind=pytorchjob" in text
    assert api.count("create") == 0


def test_unreadable_trainer_crd_names_the_rbac_or_the_variable(no_release_env: None) -> None:
    api = FakeCustomObjects(crd=load_crd("v2.3.0"))
    api.crd_errors = [api_error(403)]
    with pytest.raises(RuntimeError) as info:
        run_gan(api)
    text = str(info.value)
    assert "ClusterRole with verb get on apiextensions.k8s.io customresourcedefinitions" in text
    assert "resourceNames: trainjobs.trainer.kubeflow.org" in text
    assert "pipeline-runner" in text and "FA_TRAINER_RELEASE" in text
    api.crd_errors = [api_error(503), api_error(429)]  # transient: retried
    api.statuses = [cond("Complete")]
    assert run_gan(api).created is True


def test_unknown_trainjob_api_is_refused(no_release_env: None) -> None:
    crd = load_crd("v2.3.0")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["runtimePatches"]
    with pytest.raises(RuntimeError, match=r"none of runtimePatches.*'runtimeRef'"):
        launch.trainer_release_from_crd(crd)
    crd["spec"]["versions"][0]["name"] = "v1beta1"
    with pytest.raises(RuntimeError, match=r"does not serve trainer.kubeflow.org/v1alpha1"):
        launch.trainer_release_from_crd(crd)


@pytest.mark.parametrize(
    ("value", "field"),
    [("2.1", "podTemplateOverrides"), ("v2.2.1", "runtimePatches"), (" 2.3.0 ", "runtimePatches")],
)
def test_trainer_release_from_the_environment_skips_the_crd(
    value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FA_TRAINER_RELEASE", value)
    api = FakeCustomObjects([cond("Complete")])  # no CRD: it is not read
    run_gan(api)
    assert api.count("get-crd") == 0
    (stored,) = api.objects.values()
    assert field in stored["spec"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("2.0", "Trainer v2.0 is not supported"), ("v2.4.0", "'2.4' is not supported"), ("x", "'x'")],
)
def test_bad_trainer_release_variable(
    value: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FA_TRAINER_RELEASE", value)
    api = FakeCustomObjects()
    with pytest.raises(ValueError, match=re.escape(fragment)) as info:
        run_gan(api)
    assert str(info.value).startswith(f"FA_TRAINER_RELEASE={value!r}")
    assert api.calls == []


def test_pytorchjob_needs_no_trainer_release(no_release_env: None) -> None:
    api = FakeCustomObjects([cond("Succeeded")])
    assert run_gan(api, kind="pytorchjob").condition == "Succeeded"
    assert api.count("get-crd") == 0


def test_no_cluster_configuration_is_explained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(RuntimeError, match=r"no Kubernetes API configuration.*KUBECONFIG"):
        launch_and_wait(render("trainjob"), timeout_s=1)


@pytest.mark.parametrize(
    ("kind", "release"), [("trainjob", "2.1"), ("trainjob", "2.3"), ("pytorchjob", "2.3")]
)
def test_a_launchers_job_is_its_pods_and_has_a_deadline(kind: str, release: str) -> None:
    """Deleting the launcher pod deletes the job (Kubernetes garbage collection of dependents
    whose ownerReferences name it, same namespace); the job also ends at its deadline where the
    API has one (Trainer v2.2+: trainjob_types.go ActiveDeadlineSeconds; PyTorchJob:
    runPolicy.activeDeadlineSeconds; Trainer v2.1 has none)."""
    job = render(
        kind,
        trainer_release=release,
        owner={"name": "launcher-pod", "uid": "u-1"},
        deadline_s=3600,
    )
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": "v1", "kind": "Pod", "name": "launcher-pod", "uid": "u-1"}
    if kind == "pytorchjob":
        assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600
    else:
        assert job["spec"].get("activeDeadlineSeconds") == (None if release == "2.1" else 3600)


def test_tags_are_pulled_again_digests_are_not() -> None:
    pod = render("pytorchjob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    pinned = "registry.example.com/fashion-attr@sha256:" + "cd" * 32
    job = render("pytorchjob", image=pinned)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert (
        pod["containers"][0]["image"]
        == pinned
        == render("trainjob", image=pinned)["spec"]["trainer"]["image"]
    )


def test_the_launcher_pod_owns_the_job_only_in_its_own_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fashion_attr.cluster.submit import launcher_pod

    monkeypatch.setenv("FA_POD_NAME", "p")
    monkeypatch.setenv("FA_POD_UID", "u")
    monkeypatch.setenv("FA_POD_NAMESPACE", NS)
    assert launcher_pod(NS) == {"name": "p", "uid": "u"}
    assert launcher_pod("team-b") is None  # an ownerReference cannot cross namespaces
    monkeypatch.delenv("FA_POD_UID")
    assert launcher_pod(NS) is None  # not in a pipeline pod


def test_sigterm_deletes_the_job_the_launcher_waits_for(
    monkeypatch: pytest.MonkeyPatch, no_release_env: None
) -> None:
    """A cancelled run (Argo sends SIGTERM to the launcher's process group: workflow/signal/
    signal.go, argoexec emissary.go @v3.7.3) must not leave GPU nodes training: the launcher
    deletes its job first, with a short request timeout (it has about a second)."""
    monkeypatch.setenv("FA_TRAINER_RELEASE", "2.3")

    class Interrupted(FakeCustomObjects):
        def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
            obj = super().get_namespaced_custom_object(*args)
            if self.count("get") >= 3:
                raise KeyboardInterrupt  # what task_attempt's SIGTERM handler raises
            return obj

    api = Interrupted([{}, RUNNING, RUNNING, RUNNING])
    with pytest.raises(KeyboardInterrupt):
        run_gan(api)
    assert api.count("create") == 1 and api.count("delete") == 1
    assert api.objects == {}
    # Bounded: an API server that does not answer must not hold the launcher past Argo's kill.
    assert 0 < api.delete_kwargs[0]["_request_timeout"] <= 2


def test_the_pipeline_run_reaches_the_training_pods(
    monkeypatch: pytest.MonkeyPatch, no_release_env: None
) -> None:
    """Each pod's step nests its MLflow run under the pipeline's (FA_PIPELINE_RUN)."""
    monkeypatch.setenv("FA_TRAINER_RELEASE", "2.3")
    monkeypatch.setenv("FA_PIPELINE_RUN", "run-42")
    for kind in ("trainjob", "pytorchjob"):
        api = FakeCustomObjects([{}, cond("Complete" if kind == "trainjob" else "Succeeded")])
        run_gan(api, kind)
        job = next(iter(api.objects.values()))
        if kind == "trainjob":
            env = job["spec"]["trainer"]["env"]
        else:
            env = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
                "env"
            ]
        assert {"name": "FA_PIPELINE_RUN", "value": "run-42"} in env, kind


def test_a_launcher_that_attaches_becomes_an_owner_too() -> None:
    """A job made by an earlier run's pod must not be garbage-collected with that pod while
    this launcher waits for it (Kubernetes deletes a dependent when all owners are gone)."""
    first = render("trainjob", owner={"name": "old-pod", "uid": "u-old"})
    api = FakeCustomObjects([{}, RUNNING, cond("Complete")])
    api.create_namespaced_custom_object(*TRAINJOB_API, NS, "trainjobs", first)
    again = render("trainjob", owner={"name": "new-pod", "uid": "u-new"})
    launch_and_wait(again, api=api, poll_s=0.001, timeout_s=5)
    stored = next(iter(api.objects.values()))
    assert [r["uid"] for r in stored["metadata"]["ownerReferences"]] == ["u-old", "u-new"]
    assert api.count("create") == 1 and api.count("patch") == 1


TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1")


class FakePods:
    def __init__(self, pods: dict[str, tuple[str, str]]) -> None:
        self.pods = pods  # name -> (uid, phase)

    def read_namespaced_pod(self, name: str, namespace: str) -> Any:
        if name not in self.pods:
            raise api_error(404)
        uid, phase = self.pods[name]
        return SimpleNamespace(
            metadata=SimpleNamespace(uid=uid), status=SimpleNamespace(phase=phase)
        )


def test_orphaned_jobs_are_reaped_live_ones_kept() -> None:
    """A launcher killed before it could delete its job (Argo gives it about a second after
    SIGTERM) leaves the job training for nobody; the next run's validation reaps it."""
    from fashion_attr.cluster import reap_orphans

    api = FakeCustomObjects()
    jobs = {
        "fa-train-gan-aaaa": {"name": "gone-pod", "uid": "u1"},  # pod deleted
        "fa-train-gan-bbbb": {"name": "done-pod", "uid": "u2"},  # pod finished (cancelled run)
        "fa-train-gan-cccc": {"name": "live-pod", "uid": "u3"},  # running: keep
        "fa-train-gan-dddd": {"name": "reused-pod", "uid": "u-old"},  # same name, new uid
    }
    for name, owner in jobs.items():
        body = render("trainjob", name=name, owner=owner)
        api.create_namespaced_custom_object(
            "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs", body
        )
    pods = FakePods(
        {
            "done-pod": ("u2", "Failed"),
            "live-pod": ("u3", "Running"),
            "reused-pod": ("u9", "Running"),
        }
    )
    deleted = reap_orphans(NS, api=api, core_api=pods)
    assert sorted(deleted) == [
        "TrainJob/fa-train-gan-aaaa",
        "TrainJob/fa-train-gan-bbbb",
        "TrainJob/fa-train-gan-dddd",
    ]
    assert [k[-1] for k in api.objects] == ["fa-train-gan-cccc"]
