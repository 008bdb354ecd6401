"""The README's LangChain and LlamaIndex examples run as written (offline: HashingEmbedder) and print
what their comments say."""

from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _block(marker: str) -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if marker in b]
    assert len(blocks) == 1, f"expected one README example importing {marker}"
    return blocks[0]


def _run(code: str, tmp_path, monkeypatch, capsys) -> list[str]:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    return capsys.readouterr().out.strip().splitlines()


def test_langchain_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("langchain_core", reason="needs the langchain extra")
    lines = _run(_block("knowledge.adapters.langchain"), tmp_path, monkeypatch, capsys)
    assert "id='ada'" in lines[0] and "Ada Lovelace wrote the first program." in lines[0]
    assert lines[1] == "ada"


def test_llamaindex_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("llama_index.core", reason="needs the llamaindex extra")
    lines = _run(_block("knowledge.adapters.llamaindex"), tmp_path, monkeypatch, capsys)
    assert lines[0] == "ada"
    assert re.fullmatch(r"[0-9a-f-]{36}#0", lines[1])
