"""Group commit (Engine.commit): concurrent transactions share one WAL write, one fsync and one memory
apply, yet each keeps its own record, LSN and outcome; a bad one fails alone; a failed write takes the
whole group's staging back; the records replay, reopen and read as if committed one by one."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import knowledge
from knowledge.errors import MissingEndpoint, PermissionDenied, StorageFull
from knowledge.storage.directory import NodeDirectory, StageUndo

DIM = 4


def _poll(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition` (a progress wait, not a timing assertion)."""
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def grouped(store: knowledge.Store, leader: Callable[[], int], followers: list[Callable[[], int]]) -> list[Any]:
    """Run `leader` alone in a first group, then every follower, in the order given, in one second group:
    the stage lock is held while they queue. Returns each commit's LSN or exception, leader first."""
    engine = store.engine
    results: list[Any] = [None] * (1 + len(followers))

    def run(index: int, commit: Callable[[], int]) -> None:
        try:
            results[index] = commit()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[index] = exc
    threads = [threading.Thread(target=run, args=(0, leader))]
    with engine.stage_lock:
        threads[0].start()
        _poll(lambda: engine._leading and not engine._arrivals, "the first group's leader")
        for index, commit in enumerate(followers, start=1):  # one at a time: they queue in this order
            threads.append(threading.Thread(target=run, args=(index, commit)))
            threads[-1].start()
            _poll(lambda index=index: len(engine._arrivals) == index, f"follower {index} to queue")
    for thread in threads:
        thread.join(60)
    return results


@pytest.fixture
def store(tmp_path):
    store = knowledge.open(str(tmp_path / "s"))
    store.define_node_type("Doc", key="k", properties={"n": "int", "emb": {"type": f"vector[{DIM}]", "metric": "l2"}})
    store.define_edge_type("Link", source="Doc", target="Doc")
    store.session().transaction().upsert_nodes("Doc", [{"k": "a", "n": 0, "_labels": ["p"]}]).commit()
    yield store
    store.close()


def _upsert(session: knowledge.Session, key: str, n: int, emb: Any = None) -> Callable[[], int]:
    row: dict[str, Any] = {"k": key, "n": n, "_labels": ["p"]}
    if emb is not None:
        row["emb"] = emb
    return lambda: session.transaction().upsert_nodes("Doc", [row]).commit()


def _link(session: knowledge.Session, src: str, dst: str) -> Callable[[], int]:
    return lambda: session.transaction().upsert_edges("Link", [{"src": src, "dst": dst}]).commit()


def test_one_bad_transaction_fails_alone_and_the_others_share_the_group(store):
    session = store.session()
    fsyncs = store.engine.wal.fsync_count
    results = grouped(store, _upsert(session, "lead", 1), [
        _upsert(session, "x", 2),
        _link(session, "a", "x"),  # needs x, staged by the transaction just before it in the same group
        _link(session, "a", "missing"),  # fails alone
        _upsert(session, "y", 3),
    ])
    assert isinstance(results[3], MissingEndpoint)
    lsns = [results[i] for i in (0, 1, 2, 4)]
    assert all(isinstance(lsn, int) for lsn in lsns), results
    assert lsns == list(range(lsns[0], lsns[0] + 4))  # each its own record, consecutive, in arrival order
    assert store.engine.wal.fsync_count - fsyncs <= 2  # two groups: at most one fsync each
    assert store.memory_lsn == lsns[-1]
    assert sorted(r["k"] for r in session.scan("Doc").to_pylist()) == ["a", "lead", "x", "y"]
    assert [ref.key for ref in session.neighbors("Doc", "a", "Link")] == ["x"]
    records = list(store.engine.wal.read_from(lsns[0]))
    assert [r.lsn for r in records] == lsns


def test_a_permission_error_fails_alone(store):
    store.create_principal("writer", read=["p"], write=["p"])
    admin, writer = store.session(), store.session("writer")
    results = grouped(store, _upsert(admin, "lead", 1), [
        lambda: writer.transaction().upsert_nodes("Doc", [{"k": "w", "n": 1, "_labels": ["q"]}]).commit(),
        _upsert(writer, "v", 2),
    ])
    assert isinstance(results[1], PermissionDenied)
    assert isinstance(results[0], int) and results[2] == results[0] + 1
    assert writer.get("Doc", "v")["n"] == 2


def test_same_key_twice_in_a_group_and_fresh_rows_merged(store, tmp_path):
    session = store.session()
    vectors = np.eye(DIM, dtype=np.float32)
    results = grouped(store, _upsert(session, "lead", 0, vectors[0]), [
        _upsert(session, "f1", 1, vectors[1]),
        _upsert(session, "f2", 2, vectors[2]),
        _upsert(session, "k", 3, vectors[3]),
        _upsert(session, "k", 4, vectors[0]),  # replaces the row the one before wrote, same group
        _upsert(session, "f3", 5, vectors[1]),
    ])
    assert all(isinstance(r, int) for r in results), results
    assert results == list(range(results[0], results[0] + 6))
    assert session.get("Doc", "k")["n"] == 4
    assert session.count("Doc") == 6
    nearest = session.search(vectors[2], k=1, type="Doc", property="emb")
    assert nearest.column("_key").to_pylist() == ["f2"]
    assert sorted(session.scan("Doc", where={"n": (">=", 4)}).column("k").to_pylist()) == ["f3", "k"]
    path = store.path
    store.close()
    with knowledge.open(path) as reopened:  # replayed one record at a time: the same state
        again = reopened.session()
        assert again.get("Doc", "k")["n"] == 4
        assert sorted(r["k"] for r in again.scan("Doc").to_pylist()) == ["a", "f1", "f2", "f3", "k", "lead"]
        assert again.search(vectors[2], k=1, type="Doc", property="emb").column("_key").to_pylist() == ["f2"]


