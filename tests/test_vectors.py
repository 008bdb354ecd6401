"""Vector properties and search: exact against brute force, filters + visibility as one mask, HNSW,
snapshots with WAL tail replay, rebuild of a damaged snapshot, and bad input."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest

import knowledge
from knowledge import Principal
from knowledge.config import VectorConfig
from knowledge.errors import InvalidArgument, TypeMismatch, UnknownType
from knowledge.index.vectors import VectorIndex

DIM = 16


def brute(vectors: dict[str, np.ndarray], query: np.ndarray, k: int, metric: str) -> list[str]:
    keys = sorted(vectors)
    matrix = np.stack([vectors[key] for key in keys]).astype(np.float32)
    q = query.astype(np.float32)
    if metric == "cosine":
        matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
    if metric == "l2":
        scores = ((matrix - q) ** 2).sum(axis=1)
        order = np.argsort(scores, kind="stable")
    else:
        order = np.argsort(-(matrix @ q), kind="stable")
    return [keys[i] for i in order[:k]]


def make(path: str, metric: str = "cosine", config: VectorConfig | None = None, rows: int = 600, seed: int = 0):
    store = knowledge.open(path, config=knowledge.StoreConfig(vectors=config or VectorConfig()))
    store.define_node_type("Doc", key="id", properties={"emb": {"type": f"vector[{DIM}]", "metric": metric},
                                                        "group": "int"})
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(4, DIM))
    vectors = {f"d{i:04d}": (rng.normal(size=4) @ basis + 0.3 * rng.normal(size=DIM)).astype(np.float32)
               for i in range(rows)}
    with store.session().transaction() as tx:
        tx.upsert_nodes("Doc", [{"id": key, "emb": v, "group": i % 10, "_labels": ["even" if i % 2 == 0 else "odd"]}
                                for i, (key, v) in enumerate(vectors.items())])
    return store, vectors, rng


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_search_is_exact(tmp_path, metric):
    store, vectors, rng = make(str(tmp_path / "s"), metric)
    with store:
        session = store.session()
        for _ in range(10):
            query = rng.normal(size=DIM)
            got = session.search(query, k=10).column("_key").to_pylist()
            assert got == brute(vectors, query, 10, metric)


def test_where_and_visibility_form_one_mask(tmp_path):
    store, vectors, rng = make(str(tmp_path / "s"))
    with store:
        even = store.session(Principal("e", read=frozenset({"even"})))
        for _ in range(5):
            query = rng.normal(size=DIM)
            allowed = {k: v for i, (k, v) in enumerate(vectors.items()) if i % 2 == 0 and i % 10 == 4}
            result = even.search(query, k=10, where={"group": 4}, columns=["group"])
            assert result.column("_key").to_pylist() == brute(allowed, query, 10, "cosine")
            assert set(result.column("group").to_pylist()) == {4}
            assert result.schema.metadata[b"plan"] == b"filtered"  # a non-admin is not told which plan (README, Security model)


def test_an_open_session_sees_relabels_grants_and_deletes_at_its_next_search(tmp_path):
    store, vectors, _ = make(str(tmp_path / "s"), rows=60)
    with store:
        store.create_principal("eve", read=["even"])
        session = store.session("eve")
        query = vectors["d0000"]

        def found() -> list[str]:
            return session.search(query, k=60).column("_key").to_pylist()

        assert "d0000" in found() and "d0001" not in found()
        writer = store.session()
        writer.transaction().upsert_nodes("Doc", [{"id": "d0000", "emb": query, "_labels": ["odd"]}]).commit()
        assert "d0000" not in found()  # relabelled out of sight: the session's visibility is not stale
        store.grant("eve", read=["odd"])
        assert {"d0000", "d0001"} <= set(found())
        writer.transaction().delete_nodes("Doc", ["d0001"]).commit()
        assert "d0001" not in found() and len(found()) == 59
        store.revoke("eve", read=["even", "odd"])
        assert found() == []


def test_search_columns_may_be_any_iterable(tmp_path):
    store, vectors, rng = make(str(tmp_path / "s"), rows=40)
    with store:
        session = store.session()
        query = rng.normal(size=DIM)
        expected = session.search(query, k=5, columns=["group"])
        for columns in (("group",), (name for name in ["group"]), iter(["group"])):
            got = session.search(query, k=5, columns=columns)
            assert got.column_names == ["_id", "_key", "_score", "group"] and got.equals(expected)


def test_nearest_neighbours_invisible_still_k_visible_results(tmp_path):
    store, vectors, _ = make(str(tmp_path / "s"))
    with store:
        odd_keys = [k for i, k in enumerate(vectors) if i % 2 == 1]
        query = vectors[odd_keys[0]]
        even = store.session(Principal("e", read=frozenset({"even"})))
        result = even.search(query, k=25)
        assert result.num_rows == 25
        assert not set(result.column("_key").to_pylist()) & set(odd_keys)
        nobody = store.session(Principal("n", read=frozenset({"none"})))
        assert nobody.search(query, k=5).num_rows == 0


def test_upsert_replaces_and_delete_tombstones(tmp_path):
    store, vectors, rng = make(str(tmp_path / "s"), rows=100)
    with store:
        session = store.session()
        target = rng.normal(size=DIM).astype(np.float32)
        with session.transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "d0005", "emb": target, "_labels": ["odd"]}])
            tx.delete_nodes("Doc", ["d0006"])
        vectors["d0005"] = target
        del vectors["d0006"]
        assert session.search(target, k=1).column("_key").to_pylist() == ["d0005"]
        with session.transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "d0007", "group": 1, "_labels": ["odd"]}])  # vector now null
        del vectors["d0007"]
        for _ in range(5):
            query = rng.normal(size=DIM)
            assert session.search(query, k=100).column("_key").to_pylist() == brute(vectors, query, 100, "cosine")


def test_hnsw_recall_and_snapshot_with_tail_replay(tmp_path, caplog):
    config = VectorConfig(kind="hnsw", gather_rows_min=16, ef_search=128, hnsw_m=16)  # ef*M < rows: no gather
    path = str(tmp_path / "s")
    store, vectors, rng = make(path, config=config, rows=3000)
    store.checkpoint()  # snapshot without a graph; the graph is built in the background
    assert store.build_indexes(timeout_s=120)
    session = store.session()
    late = {f"late{i}": rng.normal(size=DIM).astype(np.float32) for i in range(50)}
    with session.transaction() as tx:
        tx.upsert_nodes("Doc", [{"id": k, "emb": v, "group": 0, "_labels": ["even"]} for k, v in late.items()])
        tx.delete_nodes("Doc", ["d0000"])
    vectors.update(late)
    del vectors["d0000"]
    store.close()  # saves the snapshot again: a graph came in after the checkpoint's
    snapshot = os.path.join(path, "snapshots", "vectors-Doc-emb.snap")
    assert os.path.exists(snapshot)
    with caplog.at_level(logging.WARNING), knowledge.open(path, config=knowledge.StoreConfig(vectors=config)) as st:
        assert "rebuilt" not in caplog.text
        s = st.session()
        hits = total = 0
        plans = set()
        for _ in range(20):
            query = rng.normal(size=DIM)
            result = s.search(query, k=10)
            plans.add(result.schema.metadata[b"plan"])
            hits += len(set(result.column("_key").to_pylist()) & set(brute(vectors, query, 10, "cosine")))
            total += 10
        assert plans == {b"hnsw-filtered"}  # tombstone present: HNSW with a selector
        assert hits / total >= 0.95
        assert "late7" in s.search(late["late7"], k=1).column("_key").to_pylist()
    with open(snapshot, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    with caplog.at_level(logging.WARNING), knowledge.open(path, config=knowledge.StoreConfig(vectors=config)) as st:
        assert "rebuilt from the node table" in caplog.text
        query = rng.normal(size=DIM)
        got = set(st.session().search(query, k=10).column("_key").to_pylist())
        assert len(got & set(brute(vectors, query, 10, "cosine"))) >= 8


def test_bad_input(tmp_path):
    store, vectors, _ = make(str(tmp_path / "s"), rows=20)
    with store:
        session = store.session()
        good = np.ones(DIM)
        for bad in (np.ones(DIM - 1), [float("nan")] * DIM, [float("inf")] * DIM, "text"):
            with pytest.raises(InvalidArgument):
                session.search(bad, k=3)
        for k in (0, -1, 10_001, 2.5, True):
            with pytest.raises(InvalidArgument):
                session.search(good, k=k)
        with pytest.raises(UnknownType):
            session.search(good, type="Nope")
        with pytest.raises(InvalidArgument):
            session.search(good, property="nope")
        lsn = store.memory_lsn
        with pytest.raises(TypeMismatch) as info:
            with session.transaction() as tx:
                tx.upsert_nodes("Doc", [{"id": "ok", "emb": good}, {"id": "bad", "emb": [np.nan] * DIM}])
        assert info.value.row == 1 and info.value.field == "emb"
        with pytest.raises(TypeMismatch):
            session.transaction().upsert_nodes("Doc", [{"id": "short", "emb": [1.0, 2.0]}])
        assert store.memory_lsn == lsn
        assert "ok" not in session.search(good, k=30).column("_key").to_pylist()


def test_backup_carries_vector_snapshots(tmp_path, caplog):
    store, vectors, rng = make(str(tmp_path / "s"), config=VectorConfig(kind="hnsw"), rows=300)
    with store:
        store.build_indexes()
        store.checkpoint()
        store.backup(str(tmp_path / "b"))
    knowledge.restore(str(tmp_path / "b"), str(tmp_path / "r"))
    with caplog.at_level(logging.WARNING), knowledge.open(str(tmp_path / "r"),
                                                          config=knowledge.StoreConfig(vectors=VectorConfig(kind="hnsw"))) as st:
        assert "rebuilt" not in caplog.text
        assert st.vectors[("Doc", "emb")].hnsw is not None
        query = rng.normal(size=DIM)
        assert st.session().search(query, k=5).num_rows == 5


def test_no_warning_before_the_first_checkpoint_but_one_after_a_lost_snapshot(tmp_path, caplog):
    path = str(tmp_path / "s")
    store, _, _ = make(path, rows=50)
    store.close()
    with caplog.at_level(logging.WARNING), knowledge.open(path) as st:
        assert "rebuilt" not in caplog.text  # never checkpointed: no snapshot is expected
        st.checkpoint()
    os.unlink(os.path.join(path, "snapshots", "vectors-Doc-emb.snap"))
    with caplog.at_level(logging.WARNING), knowledge.open(path) as st:
        assert "rebuilt from the node table" in caplog.text
        assert st.session().search(np.ones(DIM), k=3).num_rows == 3


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_fast_paths_give_what_the_general_path_gives(tmp_path, monkeypatch, metric, kind):
    """Unfiltered searches keep faiss's order when nothing ties and build the table from buffers; forcing
    the general path (re-ranking by (score, id), Arrow type inference) must give identical tables, for
    principals that see everything (admin, all labels) and for one that sees a subset."""
    from knowledge import session_search as session_module
    from knowledge.index import vectors as vectors_module

    config = VectorConfig(kind=kind, gather_rows_min=16, hnsw_m=16, ef_search=64)
    store, vectors, rng = make(str(tmp_path / "s"), metric, config=config, rows=1500)
    with store:
        with store.session().transaction() as tx:  # exact duplicates: tied scores
            tx.upsert_nodes("Doc", [{"id": f"twin{i}é", "emb": vectors["d0003"], "_labels": ["odd"]} for i in range(12)])
        store.checkpoint()
        assert store.build_indexes(timeout_s=120)
        sessions = [store.session(), store.session(Principal("all", read=frozenset({"even", "odd"}))),
                    store.session(Principal("e", read=frozenset({"even"})))]
        queries = [rng.normal(size=DIM) for _ in range(8)] + [vectors["d0003"], np.zeros(DIM)]
        shortcuts = []
        faiss_ranked = vectors_module._faiss_ranked

        def counted(rows, scores, row_ids, metric):
            result = faiss_ranked(rows, scores, row_ids, metric)
            shortcuts.append(result is not None)
            return result

        def run():
            return [s.search(q, k=k, **options) for s in sessions for q in queries for k in (1, 10, 100, 400)
                    for options in ({}, {"columns": ["group"]})]

        monkeypatch.setattr(vectors_module, "_faiss_ranked", counted)
        fast = run()
        assert any(shortcuts) and not all(shortcuts)  # both the shortcut and the ties fallback were taken
        monkeypatch.setattr(vectors_module, "_faiss_ranked", lambda rows, scores, row_ids, metric: None)
        ranked_table = session_module._ranked_table
        monkeypatch.setattr(session_module, "_ranked_table",
                            lambda ids, keys, scores, key_type, plan, *rest: ranked_table(ids, keys, scores, None, plan,
                                                                                         *rest))
        general = run()
        assert len(fast) == len(general)
        for got, expected in zip(fast, general, strict=True):
            assert got.equals(expected, check_metadata=True) and got.schema.equals(expected.schema, check_metadata=True)
        assert fast[0].equals(fast[len(fast) // 3])  # admin and all-labels agree (a non-admin's plan reads "filtered")


def test_query_vector_matches_prepare_and_rejects_bad_vectors():
    for metric in ("cosine", "ip", "l2"):
        index = VectorIndex(DIM, metric)
        rng = np.random.default_rng(3)
        queries = [rng.normal(size=DIM) * scale for scale in (1e-3, 1.0, 1e3, 1e-20)] + [np.zeros(DIM), np.full(DIM, 1e30)]
        queries += [rng.normal(size=DIM) for _ in range(200)]
        for query in queries:
            query = query.astype(np.float32)
            assert index.query_vector(query).tobytes() == index.prepare(query).tobytes()
            assert index.query_vector(query.tolist()).tobytes() == index.prepare(query).tobytes()
            assert index.query_vector(query[::-1].copy()[::-1]).tobytes() == index.prepare(query).tobytes()
        for bad in (np.nan, np.inf, -np.inf):
            query = np.ones(DIM, dtype=np.float32)
            query[3] = bad
            with pytest.raises(InvalidArgument, match="NaN or infinite"):
                index.query_vector(query)
        for bad, message in ((np.ones(DIM + 1), "dimension"), (np.ones((1, DIM)), "dimension"), (["x"] * DIM, "numeric"),
                             (np.float32(1.0), "dimension")):
            with pytest.raises(InvalidArgument, match=message):
                index.query_vector(bad)


def test_ranked_table_from_buffers_equals_type_inference():
    from knowledge.session_search import RANKED_KEYS_BUILT_MAX, _ranked_table

    rng = np.random.default_rng(4)
    for count in (0, 1, 7, RANKED_KEYS_BUILT_MAX, RANKED_KEYS_BUILT_MAX + 1):
        ids = rng.integers(0, 1 << 40, size=count).astype(np.int64)
        scores = rng.normal(size=count).astype(np.float32)
        for key_type, keys in (("str", [f"k{i}" + "é中" * (i % 3) for i in range(count)]),
                               ("int", [int(i) * -7 for i in range(count)]),
                               ("str", [f"k{i}" if i else None for i in range(count)])):
            for plan in ("flat", None):
                got = _ranked_table(ids, keys, scores, key_type, plan)
                expected = _ranked_table(ids, keys, scores, None, plan)
                assert got.equals(expected, check_metadata=True) and got.schema.equals(expected.schema, check_metadata=True)


def test_checkpoint_builds_hnsw_in_the_background_and_searches_stay_exact_meanwhile(tmp_path):
    config = VectorConfig(kind="hnsw", hnsw_tail_rows_max=100, gather_rows_min=16, ef_search=256)
    store, vectors, rng = make(str(tmp_path / "s"), config=config, rows=2000)
    with store:
        index = store.vectors[("Doc", "emb")]
        gate = threading.Event()
        store.indexer.submit("gate", _Blocker(gate))  # holds the worker: the HNSW build queues behind it
        store.checkpoint()
        assert index.hnsw is None and store.indexer.pending() == 2
        session = store.session()
        vectors["extra"] = rng.normal(size=DIM).astype(np.float32)
        with session.transaction() as tx:  # commits go on while the build waits
            tx.upsert_nodes("Doc", [{"id": "extra", "emb": vectors["extra"], "group": 1}])
        query = rng.normal(size=DIM)
        result = session.search(query, k=10)
        assert result.schema.metadata[b"plan"].startswith(b"flat")  # exact until the graph is in
        assert result.column("_key").to_pylist() == brute(vectors, query, 10, "cosine")
        gate.set()
        assert store.indexer.wait_idle(120)
        assert index.hnsw is not None and index.hnsw_rows == 2000 and index.rows == 2001  # one row of tail
        first_graph = index.hnsw
        more = {f"m{i}": rng.normal(size=DIM).astype(np.float32) for i in range(150)}
        with session.transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": k, "emb": v, "group": 2} for k, v in more.items()])
        vectors.update(more)
        store.checkpoint()  # 151 rows past the graph > hnsw_tail_rows_max: extended on a clone
        assert store.indexer.wait_idle(120)
        assert index.hnsw is not first_graph and index.hnsw_rows == index.rows == 2151
        assert store.stats()["vector_indexes"]["Doc.emb"] == {"rows": 2151, "live": 2151, "graph_rows": 2151,
                                                                  "device": index.scan_device}
        assert store.stats()["index_builds"]["installed"] == 2
        assert first_graph.ntotal == 2000  # the graph searches were using was never changed
        hits = sum(len(set(session.search(q, k=10).column("_key").to_pylist()) & set(brute(vectors, q, 10, "cosine")))
                   for q in rng.normal(size=(10, DIM)))
        assert hits >= 95


class _Blocker:
    def __init__(self, gate):
        self.gate = gate

    def run(self, stop):
        while not self.gate.wait(0.01) and not stop.is_set():
            pass
        return None

    def install(self, result):
        return False


def test_a_build_that_a_compaction_overtook_is_dropped():
    from knowledge.index.vector_jobs import hnsw_job
    from knowledge.index.vectors import VectorIndex

    index = VectorIndex(DIM, "cosine", VectorConfig(kind="hnsw"))
    rng = np.random.default_rng(3)
    index.upsert(np.arange(300), rng.normal(size=(300, DIM)))
    job = hnsw_job(index)
    assert job is not None and job.end == 300
    index.remove(np.arange(100))
    index.compact()  # rows renumbered: the job's rows no longer mean what they did
    graph = job.run(threading.Event())
    assert not job.install(graph) and index.hnsw is None
    fresh = hnsw_job(index)
    assert fresh is not None and fresh.install(fresh.run(threading.Event()))
    assert index.hnsw_rows == 200


def test_close_during_a_build_loses_nothing(tmp_path):
    config = VectorConfig(kind="hnsw")
    path = str(tmp_path / "s")
    store, vectors, rng = make(path, config=config, rows=1500)
    store.checkpoint()
    store.close()  # the build is stopped or finished; either way the store reopens whole
    with knowledge.open(path, config=knowledge.StoreConfig(vectors=config)) as st:
        assert st.build_indexes(timeout_s=120)
        query = rng.normal(size=DIM)
        got = st.session().search(query, k=10).column("_key").to_pylist()
        assert len(set(got) & set(brute(vectors, query, 10, "cosine"))) >= 9


def test_compaction_runs_aside_and_carries_over_what_happened_meanwhile(tmp_path):
    config = VectorConfig(kind="hnsw", tombstone_fraction_max=0.2, gather_rows_min=16, ef_search=128, hnsw_m=16)
    store, vectors, rng = make(str(tmp_path / "s"), config=config, rows=1200)
    with store:
        assert store.build_indexes(timeout_s=120)
        index = store.vectors[("Doc", "emb")]
        session = store.session()
        dead = [f"d{i:04d}" for i in range(0, 1200, 3)]  # a third: past the compaction threshold
        with session.transaction() as tx:
            tx.delete_nodes("Doc", dead)
        for key in dead:
            del vectors[key]
        gate = threading.Event()
        store.indexer.submit("gate", _Blocker(gate))
        store.checkpoint()
        old_graph, generation = index.hnsw, index.generation
        assert old_graph is not None and index.rows == 1200  # not compacted in place: the graph stays
        near = list(vectors.values())[:30]  # like the rest of the data: low rank plus noise
        late = {f"late{i}": (v + 0.1 * rng.normal(size=DIM)).astype(np.float32) for i, v in enumerate(near)}
        with session.transaction() as tx:  # while the compaction waits: appends and more tombstones
            tx.upsert_nodes("Doc", [{"id": k, "emb": v, "group": 3} for k, v in late.items()])
            tx.delete_nodes("Doc", ["d0001", "d0002"])
        vectors.update(late)
        del vectors["d0001"], vectors["d0002"]
        query = rng.normal(size=DIM)
        assert session.search(query, k=10).schema.metadata[b"plan"].startswith(b"hnsw")  # old graph in use
        gate.set()
        assert store.build_indexes(timeout_s=120)
        assert index.generation > generation and index.hnsw is not old_graph
        assert index.live_count == len(vectors)  # the third that was dead is gone, the late rows kept
        assert index.rows == len(vectors) + 2  # the two tombstones set meanwhile carry over as tombstones
        assert index.hnsw_rows == index.rows
        hits = 0
        for q in rng.normal(size=(20, DIM)):
            got = session.search(q, k=10).column("_key").to_pylist()
            hits += len(set(got) & set(brute(vectors, q, 10, "cosine")))
            assert not set(got) & ({"d0001", "d0002"} | set(dead))
        assert hits >= 180  # recall@10 >= 0.9 with this small graph
