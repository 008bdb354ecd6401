"""Replication benchmark: real `knowledge serve --role` processes (three zones) on loopback.

Measures, in one run: single-row commit latency and group-commit throughput (many concurrent committers)
through the gRPC client for a local-only server (the baseline: `knowledge serve` without replication)
and for the policies async, sync(1), zones(2) and all; replica lag under load (LSNs behind, and the ms
until the replica has applied what the primary had committed at the sample); failover through a real
etcd (primary SIGKILLed -> a commit accepted again on the successor) and acknowledged writes lost;
snapshot transfer: a new replica (empty directory) joins after the primary's WAL retention limit let a
checkpoint drop the log, so it is sent a snapshot; its rate (MB/s, the replica's fetch: backup stream,
checksums, fsync) against a local copy of the same store directory in the same run (the baseline).

    python -m bench.replication [--quick] [--write-results] [--snapshot-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from replication_cluster import (  # noqa: E402 - the tests' cluster helpers
    Cluster,
    Etcd,
    Writer,
    etcd_available,
    free_port,
    knowledge_command,
    missing_keys,
    seed_store,
    wait_primary,
)

from bench.common import machine, publish  # noqa: E402
from bench.measure import series_ms  # noqa: E402
from knowledge.errors import KnowledgeError  # noqa: E402

ZONES = {"a": "z1", "b": "z2", "c": "z3"}
POLICIES = ("async", "sync(1)", "zones(2)", "all")


def _latencies(client: Any, count: int, prefix: str) -> list[float]:
    session = client.session()
    out = []
    for i in range(count + 10):
        start = time.perf_counter()
        tx = session.transaction()
        tx.upsert_nodes("Doc", [{"name": f"{prefix}{i}", "n": i}])
        tx.commit()
        if i >= 10:
            out.append((time.perf_counter() - start) * 1000)
    return out


def _throughput(connect: Any, clients: int, seconds: float, prefix: str) -> float:
    done = [0] * clients
    stop = threading.Event()

    def run(k: int) -> None:
        with connect() as client:
            session = client.session()
            i = 0
            while not stop.is_set():
                tx = session.transaction()
                tx.upsert_nodes("Doc", [{"name": f"{prefix}{k}-{i}", "n": i}])
                tx.commit()
                i += 1
                done[k] += 1

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # warm-up: channels open
    before = sum(done)
    start = time.perf_counter()
    time.sleep(seconds)
    count = sum(done) - before
    elapsed = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join(60)
    return count / elapsed


def _local(root: str, commits: int, clients: int, seconds: float) -> dict[str, Any]:
    import knowledge
    path = os.path.join(root, "local")
    token = seed_store(path)
    port = free_port()
    proc = subprocess.Popen([*knowledge_command(), "serve", "--data", path, "--listen", f"127.0.0.1:{port}",
                             "--no-audit"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while "listening on" not in (proc.stdout.readline() or "listening on"):
            pass

        def connect() -> Any:
            return knowledge.connect(f"127.0.0.1:{port}", token=token, timeout_s=60)
        with connect() as client:
            latencies = _latencies(client, commits, "l")
        return {"latency": series_ms(latencies), "writes_per_s": _throughput(connect, clients, seconds, "lt")}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _lag(cluster: Cluster, seconds: float) -> tuple[list[float], list[dict[str, float]]]:
    """Lag samples on replica b while a writer loads the primary a."""
    writer = Writer(cluster, "a", prefix="lag").start()
    lags_ms, samples = [], []
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            primary = cluster.status("a")
            sampled = time.monotonic()
            target = primary["commit_lsn"]
            lag_lsn = target - cluster.status("b")["applied_lsn"]
            while cluster.status("b")["applied_lsn"] < target and time.monotonic() - sampled < 10:
                time.sleep(0.002)
            lag_ms = (time.monotonic() - sampled) * 1000
            lags_ms.append(lag_ms)
            samples.append({"t_s": round(sampled - start, 3), "lag_ms": round(lag_ms, 3), "lag_lsn": max(0, lag_lsn)})
            time.sleep(0.1)
    finally:
        writer.finish()
    return lags_ms, samples


def _policy(root: str, policy: str, commits: int, clients: int, seconds: float, lag_s: float) -> dict[str, Any]:
    cluster = Cluster(os.path.join(root, policy.replace("(", "").replace(")", "")), ZONES, policy, seed_store,
                      direct=True)
    try:
        cluster.start("a", "primary")
        cluster.start("b", "replica", primary="a")
        cluster.start("c", "replica", primary="a")
        cluster.wait_ready()
        cluster.wait_for("a primary", lambda: cluster.writable("a"))
        with cluster.client("a") as client:
            latencies = _latencies(client, commits, "p")
        result = {"latency": series_ms(latencies),
                  "writes_per_s": _throughput(lambda: cluster.client("a"), clients, seconds, "t")}
        if lag_s:
            result["lag_ms"], result["lag_samples"] = _lag(cluster, lag_s)
        return result
    finally:
        cluster.close()


def _open_primary(cluster: Cluster, policy: str) -> tuple[Any, Any, list[Any]]:
    """Node a of `cluster` as an embedded primary (the store in this process, its Replication service on
    a's port), b and c as `knowledge serve --role replica` processes: (store, replicator, cleanup actions)."""
    import dataclasses
    from concurrent import futures

    import grpc

    import knowledge
    from knowledge.replication.config import NodeConfig
    from knowledge.replication.driver import Replicator
    from knowledge.replication.policy import parse_policy
    from knowledge.replication.transport import Links, handler
    from knowledge.server.replication_serve import parse_members

    store = knowledge.open(cluster.data("a"), config=dataclasses.replace(knowledge.StoreConfig(), replicated=True))
    cluster.start("b", "replica", primary="a")
    cluster.start("c", "replica", primary="a")
    cluster.wait_ready("b", "c")
    zones, addresses = parse_members(cluster.members("a"))
    links = Links(addresses, "a")
    replicator = Replicator(store.engine, NodeConfig("a", zones, parse_policy(policy)), addresses, links.send)
    links.bind(replicator.deliver)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler(replicator),))
    server.add_insecure_port(cluster.address("a"))
    server.start()
    replicator.start(campaign=True)
    deadline = time.monotonic() + 120
    while replicator.primary_address() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return store, replicator, [lambda: server.stop(0), replicator.close, links.close, store.close]


