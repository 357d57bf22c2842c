"""The rendered training jobs against the upstream API models and the release CRDs.

Both model families drop a field they do not know without a word (kubeflow-trainer-api's
``from_dict`` copies only known keys; kubeflow-training's deserializer reads only its
``attribute_map``), and so does the API server by default. So every rendered job must:

- name no field the models of its release lack (a walk over the model classes), and come
  back unchanged from dict -> model -> dict;
- name no field the release CRD's openAPIV3 schema lacks (what the API server prunes).

Trainer releases: kubeflow-trainer-api 2.1.0, 2.2.1 and 2.3.0 (one ``kubeflow_trainer_api``
per interpreter: the pinned one runs here, the others in a subprocess with a ``pip install
--no-deps --target`` copy first on PYTHONPATH, cached under ``.pytest_cache``; skipped if
it cannot be downloaded). Training Operator v1.7/v1.8/v1.9: kubeflow-training 1.9.4's
models (the PyTorchJob API is the same) and each release's CRD. CRDs: tests/fixtures/.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from fashion_attr.cluster import TRAINER_POD_FIELD, render_job

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: Trainer release (render_job) -> the kubeflow-trainer-api version that models it.
TRAINER_API = {"2.1": "2.1.0", "2.2": "2.2.1", "2.3": "2.3.0"}
#: Trainer release -> the release CRD (tests/fixtures/trainer_crds/).
TRAINER_CRD = {"2.1": "v2.1.0", "2.2": "v2.2.1", "2.3": "v2.3.0"}
OPERATOR_CRDS = ("v1.7.0", "v1.8.1", "v1.9.4")
STEP_ARGS = [
    "--data",
    "s3://fashion-attr/datasets/v-1",
    "--out",
    "s3://fashion-attr/runs/train_classifier/0123456789abcdef",
    "--config",
    "s3://fashion-attr/runs/train_classifier/0123456789abcdef/step_config.yaml",
    "--record-error",
    "--set",
    "note=$(HOME) costs $5",
]
# Root metadata is ObjectMeta, which a CRD schema only calls `type: object`: the fields a
# client may set on create.
OBJECT_META = {
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
}


def _pyproject_pin(package: str) -> str:
    pipeline = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["pipeline"]
    (pin,) = [p for p in pipeline if re.split(r"[=<>!~ ]", p)[0] == package]
    return pin.split("==", 1)[1]


def variants(kind: str, release: str = "2.3") -> dict[str, dict[str, Any]]:
    """Rendered jobs covering every branch of the renderer, by label."""
    base: dict[str, Any] = {
        "step": "train_classifier",
        "args": STEP_ARGS,
        "nodes": 3,
        "gpus_per_node": 8,
        "image": "registry.example.com/fashion-attr:0.1.0",
        "namespace": "fashion-attr",
        "name": "fa-train-classifier-0123456789abcdef",
        "trainer_release": release,
    }
    changes: dict[str, dict[str, Any]] = {
        "3x8": {},
        "1x1": {"nodes": 1, "gpus_per_node": 1},
        "gan-own-placement": {
            "step": "train_gan",
            "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
            "service_account": "trainer-sa",
        },
        "no-selector": {"node_selector": {}},
        # A launcher in a pipeline pod: the job is the pod's (garbage-collected with it),
        # with a deadline where the API has one (Trainer v2.2+, PyTorchJob runPolicy).
        "owned-with-deadline": {
            "owner": {"name": "fa-run-abc-system-container-impl-1", "uid": "0b1c-22"},
            "deadline_s": 86100,
            "image": "registry.example.com/fashion-attr@sha256:" + "ab" * 32,
        },
    }
    jobs = {}
    for label, change in changes.items():
        jobs[f"{kind}-{release}-{label}"] = render_job(kind, **{**base, **change})  # type: ignore[arg-type]
    return jobs


def broken(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` with typos at three depths: fields no model or CRD has."""
    bad = copy.deepcopy(job)
    bad["spec"]["bogus"] = 1
    bad["metadata"]["labelz"] = {"a": "b"}
    if bad["kind"] == "TrainJob":
        bad["spec"]["trainer"]["env"][0]["valueFrom"]["configMapKeyRef"]["optinal"] = True
    else:
        pod = bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        pod["tolerations"][0]["tolerationSecond"] = 5
    return bad


