"""Interleaved A/B of embedded sync(1) commits between two source trees, in one run.

Each tree gets a worker process (its own tree first on PYTHONPATH, so the worker and the two replica
processes it starts run that tree's code): an embedded sync(1) primary with two `knowledge serve --role
replica` processes on direct loopback links, and a local-only store beside it (bench/replication.py's
_open_primary). The coordinator alternates blocks between the workers, so machine noise hits both alike:
blocks of paired single-row commits (local, then sync(1), order alternating; the added latency is sync(1)
minus its paired local commit), then group-commit phases (`threads` committers for `seconds`), with the
worker's CPU seconds per commit (process time: committers, replication driver, gRPC threads) and a
replica process's. A tree needs `knowledge/replication` to resolve to its own `replication/` folder
(for a git worktree: `ln -s ../replication knowledge/replication` in it).

    python -m bench.replication_ab OLD_TREE NEW_TREE [--blocks 6] [--block 50] [--phases 2]
                                   [--threads 64] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any


def _worker() -> None:
    """One tree's side: read JSON commands on stdin, answer one JSON line each."""
    import shutil
    import tempfile
    import threading

    sys.path[0] = os.getcwd()  # the tree, not this file's folder
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from replication_cluster import Cluster, seed_store

    import knowledge
    from bench.replication import ZONES, _open_primary, _process_cpu_s
    from knowledge.replication.transport import control

    root = tempfile.mkdtemp(prefix="bench-replication-ab-", dir=os.environ.get("AB_WORKDIR") or None)
    cluster = Cluster(os.path.join(root, "c"), ZONES, "sync(1)", seed_store, direct=True)
    local_path = os.path.join(root, "local")
    shutil.copytree(cluster.data("a"), local_path)
    local = knowledge.open(local_path)
    store, replicator, actions = _open_primary(cluster, "sync(1)")
    sessions = {"local": local.session(), "sync": store.session()}
    counter = [0]

    def commit(name: str) -> None:
        counter[0] += 1
        tx = sessions[name].transaction()
        tx.upsert_nodes("Doc", [{"name": f"k{counter[0]}", "n": 1}])
        tx.commit()

    def rate(name: str, threads: int, seconds: float) -> dict[str, float]:
        done = [0] * threads
        stop = threading.Event()

        def run(k: int) -> None:
            session = sessions[name]
            i = 0
            while not stop.is_set():
                tx = session.transaction()
                tx.upsert_nodes("Doc", [{"name": f"g{name}{k}-{i}-{counter[0]}", "n": 1}])
                tx.commit()
                i += 1
                done[k] += 1
        workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        replica_cpu = _process_cpu_s(cluster.procs["b"].pid)
        wal = (local if name == "local" else store).engine.wal
        fsyncs = wal.fsync_count
        before, cpu, start = sum(done), time.process_time(), time.perf_counter()
        time.sleep(seconds)
        count, cpu = sum(done) - before, time.process_time() - cpu
        fsyncs = wal.fsync_count - fsyncs
        elapsed = time.perf_counter() - start
        replica_cpu = _process_cpu_s(cluster.procs["b"].pid) - replica_cpu
        stop.set()
        for w in workers:
            w.join(60)
        counter[0] += 1
        return {"writes_per_s": count / elapsed, "cpu_ms_per_commit": cpu * 1000 / max(1, count),
                "replica_cpu_ms_per_commit": replica_cpu * 1000 / max(1, count),
                "records_per_fsync": count / max(1, fsyncs)}

    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "seq":
                out: dict[str, Any] = {"local": [], "sync": [], "added": []}
                for i in range(cmd["n"]):
                    pair = {}
                    for name in (("sync", "local") if i % 2 else ("local", "sync")):
                        start = time.perf_counter()
                        commit(name)
                        pair[name] = (time.perf_counter() - start) * 1000
                    out["local"].append(pair["local"])
                    out["sync"].append(pair["sync"])
                    out["added"].append(pair["sync"] - pair["local"])
            elif op == "cpu":
                out = {}
                for name in ("local", "sync"):
                    replica, cpu = _process_cpu_s(cluster.procs["b"].pid), time.process_time()
                    for _ in range(cmd["n"]):
                        commit(name)
                    out[name] = (time.process_time() - cpu) * 1000 / cmd["n"]
                    if name == "sync":
                        out["replica"] = (_process_cpu_s(cluster.procs["b"].pid) - replica) * 1000 / cmd["n"]
            elif op == "rate":
                out = rate(cmd["name"], cmd["threads"], cmd["seconds"])
            elif op == "profile":
                out = {"primary": replicator.status()["profile"],
                       "replica": control(cluster.address("b"), "status")["profile"]}
                rtts = []
                for _ in range(50):
                    start = time.perf_counter()
                    control(cluster.address("b"), "wait", min_lsn=0)
                    rtts.append((time.perf_counter() - start) * 1000)
                out["grpc_unary_rtt_p50"] = statistics.median(rtts)
            elif op == "quit":
                break
            else:
                out = {"error": f"unknown op {op}"}
            print(json.dumps(out), flush=True)
    finally:
        for action in actions:
            action()
        local.close()
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


