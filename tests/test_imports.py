"""Imports point one way: the layers below never import the layers above, and no two modules
import each other at load time. Read from the source (every import statement, also those
inside functions), so a violation fails here before it shows as an import error somewhere."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpokit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, load_time_only: bool = False) -> set[str]:
    """The dpokit modules ``path`` imports; with ``load_time_only``, only its top-level statements."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if load_time_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpokit"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dpokit")}
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# (modules, what they may never import): the lower layer knows nothing of the higher
ABOVE_POLICIES = ("dpokit.train", "dpokit.eval", "dpokit.online", "dpokit.update", "dpokit.sweep", "dpokit.federated",
                  "dpokit.cli", "dpokit.quickstart", "dpokit.rank")
FORBIDDEN = [
    (("dpokit.errors", "dpokit.logps"), ("dpokit",)),
    (("dpokit.store",), ("dpokit.data", "dpokit.losses", "dpokit.policies", *ABOVE_POLICIES)),
    (("dpokit.losses",), ("dpokit.data", "dpokit.config", "dpokit.store", "dpokit.policies", *ABOVE_POLICIES)),
    (("dpokit.data",), ("dpokit.losses", "dpokit.policies", *ABOVE_POLICIES)),
    (("dpokit.config",), ("dpokit.policies", *ABOVE_POLICIES)),
    (("dpokit.policies",), ("dpokit.losses", *ABOVE_POLICIES)),
    (("dpokit.policies.lm.logprobs", "dpokit.policies.lm.layout"), ("dpokit.policies.reference",)),
    (("dpokit.train",), ("dpokit.eval", "dpokit.online", "dpokit.update", "dpokit.sweep", "dpokit.federated",
                         "dpokit.cli", "dpokit.quickstart")),
    (("dpokit.eval",), ("dpokit.online", "dpokit.update", "dpokit.sweep", "dpokit.cli", "dpokit.quickstart", "dpokit.train.loop")),
    (("dpokit.online",), ("dpokit.sweep", "dpokit.cli", "dpokit.quickstart", "dpokit.report")),
    (("dpokit.sweep",), ("dpokit.online", "dpokit.cli", "dpokit.quickstart")),
    (("dpokit.update",), ("dpokit.online", "dpokit.sweep", "dpokit.cli", "dpokit.quickstart")),
    # ranking evaluation reads logs and scores rankers; it trains nothing and runs no command
    (("dpokit.rank",), ("dpokit.train", "dpokit.eval", "dpokit.online", "dpokit.update", "dpokit.sweep",
                        "dpokit.cli", "dpokit.quickstart", "dpokit.losses")),
    # federated rounds call training as a user's script would (a process per local run): never the other commands
    (("dpokit.federated",), ("dpokit.online", "dpokit.sweep", "dpokit.update", "dpokit.cli", "dpokit.quickstart",
                             "dpokit.report", "dpokit.train.loop")),
    (("dpokit.label",), ("dpokit.losses", "dpokit.policies", *ABOVE_POLICIES)),  # reads files of eval, online
    # the report reads folders; it runs no model, so it never needs training, evaluation or the policies
    (("dpokit.report",), ("dpokit.train", "dpokit.eval", "dpokit.policies", "dpokit.losses", "dpokit.cli",
                          "dpokit.quickstart")),
    (("dpokit.train", "dpokit.eval", "dpokit.store", "dpokit.data", "dpokit.config"), ("dpokit.report",)),
]


def test_lower_layers_never_import_higher_ones():
    wrong = [f"{m} imports {dep}" for lower, higher in FORBIDDEN for m, deps in GRAPH.items()
             if within(m, lower) for dep in deps if within(dep, higher) and not within(dep, lower)]
    assert not wrong, "\n".join(sorted(wrong))


def test_only_the_command_line_imports_the_command_line():
    users = sorted(m for m, deps in GRAPH.items() if "dpokit.cli" in deps and m not in ("dpokit.cli", "dpokit.__main__"))
    assert not users


def _with_parents(m: str, deps: set[str]) -> set[str]:
    """Importing ``a.b.c`` runs the packages ``a.b``'s ``__init__`` first (those not already
    loading because ``m`` is inside them), so those are load-time dependencies too."""
    out = set(deps)
    for dep in deps:
        parts = dep.split(".")
        out |= {p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if not (m == p or m.startswith(p + "."))}
    return out


def test_no_import_cycle_at_load_time():
    graph = {module_name(p): _with_parents(module_name(p), imports(p, load_time_only=True))
             for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            if dep == m or m.startswith(dep + "."):  # the package m is in is loading already
                continue
            if state.get(dep) == 1:
                return path + [m, dep]
            if dep not in state and (cycle := visit(dep, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [])):
            raise AssertionError(" -> ".join(cycle[cycle.index(cycle[-1]):]))