BROKEN_PATHS = {
    "TrainJob": {
        ".spec.bogus",
        ".metadata.labelz",
        ".spec.trainer.env[0].valueFrom.configMapKeyRef.optinal",
    },
    "PyTorchJob": {
        ".spec.bogus",
        ".metadata.labelz",
        ".spec.pytorchReplicaSpecs.Master.template.spec.tolerations[0].tolerationSecond",
    },
}


# --------------------------------------------------------------------------- Trainer models
# _pydantic_models, trainer_unknown_fields and trainer_api_report also run in a subprocess
# (this file as a script, see its end) under another kubeflow_trainer_api: they import it
# themselves and use nothing of the project.


def _pydantic_models(annotation: Any) -> list[Any]:
    """The pydantic model classes inside an annotation (Optional[List[Dict[str, X]]] -> X)."""
    import pydantic

    origin = typing.get_origin(annotation)
    if origin is None:
        ok = isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
        return [annotation] if ok else []
    args = typing.get_args(annotation)
    if origin is dict:
        args = args[1:]
    return [m for arg in args for m in _pydantic_models(arg)]


def trainer_unknown_fields(model: Any, data: Any, path: str = "") -> list[str]:
    """JSON paths in ``data`` that the kubeflow-trainer-api ``model`` has no field for."""
    if isinstance(data, list):
        return [
            p
            for i, item in enumerate(data)
            for p in trainer_unknown_fields(model, item, f"{path}[{i}]")
        ]
    if not isinstance(data, dict) or "actual_instance" in model.model_fields:
        return []  # a scalar, or a oneOf wrapper (IntOrString, Quantity)
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    problems: list[str] = []
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            problems.append(f"{path}.{key}")
            continue
        nested = _pydantic_models(field.annotation)
        if not nested:
            continue
        annotation = field.annotation
        is_map = typing.get_origin(annotation) is dict or any(
            typing.get_origin(a) is dict for a in typing.get_args(annotation)
        )
        if is_map and isinstance(value, dict):
            for k, v in value.items():
                problems += trainer_unknown_fields(nested[0], v, f"{path}.{key}.{k}")
        else:
            problems += trainer_unknown_fields(nested[0], value, f"{path}.{key}")
    return problems


