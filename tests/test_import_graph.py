"""The package's imports form no cycle: every import statement of dgemma_helpers/ and kernels/,
those inside functions included (a cycle dodged by importing late is still a cycle), read from the
source. An import of a module's own parent package is no edge (Python runs the parent first
anyway); imports under `if TYPE_CHECKING:` are for annotations only and never run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dgemma_helpers": "dgemma_helpers", "kernels": "dgemma_kernels"}  # folder -> import name


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".")[: len(module.split(".")) - (node.level - 1) - (0 if is_package else 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]


def is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        todo = [ast.parse(path.read_text())]
        while todo:
            node = todo.pop()
            for child in ast.iter_child_nodes(node):
                if is_type_checking(child):
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in imported(module, child, path.name == "__init__.py"):
                        parts = target.split(".")
                        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                            q = ".".join(parts[:i])
                            if q in MODULES and q != module and not module.startswith(q + "."):
                                edges.add(q)
                todo.append(child)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    graph = import_graph()
    assert "dgemma_helpers.model" in graph["dgemma_helpers.fast.step"]
    assert "dgemma_kernels" in graph["dgemma_helpers.model"]


def test_kernels_import_nothing_of_the_kit():
    """kernels/ is the lowest layer: the kit imports it, never the other way round."""
    graph = import_graph()
    assert all(not t.startswith("dgemma_helpers") for m, ts in graph.items() if m.startswith("dgemma_kernels")
               for t in ts)


# The layers, lowest first: a module imports its own layer and those below, never one above. A new
# module goes where its name says it belongs (the longest matching prefix decides), and a module
# that matches no layer fails the test, so the table stays the map of the package.
LAYERS = [
    ("kernels", ["dgemma_kernels"]),
    ("basics", ["dgemma_helpers.errors", "dgemma_helpers.validate", "dgemma_helpers.atomic",
                "dgemma_helpers.devices", "dgemma_helpers.hub", "dgemma_helpers.sampler",
                "dgemma_helpers.tokenizer", "dgemma_helpers.config", "dgemma_helpers.shards",
                "dgemma_helpers.signals"]),
    ("the model", ["dgemma_helpers.model", "dgemma_helpers.packed_experts", "dgemma_helpers.cache",
                   "dgemma_helpers.head", "dgemma_helpers.rng", "dgemma_helpers.vision", "dgemma_helpers.inputs",
                   "dgemma_helpers.memory", "dgemma_helpers.checkpoint", "dgemma_helpers.model_paths"]),
    ("generation", ["dgemma_helpers.generation", "dgemma_helpers.fast"]),
    ("what uses generation", ["dgemma_helpers.engines", "dgemma_helpers.train", "dgemma_helpers.sft",
                              "dgemma_helpers.notebook"]),
    ("plots", ["dgemma_helpers.plots"]),
    ("the player", ["dgemma_helpers.visualization"]),
    ("benchmarks", ["dgemma_helpers.benchmarks"]),
    ("the public face", ["dgemma_helpers.cli", "dgemma_helpers.finetune_cli", "dgemma_helpers.__main__", "dgemma_helpers"]),
]


def layer_of(module: str) -> int:
    # (the package itself, dgemma_helpers/__init__.py, is named exactly: it is no prefix of its modules)
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or (module.startswith(prefix + ".") and prefix != "dgemma_helpers")]
    assert matches, f"{module} is in no layer of LAYERS: add it where it belongs"
    return max(matches)[1]


def test_no_import_reaches_up_a_layer():
    graph = import_graph()
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, ts in sorted(graph.items()) for t in sorted(ts) if layer_of(t) > layer_of(m)]
    assert upward == []


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("dgemma_helpers.model") < layer_of("dgemma_helpers.generation") < layer_of("dgemma_helpers.cli")
    assert layer_of("dgemma_helpers") == len(LAYERS) - 1 and layer_of("dgemma_kernels.moe") == 0
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("dgemma_helpers.somewhere_new")
