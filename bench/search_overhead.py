"""bench/search_overhead: where a small vector search's time goes beyond faiss's scan.

    python bench/search_overhead.py [--queries 300] [--passes 5] [--no-write]

On the real MiniLM set of bench/vectors.py (8.4k x 384, flat; build the cache first with
python bench/embed_cache.py), each query runs the steps of `Session.search` one after another, each
timed with perf_counter_ns: under the store's lock, resolving the target, checking and normalising the
query, the visibility bitmap and planning the index search; then faiss's scan (outside the lock); then,
under the lock again, the key lookup, the Arrow table and the audit hook. Then, after one more faiss scan of the same rows, the same Arrow table is built twice: the
first build finds caches that the 13 MB scan has just flushed ("cold"), the second finds them warm.
Medians over all queries of all passes but the first. Results: bench/results/search_overhead.json and a
section of bench/RESULTS.md (--no-write: printed only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, publish  # noqa: E402
from vectors import K, build_store, labels_for, real  # noqa: E402

from knowledge import Principal  # noqa: E402
from knowledge.session_search import _ranked_table  # noqa: E402

STEPS = ("lock", "target", "query_vector", "visible", "plan", "scan", "lock again", "keys", "Arrow table",
         "audit")


def stages(store, session, queries: np.ndarray, passes: int) -> tuple[dict[str, list[int]], list[int]]:
    """Per-step nanoseconds of Session.search's steps, and faiss.knn alone over the same rows, per query."""
    index = store.vectors[("Doc", "emb")]
    rows = index.matrix[:index.rows]
    spent: dict[str, list[int]] = {step: [] for step in STEPS}
    scan: list[int] = []
    clock = time.perf_counter_ns
    state = store.state_lock
    for number in range(passes):
        for query in queries:
            marks = [clock()]
            with state:
                marks.append(clock())
                type_name, index, key_type = session._search_target(None, None)
                marks.append(clock())
                prepared = index.query_vector(query)
                marks.append(clock())
                allowed = session.visible()
                marks.append(clock())
                job = index.plan_search(prepared, K, allowed)
                marks.append(clock())
            ids, scores, plan = job()
            marks.append(clock())
            with state:
                marks.append(clock())
                keys = store.directory.key_of[ids].tolist()
                marks.append(clock())
                _ranked_table(ids, keys, scores, key_type, plan)
                marks.append(clock())
                session._audit("search", ids)
                marks.append(clock())
            started = clock()
            faiss.knn(query[None, :], rows, K, metric=faiss.METRIC_INNER_PRODUCT)
            ended = clock()
            if number:  # the first pass warms up
                for step, begin, end in zip(STEPS, marks[:-1], marks[1:], strict=True):
                    spent[step].append(end - begin)
                scan.append(ended - started)
    return spent, scan


def table_cold_warm(store, queries: np.ndarray, passes: int) -> tuple[list[int], list[int]]:
    """Nanoseconds to build one search's Arrow table right after a faiss scan of the rows, and again."""
    index = store.vectors[("Doc", "emb")]
    rows = index.matrix[:index.rows]
    cold: list[int] = []
    warm: list[int] = []
    clock = time.perf_counter_ns
    for number in range(passes):
        for query in queries:
            scores, found = faiss.knn(query[None, :], rows, K, metric=faiss.METRIC_INNER_PRODUCT)
            ids = index.row_ids[found[0]]
            keys = store.directory.key_of[ids].tolist()
            values = scores[0]
            started = clock()
            _ranked_table(ids, keys, values, "str", "flat")
            middle = clock()
            _ranked_table(ids, keys, values, "str", "flat")
            ended = clock()
            if number:
                cold.append(middle - started)
                warm.append(ended - middle)
    return cold, warm


def render(results: dict) -> str:
    lines = [f"Command: `{results['command']}` ({results['machine']['cpus']} CPUs); real set, "
             f"{results['rows']:,} x {results['dimension']}, flat, k={K}; medians over "
             f"{results['samples']:,} searches.", "",
             "| step of Session.search | median us |", "|---|---|"]
    for step in STEPS:
        lines.append(f"| {step} | {results['steps_us'][step]:.1f} |")
    outside = sum(v for step, v in results["steps_us"].items() if step != "scan")
    lines += [f"| all but the scan | {outside:.1f} |",
              f"| faiss.knn alone over the same rows (for scale) | {results['faiss_knn_us']:.1f} |", "",
              f"Building one search's Arrow table right after a faiss scan of the rows: "
              f"{results['table_cold_us']:.1f} us; the same build again at once: {results['table_warm_us']:.1f} us "
              f"({results['table_cold_us'] / results['table_warm_us']:.1f}x). The scan flushes the caches that "
              f"pyarrow's code and data sat in, so a small search pays for its result mostly in cache misses."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; write neither the JSON nor RESULTS.md")
    args = parser.parse_args()
    if args.queries < 1 or args.passes < 2:
        parser.error("--queries must be at least 1 and --passes at least 2 (the first pass warms up)")
    base, queries = real()
    queries = queries[:args.queries]
    labels, _ = labels_for(len(base))
    directory = tempfile.mkdtemp(prefix="kbench-overhead-")
    try:
        store = build_store(os.path.join(directory, "s"), base, labels, "flat")
        session = store.session(Principal("bench", read=frozenset({"s1.0"})))
        spent, scan = stages(store, session, queries, args.passes)
        cold, warm = table_cold_warm(store, queries, args.passes)
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    results = {"command": " ".join(["python", "bench/search_overhead.py", *sys.argv[1:]]), "machine": machine(),
               "rows": len(base), "dimension": base.shape[1], "samples": len(scan),
               "steps_us": {step: statistics.median(spent[step]) / 1000 for step in STEPS},
               "faiss_knn_us": statistics.median(scan) / 1000,
               "table_cold_us": statistics.median(cold) / 1000, "table_warm_us": statistics.median(warm) / 1000}
    publish("search_overhead", "Search overhead (bench/search_overhead.py)", results, render(results),
            not args.no_write)


if __name__ == "__main__":
    main()
