"""The layout's import rules (docs/design.md §4), read from every import statement in the
source, function-level ones included:

- what SGLang loads (the plugin and the model, and everything they import of ours)
  reaches neither the measurement side nor pandas, aiohttp or matplotlib;
- the serving core imports nothing of ``mixkv_bench`` or ``harness`` except through the
  thin command aliases, which nothing imports;
- the harness imports of the core only its two leaf modules;
- no import circle among our modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("sglang_mixkv", "mixkv_bench", "harness")
HEAVY = ("pandas", "aiohttp", "matplotlib")
#: ``python -m sglang_mixkv.<cmd>`` aliases of measurement commands
ALIASES = {f"sglang_mixkv.{m}" for m in ("bench", "capacity", "roofline", "soak")}
#: what SGLang imports: the plugin entry point and the model class
LOADED_BY_SGLANG = ("sglang_mixkv.sglang_seams", "sglang_mixkv.model")


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


MODULES = module_files()


def imports(name: str) -> set[str]:
    """Every module ``name`` imports anywhere in its file (absolute names; ``from a import
    b`` counts as ``a.b`` when that is one of our modules, else ``a``)."""
    tree = ast.parse(MODULES[name].read_text())
    pkg = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in MODULES else base)
    return out


GRAPH = {m: {i for i in imports(m) if i in MODULES} for m in MODULES}
EXTERNAL = {m: {i.split(".")[0] for i in imports(m) if i not in MODULES} for m in MODULES}


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += GRAPH[m]
    return seen


def test_the_graph_was_read():
    # guard against a parser that finds nothing: known edges must be there
    assert "sglang_mixkv.plan" in GRAPH["sglang_mixkv.sglang_seams.mixkv.pools"]
    assert "sglang_mixkv.model" in GRAPH["sglang_mixkv.sglang_seams"]  # lazy, inside register()
    assert "pandas" in EXTERNAL["mixkv_bench.capacity"]  # lazy, inside main()


@pytest.mark.parametrize("entry", LOADED_BY_SGLANG)
def test_what_sglang_loads_stays_in_the_core(entry):
    reached = closure(entry)
    assert all(m.startswith("sglang_mixkv") for m in reached), sorted(reached)
    assert not reached & ALIASES
    heavy = {m: EXTERNAL[m] & set(HEAVY) for m in reached if EXTERNAL[m] & set(HEAVY)}
    assert not heavy, heavy


def test_core_imports_measurement_only_in_the_command_aliases():
    for m, deps in GRAPH.items():
        if m.startswith("sglang_mixkv") and m not in ALIASES:
            assert not {d for d in deps if not d.startswith("sglang_mixkv")}, m
            assert not EXTERNAL[m] & set(HEAVY), m
    for m, deps in GRAPH.items():
        assert not deps & ALIASES, f"{m} imports a command alias"


def test_harness_uses_only_the_cores_leaf_modules():
    allowed = {"sglang_mixkv.defaults", "sglang_mixkv.device"}
    for m, deps in GRAPH.items():
        if m.startswith("harness"):
            assert {d for d in deps if not d.startswith("harness")} <= allowed, m
    for leaf in allowed:
        assert GRAPH[leaf] == set(), f"{leaf} must stay a leaf"


def test_no_import_circle():
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
