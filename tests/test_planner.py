"""The measured planner: on a set where each plan (exact gather, exact masked scan, HNSW) is the fastest at
some share of allowed rows, by a wide margin, the plan it picks runs within 1.2x of the fastest plan
meeting the recall target.

The set makes each plan's regime plain: rows of 384 dimensions (so copying a filter's rows out costs more
than scanning them in place once they are more than a few percent) on a manifold of 12 dimensions (so
HNSW reaches the target at a small efSearch, while a filtered walk needs one growing as the share
shrinks). HNSW is then fastest at 100% and 50%, the masked scan at 20% and 5%, the gather at 1% and 0.1%;
at 100, 50, 20 and 0.1% by 2.4-3x over the runner-up (measured at load 8 on 2 CPUs: HNSW 309 vs scan
895 µs, 360 vs 1068, scan 348 vs gather 955, gather 17 vs scan 41; the test prints its figures), so
the machine's load does not reorder them.

Every plan is forced at each share and timed here, in rounds taken in turn (medians, so a noisy stretch of
the shared machine slows all plans alike); a share whose comparison fails is measured again before the
test fails. A plan meets the target when its recall@10 on fresh queries reaches TARGET (0.99); the index is
calibrated to CALIBRATED_TARGET (0.999), since on this set the calibration's queries made from stored rows
find HNSW easier than fresh queries do (at 0.99 it picks an efSearch reaching 0.975 on fresh queries; how
well the calibration predicts fresh recall is tests/test_calibration.py's subject, not this one's); when the measurements keep disagreeing with the choice, the index is calibrated once
more (its timings may come from a noisy stretch) before the test fails. Through the store, the admin's
result metadata names the plan taken."""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest

import knowledge
from knowledge.config import VectorConfig
from knowledge.errors import InvalidArgument
from knowledge.index.vector_jobs import CalibrateJob, hnsw_job
from knowledge.index.vectors import VectorIndex

DIM = 384
LATENT = 12  # the manifold's dimension
K = 10
ROWS = 20_000
SHARES = (1.0, 0.5, 0.2, 0.05, 0.01, 0.001)
PLANS = ("gather", "scan", "hnsw")
NAMES = {"gather": "gather", "scan": "flat-filtered", "hnsw": "hnsw-filtered"}
TOLERANCE = 1.2
SLACK_US = 40.0  # timer and scheduling noise of one search on a loaded machine
TARGET = 0.99  # recall@10 on the test's fresh queries that a plan must reach
CALIBRATED_TARGET = 0.999  # the index's recall_target (see the module)
ROUNDS, QUERIES, ATTEMPTS = 5, 16, 3


