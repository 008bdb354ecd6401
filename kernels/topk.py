"""Public entry point: exact top-k similarity search on the CPU (numpy) or the GPU (CuPy)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from . import cpu, gpu
from .detect import gpu_available
from .errors import GpuUnavailableError
from .keys import decode
from .validate import (
    PreparedQueries,
    check_base,
    check_device,
    check_k,
    check_mask,
    check_metric,
    host_queries,
    is_cupy_array,
    prepare_queries,
)

logger = logging.getLogger("knowledge.kernels")


def _use_gpu(device: str, on_gpu: bool) -> bool:
    """Resolve ``device`` to a path; raises GpuUnavailableError for device="gpu" without a GPU."""
    if device == "cpu":
        return False
    if device == "auto" and not on_gpu:
        return False
    ok, reason = gpu_available()
    if ok:
        return True
    if device == "gpu":
        raise GpuUnavailableError(f"device='gpu' requested but the GPU path cannot run: {reason}")
    return False  # CuPy inputs without a working GPU path: the reason was logged once


def _to_host(x: Any) -> Any:
    return x.get() if is_cupy_array(x) else x


def _run_cpu(q: PreparedQueries, base: Any, k: int, metric: str, mask: Any | None) -> np.ndarray:
    host_mask = None if mask is None else np.asarray(_to_host(mask))
    return cpu.topk_composites(q, _to_host(base), k, metric, host_mask)


def topk(
    queries: Any,
    base: Any,
    k: int,
    metric: str = "cosine",
    mask: Any | None = None,
    *,
    device: str = "auto",
) -> tuple[Any, Any]:
    """Exact top-k rows of ``base`` for each query, best first.

    Args:
        queries: [nq, d] or [d] (a batch of one), any real dtype, numpy or CuPy. Must be finite.
        base: [n, d] float16 or float32 (float64 is converted to float32), numpy or CuPy.
        k: 1 <= k <= MAX_K (1,000,000). k may exceed n: missing slots are padded.
        metric: "cosine" (queries and rows normalised, zero vectors score 0), "ip" (inner product) or
            "l2" (squared Euclidean distance).
        mask: optional bool [n]; rows where it is False are never returned.
        device: "auto" (numpy inputs on the CPU, CuPy inputs on the GPU), "cpu" or "gpu".

    Returns:
        (scores, ids): float32 [nq, k] and int64 [nq, k]; CuPy arrays when ``base`` is a CuPy array,
        numpy otherwise. For cosine and ip the score is the similarity and higher is better; for l2
        it is the squared distance and lower is better. Ties are broken by lower id. When fewer than
        k rows are eligible the tail is padded with id -1 and score -inf (cosine, ip) or +inf (l2).
        Rows whose score is NaN (only possible when the base holds NaN or inf) are never returned.

    Guarantees: both paths compute scores with float32 accumulation from the same prepared queries
    (normalised for cosine; rounded to float16 values when the base is float16, which makes every
    product exact) and rank with the same arithmetic, so they return the same ids and scores equal
    to within float32 summation-order rounding; ids can differ only where two rows' scores are
    within that rounding of each other (exactly equal scores are always ordered by id).

    Raises:
        KernelInputError subclasses (all ValueError): UnknownMetricError, InvalidKError (k not an int,
        k <= 0, k > 1,000,000), ShapeError (wrong ndim, d mismatch, d == 0), DTypeError,
        NonFiniteInputError (NaN/inf in queries), MaskError (not bool, not 1-D, wrong length),
        InvalidDeviceError.
        GpuUnavailableError (RuntimeError): device="gpu" but the GPU path cannot run.
    """
    metric = check_metric(metric)
    k = check_k(k)
    device = check_device(device)
    n, d = check_base(base)
    if mask is not None:
        check_mask(mask, n)
    q = prepare_queries(host_queries(queries, d), metric, base.dtype)
    on_gpu = is_cupy_array(base) or is_cupy_array(queries)
    if _use_gpu(device, on_gpu):
        comp = gpu.topk_composites(q, base, k, metric, mask)
        cp = gpu.import_cupy()
        scores, ids = decode(cp, comp, metric)
        if is_cupy_array(base):
            return scores, ids
        return cp.asnumpy(scores), cp.asnumpy(ids)
    scores, ids = decode(np, _run_cpu(q, base, k, metric, mask), metric)
    if is_cupy_array(base):
        cp = gpu.import_cupy()
        return cp.asarray(scores), cp.asarray(ids)
    return scores, ids
