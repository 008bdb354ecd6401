"""Every code block in README.md runs as written (issue 11, point 14).

The rule, for whoever adds a section to the README:

* A fenced ```python block is a self-contained script: it runs as `python block.py` in a fresh, empty
  directory and must exit 0. It cannot use names (or files) from another block.
* A fenced ```bash / ```sh / ```shell / ```console block, and an indented (4-space) block, is a shell
  script: it runs with `bash -e` in a fresh, empty directory, with this Python's bin directory first
  on PATH (so `knowledge` and `python` are the installed ones); a leading `$ ` is dropped. A block
  that reads files creates them itself (`printf ... > people.jsonl`). `pip install` commands are
  checked, not run (the suite runs in the installed environment): `.`, `-e .` and `'.[extra,...]'`
  must name extras that pyproject.toml declares.
* A block declares what it needs in an HTML comment on the line above it (invisible on GitHub):
  `<!-- readme-test: needs MODULE ... -->`  skipped, naming the modules, when one cannot be imported
                                              (an optional extra: embed -> sentence_transformers);
  `<!-- readme-test: skip REASON -->`        never run, for a block that cannot run inside the suite
                                              (say why); any other fence language (json, text, ...) is
                                              data and must be marked so;
  `<!-- readme-test: timeout SECONDS -->`    the block's time limit (default 300).
  Directives combine, separated by `;`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

import knowledge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
TIMEOUT_S_DEFAULT = 300
_FENCE = re.compile(r"^```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
_LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s")
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the block's first line (the opening fence, or the first indented line)
    language: str  # "python", "shell" or the fence's own word
    code: str
    directives: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.language}"

    def directive(self, name: str) -> str | None:
        return next((value for key, value in self.directives if key == name), None)


def _directives(lines: list[str], index: int) -> tuple[tuple[str, str], ...]:
    """The `readme-test:` directives on the nearest non-blank line above line `index` (0-based)."""
    above = index - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    match = _DIRECTIVE.match(lines[above].strip()) if above >= 0 else None
    if not match:
        return ()
    out = []
    for part in filter(None, (p.strip() for p in match.group(1).split(";"))):
        name, _, value = part.partition(" ")
        out.append((name, value.strip()))
    return tuple(out)


def readme_blocks(text: str) -> list[Block]:
    """Every code block of a Markdown text: fenced blocks and indented (4-space) blocks outside lists."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        if fence:
            end = next(j for j in range(index + 1, len(lines)) if lines[j].startswith("```"))
            word = fence.group(1).lower() or "text"
            language = "shell" if word in SHELL_LANGUAGES else word
            blocks.append(Block(index + 1, language, "\n".join(lines[index + 1:end]) + "\n",
                                _directives(lines, index)))
            index = end + 1
            continue
        previous = lines[index - 1] if index else ""
        if line.startswith("    ") and line.strip() and not previous.strip() and not _in_list(lines, index):
            end = index
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = [raw[4:] for raw in lines[index:end]]
            blocks.append(Block(index + 1, "shell", "\n".join(body).strip() + "\n", _directives(lines, index)))
            index = end
            continue
        index += 1
    return blocks


def _in_list(lines: list[str], index: int) -> bool:
    """Whether the paragraph before line `index` belongs to a list (indented text there continues an item)."""
    above = index - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    while above >= 0 and lines[above].strip():
        if _LIST_ITEM.match(lines[above]):
            return True
        if not lines[above].startswith(" "):
            return False
        above -= 1
    return False


with open(README, encoding="utf-8") as _f:
    BLOCKS = readme_blocks(_f.read())


