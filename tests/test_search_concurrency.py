"""Vector searches scan outside the store's state lock, and still answer as of one LSN."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import knowledge
import knowledge.session
from knowledge import Principal
from knowledge.config import VectorConfig
from knowledge.index import vectors as vectors_module

DIM = 8
GROUP = 30  # nodes a0.. and b0..: at every LSN one group carries label "x", the other "y"
ANSWERS_MIN = 60  # answers checked per run of the commits-during-searches test


def open_store(path: str, kind: str) -> knowledge.Store:
    store = knowledge.open(path, config=knowledge.StoreConfig(vectors=VectorConfig(kind=kind)))
    store.define_node_type("Doc", key="id", properties={"emb": {"type": f"vector[{DIM}]", "metric": "l2"},
                                                        "era": "int", "bucket": "int"})
    return store


def era_rows(era: int, vectors: dict[str, np.ndarray]) -> list[dict]:
    """Every node at `era`: group a is visible to "x" in even eras, group b in odd ones."""
    seen_by_x = "a" if era % 2 == 0 else "b"
    return [{"id": key, "emb": vector, "era": era, "bucket": int(key[1:]) % 2,
             "_labels": ["x" if key[0] == seen_by_x else "y"]} for key, vector in vectors.items()]


@pytest.fixture(params=["flat", "hnsw"])
def world(tmp_path, request):
    rng = np.random.default_rng(7)
    vectors = {f"{group}{i}": rng.normal(size=DIM).astype(np.float32) for group in "ab" for i in range(GROUP)}
    store = open_store(str(tmp_path / "s"), request.param)
    store.session().transaction().upsert_nodes("Doc", era_rows(0, vectors)).commit()
    if request.param == "hnsw":
        store.checkpoint()
        assert store.build_indexes(timeout_s=60)
    yield store, vectors
    store.close()


def slowed(monkeypatch, delay_s: float, calls: list[str]) -> None:
    """Make every planned search job wait `delay_s` before it runs (a long scan), and record the calls."""
    plan_search = vectors_module.VectorIndex.plan_search

    def plan(self, q, k, allowed):
        job = plan_search(self, q, k, allowed)

        def run():
            calls.append("job")
            threading.Event().wait(delay_s)
            return job()
        return run

    monkeypatch.setattr(vectors_module.VectorIndex, "plan_search", plan)


def search_twice_at_once(store: knowledge.Store, vectors: dict[str, np.ndarray], where: dict | None) -> None:
    """Two threads search near a0 at once: both must finish, with the same answer, a0 first."""
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def search():
        try:
            session = store.session(Principal("r", read=frozenset({"x"})))
            results.append(session.search(vectors["a0"], k=5, where=where).column("_key").to_pylist())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=search) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(results) == 2 and results[0] == results[1] and results[0][0] == "a0"


def test_two_searches_scan_at_once(world, monkeypatch):
    """Each search's job waits for the other's: only possible when neither holds the state lock meanwhile."""
    store, vectors = world
    both = threading.Barrier(2, timeout=20)
    plan_search = vectors_module.VectorIndex.plan_search

    def plan(self, q, k, allowed):
        job = plan_search(self, q, k, allowed)

        def run():
            both.wait()  # BrokenBarrierError if the other search cannot get past its own planning
            return job()
        return run

    monkeypatch.setattr(vectors_module.VectorIndex, "plan_search", plan)
    search_twice_at_once(store, vectors, None)


@pytest.mark.parametrize("filtered", [False, True])
def test_commits_during_a_scan_never_mix_two_lsns(world, monkeypatch, filtered):
    """A writer flips which group "x" sees and the era of every node, one commit per era, while readers
    search with a slowed scan (and a slowed where-filter query): each answer must be one era's visible
    group with that era's columns."""
    store, vectors = world
    calls: list[str] = []
    slowed(monkeypatch, 0.002, calls)
    where_mask = knowledge.session.Session._where_mask

    def slow_mask(self, *args):
        threading.Event().wait(0.002)
        return where_mask(self, *args)

    monkeypatch.setattr(knowledge.session.Session, "_where_mask", slow_mask)
    where, expected_rows = ({"bucket": 0}, GROUP // 2) if filtered else (None, GROUP)
    again: list[int] = []  # searches during which a commit completed
    commits = [0]
    stop = threading.Event()
    failures: list[str] = []
    answers = [0]

    def write():
        writer = store.session()
        era = 0
        while not stop.is_set():
            era += 1
            writer.transaction().upsert_nodes("Doc", era_rows(era, vectors)).commit()
            commits[0] += 1
            # paced (a commit every few ms, still several per search): an unpaced writer keeps the table
            # applier behind, and a search reading columns waits for it (a cost bench/server.py measures)
            stop.wait(0.005)

    def read(seed: int):
        rng = np.random.default_rng(seed)
        session = store.session(Principal(f"r{seed}", read=frozenset({"x"})))
        try:
            while not stop.is_set():
                query = vectors[f"{'ab'[rng.integers(2)]}{rng.integers(GROUP)}"]
                before = commits[0]
                table = session.search(query, k=2 * GROUP, columns=["era", "bucket"], where=where)
                if commits[0] != before:
                    again.append(1)
                keys, eras = table.column("_key").to_pylist(), set(table.column("era").to_pylist())
                groups = {key[0] for key in keys}
                if filtered and set(table.column("bucket").to_pylist()) != {0}:
                    failures.append(f"buckets {set(table.column('bucket').to_pylist())}")
                if len(keys) != expected_rows or len(eras) != 1 or len(groups) != 1:
                    failures.append(f"{len(keys)} rows, eras {sorted(eras)}, groups {sorted(groups)}")
                elif groups != {"a" if eras.pop() % 2 == 0 else "b"}:
                    failures.append(f"group {groups} shown with another era's columns")
                answers[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(repr(exc))

    writer = threading.Thread(target=write)
    readers = [threading.Thread(target=read, args=(seed,)) for seed in range(2)]
    for thread in [writer, *readers]:
        thread.start()
    # run until enough answers came back, commits completing during some (a bound only against a hang)
    for _ in range(2400):
        if (answers[0] >= ANSWERS_MIN and again) or failures:
            break
        stop.wait(0.05)
    stop.set()
    for thread in [writer, *readers]:
        thread.join(timeout=60)
    assert not failures, failures[:5]
    assert answers[0] >= ANSWERS_MIN and again  # commits completed mid-search: they did not wait for it


def test_inside_a_snapshot_a_commit_completes_and_the_search_keeps_the_snapshot(world, monkeypatch):
    """In snapshot(), a commit completes (it does not wait for the block), even while a search's scan runs;
    the search still answers as of the snapshot's LSN, and after the block the commit is visible."""
    store, vectors = world
    calls: list[str] = []
    slowed(monkeypatch, 0.2, calls)
    session = store.session(Principal("r", read=frozenset({"x"})))
    committed = threading.Event()

    def write():
        store.session().transaction().upsert_nodes("Doc", era_rows(1, vectors)).commit()
        committed.set()

    with session.snapshot():
        before = store.memory_lsn
        writer = threading.Thread(target=write)
        writer.start()
        assert committed.wait(30) and store.memory_lsn == before + 1  # done while the block is open
        table = session.search(vectors["b0"], k=2 * GROUP, columns=["era"])
        assert {key[0] for key in table.column("_key").to_pylist()} == {"a"}  # era 0: "x" sees group a
        assert set(table.column("era").to_pylist()) == {0}
    writer.join(timeout=30)
    assert len(calls) == 1
    assert {key[0] for key in session.search(vectors["b0"], k=5).column("_key").to_pylist()} == {"b"}


def test_a_compaction_during_a_scan_does_not_renumber_its_rows(tmp_path, monkeypatch):
    """A checkpoint compacts a flat index (new row numbers, same LSN) while a search's scan is under way:
    the scan maps its rows to nodes as they were numbered when it was planned."""
    rng = np.random.default_rng(11)
    vectors = {f"a{i}": rng.normal(size=DIM).astype(np.float32) for i in range(200)}
    store = open_store(str(tmp_path / "s"), "flat")
    with store:
        writer = store.session()
        writer.transaction().upsert_nodes("Doc", [{"id": key, "emb": v, "era": 0} for key, v in vectors.items()]).commit()
        gone = [f"a{i}" for i in range(0, 200, 2)]
        writer.transaction().delete_nodes("Doc", gone).commit()  # half the rows are tombstones now
        index = store.vectors[("Doc", "emb")]
        rows_before = index.rows
        planned, release = threading.Event(), threading.Event()
        plan_search = vectors_module.VectorIndex.plan_search

        def plan(self, q, k, allowed):
            job = plan_search(self, q, k, allowed)

            def run():
                planned.set()
                release.wait(30)
                return job()
            return run

        monkeypatch.setattr(vectors_module.VectorIndex, "plan_search", plan)
        query = vectors["a1"]
        found: list[list[str]] = []
        search = threading.Thread(target=lambda: found.append(
            writer.search(query, k=10).column("_key").to_pylist()))
        search.start()
        assert planned.wait(30)
        store.checkpoint()  # compacts: the live rows are renumbered 0..99
        assert store.vectors[("Doc", "emb")].rows == 100 < rows_before  # the search's view keeps `index`
        release.set()
        search.join(30)
        live = {key: v for key, v in vectors.items() if key not in gone}
        distances = {key: float(((v - query) ** 2).sum()) for key, v in live.items()}
        assert found == [sorted(distances, key=lambda key: (distances[key], int(key[1:])))[:10]]


def test_two_filtered_searches_query_the_tables_at_once(world, monkeypatch):
    """Each search's where-filter query waits for the other's: only possible outside the state lock."""
    store, vectors = world
    both = threading.Barrier(2, timeout=20)
    where_mask = knowledge.session.Session._where_mask

    def meeting_mask(self, *args):
        both.wait()  # BrokenBarrierError if the other search cannot get past its own planning
        return where_mask(self, *args)

    monkeypatch.setattr(knowledge.session.Session, "_where_mask", meeting_mask)
    search_twice_at_once(store, vectors, {"bucket": 0})
