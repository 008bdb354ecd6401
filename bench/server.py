"""bench/server: get, search and retrieve through `knowledge serve` (a subprocess, loopback gRPC) with 1, 8
and 64 concurrent clients, against the embedded call on the same store in the same run; commit latency
through the server while 8 clients retrieve, against commit latency idle; a 64-client soak (errors and the
server's resident memory over time).

    python bench/server.py [--quick] [--soak-s 60] [--write-results]

Clients run in separate processes (8 processes; 64 clients = 8 threads in each), so the client side's
Python does not share the server's cores' GIL. The store: a synthetic GraphRAG corpus (documents ->
chunks with 384-d hashing embeddings, entities, relations), read as a non-admin principal. The server runs
as `knowledge serve` does by default (audit log on, written to files). Figures on a shared VM move with
its load, which the report records.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import machine, percentile, publish  # noqa: E402

OPS = ("get", "search", "retrieve")
ROUNDS = 3
CLIENTS = (1, 8, 64)
PROCESSES_MAX = 8
DIMENSION = 384
WORDS = ("river", "bridge", "castle", "forest", "harbor", "market", "temple", "valley", "tower", "garden",
         "mill", "mine", "library", "school", "station", "museum", "theater", "palace", "farm", "port")
NAMES = [f"{a} {b}" for a in ("Alder", "Birch", "Cedar", "Dunmore", "Elm", "Fairhaven", "Glen", "Hollis",
                              "Ivy", "Juniper") for b in ("Smith", "Stone", "Ward", "Vale", "Cross")]


# -- the store ----------------------------------------------------------------------------------------
def corpus(docs: int, seed: int = 7) -> list[Any]:
    from knowledge.graphrag import Document
    rng = random.Random(seed)
    out = []
    for i in range(docs):
        names = rng.sample(NAMES, 3)
        sentences = [f"{names[0]} built the {rng.choice(WORDS)} near the {rng.choice(WORDS)} in year {1700 + i % 300}.",
                     f"{names[1]} sold the {rng.choice(WORDS)} to {names[2]}.",
                     f"The {rng.choice(WORDS)} of {names[2]} stands by the {rng.choice(WORDS)}."]
        out.append(Document(f"doc{i}", " ".join(sentences), title=f"Record {i}", labels=["public"],
                            triples=[(names[0], "built near", names[1]), (names[1], "sold to", names[2])]))
    return out


def build(path: str, docs: int) -> dict[str, Any]:
    import knowledge
    from knowledge.embed import HashingEmbedder
    from knowledge.graphrag import NoExtractor, ingest
    embedder = HashingEmbedder(DIMENSION)
    with knowledge.open(path) as store:
        ingest(store.session(), corpus(docs), embedder=embedder, extractor=NoExtractor(), synonyms=False)
        store.create_principal("reader", read=["public"], write=["public"])
        token = store.issue_token("reader")
        store.define_node_type("Note", key="name", properties={"n": "int"})
        keys = store.session().scan("Chunk", columns=[]).column("_id").to_pylist()
        chunk_keys = [store.session().ref(i).key for i in keys[:2000]]
        store.checkpoint()
    rng = random.Random(3)
    questions = [f"who built the {rng.choice(WORDS)} near the {rng.choice(WORDS)} {rng.choice(NAMES)}"
                 for _ in range(200)]
    vectors = [v.tolist() for v in embedder.embed(questions)]
    return {"token": token, "keys": chunk_keys, "questions": questions, "vectors": vectors}


def operation(session: Any, op: str, work: dict[str, Any], i: int) -> None:
    if op == "echo":  # the bare transport: a grpcio echo server, no knowledge code on either side
        session.echo()
    elif op == "ping":  # the floor: a call that does next to nothing on the server (WhoAmI)
        _ = session.principal
    elif op == "get":
        session.get("Chunk", work["keys"][i % len(work["keys"])], columns=["text"])
    elif op == "search":
        session.search(work["vectors"][i % len(work["vectors"])], k=10, type="Chunk")
    elif op == "retrieve":
        j = i % len(work["questions"])
        session.retrieve(work["questions"][j], k=5, mode="hybrid", query_vector=work["vectors"][j])
    else:
        raise ValueError(op)


def timed(session: Any, op: str, work: dict[str, Any], count: int) -> list[float]:
    for i in range(min(50, count)):
        operation(session, op, work, i)
    out = []
    for i in range(count):
        start = time.perf_counter()
        operation(session, op, work, i)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def rounds(session: Any, work: dict[str, Any], calls: int, ops: tuple[str, ...] = OPS) -> dict[str, Any]:
    """Each op timed in ROUNDS interleaved rounds (so a burst of machine load hits all alike); per op the
    round with the median p50 (its p50 and p99) and every round's p50."""
    per_op: dict[str, list[dict[str, float]]] = {op: [] for op in ops}
    for _ in range(ROUNDS):
        for op in ops:
            per_op[op].append(stats_ms(timed(session, op, work, calls // (4 if op == "retrieve" else 1))))
    out = {}
    for op, runs in per_op.items():
        runs.sort(key=lambda r: r["p50_ms"])
        out[op] = {**runs[len(runs) // 2], "round_p50s_ms": [r["p50_ms"] for r in runs]}
    return out


def stats_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values), 3), "p99_ms": round(percentile(values, 0.99), 3),
            "min_ms": round(min(values), 3), "count": len(values)}


# -- the server and its clients ----------------------------------------------------------------------
class Server:
    def __init__(self, path: str, flags: tuple[str, ...] = ()) -> None:
        script = shutil.which("knowledge")
        command = [script] if script else [sys.executable, "-m", "knowledge.cli"]
        self.process = subprocess.Popen([*command, "serve", "--data", path, "--listen", "127.0.0.1:0", *flags],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"knowledge serve did not start: {line!r}")
        self.address = line.split()[2]

    def rss_mib(self) -> float:
        """Resident memory of the server and its read processes (`--read-processes`), together."""
        total = 0.0
        for pid in (self.process.pid, *child_pids(self.process.pid)):
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
            except (OSError, StopIteration):
                pass
        return total or float("nan")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=120)
        return self.process.returncode


ECHO_SERVER = """
import sys
from concurrent import futures
import grpc
handler = grpc.method_handlers_generic_handler(
    "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"listening on 127.0.0.1:{port}", flush=True)
sys.stdin.read()
server.stop(0)
"""


class EchoServer:
    """A bare grpcio unary echo server in its own process (the sync server, as `knowledge serve` uses): the
    loopback round trip with no knowledge code on either side, the floor every server figure stands on."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the echo server did not start: {line!r}")
        import grpc
        self.channel = grpc.insecure_channel(line.split()[2])
        self._echo = self.channel.unary_unary("/bench.Echo/Echo")

    def echo(self) -> None:
        self._echo(b"x" * 16, timeout=60)

    def close(self) -> None:
        self.channel.close()
        self.process.communicate(timeout=60)


class WithEcho:
    """A remote session that also answers `echo()` (operation "echo") from an EchoServer."""

    def __init__(self, session: Any, echo: EchoServer) -> None:
        self.session, self.echo = session, echo.echo

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def client_process(address: str, work: dict[str, Any], ops: list[str], threads: int, start: Any, ready: Any,
                   duration_s: float, seed: int, results: Any) -> None:
    """`threads` clients (each its own connection, connected and warmed up first, then counted in `ready`)
    calling `ops` in turn from the time the parent puts in `start` for `duration_s`."""
    import knowledge
    latencies: dict[str, list[float]] = {op: [] for op in ops}
    errors: list[str] = []
    lock = threading.Lock()
    cpu: list[float] = []  # process CPU seconds when the clock started

    def run(index: int) -> None:
        with knowledge.connect(address, token=work["token"], timeout_s=60) as client:
            session = client.session()
            for op in ops:  # connect and warm up before the clock starts
                operation(session, op, work, index)
            i = seed * 1000 + index * 97
            local: dict[str, list[float]] = {op: [] for op in ops}
            with ready.get_lock():
                ready.value += 1
            while start.value == 0.0:
                time.sleep(0.002)
            start_at = start.value
            while time.time() < start_at:
                time.sleep(0.001)
            with lock:
                if not cpu:  # the process's CPU clock as the first client starts
                    cpu.append(time.process_time())
            end = start_at + duration_s
            while time.time() < end:
                op = ops[i % len(ops)]
                started = time.perf_counter()
                try:
                    operation(session, op, work, i)
                except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                local[op].append((time.perf_counter() - started) * 1e3)
                i += 1
            with lock:
                for op in ops:
                    latencies[op].extend(local[op])

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put({"latencies": latencies, "errors": errors,
                 "cpu_s": time.process_time() - cpu[0] if cpu else 0.0})


def process_cpu_s(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system) process `pid` (and, with `children`, its child processes: a server's read
    processes) has used so far."""
    total = 0.0
    for one in (pid, *(child_pids(pid) if children else ())):
        try:
            with open(f"/proc/{one}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def child_pids(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy so far (/proc/stat), whoever ran."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def run_clients(address: str, work: dict[str, Any], ops: list[str], clients: int, duration_s: float,
                on_tick: Any = None, on_start: Any = None, server_pid: int | None = None) -> dict[str, Any]:
    """`clients` concurrent clients for `duration_s`: ops/s, latency percentiles, errors; the CPU the clients
    used per call (and, given `server_pid`, the server's) and how busy the machine's cores were meanwhile."""
    context = multiprocessing.get_context("spawn")
    processes = min(clients, PROCESSES_MAX)
    threads = clients // processes
    queue = context.Queue()
    start, ready = context.Value("d", 0.0), context.Value("i", 0)
    children = [context.Process(target=client_process, args=(address, work, ops, threads, start, ready, duration_s,
                                                               p, queue)) for p in range(processes)]
    for child in children:
        child.start()
    deadline = time.time() + 300
    while ready.value < processes * threads:  # every client connected and warmed up
        if time.time() > deadline:
            raise RuntimeError(f"only {ready.value} of {processes * threads} clients became ready")
        time.sleep(0.05)
    start_at = time.time() + 0.2
    start.value = start_at
    if on_start is not None:
        on_start()
    while time.time() < start_at:
        time.sleep(0.001)
    server_cpu, busy = (process_cpu_s(server_pid) if server_pid else 0.0), machine_busy_s()
    ticks = []
    while time.time() < start_at + duration_s:
        time.sleep(min(0.5, max(0.0, start_at + duration_s - time.time())))
        if on_tick is not None and time.time() >= start_at:
            ticks.append((time.time() - start_at, on_tick()))
    server_cpu, busy = (process_cpu_s(server_pid) - server_cpu if server_pid else 0.0), machine_busy_s() - busy
    parts = [queue.get(timeout=300) for _ in children]
    for child in children:
        child.join(60)
    out: dict[str, Any] = {"clients": clients, "duration_s": duration_s,
                           "errors": sum(len(p["errors"]) for p in parts),
                           "error_examples": [e for p in parts for e in p["errors"]][:3], "ticks": ticks}
    calls = 0
    for op in ops:
        values = [v for p in parts for v in p["latencies"][op]]
        calls += len(values)
        out[op] = {"ops_per_s": round(len(values) / duration_s, 1), **(stats_ms(values) if values else {})}
    out["cpu"] = {"client_ms_per_call": round(1e3 * sum(p["cpu_s"] for p in parts) / max(1, calls), 3),
                  "machine_busy_cores": round(busy / duration_s, 2)}
    if server_pid:
        out["cpu"]["server_ms_per_call"] = round(1e3 * server_cpu / max(1, calls), 3)
        out["cpu"]["server_cores"] = round(server_cpu / duration_s, 2)
    return out


def commit_latency(address: str, token: str, count: int) -> list[float]:
    import knowledge
    with knowledge.connect(address, token=token) as client:
        session = client.session()
        out = []
        for i in range(count):
            start = time.perf_counter()
            session.transaction().upsert_nodes("Note", [{"name": f"c{time.time_ns()}-{i}", "n": i,
                                                         "_labels": ["public"]}]).commit()
            out.append((time.perf_counter() - start) * 1e3)
        return out


# -- the run -----------------------------------------------------------------------------------------
def measure(quick: bool, workdir: str, soak_s: float | None = None, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    import knowledge
    docs, calls, duration_s = (300, 100, 3.0) if quick else (2000, 400, 10.0)
    soak_s = soak_s if soak_s is not None else (10.0 if quick else 60.0)
    path = os.path.join(workdir, "server-bench.store")
    started = time.time()
    work = build(path, docs)
    results: dict[str, Any] = {"machine": machine(), "load_before": list(os.getloadavg()), "docs": docs,
                               "build_s": round(time.time() - started, 1), "embedded": {}, "remote": {}}
    import faiss
    faiss.omp_set_num_threads(1)  # as `knowledge serve` runs it (--faiss-threads 1): the same scan code
    with knowledge.open(path, create=False) as store:  # the embedded baseline, same principal, same calls
        session = store.session("reader")
        results["embedded"] = rounds(session, work, calls)
        results["embedded"]["commit"] = stats_ms(_embedded_commits(store, calls))
    server, echo = Server(path, flags), EchoServer()
    results["serve_args"] = list(flags)
    try:
        with knowledge.connect(server.address, token=work["token"]) as client:
            results["remote"] = rounds(WithEcho(client.session(), echo), work, calls, ("echo", "ping", *OPS))
        echo.close()
        results["throughput"] = {op: {str(n): run_clients(server.address, work, [op], n, duration_s,
                                                          server_pid=server.process.pid) for n in CLIENTS}
                                 for op in OPS}
        results["commit_idle"] = stats_ms(commit_latency(server.address, work["token"], calls))
        loaded: dict[str, Any] = {}
        reading = threading.Event()
        background = threading.Thread(target=lambda: loaded.update(
            run_clients(server.address, work, ["retrieve"], 8, 3 * duration_s, on_start=reading.set)))
        background.start()
        if not reading.wait(300):
            raise RuntimeError("the 8 retrieving clients did not start")
        time.sleep(0.5)
        results["commit_loaded"] = stats_ms(commit_latency(server.address, work["token"], calls))
        results["commit_loaded"]["readers_still_running"] = background.is_alive()
        background.join()
        results["commit_loaded"]["readers"] = {"clients": 8, "retrieve_ops_per_s": loaded["retrieve"]["ops_per_s"],
                                               "errors": loaded["errors"]}
        results["soak"] = run_clients(server.address, work, list(OPS), 64, soak_s, on_tick=server.rss_mib)
    finally:
        results["server_exit_code"] = server.stop()
    with knowledge.open(path, create=False) as store:  # the baseline again, after: the lower p50 counts
        again = rounds(store.session("reader"), work, calls)
    results["embedded_after"] = again
    for op in OPS:
        if again[op]["p50_ms"] < results["embedded"][op]["p50_ms"]:
            results["embedded"][op] = {**again[op], "from": "after"}
    results["load_after"] = list(os.getloadavg())
    return results


def _embedded_commits(store: Any, count: int, prefix: str = "e") -> list[float]:
    session = store.session("reader")
    out = []
    for i in range(count):
        start = time.perf_counter()
        session.transaction().upsert_nodes("Note", [{"name": f"{prefix}{time.time_ns()}-{i}", "n": i,
                                                     "_labels": ["public"]}]).commit()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def rss_drift(ticks: list[tuple[float, float]], warmup_s: float) -> dict[str, float]:
    after = [rss for t, rss in ticks if t >= warmup_s]
    if len(after) < 2:
        return {}
    base = after[0]
    return {"rss_warm_mib": round(base, 1), "rss_end_mib": round(after[-1], 1), "rss_max_mib": round(max(after), 1),
            "drift_max_pct": round(100 * (max(after) - base) / base, 1)}


def summarise(results: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The targets' figures: added p50, throughput scaling, commit p99 ratio, soak errors and RSS drift."""
    out: dict[str, Any] = {}
    for op in OPS:
        embedded, remote = results["embedded"][op], results["remote"][op]
        out[f"{op}_added_p50_ms"] = round(remote["p50_ms"] - embedded["p50_ms"], 3)
        out[f"{op}_ratio_p50"] = round(remote["p50_ms"] / embedded["p50_ms"], 2)
        one = results["throughput"][op]["1"][op]["ops_per_s"]
        for n in CLIENTS[1:]:
            out[f"{op}_throughput_{n}_over_1"] = round(results["throughput"][op][str(n)][op]["ops_per_s"] / one, 2)
        out[f"{op}_embedded_1_ops_per_s"] = round(1000 / embedded["p50_ms"], 1)
    out["commit_p99_loaded_over_idle"] = round(results["commit_loaded"]["p99_ms"] / results["commit_idle"]["p99_ms"], 2)
    for floor in ("echo", "ping"):
        if floor in results["remote"]:
            out[f"{floor}_p50_ms"] = results["remote"][floor]["p50_ms"]
    soak = results["soak"]
    out["soak_errors"] = soak["errors"]
    out.update(rss_drift(soak["ticks"], 3.0 if quick else 10.0))
    return out


def markdown(results: dict[str, Any], summary: dict[str, Any], command: str) -> str:
    e, r = results["embedded"], results["remote"]
    lines = [f"Command: `{command}`. Machine: {results['machine']}; load average before {results['load_before']}, "
             f"after {results['load_after']} (a shared 2-core VM: other sessions' work runs alongside). Store: "
             f"{results['docs']} synthetic GraphRAG documents (384-d hashing embeddings), read as a non-admin "
             f"principal; the server is `knowledge serve` in its own process with its defaults"
             f"{' and ' + ' '.join(results['serve_args']) if results.get('serve_args') else ''} (audit log on, faiss on "
             f"one OpenMP thread per call, as the embedded baseline too; server CPU and memory count its read "
             f"processes too); "
             f"clients in up to 8 processes.", "",
             f"Latency, one caller (embedded call vs the same call through the server, sequential; median of "
             f"{ROUNDS} interleaved rounds; the embedded baseline measured before and after the server phase, the "
             f"lower kept). The floor, a call that does next to nothing (WhoAmI), took "
             f"{r['ping']['p50_ms']:.3f} ms p50 through the server in this run"
             + (f"; a bare grpcio echo server's round trip (no knowledge code on either side), "
                f"{r['echo']['p50_ms']:.3f} ms" if "echo" in r else "") + ":", "",
             "| op | embedded p50 | server p50 | added p50 | added over the floor | ratio | embedded p99 | server p99 "
             "| embedded min | server min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for op in OPS:
        lines.append(f"| {op} | {e[op]['p50_ms']:.3f} ms | {r[op]['p50_ms']:.3f} ms | "
                     f"{summary[f'{op}_added_p50_ms']:+.3f} ms | {summary[f'{op}_added_p50_ms'] - r['ping']['p50_ms']:+.3f} ms | "
                     f"{summary[f'{op}_ratio_p50']}x | "
                     f"{e[op]['p99_ms']:.3f} ms | {r[op]['p99_ms']:.3f} ms | {e[op]['min_ms']:.3f} ms | "
                     f"{r[op]['min_ms']:.3f} ms |")
    lines += ["", "Throughput through the server (ops/s; scaling against one client; embedded one-caller rate from "
              "its p50):", "", "| op | embedded 1 | 1 client | 8 clients | 64 clients | 8/1 | 64/1 | errors |",
              "|---|---|---|---|---|---|---|---|"]
    for op in OPS:
        t = results["throughput"][op]
        errors = sum(t[str(n)]["errors"] for n in CLIENTS)
        lines.append(f"| {op} | {summary[f'{op}_embedded_1_ops_per_s']} | {t['1'][op]['ops_per_s']} | "
                     f"{t['8'][op]['ops_per_s']} | {t['64'][op]['ops_per_s']} | {summary[f'{op}_throughput_8_over_1']}x | "
                     f"{summary[f'{op}_throughput_64_over_1']}x | {errors} |")
    lines += ["", "CPU per call during those runs (the server process; the client processes together) and how busy the "
              "machine's 2 cores were (anyone's work): one client whose calls take about their CPU time has no idle gaps "
              "to fill, so 8 clients can gain at most what the cores left over allow:", "",
              "| op | clients | server CPU/call | clients' CPU/call | server cores | machine busy cores |",
              "|---|---|---|---|---|---|"]
    for op in OPS:
        for n in CLIENTS:
            cpu = results["throughput"][op][str(n)].get("cpu", {})
            if "server_ms_per_call" in cpu:
                lines.append(f"| {op} | {n} | {cpu['server_ms_per_call']:.3f} ms | {cpu['client_ms_per_call']:.3f} ms | "
                             f"{cpu['server_cores']} | {cpu['machine_busy_cores']} |")
    idle, loaded = results["commit_idle"], results["commit_loaded"]
    lines += ["", f"Commit latency through the server (one-row upsert, fsynced): idle p50 {idle['p50_ms']:.2f} ms / "
              f"p99 {idle['p99_ms']:.2f} ms; while 8 clients retrieve ({loaded['readers']['retrieve_ops_per_s']} "
              f"retrieves/s) p50 {loaded['p50_ms']:.2f} ms / p99 {loaded['p99_ms']:.2f} ms: p99 ratio "
              f"**{summary['commit_p99_loaded_over_idle']}x**. Embedded commit p50 {e['commit']['p50_ms']:.2f} ms / "
              f"p99 {e['commit']['p99_ms']:.2f} ms.", ""]
    soak = results["soak"]
    lines.append(f"Soak: 64 clients (get, search, retrieve in turn) for {soak['duration_s']:.0f} s: "
                 f"{sum(soak[op]['count'] for op in OPS)} calls, **{soak['errors']} errors**; server RSS after "
                 f"warm-up {summary.get('rss_warm_mib')} MiB, at the end {summary.get('rss_end_mib')} MiB, max "
                 f"{summary.get('rss_max_mib')} MiB (drift {summary.get('drift_max_pct')}%). Server exit code after "
                 f"SIGTERM: {results['server_exit_code']}.")
    lines += ["", "Targets: added p50 <= 1 ms (search, retrieve); 8 clients >= 1.6x one client's search throughput; "
              "commit p99 while 8 clients retrieve <= 2x idle; 64 clients for 60 s with zero errors and RSS within "
              "10% after warm-up."]
    return "\n".join(lines)


# -- concurrent readers (issue 13 point 3): the two scaling targets alone, repeated ------------------------
def _threads(target: Any, count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def embedded_concurrency(path: str, work: dict[str, Any], duration_s: float, calls: int) -> dict[str, Any]:
    """In one process: search throughput of 1 vs 8 threads (each its own session), and commit latency idle
    vs while 8 threads retrieve (each retrieval a snapshot block)."""
    import knowledge
    out: dict[str, Any] = {}
    with knowledge.open(path, create=False) as store:
        for session in (store.session("reader"),):  # warm up
            for i in range(20):
                operation(session, "search", work, i)
                operation(session, "retrieve", work, i)
        for clients in (1, 8):
            counts = [0] * clients
            end = time.time() + duration_s

            def search(index: int, counts: list[int] = counts, end: float = end) -> None:
                session, i = store.session("reader"), index * 97
                while time.time() < end:
                    operation(session, "search", work, i)
                    counts[index] += 1
                    i += 1

            for thread in _threads(search, clients):
                thread.join()
            out[f"search_{clients}_ops_per_s"] = round(sum(counts) / duration_s, 1)
        out["commit_idle"] = stats_ms(_embedded_commits(store, calls))
        stop, retrieved = threading.Event(), [0]

        def retrieve(index: int) -> None:
            session, i = store.session("reader"), index * 97
            while not stop.is_set():
                operation(session, "retrieve", work, i)
                retrieved[0] += 1
                i += 1

        readers = _threads(retrieve, 8)
        time.sleep(0.5)
        started, before = time.time(), retrieved[0]
        out["commit_loaded"] = stats_ms(_embedded_commits(store, calls, prefix="l"))
        out["commit_loaded"]["retrieves_per_s"] = round((retrieved[0] - before) / (time.time() - started), 1)
        stop.set()
        for thread in readers:
            thread.join()
    out["search_8_over_1"] = round(out["search_8_ops_per_s"] / out["search_1_ops_per_s"], 2)
    out["commit_p99_loaded_over_idle"] = round(out["commit_loaded"]["p99_ms"] / out["commit_idle"]["p99_ms"], 2)
    return out


def server_concurrency(address: str, work: dict[str, Any], duration_s: float, calls: int) -> dict[str, Any]:
    """Through the server: search throughput of 1 vs 8 clients; commit latency idle vs while 8 clients
    retrieve."""
    out: dict[str, Any] = {}
    for clients in (1, 8):
        out[f"search_{clients}"] = run_clients(address, work, ["search"], clients, duration_s)
    out["commit_idle"] = stats_ms(commit_latency(address, work["token"], calls))
    loaded: dict[str, Any] = {}
    reading = threading.Event()
    background = threading.Thread(target=lambda: loaded.update(
        run_clients(address, work, ["retrieve"], 8, 3 * duration_s, on_start=reading.set)))
    background.start()
    if not reading.wait(300):
        raise RuntimeError("the 8 retrieving clients did not start")
    time.sleep(0.5)
    out["commit_loaded"] = stats_ms(commit_latency(address, work["token"], calls))
    out["commit_loaded"]["readers_still_running"] = background.is_alive()
    background.join()
    out["commit_loaded"]["retrieves_per_s"] = loaded["retrieve"]["ops_per_s"]
    out["errors"] = sum(out[f"search_{n}"]["errors"] for n in (1, 8)) + loaded["errors"]
    out["search_8_over_1"] = round(out["search_8"]["search"]["ops_per_s"] / out["search_1"]["search"]["ops_per_s"], 2)
    out["commit_p99_loaded_over_idle"] = round(out["commit_loaded"]["p99_ms"] / out["commit_idle"]["p99_ms"], 2)
    return out


def concurrency(quick: bool, workdir: str, repeats: int, flags: tuple[str, ...] = (),
                baseline: tuple[str, ...] | None = None) -> dict[str, Any]:
    """`repeats` runs of both scaling targets, embedded and through the server (`knowledge serve` with
    `flags`), with the medians; given `baseline` flags, each run also measures a server started with those
    (the two in turns, first one then the other), reported as `baseline_server`."""
    docs, calls, duration_s = (300, 100, 3.0) if quick else (2000, 300, 8.0)
    path = os.path.join(workdir, "server-bench.store")
    work = build(path, docs)
    import faiss
    faiss.omp_set_num_threads(1)  # as `knowledge serve` runs it
    results: dict[str, Any] = {"machine": machine(), "docs": docs, "repeats": repeats, "embedded": [], "server": [],
                               "load": [list(os.getloadavg())]}
    variants = [("server", flags)] + ([("baseline_server", baseline)] if baseline is not None else [])
    results["flags"] = {side: list(side_flags) for side, side_flags in variants}
    for side, _ in variants[1:]:
        results[side] = []
    for run in range(repeats):
        results["embedded"].append(embedded_concurrency(path, work, duration_s, calls))
        for side, side_flags in (variants if run % 2 == 0 else variants[::-1]):
            server = Server(path, side_flags)
            try:
                results[side].append(server_concurrency(server.address, work, duration_s, calls))
            finally:
                server.stop()
        results["load"].append(list(os.getloadavg()))
    for side in ("embedded", *(side for side, _ in variants)):
        for figure in ("search_8_over_1", "commit_p99_loaded_over_idle"):
            results[f"{side}_{figure}_median"] = statistics.median(run[figure] for run in results[side])
    return results


def suite(quick: bool, workdir: str) -> dict[str, Any]:
    """The `server` suite of `python -m bench`: this benchmark's results and summary."""
    results = measure(quick, workdir)
    results["summary"] = summarise(results, quick)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small store, short runs (about a minute)")
    parser.add_argument("--soak-s", type=float, help="soak duration (default 60 s, 10 s with --quick)")
    parser.add_argument("--write-results", action="store_true", help="write bench/results/server.json and RESULTS.md")
    parser.add_argument("--concurrency", type=int, metavar="RUNS",
                        help="only the concurrent-reader targets (search 8 vs 1, commit p99 loaded vs idle), "
                             "embedded and through the server, RUNS times; prints JSON with the medians")
    parser.add_argument("--serve-args", default="", metavar="ARGS",
                        help="extra flags for `knowledge serve`, e.g. '--read-processes 1' or '--read-workers 0'")
    parser.add_argument("--baseline-serve-args", default=None, metavar="ARGS",
                        help="with --concurrency: also measure a server with these flags in the same runs, in "
                             "turns with the other ('' for the defaults)")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="kbench-server-")
    if args.concurrency:
        import json
        baseline = None if args.baseline_serve_args is None else tuple(shlex.split(args.baseline_serve_args))
        try:
            print(json.dumps(concurrency(args.quick, workdir, args.concurrency, tuple(shlex.split(args.serve_args)),
                                         baseline), indent=1))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    try:
        results = measure(args.quick, workdir, args.soak_s, tuple(shlex.split(args.serve_args)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["summary"] = summarise(results, args.quick)
    command = "python bench/server.py" + (" --quick" if args.quick else "") + (
        f" --soak-s {args.soak_s:g}" if args.soak_s else "") + (
        f" --serve-args {shlex.quote(args.serve_args)}" if args.serve_args else "")
    publish("server", "gRPC server (bench/server.py)", results, markdown(results, results["summary"], command),
            args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
