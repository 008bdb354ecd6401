"""Timing helpers for the suites: latency series (percentiles plus a CDF the SLO check and the plots read),
recall against exact search, progress bars."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

CDF_POINTS_MAX = 1001
"""A latency series keeps at most this many quantile points (0.1% resolution), enough for a p99 SLO."""


def progress(iterable: Iterable[Any], description: str, total: int | None = None, **options: Any) -> Any:
    """A tqdm progress bar on stderr over `iterable` (every long step of a suite runs through one; off where
    stderr is not a terminal, as in CI logs)."""
    return tqdm(iterable, desc=description, total=total, leave=False, dynamic_ncols=True, disable=None, **options)


def series_ms(latencies_ms: Sequence[float]) -> dict[str, Any]:
    """A latency series: count, mean, p50/p90/p95/p99/max and `cdf_ms`, sorted quantile points."""
    values = np.sort(np.asarray(latencies_ms, dtype=np.float64))
    if len(values) == 0:
        return {"count": 0, "cdf_ms": []}
    if len(values) > CDF_POINTS_MAX:
        cdf = np.quantile(values, np.linspace(0.0, 1.0, CDF_POINTS_MAX))
    else:
        cdf = values

    def q(fraction: float) -> float:
        return float(np.quantile(values, fraction))

    return {"count": int(len(values)), "mean_ms": float(values.mean()), "p50_ms": q(0.5), "p90_ms": q(0.9),
            "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": float(values[-1]),
            "cdf_ms": [round(float(x), 6) for x in cdf]}


def time_calls(function: Callable[[int], Any], count: int, description: str, warmup: int = 5) -> list[float]:
    """Call function(i) `count` times after `warmup` calls; each call's latency in milliseconds."""
    for i in range(warmup):
        function(i)
    out = []
    for i in progress(range(count), description):
        started = time.perf_counter()
        function(i)
        out.append((time.perf_counter() - started) * 1e3)
    return out


def ratio(ours: float, baseline: float) -> float | None:
    """ours / baseline, None where the baseline is zero."""
    return ours / baseline if baseline else None


def recall_at_k(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]], k: int) -> float:
    """Mean recall@k of `found` against the exact answers `truth` (queries with no answer do not count)."""
    hits = total = 0
    for f, t in zip(found, truth, strict=True):
        want = set(list(t)[:k])
        hits += len(want & set(list(f)[:k]))
        total += len(want)
    return hits / total if total else 1.0


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[list[int]]:
    """The exact top-k rows of `base` (inner product) for every query, over `mask`'s rows when given."""
    rows = np.arange(len(base)) if mask is None else np.flatnonzero(mask)
    out: list[list[int]] = []
    for start in range(0, len(queries), 256):
        scores = queries[start:start + 256] @ base[rows].T
        take = min(k, len(rows))
        if take == 0:
            out.extend([] for _ in range(len(scores)))
            continue
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        out.extend(rows[np.take_along_axis(top, order, axis=1)].tolist())
    return out


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))
