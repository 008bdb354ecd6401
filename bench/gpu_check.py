#!/usr/bin/env python
"""GPU check for knowledge.kernels.topk: GPU == CPU, throughput, and HBM bandwidth of batch-1 scans.

    python bench/gpu_check.py --out results/gpu_check            # full run (< ~5 min on an H100)
    python bench/gpu_check.py --out /tmp/gpu_check --quick       # small sizes, seconds

(a) equivalence: the GPU path (CuPy inputs) against the CPU path (numpy) on random, "real-ish"
    (low-rank + noise, with near-duplicate queries) and exact small-integer data, float32 and float16
    storage, every metric, batch sizes 1/3/64 (scan kernel and GEMM paths), with and without masks,
    k above the select kernel's limit, and the RawKernel select against the sort fallback. Ids must
    be identical except at near ties (two rows whose float64 scores differ by less than a float32
    summation tolerance); on exact data ids and scores must be bit-identical.
(b) throughput in queries/s of the GPU path against faiss-cpu IndexFlatIP on this host (skipped
    when faiss is not importable) and the package's own CPU path.
(c) batch-1 scan bandwidth over >= 10M x 384 float16 rows: base bytes read / time / peak HBM
    bandwidth, peak from memoryClockRate x memoryBusWidth (or --peak-gbps).

Writes <out>.json and <out>.md. Needs numpy and cupy (faiss optional). Exit status: 0 all checks
passed, 1 an equivalence check failed, 2 no usable GPU (with the reason printed).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_MISMATCH, EXIT_NO_GPU = 0, 1, 2
METRICS = ("cosine", "ip", "l2")


# ------------------------------------------------------------------------------------------------
# setup


def load_kernels() -> Any:
    """knowledge.kernels, or the kernels/ folder next to this script when the package isn't installed."""
    try:
        return importlib.import_module("knowledge.kernels")
    except Exception:  # not installed, or the knowledge package needs dependencies missing here
        root = Path(__file__).resolve().parents[1] / "kernels"
        spec = importlib.util.spec_from_file_location(
            "knowledge_kernels", root / "__init__.py", submodule_search_locations=[str(root)]
        )
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules["knowledge_kernels"] = module
        spec.loader.exec_module(module)
        return module