def _commit_rate(commit: Any, threads: int, seconds: float, prefix: str) -> float:
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


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _interleaved(root: str, policy: str, commits: int, threads: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Embedded local-only and embedded `policy` primary (replicas as processes, direct loopback links) open
    side by side in this process: single-row commits alternate between them (so machine noise hits both
    alike), then `rounds` alternating throughput phases of `threads` committers each."""
    import knowledge
    from knowledge.replication.transport import control

    cluster = Cluster(os.path.join(root, "interleaved"), ZONES, policy, seed_store, direct=True)
    local_path = os.path.join(root, "interleaved-local")
    shutil.copytree(cluster.data("a"), local_path)
    local = knowledge.open(local_path)
    cleanup: list[Any] = [local.close]
    try:
        store, replicator, actions = _open_primary(cluster, policy)
        cleanup = actions + cleanup
        sessions = {"local": local.session(), policy: store.session()}

        def committer(name: str) -> Any:
            session = sessions[name]

            def commit(key: str) -> None:
                tx = session.transaction()
                tx.upsert_nodes("Doc", [{"name": key, "n": 1}])
                tx.commit()
            return commit
        commit = {name: committer(name) for name in sessions}
        latencies: dict[str, list[float]] = {name: [] for name in sessions}
        added: list[float] = []
        for i in range(commits + 10):
            pair = {}
            for name in ((policy, "local") if i % 2 else ("local", policy)):
                start = time.perf_counter()
                commit[name](f"s{i}")
                pair[name] = (time.perf_counter() - start) * 1000
            if i >= 10:
                for name, ms in pair.items():
                    latencies[name].append(ms)
                added.append(pair[policy] - pair["local"])
        profile = {"primary": replicator.status()["profile"],
                   "replica": control(cluster.address("b"), "status")["profile"]}
        rtts = []
        for _ in range(50):  # a bare gRPC unary round trip to a replica, for scale
            start = time.perf_counter()
            control(cluster.address("b"), "wait", min_lsn=0)  # readable at once: no wait
            rtts.append((time.perf_counter() - start) * 1000)
        profile["grpc_unary_rtt"] = series_ms(rtts)
        # CPU per sequential commit, in separate phases: this process (committer, loop, gRPC threads)
        # and replica b's process (the other replica does the same work)
        cpu_sequential: dict[str, float] = {}
        for name in ("local", policy):
            replica_before, cpu = _process_cpu_s(cluster.procs["b"].pid), time.process_time()
            for i in range(commits):
                commit[name](f"c{name}{i}")
            cpu_sequential[name] = (time.process_time() - cpu) * 1000 / commits
            if name == policy:
                cpu_sequential["replica"] = (_process_cpu_s(cluster.procs["b"].pid) - replica_before) * 1000 / commits
        rates: dict[str, list[float]] = {name: [] for name in sessions}
        cpu_ms: dict[str, list[float]] = {name: [] for name in sessions}  # this process's CPU per commit
        fsyncs_before = store.engine.wal.fsync_count
        for r in range(rounds):
            for name in ((policy, "local") if r % 2 else ("local", policy)):
                cpu, wall = time.process_time(), time.perf_counter()
                rates[name].append(_commit_rate(commit[name], threads, seconds, f"g{r}-"))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                cpu_ms[name].append(cpu * 1000 / max(1.0, rates[name][-1] * wall))
        profile["group_commit"] = replicator.status()["profile"]
        profile["group_commit_fsyncs"] = store.engine.wal.fsync_count - fsyncs_before
        return {"latency": {name: series_ms(values) for name, values in latencies.items()},
                "added_ms": series_ms(added), "writes_per_s": rates,
                "writes_per_s_median": {name: sorted(v)[len(v) // 2] for name, v in rates.items()},
                "cpu_ms_per_commit": cpu_ms, "cpu_ms_per_sequential_commit": cpu_sequential,
                "profile": profile, "threads": threads}
    finally:
        for action in cleanup:
            action()
        cluster.close()


def _failover(root: str, trials: int) -> dict[str, Any]:
    if not etcd_available():
        return {"available": False, "reason": "etcd-server is not installed"}
    etcd = Etcd(os.path.join(root, "etcd"))
    cluster = Cluster(os.path.join(root, "failover"), ZONES, "sync(1)", seed_store, direct=True)
    cluster.extra_args = ["--etcd", etcd.address, "--etcd-ttl", "2"]
    times, lost, acked_total = [], 0, 0
    events: list[dict[str, Any]] = []
    acked_at: list[float] = []
    timeline: list[dict[str, float]] = []
    origin = time.monotonic()
    try:
        for n in ZONES:
            cluster.start(n, "replica")
        cluster.wait_ready()
        acked: list[str] = []
        for trial in range(trials):
            primary = wait_primary(cluster)
            writer = Writer(cluster, primary, prefix=f"f{trial}-").start()
            cluster.wait_for("writes", lambda: len(writer.acked) >= 20)  # noqa: B023 - used at once
            killed_at = time.monotonic()
            cluster.kill(primary)
            writer.finish()
            acked += writer.acked
            acked_at += writer.acked_at
            events.append({"t_s": round(killed_at - origin, 3), "name": f"trial {trial}: {primary} killed"})
            successor = wait_primary(cluster, [n for n in ZONES if n != primary])
            while True:  # writes accepted again: one commit returns on the successor
                if time.monotonic() - killed_at > 120:
                    raise AssertionError(f"{successor} took no write for 120 s after {primary} was killed: "
                                         f"{cluster._safe_status(successor)}\n{cluster.log(successor)[-1500:]}")
                try:
                    with cluster.client(successor) as client:
                        tx = client.session().transaction()
                        tx.upsert_nodes("Doc", [{"name": f"probe{trial}", "n": 0}])
                        tx.commit()
                    break
                except KnowledgeError:
                    time.sleep(0.05)
            times.append(time.monotonic() - killed_at)
            events.append({"t_s": round(time.monotonic() - origin, 3), "name": f"{successor} accepts writes"})
            lost = len(missing_keys(cluster, successor, acked))
            acked_total = len(acked)
            cluster.start(primary, "replica")
            cluster.wait_ready(primary)
        end = time.monotonic() - origin
        bins = [0] * (int(end / 0.25) + 1)
        for t in acked_at:
            bins[min(len(bins) - 1, int((t - origin) / 0.25))] += 1
        timeline = [{"t_s": round(i * 0.25, 2), "writes_per_s": count / 0.25} for i, count in enumerate(bins)]
    finally:
        cluster.close()
        etcd.close()
    return {"available": True, "trials": trials, "failover_s": series_ms([t * 1000 for t in times]),
            "failover_s_max": max(times) if times else None, "acked": acked_total, "acked_lost": lost,
            "timeline": timeline, "events": events}


def _copy_rate(source: str, target: str) -> tuple[int, float]:
    """(bytes, seconds) to copy `source` to `target` and fsync every file: the local-disk baseline."""
    start = time.perf_counter()
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("LOCK"))
    size = 0
    for folder, _, names in os.walk(target):
        for name in names:
            path = os.path.join(folder, name)
            size += os.path.getsize(path)
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    return size, time.perf_counter() - start


def _snapshot(root: str, docs: int, runs: int) -> dict[str, Any]:
    """Snapshot transfer to a new replica, `runs` times (its directory emptied before each)."""
    cluster = Cluster(os.path.join(root, "snapshot"), ZONES, "async", seed_store, direct=True)  # c: a replica
    # small segments and a 1-byte limit: the checkpoint keeps only the live segment, so a new member needs a snapshot
    cluster.extra_args = ["--wal-segment-bytes", str(256 << 10), "--wal-retention-max-bytes", "1"]
    transfers: list[dict[str, float]] = []
    copies: list[float] = []
    try:
        shutil.rmtree(cluster.data("b"))
        cluster.start("a", "primary")
        cluster.start("c", "replica", primary="a")
        cluster.wait_ready("a", "c")
        cluster.wait_for("a primary", lambda: cluster.writable("a"))
        with cluster.client("a") as client:
            session = client.session()
            for first in range(0, docs, 1000):
                tx = session.transaction()
                tx.upsert_nodes("Doc", [{"name": f"s{i}", "n": i} for i in range(first, min(docs, first + 1000))])
                tx.commit()
            client.checkpoint()
        for run in range(runs):
            shutil.rmtree(cluster.data("b"), ignore_errors=True)
            cluster.start("b", "replica", primary="a")
            cluster.wait_ready("b")
            cluster.wait_for("b to install the snapshot", lambda: _installed(cluster, "b"), 180)
            transfers.append(cluster.status("b")["snapshots"][-1])
            cluster.kill("b")
            size, seconds = _copy_rate(cluster.data("a"), os.path.join(root, f"copy{run}"))
            copies.append(size / 1e6 / seconds)
            shutil.rmtree(os.path.join(root, f"copy{run}"), ignore_errors=True)
    finally:
        cluster.close()
    rates = sorted(t["mb_per_s"] for t in transfers)
    copies.sort()
    return {"available": True, "docs": docs, "runs": runs, "transfers": transfers,
            "mb_per_s_median": rates[len(rates) // 2], "bytes": transfers[-1]["bytes"],
            "install_s_median": sorted(t["total_s"] - t["fetch_s"] for t in transfers)[len(transfers) // 2],
            "local_copy_mb_per_s_median": copies[len(copies) // 2],
            "ratio_to_local_copy": rates[len(rates) // 2] / copies[len(copies) // 2]}


def _installed(cluster: Cluster, n: str) -> bool:
    """Whether member n has installed a snapshot; AssertionError at once when its replication failed."""
    status = cluster.status(n)
    if status.get("failure"):
        raise AssertionError(f"{n}'s replication failed: {status['failure']}\n{cluster.log(n)[-2000:]}")
    return bool(status["snapshots"])


def _snapshot_line(t: dict[str, Any]) -> str:
    if not t.get("available"):
        return f"Snapshot transfer rate: not measured ({t.get('reason')})."
    return (f"Snapshot transfer to a new replica ({t['docs']} docs, {t['bytes'] / 1e6:.1f} MB; median of "
            f"{t['runs']} runs): {t['mb_per_s_median']:.1f} MB/s over gRPC (chunks checked, files fsynced), "
            f"then {t['install_s_median']:.2f} s to install and reopen; a local copy of the same store "
            f"directory with fsync in the same run: {t['local_copy_mb_per_s_median']:.1f} MB/s "
            f"(ratio {t['ratio_to_local_copy']:.2f}).")


def suite(quick: bool = True, workdir: str | None = None) -> dict[str, Any]:
    """Run everything (small sizes when quick); the result shape bench/suites/replication_suite.py reads."""
    commits, clients, seconds, lag_s, trials = (100, 16, 3.0, 3.0, 2) if quick else (400, 64, 8.0, 8.0, 10)
    root = tempfile.mkdtemp(prefix="bench-replication-", dir=workdir)
    try:
        load_before = os.getloadavg()[0]
        local = _local(root, commits, clients, seconds)
        policies = {p: _policy(root, p, commits, clients, seconds, lag_s if p == "sync(1)" else 0) for p in POLICIES}
        embedded = _interleaved(root, "sync(1)", commits, 4 * clients, seconds, 3 if quick else 5)
        failover = _failover(root, trials)
        snapshot = _snapshot(root, 20_000 if quick else 200_000, 3)
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lag = policies["sync(1)"].pop("lag_ms", [])
    samples = policies["sync(1)"].pop("lag_samples", [])
    base_p50 = local["latency"]["p50_ms"]
    ratios = {f"{p} p50 / local p50": policies[p]["latency"]["p50_ms"] / base_p50 for p in POLICIES}
    ratios.update({f"{p} writes/s / local writes/s": policies[p]["writes_per_s"] / local["writes_per_s"]
                   for p in POLICIES})
    return {"baseline": {"name": "local", "description": "the same commits to a non-replicated knowledge serve"},
            "ratios": ratios, "local": local,
            "commit_policies": {"local": local["latency"], **{p: policies[p]["latency"] for p in POLICIES}},
            "writes_per_s": {"local": local["writes_per_s"], **{p: policies[p]["writes_per_s"] for p in POLICIES}},
            "added_p50_ms": {p: policies[p]["latency"]["p50_ms"] - base_p50 for p in POLICIES},
            "embedded": embedded,
            "failover": failover, "lag": {"series": series_ms(lag), "samples": samples},
            "snapshot_transfer": snapshot,
            "sizes": {"commits": commits, "clients": clients, "seconds": seconds, "failover_trials": trials},
            "load": {"before": load_before, "after": load_after}, "machine": machine()}


def _markdown(r: dict[str, Any]) -> str:
    lines = [f"Three `knowledge serve --role` processes in zones z1, z2, z3 on loopback; one gRPC client; "
             f"{r['sizes']['commits']} sequential single-row commits, then {r['sizes']['clients']} concurrent "
             f"committers for {r['sizes']['seconds']} s. Load average {r['load']['before']:.1f} -> "
             f"{r['load']['after']:.1f} on {r['machine']['cpus']} CPUs (shared machine: absolute figures are "
             f"noisy; the ratios to the local-only server in the same run are the result).", "",
             "| commit policy | p50 ms | p99 ms | added p50 ms | writes/s (group commit) |", "|---|---|---|---|---|"]
    for name, series in r["commit_policies"].items():
        added = "-" if name == "local" else f"{r['added_p50_ms'][name]:+.2f}"
        lines.append(f"| {name} | {series['p50_ms']:.2f} | {series['p99_ms']:.2f} | {added} | "
                     f"{r['writes_per_s'][name]:.0f} |")
    e = r["embedded"]
    lat, cpu, rates = e["latency"], e["cpu_ms_per_sequential_commit"], e["writes_per_s"]
    lines += ["", f"The store in the benchmark's process (no client RPC), replicas as processes on direct loopback "
              f"links; a local-only store open beside it, single-row commits alternating between the two "
              f"({r['sizes']['commits']} each), then {len(rates['local'])} alternating {r['sizes']['seconds']} s "
              f"phases of {e['threads']} concurrent committers (group commit):", "",
              "| embedded | p50 ms | p99 ms | writes/s (median; each phase) | CPU ms per sequential commit |",
              "|---|---|---|---|---|"]
    for name in ("local", "sync(1)"):
        lines.append(f"| {name} | {lat[name]['p50_ms']:.2f} | {lat[name]['p99_ms']:.2f} | "
                     f"{e['writes_per_s_median'][name]:.0f} ({', '.join(f'{x:.0f}' for x in rates[name])}) | "
                     f"{cpu[name]:.2f} |")
    p = e["profile"]
    lines += ["", f"sync(1) adds p50 {e['added_ms']['p50_ms']:.2f} ms per commit (paired with the local commit "
              f"before or after it; p99 {e['added_ms']['p99_ms']:.2f}). Where it goes: primary WAL fsync mean "
              f"{p['primary']['fsync_ms_mean']:.2f} ms (the Appends leave before it); Append -> AppendAck "
              f"p50 {p['primary']['ack_rtt_ms_p50']:.2f} ms (to the ack's arrival "
              f"{p['primary']['ack_arrival_ms_p50']:.2f}), of which the replica's Append arrival -> ack sent "
              f"(append, fsync) p50 {p['replica']['replica_ack_ms_p50']:.2f} ms; a bare gRPC unary round trip "
              f"p50 {p['grpc_unary_rtt']['p50_ms']:.2f} ms. CPU per sequential commit is this process's (committer, "
              f"replication loop, gRPC threads; phases apart); a replica process spends {cpu['replica']:.2f} ms. "
              f"Under group commit: {p['group_commit']['records_per_fsync']:.1f} records "
              f"per primary fsync."]
    f = r["failover"]
    lines.append("")
    if f.get("available"):
        lines.append(f"Failover through etcd (sync(1), lease TTL 2 s), {f['trials']} SIGKILL trials: primary killed "
                     f"-> a commit accepted on the successor in p50 {f['failover_s']['p50_ms'] / 1000:.2f} s, max "
                     f"{f['failover_s_max']:.2f} s; acknowledged writes lost: {f['acked_lost']} of {f['acked']}.")
    else:
        lines.append(f"Failover: not measured ({f.get('reason')}).")
    lag = r["lag"]["series"]
    if lag.get("count"):
        lines.append(f"Replica lag under one writer (sync(1)): p50 {lag['p50_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms "
                     f"({lag['count']} samples; max {max(s['lag_lsn'] for s in r['lag']['samples'])} LSNs behind).")
    lines.append(_snapshot_line(r.get("snapshot_transfer", {})))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--snapshot-only", action="store_true", help="measure the snapshot transfer only")
    args = parser.parse_args()
    if args.snapshot_only:
        root = tempfile.mkdtemp(prefix="bench-replication-")
        try:
            load = os.getloadavg()[0]
            t = _snapshot(root, 20_000 if args.quick else 200_000, 3)
            t["load"] = {"before": load, "after": os.getloadavg()[0]}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        import json
        print(json.dumps(t, indent=1))
        print(_snapshot_line(t))
        return
    results = suite(quick=args.quick)
    publish("replication", "Replication (bench/replication.py)", results, _markdown(results), args.write_results)


if __name__ == "__main__":
    main()
