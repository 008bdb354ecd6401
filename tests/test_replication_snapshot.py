"""Snapshot transfer pieces on real stores: a consistent backup served in checksummed chunks, received into
a partial folder, renamed complete and installed into a closed store (rerunnable after a crash at any
step); damaged or cut streams are refused and leave nothing behind; the WAL byte limit in the state machine."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

import knowledge
from knowledge.errors import SnapshotTransferFailed
from knowledge.replication import snapshot
from knowledge.replication.config import NodeConfig
from knowledge.replication.lsn import Position
from knowledge.replication.messages import Entry
from knowledge.replication.node import ReplicationNode
from knowledge.replication.policy import parse_policy
from knowledge.replication.ready import DurableState
from knowledge.replication.storage import MemoryLog

CONFIG = dataclasses.replace(knowledge.StoreConfig(), audit=False)


def _store(path: str, docs: int, prefix: str = "d") -> None:
    with knowledge.open(path, config=CONFIG) as store:
        store.define_node_type("Doc", key="name", properties={"n": "int"})
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"name": f"{prefix}{i}", "n": i} for i in range(docs)])


def _names(path: str) -> set[str]:
    with knowledge.open(path, create=False, config=CONFIG) as store:
        return set(store.session().scan("Doc", columns=["name"]).column("name").to_pylist())


@pytest.fixture
def served(tmp_path):
    """A primary store open at LSN L with a snapshot prepared at (1, L); yields (source, position, engine)."""
    primary = str(tmp_path / "primary")
    _store(primary, 50)
    store = knowledge.open(primary, config=CONFIG)
    source = snapshot.SnapshotSource(primary)
    position = Position(1, store.engine.memory_lsn)
    source.prepare(store.engine, position)
    yield source, position, store
    store.close()


def test_a_snapshot_streams_verifies_and_installs_into_a_closed_store(tmp_path, served):
    source, position, primary = served
    replica = str(tmp_path / "replica")
    _store(replica, 5, prefix="old")
    with open(os.path.join(replica, "REPLICATION"), "w") as f:
        f.write('{"epoch": 3, "promised_to": null}')
    complete, received = snapshot.receive(source.chunks(position, chunk_bytes=4096), replica, position)
    assert received == sum(os.path.getsize(os.path.join(source.path(position), n))
                           for n in snapshot._files(source.path(position)))
    assert not os.path.exists(os.path.join(replica, snapshot.PARTIAL))
    assert _names(replica) == {f"old{i}" for i in range(5)}  # nothing of it is used before install
    snapshot.install(replica)
    assert not os.path.exists(complete)
    assert _names(replica) == {f"d{i}" for i in range(50)}
    with open(os.path.join(replica, "REPLICATION")) as f:  # the hard state stays
        assert '"epoch": 3' in f.read()


def test_an_install_interrupted_at_any_step_finishes_on_recover(tmp_path, served, monkeypatch):
    """A crash at each file operation of install (the removals, the flag, every move) is finished by
    recover_incoming before the next open."""
    source, position, _ = served
    real_rename, real_remove = os.rename, snapshot._remove
    crashed_at = []
    for failing_call in range(1, 50):
        replica = str(tmp_path / f"replica{failing_call}")
        _store(replica, 3, prefix="old")
        snapshot.receive(source.chunks(position), replica, position)
        calls = {"n": 0}

        def crash_on(real, calls=calls, failing_call=failing_call):
            def wrapper(*args):
                calls["n"] += 1
                if calls["n"] == failing_call:
                    raise OSError("simulated crash")
                return real(*args)
            return wrapper
        monkeypatch.setattr(os, "rename", crash_on(real_rename))
        monkeypatch.setattr(snapshot, "_remove", crash_on(real_remove))
        try:
            snapshot.install(replica)
        except OSError:
            crashed_at.append(failing_call)
        finally:
            monkeypatch.setattr(os, "rename", real_rename)
            monkeypatch.setattr(snapshot, "_remove", real_remove)
        if crashed_at[-1:] != [failing_call]:
            assert snapshot.recover_incoming(replica) is False  # installed whole: nothing left to finish
            assert _names(replica) == {f"d{i}" for i in range(50)}
            break
        assert snapshot.recover_incoming(replica) is True
        assert _names(replica) == {f"d{i}" for i in range(50)}, failing_call
    assert len(crashed_at) >= 5  # removals of the old state, then the moves


def test_a_damaged_chunk_or_a_cut_stream_is_refused_and_leaves_no_folder(tmp_path, served):
    source, position, _ = served
    replica = str(tmp_path / "replica")
    _store(replica, 3, prefix="old")
    chunks = list(source.chunks(position, chunk_bytes=8192))
    damaged = list(chunks)
    i = next(i for i, c in enumerate(damaged) if c[:1] == b"C" and len(c) > 100)
    damaged[i] = damaged[i][:-1] + bytes([damaged[i][-1] ^ 1])
    for stream, words in ((damaged, "damaged"), (chunks[: len(chunks) // 2], "ended before"),
                          (chunks[:-1], "ended before"), ([b"Zjunk"], "unknown")):
        with pytest.raises(SnapshotTransferFailed, match=words):
            snapshot.receive(iter(stream), replica, position)
        assert not os.path.exists(os.path.join(replica, snapshot.PARTIAL))
        assert not os.path.exists(os.path.join(replica, snapshot.INCOMING))
        assert snapshot.recover_incoming(replica) is False
        assert _names(replica) == {"old0", "old1", "old2"}
    with pytest.raises(SnapshotTransferFailed, match="asked for"):
        snapshot.receive(iter(chunks), replica, Position(1, position.lsn + 1))


def test_a_partial_folder_is_never_a_store_and_recover_drops_it(tmp_path, served):
    source, position, _ = served
    replica = str(tmp_path / "replica")
    _store(replica, 3, prefix="old")
    chunks = list(source.chunks(position))
    partial = os.path.join(replica, snapshot.PARTIAL)

    def stream():
        yield from chunks[:-2]
        assert os.path.isdir(partial)
        assert not knowledge.storage.engine.is_store(partial)  # the marker comes last
        raise SnapshotTransferFailed("the primary went away")
    with pytest.raises(SnapshotTransferFailed):
        snapshot.receive(stream(), replica, position)
    os.makedirs(partial)  # as a SIGKILL would leave it
    shutil.copy(os.path.join(replica, "STORE"), os.path.join(partial, "state.duckdb"))
    assert snapshot.recover_incoming(replica) is False
    assert not os.path.exists(partial)
    assert _names(replica) == {"old0", "old1", "old2"}


def test_prepare_refuses_a_position_the_store_is_not_at_and_keep_only_prunes(tmp_path, served):
    source, position, primary = served
    with pytest.raises(SnapshotTransferFailed, match="stands at"):
        source.prepare(primary.engine, Position(1, position.lsn - 1))
    with pytest.raises(SnapshotTransferFailed, match="on offer"):
        list(source.chunks(Position(1, position.lsn + 7)))
    source.keep_only([position])
    assert os.path.isdir(source.path(position))
    source.keep_only([])
    assert not os.path.exists(source.path(position))


def _primary_with_lagging_replica():
    zones = {"a": "z1", "b": "z2"}
    log = MemoryLog()
    node = ReplicationNode(NodeConfig("a", zones, parse_policy("async"), batch_records_max=4,
                                      inflight_records_max=8), log, DurableState.empty())
    node.campaign(1)
    return node, log


def _drive(node, log):
    while node.has_ready():
        ready = node.ready()
        log.persist(ready)
        log.apply(ready)
        node.advance(ready)
        yield ready


def test_the_wal_byte_limit_cuts_a_lagging_replica_off_with_an_event_then_a_snapshot():
    from knowledge.replication.messages import AppendAck, Promise
    node, log = _primary_with_lagging_replica()
    node.step(Promise("b", "a", 1, True, Position(0, 0)))
    list(_drive(node, log))
    for i in range(30):
        node.propose(f"p{i}".encode())
        list(_drive(node, log))
    assert node.role.value == "primary" and node.commit_lsn == 31
    node.step(AppendAck("b", "a", 1, 1, 0))  # b holds only the barrier
    list(_drive(node, log))
    assert node.first_lsn == 2  # b still needs LSN 2: retained
    node.limit_retention(20)
    readies = list(_drive(node, log))
    events = [e for r in readies for e in r.events]
    assert [e.kind for e in events][:1] == ["retention_limit"] and "b needs LSN 2" in events[0].detail
    assert node.stats["retention_limits"] == 1 and node.first_lsn == 20
    for _ in range(10):
        node.tick()
        readies += list(_drive(node, log))
    offers = [m for r in readies for m in r.messages if type(m).__name__ == "InstallSnapshot"]
    assert offers and offers[0].to == "b" and offers[0].position.lsn == 31
    assert all(o.position == offers[0].position for o in offers)  # re-offers name the same snapshot
    assert "snapshot_needed" in [e.kind for r in readies for e in r.events]
    node.limit_retention(25)  # told once per cut, not on every tightening
    assert node.stats["retention_limits"] == 1


def test_a_replica_serves_no_read_while_its_snapshot_is_being_installed():
    from knowledge.replication.lsn import EpochStart
    from knowledge.replication.messages import InstallSnapshot
    zones = {"a": "z1", "b": "z2"}
    log = MemoryLog()
    node = ReplicationNode(NodeConfig("b", zones, parse_policy("async")), log, DurableState.empty())
    node.follow("a")
    list(_drive(node, log))
    records = tuple(Entry(lsn, 1, b"" if lsn == 1 else b"x") for lsn in range(1, 6))
    node.step(InstallSnapshot("a", "b", 1, Position(1, 5), (EpochStart(1, 1),), 5, data=records))
    assert not node.can_read(1) and not node.can_read(Position(1, 5))  # accepted, not yet installed
    ready = node.ready()
    assert ready.snapshot is not None and not node.can_read(1)
    log.persist(ready)
    log.apply(ready)
    node.advance(ready)
    assert node.can_read(Position(1, 5)) and node.applied_lsn == 5


def test_a_stalled_snapshot_stream_is_cancelled_and_leaves_no_folder(tmp_path, served, monkeypatch):
    """A primary that stops sending mid-stream (over a real gRPC socket) does not hold the replica forever."""
    import threading
    from concurrent import futures

    import grpc

    from knowledge.replication import transport
    source, position, _ = served
    release = threading.Event()

    class Stalling:
        def snapshot_chunks(self, at):
            chunks = source.chunks(at, chunk_bytes=4096)
            yield next(chunks)
            yield next(chunks)
            release.wait(30)  # the primary hangs (a SIGSTOP, a vanished host)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((transport.handler(Stalling()),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setattr(transport, "SNAPSHOT_STALL_S", 1.5)
    links = transport.Links({"a": f"127.0.0.1:{port}", "b": "127.0.0.1:1"}, "b")
    replica = str(tmp_path / "replica")
    _store(replica, 3, prefix="old")
    try:
        with pytest.raises(SnapshotTransferFailed, match="CANCELLED"):
            links.fetch_snapshot("a", position, replica)
    finally:
        release.set()
        links.close()
        server.stop(0)
    assert not os.path.exists(os.path.join(replica, snapshot.PARTIAL))
    assert _names(replica) == {"old0", "old1", "old2"}