def mixture(rows: int, queries: int, seed: int = 1, clusters: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of DIM components on a LATENT-dimensional manifold: Gaussian clusters of skewed sizes
    in the latent space, a fixed random linear map up, a little noise; queries are fresh draws."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, LATENT)) * 2.0
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.1
    member = rng.choice(clusters, size=rows + queries, p=weights / weights.sum())
    latent = centres[member] + rng.normal(size=(rows + queries, LATENT))
    data = latent @ rng.normal(size=(LATENT, DIM)) + 0.1 * rng.normal(size=(rows + queries, DIM))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    return np.ascontiguousarray(data[:rows]), np.ascontiguousarray(data[rows:])


@pytest.fixture(scope="module")
def index_and_queries() -> tuple[VectorIndex, np.ndarray]:
    rows, queries = mixture(ROWS, QUERIES * 4)
    index = VectorIndex(DIM, "cosine", VectorConfig(kind="hnsw", device="cpu", hnsw_m=16, ef_construction=64,
                                                    recall_target=CALIBRATED_TARGET))
    index.upsert(np.arange(ROWS), rows)
    while (job := hnsw_job(index)) is not None:  # the graph, calibrated by its build or then on its own
        assert job.install(job.run(threading.Event()))
    assert index.calibrated()
    return index, queries


def measure(index: VectorIndex, queries: np.ndarray, allowed: np.ndarray | None) -> dict[str, tuple[float, float]]:
    """{plan: (median µs, recall@K)} of each plan forced, over ROWS rounds of QUERIES fresh queries in turn."""
    matrix = index.matrix[:index.rows]
    truth = []
    for q in queries:
        scores = matrix @ q if allowed is None else np.where(allowed, matrix @ q, -np.inf)
        truth.append(set(np.argsort(-scores)[:K].tolist()))
    times: dict[str, list[float]] = {plan: [] for plan in PLANS}
    hits = dict.fromkeys(PLANS, 0)
    prepared = [index.query_vector(q) for q in queries]
    for round_number in range(ROUNDS):
        for plan in PLANS:
            for i, q in enumerate(prepared[round_number % 2::2][:QUERIES]):
                start = time.perf_counter()
                found, _, _ = index.search_prepared(q, K, allowed, plan)
                times[plan].append((time.perf_counter() - start) * 1e6)
                if round_number < 2:
                    hits[plan] += len(truth[2 * i + round_number % 2] & set(found.tolist()))
    return {plan: (statistics.median(times[plan]), hits[plan] / (2 * QUERIES * K)) for plan in PLANS}


def test_planner_picks_within_tolerance_of_the_fastest_plan_meeting_the_target(index_and_queries):
    index, queries = index_and_queries
    target = TARGET
    rng = np.random.default_rng(4)
    draw = rng.random(ROWS)
    fastest_somewhere: set[str] = set()
    report = []
    for share in SHARES:
        allowed = None if share == 1.0 else draw < share
        selected = ROWS if allowed is None else int(allowed.sum())
        for attempt in range(2 * ATTEMPTS):
            if attempt == ATTEMPTS:  # the calibration itself may have been timed in a noisy stretch: redo it
                job = CalibrateJob(index, index.hnsw, index.matrix, index.live[:index.hnsw_rows].copy())
                assert job.install(job.run(threading.Event()))
            chosen, _ = index.choose_plan(selected, K)
            measured = measure(index, queries, allowed)
            qualified = {plan: us for plan, (us, recall) in measured.items() if recall >= target}
            assert qualified, f"no plan met the recall target at share {share}: {measured}"
            best = min(qualified, key=qualified.get)
            ok = chosen in qualified and qualified[chosen] <= TOLERANCE * qualified[best] + SLACK_US
            if ok:
                break
        report.append((share, chosen, best, measured))
        assert ok, f"share {share}: planner chose {chosen}, fastest meeting the target {best}: {measured} " \
                   f"(estimates {index.plan_costs(selected, K)})"
        fastest_somewhere.add(best)
    print(*report, sep="\n")
    assert fastest_somewhere == set(PLANS), f"not every plan is fastest somewhere on this set: {report}"


def test_forced_plans_name_themselves_and_are_exact_where_exact(index_and_queries):
    index, queries = index_and_queries
    allowed = np.random.default_rng(9).random(ROWS) < 0.05
    q = queries[0]
    ids = {}
    for plan in PLANS:
        found, _, name = index.search(q, K, allowed, plan)
        assert name == NAMES[plan]
        ids[plan] = found.tolist()
    assert ids["gather"] == ids["scan"]  # both exact
    with pytest.raises(InvalidArgument, match="plan must be"):
        index.search(q, K, allowed, "bogus")


def test_a_repeated_filter_is_scanned_as_its_block_exactly(index_and_queries):
    index, queries = index_and_queries
    allowed = np.random.default_rng(11).random(ROWS) < 0.05
    allowed.flags.writeable = False  # a read-only bitmap (as the store's masks are): its rows may be kept
    q = queries[1]
    first = index.search(q, K, allowed, "gather")
    assert first[2] == "gather"  # the first search of a filter gathers; the second copies its rows out
    again = index.search(q, K, allowed, "gather")
    assert again[2] == "gather-cached"
    assert again[0].tolist() == first[0].tolist() == index.search(q, K, allowed, "scan")[0].tolist()


def test_store_search_takes_the_measured_plan(tmp_path):
    rows, queries = mixture(12_000, 4, seed=2)
    config = knowledge.StoreConfig(vectors=VectorConfig(kind="hnsw", hnsw_m=16, ef_construction=64))
    with knowledge.open(str(tmp_path / "s"), config=config) as store:
        store.define_node_type("Doc", key="n", properties={"n": "int", "b": "int",
                                                          "v": {"type": f"vector[{DIM}]"}})
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"n": i, "b": i % 1000, "v": rows[i]} for i in range(len(rows))])
        assert store.build_indexes(timeout_s=300)
        index = store.vectors[("Doc", "v")]
        assert index.calibrated()
        session = store.session()
        for where, selected in ((None, len(rows)), ({"b": ("<", 2)}, 24), ({"b": ("<", 300)}, 3600)):
            table = session.search(queries[0], k=K, where=where)
            expected = NAMES[index.choose_plan(selected, K)[0]]
            if where is None and expected == "hnsw-filtered":
                expected = "hnsw"
            if where is None and expected == "flat-filtered":
                expected = "flat"
            assert table.schema.metadata[b"plan"].decode() == expected
        # the same filter again at the same LSN: its rows are copied out once and scanned as one block
        session.search(queries[1], k=K, where={"b": ("<", 200)})
        again = session.search(queries[1], k=K, where={"b": ("<", 200)})
        # which plan is cheapest once the copy is made is this machine's measurement (block on most, HNSW
        # on some): the store must take the one the planner names, and an exact one must be exact
        chosen = index.choose_plan(2400, K, block=True)[0]
        cached = "gather-cached" if chosen in ("block", "gather") else NAMES[chosen]
        assert again.schema.metadata[b"plan"].decode() == cached
        if cached != "hnsw-filtered":
            keys = np.flatnonzero(np.arange(len(rows)) % 1000 < 200)
            truth = keys[np.argsort(-(rows[keys] @ (queries[1] / np.linalg.norm(queries[1]))))[:K]]
            assert again.column("_key").to_pylist() == truth.tolist()
