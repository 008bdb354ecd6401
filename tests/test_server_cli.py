"""`knowledge serve` as a real subprocess, the read verbs through it (--server/--token), the new verbs
(search, retrieve, scan, export) against a directory and a server, and SIGTERM draining under write load:
every acknowledged commit is in the store after it stops."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

import knowledge
from knowledge.cli import main
from knowledge.errors import KnowledgeError

READY_S = 60


def prepare(path: str) -> str:
    """A store with a few Docs, GraphRAG-free; returns an admin token."""
    with knowledge.open(path) as store:
        store.define_node_type("Doc", key="name", properties={"n": "int", "body": "text", "tags": "list[str]",
                                                              "emb": {"type": "vector[2]", "metric": "l2"}})
        store.define_edge_type("LINK", source="Doc", target="Doc")
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"name": f"d{i}", "n": i, "body": f"doc number {i} about bees" if i % 2 else
                                     f"doc number {i}", "tags": [f"t{i % 3}"], "emb": [float(i), 1.0],
                                     "_labels": ["public"]} for i in range(6)])
            tx.upsert_edges("LINK", [{"src": "d0", "dst": "d1"}, {"src": "d1", "dst": "d2"}])
        store.create_principal("root", admin=True)
        store.create_principal("reader", read=["public"])
        return store.issue_token("root")


def knowledge_command() -> list[str]:
    script = shutil.which("knowledge")
    return [script] if script else [sys.executable, "-m", "knowledge.cli"]


class Serve:
    """`knowledge serve --data PATH --listen 127.0.0.1:0 ...` in a subprocess, ready once it printed its address."""

    def __init__(self, path: str, *extra: str) -> None:
        self.process = subprocess.Popen([*knowledge_command(), "serve", "--data", path, "--listen", "127.0.0.1:0",
                                         *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + READY_S
        line = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("listening on ") or not line:
                break
        if not line.startswith("listening on "):
            self.process.kill()
            raise AssertionError(f"server did not start: {line!r} {self.process.stderr.read()}")
        self.address = line.split()[2]

    def stop(self, timeout_s: float = 60) -> tuple[int, str, str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, out, err


@pytest.fixture
def served(tmp_path):
    path = str(tmp_path / "store")
    token = prepare(path)
    server = Serve(path)
    yield path, server, token
    if server.process.poll() is None:
        server.stop()


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_read_verbs_through_the_server(served, capsys, tmp_path):
    path, server, token = served
    remote = ["--server", server.address, "--token", token]
    code, out, err = cli(capsys, "stats", path)  # the server owns the directory
    assert code == 1 and "locked" in err
    code, out, _ = cli(capsys, "stats", *remote)
    stats = json.loads(out)
    assert code == 0 and stats["nodes"] == {"Doc": 6} and stats["edges"] == {"LINK": 2} and stats["lsn"] > 0
    assert json.loads(cli(capsys, "get", *remote, "Doc", "d1")[1])["n"] == 1
    assert [r["key"] for r in json.loads(cli(capsys, "neighbors", *remote, "Doc", "d1", "--direction", "both")[1])] \
        == ["d0", "d2"]
    assert "Doc" in json.loads(cli(capsys, "schema", *remote)[1])["nodes"]
    rows = json.loads(cli(capsys, "search", *remote, "--vector", "[2.0, 1.0]", "-k", "2", "--columns", "n")[1])
    assert [r["_key"] for r in rows] == ["d2", "d1"] and rows[0]["n"] == 2
    rows = json.loads(cli(capsys, "search", *remote, "--query", "bees", "-k", "5")[1])
    assert sorted(r["_key"] for r in rows) == ["d1", "d3", "d5"]
    rows = json.loads(cli(capsys, "scan", *remote, "Doc", "--where", '{"n": [">=", 4]}', "--columns", "n")[1])
    assert [r["n"] for r in rows] == [4, 5]
    out_file = str(tmp_path / "docs.parquet")
    code, out, _ = cli(capsys, "export", *remote, "Doc", out_file, "--where", '{"tags": ["contains", "t0"]}')
    assert code == 0 and json.loads(out)["rows"] == 2
    assert sorted(pq.read_table(out_file).column("name").to_pylist()) == ["d0", "d3"]
    with knowledge.connect(server.address, token=token) as client:
        reader_token = client.issue_token("reader")
    code, out, _ = cli(capsys, "stats", "--server", server.address, "--token", reader_token)
    assert code == 0 and json.loads(out)["nodes"] == {"Doc": 6}  # a non-admin gets the visible counts
    code, _, err = cli(capsys, "get", "--server", server.address, "--token", "kn_wrong", "Doc", "d1")
    assert code == 1 and "token" in err
    code, _, err = cli(capsys, "get", "--server", server.address, path, "Doc", "d1")
    assert code == 1 and "not both" in err
    assert server.stop()[0] == 0


def test_scan_pages_and_where_forms_in_the_cli(served, capsys, tmp_path):
    """`knowledge scan --limit/--offset/--cursor` pages in id order, on a directory and through a server;
    the next page's cursor is printed on stderr; --where takes between, null and $or."""
    path, server, token = served
    remote = ["--server", server.address, "--token", token]
    names, cursor, pages = [], None, 0
    while True:
        code, out, err = cli(capsys, "scan", *remote, "Doc", "--limit", "4", "--columns", "n",
                             *(["--cursor", cursor] if cursor else []))
        assert code == 0
        names += [r["n"] for r in json.loads(out)]
        cursor = re.search(r"next page: --cursor (\S+)", err).group(1)
        pages += 1
        if "more rows follow" not in err:
            break
    assert names == list(range(6)) and pages == 2
    code, out, err = cli(capsys, "scan", *remote, "Doc", "--offset", "4", "--columns", "n")
    assert [r["n"] for r in json.loads(out)] == [4, 5] and "no more rows yet" in err
    where = '{"$or": [{"n": ["between", [1, 2]]}, {"$or": [{"n": ["in", [5]]}, {"tags": null}]}]}'
    rows = json.loads(cli(capsys, "scan", *remote, "Doc", "--where", where, "--columns", "n")[1])
    assert [r["n"] for r in rows] == [1, 2, 5]
    code, out, err = cli(capsys, "scan", *remote, "Doc", "--cursor", "bogus")
    assert code == 1 and "not a scan cursor" in err
    assert server.stop()[0] == 0
    code, out, err = cli(capsys, "scan", path, "Doc", "--limit", "2", "--offset", "1", "--where", where)
    assert code == 0 and [r["n"] for r in json.loads(out)] == [2, 5] and "no more rows yet" in err
    code, _, err = cli(capsys, "scan", path, "Doc", "--offset", "-1")
    assert code == 1 and "offset" in err


