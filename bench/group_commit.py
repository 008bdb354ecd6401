"""bench/group_commit: local commits/s with many concurrent committers (issue 14's group-commit target).

    python bench/group_commit.py [--threads 1,8,32,64] [--seconds 2] [--rounds 3] [--vector 0] [--no-write]

One store (WAL sync on), a `Doc` node type (key `name`, `n` int, with --vector D also a vector[D]
property); each committer thread commits one single-row upsert per transaction, as bench/replication.py's
throughput phase does (`_commit_rate`: 0.5 s warm-up, then `--seconds`). Each thread count runs
`--rounds` rounds alternating between the store's group commit (StoreConfig.group_commit_max, the
default) and one transaction per pipeline pass (group_commit_max=1, the path before batching), so machine
noise hits both alike; figures are medians of the rounds, with /proc/loadavg noted, CPU per commit
(this process, all threads) and fsyncs per commit.
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
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, publish  # noqa: E402

import knowledge  # noqa: E402

MODES = {"batched": None, "one_by_one": 1}  # group_commit_max (None: the default)


def load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def commit_rate(commit: Any, threads: int, seconds: float, prefix: str) -> float:
    """Commits/s of `threads` concurrent committers calling commit(key) for `seconds` (after 0.5 s warm-up)."""
    done = [0] * threads
    stop = threading.Event()

    def run(k: int) -> None:
        i = 0
        while not stop.is_set():
            commit(f"{prefix}{k}-{i}")
            i += 1
            done[k] += 1
    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    before, start = sum(done), time.perf_counter()
    time.sleep(seconds)
    rate = (sum(done) - before) / (time.perf_counter() - start)
    stop.set()
    for w in workers:
        w.join(60)
    return rate


def open_store(path: str, mode: str, vector: int) -> Any:
    shutil.rmtree(path, ignore_errors=True)
    limit = MODES[mode]
    config = knowledge.StoreConfig() if limit is None else knowledge.StoreConfig(group_commit_max=limit)
    store = knowledge.open(path, config=config)
    properties: dict[str, str] = {"n": "int"}
    if vector:
        properties["v"] = f"vector[{vector}]"
    store.define_node_type("Doc", key="name", properties=properties)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vector", type=int, default=0, help="add a vector[D] property to each row")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    modes = args.modes.split(",")
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(args.vector).astype(np.float32) if args.vector else None
    rates: dict[str, dict[int, list[float]]] = {m: {t: [] for t in counts} for m in modes}
    cpu_us: dict[str, dict[int, list[float]]] = {m: {t: [] for t in counts} for m in modes}
    fsyncs: dict[str, dict[int, list[float]]] = {m: {t: [] for t in counts} for m in modes}
    loads: list[float] = [load()]
    with tempfile.TemporaryDirectory(prefix="knowledge-group-") as directory:
        stores = {m: open_store(os.path.join(directory, m), m, args.vector) for m in modes}
        try:
            for threads in counts:
                for r in range(args.rounds):
                    for mode in (modes if r % 2 == 0 else modes[::-1]):
                        session = stores[mode].session()

                        def commit(key: str, session: Any = session) -> None:
                            row: dict[str, Any] = {"name": key, "n": 1}
                            if vector is not None:
                                row["v"] = vector
                            session.transaction().upsert_nodes("Doc", [row]).commit()
                        wal = stores[mode].engine.wal
                        cpu, wall, syncs = time.process_time(), time.perf_counter(), wal.fsync_count
                        rate = commit_rate(commit, threads, args.seconds, f"t{threads}r{r}-")
                        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                        total = max(1.0, rate * wall)
                        rates[mode][threads].append(rate)
                        cpu_us[mode][threads].append(cpu * 1e6 / total)
                        fsyncs[mode][threads].append((wal.fsync_count - syncs) / total)
                        loads.append(load())
                        print(f"{mode:10s} threads={threads:3d} round={r} {rate:9.0f} commits/s  "
                              f"cpu {cpu * 1e6 / total:6.0f} us/commit  load {loads[-1]:.2f}", flush=True)
        finally:
            for store in stores.values():
                store.close()
    median = {m: {t: statistics.median(v) for t, v in by.items()} for m, by in rates.items()}
    result = {"command": " ".join(["python", "bench/group_commit.py", *sys.argv[1:]]), "machine": machine(),
              "rates": rates, "median": median, "cpu_us_per_commit": cpu_us, "fsyncs_per_commit": fsyncs,
              "load": loads, "vector": args.vector}
    rows = []
    for t in counts:
        cells = [f"{median[m][t]:,.0f}/s ({statistics.median(cpu_us[m][t]):.0f} us CPU, "
                 f"{statistics.median(fsyncs[m][t]):.2f} fsyncs)" for m in modes]
        ratio = (f"{median['batched'][t] / median['one_by_one'][t]:.2f}x"
                 if {'batched', 'one_by_one'} <= set(modes) else "")
        rows.append(f"| {t} | " + " | ".join(cells) + f" | {ratio} |")
    body = f"""Command: `{result['command']}` ({result['machine']['cpus']} CPUs); load {min(loads):.1f}-{max(loads):.1f}
(1-minute loadavg over the run); single-row upserts{f' with a vector[{args.vector}]' if args.vector else ''},
WAL sync on; medians of {args.rounds} rounds of {args.seconds:g} s, the modes alternating.

| committer threads | {' | '.join(modes)} | batched / one by one |
|---|{'---|' * len(modes)}---|
{chr(10).join(rows)}
"""
    publish("group_commit", "Group commit: local commits/s with concurrent committers (bench/group_commit.py)",
            result, body, not args.no_write)


if __name__ == "__main__":
    main()
