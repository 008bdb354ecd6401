"""The package's layers: no import circles, and no import from a lower layer to a higher one.

The layer order is written once, in LAYERS (bottom first). A module belongs to the layer of the
longest name in LAYERS that names it or a package above it (`knowledge` alone names only the package's
`__init__`). Imports are read with `ast` from every
module under knowledge/ (and kernels/, replication/, installed as knowledge.kernels and
knowledge.replication); `import a.b` and `from a import b` (b a module) both count as importing the
module named, never the packages above it.

Every import counts, wherever it is written: at module level, inside a function (a lazy import) or
under `if TYPE_CHECKING:` (an annotation's import is a dependency too).

- Layer rule: every import goes to the importer's layer or one below.
- Circle rule: the imports form no cycle (strongly connected set of more than one module).

ALLOWED lists the exceptions, each with its reason.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom first. A layer may import itself and the layers before it, never those after it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # knowledge.storage.crypto (AES-GCM of files, the keyring) imports only errors and `cryptography`: it is
    # base so that config (its keys) and the index layer (sealed snapshot files) may use it; knowledge.http_json
    # (JSON POST with retries, the embedders' and the LLM extractor's one HTTP client) imports only errors
    ("base", ("knowledge.errors", "knowledge.config", "knowledge.metrics", "knowledge.storage.crypto",
              "knowledge.http_json")),
    ("kernels", ("knowledge.kernels",)),
    ("index", ("knowledge.index",)),
    ("access", ("knowledge.access",)),
    ("storage", ("knowledge.storage",)),
    ("replication", ("knowledge.replication",)),
    ("api", ("knowledge", "knowledge.store", "knowledge.views", "knowledge.session", "knowledge.session_search",
             "knowledge.session_pin", "knowledge.session_where",
             "knowledge.transaction", "knowledge.ingest", "knowledge.ingest_formats", "knowledge.embed")),
    ("graphrag", ("knowledge.graphrag",)),
    ("service", ("knowledge.server", "knowledge.remote", "knowledge.adapters", "knowledge.slo")),
    ("cli", ("knowledge.cli", "knowledge.cli_ttl", "knowledge.demo", "knowledge.data")),
]

# (importer, imported) -> why it may break the rules.
ALLOWED: dict[tuple[str, str], str] = {
    ("knowledge.session", "knowledge.graphrag.retrieve"):
        "Session.retrieve() is a convenience over knowledge.graphrag.retrieve (the primary API), imported "
        "inside the method when it is called: the core never imports GraphRAG at import time",
    ("knowledge", "knowledge.remote"):
        "knowledge.connect() is a convenience over knowledge.remote.connect (the network client), imported "
        "inside the function when it is called: `import knowledge` never imports the client",
    ("knowledge.remote.session", "knowledge.remote.store"):
        "type-only back-reference (under TYPE_CHECKING, never executed): a RemoteSession names the "
        "RemoteStore that creates it in annotations",
    ("knowledge.replication.primary", "knowledge.replication.node"):
        "type-only back-reference (under TYPE_CHECKING, never executed): the primary role names the "
        "ReplicationNode that drives it in annotations",
}

# Where each top-level package's modules live (kernels/ and replication/ are installed under knowledge.).
SOURCES = {"knowledge": "knowledge", "knowledge.kernels": "kernels", "knowledge.replication": "replication"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def modules(sources: dict[str, str], root: str) -> dict[str, str]:
    """Module name -> file path of every .py file under the source folders."""
    found: dict[str, str] = {}
    for package, folder in sources.items():
        base = os.path.join(root, folder)
        for directory, subdirs, files in os.walk(base):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            relative = os.path.relpath(directory, base)
            prefix = package if relative == "." else f"{package}.{relative.replace(os.sep, '.')}"
            for name in sorted(files):
                if name.endswith(".py"):
                    found[prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"] = os.path.join(directory, name)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, type_only
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for part in child.body:
                yield from _walk_one(part, True)
            for part in child.orelse:
                yield from _walk_one(part, type_only)
        else:
            yield from _walk(child, type_only)


def _walk_one(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, type_only
    else:
        yield from _walk(node, type_only)


def imports(known: dict[str, str], prefixes: tuple[str, ...]) -> list[Import]:
    """Every import between modules of `known` (imports of anything else are ignored)."""
    found: list[Import] = []
    for module, path in known.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = os.path.basename(path) == "__init__.py"
        for node, type_only in _walk(tree, False):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = module.split(".")
                    keep = len(parts) - node.level + (1 if is_package else 0)
                    base = ".".join(parts[:keep] + ([base] if base else []))
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    targets.append(candidate if candidate in known else base)
            for target in targets:
                if target in known and target != module and target.startswith(prefixes):
                    found.append(Import(module, target, node.lineno, type_only))
    return found


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """Index in `layers` of the longest prefix naming `module` or a package above it. A top-level
    name (no dot: `knowledge`) names only its own `__init__`, so a new module is in no layer until
    it is placed."""
    best, best_length = None, -1
    for position, (_, names) in enumerate(layers):
        for name in names:
            below = "." in name and module.startswith(name + ".")
            if (module == name or below) and len(name) > best_length:
                best, best_length = position, len(name)
    return best


def circles(found: list[Import], allowed: dict[tuple[str, str], str]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module)."""
    graph: dict[str, set[str]] = {}
    for item in found:
        if (item.importer, item.imported) not in allowed:
            graph.setdefault(item.importer, set()).add(item.imported)
            graph.setdefault(item.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def violations(found: list[Import], layers: list[tuple[str, tuple[str, ...]]],
               allowed: dict[tuple[str, str], str]) -> list[str]:
    """Imports from a lower layer to a higher one, as readable lines."""
    out = []
    for item in found:
        if (item.importer, item.imported) in allowed:
            continue
        low, high = layer_of(item.importer, layers), layer_of(item.imported, layers)
        if low is not None and high is not None and high > low:
            out.append(f"{item.importer} (layer {layers[low][0]}) imports {item.imported} "
                       f"(layer {layers[high][0]}) at line {item.line}")
    return out


def check(sources: dict[str, str], root: str, layers: list[tuple[str, tuple[str, ...]]],
          allowed: dict[tuple[str, str], str]) -> tuple[list[str], list[list[str]], list[str]]:
    """(modules in no layer, import circles, upward imports) of the package under `root`."""
    known = modules(sources, root)
    found = imports(known, tuple(sources))
    unplaced = sorted(m for m in known if layer_of(m, layers) is None)
    return unplaced, circles(found, allowed), violations(found, layers, allowed)


def test_the_package_has_no_import_circle_and_no_upward_import():
    unplaced, cycles, upward = check(SOURCES, ROOT, LAYERS, ALLOWED)
    assert not unplaced, f"modules in no layer (add them to LAYERS in {__file__}): {unplaced}"
    assert not cycles, f"import circles: {cycles}"
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def _write(root: str, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def test_the_check_finds_a_circle_and_an_upward_import_in_a_synthetic_package(tmp_path):
    layers = [("low", ("pkg.low",)), ("high", ("pkg", "pkg.high"))]
    sources = {"pkg": "pkg"}
    clean = {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "from pkg.low import b\n",
        "pkg/low/b.py": "import os\n",
        "pkg/high/__init__.py": "",
        "pkg/high/c.py": "from typing import TYPE_CHECKING\nfrom pkg.low.a import thing\n"
                         "if TYPE_CHECKING:\n    from pkg.high import d\n",
        "pkg/high/d.py": "from . import c\nfrom ..low import b\n",
    }
    _write(str(tmp_path), clean)
    unplaced, cycles, upward = check(sources, str(tmp_path), layers, {})  # c <-> d, one side type-only
    assert not unplaced and cycles == [["pkg.high.c", "pkg.high.d"]] and not upward
    assert check(sources, str(tmp_path), layers, {("pkg.high.c", "pkg.high.d"): "a reason"}) == ([], [], [])
    _write(str(tmp_path), {"pkg/high/c.py": "from pkg.low.a import thing\n"})
    assert check(sources, str(tmp_path), layers, {}) == ([], [], [])

    _write(str(tmp_path), {"pkg/low/b.py": "def late():\n    from pkg.low.a import x\n"})  # a -> b -> a
    unplaced, cycles, upward = check(sources, str(tmp_path), layers, {})
    assert cycles == [["pkg.low.a", "pkg.low.b"]] and not upward

    _write(str(tmp_path), {"pkg/high/e.py": "import os\n",
                           "pkg/low/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from pkg.high.e import E\n"})  # upward, even if type only
    unplaced, cycles, upward = check(sources, str(tmp_path), layers, {})
    assert not cycles and upward == ["pkg.low.b (layer low) imports pkg.high.e (layer high) at line 3"]
    allowed = {("pkg.low.b", "pkg.high.e"): "a reason"}
    assert check(sources, str(tmp_path), layers, allowed) == ([], [], [])

    _write(str(tmp_path), {"pkg/stray.py": "import pkg.high.c\n"})  # a module in no layer
    assert check(sources, str(tmp_path), layers, allowed)[0] == ["pkg.stray"]
