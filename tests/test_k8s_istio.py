"""Multi-user Kubeflow with Istio: the pipeline's sidecar-less pods reach MLflow and MinIO.

No Istio control plane runs here. The upstream rules that decide whether a request of a
pipeline pod reaches MLflow or MinIO in a profile namespace are encoded below as data and a
small evaluator, each citing its source, and checked against the rendered overlays:

* Injection. The Kubeflow profile controller labels every profile namespace
  ``istio-injection: enabled`` (kubeflow/dashboard v2.0.0,
  components/profile-controller/controllers/profile_controller.go, Reconcile: "inject istio
  sidecar to all pods in target namespace by default"). A pod's own
  ``sidecar.istio.io/inject`` decides first, the label winning over the annotation
  (istio/istio pkg/kube/inject/inject.go injectRequired: "The label is the new API; if both
  are present we prefer the label"; the default injection webhooks' objectSelector skips
  pods labelled "false" before injectRequired runs).
* Pipeline pods. KFP backend 2.15.0-2.17.0 annotates every pod of a run
  ``sidecar.istio.io/inject: "false"`` unless the key is set
  (kubeflow/pipelines backend/src/apiserver/template/v2_template.go,
  ``executionSpec.SetAnnotationsToAllTemplatesIfKeyNotExist(util.AnnotationKeyIstioSidecarInject,
  util.AnnotationValueIstioSidecarInjectDisabled)``: 2.15.0 l.147, 2.16.0 l.153, 2.17.0
  ~l.409). Their requests are plain text, with no mesh identity.
* Authorization. kubeflow/manifests v1.11.0 installs ``global-deny-all`` in istio-system
  (common/istio/istio-install/base/deny_all_authorizationpolicy.yaml, ``spec: {}``): every
  sidecar-injected workload of the mesh denies what no ALLOW policy allows. The profile
  controller adds ``ns-owner-access-istio`` to the profile namespace (profile_controller.go
  getAuthorizationPolicy, :func:`ns_owner_access_istio`). Its principals and
  ``source.namespace`` come from the peer's mTLS certificate: plain text never matches
  them (Istio advisory ISTIO-SECURITY-2021-004), so a sidecar-less client is denied with
  HTTP 403 "RBAC: access denied" by any sidecar-injected server of the namespace.
* mTLS. kubeflow/manifests v1.10-v1.11 ship no STRICT PeerAuthentication: the mesh default,
  PERMISSIVE, accepts plain text. A sidecar-injected client sends plain text to a workload
  without a sidecar (Istio's auto mTLS).
* Enforcement. AuthorizationPolicy and PeerAuthentication are enforced by the server's own
  proxy: a pod without a sidecar is outside both.

Hence the design (k8s/README.md, "Multi-user Kubeflow with Istio"): MLflow, MinIO,
PostgreSQL and the minio-setup Job run without sidecars (pod label
``sidecar.istio.io/inject: "false"``), and the NetworkPolicies, whose admissions are pinned
here client by client, are their guard.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from test_k8s_manifests import (
    NAMESPACE,
    PIPELINE_POD,
    SERVICE_OVERLAYS,
    TRAINING,
    TRAINJOB_EXAMPLES,
    _trainjob_pod_part,
    allowed,
    load_yaml,
    needs_kubectl,
    render,
)

ROOT = Path(__file__).resolve().parents[1]
INJECT = "sidecar.istio.io/inject"
#: What KFP backend 2.15.0-2.17.0 puts on every pod of a run (v2_template.go, see above).
KFP_POD_ANNOTATIONS = {INJECT: "false"}
#: What the profile controller puts on a profile namespace (profile_controller.go Reconcile).
PROFILE_NAMESPACE_LABELS = {"istio-injection": "enabled"}
#: Namespace labels in a Kubeflow install: kubeflow runs KFP with sidecars; istio-system's
#: gateway is injected by its own install.
NAMESPACE_LABELS = {
    NAMESPACE: PROFILE_NAMESPACE_LABELS,
    "kubeflow": {"istio-injection": "enabled"},
    "istio-system": {},
}
OWNER = "owner@example.com"
USERID_HEADER = "kubeflow-userid"  # the profile controller's userid-header in kubeflow/manifests
#: The workloads each overlay runs in the profile namespace: the servers and minio-setup.
SERVER_WORKLOADS = {
    "cloud": {"Deployment/mlflow"},
    "minio": {
        "Deployment/mlflow",
        "Deployment/minio",
        "StatefulSet/postgresql",
        "Job/minio-setup",
    },
}


def ns_owner_access_istio(namespace: str, owner: str) -> dict[str, Any]:
    """The AuthorizationPolicy the profile controller writes into a profile namespace.

    kubeflow/dashboard v2.0.0 components/profile-controller/controllers/profile_controller.go
    getAuthorizationPolicy (default principals; UserIdPrefix empty).
    """
    return {
        "metadata": {"name": "ns-owner-access-istio", "namespace": namespace},
        "spec": {
            "action": "ALLOW",
            "rules": [
                {
                    "when": [{"key": f"request.headers[{USERID_HEADER}]", "values": [owner]}],
                    "from": [
                        {
                            "source": {
                                "principals": [
                                    "cluster.local/ns/istio-system/sa/"
                                    "istio-ingressgateway-service-account",
                                    "cluster.local/ns/kubeflow/sa/ml-pipeline-ui",
                                ]
                            }
                        }
                    ],
                },
                {"when": [{"key": "source.namespace", "values": [namespace]}]},
                {"to": [{"operation": {"paths": ["/healthz", "/metrics", "/wait-for-drain"]}}]},
                {
                    "from": [
                        {
                            "source": {
                                "principals": [
                                    "cluster.local/ns/kubeflow/sa/notebook-controller-service-account"
                                ]
                            }
                        }
                    ],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["*/api/kernels"]}}],
                },
            ],
        },
    }


#: kubeflow/manifests v1.11.0 common/istio/istio-install/base/deny_all_authorizationpolicy.yaml
GLOBAL_DENY_ALL = {"metadata": {"name": "global-deny-all", "namespace": "istio-system"}, "spec": {}}
KUBEFLOW_POLICIES = [GLOBAL_DENY_ALL, ns_owner_access_istio(NAMESPACE, OWNER)]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    service_account: str = "default"


@dataclass(frozen=True)
class Request:
    """An HTTP request (path set) or a plain TCP connection (path None)."""

    path: str | None = None
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)


def has_sidecar(pod: Pod) -> bool:
    """Whether Istio injects a sidecar into the pod (istio pkg/kube/inject/inject.go)."""
    choice = pod.labels.get(INJECT, pod.annotations.get(INJECT, ""))
    if choice in {"true", "false"}:
        return choice == "true"
    return NAMESPACE_LABELS.get(pod.namespace, {}).get("istio-injection") == "enabled"


def _glob(patterns: list[str], value: str | None) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _rule_matches(rule: dict[str, Any], peer: dict[str, str | None], req: Request) -> bool:
    """One AuthorizationPolicy rule (from AND to AND when; each list ORs its entries)."""
    if "from" in rule:
        sources = [f["source"] for f in rule["from"]]
        if not any(
            ("principals" not in s or _glob(s["principals"], peer["principal"]))
            and ("namespaces" not in s or _glob(s["namespaces"], peer["namespace"]))
            for s in sources
        ):
            return False
    if "to" in rule:
        ops = [t["operation"] for t in rule["to"]]
        if not any(
            ("paths" not in op or _glob(op["paths"], req.path))
            and ("methods" not in op or (req.path is not None and req.method in op["methods"]))
            for op in ops
        ):
            return False
    for cond in rule.get("when", []):
        key = cond["key"]
        if key == "source.namespace":
            value = peer["namespace"]
        elif key == "source.principal":
            value = peer["principal"]
        elif key.startswith("request.headers["):
            value = None if req.path is None else req.headers.get(key[16:-1])
        else:
            raise AssertionError(f"condition {key} is not modelled")
        if not _glob(cond["values"], value):
            return False
    return True


def mesh_allows(
    src: Pod,
    dst: Pod,
    req: Request,
    policies: list[dict[str, Any]] = KUBEFLOW_POLICIES,
    mtls_mode: str = "PERMISSIVE",
) -> bool:
    """Whether Istio lets src's request reach dst (HTTP 403 / connection reset otherwise).

    Only dst's proxy enforces anything. A client with a sidecar talks mTLS to a server with
    one, and carries its identity; a client without one sends plain text, no identity.
    Policies of istio-system apply mesh-wide; an ALLOW policy with no rules matches nothing;
    once any ALLOW policy applies, a request no ALLOW rule matches is denied.
    """
    if not has_sidecar(dst):
        return True
    mutual_tls = has_sidecar(src)
    if mtls_mode == "STRICT" and not mutual_tls:
        return False
    peer = {
        "principal": (
            f"cluster.local/ns/{src.namespace}/sa/{src.service_account}" if mutual_tls else None
        ),
        "namespace": src.namespace if mutual_tls else None,
    }
    applying = [
        p
        for p in policies
        if p["metadata"]["namespace"] in {"istio-system", dst.namespace}
        and all(
            dst.labels.get(k) == v
            for k, v in p["spec"].get("selector", {}).get("matchLabels", {}).items()
        )
    ]
    rules_of = {"ALLOW": [], "DENY": []}
    for p in applying:
        rules_of[p["spec"].get("action", "ALLOW")].append(p["spec"].get("rules", []))
    if any(_rule_matches(r, peer, req) for rules in rules_of["DENY"] for r in rules):
        return False
    if not rules_of["ALLOW"]:
        return True
    return any(_rule_matches(r, peer, req) for rules in rules_of["ALLOW"] for r in rules)


# --------------------------------------------------------------------------- the clients

#: A KFP task pod of a run in the profile namespace, as the backend creates it.
PIPELINE = Pod(NAMESPACE, dict(PIPELINE_POD), dict(KFP_POD_ANNOTATIONS), "pipeline-runner")
#: The same in standalone KFP's namespace (runs execute in kubeflow).
STANDALONE_PIPELINE = replace(PIPELINE, namespace="kubeflow")
#: A pod of a multi-node training job (k8s/training: labels; launcher adds the Istio label).
TRAINING_POD = Pod(
    NAMESPACE,
    {**PIPELINE_POD, "app.kubernetes.io/component": "training", INJECT: "false"},
    service_account="fashion-attr-training",
)
#: A model-serving pod: an ordinary workload of the profile namespace, sidecar injected.
SERVING = Pod(NAMESPACE, {"app.kubernetes.io/component": "serving"})
OTHER = Pod(NAMESPACE, {"app": "something-else"})
KFP_UI = Pod("kubeflow", {"app": "ml-pipeline-ui"}, service_account="ml-pipeline-ui")
GATEWAY = Pod(
    "istio-system",
    {"app": "istio-ingressgateway", "istio": "ingressgateway", INJECT: "true"},
    service_account="istio-ingressgateway-service-account",
)
ELSEWHERE = Pod("team-b", dict(PIPELINE_POD), dict(KFP_POD_ANNOTATIONS), "pipeline-runner")
ARTIFACT_VIEWER = Pod(NAMESPACE, {"app": "ml-pipeline-ui-artifact"})

MLFLOW_CALL = Request("/api/2.0/mlflow/runs/create", "POST")
S3_PUT = Request("/fashion-attr/runs/clf/model.pt", "PUT")
TCP = Request()


def workload_pods(overlay: str) -> dict[str, Pod]:
    """`Kind/name` -> the pod each Deployment, StatefulSet or Job of the overlay creates."""
    pods = {}
    for obj in render(overlay):
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            meta = obj["spec"]["template"]["metadata"]
            pods[f"{obj['kind']}/{obj['metadata']['name']}"] = Pod(
                obj["metadata"]["namespace"],
                dict(meta.get("labels", {})),
                dict(meta.get("annotations", {})),
                obj["spec"]["template"]["spec"].get("serviceAccountName", "default"),
            )
    return pods


def _without_inject_label(pod: Pod) -> Pod:
    return replace(pod, labels={k: v for k, v in pod.labels.items() if k != INJECT})


# --------------------------------------------------------------------------- the evaluator


def test_evaluator_reproduces_the_denial_kubeflow_users_hit() -> None:
    """A sidecar-less pipeline pod calling a sidecar-injected MLflow: 403 RBAC: access denied."""
    injected_mlflow = Pod(NAMESPACE, {"app.kubernetes.io/name": "mlflow"})
    assert has_sidecar(injected_mlflow) and not has_sidecar(PIPELINE)
    assert not mesh_allows(PIPELINE, injected_mlflow, MLFLOW_CALL)
    assert not mesh_allows(PIPELINE, injected_mlflow, TCP)
    # ... though the unauthenticated probe paths of rule 3 pass,
    assert mesh_allows(PIPELINE, injected_mlflow, Request("/healthz"))
    # and a sidecar-injected pod of the same namespace (mTLS, source.namespace) gets in,
    assert mesh_allows(SERVING, injected_mlflow, MLFLOW_CALL)
    assert mesh_allows(SERVING, injected_mlflow, TCP)
    # as does the owner through the gateway (rule 1), but not a forged header in plain text.
    owner = Request("/", headers={USERID_HEADER: OWNER})
    assert mesh_allows(GATEWAY, injected_mlflow, owner)
    assert not mesh_allows(GATEWAY, injected_mlflow, Request("/"))
    assert not mesh_allows(PIPELINE, injected_mlflow, owner)
    # global-deny-all alone (spec {}: no rule matches) denies even same-namespace mTLS.
    assert not mesh_allows(SERVING, injected_mlflow, MLFLOW_CALL, policies=[GLOBAL_DENY_ALL])
    assert mesh_allows(SERVING, injected_mlflow, MLFLOW_CALL, policies=[])
    # A server without a sidecar enforces nothing, STRICT or not.
    plain_mlflow = Pod(NAMESPACE, {"app.kubernetes.io/name": "mlflow", INJECT: "false"})
    for mode in ("PERMISSIVE", "STRICT"):
        assert mesh_allows(PIPELINE, plain_mlflow, MLFLOW_CALL, mtls_mode=mode)
        assert mesh_allows(SERVING, plain_mlflow, MLFLOW_CALL, mtls_mode=mode)


def test_injection_follows_istio_label_over_annotation() -> None:
    assert has_sidecar(Pod(NAMESPACE, {}))  # profile namespace: injected by default
    assert not has_sidecar(Pod(NAMESPACE, {INJECT: "false"}))
    assert not has_sidecar(Pod(NAMESPACE, {}, {INJECT: "false"}))
    assert has_sidecar(Pod(NAMESPACE, {INJECT: "true"}, {INJECT: "false"}))  # the label wins
    assert not has_sidecar(Pod(NAMESPACE, {INJECT: "false"}, {INJECT: "true"}))
    assert not has_sidecar(Pod("team-b", {}))  # a namespace without injection
    assert has_sidecar(Pod("team-b", {INJECT: "true"}))


# --------------------------------------------------------------------------- the servers


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_every_server_of_the_pipeline_runs_without_a_sidecar(overlay: str) -> None:
    """The pod template label, not the annotation: Istio's webhook objectSelector sees it."""
    pods = workload_pods(overlay)
    assert SERVER_WORKLOADS[overlay] <= set(pods), "a server workload was renamed or removed"
    missing = [
        name
        for name, pod in pods.items()
        if pod.labels.get(INJECT) != "false" or pod.annotations.get(INJECT, "false") != "false"
    ]
    assert missing == [], (
        f'{overlay}: pod template label {INJECT}: "false" missing on {missing}. Multi-user '
        "Kubeflow injects a sidecar into every pod of the profile namespace; KFP keeps the "
        "pipeline pods sidecar-less (v2_template.go), and a sidecar-injected server denies "
        'their plain-text requests (403 "RBAC: access denied"). See k8s/README.md, '
        '"Multi-user Kubeflow with Istio".'
    )
    for pod in pods.values():
        assert not has_sidecar(pod)


