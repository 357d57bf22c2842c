"""The KFP backend's run-time rules, replayed on the compiled pipeline (kfp.local applies none).

Each test encodes a rule of the KFP v2 backend (releases 2.15.0 to 2.17.x, the ones
``pipelines/retraining.py`` supports) or of the Argo Workflows it ships, and cites the
upstream file and release where the rule is applied. The sources were read at the tags
named (github.com/kubeflow/pipelines, github.com/argoproj/argo-workflows).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: The oldest KFP backend the compiled pipeline runs on (kfp-kubernetes 2.17 writes the
#: `optional` field of secret/config-map env, first read by backend 2.15.0:
#: backend/src/v2/driver/k8s.go @2.15.0 429-445; 2.14.x rejects it,
#: backend/src/v2/compiler/argocompiler/container.go @2.14.0 285).
MIN_BACKEND = "2.15.0"


def _compile(tmp: Path, **env: str) -> tuple[dict[str, Any], dict[str, Any]]:
    out = tmp / "pipeline.yaml"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FA_")}
    subprocess.run(
        [sys.executable, "-m", "pipelines.retraining", "--output", str(out)],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        check=True,
        capture_output=True,
    )
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform


@pytest.fixture(scope="module", params=["default", "multi-node"])
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    env = {"FA_TRAIN_NODES": "2", "FA_GPUS_PER_STEP": "4"} if request.param != "default" else {}
    return _compile(tmp_path_factory.mktemp(request.param), **env)


def _dags(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, component with a DAG, its dag) for the root and every nested DAG."""
    yield "root", spec["root"], spec["root"]["dag"]
    for name, comp in spec["components"].items():
        if "dag" in comp:
            yield name, comp, comp["dag"]


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG (the GPU tasks sit in the plan's condition branch)."""
    return {name: task for _, _, dag in _dags(spec) for name, task in dag["tasks"].items()}


def _executor(spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any] | None:
    comp = spec["components"][task["componentRef"]["name"]]
    label = comp.get("executorLabel")
    return spec["deploymentSpec"]["executors"][label]["container"] if label else None


def test_a_loop_body_never_consumes_the_list_it_iterates_and_items_are_typed(compiled) -> None:
    """backend/src/v2/driver/resolve.go @2.17.0 297 deletes the iterated list from each
    iteration's parameters ("parent DAG does not have input parameter ...", line 396; same
    code in 2.15.0 line 380); an untyped ``list`` gives STRING items that a NUMBER_INTEGER
    input rejects ("type mismatch", lines 219-232)."""
    spec, _ = compiled
    loops = 0
    for _, _, dag in _dags(spec):
        for task in dag["tasks"].values():
            iterator = task.get("parameterIterator")
            if not iterator:
                continue
            loops += 1
            items, item = iterator["items"].get("inputParameter"), iterator["itemInput"]
            body = spec["components"][task["componentRef"]["name"]]
            item_type = body["inputDefinitions"]["parameters"][item]["parameterType"]
            for inner in body["dag"]["tasks"].values():
                consumer = spec["components"][inner["componentRef"]["name"]]
                for name, binding in inner["inputs"].get("parameters", {}).items():
                    source = binding.get("componentInputParameter")
                    assert source != items, f"{name} consumes the loop's own list {items}"
                    if source == item:
                        wanted = consumer["inputDefinitions"]["parameters"][name]["parameterType"]
                        assert item_type == wanted, f"loop items {item_type}, {name} wants {wanted}"
    assert loops == 1


def test_accelerator_counts_are_literals_the_backend_can_read(compiled) -> None:
    """driver.go initPodSpecPatch @2.17.0 415-446 (2.15.0 361-391) reads the count with
    ``GetStringValue()``, which gives "" for a numeric pipeline parameter: no GPU limit is
    set and the step trains on the CPU. Only a literal count reaches the pod."""
    spec, _ = compiled
    for name, executor in spec["deploymentSpec"]["executors"].items():
        acc = executor["container"].get("resources", {}).get("accelerator")
        if acc is None:
            continue
        assert re.fullmatch(r"\d+", acc["resourceCount"]), (name, acc)
        assert acc["count"] == acc["resourceCount"] and acc["resourceType"] == "nvidia.com/gpu"
    for _, _, dag in _dags(spec):
        for task_name, task in dag["tasks"].items():
            assert "accelerator_count" not in task.get("inputs", {}).get("parameters", {}), (
                task_name
            )


def test_a_multi_node_launcher_holds_no_gpu_and_torchrun_gets_the_gpu_count(tmp_path: Path) -> None:
    """With FA_TRAIN_NODES > 1 the training tasks only submit and watch the job: a launcher
    holding a GPU could starve its own job on a small pool."""
    spec, platform = _compile(tmp_path, FA_TRAIN_NODES="2", FA_GPUS_PER_STEP="4")
    tasks = _tasks(spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("gan-training", "classifier-training"):
        assert "accelerator" not in _executor(spec, tasks[name]).get("resources", {}), name
        params = tasks[name]["inputs"]["parameters"]
        assert params["nodes"]["runtimeValue"]["constant"] == 2
        assert params["gpus"]["runtimeValue"]["constant"] == 4
        # The launcher knows its own pod, to own the job it creates (ownerReferences): the
        # driver turns fieldPathAsEnv into a fieldRef env (k8s.go @2.15.0 l.506).
        label = spec["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]
        fields = {f["name"]: f["fieldPath"] for f in executors[label]["fieldPathAsEnv"]}
        assert fields == {
            "FA_POD_NAME": "metadata.name",
            "FA_POD_UID": "metadata.uid",
            "FA_POD_NAMESPACE": "metadata.namespace",
        }


def test_a_trainer_release_given_at_compile_time_reaches_the_launchers_only(
    tmp_path: Path,
) -> None:
    """FA_TRAINER_RELEASE at compile time spares a launcher the CRD read (cluster RBAC)."""
    spec, _ = _compile(tmp_path, FA_TRAIN_NODES="2", FA_TRAINER_RELEASE="2.2")
    tasks = _tasks(spec)
    launchers = 0
    for name, task in tasks.items():
        container = _executor(spec, task) or {}  # the ingest loop is a DAG: no container
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        launchers += env.get("FA_TRAINER_RELEASE") is not None
        expected = "2.2" if name in ("gan-training", "classifier-training") else None
        assert env.get("FA_TRAINER_RELEASE") == expected, name
    assert launchers == 2


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_a_task_s_attempts_together_keep_its_deadline_and_factors_are_integers(
    compiled,
) -> None:
    """Argo's backoff.maxDuration counts from the first attempt's start; past it no retry
    runs ("Max duration limit exceeded") and a retried pod is killed at its end
    (workflow/controller/operator.go processNodeRetries @v3.7.3 1004-1099, @v4.0.5
    1025-1095; workflowpod.go ARGO_DEADLINE). A pod killed by its own activeDeadlineSeconds
    is Failed, and Argo's default OnFailure retries Failed nodes (operator.go @v3.7.3
    1399-1403, workflow_types.go CanRetry): so the window must equal the task's deadline, or
    a stuck attempt would be retried until a 72 h window closed and block the schedule.
    KFP's argocompiler passes the factor as a string that Argo parses as an integer
    (backend/src/v2/compiler/argocompiler/container.go @2.17.0 638; util/intstr @v3.7.3,
    @v4.0.5): 1.5 fails the node. Caveat (not fixable in the IR): KFP sets no
    retryPolicy, so Argo's default OnFailure does not retry a pod that was deleted (an
    Error), e.g. by some node preemptions (operator.go @v3.7.3 1262)."""
    from pipelines.retraining import LONGEST_TASK_S

    spec, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    retried = 0
    for _, _, dag in _dags(spec):
        for name, task in dag["tasks"].items():
            if "componentRef" not in task or name.startswith(("for-loop", "condition")):
                continue
            label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
            assert int(executors[label]["activeDeadlineSeconds"]) == LONGEST_TASK_S[name], name
            policy = task.get("retryPolicy")
            if not policy:
                continue
            retried += 1
            factor = float(policy["backoffFactor"])
            assert factor.is_integer() and factor >= 1, (name, factor)
            assert _seconds(policy["backoffMaxDuration"]) == LONGEST_TASK_S[name], name
    assert retried >= 5


def _input_definitions(comp: dict[str, Any], kind: str) -> dict[str, Any]:
    return comp.get("inputDefinitions", {}).get(kind, {})


def test_every_task_input_resolves(compiled) -> None:
    """resolve.go @2.17.0: a required input without a value fails ("neither value nor
    default value provided", 187-193); a componentInputParameter must be an input of the
    parent DAG (396, artifacts 551); an upstream output must come from a task of the same
    DAG ("producer task, %v, not in tasks", 610) that declares it; types must match
    (202-253)."""
    spec, _ = compiled
    for dag_name, parent, dag in _dags(spec):
        for task_name, task in dag["tasks"].items():
            comp = spec["components"][task["componentRef"]["name"]]
            inputs = task.get("inputs", {})
            where = f"{dag_name}/{task_name}"
            for kind in ("parameters", "artifacts"):
                for name, binding in inputs.get(kind, {}).items():
                    if "componentInputParameter" in binding:
                        source = binding["componentInputParameter"]
                        assert source in _input_definitions(parent, "parameters"), (where, name)
                    if "componentInputArtifact" in binding:
                        source = binding["componentInputArtifact"]
                        assert source in _input_definitions(parent, "artifacts"), (where, name)
                    output = binding.get("taskOutputParameter") or binding.get("taskOutputArtifact")
                    if output:
                        producer = output["producerTask"]
                        assert producer in dag["tasks"], (where, name, producer)
                        assert producer in task.get("dependentTasks", []), (where, producer)
                        produced = spec["components"][
                            dag["tasks"][producer]["componentRef"]["name"]
                        ]
                        key = output.get("outputParameterKey") or output.get("outputArtifactKey")
                        outputs = produced["outputDefinitions"][kind]
                        assert key in outputs, (where, name, key)
                        if kind == "parameters" and name in _input_definitions(comp, kind):
                            wanted = comp["inputDefinitions"][kind][name]["parameterType"]
                            got = outputs[key]["parameterType"]
                            assert wanted in (got, "STRING"), (where, name, got, wanted)
                iterated = task.get("parameterIterator", {}).get("itemInput")
                for name, definition in _input_definitions(comp, kind).items():
                    if name == iterated:  # bound by the loop, one item per iteration
                        continue
                    if kind == "parameters" and (
                        definition.get("isOptional") or "defaultValue" in definition
                    ):
                        continue
                    if kind == "artifacts" and definition.get("isOptional"):
                        continue
                    assert name in inputs.get(kind, {}), f"{where}: required input {name} unbound"


def test_run_id_placeholders_are_whole_values(compiled) -> None:
    """The driver substitutes {{$.pipeline_job_uuid}} only when it is the whole constant
    (resolve.go @2.17.0 435-452); and a task that takes it can never hit the cache."""
    spec, _ = compiled
    for _, _, dag in _dags(spec):
        for name, task in dag["tasks"].items():
            for binding in task.get("inputs", {}).get("parameters", {}).values():
                constant = binding.get("runtimeValue", {}).get("constant")
                if isinstance(constant, str) and "{{$." in constant:
                    assert constant == "{{$.pipeline_job_uuid}}", (name, constant)
                    assert not task.get("cachingOptions", {}).get("enableCache"), name


def _quantity(value: str) -> bool:
    return re.fullmatch(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?", value) is not None


def test_kubernetes_executor_configs_use_fields_the_minimum_backend_reads(compiled) -> None:
    """kubernetes_executor_config.proto @2.15.0: ``optional`` exists on SecretAsEnv and
    ConfigMapAsEnv from 2.15.0 (older backends fail or drop the pod labels, so the
    NetworkPolicies would not match); an invalid emptyDir sizeLimit panics the driver
    (k8s.go @2.17.0 590-614, ``k8sres.MustParse``). ``activeDeadlineSeconds`` (the task
    deadline) and ``fieldPathAsEnv`` (a launcher's pod name and uid) are read by the driver
    of 2.15.0 (k8s.go @2.15.0 l.526 and l.506); the 2.15.0 compiler parses executor configs
    strictly (argocompiler/container.go @2.15.0 l.309), so a field added after 2.15.0 would
    fail the run at creation."""
    _, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    allowed = {
        "secretAsEnv",
        "configMapAsEnv",
        "podMetadata",
        "nodeSelector",
        "tolerations",
        "emptyDirMounts",
        "activeDeadlineSeconds",
        "fieldPathAsEnv",
    }
    for name, conf in executors.items():
        assert set(conf) <= allowed, (name, set(conf) - allowed)
        for mount in conf.get("emptyDirMounts", []):
            assert _quantity(mount["sizeLimit"]), (name, mount)
        labels = conf.get("podMetadata", {}).get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "fashion-attr-pipeline", name
    readme = (ROOT / "README.md").read_text()
    assert f"KFP backend {MIN_BACKEND}" in readme, "README must name the minimum backend"
