"""Offline checks of the cluster side (k8s/): no cluster, no network.

Each overlay is rendered with ``kubectl kustomize`` and every object is validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail). On top of the
schemas: the security settings of every container, who may reach MLflow, MinIO and PostgreSQL
(a small evaluator of NetworkPolicy semantics), that no credential is committed, that every
referenced Secret key is documented, the RBAC of the pipeline, the object-store policies, and
the multi-node training templates (CRDs the schemas do not know: checked field by field, their
pod parts validated as core Pods).
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = sorted(
    p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)
#: The overlays that install the services (MLflow, the object store) in fashion-attr;
#: kfp-standalone adds only what runs of a standalone KFP need in kubeflow.
SERVICE_OVERLAYS = ["cloud", "minio"]
#: Where each overlay puts its namespaced objects.
OVERLAY_NAMESPACE = {"cloud": "fashion-attr", "minio": "fashion-attr", "kfp-standalone": "kubeflow"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
TRAINING = K8S / "training"
SECRETS_DIR = K8S / "secrets"
NAMESPACE = "fashion-attr"
# The oldest Kubernetes minor the manifests promise to work on, and the newest schema known.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
PIPELINE_POD = {"app.kubernetes.io/part-of": "fashion-attr-pipeline"}
SERVING_POD = {"app.kubernetes.io/component": "serving"}
OTHER_POD = {"app": "something-else"}
SECRET_NAME_RE = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.I)
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH, so the kustomize overlays cannot be rendered; install "
    "kubectl >= 1.22 (kustomize v4.2+) to run these checks",
)


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """Objects of `kubectl kustomize k8s/overlays/<overlay>`."""
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (
        f"kubectl kustomize k8s/overlays/{overlay} failed:\n{proc.stderr}\n"
        "The kustomizations use `labels` and `patches`: kubectl >= 1.22 is needed "
        "(Debian bookworm's kubernetes-client 1.20 is too old)."
    )
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload object (a Pod's own spec, or its template's)."""
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def container_violations(spec: dict[str, Any], where: str) -> list[str]:
    """Every way a pod spec's containers miss the project's security baseline.

    Pod-level runAsNonRoot/runAsUser/seccompProfile count for containers that do not set them.
    """
    pod_sc = spec.get("securityContext", {})
    problems = []
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        at = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"{at}: runAsNonRoot is not true")
        if not sc.get("runAsUser", pod_sc.get("runAsUser")):
            problems.append(f"{at}: runAsUser is unset or 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{at}: privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{at}: capabilities.drop lacks ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{at}: adds capabilities")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: readOnlyRootFilesystem is not true")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{at}: seccompProfile is not RuntimeDefault")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in resources.get(kind, {}):
                    problems.append(f"{at}: no {kind}.{res}")
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "@sha256:" not in image and (not tag or tag == "latest"):
            problems.append(f"{at}: image {image!r} is not pinned to a tag")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if sc.get("readOnlyRootFilesystem") and "/tmp" not in mounts:
            problems.append(f"{at}: read-only root but no volume at /tmp")
    return problems


def test_container_checker_reports_each_weakness() -> None:
    insecure = {
        "containers": [
            {
                "name": "app",
                "image": "example/app:latest",
                "securityContext": {"privileged": True, "capabilities": {"add": ["NET_ADMIN"]}},
            }
        ]
    }
    assert container_violations(insecure, "pod x") == [
        f"pod x container app: {p}"
        for p in (
            "runAsNonRoot is not true",
            "runAsUser is unset or 0",
            "allowPrivilegeEscalation is not false",
            "privileged",
            "capabilities.drop lacks ALL",
            "adds capabilities",
            "readOnlyRootFilesystem is not true",
            "seccompProfile is not RuntimeDefault",
            "no requests.cpu",
            "no requests.memory",
            "no limits.cpu",
            "no limits.memory",
            "image 'example/app:latest' is not pinned to a tag",
        )
    ]
    assert (
        container_violations(
            {
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "app",
                        "image": "registry:5000/team/app:1.2.3",
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "resources": {
                            "requests": {"cpu": "1", "memory": "1Gi"},
                            "limits": {"cpu": "1", "memory": "1Gi"},
                        },
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
            },
            "pod y",
        )
        == []
    )


