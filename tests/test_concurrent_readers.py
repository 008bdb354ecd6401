"""Readers run in parallel and commits go on while they read, every answer as of one LSN.

The world: N items whose every commit (one "era") rewrites all of them at once: their `era`, their text
("era<E>"), which half carries label "x" (the half of E's parity), and the `link` edges (each item to the
one 2E+2 further on; the previous era's are deleted). So at every LSN a reader of "x" sees exactly one
era: its visible items, their columns, texts, neighbours, edges and counts all say the same E, and an
admin's snapshot LSN names the commit that wrote E (a reference replay: the writer records LSN -> era).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import knowledge
from knowledge import Principal
from knowledge.errors import NotFound
from knowledge.index import graph as graph_module

N = 20  # items i0..i19
DIM = 8
READER = Principal("r", read=frozenset({"x"}))
CHECKS_MIN = 8  # checked snapshot blocks per reader thread
RUN_S_MAX = 240.0  # a bound against a hang only


def key(n: int) -> str:
    return f"i{n % N}"


def commit_era(session: knowledge.Session, era: int, vectors: np.ndarray) -> int:
    """Write era `era` over era `era - 1` in one transaction; return its LSN."""
    tx = session.transaction()
    tx.upsert_nodes("Item", [{"id": key(n), "era": era, "emb": vectors[n], "text": f"item era{era}",
                              "_labels": ["x" if n % 2 == era % 2 else "y"]} for n in range(N)])
    if era > 0:
        tx.delete_edges("Item_link", [{"src": key(n), "dst": key(n + 2 * era)} for n in range(N)])
    tx.upsert_edges("Item_link", [{"src": key(n), "dst": key(n + 2 * era + 2)} for n in range(N)])
    return tx.commit()


@pytest.fixture
def world(tmp_path):
    store = knowledge.open(str(tmp_path / "s"))
    store.define_node_type("Item", key="id", properties={"era": "int", "text": "text",
                                                         "emb": {"type": f"vector[{DIM}]", "metric": "l2"}})
    store.define_edge_type("Item_link", source="Item", target="Item")
    vectors = np.random.default_rng(5).normal(size=(N, DIM)).astype(np.float32)
    era_of_lsn = {commit_era(store.session(), 0, vectors): 0}
    yield store, vectors, era_of_lsn
    store.close()


def visible_keys(era: int) -> list[str]:
    return [key(n) for n in range(N) if n % 2 == era % 2]


def check_era(session: knowledge.Session, vectors: np.ndarray) -> int:
    """Inside a snapshot: every read a retrieval makes says one era; return it."""
    found = session.search(vectors[0], k=N, columns=["era"])
    eras = set(found.column("era").to_pylist())
    assert len(eras) == 1, f"one search shows eras {eras}"
    era = eras.pop()
    shown = sorted(found.column("_key").to_pylist(), key=lambda k: int(k[1:]))
    assert shown == visible_keys(era), f"era {era}: search shows {shown}"
    assert session.count("Item") == N // 2
    texts = session.keyword_search(f"era{era}", k=N, type="Item", property="text")
    assert sorted(texts.column("_key").to_pylist(), key=lambda k: int(k[1:])) == visible_keys(era)
    assert session.keyword_search(f"era{era + 1}", k=N, type="Item", property="text").num_rows == 0
    first = visible_keys(era)[0]
    assert [ref.key for ref in session.neighbors("Item", first, "Item_link")] == [key(int(first[1:]) + 2 * era + 2)]
    assert session.get("Item", first)["era"] == era
    assert set(session.get_many("Item", visible_keys(era), columns=["era"]).column("era").to_pylist()) == {era}
    scanned = session.scan("Item", columns=["era"])
    assert scanned.num_rows == N // 2 and set(scanned.column("era").to_pylist()) == {era}
    edges = session.edges("Item_link")
    assert sorted(zip(edges.column("_src").to_pylist(), edges.column("_dst").to_pylist(), strict=True)) == sorted(
        (session.get("Item", k)["_id"], session.get("Item", key(int(k[1:]) + 2 * era + 2))["_id"])
        for k in visible_keys(era))
    return era


def test_retrievals_and_commits_interleave_every_answer_at_one_lsn(world):
    """Snapshot blocks (a retrieval's reads), single reads and commits interleave across threads: every
    block sees one era throughout, an admin's block LSN is the commit that wrote it, and commits completed
    while blocks were open."""
    store, vectors, era_of_lsn = world
    stop = threading.Event()
    failures: list[str] = []
    checks = {name: 0 for name in ("x1", "x2", "admin", "single")}
    overlapped = [0]  # blocks during which a commit completed
    commits = [0]
    seen: list[tuple[int, int]] = []  # (admin block LSN, era it saw)

    def write() -> None:
        writer, era = store.session(), 0
        try:
            while not stop.is_set():
                era += 1
                lsn = commit_era(writer, era, vectors)
                era_of_lsn[lsn] = era
                commits[0] += 1
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(f"writer: {exc!r}")

    def block_reader(name: str, principal: Principal | None) -> None:
        session = store.session(principal)
        try:
            while not stop.is_set() and not failures:
                with session.snapshot() as lsn:
                    before = commits[0]
                    if principal is None:  # admin: the whole world, one era
                        table = session.scan("Item", columns=["era"])
                        eras = set(table.column("era").to_pylist())
                        assert table.num_rows == N and len(eras) == 1, eras
                        era = eras.pop()
                        assert session.search(vectors[3], k=1, columns=["era"]).column("era").to_pylist() == [era]
                        seen.append((lsn, era))
                    else:
                        check_era(session, vectors)
                    if commits[0] != before:  # inside the block: a commit completed while it was open
                        overlapped[0] += 1
                checks[name] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(f"{name}: {exc!r}")

    def single_reader() -> None:
        session = store.session(READER)
        try:
            while not stop.is_set() and not failures:
                found = session.search(vectors[1], k=N, columns=["era"])
                eras = set(found.column("era").to_pylist())
                assert len(eras) == 1, eras
                (era,) = eras
                assert sorted(found.column("_key").to_pylist(), key=lambda k: int(k[1:])) == visible_keys(era)
                first = visible_keys(era)[0]
                try:  # another read, at its own LSN: perhaps another era's, where `first` is invisible
                    refs = session.neighbors("Item", first, "Item_link")
                    assert len(refs) == 1 and int(refs[0].key[1:]) % 2 == int(first[1:]) % 2, refs
                except NotFound:
                    pass
                checks["single"] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(f"single: {exc!r}")

    threads = [threading.Thread(target=write), threading.Thread(target=block_reader, args=("x1", READER)),
               threading.Thread(target=block_reader, args=("x2", READER)),
               threading.Thread(target=block_reader, args=("admin", None)), threading.Thread(target=single_reader)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + RUN_S_MAX
    while time.monotonic() < deadline and not failures:
        if min(checks.values()) >= CHECKS_MIN and overlapped[0] >= 3:
            break
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures[:3]
    assert min(checks.values()) >= CHECKS_MIN, checks
    assert overlapped[0] >= 3  # commits completed while blocks were open: they did not wait for readers
    # the reference replay: the era an admin block saw is the one its LSN's commit wrote
    assert all(era_of_lsn[lsn] == era for lsn, era in seen), [(lsn, era, era_of_lsn.get(lsn)) for lsn, era in seen]


def test_two_readers_inside_snapshots_at_once(world):
    """Two threads each inside snapshot() meet at a barrier: only possible when a snapshot holds no lock
    that another reader needs (with a state lock held for the block, the second never gets in)."""
    store, vectors, _ = world
    both = threading.Barrier(2, timeout=10)
    results: list[int] = []
    failures: list[BaseException] = []

    def read() -> None:
        session = store.session(READER)
        try:
            with session.snapshot():
                both.wait()
                results.append(check_era(session, vectors))
                both.wait()  # both are still inside
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures and results == [0, 0], failures


def test_two_graph_reads_at_once(world, monkeypatch):
    """Two threads' neighbors() calls meet at a barrier inside the adjacency read: reads do not serialise."""
    store, _, _ = world
    both = threading.Barrier(2, timeout=10)
    neighbours = graph_module.EdgeIndex.neighbours

    def meeting(self, node, outgoing):
        both.wait()
        return neighbours(self, node, outgoing)

    monkeypatch.setattr(graph_module.EdgeIndex, "neighbours", meeting)
    found: list[list[str]] = []
    failures: list[BaseException] = []

    def read() -> None:
        try:
            found.append([ref.key for ref in store.session(READER).neighbors("Item", "i0", "Item_link")])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures and found == [["i2"], ["i2"]], failures


def test_a_commit_completes_while_a_reader_is_inside_snapshot(world):
    """A reader inside snapshot() does not hold commits back: the writer's commit returns while the block is
    open (and is visible to the writer's next read); reads inside keep the block's LSN; after it, the
    reader sees the commit."""
    store, vectors, _ = world
    session = store.session(READER)
    done = threading.Event()
    lsns: list[int] = []

    def write() -> None:
        writer = store.session()
        lsns.append(commit_era(writer, 1, vectors))
        lsns.append(writer.stats()["lsn"])  # read-your-writes for the writer, while the block is open
        done.set()

    with session.snapshot():
        assert check_era(session, vectors) == 0
        writer = threading.Thread(target=write)
        writer.start()
        assert done.wait(30), "the commit waited for the reader's snapshot block"
        assert lsns[0] == lsns[1] == store.memory_lsn
        assert check_era(session, vectors) == 0  # still the block's LSN, DuckDB reads included
    writer.join(30)
    assert check_era(session, vectors) == 1


def test_a_key_deleted_and_written_again_stays_as_it_was_inside_a_snapshot(world):
    """Inside a snapshot, a node deleted and created again (a new id) since reads as it was at the block's
    LSN: the same id, key, properties and neighbours."""
    store, vectors, _ = world
    admin = store.session()
    with admin.snapshot():
        before = admin.get("Item", "i0")
        admin.transaction().delete_nodes("Item", ["i0"]).commit()
        admin.transaction().upsert_nodes("Item", [{"id": "i0", "era": 99, "text": "again",
                                                   "_labels": ["x"]}]).commit()
        assert admin.get("Item", "i0") == before
        assert admin.ref(before["_id"]).key == "i0"
        assert [ref.key for ref in admin.neighbors("Item", "i0", "Item_link")] == ["i2"]
        assert admin.keyword_search("again", k=5).num_rows == 0
    after = admin.get("Item", "i0")
    assert after["era"] == 99 and after["_id"] != before["_id"]
    assert admin.neighbors("Item", "i0", "Item_link") == []


def test_a_checkpoint_and_index_builds_under_a_snapshot_change_nothing_it_reads(tmp_path):
    """A checkpoint (graph overlay folded, vectors compacted) and a background HNSW install land while a
    reader holds a snapshot: its answers stay those of its LSN."""
    config = knowledge.StoreConfig(vectors=knowledge.config.VectorConfig(kind="hnsw"))
    with knowledge.open(str(tmp_path / "s"), config=config) as store:
        store.define_node_type("Item", key="id", properties={"era": "int", "text": "text",
                                                             "emb": {"type": f"vector[{DIM}]", "metric": "l2"}})
        store.define_edge_type("Item_link", source="Item", target="Item")
        vectors = np.random.default_rng(9).normal(size=(N, DIM)).astype(np.float32)
        admin = store.session()
        for era in range(3):
            commit_era(admin, era, vectors)
        admin.transaction().delete_nodes("Item", [key(n) for n in range(0, N, 4)]).commit()
        reader = store.session(READER)
        with reader.snapshot():
            first = reader.search(vectors[2], k=N).column("_key").to_pylist()
            links = reader.neighbors("Item", "i2", "Item_link")
            store.checkpoint()
            assert store.build_indexes(timeout_s=60)
            assert reader.search(vectors[2], k=N).column("_key").to_pylist() == first
            assert reader.neighbors("Item", "i2", "Item_link") == links
