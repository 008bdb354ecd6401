"""vectors: search latency, QPS and recall@10 at selectivities 100%, 10%, 1% and 0.1%, filtered two ways: by
the searching principal's read labels (the store's visibility path) and by a where-filter on an int column
selecting the same rows. Two data sets: real MiniLM passages and a clustered synthetic set.

Baseline, same run, same rows: faiss exact search (IndexFlatIP, with an IDSelectorBitmap of the allowed rows
when filtered). Recall is against exact filtered search (numpy). Peers (bench/peers.py) run on the same data,
queries and selectivities when asked."""

from __future__ import annotations

import os
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from bench import datasets, measure
from bench.suites import Context

NAME = "vectors"
K = 10


def run(context: Context) -> dict[str, Any]:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query at a time: OpenMP over 2 busy cores costs more than it saves
    try:
        return _run(context)
    finally:
        faiss.omp_set_num_threads(threads)


def _run(context: Context) -> dict[str, Any]:
    sets = _data_sets(context)
    out: dict[str, Any] = {"baseline": {"name": "faiss exact (IndexFlatIP + IDSelectorBitmap)",
                                        "description": "exhaustive search of the same rows and the same allowed "
                                                       "set, one query at a time, in the same run"},
                           "k": K, "faiss_threads": 1, "sets": {}, "latency": {}, "ratios": {}, "recall": {}}
    for key, (data, kind) in sets.items():
        result = run_set(context, data, kind)
        out["sets"][key] = result
        for filter_name in ("principal", "where"):
            for s, cell in result[filter_name].items():
                out["latency"][f"{key}/{filter_name}/{s}"] = cell["latency"]
                out["ratios"][f"{key}/{filter_name}/{s}/latency_vs_exact"] = cell["latency_vs_baseline"]
    recalls = [cell["recall"] for r in out["sets"].values() for f in ("principal", "where") for cell in r[f].values()]
    out["recall"] = {"min": min(recalls), "mean": float(np.mean(recalls))}
    out["search_latency"] = measure.series_ms([x for r in out["sets"].values() for f in ("principal", "where")
                                               for cell in r[f].values() for x in cell["latencies_ms"]])
    for r in out["sets"].values():
        for f in ("principal", "where"):
            for cell in r[f].values():
                del cell["latencies_ms"]
    return out


def _data_sets(context: Context) -> dict[str, tuple[datasets.DataSet, str]]:
    if context.quick:
        rows, queries = context.pick(None, (10_000, 60), (3_000, 20))
        synthetic = datasets.clustered(rows, queries, clusters=context.pick(300, 300, 50), seed=context.seed)
        real = datasets.minilm(queries_max=queries)
        return {"synthetic": (synthetic, "hnsw"), "real": (real, "auto")}
    synthetic = datasets.clustered(200_000, 200, seed=context.seed)
    real = datasets.minilm(queries_max=200)
    return {"synthetic": (synthetic, "auto"), "real": (real, "auto"), "real-hnsw": (real, "hnsw")}


def build_store(path: str, data: datasets.DataSet, kind: str, labels: list[list[str]], bucket: np.ndarray) -> Any:
    """A store with one node type Doc (id, bucket int, emb vector) holding `data.base`, labelled; indexes built."""
    import knowledge
    from knowledge.config import VectorConfig

    store = knowledge.open(path, config=knowledge.StoreConfig(vectors=VectorConfig(kind=kind)))
    store.define_node_type("Doc", key="id", properties={
        "bucket": "int", "emb": {"type": f"vector[{data.dimension}]", "metric": "cosine"}})
    session = store.session()
    batch = 20_000
    for start in measure.progress(range(0, len(data.base), batch), f"vectors: ingest {data.source}"):
        chunk = data.base[start:start + batch]
        session.transaction().upsert_nodes("Doc", pa.table({
            "id": pa.array([f"d{i}" for i in range(start, start + len(chunk))]),
            "bucket": pa.array(bucket[start:start + len(chunk)]),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), data.dimension),
            "_labels": pa.array(labels[start:start + len(chunk)], type=pa.list_(pa.string()))})).commit()
    store.checkpoint()
    store.build_indexes()
    return store


