"""The persisted audit log's writer (knowledge/server/audit_files.py): entries recorded by reads reach the
files in order, on flush(), within flush_ms, on close() (a server's stop, so a SIGTERM drain) and, with
flush_ms=0, in the reading call itself; rotation still caps the files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import knowledge
from knowledge.access.audit import AuditLog
from knowledge.server.audit_files import PersistentAudit, audit_files, read_audit


def _audit(path: str, **options: object) -> PersistentAudit:
    return PersistentAudit(AuditLog(), str(path), file_bytes_max=options.pop("file_bytes_max", 1 << 20),  # type: ignore[arg-type]
                           files_max=options.pop("files_max", 4), **options)  # type: ignore[arg-type]


def test_entries_reach_the_files_in_order_on_flush(tmp_path):
    audit = _audit(tmp_path, flush_ms=60_000)  # the writer would wait a minute: flush() must not
    try:
        for i in range(50):
            audit.record("reader", "get", [i, i + 1], lsn=i)
        assert len(audit) == 50  # the ring has them at once (audit_log() reads it)
        assert audit.flush(10)
        entries = read_audit(str(tmp_path))
        assert [e["lsn"] for e in entries] == list(range(50))
        assert entries[7] == {**entries[7], "principal": "reader", "api": "get", "node_ids": [7, 8], "node_count": 2}
    finally:
        audit.close()


def test_the_writer_writes_within_flush_ms_without_a_flush(tmp_path):
    audit = _audit(tmp_path, flush_ms=5)
    try:
        audit.record("reader", "search", [1, 2, 3], lsn=4)
        deadline = time.monotonic() + 30
        while not read_audit(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e["node_ids"] for e in read_audit(str(tmp_path))] == [[1, 2, 3]]
    finally:
        audit.close()


def test_close_writes_everything_queued_and_later_records_reach_the_ring_only(tmp_path):
    audit = _audit(tmp_path, flush_ms=60_000)
    threads = [threading.Thread(target=lambda t=t: [audit.record(f"p{t}", "get", [t], lsn=n) for n in range(200)])
               for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit.close()
    entries = read_audit(str(tmp_path))
    assert len(entries) == 800
    for t in range(4):
        assert [e["lsn"] for e in entries if e["principal"] == f"p{t}"] == list(range(200))  # each thread's order
    audit.record("late", "get", [1], lsn=1)
    assert len(read_audit(str(tmp_path))) == 800 and len(audit) == 801


def test_flush_ms_zero_writes_in_the_reading_call(tmp_path):
    audit = _audit(tmp_path, flush_ms=0)
    try:
        audit.record("reader", "get", [5], lsn=9)
        assert [e["lsn"] for e in read_audit(str(tmp_path))] == [9]  # no flush(), no writer thread
    finally:
        audit.close()


def test_rotation_with_batches_keeps_files_max_and_the_newest_entries(tmp_path):
    audit = _audit(tmp_path, flush_ms=60_000, file_bytes_max=2048, files_max=3)
    try:
        for i in range(400):
            audit.record("reader", "get", list(range(10)), lsn=i)
        assert audit.flush(10)
    finally:
        audit.close()
    files = audit_files(str(tmp_path))
    assert len(files) == 3 and all(os.path.getsize(f) <= 2048 + 200 for f in files)
    lsns = [e["lsn"] for e in read_audit(str(tmp_path))]
    assert lsns == list(range(400 - len(lsns), 400))  # the oldest files dropped, the rest contiguous


def test_names_are_json_escaped(tmp_path):
    audit = _audit(tmp_path, flush_ms=0)
    try:
        audit.record('a "quoted"\nname\u00e9', "get", [], lsn=1)
    finally:
        audit.close()
    assert read_audit(str(tmp_path))[0]["principal"] == 'a "quoted"\nname\u00e9'


def test_sigterm_drain_writes_every_answered_reads_entry(tmp_path):
    """`knowledge serve` with a writer that would wait a minute: the entries of every read answered before
    SIGTERM are in the files once the server has exited."""
    path = str(tmp_path / "store")
    with knowledge.open(path) as store:
        store.define_node_type("Doc", key="name", properties={"n": "int"})
        store.create_principal("reader", read=["public"])
        token = store.issue_token("reader")
        store.session().transaction().upsert_nodes("Doc", [{"name": f"d{i}", "n": i, "_labels": ["public"]}
                                                           for i in range(5)]).commit()
    server = subprocess.Popen([sys.executable, "-m", "knowledge.cli", "serve", "--data", path, "--listen",
                               "127.0.0.1:0", "--audit-flush-ms", "60000"], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("listening on "), line
        with knowledge.connect(line.split()[2], token=token) as client:
            for i in range(30):
                client.session().get("Doc", f"d{i % 5}")
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        if server.poll() is None:
            server.kill()
    entries = [e for e in read_audit(os.path.join(path, "audit")) if e["api"] == "get"]
    assert len(entries) == 30 and all(e["principal"] == "reader" and len(e["request_id"]) == 16 for e in entries)
