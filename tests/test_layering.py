"""Imports only run down the pipeline, and no module imports itself back through a cycle.

Stages, lowest first (CONTRIBUTING.md, docs/extending.md): shared types and the registry, data, the testbed,
modeling, trainer, guidance, labelling, evaluation; the CLI and the demo sit on top. This is the import order, not the
order data flows in (labelling runs before training but imports guidance and the trainer's metrics). A module may
import its own stage or a lower one, at module level or inside a function alike (a deferred import is still a
dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import trl_vlprm

PACKAGE = Path(trl_vlprm.__file__).parent

# Longest prefix wins: a module's stage is that of the longest entry its name starts with.
STAGES = {
    "trl_vlprm.registry": 0,
    "trl_vlprm.types": 0,
    "trl_vlprm.utils": 0,
    "trl_vlprm.data": 1,
    "trl_vlprm.testbed": 2,
    "trl_vlprm.modeling": 3,
    "trl_vlprm.trainer": 4,
    "trl_vlprm.guidance": 5,
    "trl_vlprm.labeling": 6,
    "trl_vlprm.eval": 7,
    # Tiny stand-in models and an offline hub cache, for tests, benchmarks and the CPU demo: above every pipeline
    # stage, so no trainer, guidance, labelling or evaluation code can come to depend on them.
    "trl_vlprm.testing": 8,
    "trl_vlprm.cli": 8,
    "trl_vlprm.scripts": 8,
    "trl_vlprm.demo": 8,
    "trl_vlprm.__main__": 8,
    "trl_vlprm": 8,  # the lazy top-level exports
}

# Upward imports that exist today and are scheduled for removal (issue "One architecture"). The test fails if one
# of them disappears without being taken off this list, so the list can only shrink.
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CYCLES: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> int:
    best = max((prefix for prefix in STAGES if module == prefix or module.startswith(prefix + ".")), key=len)
    return STAGES[best]


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("trl_vlprm"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("trl_vlprm"):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path, _module_name(path)) for path in PACKAGE.rglob("*.py")}


def test_imports_only_run_down_the_pipeline():
    upward = {
        (module, target)
        for module, targets in _graph().items()
        for target in targets
        if _stage(target) > _stage(module) and module != "trl_vlprm"
    }
    assert upward - KNOWN_UPWARD == set(), "imports against the pipeline (lower stage importing a higher one)"
    assert KNOWN_UPWARD - upward == set(), "fixed upward imports: take them off KNOWN_UPWARD"


def test_no_import_cycles_between_modules():
    graph = _graph()
    modules = set(graph)

    def resolve(target: str) -> str | None:
        # `from trl_vlprm.x import name` names a module or a package; cycles are counted between module files.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {
        module: {t for t in map(resolve, targets) if t and t != module and not module.startswith(t + ".")}
        for module, targets in graph.items()
    }
    cycles, state = set(), {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.add(frozenset(stack[stack.index(nxt) :]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles - KNOWN_CYCLES == set(), "import cycles between modules"
    assert KNOWN_CYCLES - cycles == set(), "fixed cycles: take them off KNOWN_CYCLES"
