"""bench/concurrent_search: vector search throughput from 1 and 2 threads, ours vs raw faiss.

    python bench/concurrent_search.py [--queries 300] [--runs 5] [--no-write]

On the real MiniLM set of bench/vectors.py (8.4k x 384, flat; build the cache first with
python bench/embed_cache.py), each thread runs the same queries one at a time through its own session
(`session.search(q, k=10)`, and with `where={"group": 3}`, a document column that 10% of rows match),
or through faiss.knn over the store's own rows (faiss releases the GIL while
it scans; OpenMP held to one thread so a single query's scan stays on one core). Median QPS of `--runs`
runs per thread count; "scaling" is 2-thread QPS over 1-thread QPS in the same run of the script.
A search holds the store's state lock while it plans and while it builds its answer, not during faiss's
scan, so the store's scaling shows how much of a search runs outside the lock (before session 4 it held
the lock throughout: 0.94x from 2 threads). Results: bench/results/concurrent_search.json and a section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import faiss
import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, publish  # noqa: E402
from vectors import K, labels_for, real  # noqa: E402

import knowledge  # noqa: E402
from knowledge import Principal  # noqa: E402
from knowledge.config import VectorConfig  # noqa: E402

THREADS = (1, 2)


def throughput(searchers: list[Callable[[np.ndarray], object]], queries: np.ndarray) -> float:
    """Queries per second with one thread per searcher, each running every query once, started together."""
    start = threading.Barrier(len(searchers) + 1)

    def work(search: Callable[[np.ndarray], object]) -> None:
        start.wait()
        for query in queries:
            search(query)

    threads = [threading.Thread(target=work, args=(search,)) for search in searchers]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return len(searchers) * len(queries) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; write neither the JSON nor RESULTS.md")
    args = parser.parse_args()
    if args.queries < 1 or args.runs < 1:
        parser.error("--queries and --runs must be at least 1")
    faiss.omp_set_num_threads(1)
    base, queries = real()
    queries = queries[:args.queries]
    labels, _ = labels_for(len(base))
    directory = tempfile.mkdtemp(prefix="kbench-concurrent-")
    measured: dict[str, dict[int, float]] = {}
    try:
        store = knowledge.open(os.path.join(directory, "s"),
                               config=knowledge.StoreConfig(vectors=VectorConfig(kind="flat")))
        store.define_node_type("Doc", key="id", properties={  # "group": a document column, 10% of rows a value
            "emb": {"type": f"vector[{base.shape[1]}]", "metric": "cosine"}, "group": "int"})
        store.session().transaction().upsert_nodes("Doc", pa.table({
            "id": [f"d{i}" for i in range(len(base))], "group": np.arange(len(base)) % 10,
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), base.shape[1]),
            "_labels": pa.array(labels, type=pa.list_(pa.string()))})).commit()
        store.checkpoint()
        index = store.vectors[("Doc", "emb")]
        rows = index.matrix[:index.rows]

        def ours() -> Callable[[np.ndarray], object]:
            session = store.session(Principal("bench", read=frozenset({"s1.0"})))
            return lambda q: session.search(q, k=K)

        def ours_filtered() -> Callable[[np.ndarray], object]:
            session = store.session(Principal("bench", read=frozenset({"s1.0"})))
            return lambda q: session.search(q, k=K, where={"group": 3})

        def raw() -> Callable[[np.ndarray], object]:
            return lambda q: faiss.knn(q[None, :], rows, K, metric=faiss.METRIC_INNER_PRODUCT)

        makers = {"session.search": ours, "session.search, where= (10% of rows)": ours_filtered,
                  "faiss.knn on the store's rows": raw}
        samples: dict[str, dict[int, list[float]]] = {name: {t: [] for t in THREADS} for name in makers}
        for _ in range(args.runs):  # runs alternate between the searchers and thread counts
            for name, make in makers.items():
                for count in THREADS:
                    samples[name][count].append(throughput([make() for _ in range(count)], queries))
        measured = {name: {count: statistics.median(values) for count, values in by.items()}
                    for name, by in samples.items()}
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    results = {"command": " ".join(["python", "bench/concurrent_search.py", *sys.argv[1:]]), "machine": machine(),
               "rows": len(base), "queries": len(queries), "runs": args.runs,
               "qps": {name: {str(count): qps for count, qps in by.items()} for name, by in measured.items()}}
    lines = [f"Command: `{results['command']}` ({results['machine']['cpus']} CPUs); real set, {len(base):,} x "
             f"{base.shape[1]}, flat, k={K}, {len(queries)} queries per thread; median of {args.runs} runs.", "",
             "| searcher | 1 thread QPS | 2 threads QPS | scaling |", "|---|---|---|---|"]
    for name, by in measured.items():
        lines.append(f"| {name} | {by[1]:,.0f} | {by[2]:,.0f} | {by[2] / by[1]:.2f}x |")
    publish("concurrent_search", "Concurrent searches (bench/concurrent_search.py)", results, "\n".join(lines),
            not args.no_write)


if __name__ == "__main__":
    main()