def trainer_api_report(jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each job through the importable kubeflow_trainer_api: unknown fields, round trip."""
    import kubeflow_trainer_api
    from kubeflow_trainer_api import models

    report: dict[str, Any] = {"version": kubeflow_trainer_api.__version__, "jobs": {}}
    for label, job in jobs.items():
        back = models.TrainerV1alpha1TrainJob.from_dict(job).to_dict()
        report["jobs"][label] = {
            "unknown": trainer_unknown_fields(models.TrainerV1alpha1TrainJob, job),
            "round_trip_equal": back == job,
        }
    return report


def _install_trainer_api(version: str, cache_dir: Path) -> Path:
    """``pip install --no-deps --target`` kubeflow-trainer-api==version, once per cache."""
    target = cache_dir / f"kubeflow-trainer-api-{version}"
    if (target / "kubeflow_trainer_api" / "__init__.py").is_file():
        return target
    staging = cache_dir / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-compile", "--target", str(staging), f"kubeflow-trainer-api=={version}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        pytest.skip(
            f"kubeflow-trainer-api=={version} could not be installed for the Trainer "
            f"v{version} check (no PyPI access?): {' | '.join(tail)}"
        )
    try:
        staging.rename(target)  # atomic: a concurrent run that won leaves its copy
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def trainer_api_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    cache_plugin = getattr(request.config, "cache", None)
    if cache_plugin is not None:
        return Path(cache_plugin.mkdir("trainer-api"))
    return tmp_path_factory.mktemp("trainer-api")


def example_files() -> dict[str, dict[str, Any]]:
    return {
        p.name: yaml.safe_load(p.read_text())
        for p in sorted((ROOT / "k8s/training").glob("*.yaml"))
    }


@cache
def _trainer_jobs() -> dict[str, dict[str, Any]]:
    """Every TrainJob to check, by label: each release's variants, broken ones, examples."""
    jobs: dict[str, dict[str, Any]] = {}
    for release in TRAINER_API:
        jobs.update(variants("trainjob", release))
        jobs[f"broken-{release}"] = broken(variants("trainjob", release)[f"trainjob-{release}-3x8"])
    for name, job in example_files().items():
        if job["kind"] == "TrainJob":
            jobs[f"example:{name}"] = job
    return jobs


@pytest.fixture(scope="session")
def trainer_reports(trainer_api_cache: Path) -> Callable[[str], dict[str, Any]]:
    """Trainer release -> the report of its kubeflow-trainer-api on every TrainJob."""
    import kubeflow_trainer_api

    done: dict[str, dict[str, Any]] = {}

    def report(release: str) -> dict[str, Any]:
        version = TRAINER_API[release]
        if version not in done:
            if kubeflow_trainer_api.__version__ == version:
                done[version] = trainer_api_report(_trainer_jobs())
            else:
                target = _install_trainer_api(version, trainer_api_cache)
                path = [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
                proc = subprocess.run(
                    [sys.executable, __file__, "--trainer-api-report"],
                    input=json.dumps(_trainer_jobs()),
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=120,
                    check=False,
                )
                assert proc.returncode == 0, proc.stderr
                done[version] = json.loads(proc.stdout)
            assert done[version]["version"] == version, (
                "the wrong kubeflow_trainer_api was imported"
            )
        return done[version]

    return report


def test_pins_are_the_installed_models() -> None:
    import kubeflow_trainer_api

    assert (
        kubeflow_trainer_api.__version__
        == _pyproject_pin("kubeflow-trainer-api")
        == TRAINER_API["2.3"]
    )
    assert importlib.metadata.version("kubeflow-training") == _pyproject_pin("kubeflow-training")


@pytest.mark.parametrize("release", list(TRAINER_API))
def test_trainjob_round_trips_through_its_release_models(
    release: str, trainer_reports: Callable[[str], dict[str, Any]]
) -> None:
    jobs = trainer_reports(release)["jobs"]
    mine = {label: r for label, r in jobs.items() if label.startswith(f"trainjob-{release}-")}
    assert len(mine) == 5
    for label, result in mine.items():
        assert result["unknown"] == [], f"{label}: fields the v{release} models lack"
        assert result["round_trip_equal"], f"{label}: dict -> model -> dict changed it"
    # The release's own pod field is there (a model that dropped it would still round-trip).
    assert (
        TRAINER_POD_FIELD[release]
        in variants("trainjob", release)[f"trainjob-{release}-3x8"]["spec"]
    )


@pytest.mark.parametrize("release", list(TRAINER_API))
def test_a_job_for_another_trainer_release_is_caught(
    release: str, trainer_reports: Callable[[str], dict[str, Any]]
) -> None:
    jobs = trainer_reports(release)["jobs"]
    for other in TRAINER_API:
        if TRAINER_POD_FIELD[other] == TRAINER_POD_FIELD[release]:
            continue
        result = jobs[f"trainjob-{other}-3x8"]
        # from_dict would silently drop the other release's pod settings: both checks see it
        assert f".spec.{TRAINER_POD_FIELD[other]}" in result["unknown"], (release, other)
        assert not result["round_trip_equal"]


@pytest.mark.parametrize("release", list(TRAINER_API))
def test_unknown_trainjob_fields_fail_the_round_trip(
    release: str, trainer_reports: Callable[[str], dict[str, Any]]
) -> None:
    result = trainer_reports(release)["jobs"][f"broken-{release}"]
    assert not result["round_trip_equal"]  # the model accepted the typos and dropped them
    assert set(result["unknown"]) == BROKEN_PATHS["TrainJob"]


@pytest.mark.parametrize(
    ("name", "release"),
    [
        ("trainjob-v2.1.yaml", "2.1"),
        ("trainjob-v2.2-v2.3.yaml", "2.2"),
        ("trainjob-v2.2-v2.3.yaml", "2.3"),
    ],
)
def test_trainjob_examples_fit_their_releases(
    name: str, release: str, trainer_reports: Callable[[str], dict[str, Any]]
) -> None:
    result = trainer_reports(release)["jobs"][f"example:{name}"]
    assert result == {"unknown": [], "round_trip_equal": True}
    crd = load_crd("trainer_crds", f"trainjobs-{TRAINER_CRD[release]}.json")
    assert crd_unknown_fields(crd, example_files()[name]) == []


# ------------------------------------------------------------------ Training Operator models


def operator_unknown_fields(klass: str, data: Any, path: str = "") -> list[str]:
    """JSON paths in ``data`` that the kubeflow-training (swagger) model ``klass`` lacks."""
    from kubeflow.training import models

    if data is None:
        return []
    if m := re.fullmatch(r"list\[(.*)\]", klass):
        return [
            p
            for i, d in enumerate(data)
            for p in operator_unknown_fields(m.group(1), d, f"{path}[{i}]")
        ]
    if m := re.fullmatch(r"dict\(([^,]*), (.*)\)", klass):
        return [
            p
            for k, d in data.items()
            for p in operator_unknown_fields(m.group(2), d, f"{path}.{k}")
        ]
    cls = getattr(models, klass, None)
    if cls is None or not isinstance(data, dict) or not getattr(cls, "openapi_types", None):
        return []  # a primitive or a free-form object
    by_json = {json_key: cls.openapi_types[attr] for attr, json_key in cls.attribute_map.items()}
    problems: list[str] = []
    for key, value in data.items():
        if key in by_json:
            problems += operator_unknown_fields(by_json[key], value, f"{path}.{key}")
        else:
            problems.append(f"{path}.{key}")
    return problems


def operator_round_trip(job: dict[str, Any]) -> dict[str, Any]:
    """dict -> KubeflowOrgV1PyTorchJob -> dict, as the Training Operator SDK's client does."""
    from kubeflow.training import ApiClient
    from kubeflow.training.utils.utils import FakeResponse

    client = ApiClient()
    model = client.deserialize(FakeResponse(job), "KubeflowOrgV1PyTorchJob")
    assert type(model).__name__ == "KubeflowOrgV1PyTorchJob"
    return typing.cast(dict[str, Any], client.sanitize_for_serialization(model))


def test_pytorchjob_round_trips_through_kubeflow_training_models() -> None:
    jobs = variants("pytorchjob")
    jobs["example:pytorchjob.yaml"] = example_files()["pytorchjob.yaml"]
    for label, job in jobs.items():
        assert operator_unknown_fields("KubeflowOrgV1PyTorchJob", job) == [], label
        assert operator_round_trip(job) == job, label


def test_unknown_pytorchjob_fields_fail_the_round_trip() -> None:
    bad = broken(variants("pytorchjob")["pytorchjob-2.3-3x8"])
    assert operator_round_trip(bad) != bad  # dropped without an error
    assert (
        set(operator_unknown_fields("KubeflowOrgV1PyTorchJob", bad)) == BROKEN_PATHS["PyTorchJob"]
    )


# --------------------------------------------------------------------------- release CRDs


@cache
def load_crd(folder: str, name: str) -> dict[str, Any]:
    return typing.cast(dict[str, Any], json.loads((FIXTURES / folder / name).read_text()))


def _pruned(schema: dict[str, Any], data: Any, path: str) -> list[str]:
    """What the API server's pruning would drop from ``data`` under a structural schema."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(data, list):
        items = schema.get("items", {})
        return [p for i, item in enumerate(data) for p in _pruned(items, item, f"{path}[{i}]")]
    if not isinstance(data, dict):
        return []
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    problems: list[str] = []
    for key, value in data.items():
        if key in props:
            problems += _pruned(props[key], value, f"{path}.{key}")
        elif isinstance(extra, dict):
            problems += _pruned(extra, value, f"{path}.{key}")
        elif extra is not True:
            problems.append(f"{path}.{key}")
    return problems


def crd_unknown_fields(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Fields of ``obj`` the CRD's schema for its version does not declare."""
    group, version = obj["apiVersion"].split("/")
    assert group == crd["spec"]["group"] and obj["kind"] == crd["spec"]["names"]["kind"]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = served["schema"]["openAPIV3Schema"]
    problems = [f".metadata.{k}" for k in obj.get("metadata", {}) if k not in OBJECT_META]
    return problems + _pruned(schema, {k: v for k, v in obj.items() if k != "metadata"}, "")


@pytest.mark.parametrize("release", list(TRAINER_CRD))
def test_trainjob_passes_its_release_crd_schema(release: str) -> None:
    crd = load_crd("trainer_crds", f"trainjobs-{TRAINER_CRD[release]}.json")
    for label, job in variants("trainjob", release).items():
        assert crd_unknown_fields(crd, job) == [], label
    for other in TRAINER_CRD:
        if TRAINER_POD_FIELD[other] != TRAINER_POD_FIELD[release]:
            job = variants("trainjob", other)[f"trainjob-{other}-3x8"]
            assert f".spec.{TRAINER_POD_FIELD[other]}" in crd_unknown_fields(crd, job)
    bad = broken(variants("trainjob", release)[f"trainjob-{release}-3x8"])
    assert set(crd_unknown_fields(crd, bad)) == BROKEN_PATHS["TrainJob"]


@pytest.mark.parametrize("tag", OPERATOR_CRDS)
def test_pytorchjob_passes_the_training_operator_crd_schema(tag: str) -> None:
    crd = load_crd("training_operator_crds", f"pytorchjobs-{tag}.json")
    jobs = variants("pytorchjob")
    jobs["example"] = example_files()["pytorchjob.yaml"]
    for label, job in jobs.items():
        assert crd_unknown_fields(crd, job) == [], label
    bad = broken(jobs["pytorchjob-2.3-3x8"])
    assert set(crd_unknown_fields(crd, bad)) == BROKEN_PATHS["PyTorchJob"]


def test_trainer_v2_0_crd_cannot_take_any_supported_shape() -> None:
    # Why v2.0 is refused: neither shape fits, and its podSpecOverrides has no metadata.
    crd = load_crd("trainer_crds", "trainjobs-v2.0.1.json")
    for release in TRAINER_CRD:
        job = variants("trainjob", release)[f"trainjob-{release}-3x8"]
        assert f".spec.{TRAINER_POD_FIELD[release]}" in crd_unknown_fields(crd, job)
    (served,) = crd["spec"]["versions"]
    override = served["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "podSpecOverrides"
    ]
    assert "metadata" not in override["items"]["properties"]


# --------------------------------------------------------------------------- k8s/training examples


def test_k8s_training_examples_are_up_to_date() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import render_training_jobs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    expected = render_training_jobs.render_examples()
    on_disk = {p.name: p.read_text() for p in (ROOT / "k8s/training").glob("*.yaml")}
    assert set(on_disk) == set(expected), "Fix: python scripts/render_training_jobs.py"
    for name, text in expected.items():
        assert on_disk[name] == text, (
            f"k8s/training/{name} is stale. Fix: python scripts/render_training_jobs.py"
        )


if __name__ == "__main__" and sys.argv[1:] == ["--trainer-api-report"]:
    print(json.dumps(trainer_api_report(json.load(sys.stdin))))