@needs_kubectl
def test_without_the_label_the_pipeline_is_denied() -> None:
    """Why the label matters: each server, injected, refuses the clients the pipeline needs."""
    pods = workload_pods("minio")
    mlflow, minio = pods["Deployment/mlflow"], pods["Deployment/minio"]
    postgres, setup = pods["StatefulSet/postgresql"], pods["Job/minio-setup"]
    for client, server, req in (
        (PIPELINE, mlflow, MLFLOW_CALL),
        (STANDALONE_PIPELINE, mlflow, MLFLOW_CALL),
        (PIPELINE, minio, S3_PUT),
        (mlflow, minio, S3_PUT),
        (setup, minio, S3_PUT),
        (mlflow, postgres, TCP),
    ):
        assert mesh_allows(client, server, req)
        assert not mesh_allows(client, _without_inject_label(server), req), (client, server)


def test_the_namespace_leaves_injection_to_the_profile() -> None:
    """k8s/base/namespace.yaml neither turns injection off for Kubeflow's own pods nor on."""
    ns = load_yaml(ROOT / "k8s" / "base" / "namespace.yaml")
    assert "istio-injection" not in ns["metadata"].get("labels", {})
    assert "istio.io/rev" not in ns["metadata"].get("labels", {})


@needs_kubectl
@pytest.mark.parametrize("overlay", ["minio", "cloud", "kfp-standalone"])
def test_no_overlay_relabels_a_profile_namespace(overlay: str) -> None:
    """The profile controller labels its namespace app.kubernetes.io/part-of=kubeflow-profile
    (kubeflow/dashboard v2.0.0 profile-controller namespace-labels.yaml) and never overwrites
    an existing key; KFP's SeaweedFS NetworkPolicy admits artifact traffic only from
    namespaces with that label (kubeflow/pipelines manifests/kustomize/third-party/seaweedfs/
    base/seaweedfs/seaweedfs-networkpolicy.yaml @2.15.0-2.17.0). An overlay that rendered the
    Namespace with our common labels would cut every pipeline pod off its artifacts."""
    assert not [o for o in render(overlay) if o["kind"] == "Namespace"]
    ns = load_yaml(ROOT / "k8s" / "base" / "namespace.yaml")
    assert "app.kubernetes.io/part-of" not in ns["metadata"].get("labels", {})