# --------------------------------------------------------------------------- rendering


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_match_kubernetes_schema(overlay: str, version: str) -> None:
    objects = render(overlay)
    assert objects, f"overlay {overlay} rendered nothing"
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{overlay}: {name} is invalid for Kubernetes {version}: {err.message}")
        if obj["kind"] not in CLUSTER_SCOPED:
            namespace = obj["metadata"].get("namespace")
            assert namespace == OVERLAY_NAMESPACE[overlay], f"{overlay}: {name} namespace"


def test_overlays_exist() -> None:
    assert OVERLAYS == ["cloud", "kfp-standalone", "minio"]


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_every_container_is_locked_down(overlay: str) -> None:
    workloads = [o for o in render(overlay) if o["kind"] in WORKLOAD_KINDS]
    assert workloads
    problems = []
    for obj in workloads:
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        problems += container_violations(spec, where)
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        if obj["kind"] in LONG_RUNNING:
            for c in spec["containers"]:
                if "readinessProbe" not in c or "livenessProbe" not in c:
                    problems.append(f"{where}: container {c['name']} lacks a probe")
    assert problems == []


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_credentials_in_manifests(overlay: str) -> None:
    for obj in render(overlay):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Secret":
            assert not obj.get("data") and not obj.get("stringData"), f"{name} carries values"
        if obj["kind"] == "ConfigMap":
            for key in obj.get("data", {}):
                assert not SECRET_NAME_RE.search(key), f"{name}: {key} belongs in a Secret"
        if obj["kind"] in WORKLOAD_KINDS:
            for c in pod_spec(obj)["containers"]:
                for env in c.get("env", []):
                    # *_FILE variables name a file of a mounted Secret, not a value.
                    if SECRET_NAME_RE.search(env["name"]) and not env["name"].endswith("_FILE"):
                        assert "valueFrom" in env, f"{name}: {env['name']} is a literal value"


# --------------------------------------------------------------------------- MLflow


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_mlflow_server_runs_with_auth_and_health_probes(overlay: str) -> None:
    (deploy,) = [
        o
        for o in render(overlay)
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow"
    ]
    (container,) = pod_spec(deploy)["containers"]
    mlflow_pin = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("mlflow"))
    # The server must speak the same MLflow version as the client the steps install.
    assert container["image"].endswith(":v" + mlflow_pin.split("==")[1] + "-full")
    assert container["command"] == ["mlflow"]
    assert container["args"][0] == "server"
    assert "--app-name=basic-auth" in container["args"]
    assert "--serve-artifacts" in container["args"]
    assert not any("backend-store-uri" in a for a in container["args"]), "DB URI must not be argv"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-db",
        "key": "uri",
    }
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/mlflow-auth/basic_auth.ini"
    env_from = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert env_from == {
        "mlflow-config",
        "object-store-config",
        "mlflow-auth",
        "mlflow-object-store-credentials",
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    volumes = {v["name"]: v for v in pod_spec(deploy)["volumes"]}
    assert volumes["auth-config"]["secret"]["secretName"] == "mlflow-auth-config"


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_pipeline_config_points_at_the_mlflow_service(overlay: str) -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(overlay)}
    uri = objects["ConfigMap", "pipeline-config"]["data"]["MLFLOW_TRACKING_URI"]
    service = objects["Service", "mlflow"]
    port = service["spec"]["ports"][0]["port"]
    assert uri == f"http://mlflow.{NAMESPACE}.svc.cluster.local:{port}"
    hosts = objects["ConfigMap", "mlflow-config"]["data"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"mlflow.{NAMESPACE}.svc.cluster.local:{port}" in hosts


# --------------------------------------------------------------------------- networking


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Label-selector semantics (matchLabels AND matchExpressions; {} selects all)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def _peer_matches(peer: dict[str, Any], labels: dict[str, str], namespace: str) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": namespace}
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != NAMESPACE:
        return False
    return _selects(peer.get("podSelector", {}), labels)


def _port_matches(ports: list[dict[str, Any]] | None, port: int) -> bool:
    return not ports or any(p.get("port") == port for p in ports)


def allowed(
    policies: list[dict[str, Any]],
    src: dict[str, str],
    dst: dict[str, str],
    port: int,
    src_namespace: str = NAMESPACE,
    dst_namespace: str = NAMESPACE,
) -> bool:
    """Whether the namespace's NetworkPolicies let pod src open a connection to pod dst.

    A pod of NAMESPACE is isolated for a direction when any policy of that type selects it;
    it then needs a rule matching the peer and the port. Pods of other namespaces are under
    policies we do not ship, taken as open.
    """

    def direction_ok(kind: str, pod: dict[str, str], peer: dict[str, str], peer_ns: str) -> bool:
        isolating = [
            p
            for p in policies
            if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod)
        ]
        if not isolating:
            return True
        key, side = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
        for policy in isolating:
            for rule in policy["spec"].get(key, []):
                peers = rule.get(side)
                if _port_matches(rule.get("ports"), port) and (
                    not peers or any(_peer_matches(q, peer, peer_ns) for q in peers)
                ):
                    return True
        return False

    ingress_ok = dst_namespace != NAMESPACE or direction_ok("Ingress", dst, src, src_namespace)
    egress_ok = src_namespace != NAMESPACE or direction_ok("Egress", src, dst, dst_namespace)
    return ingress_ok and egress_ok


