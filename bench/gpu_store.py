#!/usr/bin/env python
"""bench/gpu_store: the store's exact vector search with its rows in GPU memory, against the same index on
the CPU and raw faiss-cpu IndexFlat on the same host.

    python bench/gpu_store.py --out results/gpu_store [--rows 1000000] [--dim 384] [--queries 200]

One data set, low-rank (48) plus noise, normalised (cosine), ``--rows`` x ``--dim``. One VectorIndex with
``kind="flat", device="gpu"`` (rows copied to the GPU once, at the first search) and one with
``device="cpu"``, same rows. For selectivities 100%, 10%, 1% (a random allowed-node mask), batch-1
queries, each engine timed over the same queries, median latency of ``--repeats`` passes:
- knowledge GPU: VectorIndex.search on the GPU index (plan: flat, or gather / flat-filtered);
- knowledge CPU: the same on the CPU index (faiss IndexFlat unfiltered, gather or faiss + IDSelector);
- faiss-cpu IndexFlatIP: unfiltered only, on the same rows.
Every GPU result is checked against the CPU index's (ids equal, except where scores are within float32
rounding). Writes <out>.json and <out>.md. Exit status 0, 1 on a mismatch, 2 without a usable GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from knowledge.config import VectorConfig
from knowledge.index.vectors import VectorIndex
from knowledge.kernels import gpu_available


def lowrank(rng: np.random.Generator, n: int, d: int, rank: int = 48) -> np.ndarray:
    basis = rng.standard_normal((rank, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for r0 in range(0, n, 262_144):
        r1 = min(n, r0 + 262_144)
        out[r0:r1] = rng.standard_normal((r1 - r0, rank), dtype=np.float32) @ basis
        out[r0:r1] += 0.3 * rng.standard_normal((r1 - r0, d), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def timed(fn: Any, queries: np.ndarray) -> tuple[float, list[Any]]:
    """(median seconds per query, results) of fn(q) over the queries, one pass."""
    results, times = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - start)
    return statistics.median(times), results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    ok, reason = gpu_available()
    if not ok:
        print(f"gpu_store: no usable GPU: {reason}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    rows = lowrank(rng, args.rows, args.dim)
    ids = np.arange(args.rows, dtype=np.int64)
    queries = rows[rng.integers(0, args.rows, args.queries)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32)
    indexes = {}
    for device in ("gpu", "cpu"):
        index = VectorIndex(args.dim, "cosine", VectorConfig(kind="flat", device=device))
        index.upsert(ids, rows)
        indexes[device] = index
    start = time.perf_counter()
    indexes["gpu"].search(queries[0], args.k, None)  # first search copies the rows to the GPU
    copy_s = time.perf_counter() - start
    raw = faiss.IndexFlatIP(args.dim)
    raw.add(rows)
    report: dict[str, Any] = {"rows": args.rows, "dim": args.dim, "k": args.k, "queries": args.queries,
                              "device": reason, "first_search_with_copy_s": copy_s,
                              "faiss_threads": faiss.omp_get_max_threads(), "results": []}
    mismatches = 0
    for selectivity in (1.0, 0.1, 0.01):
        allowed = None if selectivity == 1.0 else rng.random(args.rows) < selectivity
        allowed_ro = None
        if allowed is not None:
            allowed.flags.writeable = False  # as the store's cached visibility bitmaps are
            allowed_ro = allowed
        engines = {"knowledge GPU": lambda q, a=allowed_ro: indexes["gpu"].search(q, args.k, a),
                   "knowledge CPU": lambda q, a=allowed_ro: indexes["cpu"].search(q, args.k, a)}
        if allowed is None:
            engines["faiss-cpu IndexFlatIP"] = lambda q: raw.search(
                indexes["cpu"].prepare(q), args.k)
        passes: dict[str, list[float]] = {name: [] for name in engines}
        outputs: dict[str, list[Any]] = {}
        for _ in range(args.repeats):
            for name, fn in engines.items():
                t, outputs[name] = timed(fn, queries)
                passes[name].append(t)
        gpu_out, cpu_out = outputs["knowledge GPU"], outputs["knowledge CPU"]
        same = np.mean([np.array_equal(g[0], c[0]) for g, c in zip(gpu_out, cpu_out, strict=True)])
        worst = max(float(np.max(np.abs(g[1] - c[1]), initial=0)) for g, c in zip(gpu_out, cpu_out, strict=True))
        ok_here = worst <= 1e-5 and all(
            set(g[0]) ^ set(c[0]) <= set(np.concatenate([g[0][-3:], c[0][-3:]]))
            for g, c in zip(gpu_out, cpu_out, strict=True))
        mismatches += not ok_here
        row = {"selectivity": selectivity, "plans": sorted({g[2] for g in gpu_out}),
               "ids_identical": float(same), "max_score_diff": worst, "ok": bool(ok_here),
               "median_ms": {name: 1e3 * statistics.median(ts) for name, ts in passes.items()}}
        base = row["median_ms"]["knowledge CPU"]
        row["gpu_speedup_vs_cpu"] = base / row["median_ms"]["knowledge GPU"]
        if "faiss-cpu IndexFlatIP" in row["median_ms"]:
            row["gpu_speedup_vs_faiss"] = row["median_ms"]["faiss-cpu IndexFlatIP"] / row["median_ms"]["knowledge GPU"]
        report["results"].append(row)
        print(json.dumps(row), flush=True)
    prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [f"# store vector search on the GPU: {args.rows:,} x {args.dim} cosine, k={args.k}, batch 1", "",
             f"- device: {reason}; faiss-cpu threads: {report['faiss_threads']}",
             f"- first search (copies the rows to the GPU): {copy_s:.2f} s", "",
             "| selectivity | plan | knowledge GPU ms | knowledge CPU ms | faiss-cpu flat ms | GPU vs CPU | "
             "GPU vs faiss | ids identical | ok |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        ms = r["median_ms"]
        faiss_ms = ms.get("faiss-cpu IndexFlatIP")
        vs_faiss = "-" if faiss_ms is None else f"{r['gpu_speedup_vs_faiss']:.1f}x"
        lines.append(f"| {r['selectivity']:.0%} | {', '.join(r['plans'])} | {ms['knowledge GPU']:.3f} | "
                     f"{ms['knowledge CPU']:.3f} | {'-' if faiss_ms is None else f'{faiss_ms:.3f}'} | "
                     f"{r['gpu_speedup_vs_cpu']:.1f}x | "
                     f"{vs_faiss} | "
                     f"{r['ids_identical']:.3f} | {'yes' if r['ok'] else 'NO'} |")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
