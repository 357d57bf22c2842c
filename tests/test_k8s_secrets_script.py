"""k8s/secrets/create-secrets.sh without a cluster: a fake ``kubectl`` records what it would do.

Standalone KFP runs the pipeline in its own namespace, ``kubeflow``, where KFP's
``pipeline-runner`` Role grants ``get`` on ``secrets`` without ``resourceNames``
(kubeflow/pipelines manifests/kustomize/base/pipeline/pipeline-runner-role.yaml @2.17.0):
any pipeline pod there can read any Secret of the namespace by name. So only the pipeline's
two Secrets may go there (``create-secrets.sh --pipeline-only kubeflow``): its scoped
object-store key and its non-admin MLflow user, never MinIO's root key, PostgreSQL's
password, MLflow's database URI, admin account or S3 key.

Each test copies k8s/secrets/ to a temporary folder, fills in the ``*.env`` files (values
are sentinels), puts a fake ``kubectl`` first on PATH and runs the script. The fake logs
every call (argv, and the object ``kubectl apply`` reads on stdin) as a JSON line;
``kubectl create secret generic --dry-run=client -o yaml`` prints the Secret it would make
(keys from the files, values left out).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRETS_DIR = ROOT / "k8s" / "secrets"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="create-secrets.sh needs bash")

#: What the pipeline's pods (steps, training pods, the multi-node launcher) read.
PIPELINE_SECRETS = {"object-store-credentials", "mlflow-credentials"}
#: What only MLflow, MinIO, PostgreSQL and the minio-setup Job read.
SERVER_SECRETS = {
    "minio-root-credentials",
    "postgres-credentials",
    "mlflow-db",
    "mlflow-auth",
    "mlflow-object-store-credentials",
    "mlflow-auth-config",
}
SENTINEL = "s3ntinel-VALUE-never-on-argv"

FAKE_KUBECTL = """\
#!{python}
import json, os, sys

argv = sys.argv[1:]
entry = {{"argv": argv}}
if argv[:3] == ["create", "secret", "generic"]:
    keys = []
    for arg in argv:
        if arg.startswith("--from-env-file="):
            path = arg.split("=", 1)[1]
            for line in open(path):
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line.split("=", 1)[0])
        elif arg.startswith("--from-file="):
            keys.append(arg.split("=", 2)[1])
    secret = {{
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {{"name": argv[3], "namespace": argv[argv.index("--namespace") + 1]}},
        "data": {{key: "<value>" for key in keys}},
    }}
    print(json.dumps(secret))
elif argv[:1] == ["apply"]:
    entry["stdin"] = sys.stdin.read()
