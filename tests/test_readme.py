"""The README's Python quickstart runs as written."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs(tmp_path, monkeypatch, capsys):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        first = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]
    assert len(first.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    exec(compile(first, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'name': 'ada'" in out and "key='bob'" in out
