"""Package structure: no import cycles between subpackages, and --help imports nothing heavy."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nvlm_deploy"


def module_imports() -> dict[str, set[str]]:
    """module -> nvlm_deploy modules it imports (at any depth in the file, lazy imports included)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("nvlm_deploy", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found = set()
        tree = ast.parse(path.read_text())
        for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]:
            block.body = []  # annotations only: not an import at run time
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nvlm_deploy"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("nvlm_deploy")}
        graph[name] = found
    return graph


def subpackage(module: str) -> str:
    """The subpackage of a module; config.py counts as the model's (it is the model's configuration)."""
    parts = module.split(".")
    if parts[1:] == ["config"]:
        return "model"
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else "<top>:" + parts[-1]


def test_no_module_imports_itself_through_others():
    graph = module_imports()
    for start in graph:
        seen, stack = set(), [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                assert nxt != start, " -> ".join(path + [nxt])
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))


STAGE_PACKAGES = ("convert", "runtime", "trtllm", "contracts", "serve", "backend", "build", "client")


def test_stage_subpackages_do_not_import_each_other_in_a_cycle():
    edges: dict[str, set[str]] = {}
    for module, imports in module_imports().items():
        for target in imports:
            a, b = subpackage(module), subpackage(target)
            if a != b and a in STAGE_PACKAGES and b in STAGE_PACKAGES:
                edges.setdefault(a, set()).add(b)
    cycles = []

    def visit(node, path):
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                cycles.append(path + [nxt])
            elif nxt not in path and len(path) < 6:
                visit(nxt, path + [nxt])

    for start in STAGE_PACKAGES:
        visit(start, [start])
    assert not cycles, cycles[:5]


def test_contracts_and_trtllm_import_no_stage():
    stages = {"convert", "runtime", "build", "serve", "backend", "commands", "client", "demo"}
    for module, imports in module_imports().items():
        if module.startswith(("nvlm_deploy.contracts", "nvlm_deploy.trtllm")):
            assert not {subpackage(i) for i in imports} & stages, (module, imports)
