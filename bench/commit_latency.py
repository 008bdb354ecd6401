"""bench/commit_latency: where a single-row commit's time goes, beyond the sync itself.

    python bench/commit_latency.py [--commits 2000] [--runs 3] [--no-write]

With the WAL's sync turned off (StoreConfig(fsync=False)), the same single-row commit is timed:
- back to back (the CPU stays busy, caches stay warm);
- after a 150 us sleep before each commit (the CPU idles as long as an fdatasync takes here);
- after an fdatasync of another file before each commit (the I/O wait a real commit has).
The gap between the first and the other two is what idling costs the Python code that runs next
(on this VM the idle vCPU loses its caches); a durable commit pays it once per sync. Medians of
--runs runs, each the median of --commits commits; results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, publish  # noqa: E402

import knowledge  # noqa: E402


def one_run(directory: str, commits: int) -> dict[str, float]:
    path = os.path.join(directory, "store")
    shutil.rmtree(path, ignore_errors=True)
    store = knowledge.open(path, config=knowledge.StoreConfig(fsync=False))
    store.define_node_type("N", key="k", properties={"v": "int", "title": "str"})
    session = store.session()
    fd = os.open(os.path.join(directory, "other.log"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, bytes(1 << 20))
    os.fsync(fd)
    datasync = getattr(os, "fdatasync", os.fsync)
    offset = [0]

    def commit(before, i: int) -> float:
        before()
        start = time.perf_counter()
        session.transaction().upsert_nodes("N", [{"k": f"s{offset[0] + i}", "v": i, "_labels": ["p"]}]).commit()
        return (time.perf_counter() - start) * 1e6

    out = {}
    for name, before in (("back_to_back", lambda: None), ("after_sleep_150us", lambda: time.sleep(150e-6)),
                         ("after_fdatasync", lambda: (os.pwrite(fd, b"x" * 150, 0), datasync(fd)))):
        lat = [commit(before, i) for i in range(commits)]
        offset[0] += commits
        out[name] = statistics.median(lat)
    os.close(fd)
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="knowledge-commit-") as directory:
        runs = [one_run(directory, args.commits) for _ in range(args.runs)]
    result = {"command": " ".join(["python", "bench/commit_latency.py", *sys.argv[1:]]), "machine": machine(),
              "runs": runs, **{name: statistics.median(r[name] for r in runs) for name in runs[0]}}
    body = f"""Command: `{result['command']}` ({result['machine']['cpus']} CPUs); WAL sync off, medians of {args.runs} runs.

| the same single-row commit, timed | p50 | vs back to back |
|---|---|---|
| back to back | {result['back_to_back']:.0f} us | 1.00x |
| after a 150 us sleep | {result['after_sleep_150us']:.0f} us | {result['after_sleep_150us'] / result['back_to_back']:.2f}x |
| after an fdatasync of another file | {result['after_fdatasync']:.0f} us | {result['after_fdatasync'] / result['back_to_back']:.2f}x |

A durable commit runs its Python after the CPU idled through the sync, so it pays the slower figure:
that is most of the gap between a commit and a bare write+fdatasync in bench/ingest.py.
"""
    publish("commit_latency", "Single-row commit: the cost of idling (bench/commit_latency.py)", result, body,
            not args.no_write)


if __name__ == "__main__":
    main()
