"""server: get, search and retrieve through `knowledge serve` over loopback gRPC, with 1, 8 and 64
concurrent clients, as ratios to the embedded call in the same run, and commit latency while readers run
against commit latency idle, plus a 64-client soak (errors, resident memory); measured by bench/server.py
(issue 13), whose own command line is `python bench/server.py`. Reports "not available" when
bench/server.py or the server it drives is missing."""

from __future__ import annotations

import importlib
import os
from typing import Any

from bench.suites import Context

NAME = "server"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module() -> Any:
    from bench.runner import NotAvailable

    if not os.path.exists(os.path.join(HERE, "server.py")):
        raise NotAvailable("bench/server.py does not exist yet (the gRPC server's benchmark, issue 13)")
    try:
        importlib.import_module("knowledge.server")
        module = importlib.import_module("bench.server")
    except ImportError as error:
        raise NotAvailable(f"the server cannot be imported here: {error}") from error
    if not all(hasattr(module, name) for name in ("measure", "summarise", "markdown")):
        raise NotAvailable("bench/server.py lacks measure(), summarise() or markdown()")
    return module


def run(context: Context) -> dict[str, Any]:
    from bench.runner import NotAvailable

    module = _module()
    if context.smoke:
        raise NotAvailable("skipped at --smoke size: starting a server and its corpus takes most of a minute")
    if context.quick:
        return _one_caller(module, context.workdir)
    results = module.measure(False, context.workdir, None)
    summary = results["summary"] = module.summarise(results, context.quick)
    soak = results["soak"]
    results["baseline"] = {"name": "the embedded call", "description": "the same get, search, retrieve and "
                           "commit on the same store, same principal, in this process, in the same run"}
    results["ratios"] = {k: v for k, v in summary.items() if k.endswith(("_ratio_p50", "_over_1", "_over_idle"))}
    results["requests"] = {"requests": sum(soak[op]["count"] for op in module.OPS) + soak["errors"],
                           "errors": soak["errors"]}
    results["command"] = "python -m bench server" + (" --quick" if context.quick else "")
    return results


QUICK_DOCS = 200
QUICK_CALLS = 100


def _one_caller(module: Any, workdir: str) -> dict[str, Any]:
    """The quick run: one caller, each op embedded then through `knowledge serve` (bench/server.py's corpus,
    server and operations), and commits through the server; bench/server.py's client fan-out and soak
    need minutes, so they run only at full size."""
    import knowledge
    from bench import measure

    path = os.path.join(workdir, "server-suite.store")
    work = module.build(path, QUICK_DOCS)
    counts = {op: QUICK_CALLS // (4 if op == "retrieve" else 1) for op in module.OPS}
    out: dict[str, Any] = {"docs": QUICK_DOCS, "embedded": {}, "remote": {}, "latency": {}, "ratios": {}}
    with knowledge.open(path, create=False) as store:
        session = store.session("reader")
        for op in measure.progress(module.OPS, "server: embedded"):
            out["embedded"][op] = measure.series_ms(module.timed(session, op, work, counts[op]))
    metrics_port = _free_port() if _serve_has_metrics() else None
    server = module.Server(path) if metrics_port is None else _MetricsServer(path, metrics_port)
    errors = requests = 0
    try:
        with knowledge.connect(server.address, token=work["token"]) as client:
            session = client.session()
            for op in measure.progress(module.OPS, "server: through gRPC"):
                requests += counts[op]
                try:
                    out["remote"][op] = measure.series_ms(module.timed(session, op, work, counts[op]))
                except knowledge.KnowledgeError:
                    errors += counts[op]
        commits = module.commit_latency(server.address, work["token"], QUICK_CALLS)
        out["remote"]["commit"] = measure.series_ms(commits)
        requests += len(commits)
        if metrics_port is not None:
            out["live_slo"] = _live_slo(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        out["server_exit_code"] = server.stop()
    for op, series in out["remote"].items():
        out["latency"][f"{op} (server)"] = series
        if op in out["embedded"]:
            out["latency"][f"{op} (embedded)"] = out["embedded"][op]
            out["ratios"][f"{op}_server_vs_embedded_p50"] = measure.ratio(series["p50_ms"], out["embedded"][op]["p50_ms"])
    out["requests"] = {"requests": requests, "errors": errors}
    out["baseline"] = {"name": "the embedded call", "description": "the same get, search and retrieve on the same "
                       "store, same principal, in this process, in the same run"}
    out["command"] = "python -m bench server --quick"
    return out


def _serve_has_metrics() -> bool:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "knowledge.cli", "serve", "--help"], capture_output=True, text=True,
                          timeout=60)
    return "--metrics" in done.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _MetricsServer:
    """`knowledge serve` with `--metrics 127.0.0.1:PORT` (bench/server.py's Server, plus the exporter)."""

    def __init__(self, path: str, metrics_port: int) -> None:
        import subprocess
        import sys

        self.process = subprocess.Popen([sys.executable, "-m", "knowledge.cli", "serve", "--data", path, "--listen",
                                         "127.0.0.1:0", "--metrics", f"127.0.0.1:{metrics_port}",
                                         "--recall-sample", "0.2"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"knowledge serve did not start: {line!r}")
        self.address = line.split()[2]

    def stop(self) -> int:
        import signal

        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=120)
        return self.process.returncode


def _live_slo(url: str) -> list[dict[str, Any]]:
    """bench/slo.toml's objectives judged from the live server's metrics endpoint, scraped once."""
    from knowledge.slo import evaluate_metrics, load_slo, scrape

    slo = load_slo(os.path.join(HERE, "slo.toml"))
    return [{"objective": e.objective.name, "status": e.status, "measured": e.measured, "burn_rate": e.burn_rate}
            for e in evaluate_metrics(slo, scrape(url), None, url)]


def render(result: dict[str, Any]) -> str:
    if "summary" in result:
        return _module().markdown(result, result["summary"], result["command"])
    lines = [f"Quick run: one caller, {result['docs']} synthetic GraphRAG documents, `knowledge serve` in its own "
             "process on loopback (bench/server.py's fan-out to 8 and 64 clients and its soak run at full size).", "",
             "| op | embedded p50 | server p50 | server p99 | added p50 | ratio |", "|---|---|---|---|---|---|"]
    for op, remote in result["remote"].items():
        embedded = result["embedded"].get(op)
        if embedded is None:
            lines.append(f"| {op} (fsynced one-row upsert) | - | {remote['p50_ms']:.3f} ms | {remote['p99_ms']:.3f} ms | - | - |")
            continue
        lines.append(f"| {op} | {embedded['p50_ms']:.3f} ms | {remote['p50_ms']:.3f} ms | {remote['p99_ms']:.3f} ms | "
                     f"{remote['p50_ms'] - embedded['p50_ms']:+.3f} ms | "
                     f"{result['ratios'][f'{op}_server_vs_embedded_p50']:.2f}x |")
    lines.append(f"\n{result['requests']['errors']} errors in {result['requests']['requests']} calls; server exit "
                 f"code after SIGTERM {result['server_exit_code']}.")
    if result.get("live_slo"):
        lines += ["", "bench/slo.toml judged from the server's own Prometheus endpoint (`--metrics`, one scrape "
                  "after these calls; recall from `--recall-sample 0.2`):", "",
                  "| objective | status | measured | burn rate |", "|---|---|---|---|"]
        for e in result["live_slo"]:
            burn = "-" if e["burn_rate"] is None else f"{e['burn_rate']:.2f}"
            lines.append(f"| {e['objective']} | {e['status']} | {e['measured']} | {burn} |")
    return "\n".join(lines)