# --------------------------------------------------------------------------- both layers


def _clients(pods: dict[str, Pod]) -> dict[str, Pod]:
    clients = {
        "pipeline": PIPELINE,
        "standalone-pipeline": STANDALONE_PIPELINE,
        "training": TRAINING_POD,
        "serving": SERVING,
        "other": OTHER,
        "kfp-ui": KFP_UI,
        "gateway": GATEWAY,
        "elsewhere": ELSEWHERE,
        "mlflow": pods["Deployment/mlflow"],
    }
    if "Job/minio-setup" in pods:
        clients["minio-setup"] = pods["Job/minio-setup"]
    return clients


def _servers(pods: dict[str, Pod]) -> dict[str, tuple[Pod, int, Request]]:
    servers = {
        "mlflow:5000": (pods["Deployment/mlflow"], 5000, MLFLOW_CALL),
        "training:29500": (TRAINING_POD, 29500, TCP),
        "artifact-viewer:3000": (ARTIFACT_VIEWER, 3000, Request("/artifacts/get")),
    }
    if "Deployment/minio" in pods:
        servers["minio:9000"] = (pods["Deployment/minio"], 9000, S3_PUT)
        servers["minio:9001"] = (pods["Deployment/minio"], 9001, Request("/"))
        servers["postgresql:5432"] = (pods["StatefulSet/postgresql"], 5432, TCP)
    return servers


