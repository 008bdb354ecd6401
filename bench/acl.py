"""bench/acl: the cost of access control. Search and 2-hop traversal at 100%, 10% and 1% visibility, as a
ratio to the same query run as admin, and the visibility bitmap build time for 1M nodes.

    python bench/acl.py [--nodes 1000000] [--edges 2000000] [--dim 64] [--queries 200]

Nodes carry nested labels (all / p10 / p1, random); a principal reading one label sees that share.
Queries start from nodes every principal can see, so admin and principal run the same queries.
The bitmap build is timed cold (cache cleared) for a principal with 3 read labels, median of 20.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, latencies_us, machine, replace_section, summary_us, write_json  # noqa: E402

import knowledge  # noqa: E402
from knowledge import Principal  # noqa: E402
from knowledge.config import VectorConfig  # noqa: E402

LEVELS = {"100%": "all", "10%": "p10", "1%": "p1"}


def build(path: str, nodes: int, edges: int, dim: int) -> tuple[knowledge.Store, np.ndarray]:
    store = knowledge.open(path, config=knowledge.StoreConfig(vectors=VectorConfig(kind="flat")))
    store.define_node_type("N", key="k", properties={"emb": {"type": f"vector[{dim}]", "metric": "cosine"}})
    store.define_edge_type("E", source="N", target="N")
    rng = np.random.default_rng(5)
    draw = rng.random(nodes)
    draw[:1000] = 0.0  # the first 1000 nodes are visible at every level: query starts
    session = store.session()
    batch = 200_000
    for start in range(0, nodes, batch):
        end = min(nodes, start + batch)
        part = draw[start:end]
        labels = [["all", "p10", "p1"] if d < 0.01 else ["all", "p10"] if d < 0.1 else ["all"] for d in part]
        vectors = rng.normal(size=(end - start, dim)).astype(np.float32)
        session.transaction().upsert_nodes("N", pa.table({
            "k": pa.array([f"n{i}" for i in range(start, end)]),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "_labels": pa.array(labels, type=pa.list_(pa.string()))})).commit()
    for start in range(0, edges, batch):
        count = min(batch, edges - start)
        src, dst = rng.integers(0, nodes, count), rng.integers(0, nodes, count)
        session.transaction().upsert_edges("E", pa.table({"src": pa.array([f"n{i}" for i in src]),
                                                           "dst": pa.array([f"n{i}" for i in dst])})).commit()
    store.checkpoint()
    store.build_indexes()
    return store, rng.normal(size=(1000, dim)).astype(np.float32)


def bitmap_build_ms(store: knowledge.Store) -> float:
    principal = Principal("bitmap", read=frozenset({"p1", "p10", "all"}))
    times = []
    for _ in range(20):
        store._visibility_cache.clear()
        start = time.perf_counter()
        store.visibility(principal)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--edges", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="kbench-acl-")
    try:
        store, queries = build(os.path.join(directory, "s"), args.nodes, args.edges, args.dim)
        admin = store.session()
        result = {"command": " ".join(["python", "bench/acl.py", *sys.argv[1:]]), "machine": machine(),
                  "nodes": args.nodes, "edges": args.edges, "dim": args.dim,
                  "bitmap_build_ms": bitmap_build_ms(store), "levels": {}}
        starts = [f"n{i}" for i in range(1000)]
        admin_search = summary_us(latencies_us(lambda i: admin.search(queries[i % 1000], k=10), args.queries))
        admin_walk = summary_us(latencies_us(lambda i: admin.traverse("N", starts[i % 1000], "E", depth=2),
                                             args.queries))
        for level, label in LEVELS.items():
            user = store.session(Principal(f"reader-{label}", read=frozenset({label})))
            search = summary_us(latencies_us(lambda i, u=user: u.search(queries[i % 1000], k=10), args.queries))
            walk = summary_us(latencies_us(lambda i, u=user: u.traverse("N", starts[i % 1000], "E", depth=2),
                                           args.queries))
            result["levels"][level] = {"search": search, "traverse": walk,
                                       "search_vs_admin": search["p50_us"] / admin_search["p50_us"],
                                       "traverse_vs_admin": walk["p50_us"] / admin_walk["p50_us"]}
        result["admin"] = {"search": admin_search, "traverse": admin_walk}
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(write_json("acl", result))
    body = render(result)
    print(body)
    if not args.no_write:
        replace_section(os.path.join(HERE, "RESULTS.md"), "Access control cost (bench/acl.py)", body)


def render(r: dict) -> str:
    admin = r["admin"]
    lines = [f"Command: `{r['command']}` ({r['machine']['cpus']} CPUs); {r['nodes']:,} nodes, {r['edges']:,} edges, "
             f"flat vectors of dimension {r['dim']}; p50 over the queries of one run, admin measured in the same run.",
             "", f"Visibility bitmap build, 1 principal with 3 labels over {r['nodes']:,} nodes: "
             f"**{r['bitmap_build_ms']:.2f} ms** (target < 50 ms).", "",
             "| visible | search p50 | vs admin | 2-hop p50 | vs admin |", "|---|---|---|---|---|",
             f"| admin | {admin['search']['p50_us'] / 1000:.2f} ms | 1.00 | {admin['traverse']['p50_us'] / 1000:.2f} ms | 1.00 |"]
    for level, data in r["levels"].items():
        lines.append(f"| {level} | {data['search']['p50_us'] / 1000:.2f} ms | {data['search_vs_admin']:.2f} | "
                     f"{data['traverse']['p50_us'] / 1000:.2f} ms | {data['traverse_vs_admin']:.2f} |")
    lines.append("\nTarget: access-controlled search and traversal <= 1.3x admin at 10% visibility.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
