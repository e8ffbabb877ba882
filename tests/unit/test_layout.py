"""The package layout shows the architecture: layers import only layers above them, no import
cycles (function-level imports included), no oversized modules, no two modules with one name."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "mystocks_gpu"
#: data flows down this list; a layer may import itself and the layers before it
LAYERS = ["infra", "schemas", "topics", "data", "gpu_ops", "streams", "processors", "jobs", "api", "cli"]
#: importable from anywhere (the foundation)
FOUNDATION = {"mystocks_gpu", "mystocks_gpu.exceptions"}
#: third-party modules a layer must never import (gpu_ops does no I/O; processors hold no clients)
FORBIDDEN = {"gpu_ops": ("confluent_kafka", "redis", "faust", "aiohttp"),
             "processors": ("redis", "faust", "aiohttp"),
             "schemas": ("confluent_kafka", "redis", "faust")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, name: str) -> set[str]:
    """Every module imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            for a in node.names:  # `from pkg import module`
                out.add(f"{mod}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    g: dict[str, set[str]] = {}
    for name, path in mods.items():
        g[name] = {m for m in _imports(path, name) if m in mods and m != name}
    return g


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_layers_import_only_layers_above() -> None:
    bad = []
    for mod, deps in _graph().items():
        lm = _layer(mod)
        if lm is None:
            continue
        for d in deps:
            ld = _layer(d)
            if d in FOUNDATION or ld is None or d.startswith(f"mystocks_gpu.{lm}"):
                continue
            if LAYERS.index(ld) > LAYERS.index(lm):
                bad.append(f"{mod} -> {d}")
    assert not bad, "layer violations:\n" + "\n".join(sorted(bad))


def test_forbidden_clients_per_layer() -> None:
    bad = []
    for name, path in _modules().items():
        lm = _layer(name)
        for imp in _imports(path, name):
            if any(imp == f or imp.startswith(f + ".") for f in FORBIDDEN.get(lm or "", ())):
                bad.append(f"{name} imports {imp}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    g = _graph()
    # a package's __init__ importing its own submodules is not a cycle of design interest
    for mod in g:
        g[mod] = {d for d in g[mod] if not (mod in d and d.startswith(mod + "."))}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    assert not sccs, f"import cycles: {sccs}"


@pytest.mark.parametrize("limit", [800])
def test_modules_are_small(limit: int) -> None:
    big = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert not {n: c for n, c in big.items() if c > limit}


def test_module_names_are_unique_where_it_matters() -> None:
    """No two modules share a base name such as ``worker.py`` or ``registry.py``."""
    names = Counter(p.stem for p in PKG.rglob("*.py")
                    if p.stem not in ("__init__", "__main__", "exceptions", "config") and p.parent.name != "cli")
    assert not {n: c for n, c in names.items() if c > 1}


def test_no_test_code_in_the_package() -> None:
    assert not [p for p in PKG.rglob("*.py") if "harness" in p.stem or p.stem.startswith("test_")]
