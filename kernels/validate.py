"""Argument checking and query preparation shared by the CPU and GPU paths.

Queries are small ([nq, d]), so they are always checked and prepared on the host with numpy; both
paths then receive bit-identical float32 query vectors. Base and mask are only checked for shape and
dtype (never copied or scanned here), so they may be numpy or CuPy arrays.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import (
    DTypeError,
    InvalidDeviceError,
    InvalidKError,
    MaskError,
    NonFiniteInputError,
    ShapeError,
    UnknownMetricError,
)
from .keys import MAX_ROWS, METRICS

MAX_K = 1_000_000
"""Largest accepted ``k``; anything above is rejected as absurdly large."""

DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
BASE_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class PreparedQueries:
    """Host-side queries ready for either path.

    ``vectors`` is C-contiguous float32 [nq, d]: unit length for cosine (zero queries stay zero) and,
    when the base is float16, rounded to float16 values (so every product with a base element is exact
    in float32). ``sqnorms`` is float32 [nq] (squared norms of ``vectors``) for l2, else None.
    """

    vectors: np.ndarray
    sqnorms: np.ndarray | None


def is_cupy_array(x: Any) -> bool:
    """True when ``x`` is a CuPy ndarray (checked without importing cupy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def check_metric(metric: Any) -> str:
    if not isinstance(metric, str) or metric not in METRICS:
        raise UnknownMetricError("metric", f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidKError("k", f"must be an integer, got {type(k).__name__} {k!r}")
    k = int(k)
    if k <= 0:
        raise InvalidKError("k", f"must be >= 1, got {k}")
    if k > MAX_K:
        raise InvalidKError("k", f"{k} is absurdly large (the limit is {MAX_K:,})")
    return k


def check_device(device: Any) -> str:
    if not isinstance(device, str) or device not in DEVICES:
        raise InvalidDeviceError("device", f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    return device


def check_base(base: Any) -> tuple[int, int]:
    """Validate base's shape and dtype; returns (n, d)."""
    shape = getattr(base, "shape", None)
    dtype = getattr(base, "dtype", None)
    if shape is None or dtype is None:
        raise DTypeError("base", f"must be a numpy or CuPy array, got {type(base).__name__}")
    if len(shape) != 2:
        raise ShapeError("base", f"must be 2-D [n, d], got {len(shape)}-D shape {tuple(shape)}")
    if np.dtype(dtype) not in BASE_DTYPES:
        raise DTypeError("base", f"dtype must be float16 or float32 (float64 is converted), got {dtype}")
    n, d = int(shape[0]), int(shape[1])
    if d == 0:
        raise ShapeError("base", "vector dimension d must be >= 1, got 0")
    if n > MAX_ROWS:
        raise ShapeError("base", f"{n} rows exceeds the limit of {MAX_ROWS}")
    return n, d


def check_mask(mask: Any, n: int) -> None:
    """Validate that mask is a boolean vector of length n (numpy or CuPy)."""
    shape = getattr(mask, "shape", None)
    dtype = getattr(mask, "dtype", None)
    if shape is None or dtype is None:
        raise MaskError("mask", f"must be a boolean numpy or CuPy array, got {type(mask).__name__}")
    if np.dtype(dtype) != np.dtype(bool):
        raise MaskError("mask", f"dtype must be bool, got {dtype}")
    if len(shape) != 1:
        raise MaskError("mask", f"must be 1-D, got shape {tuple(shape)}")
    if int(shape[0]) != n:
        raise MaskError("mask", f"length {int(shape[0])} does not match the {n} base rows")


def host_queries(queries: Any, d: int) -> np.ndarray:
    """Queries as a float32 [nq, d] host array; raises on bad shape, dtype, NaN or inf."""
    if is_cupy_array(queries):
        queries = queries.get()
    q = np.asarray(queries)
    if q.dtype.kind not in "fiu" or q.dtype == np.dtype(bool):
        raise DTypeError("queries", f"dtype must be real numeric, got {q.dtype}")
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2:
        raise ShapeError("queries", f"must be [d] or [nq, d], got {q.ndim}-D shape {q.shape}")
    if q.shape[1] != d:
        raise ShapeError("queries", f"dimension {q.shape[1]} does not match the base dimension {d}")
    q32 = np.ascontiguousarray(q, dtype=np.float32)
    if not np.isfinite(q32).all():
        bad = np.argwhere(~np.isfinite(q32))[0]
        raise NonFiniteInputError(
            "queries", f"contain NaN or inf (first at query {bad[0]}, component {bad[1]}, as float32)"
        )
    return q32


def _sqnorms(q: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", q, q, dtype=np.float32)


def prepare_queries(q32: np.ndarray, metric: str, base_dtype: Any) -> PreparedQueries:
    """Normalise (cosine), round to float16 values (float16 base) and compute squared norms (l2).

    Raises NonFiniteInputError when a query does not fit float16 for a float16 base.
    """
    q = q32
    if metric == "cosine":
        norms = np.sqrt(_sqnorms(q))[:, None]
        q = np.where(norms > 0, q / np.where(norms > 0, norms, np.float32(1)), np.float32(0))
    if np.dtype(base_dtype) == np.dtype(np.float16):
        with np.errstate(over="ignore"):
            q = q.astype(np.float16).astype(np.float32)
        if not np.isfinite(q).all():
            raise NonFiniteInputError("queries", "exceed the float16 range (|x| > 65504) for a float16 base")
    q = np.ascontiguousarray(q, dtype=np.float32)
    return PreparedQueries(vectors=q, sqnorms=_sqnorms(q) if metric == "l2" else None)
