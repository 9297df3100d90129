"""The server's shape: no import cycles inside ``shaledb.server``, and the layering rules of
docs/design.md ("The server": net / exec / keyspace / admin / commands).

Read from the source with ``ast`` (nothing is imported). Every import counts, those under
``if TYPE_CHECKING:`` included: a cycle of type names is the same tangle as a cycle of
imports, only hidden from the interpreter. An import inside a function is allowed only with a
comment on the lines just above it saying why (it is then left out of the cycle check, since
it runs after every module is loaded, but not out of the layering rules).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "shaledb.server"


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _modules(root: str) -> dict[str, tuple[Path, bool]]:
    base = SRC / root.replace(".", "/")
    found = {}
    for path in sorted(base.rglob("*.py")):
        name, is_pkg = _module_name(path)
        found[name] = (path, is_pkg)
    return found


def _imports(name: str, path: Path, is_pkg: bool, known: set[str]) -> tuple[list[Edge],
                                                                          list[str]]:
    """The shaledb modules ``name`` imports, and the function-level imports without a
    comment saying why."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    edges: list[Edge] = []
    unexplained: list[str] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if node.level:
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        out = []
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            out.append(sub if sub in known else module)
        return out

    def explained(node: ast.stmt) -> bool:
        above = lines[max(0, node.lineno - 4):node.lineno - 1]
        return any(line.strip().startswith("#") for line in above) \
            or "#" in lines[node.lineno - 1]

    def visit(nodes: list[ast.stmt], lazy: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found = [t for t in targets(node) if t.startswith("shaledb")]
                if lazy and found and not explained(node):
                    unexplained.append(f"{name}:{node.lineno}")
                edges.extend(Edge(name, t, node.lineno, lazy) for t in found)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(node.body, True)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    child = getattr(node, field, None)
                    if isinstance(child, list):
                        visit([c for c in child if isinstance(c, ast.stmt)] +
                              [s for h in child if isinstance(h, ast.ExceptHandler)
                               for s in h.body], lazy)

    visit(tree.body, False)
    return edges, unexplained


def _graph() -> tuple[dict[str, list[Edge]], list[str]]:
    mods = _modules("shaledb")
    known = set(mods)
    graph: dict[str, list[Edge]] = {}
    unexplained: list[str] = []
    for name, (path, is_pkg) in mods.items():
        edges, bad = _imports(name, path, is_pkg, known)
        graph[name] = edges
        unexplained += bad
    return graph, unexplained


def _cycles(graph: dict[str, list[Edge]], within: str) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing
    itself) among the modules under ``within``, by Tarjan's algorithm."""
    nodes = [n for n in graph if n == within or n.startswith(within + ".")]
    succ = {n: sorted({e.target for e in graph[n] if not e.lazy and e.target in graph
                       and (e.target == within or e.target.startswith(within + "."))})
            for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strong(w)
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
            if len(component) > 1 or v in succ[v]:
                found.append(sorted(component))

    for v in nodes:
        if v not in index:
            strong(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check below is only worth something if it can fail.
    e = lambda s, t: Edge(s, t, 1, False)  # noqa: E731
    graph = {"p.a": [e("p.a", "p.b")], "p.b": [e("p.b", "p.c")], "p.c": [e("p.c", "p.a")],
             "p.d": [e("p.d", "p.a")]}
    assert _cycles(graph, "p") == [["p.a", "p.b", "p.c"]]
    graph["p.c"] = [Edge("p.c", "p.a", 1, True)]  # a lazy import closes no cycle
    assert _cycles(graph, "p") == []


def test_an_import_inside_a_function_without_a_reason_is_found(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    x = 1\n\n    from shaledb.server import errors\n"
                      "\n\ndef g():\n    # needed late: a reason\n"
                      "    from shaledb.server import glob\n")
    known = {"shaledb.server.errors", "shaledb.server.glob"}
    edges, unexplained = _imports("shaledb.server.m", source, False, known)
    assert unexplained == ["shaledb.server.m:4"]
    assert all(e.lazy for e in edges) and len(edges) == 2


def test_no_import_cycles_in_the_server() -> None:
    graph, _ = _graph()
    assert _cycles(graph, PACKAGE) == []


def test_imports_inside_functions_say_why() -> None:
    _, unexplained = _graph()
    assert [u for u in unexplained if u.startswith(PACKAGE)] == []


#: Where each module of the server belongs.
def _layer(module: str) -> str:
    rest = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    head = rest.split(".")[0]
    if head in ("net", "exec", "keyspace", "admin", "commands", "cluster"):
        return head
    if head in ("errors", "glob"):
        return "shared"
    return "root"  # the package itself, server.py (the composition root), krange (compat)


#: Modules of another layer that a layer may import, by layer (docs/design.md lists the
#: same rules). ``shared`` (errors, glob) and the engine are open to all.
_ALLOWED: dict[str, tuple[str, ...]] = {
    # The keyspace knows nothing of clients, commands, the network or the configuration.
    "keyspace": (),
    # The state of administration (ACL, config, stats, slowlog, logs) sits below exec; its
    # reports (INFO, metrics, CONFIG) see the server only through exec.context.Services.
    "admin": ("keyspace.", "net.security", "net.fdlimit", "net.ratelimit", "exec.context",
              "exec.command", "exec.client", "cluster.etcd", "cluster.group"),
    "exec": ("keyspace.", "admin.acl", "admin.config", "admin.stats", "admin.slowlog",
             "net.protocol", "net.ratelimit", "net.security", "cluster.runner"),
    # Handlers reach the server only through exec.context.Services; from the network they
    # know only the reply types.
    "commands": ("exec.", "keyspace.", "admin.", "net.protocol", "cluster."),
    # Failover (etcd, the election) drives the node through NodeControl: it imports no
    # other layer of the server.
    "cluster": (),
    # The network runs requests through exec; it never runs a command or reads a key itself.
    "net": ("exec.client", "exec.context", "exec.deferred", "exec.dispatch",
            "exec.durability", "admin.config", "admin.logs", "admin.acl"),
    "shared": (),
}
#: Admin modules below exec (exec imports them): they may not import exec, but for the
#: command table's spec (exec.command, which imports only net.protocol).
_ADMIN_STATE = ("admin.acl", "admin.config", "admin.stats", "admin.slowlog", "admin.logs")


def _violations(graph: dict[str, list[Edge]]) -> list[str]:
    out = []
    for module, edges in graph.items():
        if not module.startswith(PACKAGE + ".") and module != PACKAGE:
            if module.startswith("shaledb.client") and any(
                    e.target.startswith(PACKAGE) for e in edges):
                out.append(f"{module} (client code) imports the server")
            continue
        layer = _layer(module)
        local = module[len(PACKAGE) + 1:]
        for e in edges:
            if not e.target.startswith(PACKAGE):
                if e.target.startswith("shaledb.client") and local != "krange":
                    out.append(f"{module}:{e.line} imports client code {e.target}")
                continue
            target = e.target[len(PACKAGE) + 1:] if e.target != PACKAGE else ""
            other = _layer(e.target)
            if other == "root" and layer != "root":
                out.append(f"{module}:{e.line} imports the server root {e.target}")
                continue
            if other in (layer, "shared") or layer == "root":
                if layer == "shared" and other != "shared":
                    out.append(f"{module}:{e.line} (shared) imports {e.target}")
                continue
            if not any(target == a or (a.endswith(".") and target.startswith(a))
                       for a in _ALLOWED[layer]):
                out.append(f"{module}:{e.line} ({layer}) may not import {e.target}")
            if local.startswith(_ADMIN_STATE) and other == "exec" and target != "exec.command":
                out.append(f"{module}:{e.line} (admin state, below exec) imports {e.target}")
    return out


def test_the_layering_rules_hold() -> None:
    graph, _ = _graph()
    assert _violations(graph) == []


@pytest.mark.parametrize("source, target", [
    ("shaledb.server.net.connection", "shaledb.server.commands.strings"),
    ("shaledb.server.net.connection", "shaledb.server.keyspace.keyspace"),
    ("shaledb.server.keyspace.keyspace", "shaledb.server.exec.client"),
    ("shaledb.server.commands.keys", "shaledb.server.net.connection"),
    ("shaledb.server.commands.keys", "shaledb.server.server"),
    ("shaledb.server.exec.dispatch", "shaledb.server.commands"),
    ("shaledb.server.admin.acl", "shaledb.server.exec.context"),
    ("shaledb.server.errors", "shaledb.server.keyspace.values"),
    ("shaledb.client.krange", "shaledb.server.errors"),
    ("shaledb.server.cluster.election", "shaledb.server.exec.dispatch"),
    ("shaledb.server.net.connection", "shaledb.server.cluster.runner"),
    ("shaledb.server.exec.dispatch", "shaledb.client.krange"),
])
def test_the_layering_check_refuses(source: str, target: str) -> None:
    graph, _ = _graph()
    graph = {**graph, source: [*graph[source], Edge(source, target, 1, False)]}
    assert any(v.startswith(source) for v in _violations(graph))


def test_the_krange_helpers_keep_their_documented_name() -> None:
    # README documented shaledb.server.krange before the helpers moved to shaledb.client.
    import shaledb.client.krange as new
    import shaledb.server.krange as old

    assert (old.krange, old.iter_krange, old.kdelrange, old.kbatch) == (
        new.krange, new.iter_krange, new.kdelrange, new.kbatch)
