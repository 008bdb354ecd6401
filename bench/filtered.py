"""Filtered search on the clustered synthetic set: where-filter and principal-filter searches at
100/10/1/0.1% selectivity (p50/p99, recall@k against exact numpy, the plan the store took) against, in the
same run on the same rows: faiss flat + IDSelector (exact), faiss HNSW + IDSelectorBitmap (its own build,
the store's M and efConstruction, efSearch 64 and 256), hnswlib (same M/efConstruction, ef 64 and 256,
filter callback) and numpy brute force; the time to build a where-filter's mask from the in-memory column
indexes against the DuckDB table query it replaces; the HNSW build time, store vs faiss's own build of
the same index (and the store's calibration after it).

Queries: 2 x --queries fresh draws from the mixture; --half tune takes the first half (used while tuning
the calibration), --half report (the default) the second, which nothing was tuned on. With --runs N every
method runs N passes in turn; p50/p99 and ratios are medians over passes (a ratio per pass, paired).

    python -m bench.filtered [--rows 100000] [--queries 100] [--runs 3] [--half report] [--no-write]
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
from knowledge.config import VectorConfig

K = 10
PEER_QUERIES = 50  # queries for the slow methods (hnswlib with a Python filter callback, numpy)
HALF_NOTE = {"tune": "the queries the calibration was tuned on", "report": "queries nothing was tuned on"}


def timed_us(function: Any, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        function()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def build(directory: str, data: Any, labels: list[list[str]], bucket: np.ndarray,
          graph: dict[str, int]) -> tuple[knowledge.Store, dict]:
    """The store with every row, its HNSW graph (`graph`: VectorConfig's hnsw_m and ef_construction when
    given) built and calibrated; (store, build figures in seconds)."""
    store = knowledge.open(directory, config=knowledge.StoreConfig(vectors=VectorConfig(kind="hnsw", **graph)))
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
    index = store.vectors[("Doc", "v")]
    store.wait_applied()
    started = time.perf_counter()
    assert store.build_indexes(wait=False)
    while index.hnsw is None or index.hnsw_rows < len(data.base):  # the graph is in: searches use it
        time.sleep(0.02)
    graph_s = time.perf_counter() - started
    assert store.build_indexes(timeout_s=3600)  # then its calibration (unless the build made it)
    cal = index.calibration
    if cal is not None and cal.held_out and cal.graph_rows == len(data.base):  # measured inside the build
        graph_s -= cal.seconds
    figures = {"graph_s": graph_s, "graph_and_calibration_s": time.perf_counter() - started,
               "calibration_s": cal.seconds if cal else None,
               "hnsw_m": index.config.hnsw_m, "ef_construction": index.config.ef_construction}
    return store, figures


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


def exact_answers(data: Any, queries: np.ndarray, rows: np.ndarray) -> list[set[int]]:
    scores = queries @ data.base[rows].T
    return [set(rows[np.argsort(-row)[:K]].tolist()) for row in scores]


def peers(data: Any, m: int, ef_construction: int) -> dict[str, Any]:
    """faiss HNSW (its own build of the store's index settings) and hnswlib, built on the same rows; the
    faiss flat index; build seconds."""
    import hnswlib

    out: dict[str, Any] = {}
    flat = faiss.IndexFlatIP(data.dimension)
    flat.add(data.base)
    out["flat"] = flat
    graph = faiss.IndexHNSWFlat(data.dimension, m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = ef_construction
    started = time.perf_counter()
    graph.add(data.base)
    out["faiss_hnsw_build_s"] = time.perf_counter() - started
    out["faiss_hnsw"] = graph
    lib = hnswlib.Index(space="ip", dim=data.dimension)
    lib.init_index(max_elements=len(data.base), ef_construction=ef_construction, M=m)
    started = time.perf_counter()
    lib.add_items(data.base, np.arange(len(data.base)))
    out["hnswlib_build_s"] = time.perf_counter() - started
    out["hnswlib"] = lib
    return out


def methods(store: knowledge.Store, data: Any, handles: dict[str, Any], number: int, s: float,
            mask: np.ndarray) -> dict[str, tuple[Any, bool]]:
    """name -> (function(q) giving (row ids found, plan or None), slow: run on the first PEER_QUERIES only)."""
    admin, principal = store.session(), store.session(f"p{number}")
    rows = np.flatnonzero(mask)
    batch = faiss.IDSelectorBatch(rows.astype(np.int64))
    flat_params = faiss.SearchParameters(sel=batch)
    bits = np.packbits(mask, bitorder="little")
    bitmap = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    allowed = len(rows)

    def ours(session: Any, where_filter: Any) -> Any:
        def run(q: np.ndarray) -> tuple[list[int], str]:
            table = session.search(q, k=K, type="Doc", where=where_filter)
            return table.column("_key").to_pylist(), (table.schema.metadata or {}).get(b"plan", b"").decode()
        return run

    index = store.vectors[("Doc", "v")]
    graph_ef = index.plan_costs(allowed, K).get("hnsw", (0, None))[1] if index.calibrated() else None

    def store_graph(q: np.ndarray) -> tuple[list[int], None]:  # faiss's own call on the store's graph
        params = faiss.SearchParametersHNSW()
        params.efSearch = graph_ef or 16
        if s < 1:
            params.sel = bitmap
        return index.hnsw.search(q[None, :], K, params=params)[1][0].tolist(), None  # rows are inserted in key order

    def faiss_hnsw(ef: int) -> Any:
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        if s < 1:
            params.sel = bitmap

        def run(q: np.ndarray) -> tuple[list[int], None]:
            return handles["faiss_hnsw"].search(q[None, :], K, params=params)[1][0].tolist(), None
        return run

    def hnswlib_search(ef: int) -> Any:
        keep = None if s >= 1 else (lambda i: bool(mask[i]))

        def run(q: np.ndarray) -> tuple[list[int], None]:
            handles["hnswlib"].set_ef(ef)
            try:  # hnswlib raises unless k rows qualify: ask for no more than exist
                found, _ = handles["hnswlib"].knn_query(q, k=min(K, allowed), filter=keep)
            except RuntimeError:
                return [], None
            return found[0].tolist(), None
        return run

    def numpy_brute(q: np.ndarray) -> tuple[list[int], None]:
        scores = data.base @ q
        scores[~mask] = -np.inf
        top = np.argpartition(-scores, K)[:K]
        return top[np.isfinite(scores[top])].tolist(), None

    return {"where": (ours(admin, where(s) if s < 1 else {"bucket": ("<", 10_000)}), False),
            "principal": (ours(principal, None), False),
            "faiss_flat_idselector": (lambda q: (handles["flat"].search(q[None, :], K, params=flat_params)[1][0]
                                                 .tolist(), None), False),
            **({"store_graph_faiss": (store_graph, False)} if graph_ef else {}),
            "faiss_hnsw_ef64": (faiss_hnsw(64), False), "faiss_hnsw_ef256": (faiss_hnsw(256), False),
            "hnswlib_ef64": (hnswlib_search(64), s < 1), "hnswlib_ef256": (hnswlib_search(256), s < 1),
            "numpy": (numpy_brute, True)}


def searches(store: knowledge.Store, data: Any, queries: np.ndarray, allowed: dict[float, np.ndarray],
             handles: dict[str, Any], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, s in enumerate(SELECTIVITIES):
        rows = np.flatnonzero(allowed[s])
        exact = exact_answers(data, queries, rows)
        calls = methods(store, data, handles, number, s, allowed[s])
        passes: dict[str, list[list[float]]] = {name: [] for name in calls}
        recall: dict[str, float] = {}
        plans: dict[str, set[str]] = {}
        for run in range(runs):
            for name, (call, slow) in calls.items():
                chosen = queries[:PEER_QUERIES] if slow else queries
                times, hits, seen = [], 0, set()
                for i, q in enumerate(chosen):
                    start = time.perf_counter()
                    found, plan = call(q)
                    times.append((time.perf_counter() - start) * 1e6)
                    hits += len(set(found) & exact[i])
                    if plan:
                        seen.add(plan)
                passes[name].append(times)
                if run == 0:
                    recall[name] = hits / sum(min(K, len(exact[i])) for i in range(len(chosen)))
                    plans[name] = seen
        entry: dict[str, Any] = {}
        for name, timed in passes.items():
            entry[name] = {"p50_us": statistics.median(statistics.median(t) for t in timed),
                           "p99_us": statistics.median(percentile(t, 0.99) for t in timed),
                           "recall": recall[name], "queries": len(timed[0])}
            if plans[name]:
                entry[name]["plans"] = sorted(plans[name])
        for name in ("where", "principal"):  # paired per pass: a noisy stretch slows both sides of a ratio
            entry[name]["over_faiss_flat"] = statistics.median(
                statistics.median(ours) / statistics.median(peer)
                for ours, peer in zip(passes[name], passes["faiss_flat_idselector"], strict=True))
        qualified = {name: e["p50_us"] for name, e in entry.items()
                     if name not in ("where", "principal", "store_graph_faiss") and e["recall"] >= 0.99}
        entry["fastest_peer"] = min(qualified, key=qualified.get) if qualified else None
        out[label(s)] = entry
    return out


def render(results: dict[str, Any]) -> str:
    b = results["build"]
    lines = [f"{results['rows']:,} rows × {results['dimension']} ({results['dataset']}), {results['queries']} "
             f"queries one at a time ({results['half']} half: {HALF_NOTE[results['half']]}), k={K}, "
             f"{results['runs']} passes (medians over passes; ratios paired per pass); load average "
             f"{results['load_before']:.1f} before, {results['load_after']:.1f} after, on "
             f"{results['machine']['cpus']} CPUs shared with other work: absolute times are inflated, compare "
             f"the same-run ratios.", "",
             f"HNSW build (M {b['hnsw_m']}, efConstruction {b['ef_construction']}): the store's graph in "
             f"{b['graph_s']:.1f} s vs faiss's own build of the same index {b['faiss_hnsw_build_s']:.1f} s "
             f"(**{b['graph_s'] / b['faiss_hnsw_build_s']:.2f}x**; hnswlib {b['hnswlib_build_s']:.1f} s); then "
             f"the store's calibration {b['calibration_s']:.1f} s (graph + calibration "
             f"{b['graph_and_calibration_s'] / b['faiss_hnsw_build_s']:.2f}x faiss's build). Calibration: "
             f"{results['calibration_summary']}.", "",
             "Where-filter mask build (`bucket < n`), median µs: in-memory column index (uncached) vs the DuckDB "
             "`SELECT _id ... WHERE` it replaces, and a repeated predicate at one LSN (cached):", "",
             "| selectivity | memory µs | cached µs | DuckDB µs | DuckDB / memory |", "|---|---|---|---|---|"]
    for name, m in results["masks"].items():
        lines.append(f"| {name} | {m['memory_us']:.1f} | {m['cached_us']:.1f} | {m['duckdb_us']:.0f} | "
                     f"{m['ratio']:.0f}x |")
    names = ["where", "principal", "store_graph_faiss", "faiss_flat_idselector", "faiss_hnsw_ef64", "faiss_hnsw_ef256", "hnswlib_ef64",
             "hnswlib_ef256", "numpy"]
    lines += ["", "Filtered search, p50 / p99 µs (recall@10 vs exact numpy); the store's plans in brackets; "
              "store_graph_faiss: faiss's own search of the store's graph at the efSearch the planner takes for "
              f"HNSW (where it has one); hnswlib with a filter and numpy on the first {PEER_QUERIES} queries:", "",
              "| selectivity | " + " | ".join(names) + " | where / faiss flat | principal / faiss flat |",
              "|---" * (len(names) + 3) + "|"]
    for name, e in results["searches"].items():
        cells = []
        for method in names:
            m = e.get(method)
            if m is None:
                cells.append("-")
                continue
            plan = f" [{','.join(m['plans'])}]" if m.get("plans") else ""
            cells.append(f"{m['p50_us']:.0f} / {m['p99_us']:.0f} ({m['recall']:.3f}){plan}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {e['where']['over_faiss_flat']:.2f}x | "
                     f"{e['principal']['over_faiss_flat']:.2f}x |")
    lines += ["", "Targets (issue 15):"] + targets(results)
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    out = []
    searches = results["searches"].values()
    worst = min(min(e["where"]["recall"], e["principal"]["recall"]) for e in searches)
    out.append(f"- recall@10 >= 0.99 at every selectivity, both filter kinds: worst {worst:.3f} "
               f"({'met' if worst >= 0.99 else 'missed'})")
    slowest = max(max(e["where"]["p50_us"], e["principal"]["p50_us"]) for e in searches)
    out.append(f"- p50 <= 1.5 ms everywhere: slowest {slowest / 1000:.2f} ms ({'met' if slowest <= 1500 else 'missed'}; "
               f"load {results['load_before']:.1f}-{results['load_after']:.1f})")
    for name, e in results["searches"].items():
        if e["fastest_peer"] == "faiss_flat_idselector":
            ratio = max(e["where"]["over_faiss_flat"], e["principal"]["over_faiss_flat"])
            out.append(f"- {name}: faiss flat+IDSelector is the fastest peer at recall >= 0.99; ours {ratio:.2f}x it "
                       f"({'met' if ratio <= 1.2 else 'missed'}, target <= 1.2x)")
        else:
            out.append(f"- {name}: fastest peer at recall >= 0.99: {e['fastest_peer']}")
    b = results["build"]
    ratio = b["graph_s"] / b["faiss_hnsw_build_s"]
    out.append(f"- HNSW build within 1.3x faiss's: {ratio:.2f}x ({'met' if ratio <= 1.3 else 'missed'})")
    return out


def calibration_summary(store: knowledge.Store) -> tuple[str, dict[str, Any] | None]:
    index = store.vectors[("Doc", "v")]
    cal = index.calibration
    if cal is None:
        return "none", None
    filtered = ", ".join(f"{p.fraction:g}: {p.ef_search or '-'}" for p in cal.filtered)
    return (f"unfiltered efSearch {cal.ef_search} (recall lower bound {cal.recall:.3f} on {cal.queries} "
            f"{'rows held out of the graph until it was measured' if cal.held_out else 'queries made from the index rows'}"
            f"), filtered efSearch by share {{{filtered}}}", cal.as_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--half", choices=("tune", "report"), default="report")
    parser.add_argument("--mask-repeats", type=int, default=200)
    parser.add_argument("--hnsw-m", type=int, help="VectorConfig.hnsw_m (default: the store's default)")
    parser.add_argument("--ef-construction", type=int, help="VectorConfig.ef_construction (default: the store's)")
    parser.add_argument("--no-write", action="store_true", help="print only; write neither the JSON nor RESULTS.md")
    args = parser.parse_args()
    data = clustered(args.rows, 2 * args.queries, args.dimension)
    queries = data.queries[:args.queries] if args.half == "tune" else data.queries[args.queries:]
    labels, bucket, allowed = selectivity_columns(args.rows)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        graph = {name: value for name, value in (("hnsw_m", args.hnsw_m), ("ef_construction", args.ef_construction))
                 if value is not None}
        store, built = build(directory, data, labels, bucket, graph)
        try:
            handles = peers(data, built["hnsw_m"], built["ef_construction"])
            built.update({k: v for k, v in handles.items() if k.endswith("_build_s")})
            summary, calibration = calibration_summary(store)
            results = {"rows": args.rows, "dimension": args.dimension, "queries": args.queries, "runs": args.runs,
                       "half": args.half, "dataset": data.name, "machine": machine(), "load_before": load_before,
                       "build": built, "calibration_summary": summary, "calibration": calibration,
                       "masks": masks(store, args.mask_repeats),
                       "searches": searches(store, data, queries, allowed, handles, args.runs)}
        finally:
            store.close()
    results["load_after"] = os.getloadavg()[0]
    publish("filtered", "Filtered search and where-filter masks (issue 15)", results, render(results),
            not args.no_write)


if __name__ == "__main__":
    main()
