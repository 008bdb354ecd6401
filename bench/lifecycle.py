"""bench/lifecycle: the space a store gives back after TTL expiry, against a store that never held the rows.

    python bench/lifecycle.py [--rows 100000] [--dim 64] [--runs 3] [--json OUT]

Store A: N Doc nodes (a text body of ~20 words, a vector[dim], created_at), a `NEXT` edge from each to the
node 10 before it, and a TTL policy `set_ttl("Doc", "7d", on="created_at")`; 90% of the rows are 8 days old.
It is checkpointed (everything in its files), then the store's clock moves on, the sweeper deletes the 90%
(`store.sweep_expired()`: WAL delete records) and a checkpoint compacts (tables rewritten, vector and keyword
indexes and graph compacted, WAL segments dropped). Baseline, same run: store B, built with the surviving
10% alone (the same rows, edges and policy), checkpointed. The figure is size(A) / size(B) (target <= 1.3x),
with both sizes as the bytes of every file in the store directory; median of --runs. Also: A's size before
expiry, the sweep's rows/s and the checkpoint's seconds, `store.stats()["space"]` of A after, and what a
policy costs writes (bulk ingest and single-row commits of a type with a policy against one without).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import knowledge  # noqa: E402
from knowledge.config import StoreConfig  # noqa: E402

T0 = 1_700_000_000.0
WORDS = ("agent", "tool", "call", "result", "memory", "plan", "step", "error", "retry", "answer", "user",
         "query", "search", "document", "chunk", "entity", "graph", "vector", "model", "token")
BATCH = 10_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(path) for name in files)


def _rows(ids: list[int], dim: int, seed: int) -> list[dict[str, Any]]:
    now = dt.datetime.fromtimestamp(T0, dt.UTC)
    out = []
    for i in ids:
        local = np.random.default_rng(seed * 1_000_003 + i)  # the same row in either store
        words = " ".join(WORDS[j] for j in local.integers(0, len(WORDS), 20))
        age = dt.timedelta(days=0 if i % 10 == 0 else 8)
        out.append({"name": f"d{i}", "body": f"{words} d{i}", "emb": local.normal(size=dim).astype(np.float32),
                    "created_at": now - age, "_labels": ["public"]})
    return out


def build(path: str, ids: list[int], dim: int, clock: Clock, seed: int) -> knowledge.Store:
    store = knowledge.open(path, config=StoreConfig(clock=clock, ttl_sweep_rows_per_s=0))
    store.define_node_type("Doc", key="name", properties={"body": "text", "created_at": "timestamp",
                                                          "emb": {"type": f"vector[{dim}]", "metric": "cosine"}})
    store.define_edge_type("NEXT", source="Doc", target="Doc")
    store.set_ttl("Doc", "7d", on="created_at")
    present = set(ids)
    session = store.session()
    import pyarrow as pa

    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        rows = _rows(chunk, dim, seed)
        table = pa.table({"name": [r["name"] for r in rows], "body": [r["body"] for r in rows],
                          "created_at": pa.array([r["created_at"] for r in rows], type=pa.timestamp("us", tz="UTC")),
                          "emb": pa.array([r["emb"].tolist() for r in rows], type=pa.list_(pa.float32(), dim)),
                          "_labels": [r["_labels"] for r in rows]})
        edges = [{"src": f"d{i}", "dst": f"d{i - 10}"} for i in chunk if i - 10 in present]
        tx = session.transaction().upsert_nodes("Doc", table)
        if edges:
            tx.upsert_edges("NEXT", edges)
        tx.commit()
    return store


def one_run(rows: int, dim: int, seed: int, workdir: str) -> dict[str, Any]:
    clock = Clock()
    ids = list(range(rows))
    survivors = [i for i in ids if i % 10 == 0]
    a_path, b_path = os.path.join(workdir, "expired"), os.path.join(workdir, "alone")
    store = build(a_path, ids, dim, clock, seed)
    try:
        store.checkpoint()
        full = dir_bytes(a_path)
        clock.now = T0 + 86400  # the 8-day-old rows are now past 7 days
        started = time.perf_counter()
        swept = store.sweep_expired()
        sweep_s = time.perf_counter() - started
        started = time.perf_counter()
        store.checkpoint()
        checkpoint_s = time.perf_counter() - started
        after = dir_bytes(a_path)
        space = store.stats()["space"]
        live = store.session().count("Doc")
    finally:
        store.close()
    after_close = dir_bytes(a_path)
    alone = build(b_path, survivors, dim, clock, seed)
    try:
        alone.checkpoint()
        alone_bytes = dir_bytes(b_path)
        assert alone.session().count("Doc") == live == len(survivors), (live, len(survivors))
    finally:
        alone.close()
    alone_after_close = dir_bytes(b_path)
    shutil.rmtree(a_path, ignore_errors=True)
    shutil.rmtree(b_path, ignore_errors=True)
    return {"full_bytes": full, "expired_bytes": after, "alone_bytes": alone_bytes, "ratio": after / alone_bytes,
            "ratio_closed": after_close / alone_after_close, "swept_rows": swept["nodes"],
            "sweep_rows_per_s": swept["nodes"] / sweep_s, "checkpoint_s": checkpoint_s, "space": space}


def write_cost(rows: int, commits: int, workdir: str) -> dict[str, float]:
    """What a TTL policy costs writes: bulk ingest seconds and single-row commit p50 (fsync on), a type
    with a policy (each write carries its stamp) against the same type without one, in the same run."""
    import pyarrow as pa

    out: dict[str, float] = {}
    for policy in (False, True):
        store = knowledge.open(os.path.join(workdir, f"writes-{policy}"), config=StoreConfig(ttl_sweep_rows_per_s=0))
        try:
            store.define_node_type("Log", key="name", properties={"msg": "text", "n": "int"})
            if policy:
                store.set_ttl("Log", "7d")
            session = store.session()
            started = time.perf_counter()
            for start in range(0, rows, BATCH):
                names = [f"r{i}" for i in range(start, min(rows, start + BATCH))]
                session.transaction().upsert_nodes("Log", pa.table({"name": names, "msg": ["a log line"] * len(names),
                                                                   "n": list(range(len(names)))})).commit()
            out[f"ingest_s_{'ttl' if policy else 'plain'}"] = time.perf_counter() - started
            latencies = []
            for i in range(commits):
                started = time.perf_counter()
                session.transaction().upsert_nodes("Log", [{"name": f"c{i}", "msg": "one more", "n": i}]).commit()
                latencies.append(time.perf_counter() - started)
            out[f"commit_p50_us_{'ttl' if policy else 'plain'}"] = statistics.median(latencies) * 1e6
        finally:
            store.close()
    return out


def run(rows: int, dim: int, runs: int) -> dict[str, Any]:
    """The figures of `runs` runs and their medians."""
    results = []
    for index in range(runs):
        workdir = tempfile.mkdtemp(prefix="kbench-lifecycle-")
        try:
            results.append(one_run(rows, dim, 7 + index, workdir))
            results[-1].update(write_cost(rows, 200, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    med = {key: statistics.median(r[key] for r in results) for key in (
        "full_bytes", "expired_bytes", "alone_bytes", "ratio", "ratio_closed", "sweep_rows_per_s", "checkpoint_s",
        "ingest_s_plain", "ingest_s_ttl", "commit_p50_us_plain", "commit_p50_us_ttl")}
    med["ingest_ratio"] = statistics.median(r["ingest_s_ttl"] / r["ingest_s_plain"] for r in results)
    med["commit_ratio"] = statistics.median(r["commit_p50_us_ttl"] / r["commit_p50_us_plain"] for r in results)
    return {"rows": rows, "dim": dim, "runs": runs, "median": med, "runs_detail": results,
            "load": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    out = run(args.rows, args.dim, args.runs)
    out["load_before"] = load_before
    med = out["median"]
    mib = 1 << 20
    print(f"rows {args.rows:,} x vector[{args.dim}], 90% expired, median of {args.runs} runs; "
          f"load {load_before[0]:.1f} before, {out['load'][0]:.1f} after")
    print("| store | bytes | vs survivors-only |")
    print("|---|---|---|")
    print(f"| all rows, checkpointed | {med['full_bytes'] / mib:.2f} MiB | {med['full_bytes'] / med['alone_bytes']:.2f}x |")
    print(f"| 90% expired, swept, checkpointed | {med['expired_bytes'] / mib:.2f} MiB | {med['ratio']:.2f}x |")
    print(f"| the same after close | | {med['ratio_closed']:.2f}x |")
    print(f"| survivors alone (baseline), checkpointed | {med['alone_bytes'] / mib:.2f} MiB | 1.00x |")
    print(f"sweep: {med['sweep_rows_per_s']:,.0f} rows/s; checkpoint with compaction: {med['checkpoint_s']:.2f} s")
    print(f"writes with a TTL policy vs without (same run): bulk ingest of {args.rows:,} rows "
          f"{med['ingest_s_ttl']:.2f} s vs {med['ingest_s_plain']:.2f} s ({med['ingest_ratio']:.2f}x); single-row "
          f"commit p50 {med['commit_p50_us_ttl']:.0f} us vs {med['commit_p50_us_plain']:.0f} us "
          f"({med['commit_ratio']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