def submodule(kk: Any, name: str) -> Any:
    return importlib.import_module(f"{kk.__name__}.{name}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output path prefix: writes <out>.json and <out>.md")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test, seconds)")
    p.add_argument("--peak-gbps", type=float, default=None, help="override the peak HBM bandwidth (GB/s)")
    p.add_argument("--dim", type=int, default=None, help="vector dimension (default 384; quick 128)")
    p.add_argument("--equiv-rows", type=int, default=None, help="rows for equivalence checks")
    p.add_argument("--tp-rows", type=int, default=None, help="rows for the throughput comparison")
    p.add_argument("--tp-queries", type=int, default=None, help="batch size for the throughput comparison")
    p.add_argument("--bw-rows", type=int, default=None, help="rows for the bandwidth scan (default 10M)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument("--k", type=int, default=10, help="k for throughput and bandwidth runs")
    p.add_argument("--skip-faiss", action="store_true", help="do not run the faiss-cpu baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-base", default=None,
                   help="comma-separated .npy files of real embeddings (float32 [n, d]) checked as one more data set")
    p.add_argument("--real-queries", default=None, help=".npy of real query embeddings for --real-base")
    args = p.parse_args(argv)
    defaults = (
        dict(dim=128, equiv_rows=20_000, tp_rows=100_000, tp_queries=256, bw_rows=1_000_000, repeat=3)
        if args.quick
        else dict(dim=384, equiv_rows=200_000, tp_rows=1_000_000, tp_queries=1000, bw_rows=10_000_000, repeat=10)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def device_info(cp: Any, peak_override: float | None) -> dict[str, Any]:
    """Name, SMs, memory and peak bandwidth (2 x memory clock x bus width, DDR) of the current GPU."""
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props.get("name", b"?")
    name = name.decode() if isinstance(name, bytes) else str(name)

    def attribute(key: str, code: int) -> int | None:
        value = props.get(key)
        if value:
            return int(value)
        try:  # CUDA 13 dropped memoryClockRate from cudaDeviceProp; the attribute API still has it
            return int(cp.cuda.runtime.deviceGetAttribute(code, dev.id)) or None
        except Exception:
            return None

    clock_khz = attribute("memoryClockRate", 36)  # cudaDevAttrMemoryClockRate
    bus_bits = attribute("memoryBusWidth", 37)  # cudaDevAttrGlobalMemoryBusWidth
    peak = 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None
    return {
        "name": name,
        "device_id": dev.id,
        "compute_capability": str(dev.compute_capability),
        "sm_count": int(props.get("multiProcessorCount", 0)),
        "total_memory_gib": round(int(props.get("totalGlobalMem", 0)) / 2**30, 2),
        "memory_clock_khz": clock_khz,
        "memory_bus_bits": bus_bits,
        "peak_gbps_from_device": None if peak is None else round(peak, 1),
        "peak_gbps": peak_override if peak_override else (None if peak is None else round(peak, 1)),
        "peak_source": "--peak-gbps" if peak_override else ("device attributes" if peak else "unknown"),
        "cupy": cp.__version__,
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion() if hasattr(cp.cuda.runtime, "runtimeGetVersion")
        else None,
    }


# ------------------------------------------------------------------------------------------------
# data


def random_data(rng: np.random.Generator, n: int, d: int, nq: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((nq, d), dtype=np.float32), rng.standard_normal((n, d), dtype=np.float32)


def lowrank_data(rng: np.random.Generator, n: int, d: int, nq: int, rank: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Rows on a rank-16 subspace plus 5% noise; queries are perturbed base rows (near duplicates)."""
    basis = rng.standard_normal((rank, d), dtype=np.float32)
    base = rng.standard_normal((n, rank), dtype=np.float32) @ basis
    base += 0.05 * rng.standard_normal((n, d), dtype=np.float32)
    picks = rng.integers(0, n, nq)
    queries = base[picks] + 0.01 * rng.standard_normal((nq, d), dtype=np.float32)
    return queries.astype(np.float32), base.astype(np.float32)


def exact_data(rng: np.random.Generator, n: int, d: int, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """Small integers (exact arithmetic in any order, many exact ties); queries normalise exactly."""
    base = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    base[rng.integers(0, n, n // 8)] = base[rng.integers(0, n, n // 8)]
    queries = np.zeros((nq, d), dtype=np.float32)
    for i in range(nq):
        queries[i, rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return queries, base


def real_data(base_paths: str, queries_path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Real embeddings: the rows of every --real-base file stacked; queries from --real-queries (else the
    first 64 rows)."""
    base = np.concatenate([np.load(p).astype(np.float32) for p in base_paths.split(",")])
    queries = np.load(queries_path).astype(np.float32)[:64] if queries_path else base[:64].copy()
    return queries, base


DATASETS = {"random": random_data, "lowrank": lowrank_data, "exact": exact_data}


# ------------------------------------------------------------------------------------------------
# (a) equivalence


def true_scores(kk: Any, queries: np.ndarray, base: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """float64 scores of the given ids (padding -> nan), from the same prepared queries as the paths."""
    validate = submodule(kk, "validate")
    q = validate.prepare_queries(validate.host_queries(queries, base.shape[1]), metric, base.dtype).vectors
    q = q.astype(np.float64)
    rows = base[np.clip(ids, 0, None)].astype(np.float64)  # [nq, k, d]
    dots = np.einsum("qd,qkd->qk", q, rows)
    if metric == "cosine":
        norms = np.linalg.norm(rows, axis=2)
        out = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 0)
    elif metric == "l2":
        out = np.maximum((q * q).sum(1)[:, None] + (rows * rows).sum(2) - 2 * dots, 0)
    else:
        out = dots
    return np.where(ids >= 0, out, np.nan)


def compare(kk: Any, queries, base, metric, cpu_res, gpu_res, exact: bool) -> dict[str, Any]:
    """Agreement between two (scores, ids) results; ok when ids differ only at near ties."""
    (cs, ci), (gs, gi) = cpu_res, gpu_res
    same = ci == gi
    finite = np.isfinite(cs) & np.isfinite(gs)
    max_diff = float(np.max(np.abs(cs[finite] - gs[finite]), initial=0.0))
    scale = float(np.max(np.abs(cs[finite]), initial=1.0)) or 1.0
    tol = 0.0 if exact else 3e-5 * max(1.0, scale)
    result = {"id_match": float(same.mean()) if same.size else 1.0, "max_score_diff": max_diff,
              "padding_equal": bool(((ci < 0) == (gi < 0)).all()), "tolerance": tol}
    gap = 0.0
    if not same.all():
        t_cpu = true_scores(kk, queries, base, ci, metric)
        t_gpu = true_scores(kk, queries, base, gi, metric)
        diff = np.abs(t_cpu - t_gpu)[~same]
        gap = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf")
    result["max_true_gap_at_mismatch"] = gap
    ok = result["padding_equal"] and max_diff <= tol and gap <= tol
    if exact:
        ok = ok and bool(same.all())
    result["ok"] = bool(ok)
    return result


def run_equivalence(kk: Any, cp: Any, args: argparse.Namespace, rng: np.random.Generator) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    n, d = args.equiv_rows, args.dim
    datasets = dict(DATASETS)
    if args.real_base:
        datasets["real"] = lambda *_: real_data(args.real_base, args.real_queries)
    for ds_name, make in datasets.items():
        queries_all, base32 = make(rng, n, d, 64)
        rows_n = base32.shape[0]
        mask_half = rng.random(rows_n) < 0.5
        mask_few = np.zeros(rows_n, dtype=bool)
        mask_few[rng.choice(rows_n, 5, replace=False)] = True
        for dtype in (np.float32, np.float16):
            base = base32.astype(dtype)
            base_d = cp.asarray(base)
            for metric in METRICS:
                for nq, k, mask_name in ((1, 10, None), (3, 10, "half"), (64, 100, None), (64, 10, "few")):
                    mask = {"half": mask_half, "few": mask_few, None: None}[mask_name]
                    rows.append(one_case(kk, cp, ds_name, queries_all[:nq], base, base_d, metric, k, mask,
                                         mask_name))
            del base_d
    rows.extend(extra_cases(kk, cp, rng, d))
    return rows


def one_case(kk, cp, ds_name, queries, base, base_d, metric, k, mask, mask_name) -> dict[str, Any]:
    case = {"dataset": ds_name, "dtype": str(base.dtype), "metric": metric, "nq": int(queries.shape[0]),
            "k": k, "mask": mask_name or "none"}
    try:
        cpu_res = kk.topk(queries, base, k, metric, mask, device="cpu")
        g = kk.topk(cp.asarray(queries), base_d, k, metric, None if mask is None else cp.asarray(mask))
        gpu_res = (cp.asnumpy(g[0]), cp.asnumpy(g[1]))
        case.update(compare(kk, queries, base, metric, cpu_res, gpu_res, exact=ds_name == "exact"))
    except Exception as exc:  # keep going: report the failure
        case.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=5))
    return case


def extra_cases(kk: Any, cp: Any, rng: np.random.Generator, d: int) -> list[dict[str, Any]]:
    """k above the select limit, select kernel vs sort fallback, numpy inputs with device='gpu'."""
    gpu, validate = submodule(kk, "gpu"), submodule(kk, "validate")
    out = []
    queries, base = exact_data(rng, 20_000, d, 8)
    for metric in METRICS:
        k = gpu.SELECT_MAX_K + 500
        out.append(one_case(kk, cp, "exact-bigk", queries, base, cp.asarray(base), metric, k, None, None))
        case = {"dataset": "select-vs-sort", "dtype": "float32", "metric": metric, "nq": 8, "k": 500,
                "mask": "none"}
        try:
            prepared = validate.prepare_queries(queries, metric, base.dtype)
            a = gpu.topk_composites(prepared, cp.asarray(base), 500, metric, select="kernel")
            b = gpu.topk_composites(prepared, cp.asarray(base), 500, metric, select="sort")
            case.update(ok=bool((cp.asnumpy(a) == cp.asnumpy(b)).all()), id_match=float((a == b).mean()))
        except Exception as exc:
            case.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=5))
        out.append(case)
    case = {"dataset": "numpy-in/device=gpu", "dtype": "float16", "metric": "ip", "nq": 8, "k": 10, "mask": "none"}
    try:
        g = kk.topk(queries, base.astype(np.float16), 10, "ip", device="gpu")
        c = kk.topk(queries, base.astype(np.float16), 10, "ip", device="cpu")
        case.update(ok=isinstance(g[0], np.ndarray) and bool((g[1] == c[1]).all() and (g[0] == c[0]).all()))
    except Exception as exc:
        case.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    out.append(case)
    return out