def run_set(context: Context, data: datasets.DataSet, kind: str) -> dict[str, Any]:
    import time

    import knowledge

    labels, bucket, masks = datasets.selectivity_columns(len(data.base), seed=context.seed)
    path = os.path.join(context.workdir, f"vectors-{data.source}-{kind}")
    started = time.perf_counter()
    store = build_store(path, data, kind, labels, bucket)
    build_s = time.perf_counter() - started
    try:
        flat = faiss.IndexFlatIP(data.dimension)
        flat.add(data.base)
        result: dict[str, Any] = {"name": data.name, "rows": len(data.base), "dimension": data.dimension,
                                  "queries": len(data.queries), "kind": kind, "build_s": build_s,
                                  "principal": {}, "where": {}, "baseline": {}}
        admin = store.session()
        for s in datasets.SELECTIVITIES:
            truth = measure.exact_topk(data.base, data.queries, K, masks[s])
            base_ms, base_found = _baseline(flat, data.queries, masks[s], f"vectors: exact faiss {s:g}")
            result["baseline"][f"{s:g}"] = {"latency": measure.series_ms(base_ms),
                                            "recall": measure.recall_at_k(base_found, truth, K),
                                            "allowed_rows": int(masks[s].sum())}
            reader = store.session(knowledge.Principal(f"reader-{s:g}", read=frozenset({datasets.label(s)})))
            for filter_name, search in (("principal", lambda q, r=reader: r.search(q, k=K)),
                                        ("where", lambda q, s=s: admin.search(q, k=K, where=datasets.where(s)))):
                result[filter_name][f"{s:g}"] = _measure_ours(search, data.queries, truth, base_ms,
                                                              f"vectors: {filter_name} {s:g}")
        if context.peers and not (context.quick and data.source != "synthetic"):  # quick: the synthetic set only
            from bench import peers
            result["peers"] = peers.compare(data, bucket, masks, K, context.workdir, quick=context.quick,
                                            queries_max=context.pick(None, peers.QUICK_QUERIES, 10))
        return result
    finally:
        store.close()


def _baseline(flat: Any, queries: np.ndarray, mask: np.ndarray, description: str) -> tuple[list[float], list]:
    params = None
    if not mask.all():
        bits = np.packbits(mask, bitorder="little")
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    found: list[list[int]] = []

    def one(i: int) -> None:
        _, ids = flat.search(queries[i % len(queries)][None, :], K, params=params)
        found.append([int(x) for x in ids[0] if x >= 0])

    latencies = measure.time_calls(one, len(queries), description, warmup=0)
    return latencies, found


def _measure_ours(search: Any, queries: np.ndarray, truth: list[list[int]], base_ms: list[float],
                  description: str) -> dict[str, Any]:
    tables: list[pa.Table] = []

    def one(i: int) -> None:
        tables.append(search(queries[i % len(queries)]))

    search(queries[0])  # warm the session's visibility cache
    latencies = measure.time_calls(one, len(queries), description, warmup=0)
    found = [[int(key[1:]) for key in t.column("_key").to_pylist()] for t in tables]
    plans = sorted({t.schema.metadata[b"plan"].decode() for t in tables if t.schema.metadata})
    ours = measure.series_ms(latencies)
    baseline = measure.series_ms(base_ms)
    return {"latency": ours, "latencies_ms": latencies, "qps": 1e3 / ours["mean_ms"],
            "recall": measure.recall_at_k(found, truth, K), "plans": plans,
            "latency_vs_baseline": measure.ratio(ours["p50_ms"], baseline["p50_ms"])}


def render(result: dict[str, Any]) -> str:
    """Markdown: per data set, per filter and selectivity, ours against the exact baseline; then the peers."""
    lines = [f"Recall@{K} over all cells: min {result['recall']['min']:.3f}, mean {result['recall']['mean']:.3f}.", ""]
    for key, data in result["sets"].items():
        lines += [f"**{key}**: {data['name']}, {data['rows']:,} x {data['dimension']}, {data['queries']} queries, "
                  f"index kind {data['kind']} (store built in {data['build_s']:.1f} s).", "",
                  "| visible | filter | ours p50 | ours p99 | ours QPS | recall | plan | exact p50 | ours / exact |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s, base in data["baseline"].items():
            for f in ("principal", "where"):
                cell = data[f][s]
                lines.append(f"| {float(s):.1%} | {f} | {cell['latency']['p50_ms']:.3f} ms | {cell['latency']['p99_ms']:.3f} ms"
                             f" | {cell['qps']:,.0f} | {cell['recall']:.3f} | {','.join(cell['plans'])} | "
                             f"{base['latency']['p50_ms']:.3f} ms | {cell['latency_vs_baseline']:.2f}x |")
        lines.append("")
        if data.get("peers"):
            from bench import peers
            lines += [peers.render(data["peers"], data), ""]
    return "\n".join(lines).rstrip()
