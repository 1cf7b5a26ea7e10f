"""The architecture, checked: every module sits in one layer and imports only from its own layer or the
ones below; what runs on nodes needs only the standard library; rich and Textual stay in the UI and the
commands; no two modules import each other, directly or around a circle.

Layers, bottom up (``LAYERS``): what is shipped to nodes, the pure model, the transports, the judges,
the features, the UI, the commands.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "clusterkit"

#: Module name prefixes (most specific first) and their layer; a module takes the first that matches.
LAYERS: list[tuple[str, int]] = [
    # 0: shipped to nodes and run there: the agent, its collectors, the relay hop, the env unpacker, the
    # workload scripts (run by DeepSpeed's launcher inside the training env)
    ("clusterkit", 0), ("clusterkit.node", 0), ("clusterkit.workloads.scripts", 0),
    # 1: the pure model
    ("clusterkit.core", 1), ("clusterkit.errors", 1),
    # 2: the transports: one Nodes interface over SSH, Slurm and this machine, and their plumbing
    ("clusterkit.cluster", 2),
    # 3: the judges: checks on facts, DeepSpeed configs
    ("clusterkit.checks", 3), ("clusterkit.dsconfig", 3),
    # 4: the features, written once against Nodes
    ("clusterkit.survey", 4), ("clusterkit.doctor", 4), ("clusterkit.launch", 4), ("clusterkit.bootstrap", 4),
    ("clusterkit.envpack", 4), ("clusterkit.workloads", 4), ("clusterkit.monitor", 4), ("clusterkit.nodecheck", 4),
    ("clusterkit.history", 4),
    ("clusterkit.stacks", 4),
    # 5: what shows results: renderers, progress views, the TUI
    ("clusterkit.ui", 5),
    # 6: the command line
    ("clusterkit.commands", 6), ("clusterkit.cli", 6), ("clusterkit.__main__", 6), ("clusterkit.nodecheck.__main__", 6),
]
#: Known exceptions, each with why and what ends it. Empty is the goal; a new entry needs a reason.
KNOWN: dict[str, str] = {}
UI_LIBRARIES = ("rich", "textual")
NODE_ALLOWED = {"pynvml", "torch", "deepspeed", "numpy"}  # the training env's, on nodes that have them


def layer_of(module: str) -> int:
    for prefix, layer in sorted(LAYERS, key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports at run time (not under TYPE_CHECKING); top level only on request."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def own(name: str) -> str | None:
    """The clusterkit module ``name`` refers to (``pkg.mod.func`` -> ``pkg.mod``), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module: str) -> None:
    if module in KNOWN:
        pytest.skip(KNOWN[module])
    mine = layer_of(module)
    above = sorted({target for name in imports(MODULES[module]) if (target := own(name)) and
                    layer_of(target) > mine})
    assert not above, f"{module} (layer {mine}) imports from above: {above}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) < 5))
def test_rich_and_textual_stay_in_the_ui_and_the_commands(module: str) -> None:
    if module in KNOWN:
        pytest.skip(KNOWN[module])
    used = sorted(n for n in imports(MODULES[module]) if n.split(".")[0] in UI_LIBRARIES)
    assert not used, f"{module} is library code but imports {used}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) == 0 and m != "clusterkit"))
def test_what_runs_on_nodes_needs_only_the_standard_library(module: str) -> None:
    siblings = {p.stem for p in MODULES[module].parent.glob("*.py")}  # scripts run with their directory on the path
    outside = sorted(n for n in imports(MODULES[module]) if not n.startswith("clusterkit")
                     and n.split(".")[0] not in sys.stdlib_module_names | NODE_ALLOWED | siblings)
    assert not outside, f"{module} runs on nodes but imports {outside}"


def test_no_import_circles() -> None:
    # Imports inside functions count too: deferring an import hides a circle, it does not remove it.
    graph = {m: {t for n in imports(p) if (t := own(n)) and t != m and not m.startswith(t + ".")}
             for m, p in MODULES.items()}
    circles = [scc for scc in _strongly_connected(graph) if len(scc) > 1]
    assert not circles, f"import circles: {circles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component))
    return found