#: Who the NetworkPolicies admit today, server by server (minio overlay; cloud: the rows of
#: the servers it has). Kubeflow's pods in kubeflow reach every pod but the three servers.
ADMITTED = {
    "mlflow:5000": {"pipeline", "standalone-pipeline", "training", "serving"},
    "minio:9000": {
        "pipeline",
        "standalone-pipeline",
        "training",
        "serving",
        "mlflow",
        "minio-setup",
    },
    "minio:9001": set(),
    "postgresql:5432": {"mlflow"},
    "training:29500": {"training", "standalone-pipeline", "kfp-ui"},
    "artifact-viewer:3000": {"standalone-pipeline", "kfp-ui"},
}


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_network_policies_admit_exactly_todays_clients(overlay: str) -> None:
    """With no sidecar on the servers, the NetworkPolicies are their only network guard."""
    policies = [o for o in render(overlay) if o["kind"] == "NetworkPolicy"]
    pods = workload_pods(overlay)
    clients, servers = _clients(pods), _servers(pods)
    admitted = {
        server: {
            name
            for name, client in clients.items()
            if allowed(policies, client.labels, dst.labels, port, client.namespace, dst.namespace)
        }
        for server, (dst, port, _) in servers.items()
    }
    assert admitted == {server: ADMITTED[server] for server in servers}


