"""`knowledge serve --read-processes N` as real processes on one port (SO_REUSEPORT): the read processes
alone accept on the address (the serving process holds its port) and run at a lower OS priority; reads on every
connection see every commit acknowledged before them (whichever process took the commit or serves the read),
access control holds in the read processes, forwarded calls keep their errors, a read process killed with
SIGKILL is started again, and SIGTERM stops them all and removes their copies."""

from __future__ import annotations

import glob
import os
import signal
import threading
import time

import pytest
from test_server_cli import Serve

import knowledge
from knowledge.errors import InvalidArgument, NotFound, PermissionDenied, TypeMismatch

CONNECTIONS = 12


def prepare(path: str) -> tuple[str, str]:
    """A store with public and secret Docs; returns (admin token, reader token)."""
    with knowledge.open(path) as store:
        store.define_node_type("Doc", key="name", properties={"n": "int", "body": "text",
                                                              "emb": {"type": "vector[2]", "metric": "l2"}})
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"name": f"d{i}", "n": i, "body": f"doc {i} about bees", "emb": [float(i), 1.0],
                                     "_labels": ["secret" if i % 3 == 0 else "public"]} for i in range(9)])
        store.create_principal("root", admin=True)
        store.create_principal("reader", read=["public"], write=["public"])
        return store.issue_token("root"), store.issue_token("reader")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def reader_pids(server: Serve) -> list[int]:
    found = []
    for child in children(server.process.pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"knowledge.server.reader" in f.read():
                    found.append(child)
        except OSError:
            pass
    return sorted(found)


@pytest.fixture
def group(tmp_path):
    path = str(tmp_path / "store")
    admin, reader = prepare(path)
    server = Serve(path, "--read-processes", "2", "--audit-flush-ms", "0")
    yield path, server, admin, reader
    if server.process.poll() is None:
        server.stop()


def clients(address: str, token: str, count: int = CONNECTIONS) -> list:
    return [knowledge.connect(address, token=token, timeout_s=30) for _ in range(count)]


def test_reads_everywhere_see_every_acknowledged_commit(group):
    path, server, admin, reader = group
    assert len(reader_pids(server)) == 2
    for pid in reader_pids(server):  # the default --read-processes-nice: below every other thread
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert os.sched_getscheduler(server.process.pid) == os.SCHED_OTHER
    conns = clients(server.address, admin)
    try:
        for i in range(40):
            writer = conns[i % len(conns)]  # commits on every connection (each read process's, then the direct port)
            lsn = writer.session().transaction().upsert_nodes(
                "Doc", [{"name": f"w{i}", "n": 100 + i, "_labels": ["public"]}]).commit()
            for conn in conns:  # right after the acknowledgement, from every connection
                row = conn.session().get("Doc", f"w{i}", columns=["n"])
                assert row is not None and row["n"] == 100 + i, (i, lsn)
                assert conn.session().stats()["lsn"] >= lsn
        counts = {conn.session().count("Doc") for conn in conns}
        assert counts == {49}
    finally:
        for conn in conns:
            conn.close()
    time.sleep(0.2)
    # the read processes served some of those reads: their audit files (DATA/audit/reader-K/) have entries
    served = [f for f in glob.glob(os.path.join(path, "audit", "reader-*", "audit-*.jsonl")) if os.path.getsize(f)]
    assert served, "no read process served a read"
    from knowledge.server.audit_files import read_audit
    entries = read_audit(os.path.join(path, "audit"))  # every process's files, merged by time
    gets = [e for e in entries if e["api"] == "get"]
    assert len(gets) >= 40 * len(conns), len(gets)
    assert [e["timestamp_ns"] for e in entries] == sorted(e["timestamp_ns"] for e in entries)
    assert len(read_audit(os.path.join(path, "audit"), read_processes=False)) < len(entries)


def test_read_processes_follow_across_checkpoints_and_schema_changes(group):
    _, server, admin, _ = group
    conns = clients(server.address, admin)
    try:
        writer = conns[0]
        for round_ in range(3):
            writer.session().transaction().upsert_nodes(
                "Doc", [{"name": f"k{round_}-{i}", "n": i} for i in range(50)]).commit()
            writer.checkpoint()  # the serving process drops WAL segments the checkpoint covers
        writer.define_node_type("Note", key="title", properties={"body": "text"})
        writer.session().transaction().upsert_nodes("Note", [{"title": "t1", "body": "after the schema change"}]).commit()
        for conn in conns:
            session = conn.session()
            assert session.count("Doc") == 9 + 150
            assert session.get("Note", "t1", columns=["body"])["body"] == "after the schema change"
            assert "Note" in conn.schema.nodes
    finally:
        for conn in conns:
            conn.close()


def test_clients_of_read_processes_send_writes_to_the_serving_process(group):
    _, server, admin, reader = group
    conns = clients(server.address, admin)
    try:
        for i, conn in enumerate(conns):
            conn.session().transaction().upsert_nodes("Doc", [{"name": f"direct{i}", "n": i}]).commit()
        told = [conn for conn in conns if conn._connection._direct is not None]
        assert told, "no connection reached a read process (or none was told the serving process's port)"
        for conn in told:
            lsn = conn.session().transaction().upsert_nodes("Doc", [{"name": "again", "n": 1}]).commit()
            for other in conns:  # a write through the direct channel, read through any connection at once
                assert other.session().stats()["lsn"] >= lsn
            with pytest.raises(TypeMismatch):  # errors come back the same way through the direct channel
                conn.session().transaction().upsert_nodes("Doc", [{"name": "bad", "n": "x"}]).commit()
        assert conns[0].session().count("Doc") == 9 + len(conns) + 1
    finally:
        for conn in conns:
            conn.close()


def test_concurrent_writers_and_readers_stay_consistent(group):
    _, server, admin, _ = group
    acknowledged: list[int] = []
    lock = threading.Lock()
    errors: list[str] = []
    stop = threading.Event()

    def write(worker: int) -> None:
        with knowledge.connect(server.address, token=admin, timeout_s=30) as conn:
            i = 0
            while not stop.is_set():
                n = worker * 10_000 + i
                conn.session().transaction().upsert_nodes("Doc", [{"name": f"c{n}", "n": n}]).commit()
                with lock:
                    acknowledged.append(n)
                i += 1

    def read() -> None:
        with knowledge.connect(server.address, token=admin, timeout_s=30) as conn:
            while not stop.is_set():
                with lock:
                    known = list(acknowledged)
                if not known:
                    continue
                got = conn.session().get_many("Doc", [f"c{n}" for n in known[-20:]], columns=["n"])
                missing = sorted(set(known[-20:]) - set(got.column("n").to_pylist()))
                if missing:
                    errors.append(f"acknowledged but not read: {missing[:5]}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)] + [
        threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert len(acknowledged) > 20


def test_access_control_and_errors_through_read_processes(group):
    _, server, admin, reader = group
    conns = clients(server.address, reader)
    try:
        for conn in conns:
            session = conn.session()
            assert session.count("Doc") == 6  # d0, d3, d6 are secret
            with pytest.raises(NotFound):
                session.get("Doc", "d3")
            hits = session.search([3.0, 1.0], k=9, type="Doc")
            assert "d3" not in hits.column("_key").to_pylist() and hits.num_rows == 6
            assert "d3" not in [r["_key"] for r in session.keyword_search("bees", k=9).to_pylist()]
            with pytest.raises(PermissionDenied):  # an admin call, passed on to the primary, refused there
                conn.create_principal("intruder", admin=True)
            with pytest.raises(TypeMismatch):  # a bad write: the primary's error class comes back
                session.transaction().upsert_nodes("Doc", [{"name": "bad", "n": "not an int"}]).commit()
    finally:
        for conn in conns:
            conn.close()


def eventually(call, timeout_s: float = 15.0):
    """`call()`, again after UNAVAILABLE (a connection that reached the killed process) until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except knowledge.errors.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_restarted(server: Serve, before: list[int], timeout_s: float = 60.0) -> list[int]:
    """The read processes' pids once the group is whole again without before[0] (killed); AssertionError
    after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = reader_pids(server)
        if len(now) == len(before) and before[0] not in now:
            return now
        assert time.monotonic() < deadline, (before, now)
        time.sleep(0.2)


def test_killed_read_process_is_started_again_and_catches_up(group):
    _, server, admin, _ = group
    before = reader_pids(server)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    with knowledge.connect(server.address, token=admin, timeout_s=30) as conn:
        eventually(lambda: conn.session().transaction().upsert_nodes("Doc", [{"name": "after-kill", "n": 7}]).commit())
    wait_restarted(server, before)
    conns = clients(server.address, admin)
    try:
        for conn in conns:
            row = eventually(lambda conn=conn: conn.session().get("Doc", "after-kill", columns=["n"]))
            assert row["n"] == 7
    finally:
        for conn in conns:
            conn.close()


def test_sigterm_stops_every_read_process_and_removes_the_copies(group):
    import json
    _, server, admin, _ = group
    pids = reader_pids(server)
    assert len(pids) == 2
    with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
        spec = json.loads(f.read().split(b"\0")[3])
    base = os.path.dirname(spec["data"])
    assert os.path.isdir(spec["data"])
    code, out, _ = server.stop()
    assert code == 0 and out.endswith("stopped\n")
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"read process {pid} outlived the server"
    assert not os.path.exists(base)


def test_a_killed_server_takes_its_read_processes_and_the_next_start_removes_their_copies(tmp_path):
    import json
    path = str(tmp_path / "store")
    admin, _ = prepare(path)
    server = Serve(path, "--read-processes", "1")
    pids = reader_pids(server)
    assert len(pids) == 1
    with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
        base = os.path.dirname(json.loads(f.read().split(b"\0")[3])["data"])
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{pids[0]}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pids[0]}"), "the read process outlived its killed server"
    assert os.path.isdir(base)  # SIGKILL left the copy behind
    again = Serve(path, "--read-processes", "1")
    try:
        assert not os.path.exists(base)
        with knowledge.connect(again.address, token=admin, timeout_s=30) as conn:
            assert conn.session().count("Doc") == 9
    finally:
        again.stop()


def test_the_python_api_runs_read_processes_too(tmp_path):
    from knowledge.server import KnowledgeServer, ServerConfig
    path = str(tmp_path / "store")
    admin, _ = prepare(path)
    with knowledge.open(path) as store:
        server = KnowledgeServer(store, ServerConfig(listen="127.0.0.1:0", read_processes=1))
        assert server.readers is not None
        with server:
            pids = server.readers.pids()
            assert len(pids) == 1
            conns = clients(server.address, admin)
            try:
                lsn = store.session().transaction().upsert_nodes("Doc", [{"name": "embedded", "n": 1}]).commit()
                for conn in conns:  # an embedded commit in the serving process, read at once everywhere
                    assert conn.session().get("Doc", "embedded", columns=["n"])["n"] == 1
                    assert conn.session().stats()["lsn"] >= lsn
            finally:
                for conn in conns:
                    conn.close()
        assert not os.path.exists(f"/proc/{pids[0]}")
        assert store.session().count("Doc") == 10  # the store stays open (the caller's)
    with pytest.raises(InvalidArgument, match="lone server"):
        from knowledge.server.calls import ReplicaRole
        with knowledge.open(path) as store:
            KnowledgeServer(store, ServerConfig(listen="127.0.0.1:0", read_processes=1),
                            role=ReplicaRole("127.0.0.1:1"))


def test_read_processes_refused_with_cert_principals_and_out_of_range():
    from knowledge.server.config import ServerConfig
    with pytest.raises(InvalidArgument, match="read_processes"):
        ServerConfig(read_processes=-1)
    with pytest.raises(InvalidArgument, match="read_processes"):
        ServerConfig(read_processes=65)
    with pytest.raises(InvalidArgument, match="read_processes_nice"):
        ServerConfig(read_processes=1, read_processes_nice=20)
    with pytest.raises(InvalidArgument, match="read_processes_nice"):
        ServerConfig(read_processes=1, read_processes_nice="low")
    assert ServerConfig(read_processes=1, read_processes_nice=0).read_processes_nice == 0


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19 of proc(5), counted after the name


LISTEN, ESTABLISHED = "0A", "01"  # TCP states as /proc/net/tcp writes them


def port_sockets(port: int, state: str) -> set[str]:
    """Socket inodes of the TCP sockets whose local port is `port`, in `state` (LISTEN, ESTABLISHED)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def process_sockets(pid: int) -> set[str]:
    """Socket inodes of the descriptors process `pid` holds."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def test_only_read_processes_listen_on_the_address_and_they_run_at_a_lower_priority(tmp_path):
    import socket
    path = str(tmp_path / "store")
    admin, _ = prepare(path)
    server = Serve(path, "--read-processes", "2", "--read-processes-nice", "7")
    port = int(server.address.rsplit(":", 1)[1])
    try:
        pids = reader_pids(server)
        assert len(pids) == 2
        listening = port_sockets(port, LISTEN)
        assert len(listening) == 2  # one listener per read process, none in the serving process
        assert not listening & process_sockets(server.process.pid)
        for pid in pids:
            assert listening & process_sockets(pid)
            assert _nice(pid) == min(19, _nice(server.process.pid) + 7)
            assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        with socket.socket() as other, pytest.raises(OSError):  # the serving process holds the port
            other.bind(("127.0.0.1", port))
        with knowledge.connect(server.address, token=admin, timeout_s=30) as conn:
            session = conn.session()
            session.transaction().upsert_nodes("Doc", [{"name": "held", "n": 1}]).commit()
            assert session.get("Doc", "held", columns=["n"])["n"] == 1
    finally:
        assert server.stop()[0] == 0
    with socket.socket() as other:  # and gives it back at stop
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the closed connections' TIME_WAIT
        other.bind(("127.0.0.1", port))


def test_read_processes_auto_starts_one_per_core_and_at_least_two():
    from knowledge.server.cli_verbs import read_processes_arg
    assert read_processes_arg("auto") == max(2, os.cpu_count() or 1)
    assert read_processes_arg("3") == 3


def test_audit_log_answers_with_the_reads_of_the_read_processes(group):
    path, server, admin, reader = group
    conns = clients(server.address, reader)
    try:
        for i, conn in enumerate(conns):  # reads served by both read processes (the serving process serves none)
            assert conn.session().get("Doc", f"d{1 + 3 * (i % 2)}", columns=["n"])["n"] == 1 + 3 * (i % 2)
    finally:
        for conn in conns:
            conn.close()
    with knowledge.connect(server.address, token=reader, timeout_s=30) as conn, pytest.raises(PermissionDenied):
        conn.session().audit_log()  # admins only, through a read process too
    with knowledge.connect(server.address, token=admin, timeout_s=30) as conn:
        entries = conn.session().audit_log(api="get")
        assert len(entries) == len(conns)  # the fixture writes each entry at once (--audit-flush-ms 0)
        assert {e.principal for e in entries} == {"reader"}
        assert [e.timestamp_ns for e in entries] == sorted((e.timestamp_ns for e in entries), reverse=True)
        assert len(conn.session().audit_log(api="get", limit=3)) == 3
        node = entries[0].node_ids[0]
        assert all(node in e.node_ids for e in conn.session().audit_log(node_id=node))
        assert conn.session().audit_log(principal="nobody") == []
