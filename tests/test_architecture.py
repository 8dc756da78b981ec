"""The package's shape, checked: layers import only the layers below them, no module imports another
in a cycle (imports inside functions count), and nothing outside the CLI imports it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import mllm_arb

PACKAGE = Path(mllm_arb.__file__).resolve().parent
#: bottom to top: a layer may import the ones before it (README, "Layout")
LAYERS = ("core", "data", "models", "interventions", "report", "runtime", "pipeline", "organism", "api", "cli")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["mllm_arb", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the package that `name` imports, anywhere in its file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("mllm_arb") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_cycle_among_the_modules():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_outside_the_cli_imports_it():
    offenders = sorted(m for m, targets in _graph().items()
                       if _layer(m) != "cli" and any(_layer(t) == "cli" for t in targets))
    assert not offenders, f"these modules import the CLI: {offenders}"


def test_layers_import_only_the_layers_below_them():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    wrong = []
    for module, targets in _graph().items():
        mine = _layer(module)
        if mine is None:
            continue
        for target in targets:
            theirs = _layer(target)
            if theirs is not None and rank[theirs] > rank[mine]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "upward imports:\n" + "\n".join(sorted(wrong))


def test_every_module_sits_in_a_layer():
    loose = sorted(m for m in _modules() if m != "mllm_arb" and _layer(m) is None)
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    """The checker itself: a planted upward import is found (it reads imports inside functions too)."""
    modules = {"mllm_arb.core.a": tmp_path / "a.py", "mllm_arb.cli.b": tmp_path / "b.py"}
    (tmp_path / "a.py").write_text("def f():\n    from ..cli import b\n")
    (tmp_path / "b.py").write_text("from ..core import a\n")
    assert _imports("mllm_arb.core.a", modules["mllm_arb.core.a"], modules) == {"mllm_arb.cli.b"}
    assert _imports("mllm_arb.cli.b", modules["mllm_arb.cli.b"], modules) == {"mllm_arb.core.a"}
