"""Filtered search on the clustered synthetic set: where-filter and principal-filter searches at
100/10/1/0.1% selectivity (p50/p99, recall@k against exact numpy) against faiss flat + IDSelector in
the same run, and the time to build a where-filter's mask from the in-memory column indexes against
the DuckDB table query it replaces (same rows, same run).

    python -m bench.filtered [--rows 100000] [--queries 100] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import faiss
import numpy as np

import knowledge
from bench.common import machine, percentile, publish
from bench.datasets import SELECTIVITIES, clustered, label, selectivity_columns, where

K = 10


def timed_us(function: Any, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        function()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def build(directory: str, data: Any, labels: list[list[str]], bucket: np.ndarray) -> knowledge.Store:
    store = knowledge.open(directory)
    store.define_node_type("Doc", key="n", properties={"n": "int", "bucket": "int", "kind": "str",
                                                      "v": {"type": f"vector[{data.dimension}]", "metric": "cosine"}})
    step = 5000
    for start in range(0, len(data.base), step):
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"n": i, "bucket": int(bucket[i]), "kind": f"k{bucket[i] % 8}",
                                     "v": data.base[i], "_labels": labels[i]}
                                    for i in range(start, min(start + step, len(data.base)))])
    for i, s in enumerate(SELECTIVITIES):
        store.create_principal(f"p{i}", read=[label(s)])
    return store


def masks(store: knowledge.Store, repeats: int) -> dict[str, Any]:
    """Median µs to build each selectivity's where mask: memory (uncached) vs DuckDB, and the cached lookup."""
    from knowledge.session_where import parse_where  # internal: the benchmark times the two mask paths

    session, size = store.session(), store.directory.capacity
    columns = store.engine.columns["Doc"]
    out: dict[str, Any] = {}
    for s in SELECTIVITIES:
        predicate = parse_where(store.schema.nodes["Doc"], where(s), session.principal)
        with store.state_lock:
            memory = statistics.median(timed_us(lambda p=predicate: columns.mask(p, size), repeats))
            cached = statistics.median(timed_us(lambda p=predicate: session._memory_mask("Doc", p, size), repeats))
        duck = statistics.median(timed_us(lambda p=predicate: session._duckdb_mask("Doc", p, size), max(5, repeats // 10)))
        assert np.array_equal(columns.mask(predicate, size), session._duckdb_mask("Doc", predicate, size))
        out[label(s)] = {"memory_us": memory, "cached_us": cached, "duckdb_us": duck, "ratio": duck / memory}
    return out


def searches(store: knowledge.Store, data: Any, allowed: dict[float, np.ndarray]) -> dict[str, Any]:
    flat = faiss.IndexFlatIP(data.dimension)
    flat.add(data.base)
    # faiss ids and the store's keys are both row numbers
    out: dict[str, Any] = {}
    admin = store.session()
    for number, s in enumerate(SELECTIVITIES):
        rows = np.flatnonzero(allowed[s])
        selector = faiss.IDSelectorBatch(rows.astype(np.int64))
        params = faiss.SearchParameters(sel=selector)
        exact = []
        for q in data.queries:
            scores = data.base[rows] @ q
            exact.append(set(rows[np.argsort(-scores)[:K]].tolist()))
        kinds: dict[str, Any] = {
            "where": lambda q, s=s: admin.search(q, k=K, type="Doc", where=where(s)),
            "principal": lambda q, number=number: store.session(f"p{number}").search(q, k=K, type="Doc"),
        }
        entry: dict[str, Any] = {}
        for name, call in kinds.items():
            times, recall = [], []
            for i, q in enumerate(data.queries):
                start = time.perf_counter()
                table = call(q)
                times.append((time.perf_counter() - start) * 1e6)
                got = set(table.column("_key").to_pylist())
                recall.append(len(got & exact[i]) / max(1, len(exact[i])))
            entry[name] = {"p50_us": statistics.median(times), "p99_us": percentile(times, 0.99),
                           "recall": float(np.mean(recall)),
                           "filter": (table.schema.metadata or {}).get(b"filter", b"").decode()}
        times, recall = [], []
        for i, q in enumerate(data.queries):
            start = time.perf_counter()
            _, found = flat.search(q[None, :], K, params=params)
            times.append((time.perf_counter() - start) * 1e6)
            recall.append(len(set(found[0].tolist()) & exact[i]) / max(1, len(exact[i])))
        entry["faiss_flat_idselector"] = {"p50_us": statistics.median(times), "p99_us": percentile(times, 0.99),
                                          "recall": float(np.mean(recall))}
        out[label(s)] = entry
    return out


def render(results: dict[str, Any]) -> str:
    lines = [f"{results['rows']:,} rows × {results['dimension']} ({results['dataset']}), {results['queries']} "
             f"queries one at a time, k={K}; load average {results['load_before']:.1f} before, "
             f"{results['load_after']:.1f} after, on {results['machine']['cpus']} CPUs: absolute times are "
             f"inflated, compare the same-run ratios.", "",
             "Where-filter mask build (`bucket < n`), median µs: in-memory column index (uncached) vs the DuckDB "
             "`SELECT _id ... WHERE` it replaces, and a repeated predicate at one LSN (cached):", "",
             "| selectivity | memory µs | cached µs | DuckDB µs | DuckDB / memory |", "|---|---|---|---|---|"]
    for name, m in results["masks"].items():
        lines.append(f"| {name} | {m['memory_us']:.1f} | {m['cached_us']:.1f} | {m['duckdb_us']:.0f} | "
                     f"{m['ratio']:.0f}x |")
    lines += ["", "Filtered search p50 / p99 µs (recall@10 vs exact numpy); `filter` = the path the result "
              "metadata names:", "",
              "| selectivity | where p50 / p99 (recall, filter) | principal p50 / p99 (recall) | "
              "faiss flat+IDSelector p50 / p99 (recall) | where / faiss p50 |", "|---|---|---|---|---|"]
    for name, e in results["searches"].items():
        w, p, f = e["where"], e["principal"], e["faiss_flat_idselector"]
        lines.append(f"| {name} | {w['p50_us']:.0f} / {w['p99_us']:.0f} ({w['recall']:.3f}, {w['filter']}) | "
                     f"{p['p50_us']:.0f} / {p['p99_us']:.0f} ({p['recall']:.3f}) | {f['p50_us']:.0f} / "
                     f"{f['p99_us']:.0f} ({f['recall']:.3f}) | {w['p50_us'] / f['p50_us']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--mask-repeats", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print only; write neither the JSON nor RESULTS.md")
    args = parser.parse_args()
    data = clustered(args.rows, args.queries, args.dimension)
    labels, bucket, allowed = selectivity_columns(args.rows)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        store = build(directory, data, labels, bucket)
        try:
            results = {"rows": args.rows, "dimension": args.dimension, "queries": args.queries,
                       "dataset": data.name, "machine": machine(), "load_before": load_before,
                       "masks": masks(store, args.mask_repeats), "searches": searches(store, data, allowed)}
        finally:
            store.close()
    results["load_after"] = os.getloadavg()[0]
    publish("filtered", "Filtered search and where-filter masks (issue 15)", results, render(results),
            not args.no_write)


if __name__ == "__main__":
    main()
