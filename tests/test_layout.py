"""The package's floors and import rules (docs/development.md), read off the sources (``ast``).

A module imports only from its own floor or below, never back up a floor:

======  ==============================================================================
floor   packages and modules of ``fashion_attr``
======  ==============================================================================
1       ``losses``, ``hardness``, ``storage``, ``runtime``, ``progress``,
        ``credentials``, ``endpoints``, ``cluster`` (Kubernetes calls only), ``config``,
        ``results``, ``resources``, ``version``
2       ``data``, ``checkpoint``, ``tracking``, ``demo``
3       ``evaluation``, ``training``, ``gan``, ``classifier``, ``audit``
4       ``registry``
5       ``steps``
6       ``orchestration``
======  ==============================================================================

and ``pipelines/`` is above them all. On one floor a few directions are ruled out too:
``gan`` and ``evaluation`` never import ``classifier`` (GAN training gets its FD feature
space handed in), ``data`` never imports ``demo`` (the demo adapter is in ``demo``), and
``cluster`` imports nothing of the project. Every import counts, function-level ones
included. Also: nothing in ``fashion_attr`` imports kfp; the paper's concepts are pure
torch; the package has no import cycle; the KFP components call the adapter only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "components" / "fashion_attr"
FLOORS: dict[str, int] = {
    **dict.fromkeys(
        [
            "losses",
            "hardness",
            "storage",
            "runtime",
            "progress",
            "credentials",
            "endpoints",
            "cluster",
            "config",
            "results",
            "resources",
            "version",
        ],
        1,
    ),
    **dict.fromkeys(["data", "checkpoint", "tracking", "demo"], 2),
    **dict.fromkeys(["evaluation", "training", "gan", "classifier", "audit"], 3),
    "registry": 4,
    "steps": 5,
    "orchestration": 6,
}
#: (importer, imported) pairs ruled out although both stand on one floor.
NEVER = {
    ("gan", "classifier"): "GAN training gets its FD feature space from the train_gan step",
    ("evaluation", "classifier"): "scoring a classifier lives in classifier/scoring.py",
    ("data", "demo"): "the demo adapter (demo:// sources) lives in demo/",
}
CONCEPTS = ("losses", "hardness", "gan", "classifier")
INFRA = ("fashion_attr.storage", "fashion_attr.tracking", "fashion_attr.registry", "mlflow")


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def _sources() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _room(module: str) -> str:
    """``fashion_attr.data.ingest.full`` -> ``data``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_room_has_a_floor() -> None:
    rooms = {_room(m) for m in _sources()} - {""}
    assert rooms <= set(FLOORS), f"give these a floor in FLOORS: {sorted(rooms - set(FLOORS))}"


def test_no_import_runs_back_up_a_floor() -> None:
    wrong = []
    for module, imports in _sources().items():
        room = _room(module)
        if not room:
            continue
        for imported in imports:
            if not imported.startswith("fashion_attr."):
                continue
            target = _room(imported)
            if target and target != room and FLOORS.get(target, 0) > FLOORS[room]:
                wrong.append(f"{module} (floor {FLOORS[room]}) imports {imported} (floor "
                             f"{FLOORS[target]})")  # fmt: skip
            if (room, target) in NEVER:
                wrong.append(f"{module} imports {imported}: {NEVER[(room, target)]}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_cluster_code_imports_nothing_of_the_project() -> None:
    for module, imports in _sources().items():
        if _room(module) == "cluster":
            own = {i for i in imports if i.startswith("fashion_attr.")}
            assert all(_room(i) == "cluster" for i in own), (module, own)


def test_the_library_never_imports_kfp() -> None:
    for module, imports in _sources().items():
        assert not any(i == "kfp" or i.startswith("kfp.") for i in imports), module


def test_the_papers_concepts_are_pure_torch() -> None:
    for module, imports in _sources().items():
        if _room(module) in CONCEPTS:
            infra = [i for i in imports if i.startswith(INFRA)]
            # gan.trainer / classifier.trainer run the steps' loops and write outputs;
            # the concepts themselves (networks, losses, memory, export) do not.
            if not module.endswith(("trainer", "quality", "export", "inference", "task")):
                assert not infra, f"{module} imports {infra}"


def test_the_package_imports_have_no_cycle() -> None:
    sources = _sources()
    modules = set(sources)
    graph = {m: {i for i in imports if i in modules and i != m} for m, imports in sources.items()}
    # Package __init__ files re-export their modules: an edge into a package's own
    # children is not a cycle of meaning.
    for m in graph:
        graph[m] = {d for d in graph[m] if not d.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_kfp_components_only_call_the_adapter() -> None:
    tree = ast.parse((ROOT / "pipelines" / "components.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            "component" in ast.unparse(d) for d in node.decorator_list
        ):
            inner = {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module}
            assert inner <= {"fashion_attr.orchestration"}, (node.name, inner)


@pytest.mark.parametrize(
    ("importer", "imported"),
    [("gan/quality.py", "fashion_attr.classifier.model"), ("data/loader.py", "fashion_attr.steps")],
)
def test_the_floor_check_catches_an_import_back_up(
    importer: str, imported: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules above can fail: an added import back up is reported."""
    sources = _sources()
    module = _module(PACKAGE / importer)
    monkeypatch.setattr(
        __import__(__name__), "_sources", lambda: {**sources, module: {*sources[module], imported}}
    )
    with pytest.raises(AssertionError, match=module):
        test_no_import_runs_back_up_a_floor()
