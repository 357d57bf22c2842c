"""Scheduled retraining: the recurring run is created or replaced with the right settings."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines import schedule


class FakeKfp:
    """Records the calls the schedule module makes to kfp.Client."""

    def __init__(self, existing: list[str] = ()) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.existing = list(existing)

    def get_experiment(self, experiment_name: str, namespace: str | None = None) -> Any:
        return SimpleNamespace(experiment_id="exp-1")

    def create_experiment(self, name: str, namespace: str | None = None) -> Any:
        raise AssertionError("experiment exists")

    def get_pipeline_id(self, name: str) -> str | None:
        return "pipe-1" if self.existing else None

    def upload_pipeline(self, path: str, pipeline_name: str) -> Any:
        self.calls.append(("upload_pipeline", {"path": path, "name": pipeline_name}))
        return SimpleNamespace(pipeline_id="pipe-1")

    def upload_pipeline_version(
        self, path: str, pipeline_version_name: str, pipeline_id: str
    ) -> Any:
        self.calls.append(("upload_pipeline_version", {"pipeline_id": pipeline_id}))
        return SimpleNamespace(pipeline_version_id="ver-2")

    def list_recurring_runs(self, **kwargs: Any) -> Any:
        runs = [SimpleNamespace(display_name=n, recurring_run_id=f"rr-{n}") for n in self.existing]
        return SimpleNamespace(recurring_runs=runs)

    def delete_recurring_run(self, rid: str) -> dict:
        self.calls.append(("delete_recurring_run", {"id": rid}))
        return {}

    def create_recurring_run(self, **kwargs: Any) -> Any:
        self.calls.append(("create_recurring_run", kwargs))
        return SimpleNamespace(recurring_run_id="rr-new")

    def create_run_from_pipeline_package(self, path: str, **kwargs: Any) -> Any:
        self.calls.append(("create_run", {"path": path, **kwargs}))
        return SimpleNamespace(run_id="run-1")


class FakeHealthz:
    """What GET /apis/v2beta1/healthz answers (backend/src/apiserver/main.go @2.17.0 465-489)."""

    def __init__(self, tag: str, multi_user: bool) -> None:
        self.body = json.dumps({"commit_sha": "abc", "tag_name": tag, "multi_user": multi_user})

    def healthz_service_get_healthz(self, _preload_content: bool = True) -> Any:
        return SimpleNamespace(data=self.body.encode())


ARGS = [
    "--catalog-uri",
    "s3://shop/catalog/",
    "--storage-uri",
    "s3://shop/fashion-attr",
    "--source-uri",
    "s3://shop/deepfashion-c",
    "--cron",
    "0 30 1 * * *",
]


def test_schedule_creates_recurring_run_with_concurrency_one_and_no_catchup() -> None:
    fake = FakeKfp()
    args = schedule.build_parser().parse_args(["schedule", *ARGS])
    out = schedule.schedule(args, client=fake)
    created = next(kw for name, kw in fake.calls if name == "create_recurring_run")
    assert created["max_concurrency"] == 1
    assert created["no_catchup"] is True
    assert created["cron_expression"] == "0 30 1 * * *"
    assert created["params"]["batch_uri"] == "s3://shop/catalog/"
    assert created["params"]["base_version"] == "latest"
    assert created["params"]["source_uri"] == "s3://shop/deepfashion-c"
    assert created["service_account"] == "pipeline-runner"
    assert created["version_id"] == "ver-2"
    assert out["replaced"] == []


def test_schedule_replaces_a_recurring_run_of_the_same_name() -> None:
    fake = FakeKfp(existing=["fashion-attr-nightly", "other-job"])
    args = schedule.build_parser().parse_args(["schedule", *ARGS])
    out = schedule.schedule(args, client=fake)
    deleted = [kw["id"] for name, kw in fake.calls if name == "delete_recurring_run"]
    assert deleted == ["rr-fashion-attr-nightly"]
    assert out["replaced"] == ["rr-fashion-attr-nightly"]
    assert not any(name == "upload_pipeline" for name, _ in fake.calls)  # pipeline existed


def test_submit_runs_the_same_configuration_once() -> None:
    fake = FakeKfp()
    args = schedule.build_parser().parse_args(
        ["submit", *ARGS, "--param", "gate_tolerance=0.01", "--param", "ingest_parts=2"]
    )
    assert schedule.submit(args, client=fake) == {"run_id": "run-1"}
    run = next(kw for name, kw in fake.calls if name == "create_run")
    assert run["arguments"]["base_version"] == "latest"
    # Numbers travel as numbers: the API rejects "0.01" for a NUMBER_DOUBLE parameter.
    assert run["arguments"]["gate_tolerance"] == 0.01
    assert run["arguments"]["ingest_parts"] == 2


def test_params_are_typed_as_the_pipeline_declares_them() -> None:
    """The KFP API rejects "2" for an integer parameter (v2_template.go @2.17.0 442-531)."""
    args = schedule.build_parser().parse_args(
        ["submit", *ARGS, "--param", "ingest_parts=4", "--param", "gate_tolerance=0.01"]
    )
    declared = schedule.pipeline_parameters()
    assert declared["ingest_parts"] == "NUMBER_INTEGER"
    params = schedule.pipeline_arguments(args, declared)
    assert params["ingest_parts"] == 4 and isinstance(params["ingest_parts"], int)
    assert params["gate_tolerance"] == 0.01 and params["base_version"] == "latest"
    assert set(params) <= set(declared)


@pytest.mark.parametrize(
    ("param", "words"),
    [
        ("train_nodes=2", "'train_nodes' is not a parameter"),
        ("ingest_parts=two", "ingest_parts is NUMBER_INTEGER"),
        ("gate_tolerance=much", "gate_tolerance is NUMBER_DOUBLE"),
        ("no-equals", "is not a parameter"),
    ],
)
def test_unknown_or_mistyped_params_are_refused_before_the_api_is_called(
    param: str, words: str
) -> None:
    fake = FakeKfp()
    args = schedule.build_parser().parse_args(["submit", *ARGS, "--param", param])
    with pytest.raises(SystemExit, match=words):
        schedule.submit(args, fake)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("tag", "multi_user", "mode", "words"),
    [
        ("2.14.4", True, "multi-user", "needs 2.15.0 or newer"),
        ("2.17.0", False, "multi-user", "runs in standalone mode"),
        ("2.15.0", True, "standalone", "runs in multi-user mode"),
    ],
)
def test_an_old_backend_or_the_wrong_mode_is_refused(
    tag: str, multi_user: bool, mode: str, words: str
) -> None:
    client = SimpleNamespace(_healthz_api=FakeHealthz(tag, multi_user))
    with pytest.raises(SystemExit, match=words):
        schedule.check_backend(client, mode)


def test_supported_backends_pass_and_standalone_runs_have_no_namespace() -> None:
    for tag in ("2.15.0", "2.16.1", "2.17.0", "unknown"):
        client = SimpleNamespace(_healthz_api=FakeHealthz(tag, True))
        assert schedule.check_backend(client, "multi-user")["tag_name"] == tag
    fake = FakeKfp()
    args = schedule.build_parser().parse_args(["submit", *ARGS, "--kfp-mode", "standalone"])
    schedule.submit(args, fake)
    (call,) = [kw for name, kw in fake.calls if name == "create_run"]
    assert call["namespace"] is None and call["service_account"] == "pipeline-runner"