# ------------------------------------------------------------------------------------------------
# (b) throughput and (c) bandwidth


def gpu_time(cp: Any, fn: Any, repeat: int) -> float:
    """Mean seconds per call of fn() on the GPU (one warm-up call, then `repeat` timed calls)."""
    fn()
    cp.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - start) / repeat


def host_time(fn: Any, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def run_throughput(kk: Any, cp: Any, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    n, d, nq, k = args.tp_rows, args.dim, args.tp_queries, args.k
    queries, base = random_data(rng, n, d, nq)
    res: dict[str, Any] = {"rows": n, "dim": d, "batch": nq, "k": k, "metric": "ip", "results": []}
    q_d = cp.asarray(queries)
    for dtype in (np.float32, np.float16):
        base_d = cp.asarray(base.astype(dtype))
        t_batch = gpu_time(cp, lambda b=base_d: kk.topk(q_d, b, k, "ip"), args.repeat)
        singles = min(nq, 100)
        t_single = gpu_time(cp, lambda b=base_d, s=singles: [kk.topk(q_d[i], b, k, "ip") for i in range(s)], 1)
        res["results"].append({"engine": f"knowledge GPU ({np.dtype(dtype).name})",
                               "batch_qps": nq / t_batch, "batch1_qps": singles / t_single})
        del base_d
    cpu_q = min(nq, 100)
    t_cpu = host_time(lambda: kk.topk(queries[:cpu_q], base, k, "ip", device="cpu"), 1)
    res["results"].append({"engine": "knowledge CPU path (float32)", "batch_qps": cpu_q / t_cpu,
                           "batch1_qps": None, "note": f"batch of {cpu_q}"})
    res["results"].append(faiss_baseline(queries, base, k, args))
    return res


def faiss_baseline(queries: np.ndarray, base: np.ndarray, k: int, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"engine": "faiss-cpu IndexFlatIP (float32)", "batch_qps": None, "batch1_qps": None}
    if args.skip_faiss:
        row["note"] = "skipped (--skip-faiss)"
        return row
    try:
        import faiss
    except Exception as exc:
        row["note"] = f"skipped: faiss not importable ({type(exc).__name__})"
        return row
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    t_batch = host_time(lambda: index.search(queries, k), max(1, args.repeat // 5))
    singles = min(len(queries), 50)
    t_single = host_time(lambda: [index.search(queries[i:i + 1], k) for i in range(singles)], 1)
    row.update(batch_qps=len(queries) / t_batch, batch1_qps=singles / t_single,
               note=f"{faiss.omp_get_max_threads()} OpenMP threads")
    return row


def make_device_base(cp: Any, n: int, d: int, seed: int) -> Any:
    """n x d float16 random rows generated on the device in 1M-row slices (no host copy)."""
    base = cp.empty((n, d), dtype=cp.float16)
    gen = cp.random.RandomState(seed)
    step = 1 << 20
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        base[r0:r1] = gen.standard_normal((r1 - r0, d), dtype=cp.float32).astype(cp.float16)
    return base


def run_bandwidth(kk: Any, cp: Any, args: argparse.Namespace, peak_gbps: float | None) -> dict[str, Any]:
    gpu = submodule(kk, "gpu")
    n, d = args.bw_rows, args.dim
    base = make_device_base(cp, n, d, args.seed)
    q = cp.asarray(np.random.default_rng(args.seed).standard_normal((1, d), dtype=np.float32))
    bytes_read = n * d * 2
    res: dict[str, Any] = {"rows": n, "dim": d, "dtype": "float16", "k": args.k, "base_bytes": bytes_read,
                           "peak_gbps": peak_gbps, "results": []}
    q32 = q.astype(cp.float32)
    runs = [(f"topk batch-1 {metric}", lambda m=metric: kk.topk(q, base, args.k, m)) for metric in ("ip", "l2")]
    runs.append(("scan kernel only (dots)", lambda: gpu.scan_dots(cp, base, q32, False)))
    runs.append(("scan kernel only (dots + norms)", lambda: gpu.scan_dots(cp, base, q32, True)))
    runs.append(("general scan kernel (dots)", lambda: gpu.scan_dots(cp, base, q32, False, kernel="general")))
    for name, fn in runs:
        t = gpu_time(cp, fn, args.repeat)
        gbps = bytes_read / t / 1e9
        res["results"].append({"run": name, "ms": t * 1e3, "gbps": gbps,
                               "fraction_of_peak": None if not peak_gbps else gbps / peak_gbps})
    # where the time beyond the scan goes: select + merge alone over the dots, and the segment count
    dots, norms = gpu.scan_dots(cp, base, q32, False)
    chunk = gpu._ChunkArgs(cp, dots, norms, cp.zeros((1,), dtype=np.float32), None, "ip", 0)
    running = cp.zeros((1, args.k), dtype=np.uint64)
    default_spm = gpu.SEGMENTS_PER_SM
    res["select"] = []
    for spm in (2, 4, 8, 16, 32):
        gpu.SEGMENTS_PER_SM = spm
        t_select = gpu_time(cp, lambda: gpu.select_merge(cp, running, chunk, args.k), args.repeat)
        t_topk = gpu_time(cp, lambda: kk.topk(q, base, args.k, "ip"), args.repeat)
        res["select"].append({"segments_per_sm": spm, "select_merge_ms": t_select * 1e3, "topk_ms": t_topk * 1e3,
                              "topk_fraction_of_peak": None if not peak_gbps else bytes_read / t_topk / 1e9 / peak_gbps})
    gpu.SEGMENTS_PER_SM = default_spm
    return res


# ------------------------------------------------------------------------------------------------
# report


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(report: dict[str, Any]) -> str:
    dev = report["device"]
    lines = ["# knowledge.kernels GPU check", "",
             f"- device: {dev['name']} (cc {dev['compute_capability']}, {dev['sm_count']} SMs, "
             f"{dev['total_memory_gib']} GiB), CuPy {dev['cupy']}",
             f"- peak HBM bandwidth: {fmt(dev['peak_gbps'])} GB/s ({dev['peak_source']})",
             f"- host: {report['host']['cpu_count']} CPUs, {report['host']['platform']}",
             f"- mode: {'quick' if report['args']['quick'] else 'full'}; total {report['seconds']:.0f} s", ""]
    eq = report.get("equivalence", [])
    failed = [c for c in eq if not c.get("ok")]
    lines += ["## (a) GPU path == CPU path", "",
              f"{len(eq) - len(failed)}/{len(eq)} cases passed.", "",
              "| dataset | dtype | metric | nq | k | mask | id match | max score diff | max true gap | ok |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in eq:
        lines.append(f"| {c['dataset']} | {c['dtype']} | {c['metric']} | {c['nq']} | {c['k']} | {c['mask']} | "
                     f"{fmt(c.get('id_match'), 4)} | {fmt(c.get('max_score_diff'), 7)} | "
                     f"{fmt(c.get('max_true_gap_at_mismatch'), 7)} | {'yes' if c.get('ok') else 'NO'} |")
    for c in failed:
        if "error" in c:
            lines += ["", f"- {c['dataset']}/{c['dtype']}/{c['metric']}: `{c['error']}`"]
    tp = report.get("throughput")
    if tp:
        lines += ["", f"## (b) Throughput: {tp['rows']:,} x {tp['dim']}, ip, k={tp['k']}", "",
                  f"| engine | batch of {tp['batch']} (queries/s) | batch-1 (queries/s) | note |", "|---|---|---|---|"]
        for r in tp["results"]:
            lines.append(f"| {r['engine']} | {fmt(r['batch_qps'])} | {fmt(r['batch1_qps'])} | {r.get('note', '')} |")
    bw = report.get("bandwidth")
    if bw:
        lines += ["", f"## (c) Batch-1 scan bandwidth: {bw['rows']:,} x {bw['dim']} float16 "
                  f"({bw['base_bytes'] / 1e9:.2f} GB of rows per scan)", "",
                  "| run | ms per scan | GB/s (base bytes) | fraction of peak |", "|---|---|---|---|"]
        for r in bw["results"]:
            frac = "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}%"
            lines.append(f"| {r['run']} | {r['ms']:.3f} | {r['gbps']:,.0f} | {frac} |")
        if bw.get("select"):
            lines += ["", f"Select + merge of the {bw['rows']:,} dots alone, and batch-1 top-k (ip), by select "
                      "segments per multiprocessor:", "",
                      "| segments/SM | select+merge ms | topk ms | topk fraction of peak |", "|---|---|---|---|"]
            for r in bw["select"]:
                frac = "-" if r["topk_fraction_of_peak"] is None else f"{100 * r['topk_fraction_of_peak']:.1f}%"
                lines.append(f"| {r['segments_per_sm']} | {r['select_merge_ms']:.3f} | {r['topk_ms']:.3f} | {frac} |")
    for section in ("throughput_error", "bandwidth_error"):
        if report.get(section):
            lines += ["", f"**{section}**: `{report[section]}`"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str) -> tuple[Path, Path]:
    prefix = Path(out)
    if prefix.suffix in (".json", ".md"):
        prefix = prefix.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=2, default=str))
    md_path.write_text(markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    kk = load_kernels()
    ok, reason = kk.gpu_available()
    if not ok:
        print(f"gpu_check: no usable GPU, nothing to check: {reason}", file=sys.stderr)
        return EXIT_NO_GPU
    import cupy as cp

    rng = np.random.default_rng(args.seed)
    info = device_info(cp, args.peak_gbps)
    print(f"gpu_check: {info['name']}, peak {fmt(info['peak_gbps'])} GB/s ({info['peak_source']})", flush=True)
    report: dict[str, Any] = {"args": vars(args), "device": info, "gpu_available": reason,
                              "host": {"cpu_count": os.cpu_count(), "platform": platform.platform()}}
    print("gpu_check: (a) equivalence ...", flush=True)
    report["equivalence"] = run_equivalence(kk, cp, args, rng)
    print("gpu_check: (b) throughput ...", flush=True)
    try:
        report["throughput"] = run_throughput(kk, cp, args, rng)
    except Exception as exc:
        report["throughput_error"] = f"{type(exc).__name__}: {exc}"
    cp.get_default_memory_pool().free_all_blocks()
    print("gpu_check: (c) bandwidth ...", flush=True)
    try:
        report["bandwidth"] = run_bandwidth(kk, cp, args, info["peak_gbps"])
    except Exception as exc:
        report["bandwidth_error"] = f"{type(exc).__name__}: {exc}"
    report["seconds"] = time.perf_counter() - started
    json_path, md_path = write_report(report, args.out)
    print(markdown(report))
    print(f"gpu_check: wrote {json_path} and {md_path}")
    failed = [c for c in report["equivalence"] if not c.get("ok")]
    return EXIT_MISMATCH if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
