"""ARCHITECTURE.md names real code: every `path.py:name` it mentions exists, and so does every file or
folder it names in backticks."""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "ARCHITECTURE.md")
_REFERENCE = re.compile(r"`([\w/]+\.py):([\w.]+)`")
_PATH = re.compile(r"`([\w/]+(?:\.py|\.md|/))`")


def _names(tree: ast.Module) -> dict[str, ast.AST]:
    """Top-level functions, classes and assigned names of a module."""
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = node
    return found


def defines(path: str, dotted: str) -> bool:
    """Whether the module at `path` defines `dotted` (`name` or `Class.member`, members found in the
    class body or, for a class of this package, in its bases defined in the same module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    scope = _names(tree)
    parts = dotted.split(".")
    node = scope.get(parts[0])
    for part in parts[1:]:
        if not isinstance(node, ast.ClassDef):
            return False
        members = _names(ast.Module(body=node.body, type_ignores=[]))
        node = members.get(part)
    return node is not None


def references(text: str) -> list[tuple[str, str]]:
    return sorted(set(_REFERENCE.findall(text)))


def test_every_code_reference_exists():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    found = references(text)
    assert len(found) >= 30  # the write and read paths are written out
    missing = [f"{path}:{name}" for path, name in found
               if not os.path.isfile(os.path.join(ROOT, path)) or not defines(os.path.join(ROOT, path), name)]
    assert not missing, f"ARCHITECTURE.md names code that does not exist: {missing}"


def test_every_named_file_exists():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    paths = sorted(set(_PATH.findall(text)))
    missing = [path for path in paths if not os.path.exists(os.path.join(ROOT, path))]
    assert not missing, f"ARCHITECTURE.md names files that do not exist: {missing}"


def test_the_check_catches_a_wrong_name(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("X = 1\n\nclass A:\n    y: int = 0\n\n    def run(self):\n        pass\n\ndef f():\n    pass\n")
    assert references("see `m.py:A.run` and `m.py:f`") == [("m.py", "A.run"), ("m.py", "f")]
    for name in ("X", "A", "A.run", "A.y", "f"):
        assert defines(str(module), name), name
    for name in ("B", "A.walk", "f.x", "X.real"):
        assert not defines(str(module), name), name


def _layout_folders(readme: str) -> list[str]:
    """The folders named in the first column of README.md's layout table."""
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([\w/]+/)` \|", section, re.M)


def test_the_readme_layout_table_matches_the_tree():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        folders = _layout_folders(f.read())
    assert "knowledge/storage/" in folders  # the table was found
    packages = {f"knowledge/{name}/" for name in os.listdir(os.path.join(ROOT, "knowledge"))
                if os.path.isfile(os.path.join(ROOT, "knowledge", name, "__init__.py"))
                and not os.path.islink(os.path.join(ROOT, "knowledge", name))}  # a link to kernels/, say
    packages |= {"knowledge/", "kernels/", "replication/", "bench/", "tests/"}
    assert not packages - set(folders), f"packages missing from README's layout table: {packages - set(folders)}"
    missing = [folder for folder in folders if not os.path.isdir(os.path.join(ROOT, folder))]
    assert not missing, f"README's layout table names folders that do not exist: {missing}"
