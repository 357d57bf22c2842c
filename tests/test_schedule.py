"""Scheduled retraining: the compiled package is submitted as it is, with the right settings.

No KFP backend runs here: its API is a fake; the rules it applies (typed parameters, the
version report of its images, the error format of the artifact-read path) are encoded from
kubeflow/pipelines at the cited tags.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines import schedule
from pipelines.settings import CompileSettings

ROOT = Path(__file__).resolve().parents[1]
PINNED = "registry.example.com/fashion-attr@sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.retraining import compile_pipeline

    return compile_pipeline(
        tmp_path_factory.mktemp("pkg") / "p.yaml", CompileSettings(image=PINNED, gpus_per_step=2)
    )


@pytest.fixture(scope="module")
def unpinned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.retraining import compile_pipeline

    return compile_pipeline(tmp_path_factory.mktemp("pkg") / "p.yaml", CompileSettings())


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


def test_schedule_creates_recurring_run_with_concurrency_one_and_no_catchup(package: Path) -> None:
    fake = FakeKfp()
    args = schedule.build_parser().parse_args(["schedule", *ARGS, "--package", str(package)])
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


def test_schedule_replaces_a_recurring_run_of_the_same_name(package: Path) -> None:
    fake = FakeKfp(existing=["fashion-attr-nightly", "other-job"])
    args = schedule.build_parser().parse_args(["schedule", *ARGS, "--package", str(package)])
    out = schedule.schedule(args, client=fake)
    deleted = [kw["id"] for name, kw in fake.calls if name == "delete_recurring_run"]
    assert deleted == ["rr-fashion-attr-nightly"]
    assert out["replaced"] == ["rr-fashion-attr-nightly"]
    assert not any(name == "upload_pipeline" for name, _ in fake.calls)  # pipeline existed


def test_submit_runs_the_same_configuration_once(package: Path) -> None:
    fake = FakeKfp()
    tolerance, parts = ["--param", "gate_tolerance=0.01"], ["--param", "ingest_parts=2"]
    args = schedule.build_parser().parse_args(
        ["submit", *ARGS, "--package", str(package), *tolerance, *parts]
    )
    assert schedule.submit(args, client=fake)["run_id"] == "run-1"
    run = next(kw for name, kw in fake.calls if name == "create_run")
    assert run["arguments"]["base_version"] == "latest"
    # Numbers travel as numbers: the API rejects "0.01" for a NUMBER_DOUBLE parameter.
    assert run["arguments"]["gate_tolerance"] == 0.01
    assert run["arguments"]["ingest_parts"] == 2


def test_params_are_typed_as_the_pipeline_declares_them(package: Path) -> None:
    """The KFP API rejects "2" for an integer parameter (v2_template.go @2.17.0 442-531)."""
    args = schedule.build_parser().parse_args(
        ["submit", *ARGS, "--param", "ingest_parts=4", "--param", "gate_tolerance=0.01"]
    )
    declared = schedule.package_parameters(package)
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
    param: str, words: str, package: Path
) -> None:
    fake = FakeKfp()
    args = schedule.build_parser().parse_args(
        ["submit", *ARGS, "--package", str(package), "--param", param]
    )
    with pytest.raises(schedule.ScheduleError, match=words):
        schedule.submit(args, fake)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("tag", "multi_user", "mode", "words"),
    [
        ("2.14.4", True, "multi-user", r"needs KFP backend 2\.15\.0 or newer"),
        ("2.17.0", False, "multi-user", "runs in standalone mode"),
        ("2.15.0", True, "standalone", "runs in multi-user mode"),
    ],
)
def test_an_old_backend_or_the_wrong_mode_is_refused(
    tag: str, multi_user: bool, mode: str, words: str
) -> None:
    client = SimpleNamespace(_healthz_api=FakeHealthz(tag, multi_user))
    with pytest.raises(schedule.ScheduleError, match=words):
        schedule.check_backend(client, mode)


class FakeApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"({status})")
        self.status, self.body = status, body


class FakeRunApi:
    """GET <ARTIFACT_READ> on a missing run, as each release answers it.

    2.15.0+: backend/src/apiserver/server/run_artifact_server.go writeErrorToResponse, an
    api.Error JSON body (``error_message``/``error_details``); 2.14.x: the grpc-gateway v2
    default error body (``code``/``message``/``details``) of the gRPC ReadArtifact route
    (backend/api/v2beta1/run.proto @2.14.4).
    """

    def __init__(self, release: str) -> None:
        if release == "2.15":
            body = {"error_message": "artifact not found", "error_details": "..."}
        elif release == "2.14":
            body = {"code": 5, "message": "artifact not found", "details": []}
        else:
            body = None
        self.body = json.dumps(body) if body else "<html>502 Bad Gateway</html>"
        self.paths: list[str] = []
        self.api_client = self

    def call_api(self, path: str, method: str, **kw: Any) -> Any:
        self.paths.append(path)
        raise FakeApiError(404, self.body)


def _unknown_backend(release: str) -> Any:
    return SimpleNamespace(_healthz_api=FakeHealthz("unknown", True), _run_api=FakeRunApi(release))


def test_a_backend_that_reports_unknown_is_probed() -> None:
    """Official API-server images before 2.16 report tag_name "unknown" (TAG_NAME build
    argument unset: .github/workflows of kubeflow/pipelines @2.14.x/@2.15.0; set from 2.16.0)."""
    info = schedule.check_backend(_unknown_backend("2.15"), "multi-user")
    assert info["probed"] == ">= 2.15"
    with pytest.raises(schedule.ScheduleError, match=r"answers like 2\.14 or older"):
        schedule.check_backend(_unknown_backend("2.14"), "multi-user")
    with pytest.raises(schedule.ScheduleError, match="--backend-version"):
        schedule.check_backend(_unknown_backend("proxy"), "multi-user")
    # The operator may state the release: no probe then.
    client = _unknown_backend("proxy")
    schedule.check_backend(client, "multi-user", "2.15.0")
    assert client._run_api.paths == []
    with pytest.raises(schedule.ScheduleError, match=r"needs KFP backend 2\.15\.0"):
        schedule.check_backend(client, "multi-user", "2.14.3")


def test_supported_backends_pass_and_standalone_runs_have_no_namespace(package: Path) -> None:
    for tag in ("2.15.0", "2.16.1", "2.17.0"):
        client = SimpleNamespace(_healthz_api=FakeHealthz(tag, True))
        assert schedule.check_backend(client, "multi-user")["tag_name"] == tag
    fake = FakeKfp()
    args = schedule.build_parser().parse_args(
        ["submit", *ARGS, "--package", str(package), "--kfp-mode", "standalone"]
    )
    schedule.submit(args, fake)
    (call,) = [kw for name, kw in fake.calls if name == "create_run"]
    assert call["namespace"] is None and call["service_account"] == "pipeline-runner"


def test_the_compiled_package_is_what_is_submitted(package: Path, unpinned: Path) -> None:
    """Submit uploads the file `make compile` wrote, never a pipeline compiled again from
    this shell's environment (which once sent fashion-attr:0.1.0 to every night)."""
    fake = FakeKfp()
    args = schedule.build_parser().parse_args(["submit", *ARGS, "--package", str(package)])
    out = schedule.submit(args, fake)
    (call,) = [kw for name, kw in fake.calls if name == "create_run"]
    assert call["path"] == str(package) and out["image"] == PINNED
    text = package.read_text()
    assert PINNED in text and "2 GPU(s) per training pod" in text  # visible in the YAML
    # A package whose image is a tag is refused (nodes could run mixed code; a local tag
    # cannot be pulled at all), before any API call.
    args = schedule.build_parser().parse_args(["submit", *ARGS, "--package", str(unpinned)])
    with pytest.raises(schedule.ScheduleError, match="not pinned by digest"):
        schedule.submit(args, fake)
    with pytest.raises(schedule.ScheduleError, match="make compile"):
        schedule.submit(
            schedule.build_parser().parse_args(["submit", *ARGS, "--package", "/nope.yaml"]),
            fake,
        )
    assert len(fake.calls) == 1


