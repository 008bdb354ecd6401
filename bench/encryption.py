"""bench/encryption: what encryption at rest costs, as a ratio to the same store unencrypted (issue 18.5).

    python bench/encryption.py [--rows 20000] [--batch 2000] [--commits 300] [--runs 5] [--no-write]

Each run opens two stores side by side, one plain and one with StoreConfig(encryption_key=...), and
does every step to one then the other, the order alternating (so the machine's load falls on both):
- bulk ingest: --rows nodes (a 200-character text, a str, an int, a vector[64]) in transactions of
  --batch rows as Arrow tables, WAL fsync on, then a checkpoint (DuckDB, sealed snapshots): the summed
  wall time of the commits and the checkpoint, and the process CPU time they took;
- single-row commit: --commits one-row transactions, each durable (one fdatasync), the median latency;
  and the same with the WAL's sync off, which leaves the commit's CPU path (where sealing is) alone.
Reported: the medians over --runs runs of each figure and of the per-run ratio encrypted / plain
(target <= 1.15x), with the load average before and after. Results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import publish  # noqa: E402
from machine import describe, load  # noqa: E402

import knowledge  # noqa: E402

KEY = bytes(range(32))
TARGET = 1.15
RATIOS = {"bulk_ratio": "bulk_s", "bulk_cpu_ratio": "bulk_cpu_s", "bulk_thread_ratio": "bulk_thread_s",
          "commit_ratio": "commit_us",
          "commit_nosync_ratio": "commit_nosync_us"}


def _config(encrypted: bool) -> knowledge.StoreConfig:
    return knowledge.StoreConfig(encryption_key=KEY, encryption_key_id="bench") if encrypted else knowledge.StoreConfig()


def _batches(rows: int, batch: int, seed: int) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma"])
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        text = [" ".join(rng.choice(words, 30)) for _ in range(n)]
        vectors = rng.standard_normal((n, 64)).astype(np.float32)
        out.append(pa.table({"name": [f"n{start + i}" for i in range(n)], "body": text,
                             "tag": [f"t{i % 17}" for i in range(n)], "n": np.arange(start, start + n),
                             "emb": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 64)}))
    return out


def _define(store: knowledge.Store) -> None:
    store.define_node_type("Doc", key="name", properties={"body": "text", "tag": "str", "n": "int",
                                                          "emb": "vector[64]"})


def _pair(directory: str, name: str) -> dict[bool, knowledge.Store]:
    stores = {}
    for encrypted in (False, True):
        path = os.path.join(directory, f"{name}-{'encrypted' if encrypted else 'plain'}")
        shutil.rmtree(path, ignore_errors=True)
        stores[encrypted] = knowledge.open(path, config=_config(encrypted))
        _define(stores[encrypted])
    return stores


def _timed(function) -> tuple[float, float, float]:
    """(wall seconds, process CPU seconds, this thread's CPU seconds) of function()."""
    wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - own


def one_run(directory: str, run: int, args: argparse.Namespace, batches: list[pa.Table]) -> dict[str, float]:
    """Both stores open side by side, each step done to one then the other (the order alternating), so
    the machine's load falls on both alike."""
    out: dict[str, float] = {}
    names = {False: "plain", True: "encrypted"}
    stores = _pair(directory, f"bulk{run}")
    wall = {False: 0.0, True: 0.0}
    cpu = {False: 0.0, True: 0.0}
    own = {False: 0.0, True: 0.0}
    for index, table in enumerate(batches + [None]):
        for encrypted in ((False, True) if (index + run) % 2 == 0 else (True, False)):
            store = stores[encrypted]
            step = store.checkpoint if table is None else (
                lambda s=store, t=table: s.session().transaction().upsert_nodes("Doc", t).commit())
            w, c, t = _timed(step)
            wall[encrypted] += w
            cpu[encrypted] += c
            own[encrypted] += t
    for encrypted, store in stores.items():
        store.close()
        out[f"bulk_s_{names[encrypted]}"] = wall[encrypted]
        out[f"bulk_cpu_s_{names[encrypted]}"] = cpu[encrypted]
        out[f"bulk_thread_s_{names[encrypted]}"] = own[encrypted]
    for sync in (True, False):
        stores = _pair(directory, f"one{run}{'sync' if sync else 'nosync'}")
        if not sync:  # the commit's own CPU cost, without the disk: a store whose WAL is not fsynced
            for encrypted in (False, True):
                stores[encrypted].close()
                path = os.path.join(directory, f"one{run}nosync-{names[encrypted]}")
                stores[encrypted] = knowledge.open(path, config=dataclasses.replace(_config(encrypted), fsync=False))
        latencies: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.commits + 20):
            for encrypted in ((False, True) if (i + run) % 2 == 0 else (True, False)):
                row = {"name": f"s{i}", "body": "one row committed on its own", "tag": "x", "n": i, "emb": [0.1] * 64}
                session = stores[encrypted].session()
                start = time.perf_counter()
                session.transaction().upsert_nodes("Doc", [row]).commit()
                if i >= 20:  # warm-up commits left out
                    latencies[encrypted].append((time.perf_counter() - start) * 1e6)
        key = "commit_us" if sync else "commit_nosync_us"
        for encrypted, store in stores.items():
            store.close()
            out[f"{key}_{names[encrypted]}"] = statistics.median(latencies[encrypted])
    for ratio, key in RATIOS.items():
        out[ratio] = out[f"{key}_encrypted"] / out[f"{key}_plain"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    machine = describe()
    load_before = load()
    batches = _batches(args.rows, args.batch, seed=18)
    with tempfile.TemporaryDirectory(prefix="knowledge-encryption-") as directory:
        runs = [one_run(directory, run, args, batches) for run in range(args.runs)]
    load_after = load()
    med = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    result = {"command": " ".join(["python", "bench/encryption.py", *sys.argv[1:]]), "machine": machine,
              "load_before": load_before, "load_after": load_after, "runs": runs, "median": med,
              "target_ratio_max": TARGET, "rows": args.rows, "batch": args.batch, "commits": args.commits}
    rows_per_s = {name: args.rows / med[f"bulk_s_{name}"] for name in ("plain", "encrypted")}
    per_run = {name: ", ".join(f"{r[name]:.2f}" for r in runs) for name in RATIOS}

    def verdict(ratio: float) -> str:
        return "met" if ratio <= TARGET else "missed"

    body = f"""Command: `{result['command']}` ({machine['cores']} CPUs, {machine['cpu_model']}); medians of {args.runs} runs.
In each run a plain and an encrypted store are open side by side and every step is done to one, then the
other, in alternating order. Load {load_before} before, {load_after} after (a shared VM: other jobs ran
meanwhile, so single runs vary; the medians are the figures).

| step | plain | encrypted (AES-256-GCM) | ratio (median of per-run ratios) | target |
|---|---|---|---|---|
| bulk ingest: {args.rows:,} rows (text, str, int, vector[64]) in {args.batch:,}-row Arrow transactions, then a checkpoint | {med['bulk_s_plain']:.2f} s ({rows_per_s['plain']:,.0f} rows/s) | {med['bulk_s_encrypted']:.2f} s ({rows_per_s['encrypted']:,.0f} rows/s) | {med['bulk_ratio']:.2f}x ({verdict(med['bulk_ratio'])}) | <= {TARGET}x |
| the same bulk ingest, CPU time of the committing thread (where records and snapshots are sealed) | {med['bulk_thread_s_plain']:.3f} s | {med['bulk_thread_s_encrypted']:.3f} s | {med['bulk_thread_ratio']:.2f}x | |
| the same bulk ingest, process CPU time (both stores' background threads count in both) | {med['bulk_cpu_s_plain']:.2f} s | {med['bulk_cpu_s_encrypted']:.2f} s | {med['bulk_cpu_ratio']:.2f}x | |
| single-row commit p50 (one fdatasync each, {args.commits} commits) | {med['commit_us_plain']:.0f} us | {med['commit_us_encrypted']:.0f} us | {med['commit_ratio']:.2f}x ({verdict(med['commit_ratio'])}) | <= {TARGET}x |
| single-row commit p50, WAL sync off (the commit's CPU path alone) | {med['commit_nosync_us_plain']:.0f} us | {med['commit_nosync_us_encrypted']:.0f} us | {med['commit_nosync_ratio']:.2f}x | |

Per-run ratios: bulk {per_run['bulk_ratio']} (committing thread's CPU {per_run['bulk_thread_ratio']}); single-row commit
{per_run['commit_ratio']} (sync off {per_run['commit_nosync_ratio']}). Encrypted: every WAL record sealed
(a random nonce and AES-GCM under the segment's HKDF-derived key, +28 bytes a record), the snapshots
sealed at the checkpoint; state.duckdb is written in plaintext by both (README: Encryption at rest).
"""
    publish("encryption", "Encryption at rest: bulk ingest and single-row commit (bench/encryption.py)", result,
            body, not args.no_write)


if __name__ == "__main__":
    main()
