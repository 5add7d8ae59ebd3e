"""The house rules of docs/architecture.md, checked on the source: imports one way, short functions,
no module reaching into another's private names, and only a user's mistakes printed in one line."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "labjax"
LONG_FUNCTION_LINES = 100
LONG_ALLOWED = {("labjax.config", "base_config")}  # the declarative schema of every key


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The labjax module a dotted name refers to (a module, or the module holding that name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> dict[str, str]:
    """Every labjax module this one imports, anywhere in it (functions included): {module: the local name}."""
    tree = ast.parse(MODULES[module].read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("labjax"):
                    found[_resolve(alias.name)] = alias.asname or alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labjax"):
            for alias in node.names:
                target = _resolve(f"{node.module}.{alias.name}")
                found[target] = alias.asname or alias.name
    found.pop(module, None)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        # A package's __init__ runs before its submodules: that edge is Python's, not a design choice.
        graph[module] = {m for m in _imports(module) if not module.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the modules along it, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return stack[stack.index(child) :] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_through_three_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_labjax_has_no_import_cycles_counting_imports_inside_functions():
    graph = _graph()
    assert graph["labjax.train"] >= {"labjax.run_record", "labjax.evaluation"}  # the parser sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_lower_layers_never_import_higher_ones():
    graph = _graph()
    packages = ("labjax.models", "labjax.data", "labjax.weights")
    lower = [m for m in MODULES if m in packages or m.startswith(tuple(p + "." for p in packages))]
    higher = ("labjax.train", "labjax.vectorize", "labjax.sweep", "labjax.cli", "labjax.run_record", "labjax.config")
    for module in lower:
        assert not graph[module] & set(higher), f"{module} imports {graph[module] & set(higher)}"
    assert graph["labjax.errors"] == set() and graph["labjax.optim"] <= {"labjax.errors"}


def test_no_function_is_longer_than_about_a_hundred_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONG_FUNCTION_LINES and (module, node.name) not in LONG_ALLOWED:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long


def test_no_module_reaches_into_another_modules_private_names():
    reaches = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        local_names = {local: target for target, local in _imports(module).items()}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labjax"):
                reaches += [f"{module}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                if node.value.id in local_names:
                    reaches.append(f"{module}: {node.value.id}.{node.attr}")
    assert not reaches, reaches


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize(
    "error, code, traceback_shown",
    [
        ("errors.ConfigError('config.seed=-1 is invalid')", 2, False),
        ("errors.MissingFileError('no such folder')", 2, False),
        ("ValueError('operands could not be broadcast together')", 1, True),  # a bug deep in numpy or JAX
        ("KeyError('params')", 1, True),
    ],
)
def test_only_a_users_mistake_is_one_line_a_bug_keeps_its_traceback(error, code, traceback_shown, tmp_path):
    """An error raised inside a mode: UserError prints one line and exits 2; any other keeps its traceback."""
    script = f"""
import sys
from absl import app
from labjax import cli, errors

def fail(flags, config, overrides):
    raise {error}

cli.MODES["report"] = fail
sys.argv = ["launch.py", "--mode=report", "--workdir={tmp_path}"]
import launch
app.run(launch.main, flags_parser=lambda argv: cli.parse_flags(argv))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == code, result.stderr
    assert ("Traceback (most recent call last)" in result.stderr) == traceback_shown, result.stderr
    if not traceback_shown:
        assert result.stderr.strip().startswith("error: "), result.stderr