def test_export_through_a_server_pages_past_its_message_cap(tmp_path, capsys, monkeypatch):
    """A scan whose reply is over the server's --message-bytes-max fails saying so; export pages through
    scan cursors (halving its pages while they are over the cap) and writes every row once."""
    from knowledge.server import cli_verbs

    path = str(tmp_path / "store")
    token = prepare(path)
    with knowledge.open(path, create=False) as store:
        store.session().transaction().upsert_nodes("Doc", [{"name": f"big{i:03}", "body": "x" * 1000,
                                                            "_labels": ["public"]} for i in range(300)]).commit()
    server = Serve(path, "--message-bytes-max", str(64 << 10))
    try:
        remote = ["--server", server.address, "--token", token]
        code, _, err = cli(capsys, "scan", *remote, "Doc")
        assert code == 1 and "--message-bytes-max" in err and "larger than max 65536 bytes" in err
        monkeypatch.setattr(cli_verbs, "EXPORT_PAGE_ROWS", 256)  # over the cap: halved to 128, then 64 rows
        out_file = str(tmp_path / "all.jsonl")
        code, out, _ = cli(capsys, "export", *remote, "Doc", out_file)
        assert code == 0 and json.loads(out)["rows"] == 306
        lines = [json.loads(line) for line in open(out_file).read().splitlines()]
        assert len({row["_id"] for row in lines}) == 306
        code, out, _ = cli(capsys, "export", *remote, "Doc", out_file, "--limit", "150")
        assert code == 0 and json.loads(out)["rows"] == 150
    finally:
        assert server.stop()[0] == 0