def test_network_policy_evaluator_follows_kubernetes_semantics() -> None:
    deny = {"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    web = {
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": 80}],
                }
            ],
        }
    }
    client, web_pod = {"role": "client"}, {"app": "web"}
    assert allowed([], {}, web_pod, 80)  # no policy: open
    assert not allowed([deny], client, web_pod, 80)
    assert allowed([deny, web], client, web_pod, 80)
    assert not allowed([deny, web], client, web_pod, 81)
    assert not allowed([deny, web], {"role": "other"}, web_pod, 80)
    # a bare podSelector peer only matches pods of the policy's own namespace
    assert not allowed([deny, web], client, web_pod, 80, src_namespace="elsewhere")
    egress = {
        "spec": {
            "podSelector": {"matchLabels": {"role": "client"}},
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}],
        }
    }
    assert allowed([egress], client, {"k8s-app": "kube-dns"}, 53, dst_namespace="kube-system")
    assert not allowed([egress], client, web_pod, 80)
    assert allowed([egress], {"role": "server"}, web_pod, 80)


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_mlflow_is_reachable_only_by_pipeline_and_serving_pods(overlay: str) -> None:
    policies = [o for o in render(overlay) if o["kind"] == "NetworkPolicy"]
    assert any(
        p["spec"]["podSelector"] == {}
        and p["spec"]["policyTypes"] == ["Ingress"]
        and not p["spec"].get("ingress")
        for p in policies
    ), "no default-deny ingress policy"
    mlflow = {"app.kubernetes.io/name": "mlflow"}
    assert allowed(policies, PIPELINE_POD, mlflow, 5000)
    assert allowed(policies, SERVING_POD, mlflow, 5000)
    assert not allowed(policies, OTHER_POD, mlflow, 5000)
    assert not allowed(policies, PIPELINE_POD, mlflow, 22)
    assert not allowed(policies, {}, mlflow, 5000, src_namespace="kubeflow")
    # Kubeflow's own pods in the namespace stay reachable from the kubeflow namespace.
    assert allowed(policies, {}, {"app": "ml-pipeline-ui-artifact"}, 3000, src_namespace="kubeflow")


@needs_kubectl
def test_object_store_and_database_are_reachable_only_by_their_clients() -> None:
    policies = [o for o in render("minio") if o["kind"] == "NetworkPolicy"]
    minio = {"app.kubernetes.io/name": "minio"}
    postgres = {"app.kubernetes.io/name": "postgresql"}
    mlflow = {"app.kubernetes.io/name": "mlflow"}
    assert allowed(policies, PIPELINE_POD, minio, 9000)
    assert allowed(policies, mlflow, minio, 9000)
    assert allowed(policies, SERVING_POD, minio, 9000)
    assert allowed(policies, {"app.kubernetes.io/name": "minio-setup"}, minio, 9000)
    assert not allowed(policies, OTHER_POD, minio, 9000)
    assert not allowed(policies, PIPELINE_POD, minio, 9001)  # console: port-forward only
    assert allowed(policies, mlflow, postgres, 5432)
    assert not allowed(policies, PIPELINE_POD, postgres, 5432)
    assert not allowed(policies, OTHER_POD, postgres, 5432)


