"""The store's vector search on the GPU (rows kept in GPU memory) against the same search on the CPU.

The GPU tests skip, with the probe's reason, where CuPy has no usable GPU (bench/gpu_device.sh runs
them on a lent GPU machine); the configuration checks run everywhere.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import knowledge
from knowledge import Principal
from knowledge.config import VectorConfig
from knowledge.errors import InvalidArgument
from knowledge.index.vectors import VectorIndex
from knowledge.kernels import gpu_available

GPU_OK, GPU_REASON = gpu_available()
requires_gpu = pytest.mark.skipif(not GPU_OK, reason=f"no usable GPU for the CuPy path: {GPU_REASON}")
DIM = 24


def integer_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Small-integer rows (exact float32 arithmetic in any order) with many exact duplicates: ties."""
    rows = rng.integers(-3, 4, size=(n, DIM)).astype(np.float32)
    rows[rng.integers(0, n, n // 4)] = rows[rng.integers(0, n, n // 4)]
    return rows


def twin_indexes(metric: str, kind: str, rows: np.ndarray, **config) -> tuple[VectorIndex, VectorIndex]:
    """The same rows in a CPU index and a GPU index (node ids shuffled against row order, then some deleted
    and re-upserted, so row order and node order differ)."""
    made = []
    for device in ("cpu", "gpu"):
        index = VectorIndex(DIM, metric, VectorConfig(device=device, kind=kind, **config))
        ids = np.random.default_rng(1).permutation(len(rows)).astype(np.int64)
        index.upsert(ids, rows)
        index.remove(ids[::7])
        index.upsert(ids[::14], rows[::14][::-1].copy())
        made.append(index)
    return made[0], made[1]


def brute_force(index: VectorIndex, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact (node ids, scores) of the best k live, allowed rows: ties by lower node id."""
    rows = np.flatnonzero(index.live[:index.rows])
    nodes = index.row_ids[rows]
    if allowed is not None:
        rows, nodes = rows[allowed[nodes]], nodes[allowed[nodes]]
    base = index.matrix[rows]
    scores = base @ q if index.metric != "l2" else ((base - q) ** 2).sum(1)
    order = np.lexsort((nodes, scores if index.metric == "l2" else -scores))[:k]
    return nodes[order], scores[order].astype(np.float32)


@requires_gpu
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_gpu_index_equals_cpu_index_on_exact_data(metric, kind):
    """Filtered searches on the GPU are one exact masked scan (brute force's answer); unfiltered ones give
    the CPU index's answer (its flat search, or the same HNSW graph with the exactly searched tail)."""
    rng = np.random.default_rng(0)
    rows = integer_rows(rng, 6000)
    cpu, gpu = twin_indexes(metric, kind, rows, gather_rows_min=64)
    assert gpu.use_gpu and not cpu.use_gpu
    for index in (cpu, gpu):
        index.compact()  # no tombstones: unfiltered searches take the unfiltered plans
    if kind == "hnsw":  # the graph covers the first rows; later ones are the exactly searched tail
        graph = cpu.new_hnsw()  # one graph for both (a build is multi-threaded, so not reproducible)
        graph.add(cpu.matrix[:4000])
        for index in (cpu, gpu):
            assert index.install_hnsw(graph, index.generation, 4000)
    queries = rng.integers(-2, 3, size=(20, DIM)).astype(np.float32)
    allowed_sets = [None, rng.random(6000) < 0.5, rng.random(6000) < 0.01, np.zeros(6000, bool)]
    for allowed in allowed_sets[1:]:
        allowed.flags.writeable = False  # as the store's cached bitmaps: row masks and their GPU copy reused
    plans = set()
    for allowed in allowed_sets:
        for q in queries:
            for k in (1, 10, 100):
                g_ids, g_scores, g_plan = gpu.search(q, k, allowed)
                plans.add(g_plan)
                if allowed is None:
                    c_ids, c_scores, c_plan = cpu.search(q, k, allowed)
                    assert g_plan == c_plan
                else:
                    c_ids, c_scores = brute_force(cpu, q, k, allowed)
                np.testing.assert_array_equal(g_ids, c_ids)  # ties ranked by node id on both paths
                np.testing.assert_array_equal(g_scores, c_scores)
    assert plans == {"flat-filtered", "empty", "flat" if kind == "flat" else "hnsw"}


@requires_gpu
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_gpu_index_matches_cpu_index_on_real_valued_data(metric):
    rng = np.random.default_rng(2)
    basis = rng.normal(size=(8, DIM))
    rows = (rng.normal(size=(5000, 8)) @ basis + 0.1 * rng.normal(size=(5000, DIM))).astype(np.float32)
    cpu, gpu = twin_indexes(metric, "flat", rows)
    for allowed in (None, rng.random(5000) < 0.3):
        for q in rng.normal(size=(20, DIM)):
            c_ids, c_scores, _ = cpu.search(q, 10, allowed)
            g_ids, g_scores, _ = gpu.search(q, 10, allowed)
            np.testing.assert_allclose(g_scores, c_scores, rtol=1e-5, atol=1e-4)
            assert (g_ids == c_ids).mean() >= 0.9  # ids may swap only where scores are within rounding
            assert set(g_ids) ^ set(c_ids) <= set(np.concatenate([g_ids[-2:], c_ids[-2:]]))


@requires_gpu
def test_gpu_copy_follows_appends_deletes_and_compaction():
    rng = np.random.default_rng(3)
    rows = integer_rows(rng, 3000)
    cpu, gpu = twin_indexes("ip", "flat", rows)
    q = rng.integers(-2, 3, size=DIM).astype(np.float32)
    for step in range(4):
        more = integer_rows(rng, 500)
        ids = np.arange(10_000 + 500 * step, 10_500 + 500 * step, dtype=np.int64)
        for index in (cpu, gpu):
            index.upsert(ids, more)
            index.remove(ids[::3])
        if step == 2:
            cpu.compact()
            gpu.compact()
        for allowed in (None, rng.random(13_000) < 0.2):
            c_ids, c_scores, _ = cpu.search(q, 50, allowed)
            g_ids, g_scores, _ = gpu.search(q, 50, allowed)
            np.testing.assert_array_equal(g_ids, c_ids)
            np.testing.assert_array_equal(g_scores, c_scores)
    assert gpu._device is not None and gpu._device.rows == gpu.rows and gpu._device.generation == gpu.generation


@requires_gpu
def test_index_beyond_the_gpu_memory_share_moves_to_the_cpu(caplog):
    rng = np.random.default_rng(4)
    rows = integer_rows(rng, 2000)
    cpu, gpu = twin_indexes("l2", "flat", rows, gpu_memory_fraction_max=1e-9)
    q = rows[5]
    with caplog.at_level(logging.WARNING, logger="knowledge.index.vectors"):
        g_ids, _, _ = gpu.search(q, 10, None)
    assert "exceeds" in caplog.text and not gpu.use_gpu
    np.testing.assert_array_equal(g_ids, cpu.search(q, 10, None)[0])


@requires_gpu
def test_store_searches_on_the_gpu_as_on_the_cpu(tmp_path):
    rng = np.random.default_rng(5)
    rows = integer_rows(rng, 3000)
    stores = []
    for device in ("cpu", "gpu"):
        store = knowledge.open(str(tmp_path / device),
                               config=knowledge.StoreConfig(vectors=VectorConfig(device=device)))
        store.define_node_type("Doc", key="id", properties={"emb": {"type": f"vector[{DIM}]", "metric": "ip"},
                                                            "group": "int"})
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": f"d{i:05d}", "emb": v, "group": i % 10,
                                     "_labels": ["even" if i % 2 == 0 else "odd"]} for i, v in enumerate(rows)])
            tx.delete_nodes("Doc", [f"d{i:05d}" for i in range(0, 3000, 11)])
        stores.append(store)
    assert stores[1].stats()["vector_indexes"]["Doc.emb"]["device"] == "gpu"
    reader = Principal("r", read=frozenset({"even"}))
    for q in rng.integers(-2, 3, size=(10, DIM)).astype(np.float32):
        for principal, where in ((None, None), (reader, None), (None, {"group": 3}), (reader, {"group": ("<", 5)})):
            results = [s.session(principal).search(q, k=20, where=where, columns=["group"]) for s in stores]
            assert results[0].equals(results[1])
    for store in stores:
        store.close()


def test_gpu_memory_share_must_be_a_fraction():
    for bad in (0, -0.5, 1.5):
        with pytest.raises(InvalidArgument, match="gpu_memory_fraction_max"):
            VectorConfig(gpu_memory_fraction_max=bad)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_cpu_flat_search_ranks_ties_at_the_kth_by_node_id(metric):
    """faiss returns k rows and picks among rows tied with the k-th by row order; the index widens the
    search until the tie is settled, so the answer is the lowest node ids, as brute force gives."""
    rng = np.random.default_rng(6)
    rows = integer_rows(rng, 4000)
    index = VectorIndex(DIM, metric, VectorConfig(device="cpu", kind="flat"))
    ids = rng.permutation(4000).astype(np.int64)
    index.upsert(ids, rows)
    for q in rng.integers(-2, 3, size=(30, DIM)).astype(np.float32):
        scores = rows @ q if metric == "ip" else ((rows - q) ** 2).sum(1)
        order = np.lexsort((ids, -scores if metric == "ip" else scores))
        for k in (1, 10, 50):
            got, got_scores, plan = index.search(q, k, None)
            assert plan == "flat"
            np.testing.assert_array_equal(got, ids[order[:k]])
            np.testing.assert_array_equal(got_scores, scores[order[:k]])


def test_auto_device_scans_small_indexes_on_the_cpu():
    """With device="auto" an index below gpu_rows_min never touches the GPU (its fixed cost per search is
    more than a CPU scan of that many rows), even where a GPU is usable; device="gpu" would use it."""
    index = VectorIndex(DIM, "ip", VectorConfig(device="auto", gpu_rows_min=1000))
    index.use_gpu = True  # as on a machine with a usable GPU
    rows = integer_rows(np.random.default_rng(7), 999)
    index.upsert(np.arange(999, dtype=np.int64), rows)
    assert not index._on_device() and index._device is None and index.scan_device == "cpu"
    ids, scores, plan = index.search(rows[3], 5, None)
    assert plan == "flat"
    expected = brute_force(index, rows[3], 5, None)
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_array_equal(scores, expected[1])
    with pytest.raises(InvalidArgument, match="gpu_rows_min"):
        VectorConfig(gpu_rows_min=-1)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize(("fraction", "plan"), [(0.005, "gather"), (0.05, "flat-filtered"), (0.3, "flat-filtered"),
                                                (0.8, "flat-filtered")])
def test_cpu_filtered_search_is_exact_with_ties_by_node_id(metric, fraction, plan):
    """Every exact filtered plan (gather, selector scan in place, widened full scan) gives brute force's
    answer on data full of exact ties, with tombstones present."""
    rng = np.random.default_rng(8)
    rows = integer_rows(rng, 4000)
    index = VectorIndex(DIM, metric, VectorConfig(device="cpu", kind="flat"))
    ids = np.random.default_rng(1).permutation(len(rows)).astype(np.int64)
    index.upsert(ids, rows)
    index.remove(ids[::7])
    allowed = rng.random(4000) < fraction
    for q in rng.integers(-2, 3, size=(20, DIM)).astype(np.float32):
        for k in (1, 10, 40):
            got, scores, got_plan = index.search(q, k, allowed)
            assert got_plan == plan
            expected = brute_force(index, q, k, allowed)
            np.testing.assert_array_equal(got, expected[0])
            np.testing.assert_array_equal(scores, expected[1])
