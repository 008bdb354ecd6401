"""HNSW calibrated to a recall target on the index's own rows: the efSearch found reaches the target on
fresh queries (unfiltered and filtered), is the smallest on the ladder that does on the sample, grows with
the target; the calibration is in `stats()`, survives a snapshot, is redone after large changes, and is
off when efSearch is fixed; bad settings are typed errors."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

import knowledge
from knowledge.config import VectorConfig
from knowledge.errors import InvalidArgument
from knowledge.index.calibrate import EF_LADDER, Calibration, _fresh_like, _hnsw_run, _Truth, calibrate
from knowledge.index.vector_jobs import CalibrateJob, hnsw_job
from knowledge.index.vectors import VectorIndex

DIM = 32
K = 10


def mixture(rows: int, queries: int, seed: int = 3, clusters: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from Gaussian clusters of skewed sizes and spreads (HNSW recall far from trivial);
    the queries are fresh draws from the same mixture, never stored."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.1
    member = rng.choice(clusters, size=rows + queries, p=weights / weights.sum())
    spread = rng.uniform(0.4, 1.0, size=clusters)[member, None]
    data = centres[member] / np.sqrt(DIM) * 3 + rng.normal(size=(rows + queries, DIM)) * spread / np.sqrt(DIM) * 3
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    return np.ascontiguousarray(data[:rows]), np.ascontiguousarray(data[rows:])


def built(rows: np.ndarray, **config) -> VectorIndex:
    index = VectorIndex(DIM, "cosine", VectorConfig(kind="hnsw", device="cpu", hnsw_m=16, ef_construction=40,
                                                    **config))
    index.upsert(np.arange(len(rows)), rows)
    job = hnsw_job(index)
    assert job is not None and job.install(job.run(threading.Event()))
    return index


def recall_at(index: VectorIndex, queries: np.ndarray, allowed: np.ndarray | None, ef: int) -> float:
    """recall@K of the graph at `ef` (through `allowed`'s selector) against exact search, fresh queries."""
    matrix = index.matrix[:index.rows]
    hits = 0
    for q in queries:
        scores = matrix @ q
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        truth = set(np.argsort(-scores)[:K].tolist())
        entry = None if allowed is None else index._mask_entry(allowed)
        selected = index.rows if entry is None else entry.selected
        found, _, _ = index._hnsw(q[None, :], K, entry, selected, ef)()
        hits += len(truth & set(found.tolist()))
    return hits / (K * len(queries))


@pytest.fixture(scope="module")
def calibrated() -> tuple[VectorIndex, np.ndarray]:
    rows, queries = mixture(8000, 150)
    index = built(rows)  # the build calibrates, on rows held out of the graph until it was measured
    assert index.calibration is not None and index.calibration.held_out
    assert hnsw_job(index) is None  # calibrated: nothing more is due
    return index, queries


def test_calibrated_ef_meets_the_target_on_fresh_queries(calibrated):
    index, queries = calibrated
    cal = index.calibration
    assert cal is not None and index.calibrated()
    assert cal.ef_search is not None and cal.recall >= 0.99 and cal.graph_rows == index.rows
    assert recall_at(index, queries, None, cal.ef_search) >= 0.98  # fresh queries: sampling error allowed


def test_a_recalibration_without_held_out_rows_takes_the_smallest_ef_on_its_sample(calibrated):
    index, queries = calibrated
    job = CalibrateJob(index, index.hnsw, index.matrix, index.live[:index.rows].copy())
    cal = job.run(threading.Event())  # stored rows moved off themselves as the queries
    assert cal is not None and not cal.held_out and cal.ef_search is not None and cal.recall >= 0.99
    assert recall_at(index, queries, None, cal.ef_search) >= 0.98
    # the smallest ladder value reaching the target on the calibration's own sample
    if cal.ef_search > EF_LADDER[0]:
        previous = EF_LADDER[EF_LADDER.index(cal.ef_search) - 1]
        live = index.live[:index.rows]
        rng = np.random.default_rng(0)  # as calibrate() draws its sample and its fresh-like queries
        sample = np.sort(rng.choice(np.flatnonzero(live), cal.queries, replace=False))
        queries = _fresh_like(index.matrix, index.rows, live, sample, "cosine", K, rng)
        truth = _Truth(index.matrix, index.rows, live, sample, "cosine", K, queries)
        below, _ = _hnsw_run(index.hnsw, truth, truth.top(None), previous)
        assert below < 0.99


def test_filtered_points_meet_the_target_on_fresh_queries(calibrated):
    index, queries = calibrated
    cal = index.calibration
    assert cal is not None and cal.filtered
    rng = np.random.default_rng(11)
    checked = 0
    for point in cal.filtered:
        if point.ef_search is None:
            continue
        allowed = rng.random(index.rows) < point.fraction
        assert recall_at(index, queries[:80], allowed, point.ef_search) >= 0.975
        checked += 1
    assert checked >= 1
    efs = [p.ef_search for p in cal.filtered if p.ef_search is not None]
    assert efs == sorted(efs)  # a smaller share of rows never needs a narrower search


def test_a_build_calibrates_on_rows_held_out_of_its_graph():
    rows, _ = mixture(6000, 1, seed=9)
    index = VectorIndex(DIM, "cosine", VectorConfig(kind="hnsw", device="cpu", hnsw_m=16, ef_construction=40))
    index.upsert(np.arange(len(rows)), rows)
    index.remove(np.arange(0, 6000, 7))  # tombstones: never held out, never an answer
    job = hnsw_job(index)
    assert job is not None and job.held_out is not None and len(job.held_out) == index.config.calibration_queries
    held = job.held_out
    assert np.all(np.diff(held) > 0) and index.live[held].all()
    graph, cal = job.run(threading.Event())
    assert cal is not None and cal.held_out and cal.queries == len(held) and cal.graph_rows == 6000
    _, labels = graph.search(rows[held], 1)  # the held-out rows are in the graph now, each as its own row
    assert graph.ntotal == 6000 and (labels[:, 0] == held).mean() > 0.95
    assert job.install((graph, cal)) and index.calibration is cal and index.calibrated()
    assert hnsw_job(index) is None


def test_held_out_calibration_scores_queries_not_in_the_graph():
    """With held_out, recall is measured for those vectors as queries against exact search of the graph's rows,
    none of them excluded: the bound equals the one computed here, query by query, on a graph without them."""
    rows, _ = mixture(5000, 1, seed=4)
    rng = np.random.default_rng(1)
    held = np.sort(rng.choice(len(rows), 150, replace=False))
    kept = np.setdiff1d(np.arange(len(rows)), held)
    index = VectorIndex(DIM, "cosine", VectorConfig(kind="hnsw", device="cpu", hnsw_m=8, ef_construction=16))
    graph = index.new_hnsw()
    graph.add(rows[kept])
    matrix, live, queries = np.ascontiguousarray(rows[kept]), np.ones(len(kept), dtype=bool), rows[held]
    cal = calibrate(graph, matrix, live, "cosine", recall_target=0.95, queries=150, ef_search_max=512,
                    held_out=queries)
    assert cal is not None and cal.held_out and cal.ef_search is not None and cal.queries == 150
    params = faiss.SearchParametersHNSW()
    params.efSearch = cal.ef_search
    _, labels = graph.search(queries, K, params=params)
    truth = np.argsort(-(queries @ matrix.T), axis=1)[:, :K]
    recalls = np.array([len(set(t.tolist()) & set(f.tolist())) / K for t, f in zip(truth, labels, strict=True)])
    bound = recalls.mean() - 1.645 * recalls.std(ddof=1) / np.sqrt(len(recalls))
    assert cal.recall == pytest.approx(bound, abs=1e-9) and bound >= 0.95


def test_a_higher_target_needs_a_wider_search(calibrated):
    index, _ = calibrated
    low = calibrate(index.hnsw, index.matrix, index.live, "cosine", recall_target=0.9, queries=100,
                    ef_search_max=2048)
    high = calibrate(index.hnsw, index.matrix, index.live, "cosine", recall_target=0.999, queries=100,
                     ef_search_max=2048)
    assert low is not None and high is not None
    assert low.ef_search is not None and low.recall >= 0.9
    assert high.ef_search is None or high.ef_search >= low.ef_search


def test_calibration_round_trips_as_a_dict(calibrated):
    index, _ = calibrated
    cal = index.calibration
    assert Calibration.from_dict(cal.as_dict()) == cal


def test_store_reports_keeps_and_redoes_the_calibration(tmp_path):
    rows, queries = mixture(6000, 60, seed=5)
    config = knowledge.StoreConfig(vectors=VectorConfig(kind="hnsw", hnsw_m=16, ef_construction=40))
    path = str(tmp_path / "s")
    store = knowledge.open(path, config=config)
    store.define_node_type("Doc", key="n", properties={"n": "int", "v": {"type": f"vector[{DIM}]"}})
    with store.session().transaction() as tx:
        tx.upsert_nodes("Doc", [{"n": i, "v": rows[i]} for i in range(4000)])
    assert store.build_indexes(timeout_s=300)
    stats = store.stats()["vector_indexes"]["Doc.v"]["calibration"]
    assert stats is not None and stats["in_use"] and stats["graph_rows"] == 4000
    assert stats["recall"] >= 0.99 and stats["recall_target"] == 0.99 and stats["ef_search"] >= K
    assert {"timings", "filtered", "seconds", "hnsw_m", "ef_construction"} <= set(stats)
    assert stats["timings"][0]["fraction"] == 1.0 and stats["timings"][0]["hnsw_us"] > 0
    session = store.session()
    hits = 0
    for q in queries:
        table = session.search(q, k=K)
        assert table.schema.metadata[b"plan"] in (b"hnsw", b"flat")
        truth = np.argsort(-(rows[:4000] @ q))[:K]
        hits += len(set(truth.tolist()) & set(table.column("_key").to_pylist()))
    assert hits / (K * len(queries)) >= 0.98
    store.close()  # the calibration is saved with the graph
    with knowledge.open(path, config=config) as st:
        index = st.vectors[("Doc", "v")]
        assert index.calibration is not None and index.calibration.as_dict() == {
            key: value for key, value in stats.items() if key != "in_use"}
        assert hnsw_job(index) is None  # nothing to redo
        with st.session().transaction() as tx:  # half as many rows again: a large change
            tx.upsert_nodes("Doc", [{"n": i, "v": rows[i]} for i in range(4000, 6000)])
        assert st.build_indexes(timeout_s=300)
        assert index.hnsw_rows == 6000 and index.calibration.graph_rows == 6000


def test_a_fixed_ef_search_turns_calibration_off():
    rows, _ = mixture(3000, 1)
    index = built(rows, ef_search=64)
    assert hnsw_job(index) is None and index.calibration is None and not index.calibrated()
    _, _, plan = index.search(rows[5], K, None)
    assert plan == "hnsw"


@pytest.mark.parametrize("bad", [{"recall_target": 0.0}, {"recall_target": 1.5}, {"calibration_queries": 2},
                                 {"recalibrate_growth": 0}, {"ef_search": 0}, {"ef_search": 5000}])
def test_bad_calibration_settings_are_typed_errors(bad):
    with pytest.raises(InvalidArgument, match=next(iter(bad)).split("_")[0]):
        VectorConfig(**bad)
