"""GPU path (CuPy): dot products, then a masked top-k RawKernel, chunked over base rows.

For each block of queries and each chunk of base rows:

1. dot products, float32 accumulation: for up to ``SCAN_MAX_NQ`` queries a fused scan kernel reads
   the base once (float16 or float32 rows, 16-byte loads) and also yields the rows' squared norms;
   for larger batches cuBLAS ``GemmEx`` with ``CUBLAS_COMPUTE_32F`` (tensor cores for float16
   storage, never TF32), squared norms from the scan kernel with no queries;
2. ``select_chunk``: each block takes one segment of one query's row, turns dot products into scores
   and composites (``keys.py`` arithmetic, mask applied) and radix-selects that segment's top-k;
3. ``merge_topk``: per query, top-k of the running list plus all segment candidates, bitonic-sorted.

k above ``SELECT_MAX_K`` uses ``chunk_composites`` + ``cupy.sort`` instead (same composites, so the
same answer). cupy is imported lazily: importing this module never requires it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .validate import PreparedQueries

logger = logging.getLogger("knowledge.kernels")

CUDA_SOURCE = Path(__file__).with_name("topk.cu")
SCAN1_UNROLLS = (2, 4, 6, 8, 12, 16)  # must match the KNOWLEDGE_SCAN1 instantiations in topk.cu
KERNEL_NAMES: tuple[str, ...] = ("select_chunk", "merge_topk", "chunk_composites", "scan_dots_f16", "scan_dots_f32",
                                 *(f"scan1_{t}_u{u}" for t in ("f16", "f32") for u in SCAN1_UNROLLS))
METRIC_CODES = {"ip": 0, "cosine": 1, "l2": 2}

SELECT_MAX_K = 2048  # merge_topk sorts next_pow2(k) composites in 16 KiB of shared memory
SCAN_MAX_NQ = 4  # must match SCAN_MAX_NQ in topk.cu
MIN_COMPUTE_CAPABILITY = 70  # __match_any_sync
THREADS = 256
SCAN_TEAM = 8  # must match SCAN_TEAM in topk.cu
_SCAN_ROWS_PER_BLOCK = (THREADS // 32) * (32 // SCAN_TEAM)  # one row per team of SCAN_TEAM lanes
SEGMENTS_PER_SM = 4  # select_chunk blocks per multiprocessor for one query (bench/gpu_check.py sweeps it)
_SCAN_SHARED_LIMIT = 48 * 1024
_SCORE_BUDGET = 1 << 26  # float32 dot products alive at once (256 MiB)
_RUNNING_BUDGET = 1 << 25  # composites in the running top-k of one query block (256 MiB)
_MAX_QUERY_BLOCK = 4096
_MIN_CHUNK = 65536
_MIN_SEGMENT = 2048
_MAX_CANDIDATES = 1 << 16  # per query and chunk, fed to merge_topk


def cuda_source_paths() -> list[Path]:
    """Every CUDA source file of the package (compiled at run time by NVRTC)."""
    return sorted(CUDA_SOURCE.parent.glob("*.cu"))


def import_cupy() -> Any:
    """The cupy module; raises ImportError when it is not installed."""
    import cupy

    return cupy


@functools.cache
def kernels(device_id: int) -> dict[str, Any]:
    """Compiled kernels for one device, by name (compiles on first use; cached)."""
    cp = import_cupy()
    with cp.cuda.Device(device_id):
        module = cp.RawModule(code=CUDA_SOURCE.read_text(), options=("--std=c++14",))
        return {name: module.get_function(name) for name in KERNEL_NAMES}


@functools.cache
def sm_count(device_id: int) -> int:
    cp = import_cupy()
    return int(cp.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"])


def _i32(x: int) -> np.int32:
    return np.int32(x)


def _i64(x: int) -> np.int64:
    return np.int64(x)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def device_base(cp: Any, base: Any) -> Any:
    """Base as a C-contiguous float16/float32 CuPy array (float64 is converted to float32)."""
    b = cp.asarray(base)
    if b.dtype == np.float64:
        b = b.astype(np.float32)
    return cp.ascontiguousarray(b)


def scan1_unroll(d: int, dtype: Any) -> int | None:
    """The scan1 kernel's U for rows of d elements of `dtype` (16-byte vectors per lane), or None when d is
    not a whole number of 16-byte vectors or a row needs more than SCAN_TEAM * max(SCAN1_UNROLLS) of them."""
    width = 8 if dtype == np.float16 else 4
    if d % width:
        return None
    per_lane = math.ceil(d // width / SCAN_TEAM)
    return next((u for u in SCAN1_UNROLLS if u >= per_lane), None)


def scan_dots(cp: Any, chunk: Any, queries: Any, want_norms: bool, kernel: str = "auto") -> tuple[Any, Any]:
    """(dots [nq, m], sqnorms [m]) for nq <= SCAN_MAX_NQ float32 queries in one pass over ``chunk``.

    ``queries`` may have 0 rows (squared norms only). sqnorms is a 1-element dummy unless want_norms.
    ``kernel``: "auto" (the batch-1 kernel where it applies: nq <= 1, 16-byte rows), or "general".
    """
    m, d = chunk.shape
    nq = queries.shape[0]
    dev = cp.cuda.Device().id
    f16 = chunk.dtype == np.float16
    width = 8 if f16 else 4
    vec = int(d % width == 0 and chunk.data.ptr % 16 == 0)
    dots = cp.empty((max(nq, 1), m), dtype=np.float32)
    norms = cp.empty((m if want_norms else 1,), dtype=np.float32)
    q = queries if nq else cp.zeros((1, d), dtype=np.float32)
    blocks = max(1, min(sm_count(dev) * 8, math.ceil(m / _SCAN_ROWS_PER_BLOCK)))
    unroll = scan1_unroll(d, chunk.dtype) if kernel == "auto" and nq <= 1 and vec else None
    if unroll is not None:
        name = f"scan1_{'f16' if f16 else 'f32'}_u{unroll}"
    else:
        name = "scan_dots_f16" if f16 else "scan_dots_f32"
    args = (chunk, _i64(m), _i32(d), _i32(vec), q, _i32(nq), _i32(int(want_norms)), dots, norms)
    if unroll is not None:
        args = (chunk, _i64(m), _i32(d), q, _i32(nq), _i32(int(want_norms)), dots, norms)
    kernels(dev)[name]((blocks,), (THREADS,), args, shared_mem=nq * d * 4)
    return dots, norms


def _cublas() -> Any:
    try:
        from cupy_backends.cuda.libs import cublas
    except ImportError:  # pragma: no cover - older layouts
        from cupy.cuda import cublas
    return cublas


def gemm_dots(cp: Any, queries: Any, chunk: Any) -> Any:
    """dots [nq, m] = queries [nq, d] @ chunk[m, d].T, float32 output and float32 accumulation.

    ``queries`` must have the chunk's dtype (float16 queries hold float16-rounded values, so every
    product is exact in float32). Uses cublasGemmEx with CUBLAS_COMPUTE_32F (no TF32).
    """
    cublas = _cublas()
    runtime = cp.cuda.runtime
    nq, d = queries.shape
    m = chunk.shape[0]
    dots = cp.empty((nq, m), dtype=np.float32)
    f16 = chunk.dtype == np.float16
    in_type = getattr(runtime, "CUDA_R_16F", 2) if f16 else getattr(runtime, "CUDA_R_32F", 0)
    one, zero = np.ones(1, dtype=np.float32), np.zeros(1, dtype=np.float32)
    handle = cp.cuda.device.get_cublas_handle()
    with _host_pointers_default_math(cublas, handle):
        # Row-major C[nq, m] is column-major C^T[m, nq] = chunk(m x d) . queries^T(d x nq).
        _gemm_ex(cublas, runtime, handle, m, nq, d, one, zero, chunk, queries, dots, in_type)
    return dots


@contextlib.contextmanager
def _host_pointers_default_math(cublas: Any, handle: int) -> Iterator[None]:
    """Host pointer mode (alpha/beta live on the host) and default math (no TF32) for one call."""
    pointer_mode, math_mode = cublas.getPointerMode(handle), cublas.getMathMode(handle)
    cublas.setPointerMode(handle, getattr(cublas, "CUBLAS_POINTER_MODE_HOST", 0))
    cublas.setMathMode(handle, getattr(cublas, "CUBLAS_DEFAULT_MATH", 0))
    try:
        yield
    finally:
        cublas.setPointerMode(handle, pointer_mode)
        cublas.setMathMode(handle, math_mode)


def _gemm_ex(cublas: Any, runtime: Any, handle: int, m: int, nq: int, d: int, one: np.ndarray,
             zero: np.ndarray, chunk: Any, queries: Any, dots: Any, in_type: int) -> None:
    cublas.gemmEx(
        handle,
        getattr(cublas, "CUBLAS_OP_T", 1), getattr(cublas, "CUBLAS_OP_N", 0),
        m, nq, d,
        one.ctypes.data, chunk.data.ptr, in_type, d,
        queries.data.ptr, in_type, d,
        zero.ctypes.data, dots.data.ptr, getattr(runtime, "CUDA_R_32F", 0), m,
        getattr(cublas, "CUBLAS_COMPUTE_32F", 68), getattr(cublas, "CUBLAS_GEMM_DEFAULT", -1),
    )


def chunk_dots(cp: Any, queries32: Any, queries_native: Any, chunk: Any, want_norms: bool) -> tuple[Any, Any]:
    """(dots, sqnorms) for one query block and one chunk, picking the scan kernel or GemmEx."""
    nq, d = queries32.shape
    if nq <= SCAN_MAX_NQ and nq * d * 4 <= _SCAN_SHARED_LIMIT:
        return scan_dots(cp, chunk, queries32, want_norms)
    dots = gemm_dots(cp, queries_native, chunk)
    if not want_norms:
        return dots, cp.zeros((1,), dtype=np.float32)
    _, norms = scan_dots(cp, chunk, queries32[:0], True)
    return dots, norms


def segments(nq: int, m: int, k: int, device_id: int) -> tuple[int, int]:
    """(number of segments, segment length) splitting a chunk's m columns for select_chunk."""
    target = max(1, math.ceil(SEGMENTS_PER_SM * sm_count(device_id) / max(nq, 1)))
    count = min(target, max(1, _MAX_CANDIDATES // k), max(1, m // _MIN_SEGMENT))
    length = math.ceil(m / count)
    return math.ceil(m / length), length


class _ChunkArgs:
    """Everything select/merge need about one chunk's dot products."""

    def __init__(self, cp: Any, dots: Any, norms: Any, qn2: Any, mask: Any | None, metric: str, r0: int):
        self.dots, self.norms, self.qn2, self.metric, self.r0 = dots, norms, qn2, metric, r0
        self.has_mask = mask is not None
        self.mask = mask if mask is not None else cp.zeros((1,), dtype=np.uint8)

    def head(self, m: int) -> tuple[Any, ...]:
        return (self.dots, _i64(m), self.norms, self.qn2, self.mask, _i32(int(self.has_mask)),
                _i32(METRIC_CODES[self.metric]), _i32(m))


def select_merge(cp: Any, running: Any, chunk: _ChunkArgs, k: int) -> Any:
    """Running top-k [nq, k] merged with one chunk via select_chunk + merge_topk (k <= SELECT_MAX_K)."""
    nq, m = chunk.dots.shape[0], chunk.dots.shape[1]
    dev = cp.cuda.Device().id
    fns = kernels(dev)
    count, length = segments(nq, m, k, dev)
    cand = cp.empty((nq, count, k), dtype=np.uint64)
    fns["select_chunk"]((count, nq), (THREADS,), chunk.head(m) + (_i32(length), _i64(chunk.r0), _i32(k), cand))
    merged = cp.empty_like(running)
    p = _next_pow2(k)
    args = (running, cand, _i32(count * k), _i32(k), _i32(p), merged)
    fns["merge_topk"]((nq,), (THREADS,), args, shared_mem=p * 8)
    return merged


def sort_merge(cp: Any, running: Any, chunk: _ChunkArgs, k: int) -> Any:
    """Running top-k merged with one chunk by sorting every composite (any k; slower)."""
    nq, m = chunk.dots.shape[0], chunk.dots.shape[1]
    dev = cp.cuda.Device().id
    comps = cp.empty((nq, m), dtype=np.uint64)
    blocks = max(1, min(sm_count(dev) * 16, math.ceil(nq * m / THREADS)))
    kernels(dev)["chunk_composites"]((blocks,), (THREADS,), chunk.head(m) + (_i32(nq), _i64(chunk.r0), comps))
    both = cp.sort(cp.concatenate([running, comps], axis=1), axis=1)
    return cp.ascontiguousarray(both[:, ::-1][:, :k])


def _block_sizes(nq: int, n: int, k: int) -> tuple[int, int]:
    qb = max(1, min(nq, _MAX_QUERY_BLOCK, _RUNNING_BUDGET // k))
    m = max(1, min(n, max(_MIN_CHUNK, _SCORE_BUDGET // qb)))
    return qb, m


def topk_composites(
    q: PreparedQueries, base: Any, k: int, metric: str, mask: Any | None = None, *, select: str = "auto"
) -> Any:
    """Top-k composites [nq, k] (CuPy uint64, best first, 0 = padding) on the current GPU.

    ``base`` (numpy or CuPy, float16/32/64) is moved to the device once; ``mask`` is a bool [n] or None.
    ``select``: "auto" (RawKernel select for k <= SELECT_MAX_K, sort above), "kernel" or "sort".
    """
    cp = import_cupy()
    base_d = device_base(cp, base)
    mask_d = None if mask is None else cp.ascontiguousarray(cp.asarray(mask)).view(cp.uint8)
    nq, n = q.vectors.shape[0], base_d.shape[0]
    out = cp.zeros((nq, k), dtype=np.uint64)
    if nq == 0 or n == 0:
        return out
    use_kernel = select == "kernel" or (select == "auto" and k <= SELECT_MAX_K)
    if use_kernel and k > SELECT_MAX_K:
        raise ValueError(f"select='kernel' supports k <= {SELECT_MAX_K}, got {k}")
    merge = select_merge if use_kernel else sort_merge
    q32 = cp.asarray(q.vectors)
    q_native = q32.astype(base_d.dtype)  # exact: float16 bases get float16-rounded queries
    qn2_all = cp.asarray(q.sqnorms) if q.sqnorms is not None else None
    qb, m = _block_sizes(nq, n, k)
    for q0 in range(0, nq, qb):
        rows = slice(q0, min(nq, q0 + qb))
        qn2 = qn2_all[rows] if qn2_all is not None else cp.zeros((1,), dtype=np.float32)
        running = cp.zeros((rows.stop - q0, k), dtype=np.uint64)
        for r0 in range(0, n, m):
            chunk = base_d[r0:min(n, r0 + m)]
            dots, norms = chunk_dots(cp, q32[rows], q_native[rows], chunk, metric != "ip")
            chunk_mask = None if mask_d is None else mask_d[r0:r0 + chunk.shape[0]]
            running = merge(cp, running, _ChunkArgs(cp, dots, norms, qn2, chunk_mask, metric, r0), k)
        out[rows] = running
    return out