elif argv[:2] == ["get", "secret"]:
    if argv[2] in os.environ.get("FAKE_KUBECTL_EXISTING", "").split():
        print("secret/" + argv[2])
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
"""


def _fill(example: Path) -> str:
    """A filled-in copy of a template: every key gets a value (sentinels for secrets)."""
    lines = []
    for line in example.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            line = f"{key}={value or SENTINEL + '-' + key}"
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture
def secrets_copy(tmp_path: Path) -> Path:
    """k8s/secrets/ with every *.env and basic_auth.ini filled in, in a temporary folder."""
    folder = tmp_path / "secrets"
    shutil.copytree(SECRETS_DIR, folder, ignore=shutil.ignore_patterns("*.env", "*.ini"))
    for example in SECRETS_DIR.glob("*.example.env"):
        target = folder / example.name.replace(".example.env", ".env")
        target.write_text(_fill(example))
        (folder / example.name).write_text(example.read_text())
    ini = (SECRETS_DIR / "basic_auth.example.ini").read_text()
    (folder / "basic_auth.example.ini").write_text(ini)
    (folder / "basic_auth.ini").write_text(
        ini.replace("database_uri =", f"database_uri = postgresql://mlflow:{SENTINEL}@pg/auth")
    )
    return folder


def run_script(
    folder: Path, *args: str, existing: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run the copied create-secrets.sh with the fake kubectl; its result and kubectl calls."""
    bin_dir = folder.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable))
    fake.chmod(0o755)
    log = folder.parent / "kubectl.log"
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_KUBECTL_LOG": str(log),
        "FAKE_KUBECTL_EXISTING": existing,
    }
    proc = subprocess.run(
        [BASH, str(folder / "create-secrets.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def applied(calls: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> keys of every Secret handed to `kubectl apply --server-side`."""
    out = {}
    for call in calls:
        if call["argv"][:1] == ["apply"]:
            assert "--server-side" in call["argv"], call["argv"]
            obj = yaml.safe_load(call["stdin"])
            meta = obj["metadata"]
            out[meta["namespace"], meta["name"]] = set(obj["data"])
    return out


def created_names(calls: list[dict[str, Any]]) -> set[str]:
    """Every Secret name a `kubectl create` or `apply` call carried, whatever the namespace."""
    names = {c["argv"][3] for c in calls if c["argv"][:3] == ["create", "secret", "generic"]}
    return names | {name for _, name in applied(calls)}


def _template_keys(name: str) -> set[str]:
    if name == "mlflow-auth-config":
        return {"basic_auth.ini"}
    text = (SECRETS_DIR / f"{name}.example.env").read_text()
    return {
        line.partition("=")[0]
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_the_two_kinds_cover_every_secret_template() -> None:
    templates = {p.name.removesuffix(".example.env") for p in SECRETS_DIR.glob("*.example.env")}
    assert templates | {"mlflow-auth-config"} == PIPELINE_SECRETS | SERVER_SECRETS
    assert not PIPELINE_SECRETS & SERVER_SECRETS


def test_default_creates_every_secret_in_fashion_attr(secrets_copy: Path) -> None:
    proc, calls = run_script(secrets_copy)
    assert proc.returncode == 0, proc.stderr
    assert applied(calls) == {
        ("fashion-attr", name): _template_keys(name) for name in PIPELINE_SECRETS | SERVER_SECRETS
    }
    # The values reach kubectl through files only: never on a command line `ps` shows.
    for call in calls:
        assert not any(SENTINEL in arg for arg in call["argv"]), call["argv"]
    creates = [c["argv"] for c in calls if c["argv"][:3] == ["create", "secret", "generic"]]
    for argv in creates:
        assert "--dry-run=client" in argv and argv[argv.index("--namespace") + 1] == "fashion-attr"
    by_name = {argv[3]: argv for argv in creates}
    assert f"--from-env-file={secrets_copy}/mlflow-db.env" in by_name["mlflow-db"]
    assert (
        f"--from-file=basic_auth.ini={secrets_copy}/basic_auth.ini" in by_name["mlflow-auth-config"]
    )


def test_pipeline_only_creates_just_the_pipelines_secrets_in_kubeflow(secrets_copy: Path) -> None:
    proc, calls = run_script(secrets_copy, "--pipeline-only", "kubeflow")
    assert proc.returncode == 0, proc.stderr
    assert applied(calls) == {("kubeflow", name): _template_keys(name) for name in PIPELINE_SECRETS}
    assert created_names(calls) == PIPELINE_SECRETS
    # The server Secrets are only looked up (leftovers of an earlier run), never written.
    for call in calls:
        verb = call["argv"][0]
        assert verb in {"create", "apply", "get"}, call["argv"]
        if verb == "get":
            assert call["argv"][2] in SERVER_SECRETS
    assert "warning" not in proc.stderr


def test_server_secrets_are_refused_for_kubeflow_with_the_fix(secrets_copy: Path) -> None:
    proc, calls = run_script(secrets_copy, "kubeflow")
    assert proc.returncode == 1
    assert calls == [], "nothing may be created before the refusal"
    assert "refusing to create the server Secrets in namespace kubeflow" in proc.stderr
    assert "Fix: k8s/secrets/create-secrets.sh --pipeline-only kubeflow" in proc.stderr
    for name in SERVER_SECRETS:
        assert name in proc.stderr


def test_pipeline_only_names_leftover_server_secrets(secrets_copy: Path) -> None:
    proc, calls = run_script(
        secrets_copy, "--pipeline-only", "kubeflow", existing="mlflow-auth postgres-credentials"
    )
    assert proc.returncode == 0, proc.stderr
    assert created_names(calls) == PIPELINE_SECRETS
    assert "warning: server Secrets exist in namespace kubeflow" in proc.stderr
    assert (
        "kubectl --namespace kubeflow delete secret postgres-credentials mlflow-auth" in proc.stderr
    )


def test_pipeline_only_needs_both_files_and_checks_before_creating(secrets_copy: Path) -> None:
    (secrets_copy / "mlflow-credentials.env").unlink()
    proc, calls = run_script(secrets_copy, "--pipeline-only", "kubeflow")
    assert proc.returncode == 1 and calls == []
    assert "mlflow-credentials.env" in proc.stderr and "copy" in proc.stderr
    # Server files are neither needed nor read in this mode.
    for name in SERVER_SECRETS - {"mlflow-auth-config"}:
        (secrets_copy / f"{name}.env").unlink()
    (secrets_copy / "mlflow-credentials.env").write_text(
        _fill(SECRETS_DIR / "mlflow-credentials.example.env")
    )
    proc, calls = run_script(secrets_copy, "--pipeline-only", "kubeflow")
    assert proc.returncode == 0, proc.stderr
    assert created_names(calls) == PIPELINE_SECRETS


def test_an_empty_value_stops_everything(secrets_copy: Path) -> None:
    (secrets_copy / "mlflow-db.env").write_text("uri=\n")
    proc, calls = run_script(secrets_copy)
    assert proc.returncode == 1 and calls == []
    assert "mlflow-db.env has empty values: uri=" in proc.stderr


def test_missing_server_files_are_skipped_in_full_mode(secrets_copy: Path) -> None:
    """The cloud overlay has no MinIO and no in-cluster PostgreSQL."""
    for name in ("minio-root-credentials", "postgres-credentials"):
        (secrets_copy / f"{name}.env").unlink()
    proc, calls = run_script(secrets_copy, "fashion-attr")
    assert proc.returncode == 0, proc.stderr
    assert created_names(calls) == PIPELINE_SECRETS | SERVER_SECRETS - {
        "minio-root-credentials",
        "postgres-credentials",
    }
    assert "skip postgres-credentials" in proc.stderr


def test_an_unclassified_template_is_refused(secrets_copy: Path) -> None:
    (secrets_copy / "new-thing.example.env").write_text("TOKEN=\n")
    (secrets_copy / "new-thing.env").write_text("TOKEN=x\n")
    proc, calls = run_script(secrets_copy, "--pipeline-only", "kubeflow")
    assert proc.returncode == 1 and calls == []
    assert "new-thing" in proc.stderr and "pipeline_secrets or server_secrets" in proc.stderr


@pytest.mark.parametrize(
    "args", [("--all",), ("a", "b"), ("Not_A_Namespace",), ("--pipeline-only", "kube flow")]
)
def test_bad_arguments_are_usage_errors(secrets_copy: Path, args: tuple[str, ...]) -> None:
    proc, calls = run_script(secrets_copy, *args)
    assert proc.returncode == 2 and calls == []
    assert "usage:" in proc.stderr or "not a namespace name" in proc.stderr


def test_the_pipeline_secrets_are_what_the_pipelines_pods_may_read() -> None:
    """The two Secrets are those the pipeline-runner Role names (the launcher checks them)."""
    rbac = list(yaml.safe_load_all((ROOT / "k8s/pipeline/rbac.yaml").read_text()))
    (role,) = [o for o in rbac if o["kind"] == "Role"]
    named = {
        name
        for rule in role["rules"]
        if rule["resources"] == ["secrets"]
        for name in rule.get("resourceNames", [])
    }
    # mlpipeline-minio-artifact is KFP's own (its artifact store), not created by this script.
    assert named - {"mlpipeline-minio-artifact"} == PIPELINE_SECRETS


def test_standalone_docs_use_pipeline_only() -> None:
    """Every instruction under k8s/ for the kubeflow namespace says --pipeline-only."""
    for path in [*(ROOT / "k8s").rglob("*.md"), *(ROOT / "k8s").rglob("kustomization.yaml")]:
        text = path.read_text()
        assert "create-secrets.sh kubeflow" not in text, f"{path}: use --pipeline-only kubeflow"
    overlay = (ROOT / "k8s/overlays/kfp-standalone/kustomization.yaml").read_text()
    assert "create-secrets.sh --pipeline-only kubeflow" in overlay