def test_a_paper_preset_never_bootstraps_from_the_demo_catalog(package: Path) -> None:
    fake = FakeKfp()
    demo = [a for a in ARGS if a not in ("--source-uri", "s3://shop/deepfashion-c")]
    args = schedule.build_parser().parse_args(["submit", *demo, "--package", str(package)])
    with pytest.raises(schedule.ScheduleError, match="synthetic demo catalog"):
        schedule.submit(args, fake)
    args = schedule.build_parser().parse_args(
        ["submit", *demo, "--package", str(package), "--allow-demo-source"]
    )
    schedule.submit(args, fake)
    assert len(fake.calls) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_failures_end_in_one_line_with_exit_2_or_3(package: Path) -> None:
    """A bad preset is refused before the host is contacted (exit 2); an unreachable host
    fails with one line naming it and the fix (exit 3), not a traceback."""
    base = [sys.executable, "-m", "pipelines.schedule", "submit", *ARGS]
    bad = subprocess.run(
        [*base, "--package", str(package), "--preset", "papr", "--host", "http://nowhere.invalid"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "invalid choice: 'papr'" in bad.stderr
    start = time.monotonic()
    down = subprocess.run(
        [*base, "--package", str(package), "--host", f"http://127.0.0.1:{_closed_port()}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 3, down.stderr
    lines = [line for line in down.stderr.splitlines() if line.startswith("schedule:")]
    assert len(lines) == 1 and "cannot reach http://127.0.0.1:" in lines[0] and "Fix:" in lines[0]
    assert "Traceback" not in down.stderr
    assert time.monotonic() - start < 60