@needs_kubectl
def test_pipeline_egress_allows_dns_mlflow_object_store_and_peers_only() -> None:
    policies = [o for o in render("minio") if o["kind"] == "NetworkPolicy"]
    training = {**PIPELINE_POD, "app.kubernetes.io/component": "training"}
    kube_dns = {"k8s-app": "kube-dns"}
    assert allowed(policies, PIPELINE_POD, kube_dns, 53, dst_namespace="kube-system")
    assert allowed(policies, PIPELINE_POD, {"app": "ml-pipeline"}, 8888, dst_namespace="kubeflow")
    assert not allowed(policies, PIPELINE_POD, OTHER_POD, 8080, dst_namespace="default")
    assert allowed(policies, PIPELINE_POD, {"app.kubernetes.io/name": "mlflow"}, 5000)
    assert allowed(policies, PIPELINE_POD, {"app.kubernetes.io/name": "minio"}, 9000)
    assert allowed(policies, training, training, 29500)  # torchrun rendezvous / NCCL
    assert not allowed(policies, PIPELINE_POD, {"app.kubernetes.io/name": "postgresql"}, 5432)
    assert not allowed(policies, PIPELINE_POD, OTHER_POD, 8080)


# --------------------------------------------------------------------------- RBAC


@needs_kubectl
def test_service_accounts_of_the_pipeline_and_the_server() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render("minio")}
    assert objects["ServiceAccount", "pipeline-runner"]["automountServiceAccountToken"] is True
    assert objects["ServiceAccount", "mlflow"]["automountServiceAccountToken"] is False
    training = objects["ServiceAccount", "fashion-attr-training"]
    assert training["automountServiceAccountToken"] is False
    # Standalone KFP brings its own pipeline-runner: the overlay must not replace it.
    standalone = {(o["kind"], o["metadata"]["name"]) for o in render("kfp-standalone")}
    assert ("ServiceAccount", "pipeline-runner") not in standalone
    assert ("ServiceAccount", "fashion-attr-training") in standalone


@needs_kubectl
def test_standalone_pipeline_pods_reach_mlflow_and_the_object_store() -> None:
    policies = [o for o in render("minio") if o["kind"] == "NetworkPolicy"]
    for target, port in (
        ({"app.kubernetes.io/name": "mlflow"}, 5000),
        ({"app.kubernetes.io/name": "minio"}, 9000),
    ):
        assert allowed(policies, PIPELINE_POD, target, port, src_namespace="kubeflow"), target
        assert not allowed(policies, OTHER_POD, target, port, src_namespace="kubeflow"), target
    config = {
        o["metadata"]["name"]: o["data"]
        for o in render("kfp-standalone")
        if o["kind"] == "ConfigMap"
    }
    assert config["pipeline-config"]["MLFLOW_TRACKING_URI"].startswith(
        "http://mlflow.fashion-attr.svc"
    )
    assert config["object-store-config"]["AWS_ENDPOINT_URL"].startswith(
        "http://minio.fashion-attr.svc"
    )


# --------------------------------------------------------------------------- secrets


