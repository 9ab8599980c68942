"""The package's shape: layers that only point down, no import cycle, short functions where the
glue lives (train.py and sweep/)."""

import ast
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "softmaxlab"
#: The longest a function in the glue modules may be, in lines (its docstring included).
MAX_LINES = 60


def test_the_layering_contract_holds(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # lint-imports reads [tool.importlinter] from pyproject.toml here
    assert lint_imports(no_cache=True, no_logo=True) == 0


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_anywhere_in_the_package():
    graph = grimp.build_graph("softmaxlab")
    assert len(graph.modules) > 40  # the whole package, subpackages included
    assert _cycles(graph) == []
    # The check can fail: a module that imports one that imports it back is a cycle.
    graph.add_import(importer="softmaxlab.errors", imported="softmaxlab.train")
    assert any("softmaxlab.errors" in c and "softmaxlab.train" in c for c in _cycles(graph))


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]


@pytest.mark.parametrize("module", ["train.py", "checkpoint.py", "experiment.py", "sweep"])
def test_the_glue_has_no_function_longer_than_a_screen(module):
    paths = sorted((PACKAGE / module).rglob("*.py")) if (PACKAGE / module).is_dir() else [PACKAGE / module]
    assert paths and all(p.is_file() for p in paths)
    assert [f for p in paths for f in _long_functions(p)] == []


def test_components_never_import_the_config_the_loop_the_report_or_the_sweep():
    # The layering contract says it too; this names the rule of issue #18 in one place.
    graph = grimp.build_graph("softmaxlab")
    components = ("activations", "heads", "models", "data")
    above = ("config", "train", "checkpoint", "report", "sweep", "experiment", "inference")
    for component in components:
        for upper in above:
            chains = graph.find_shortest_chains(
                importer=f"softmaxlab.{component}", imported=f"softmaxlab.{upper}", as_packages=True
            )
            assert not chains, f"{component} reaches {upper}: {sorted(chains)[:1]}"
