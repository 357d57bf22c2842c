"""The import rules of README's Development section, read off the sources (``ast``).

- the library (everything in ``fashion_attr`` but ``steps/``) never imports a step, and
  nothing in ``fashion_attr`` imports kfp: the KFP glue is ``steps/kfp_adapter.py`` plus
  ``pipelines/``;
- the paper's concepts (``losses/``, ``hardness``, ``gan/``, ``classifier/``) import no
  storage, tracking, registry or MLflow: they are pure torch;
- the package imports have no cycle (the ``tracking`` <-> ``registry`` one is gone);
- the KFP components' bodies call ``fashion_attr.steps.kfp_adapter`` and nothing else.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "components" / "fashion_attr"
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


def test_the_library_never_imports_a_step_or_kfp() -> None:
    for module, imports in _sources().items():
        assert not any(i == "kfp" or i.startswith("kfp.") for i in imports), module
        if not module.startswith("fashion_attr.steps"):
            steps = [i for i in imports if i.startswith("fashion_attr.steps")]
            assert not steps, f"{module} imports {steps}"


def test_the_papers_concepts_are_pure_torch() -> None:
    for module, imports in _sources().items():
        top = module.split(".")[1] if "." in module else ""
        if top in CONCEPTS:
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
    assert not any(d.startswith("fashion_attr.registry") for d in graph["fashion_attr.tracking"])


def test_the_kfp_components_only_call_the_adapter() -> None:
    tree = ast.parse((ROOT / "pipelines" / "components.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            "component" in ast.unparse(d) for d in node.decorator_list
        ):
            inner = {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module}
            assert inner <= {"fashion_attr.steps"}, (node.name, inner)
