"""The package's shape, checked: no import cycles (imports inside functions included), no private imports across
modules, modules and functions that fit on a screen. The layer order itself is the import-linter contract in
pyproject.toml (`make test` runs `lint-imports` first)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_transfer_cnn"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Package-internal import edges (at any depth of the code) and imports of another module's `_private` names."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = _target(module, path, node)
                if not target.startswith("hf_transfer_cnn"):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    edges[module].add(full if full in modules else target)
                    if alias.name.startswith("_") and full not in modules and target != module:
                        private.append(f"{module} imports {target}.{alias.name}")
            elif isinstance(node, ast.Import):
                edges[module].update(a.name for a in node.names if a.name.startswith("hf_transfer_cnn."))
    return edges, private


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if n not in edges or n == m:
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles_and_no_private_imports():
    edges, private = _imports(_modules())
    # a package importing its own submodules (its __init__ re-exporting them) is not a cycle
    edges = {m: {n for n in targets if not n.startswith(m + ".")} for m, targets in edges.items()}
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"
    assert private == []


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _function_lengths(path: Path) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]  # the docstring does not count
            if body:
                out.append((node.name, body[-1].end_lineno - body[0].lineno + 1))
    return out


@pytest.mark.parametrize("module", sorted(_modules()))
def test_module_and_function_sizes(module):
    path = _modules()[module]
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
    long = [(name, n) for name, n in _function_lengths(path) if n > MAX_FUNCTION_LINES]
    assert long == []
