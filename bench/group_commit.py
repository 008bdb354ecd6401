"""bench/group_commit: local commits/s with many concurrent committers (issue 14's group-commit target).

    python bench/group_commit.py [--threads 1,8,32,64] [--seconds 2] [--rounds 3] [--vector 0]
                                 [--baseline DIR] [--no-write]

Each measurement opens a fresh store (WAL sync on) in a fresh process: a `Doc` node type (key `name`,
`n` int; with --vector D also a vector[D] property), and `threads` committer threads, each committing
one single-row upsert per transaction, as bench/replication.py's throughput phase does (0.5 s warm-up,
then `--seconds`). Variants, alternating within every round so machine noise hits them alike:
- `batched`: this tree, group commit as configured by default (StoreConfig.group_commit_max);
- `one_by_one`: this tree with group_commit_max=1 (one transaction per pipeline pass);
- `before` (with --baseline DIR): the code of another checkout, e.g. `git worktree add /tmp/base <commit>`.
Figures are medians of `--rounds`, with the 1-minute /proc/loadavg, this process's CPU per commit (all
threads: committers, the table applier) and fsyncs per commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, publish  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def commit_rate(commit: Any, threads: int, seconds: float) -> tuple[float, float]:
    """(commits/s, wall seconds) of `threads` concurrent committers calling commit(key) for `seconds`
    after a 0.5 s warm-up (bench/replication.py's _commit_rate)."""
    done = [0] * threads
    stop = threading.Event()

    def run(k: int) -> None:
        i = 0
        while not stop.is_set():
            commit(f"t{k}-{i}")
            i += 1
            done[k] += 1
    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    before, start = sum(done), time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - start
    rate = (sum(done) - before) / wall
    stop.set()
    for w in workers:
        w.join(60)
    return rate, wall


def child(variant: str, threads: int, seconds: float, vector: int) -> dict[str, Any]:
    """One measurement in this process (imports whichever `knowledge` PYTHONPATH gives)."""
    import numpy as np

    import knowledge
    directory = tempfile.mkdtemp(prefix="knowledge-group-")
    try:
        config = knowledge.StoreConfig(group_commit_max=1) if variant == "one_by_one" else knowledge.StoreConfig()
        store = knowledge.open(os.path.join(directory, "store"), config=config)
        properties: dict[str, str] = {"n": "int"}
        if vector:
            properties["v"] = f"vector[{vector}]"
        store.define_node_type("Doc", key="name", properties=properties)
        session = store.session()
        embedding = np.random.default_rng(0).standard_normal(vector).astype(np.float32) if vector else None

        def commit(key: str) -> None:
            row: dict[str, Any] = {"name": key, "n": 1}
            if embedding is not None:
                row["v"] = embedding
            session.transaction().upsert_nodes("Doc", [row]).commit()
        wal = store.engine.wal
        cpu, syncs = time.process_time(), wal.fsync_count
        rate, wall = commit_rate(commit, threads, seconds)
        cpu = time.process_time() - cpu
        total = max(1.0, rate * (wall + 0.5))  # CPU and fsyncs are counted over the warm-up too
        result = {"rate": rate, "cpu_us": cpu * 1e6 / total, "fsyncs": (wal.fsync_count - syncs) / total,
                  "load": load(), "code": os.path.dirname(os.path.dirname(os.path.abspath(knowledge.__file__)))}
        store.close()
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(variant: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run `child` in a fresh process, on the baseline's code for `before`."""
    env = dict(os.environ)
    code = args.baseline if variant == "before" else ROOT
    env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", variant, "--threads", str(threads),
                          "--seconds", str(args.seconds), "--vector", str(args.vector)],
                         env=env, capture_output=True, text=True, check=True, cwd=code)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vector", type=int, default=0, help="add a vector[D] property to each row")
    parser.add_argument("--baseline", help="a checkout of the code before (e.g. a git worktree): variant `before`")
    parser.add_argument("--variants", default=None, help="comma-separated subset of before,one_by_one,batched")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, int(args.threads), args.seconds, args.vector)))
        return
    counts = [int(t) for t in args.threads.split(",")]
    variants = (args.variants.split(",") if args.variants else
                (["before"] if args.baseline else []) + ["one_by_one", "batched"])
    if "before" in variants and not args.baseline:
        parser.error("variant `before` needs --baseline DIR")
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {v: {t: [] for t in counts} for v in variants}
    loads = [load()]
    for threads in counts:
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for variant in order:
                result = measure(variant, threads, args)
                runs[variant][threads].append(result)
                loads.append(result["load"])
                print(f"{variant:10s} threads={threads:3d} round={r} {result['rate']:9.0f} commits/s  "
                      f"cpu {result['cpu_us']:6.0f} us/commit  fsyncs/commit {result['fsyncs']:.2f}  "
                      f"load {result['load']:.2f}", flush=True)

    def med(variant: str, threads: int, name: str) -> float:
        return statistics.median(run[name] for run in runs[variant][threads])
    median = {v: {t: med(v, t, "rate") for t in counts} for v in variants}
    reference = "before" if "before" in variants else "one_by_one" if "one_by_one" in variants else None
    rows = []
    for t in counts:
        cells = [f"{median[v][t]:,.0f}/s ({med(v, t, 'cpu_us'):.0f} us CPU, {med(v, t, 'fsyncs'):.2f} fsyncs)"
                 for v in variants]
        ratio = f"{median['batched'][t] / median[reference][t]:.2f}x" if reference and "batched" in variants else ""
        rows.append(f"| {t} | " + " | ".join(cells) + f" | {ratio} |")
    result = {"command": " ".join(["python", "bench/group_commit.py", *sys.argv[1:]]), "machine": machine(),
              "runs": runs, "median": median, "load": loads, "vector": args.vector, "baseline": args.baseline}
    shape = f"single-row upserts{f' with a vector[{args.vector}]' if args.vector else ''}"
    body = f"""Command: `{result['command']}` ({result['machine']['cpus']} CPUs); load {min(loads):.1f}-{max(loads):.1f}
(1-minute loadavg over the run); {shape}, WAL sync on; a fresh store and process per measurement, medians
of {args.rounds} rounds of {args.seconds:g} s, the variants alternating{f'; `before` = {args.baseline}' if args.baseline else ''}.

| committer threads | {' | '.join(variants)} | batched / {reference} |
|---|{'---|' * len(variants)}---|
{chr(10).join(rows)}
"""
    publish("group_commit", "Group commit: local commits/s with concurrent committers (bench/group_commit.py)",
            result, body, not args.no_write)


if __name__ == "__main__":
    main()
