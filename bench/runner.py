"""`python -m bench` and `knowledge bench`: run suites, write results.json, report.md and PNG plots.

    python -m bench [SUITES ...] [--quick | --smoke] [--out DIR] [--no-peers] [--publish]

SUITES: any of ingest vectors acl retrieval server replication lifecycle (default: all). --quick sizes every suite
for CI (the whole run in under 5 minutes on a 2-core VM). --out DIR (default bench/out) receives
results.json (schema "knowledge-bench/1", checked by knowledge.slo.validate_results), report.md and
plots/*.png (plots need the `bench` extra's matplotlib; without it they are skipped with a note).
--publish also writes the report as the "Benchmark suite (python -m bench)" section of bench/RESULTS.md
(other sections are left as they are) and the JSON as bench/results/suite.json. --regenerate re-runs the
command every section of bench/RESULTS.md names on its "Command:" line (GPU sections with --gpu), which
rewrites every figure there; hand-written sections without one are kept.

A suite whose subject does not exist yet (server, replication) reports status "not available" and why;
one that fails reports status "error" with the exception, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any

from bench import machine, suites

SCHEMA = "knowledge-bench/1"
HERE = os.path.dirname(os.path.abspath(__file__))


class NotAvailable(Exception):
    """Raised by a suite whose subject (the server, replication) is not built or not installed."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of {' '.join(suites.ORDER)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="CI sizes: the whole run in minutes")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (seconds) for the test suite: checks the plumbing, figures mean little")
    parser.add_argument("--out", default=os.path.join(HERE, "out"), help="directory for results.json, report.md, plots")
    parser.add_argument("--no-peers", action="store_true", help="skip the embedded peers (chromadb, lancedb, ...)")
    parser.add_argument("--publish", action="store_true",
                        help="also write bench/RESULTS.md's suite section and bench/results/suite.json")
    parser.add_argument("--regenerate", action="store_true",
                        help="re-run the command of every section of bench/RESULTS.md (this suite's included)")
    parser.add_argument("--gpu", action="store_true", help="with --regenerate: the GPU sections too")
    parser.add_argument("--dry-run", action="store_true", help="with --regenerate: list the commands only")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in suites.ORDER]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(suites.ORDER)}")
    return args


def run_suites(names: list[str], quick: bool, peers: bool = True, command: str = "python -m bench",
               smoke: bool = False) -> dict[str, Any]:
    """Run the named suites (in bench.suites.ORDER) and return the results document."""
    started = time.time()
    quick = quick or smoke
    results: dict[str, Any] = {"schema": SCHEMA, "command": command, "quick": quick, "smoke": smoke,
                               "started_at": _iso(started), "machine": machine.describe(), "suites": {}}
    workdir = tempfile.mkdtemp(prefix="kbench-suite-")
    context = suites.Context(quick=quick, workdir=workdir, peers=peers, smoke=smoke)
    results["machine"]["faiss_omp_threads"] = _single_threaded_faiss()
    try:
        from bench.measure import progress

        for name in progress([n for n in suites.ORDER if n in names], "bench: suites", position=0):
            results["suites"][name] = run_one(name, context)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["finished_at"] = _iso(time.time())
    results["duration_s"] = round(time.time() - started, 2)
    results["machine"]["load_after"] = machine.load()
    return results


def run_one(name: str, context: suites.Context) -> dict[str, Any]:
    """One suite's result: its own fields plus status, duration_s and the load before and after it."""
    load_before = machine.load()
    started = time.perf_counter()
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    module = None
    try:
        module = suites.load(name)
        out = module.run(context)
        out["status"] = "ok"
    except NotAvailable as reason:
        out = {"status": "not available", "reason": str(reason)}
    except Exception as error:  # a failing suite is reported; the others still run
        out = {"status": "error", "reason": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    out["about"] = ((module.__doc__ if module else None) or "").strip()
    out["duration_s"] = round(time.perf_counter() - started, 2)
    out["load_before"], out["load_after"] = load_before, machine.load()
    print(f"bench: {name} {out['status']} in {out['duration_s']:.1f} s", file=sys.stderr, flush=True)
    if out["status"] == "error":  # said where it is read (CI keeps stderr, not the results directory)
        print(out.get("traceback", out.get("reason", "")), file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.regenerate:
        from bench import report

        return report.regenerate(os.path.join(HERE, "RESULTS.md"), os.path.dirname(HERE), args.gpu, args.dry_run)
    names = args.suites or list(suites.ORDER)
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    results = run_suites(names, args.quick, peers=not args.no_peers, command=command, smoke=args.smoke)
    from bench import report

    written = report.write(results, args.out)
    for path in written:
        print(path)
    if args.publish:
        report.publish_results(results, args.out)
    return 1 if any(s["status"] == "error" for s in results["suites"].values()) else 0


def _single_threaded_faiss() -> int:
    """Run faiss on one OpenMP thread (every suite issues one query at a time: on a small, shared VM a
    2-thread scan of one query is slower than one thread, and noisier); returns the count now in force."""
    try:
        import faiss
    except ImportError:
        return 0
    faiss.omp_set_num_threads(1)
    return int(faiss.omp_get_max_threads())


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")