def _example_env(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
            pairs[key] = value
    return pairs


def documented_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from k8s/secrets/*.example.env and basic_auth.example.ini."""
    secrets = {
        p.name.removesuffix(".example.env"): set(_example_env(p))
        for p in SECRETS_DIR.glob("*.example.env")
    }
    secrets["mlflow-auth-config"] = {"basic_auth.ini"}
    return secrets


def test_secret_templates_hold_no_values() -> None:
    examples = sorted(SECRETS_DIR.glob("*.example.env"))
    assert len(examples) == 7
    for path in examples:
        for key, value in _example_env(path).items():
            if (SECRET_NAME_RE.search(key) and not key.endswith("ACCESS_KEY_ID")) or key == "uri":
                assert value == "", f"{path.name}: {key} must be empty in a committed template"
    ini = configparser.ConfigParser()
    ini.read(SECRETS_DIR / "basic_auth.example.ini")
    assert ini["mlflow"]["database_uri"] == ""
    assert "admin_password" not in ini["mlflow"]
    assert ini["mlflow"]["default_permission"] in {"READ", "NO_PERMISSIONS"}


def _secret_refs(spec: dict[str, Any]) -> set[tuple[str, str | None]]:
    """(secret, key) pairs a pod spec reads; key None for a whole-secret reference."""
    refs: set[tuple[str, str | None]] = set()
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                refs.add((src["secretRef"]["name"], None))
    for vol in spec.get("volumes", []):
        if "secret" in vol:
            refs.add((vol["secret"]["secretName"], None))
    return refs


TRAINJOB_EXAMPLES = {"trainjob-v2.1.yaml": "2.1", "trainjob-v2.2-v2.3.yaml": "2.3"}


def _trainjob_pod_part(job: dict[str, Any]) -> dict[str, Any]:
    """The per-pod part of a TrainJob (v2.1 podTemplateOverrides, v2.2+ runtimePatches)."""
    if "podTemplateOverrides" in job["spec"]:
        (override,) = job["spec"]["podTemplateOverrides"]
        assert override["targetJobs"] == [{"name": "node"}]
        return override
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    return replicated["template"]["spec"]["template"]


def training_pod_specs() -> dict[str, dict[str, Any]]:
    """Pod specs of the generated job examples (a TrainJob's assembled as the Trainer would)."""
    specs = {}
    for name in TRAINJOB_EXAMPLES:
        trainjob = load_yaml(TRAINING / name)
        trainer, part = trainjob["spec"]["trainer"], _trainjob_pod_part(trainjob)
        (node_mounts,) = part["spec"]["containers"]
        specs[f"TrainJob {name}"] = {
            "serviceAccountName": part["spec"]["serviceAccountName"],
            "nodeSelector": part["spec"]["nodeSelector"],
            "tolerations": part["spec"]["tolerations"],
            "volumes": part["spec"]["volumes"],
            "containers": [
                {
                    "name": node_mounts["name"],
                    "image": trainer["image"],
                    "command": trainer["command"],
                    "args": trainer["args"],
                    "env": trainer["env"],
                    "resources": trainer["resourcesPerNode"],
                    "volumeMounts": node_mounts["volumeMounts"],
                }
            ],
        }
    pytorchjob = load_yaml(TRAINING / "pytorchjob.yaml")
    for role, replica in pytorchjob["spec"]["pytorchReplicaSpecs"].items():
        specs[f"PyTorchJob {role}"] = replica["template"]["spec"]
    return specs


@needs_kubectl
def test_every_referenced_secret_key_is_documented() -> None:
    documented = documented_secrets()
    specs = [
        pod_spec(o) for ov in SERVICE_OVERLAYS for o in render(ov) if o["kind"] in WORKLOAD_KINDS
    ]
    specs += list(training_pod_specs().values())
    refs = set().union(*(_secret_refs(s) for s in specs))
    assert refs, "no secret references found"
    for name, key in sorted(refs, key=str):
        assert name in documented, f"Secret {name} is used but has no k8s/secrets template"
        assert key is None or key in documented[name], f"Secret {name} key {key} not documented"
    used_names = {name for name, _ in refs}
    assert used_names == set(documented), "templates for secrets nothing uses"


# --------------------------------------------------------------------------- object store


def _policy_allows(policy: dict[str, Any], action: str, resource: str, prefix: str = "") -> bool:
    for stmt in policy["Statement"]:
        if stmt["Effect"] != "Allow" or action not in stmt["Action"]:
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in stmt["Resource"]):
            continue
        cond = stmt.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if cond is None or any(fnmatch.fnmatchcase(prefix, c) for c in cond):
            return True
    return False


def test_bucket_policies_grant_each_client_only_its_prefixes() -> None:
    pipeline = json.loads((K8S / "overlays/minio/pipeline-policy.json").read_text())
    mlflow = json.loads((K8S / "overlays/minio/mlflow-policy.json").read_text())
    obj = "arn:aws:s3:::fashion-attr/{}"
    bucket = "arn:aws:s3:::fashion-attr"
    assert _policy_allows(pipeline, "s3:GetObject", obj.format("catalog/2026-11/list_attr_img.txt"))
    assert not _policy_allows(pipeline, "s3:PutObject", obj.format("catalog/x.jpg"))
    assert not _policy_allows(pipeline, "s3:DeleteObject", obj.format("catalog/x.jpg"))
    for prefix in ("datasets", "runs"):
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            assert _policy_allows(pipeline, action, obj.format(f"{prefix}/v1/shard-00000.tar"))
    assert not _policy_allows(pipeline, "s3:GetObject", obj.format("mlflow-artifacts/1/a"))
    assert _policy_allows(pipeline, "s3:ListBucket", bucket, prefix="datasets/v1/")
    assert not _policy_allows(pipeline, "s3:ListBucket", bucket, prefix="mlflow-artifacts/")
    assert not _policy_allows(pipeline, "s3:ListBucket", bucket, prefix="")
    assert _policy_allows(mlflow, "s3:PutObject", obj.format("mlflow-artifacts/1/model.pt"))
    assert not _policy_allows(mlflow, "s3:GetObject", obj.format("datasets/v1/shard-00000.tar"))
    assert not _policy_allows(mlflow, "s3:ListBucket", bucket, prefix="runs/")


@needs_kubectl
def test_minio_overlay_wires_endpoint_bucket_and_setup_job() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render("minio")}
    config = objects["ConfigMap", "object-store-config"]["data"]
    minio_port = objects["Service", "minio"]["spec"]["ports"][0]["port"]
    endpoint = f"http://minio.{NAMESPACE}.svc.cluster.local:{minio_port}"
    assert config["AWS_ENDPOINT_URL"] == endpoint == config["MLFLOW_S3_ENDPOINT_URL"]
    destination = objects["ConfigMap", "mlflow-config"]["data"]["MLFLOW_ARTIFACTS_DESTINATION"]
    (setup,) = pod_spec(objects["Job", "minio-setup"])["containers"]
    env = {e["name"]: e.get("value") for e in setup["env"]}
    assert destination.startswith(f"s3://{env['BUCKET']}/mlflow-artifacts")
    # the setup job and MinIO must be one image: mc comes with the server image
    (server,) = pod_spec(objects["Deployment", "minio"])["containers"]
    assert setup["image"] == server["image"]
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT[\d-]+Z", server["image"])
    cloud = {(o["kind"], o["metadata"]["name"]): o for o in render("cloud")}
    assert "AWS_ENDPOINT_URL" not in cloud["ConfigMap", "object-store-config"]["data"]
    assert not any(kind == "Deployment" and name == "minio" for kind, name in cloud)


# --------------------------------------------------------------------------- training jobs


def test_training_templates_pods_are_valid_kubernetes() -> None:
    for name, spec in training_pod_specs().items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}, "spec": spec}
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(pod, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{name} pod template invalid for {version}: {err.message}")


def _check_gpu_pod(name: str, spec: dict[str, Any], gpus: int) -> None:
    assert spec["nodeSelector"] == {"node-pool": "gpu"}, name
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ], name
    assert spec["serviceAccountName"] == "fashion-attr-training", name
    volumes = {v["name"]: v for v in spec["volumes"]}
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", name
    # the step's config travels as --config s3://..., not as a ConfigMap
    assert not any("configMap" in v for v in volumes.values()), name
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == gpus, name
    import fashion_attr

    version = fashion_attr.__version__  # the one version source
    assert container["image"].endswith(f"/fashion-attr:{version}"), (
        f"{name}: image tag != {version}"
    )
    assert container["command"] == ["torchrun"], name
    args = container["args"]
    module = args[args.index("-m") + 1]
    assert module == "fashion_attr.steps.train_classifier", name
    assert args[args.index("--config") + 1].startswith("s3://"), name


@pytest.mark.parametrize("name", list(TRAINJOB_EXAMPLES))
def test_trainjob_template(name: str) -> None:
    job = load_yaml(TRAINING / name)
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["metadata"]["namespace"] == NAMESPACE
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    assert len(job["metadata"]["name"]) <= 63
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert job["spec"]["trainer"]["numNodes"] >= 2
    labels = _trainjob_pod_part(job)["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "training"
    assert labels["app.kubernetes.io/part-of"] == "fashion-attr-pipeline"
    _check_gpu_pod("TrainJob", training_pod_specs()[f"TrainJob {name}"], gpus=1)


def test_pytorchjob_template() -> None:
    job = load_yaml(TRAINING / "pytorchjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    # Master and Worker differ in their role only: torchrun's rendezvous makes them peers.
    assert replicas["Master"]["template"] == replicas["Worker"]["template"]
    template = replicas["Master"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "training"
    spec = template["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "pytorch"  # the operator finds its container by this name
    assert container["ports"] == [
        {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}
    ]
    args = container["args"]
    for flag, value in (
        ("--nnodes", "2"),
        ("--node_rank", "$(RANK)"),
        ("--master_addr", "$(MASTER_ADDR)"),
        ("--master_port", "$(MASTER_PORT)"),
    ):
        assert args[args.index(flag) + 1] == value
    _check_gpu_pod("PyTorchJob", spec, gpus=1)
    assert container_violations(spec, "PyTorchJob") == []
    assert spec["automountServiceAccountToken"] is False


def test_training_step_module_exists() -> None:
    path = ROOT / "components/fashion_attr/steps/train_classifier.py"
    assert path.is_file(), (
        f"k8s/training/*.yaml run `torchrun -m fashion_attr.steps.train_classifier`, but {path} "
        "does not exist: fix the module name in the launcher or add the step"
    )
