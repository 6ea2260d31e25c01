"""The package's import graph, read from the sources with `ast`: no cycles, and imports point down (DESIGN.md).

Every import counts, at module level or inside a function (an import inside a function only hides a cycle until the
function runs). `from vitlab.x import y` is an edge to `vitlab.x.y` when y is a submodule, else to `vitlab.x`.
A submodule's implicit import of its parent package is not an edge: every package would be a cycle with its children.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "vitlab"


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import's base (`from ..x import y` in module `a.b.c` -> `a.x`)."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `module` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            # `import vitlab.a.b` binds vitlab, but the module it needs is vitlab.a.b: take the longest known prefix.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = module_files(src)
    return {m: imports_of(m, p, set(files)) for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def format_graph(graph: dict[str, set[str]]) -> str:
    short = lambda m: m.removeprefix(f"{PACKAGE}.")  # noqa: E731
    return "\n".join(f"{short(m)} -> {', '.join(sorted(map(short, d))) or '-'}" for m, d in sorted(graph.items()))


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# ----- the checks themselves -----------------------------------------------------------------------------------------
def test_graph_reader_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from vitlab.a import thing\n")
    (pkg / "a.py").write_text("def f():\n    import vitlab.sub.c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\nfrom .. import a\n")
    (pkg / "sub" / "c.py").write_text("from vitlab.sub import d\nfrom ..a import f\n")
    (pkg / "sub" / "d.py").write_text("import os\n")
    graph = import_graph(tmp_path)
    assert graph == {
        "vitlab": {"vitlab.a"},
        "vitlab.a": {"vitlab.sub.c"},
        "vitlab.sub": {"vitlab.sub.c", "vitlab.a"},
        "vitlab.sub.c": {"vitlab.sub.d", "vitlab.a"},
        "vitlab.sub.d": set(),
    }
    assert find_cycle(graph) == ["vitlab.a", "vitlab.sub.c", "vitlab.a"]


def test_no_import_cycles():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + "\n\nthe graph:\n" + format_graph(graph)


def test_layering():
    """DESIGN.md: registry imports nothing of the package but errors; weights no model; layers/ops point down."""
    graph = import_graph()
    bad = []
    for module, deps in graph.items():
        for dep in deps:
            if module == "vitlab.registry" and dep != "vitlab.errors":
                bad.append(f"{module} -> {dep} (the registry is a leaf: it may import vitlab.errors only)")
            if _under(module, "vitlab.weights") and not (_under(dep, "vitlab.weights") or dep == "vitlab.errors"):
                bad.append(f"{module} -> {dep} (weights converters are pure dict -> dict functions)")
            low = _under(module, "vitlab.layers") or _under(module, "vitlab.ops")
            high = ("vitlab.models", "vitlab.engine", "vitlab.cli", "vitlab.factory", "vitlab.registry")
            if low and any(_under(dep, h) for h in high):
                bad.append(f"{module} -> {dep} (layers/ops sit below models, engine and cli)")
    assert not bad, "imports against DESIGN.md's layering:\n" + "\n".join(sorted(bad))


def test_factory_is_the_only_module_joining_registry_models_and_weights():
    graph = import_graph()
    for module, deps in graph.items():
        if module == "vitlab.factory":
            continue
        uses_weights = any(_under(d, "vitlab.weights") and d != "vitlab.weights.io" for d in deps)
        assert not ("vitlab.registry" in deps and uses_weights), f"{module} joins registry and weights: use factory"


def test_every_module_imports_alone():
    """Each module in a fresh interpreter of its own would be slow; one interpreter, with sys.modules cleared."""
    script = (
        "import importlib, sys\n"
        f"names = {sorted(set(module_files()) - {'vitlab.__main__'})!r}\n"  # __main__ runs the CLI
        "base = set(sys.modules)\n"
        "failed = []\n"
        "for name in names:\n"
        "    for m in [m for m in sys.modules if m == 'vitlab' or m.startswith('vitlab.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}
    )
    assert r.returncode == 0, r.stdout + r.stderr