class _Side:
    def __init__(self, name: str, tree: str, workdir: str | None = None) -> None:
        self.name, self.tree = name, os.path.abspath(tree)
        env = dict(os.environ, PYTHONPATH=self.tree, AB_WORKDIR=workdir or "")
        # this file runs as the worker in either tree (an old tree need not have it)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], cwd=self.tree,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.data: dict[str, Any] = {"added": [], "local": [], "sync": [], "rate": {"local": [], "sync": []}}

    def ask(self, **cmd: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} ended")
            if line.startswith("{"):
                return json.loads(line)

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} did not start")
            if line.startswith("{") and json.loads(line).get("ready"):
                return


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--phases", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workdir", help="where the stores go (default: the temp folder); e.g. /dev/shm, "
                                           "where an fsync costs nothing, to see the CPU bound alone")
    parser.add_argument("--only", choices=("old", "new"), help="run one side only")
    args = parser.parse_args()
    if args.worker:
        _worker()
        return
    old, new = args.trees
    sides = [_Side(name, tree, args.workdir) for name, tree in (("old", old), ("new", new))
             if args.only in (None, name)]
    load = [os.getloadavg()[0]]
    try:
        for side in sides:
            side.wait_ready()
            side.ask(op="seq", n=20)  # warm-up
        for b in range(args.blocks):
            for side in (sides if b % 2 == 0 else sides[::-1]):
                out = side.ask(op="seq", n=args.block)
                for key in ("added", "local", "sync"):
                    side.data[key] += out[key]
        load.append(os.getloadavg()[0])
        for side in sides:
            side.data["profile"] = side.ask(op="profile")
        for b in range(2):
            for side in (sides if b % 2 == 0 else sides[::-1]):
                side.data.setdefault("cpu", []).append(side.ask(op="cpu", n=100))
        for b in range(args.phases):
            for side in (sides if b % 2 == 0 else sides[::-1]):
                for name in (("local", "sync") if b % 2 == 0 else ("sync", "local")):
                    side.data["rate"][name].append(side.ask(op="rate", name=name, threads=args.threads,
                                                            seconds=args.seconds))
        load.append(os.getloadavg()[0])
    finally:
        for side in sides:
            try:
                side.ask(op="quit")
            except Exception:  # noqa: BLE001 - it may have ended already
                pass
            side.proc.wait(120)
    result: dict[str, Any] = {"load": load, "sides": {}}
    for side in sides:
        d = side.data
        prof = d["profile"]
        cpu = d["cpu"][-1]
        summary = {
            "tree": side.tree, "commits": len(d["added"]),
            "added_p50_ms": _p(d["added"], 0.5), "added_p99_ms": _p(d["added"], 0.99),
            "local_p50_ms": _p(d["local"], 0.5), "sync_p50_ms": _p(d["sync"], 0.5),
            "sync_p99_ms": _p(d["sync"], 0.99),
            "ack_rtt_ms_p50": prof["primary"]["ack_rtt_ms_p50"], "ack_arrival_ms_p50": prof["primary"]["ack_arrival_ms_p50"],
            "replica_ack_ms_p50": prof["replica"]["replica_ack_ms_p50"], "fsync_ms_mean": prof["primary"]["fsync_ms_mean"],
            "grpc_unary_rtt_p50": prof["grpc_unary_rtt_p50"],
            "cpu_ms_sequential": cpu,
            "rate": {name: [round(r["writes_per_s"]) for r in rs] for name, rs in d["rate"].items()},
            "cpu_ms_group": {name: [round(r["cpu_ms_per_commit"], 3) for r in rs] for name, rs in d["rate"].items()},
            "replica_cpu_ms_group": [round(r["replica_cpu_ms_per_commit"], 3) for r in d["rate"]["sync"]],
            "records_per_fsync": {name: [round(r["records_per_fsync"], 1) for r in rs] for name, rs in d["rate"].items()},
        }
        result["sides"][side.name] = summary
    print(json.dumps(result, indent=1))
    for name, s in result["sides"].items():
        print(f"{name}: added p50 {s['added_p50_ms']:.2f} ms (p99 {s['added_p99_ms']:.2f}), local p50 "
              f"{s['local_p50_ms']:.2f}, sync p50 {s['sync_p50_ms']:.2f}; ack rtt {s['ack_rtt_ms_p50']:.2f} "
              f"(arrival {s['ack_arrival_ms_p50']:.2f}), replica {s['replica_ack_ms_p50']:.2f}, unary "
              f"{s['grpc_unary_rtt_p50']:.2f}; cpu/seq commit {s['cpu_ms_sequential']}; group writes/s "
              f"{s['rate']}, cpu ms/commit {s['cpu_ms_group']}, replica {s['replica_cpu_ms_group']}, records per "
              f"primary fsync {s['records_per_fsync']}")
    print(f"load {', '.join(f'{x:.2f}' for x in load)}")


if __name__ == "__main__":
    main()
