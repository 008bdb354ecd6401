"""The replication CLI's bad input: `knowledge serve --role ...` and `knowledge promote` fail with one
`error:` line naming what is wrong, exit 1, no traceback, nothing served."""

from __future__ import annotations

import pytest
from replication_cluster import free_port, seed_store

from knowledge.cli import main


def _error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1, (code, captured)
    assert "Traceback" not in captured.err
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


def test_promote_an_unreachable_node(capsys):
    line = _error(capsys, ["promote", "--server", f"127.0.0.1:{free_port()}"])
    assert "promote" in line and "UNAVAILABLE" in line


@pytest.mark.parametrize(("members", "extra", "words"), [
    (None, [], ["--members"]),
    ("a=z1", [], ["ID=ZONE@HOST:PORT"]),
    ("a=z1@{me},a=z2@127.0.0.1:1", [], ["twice"]),
    ("b=z1@127.0.0.1:1", [], ["--node-id"]),
    ("a=z1@{me},b=z2@127.0.0.1:1", ["--zone", "z9"], ["z9", "z1"]),
    ("a=z1@{me},b=z2@127.0.0.1:1", ["--primary", "127.0.0.1:2"], ["--primary", "127.0.0.1:2"]),
    ("a=z1@{me},b=z2@127.0.0.1:1", ["--commit-policy", "sync(0)"], ["sync"]),
])
def test_serve_role_bad_flags(tmp_path, capsys, members, extra, words):
    path = str(tmp_path / "s")
    seed_store(path)
    me = f"127.0.0.1:{free_port()}"
    argv = ["serve", "--data", path, "--listen", me, "--role", "replica", *extra]
    if members is not None:
        argv += ["--members", members.format(me=me)]
    line = _error(capsys, argv)
    assert all(word in line for word in words), line