@needs_kubectl
@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
@pytest.mark.parametrize("mtls_mode", ["PERMISSIVE", "STRICT"])
def test_every_admitted_client_gets_through_the_mesh(overlay: str, mtls_mode: str) -> None:
    """Pipeline, training, serving pods and MLflow reach their servers with Istio on."""
    pods = workload_pods(overlay)
    clients, servers = _clients(pods), _servers(pods)
    for server, (dst, _, req) in servers.items():
        if server.startswith(("training", "artifact-viewer")):
            continue  # not this project's servers
        for name in ADMITTED[server]:
            assert mesh_allows(clients[name], dst, req, mtls_mode=mtls_mode), (name, server)


# --------------------------------------------------------------------------- training pods


def training_pod_metadata() -> dict[str, dict[str, Any]]:
    """Pod metadata of the generated TrainJob (v2.1, v2.2/v2.3) and PyTorchJob examples."""
    out = {
        name: _trainjob_pod_part(load_yaml(TRAINING / name))["metadata"]
        for name in TRAINJOB_EXAMPLES
    }
    job = load_yaml(TRAINING / "pytorchjob.yaml")
    for role, spec in job["spec"]["pytorchReplicaSpecs"].items():
        out[f"pytorchjob.yaml {role}"] = spec["template"]["metadata"]
    return out


def test_training_pods_run_without_a_sidecar() -> None:
    """Kubeflow Trainer v2.1-v2.3 does nothing about Istio; the Training Operator v1 docs
    require PyTorchJob pods in a user namespace to opt out of injection (a sidecar keeps the
    pods from completing and gets in the way of the rendezvous)."""
    for name, meta in training_pod_metadata().items():
        pod = Pod(NAMESPACE, meta.get("labels", {}), meta.get("annotations", {}))
        assert pod.labels.get(INJECT) == "false", name
        assert not has_sidecar(pod), name


def test_training_pod_metadata_is_found() -> None:
    """The test above checks real templates: one per release and PyTorchJob role."""
    metadata = training_pod_metadata()
    assert len(metadata) == 4
    for name, meta in metadata.items():
        assert meta["labels"]["app.kubernetes.io/component"] == "training", name