def test_new_verbs_on_a_directory(tmp_path, capsys):
    path = str(tmp_path / "store")
    prepare(path)
    for fmt in ("parquet", "jsonl", "csv"):
        out_file = str(tmp_path / f"docs.{fmt}")
        code, out, _ = cli(capsys, "export", path, "Doc", out_file, "--columns", "n,tags")
        assert code == 0 and json.loads(out) == {"type": "Doc", "rows": 6, "file": out_file, "format": fmt}
    lines = open(tmp_path / "docs.jsonl").read().splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(6)) and json.loads(lines[0])["tags"] == ["t0"]
    csv_text = open(tmp_path / "docs.csv").read()
    assert csv_text.splitlines()[0].replace('"', "") == "_id,_labels,n,tags" and '[""t0""]' in csv_text
    code, _, err = cli(capsys, "export", path, "Doc", str(tmp_path / "docs.xlsx"))
    assert code == 1 and "--format" in err and not os.path.exists(tmp_path / "docs.xlsx")
    code, _, err = cli(capsys, "scan", path, "Doc", "--where", "{not json")
    assert code == 1 and "--where" in err
    code, _, err = cli(capsys, "search", path, "--vector", "[1.0, 1.0]", "--query", "x")
    assert code == 1 and "one of them" in err
    code, _, err = cli(capsys, "retrieve", path, "anything", "--mode", "keyword")
    assert code == 1 and "ingest" in err  # no GraphRAG schema: the core's UnknownType, said plainly
    code, _, err = cli(capsys, "stats")
    assert code == 1 and "--server" in err


def test_serve_refuses_plaintext_off_loopback(tmp_path, capsys):
    path = str(tmp_path / "store")
    prepare(path)
    code, _, err = cli(capsys, "serve", "--data", path, "--listen", "0.0.0.0:0")
    assert code == 1 and "--insecure" in err
    server = Serve(path, "--insecure")  # forced: it serves, and says so loudly
    code, out, err = server.stop()
    assert code == 0 and "PLAINTEXT" in err and "stopped" in out


def test_serve_refuses_bad_thread_settings(tmp_path, capsys):
    """--read-workers and --gil-switch-ms out of range are refused before anything listens."""
    path = str(tmp_path / "store")
    prepare(path)
    for flags, named in ((["--read-workers", "-1"], "read_workers"), (["--gil-switch-ms", "0"], "gil_switch_ms"),
                         (["--gil-switch-ms", "500"], "gil_switch_ms")):
        code, out, err = cli(capsys, "serve", "--data", path, "--listen", "127.0.0.1:0", *flags)
        assert code == 1 and named in err and "listening" not in out, (flags, err)


def test_sigterm_drains_under_write_load(tmp_path):
    path = str(tmp_path / "store")
    token = prepare(path)
    server = Serve(path)
    acknowledged: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    started = threading.Barrier(9)

    def writer(index: int) -> None:
        with knowledge.connect(server.address, token=token, timeout_s=30) as client:
            session = client.session()
            started.wait()
            for step in range(100_000):
                key = f"w{index}-{step}"
                try:
                    session.transaction().upsert_nodes("Doc", [{"name": key, "n": step, "_labels": ["public"]}]).commit()
                except KnowledgeError as exc:  # the server went away: this write's outcome is unknown
                    failures.append(exc)
                    return
                with lock:
                    acknowledged.append(key)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(1.5)
    code, out, err = server.stop()
    for thread in threads:
        thread.join(60)
    assert code == 0 and "draining" in out and "stopped" in out, err
    assert len(acknowledged) > 50 and len(failures) == 8
    assert all(type(f).__name__ in ("Unavailable", "DeadlineExceeded") for f in failures), failures
    with knowledge.open(path, create=False) as store:  # reopen: every acknowledged commit is there
        found = store.session().get_many("Doc", acknowledged)
        assert found.num_rows == len(acknowledged)
        assert store.session().count("Doc") >= 6 + len(acknowledged)
        assert os.listdir(os.path.join(path, "audit"))  # serving kept the audit log on disk
