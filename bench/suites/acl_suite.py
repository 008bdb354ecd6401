"""acl: the cost of access control. Vector search and 2-hop traversal as principals seeing 100%, 10% and 1%
of the nodes, and the cold build of a principal's visibility bitmap.

Baseline, same run, same queries: the admin session (no visibility filter). Queries start from nodes every
principal can see, so admin and principals run the same queries."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import pyarrow as pa

from bench import measure
from bench.suites import Context

NAME = "acl"
LEVELS = {"100%": "all", "10%": "p10", "1%": "p1"}
STARTS = 500


def run(context: Context) -> dict[str, Any]:
    import knowledge

    nodes, edges, queries = context.pick((1_000_000, 2_000_000, 1000), (50_000, 100_000, 200), (5_000, 10_000, 30))
    store, vectors = _build(os.path.join(context.workdir, "acl"), nodes, edges)
    try:
        admin = store.session()
        starts = [f"n{i}" for i in range(STARTS)]

        def search(session: Any) -> list[float]:
            return measure.time_calls(lambda i: session.search(vectors[i % len(vectors)], k=10), queries,
                                      f"acl: search {session.principal.name}")

        def walk(session: Any) -> list[float]:
            return measure.time_calls(lambda i: session.traverse("N", starts[i % STARTS], "E", depth=2), queries,
                                      f"acl: 2-hop {session.principal.name}")

        admin_search, admin_walk = measure.series_ms(search(admin)), measure.series_ms(walk(admin))
        out: dict[str, Any] = {
            "baseline": {"name": "admin session", "description": "the same queries with no visibility filter"},
            "nodes": nodes, "edges": edges, "queries": queries, "bitmap_build_ms": _bitmap_ms(store),
            "admin": {"search": admin_search, "traverse": admin_walk}, "levels": {}, "ratios": {}, "latency": {
                "search admin": admin_search, "2-hop admin": admin_walk}}
        for level, label in LEVELS.items():
            user = store.session(knowledge.Principal(f"reader-{label}", read=frozenset({label})))
            s, w = measure.series_ms(search(user)), measure.series_ms(walk(user))
            out["levels"][level] = {"search": s, "traverse": w}
            out["latency"][f"search {level}"], out["latency"][f"2-hop {level}"] = s, w
            out["ratios"][f"search_{level}_vs_admin"] = measure.ratio(s["p50_ms"], admin_search["p50_ms"])
            out["ratios"][f"traverse_{level}_vs_admin"] = measure.ratio(w["p50_ms"], admin_walk["p50_ms"])
        return out
    finally:
        store.close()


def _build(path: str, nodes: int, edges: int) -> tuple[Any, np.ndarray]:
    import knowledge
    from knowledge.config import VectorConfig

    dim = 64
    store = knowledge.open(path, config=knowledge.StoreConfig(vectors=VectorConfig(kind="flat")))
    store.define_node_type("N", key="k", properties={"emb": {"type": f"vector[{dim}]", "metric": "cosine"}})
    store.define_edge_type("E", source="N", target="N")
    rng = np.random.default_rng(5)
    draw = rng.random(nodes)
    draw[:STARTS] = 0.0  # visible at every level: the query starts
    session = store.session()
    batch = 100_000
    for start in measure.progress(range(0, nodes, batch), "acl: nodes"):
        end = min(nodes, start + batch)
        labels = [["all", "p10", "p1"] if d < 0.01 else ["all", "p10"] if d < 0.1 else ["all"] for d in draw[start:end]]
        vectors = rng.normal(size=(end - start, dim)).astype(np.float32)
        session.transaction().upsert_nodes("N", pa.table({
            "k": pa.array([f"n{i}" for i in range(start, end)]),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "_labels": pa.array(labels, type=pa.list_(pa.string()))})).commit()
    for start in measure.progress(range(0, edges, batch), "acl: edges"):
        count = min(batch, edges - start)
        src, dst = rng.integers(0, nodes, count), rng.integers(0, nodes, count)
        session.transaction().upsert_edges("E", pa.table({"src": pa.array([f"n{i}" for i in src]),
                                                           "dst": pa.array([f"n{i}" for i in dst])})).commit()
    store.checkpoint()
    store.build_indexes()
    return store, rng.normal(size=(1000, dim)).astype(np.float32)


def _bitmap_ms(store: Any) -> float:
    """Median cold build of a principal's visibility bitmap over 3 labels (plus one label no node carries, new
    each time, so that no cached bitmap is reused)."""
    import knowledge

    times = []
    for i in range(10):
        principal = knowledge.Principal(f"bitmap-{i}", read=frozenset({"p1", "p10", "all", f"fresh-{i}"}))
        started = time.perf_counter()
        store.visibility(principal)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def render(result: dict[str, Any]) -> str:
    admin = result["admin"]
    lines = [f"{result['nodes']:,} nodes, {result['edges']:,} edges, {result['queries']} queries per cell; visibility "
             f"bitmap of a principal not seen before (3 labels; the store keeps per-label bitmaps): "
             f"**{result['bitmap_build_ms']:.2f} ms**.", "",
             "| visible | search p50 | vs admin | 2-hop p50 | vs admin |", "|---|---|---|---|---|",
             f"| admin | {admin['search']['p50_ms']:.3f} ms | 1.00x | {admin['traverse']['p50_ms']:.3f} ms | 1.00x |"]
    for level, data in result["levels"].items():
        r = result["ratios"]
        lines.append(f"| {level} | {data['search']['p50_ms']:.3f} ms | {r[f'search_{level}_vs_admin']:.2f}x | "
                     f"{data['traverse']['p50_ms']:.3f} ms | {r[f'traverse_{level}_vs_admin']:.2f}x |")
    return "\n".join(lines)