def test_a_failed_wal_write_fails_the_whole_group_and_takes_its_staging_back(store, monkeypatch):
    session = store.session()
    lsn_before = store.memory_lsn
    next_id = store.engine.directory.next_id
    real_pwrite = os.pwrite
    failing = {"on": True}

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if failing["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)
    monkeypatch.setattr(os, "pwrite", pwrite)
    results = grouped(store, _upsert(session, "lead", 1), [
        _upsert(session, "x", 2),
        _link(session, "a", "x"),
        lambda: session.transaction().delete_nodes("Doc", ["a"]).commit(),
    ])
    assert all(isinstance(r, StorageFull) for r in results), results
    failing["on"] = False
    directory = store.engine.directory
    assert directory.staged_id("Doc", "x") is None and directory.staged_id("Doc", "lead") is None
    assert directory.staged_id("Doc", "a") is not None and not directory.pending_deletes
    assert directory.next_id == next_id and store.memory_lsn == lsn_before
    assert store.engine.wal.last_lsn == lsn_before
    # the store goes on: the same transactions commit now, with the LSNs and ids the failed ones did not use
    results = grouped(store, _upsert(session, "x", 2), [_link(session, "a", "x"), _upsert(session, "z", 3)])
    assert results == [lsn_before + 1, lsn_before + 2, lsn_before + 3]
    assert [ref.key for ref in session.neighbors("Doc", "a", "Link")] == ["x"]
    assert store.engine.directory.staged_id("Doc", "x") == next_id


def test_concurrent_committers_lose_nothing_across_a_reopen(tmp_path):
    path = str(tmp_path / "s")
    store = knowledge.open(path)
    store.define_node_type("Doc", key="k", properties={"n": "int"})
    session = store.session()
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()

    def write(t: int) -> None:
        for i in range(60):
            lsn = session.transaction().upsert_nodes("Doc", [{"k": f"t{t}-{i}", "n": i}]).commit()
            with lock:
                acknowledged[f"t{t}-{i}"] = lsn
    threads = [threading.Thread(target=write, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(set(acknowledged.values())) == len(acknowledged) == 16 * 60  # one LSN each
    store.close()
    with knowledge.open(path) as reopened:
        rows = {r["k"]: r for r in reopened.session().scan("Doc").to_pylist()}
        assert set(rows) == set(acknowledged)


def test_unstage_restores_the_staged_directory():
    directory = NodeDirectory()
    directory.ensure_type("T")
    directory.stage_upsert("T", ["a", "b"], [0, 1])
    directory.next_id = 2
    directory.stage_delete([1])
    before = ({k: dict(v) for k, v in directory.ids.items()}, set(directory.pending_deletes),
              {k: {kk: list(vv) for kk, vv in v.items()} for k, v in directory.former.items()}, directory.next_id)
    undo = StageUndo(directory.next_id)
    directory.stage_upsert("T", ["b", "c"], [2, 3], undo)  # b re-created while its delete is pending
    directory.stage_delete([0, 1], undo)
    directory.next_id = 4
    assert directory.staged_id("T", "c") == 3 and directory.staged_id("T", "a") is None
    directory.unstage(undo)
    after = ({k: dict(v) for k, v in directory.ids.items()}, set(directory.pending_deletes),
             {k: {kk: list(vv) for kk, vv in v.items()} for k, v in directory.former.items() if v}, directory.next_id)
    assert after == (before[0], before[1], {k: v for k, v in before[2].items() if v}, before[3])


def test_concurrent_commits_on_a_replicated_primary_each_wait_for_their_policy(tmp_path):
    """A `knowledge serve` primary under sync(1): its handler threads commit concurrently (groups form),
    each commit returns its own LSN once its record is durable on a replica; every acknowledged write is
    on the primary and reaches the replicas."""
    from replication_cluster import Cluster, missing_keys, seed_store

    cluster = Cluster(str(tmp_path / "cluster"), {"a": "z1", "b": "z2", "c": "z3"}, "sync(1)", seed_store)
    try:
        cluster.start("a", "primary")
        cluster.start("b", "replica", primary="a")
        cluster.start("c", "replica", primary="a")
        cluster.wait_ready()
        cluster.wait_for("a to be primary", lambda: cluster.writable("a"))
        acknowledged: dict[str, int] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def write(t: int) -> None:
            try:
                with cluster.client("a") as client:
                    session = client.session()
                    for i in range(15):
                        tx = session.transaction()
                        tx.upsert_nodes("Doc", [{"name": f"g{t}-{i}", "n": i}])
                        lsn = tx.commit()
                        with lock:
                            acknowledged[f"g{t}-{i}"] = lsn
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not errors, errors
        assert len(set(acknowledged.values())) == len(acknowledged) == 8 * 15
        keys = list(acknowledged)
        assert missing_keys(cluster, "a", keys) == []
        for replica in ("b", "c"):
            cluster.wait_for(f"{replica} to apply every acknowledged write",
                             lambda replica=replica: missing_keys(cluster, replica, keys) == [])
    finally:
        cluster.close()