def _extras() -> set[str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return set(tomllib.load(f)["project"].get("optional-dependencies", {}))


def _check_pip(command: list[str]) -> None:
    """A README `pip install`: the project itself names only declared extras."""
    for arg in command[2:]:
        if arg.startswith("-") or not arg.startswith("."):
            continue
        match = re.fullmatch(r"\.(?:\[([\w,\-]+)\])?", arg)
        assert match, f"unexpected install target {arg!r}"
        missing = set(filter(None, (match.group(1) or "").split(","))) - _extras()
        assert not missing, f"README installs extras {sorted(missing)} that pyproject.toml does not declare"


def _shell_script(code: str) -> str:
    """The block as a bash script, `pip install` commands checked and left out (heredoc bodies verbatim)."""
    out = []
    heredoc = None
    for raw in code.splitlines():
        line = raw[2:] if raw.startswith("$ ") else raw
        if heredoc is not None:
            out.append(line)
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        opened = _HEREDOC.search(line)
        heredoc = opened.group(1) if opened else None
        if "pip install" not in line:
            out.append(line)
            continue
        commands = []
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if "install" in words and words[:words.index("install")] in (["pip"], ["python", "-m", "pip"]):
                _check_pip(words[words.index("install") - 1:])
                continue
            commands.append(part.strip())
        if commands:
            out.append(" && ".join(commands))
    return "\n".join(out) + "\n"


def _run(block: Block, tmp_path) -> subprocess.CompletedProcess:
    timeout_s = int(block.directive("timeout") or TIMEOUT_S_DEFAULT)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    if block.language == "python":
        script = tmp_path / "block.py"
        script.write_text(block.code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        script = tmp_path / "block.sh"
        script.write_text(_shell_script(block.code), encoding="utf-8")
        argv = ["bash", "-e", str(script)]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block, tmp_path):
    skip = block.directive("skip")
    if skip is not None:
        assert skip, f"{block.id}: `skip` needs a reason"
        pytest.skip(f"{block.id}: {skip}")
    assert block.language in ("python", "shell"), (
        f"{block.id}: a ```{block.language} block is not runnable; mark it <!-- readme-test: skip REASON -->")
    needs = (block.directive("needs") or "").split()
    absent = [module for module in needs if importlib.util.find_spec(module) is None]
    if absent:
        pytest.skip(f"{block.id} needs {absent} (an optional extra), not importable here")
    work = tmp_path / "work"
    work.mkdir()
    done = _run(block, work)
    assert done.returncode == 0, f"{block.id} failed:\n{block.code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def test_every_fence_is_collected():
    """The parser sees every fenced block (an unbalanced or unusual fence would hide one)."""
    with open(README, encoding="utf-8") as f:
        fences = [line for line in f.read().splitlines() if line.startswith("```")]
    assert len(fences) % 2 == 0
    assert len([b for b in BLOCKS if b.language != "shell" or b.code]) >= len(fences) // 2
    assert any(b.language == "python" for b in BLOCKS) and any(b.language == "shell" for b in BLOCKS)


def test_the_parser_rule():
    text = ("intro\n\n    knowledge init a.store\n\n- item\n\n    continued item text\n\n"
            "<!-- readme-test: needs numpy; timeout 5 -->\n```python\nprint(1)\n```\n"
            "```json\n{}\n```\n")
    blocks = readme_blocks(text)
    assert [(b.language, b.code) for b in blocks] == [("shell", "knowledge init a.store\n"),
                                                      ("python", "print(1)\n"), ("json", "{}\n")]
    assert blocks[1].directive("needs") == "numpy" and blocks[1].directive("timeout") == "5"
    assert _shell_script("pip install -e '.[test]' && echo hi\n$ knowledge init s\n") == "echo hi\nknowledge init s\n"
    heredoc = "cat > a.json <<'EOF'\n{\"a\": \"x && pip install y\"}\nEOF\npython -m pip install -e .\n"
    assert _shell_script(heredoc) == "cat > a.json <<'EOF'\n{\"a\": \"x && pip install y\"}\nEOF\n"
    with pytest.raises(AssertionError):
        _shell_script("pip install -e '.[no-such-extra]'\n")


def test_quickstart_runs(tmp_path, monkeypatch, capsys):
    """The first Python block is the fifteen-line quickstart and prints what its comments say."""
    first = next(b for b in BLOCKS if b.language == "python")
    assert len(first.code.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    exec(compile(first.code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'name': 'ada'" in out and "key='bob'" in out


def test_graphrag_block_creates_the_principal_it_reads_as():
    """A block that reads through store.session("name") creates that principal first (runnable alone)."""
    for block in BLOCKS:
        for name in re.findall(r"""\.session\(\s*["'](\w+)["']""", block.code):
            assert re.search(rf"""create_principal\(\s*["']{name}["']""", block.code), (
                f"{block.id} reads as {name!r} without creating that principal")


def test_store_stats_counts_nodes_and_edges(tmp_path):
    """Store.stats() has the whole store's node and edge counts per type, as session().stats() has them."""
    with knowledge.open(str(tmp_path / "s.store")) as store:
        store.define_node_type("Person", key="name")
        store.define_node_type("Item", key="id", properties={"id": "int"})
        store.define_edge_type("KNOWS", source="Person", target="Person")
        with store.session().transaction() as tx:
            tx.upsert_nodes("Person", [{"name": "ada", "_labels": ["secret"]}, {"name": "bob"}])
            tx.upsert_nodes("Item", [{"id": 7}])
            tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob"}])
        stats = store.stats()
        assert stats["nodes"] == {"Person": 2, "Item": 1}
        assert stats["edges"] == {"KNOWS": 1}
        assert {k: stats[k] for k in ("nodes", "edges")} == {k: store.session().stats()[k] for k in ("nodes", "edges")}


def test_a_str_key_given_an_int_says_how_to_declare_int_keys(tmp_path):
    """The README's int-key rule: a key is str unless `properties` declares it; the error says so."""
    with knowledge.open(str(tmp_path / "s.store")) as store:
        store.define_node_type("Item", key="id")
        with pytest.raises(knowledge.errors.TypeMismatch) as info:
            store.session().transaction().upsert_nodes("Item", [{"id": 7}])
        assert "expected str, got int" in str(info.value)
        assert "properties={'id': 'int'}" in str(info.value)
    with open(README, encoding="utf-8") as f:
        assert re.search(r"key[^\n]*\bstr\b[^\n]*unless[^\n]*properties", f.read()), \
            "README says that a key is str unless properties declares its type"
