"""Calibration of a vector index's search plans on its own rows, for the planner and `stats()`.

A sample of the graph's live rows serves as queries (each query's own row left out of its answers); their
exact top k (numpy over every row) is the truth. Measured, at the recall target:
- unfiltered HNSW: the smallest efSearch on EF_LADDER whose recall@k reaches the target (its lower 95%
  confidence bound over the sample's queries, so that the target holds for queries beyond the sample),
  and the median time of a search at it;
- filtered HNSW (an IDSelectorBitmap over a random share of the rows) at each of FRACTIONS, from the
  largest down: the efSearch that reaches the target there and its median time; the descent stops where
  filtered HNSW no longer beats both exact plans (its cost only grows, theirs only shrinks, as the share
  falls) or cannot reach the target by ef_search_max;
- the exact plans' costs, fitted as fixed + per-row: a gather (the allowed rows copied out and scanned
  with numpy) per allowed row, and faiss's masked scan of the rows in place per allowed row (its fixed
  part covers the bitmap and the test of every row), and the unfiltered exhaustive scan.
Times are medians of single queries in microseconds, on the machine and load of the moment.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from knowledge.index.vector_scan import exact_top, faiss_knn

EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
FRACTIONS = (0.8, 0.5, 0.25, 0.1, 0.05, 0.025, 0.01)
CONFIDENCE_Z = 1.645  # recall counts as met when its one-sided 95% lower bound over the sample's queries is
TIMED_QUERIES = 24  # queries timed per exact-plan measurement
TRUTH_CHUNK_ROWS = 32_768  # rows scored at once when computing the exact answers


@dataclass(frozen=True)
class FilteredPoint:
    """Filtered HNSW at one share of the rows: the efSearch meeting the target (None: not by ef_search_max,
    or not before a search cost more than an exact plan), the recall and median µs at it (or at the last
    efSearch tried)."""

    fraction: float
    ef_search: int | None
    recall: float
    hnsw_us: float | None


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` measured on one graph; `graph_rows` rows [0, graph_rows) were covered."""

    graph_rows: int
    recall_target: float
    k: int
    queries: int
    ef_search: int | None  # unfiltered efSearch meeting the target; None: not reached by ef_search_max
    recall: float          # recall@k at ef_search (or at ef_search_max when not reached)
    hnsw_us: float | None
    flat_us: float         # unfiltered exhaustive scan
    gather_us: tuple[float, float]  # (fixed, per allowed row)
    scan_us: tuple[float, float]    # masked scan in place: (fixed, per allowed row)
    filtered: tuple[FilteredPoint, ...] = field(default_factory=tuple)
    hnsw_m: int = 0
    ef_construction: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["filtered"] = [asdict(p) for p in self.filtered]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        values = dict(data)
        values["filtered"] = tuple(FilteredPoint(**p) for p in values.get("filtered", ()))
        values["gather_us"] = tuple(values["gather_us"])
        values["scan_us"] = tuple(values["scan_us"])
        return cls(**values)

    def filtered_point(self, fraction: float) -> FilteredPoint | None:
        """The calibrated point that covers a filter allowing `fraction` of the rows: the one at the largest
        calibrated share at or below it (a smaller share needs a wider search, so this errs towards recall);
        None when the fraction lies below every point at which filtered HNSW met the target."""
        below = [p for p in self.filtered if p.fraction <= fraction * (1 + 1e-9)]
        if not below:
            return None
        point = max(below, key=lambda p: p.fraction)
        return point if point.ef_search is not None else None

    def gather_cost(self, selected: int) -> float:
        return self.gather_us[0] + self.gather_us[1] * selected

    def scan_cost(self, selected: int, rows: int) -> float:
        fixed = self.scan_us[0] * rows / max(self.graph_rows, 1)
        return fixed + self.scan_us[1] * selected


    def plan_costs(self, selected: int, k: int, rows: int, graph_rows: int,
                   ef_search_max: int) -> dict[str, tuple[float, int | None]]:
        """Estimated µs of each plan meeting the recall target for a search of `selected` allowed rows of an
        index of `rows` rows, `graph_rows` of them in the graph: {"gather" | "scan" | "hnsw": (µs, efSearch
        for hnsw)}. Exact plans always qualify; HNSW where an efSearch reached the target at this share."""
        rows = max(rows, 1)
        costs: dict[str, tuple[float, int | None]] = {}
        if selected == rows:
            costs["scan"] = (self.flat_us * rows / max(self.graph_rows, 1), None)
        else:
            costs["gather"] = (self.gather_cost(selected), None)
            costs["scan"] = (self.scan_cost(selected, rows), None)
        fraction = selected / rows
        if selected == rows:  # every row allowed, none dead
            ef, us = self.ef_search or 0, self.hnsw_us or math.inf
        else:  # a selector: as measured at the nearest calibrated share below this one
            point = self.filtered_point(fraction)
            ef, us = (0, math.inf) if point is None or point.hnsw_us is None else (point.ef_search or 0, point.hnsw_us)
        if ef and k > self.k:  # a longer answer needs a proportionally wider search at the same recall
            widened = ladder_at_least(ef * k // self.k)
            ef, us = widened, us * widened / ef
        if ef and ef <= ef_search_max:
            tail = (rows - graph_rows) * fraction  # rows past the graph, searched exactly too
            costs["hnsw"] = (us + (self.gather_cost(int(tail)) if tail >= 1 else 0.0), max(ef, k))
        return costs


def _median_us(times: list[float]) -> float:
    return float(np.median(times)) * 1e6 if times else math.inf


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed, per unit) of a least-squares line through (units, µs), both kept >= 0."""
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    if len(points) < 2 or np.ptp(x) == 0:
        return 0.0, float(y.mean() / max(x.mean(), 1))
    slope, intercept = np.polyfit(x, y, 1)
    slope = max(float(slope), 0.0)
    return max(float(intercept), 0.0), slope


class _Truth:
    """Exact top k of each query row among the live rows a mask allows, its own row excluded."""

    def __init__(self, matrix: np.ndarray, rows: int, live: np.ndarray, sample: np.ndarray, metric: str,
                 k: int) -> None:
        self.matrix, self.rows, self.live, self.sample, self.metric, self.k = matrix, rows, live, sample, metric, k
        self.queries = np.ascontiguousarray(matrix[sample])

    def top(self, mask: np.ndarray | None) -> list[set[int]]:
        k, n = self.k, len(self.sample)
        best_scores = np.full((n, 0), -np.inf, dtype=np.float32)
        best_rows = np.zeros((n, 0), dtype=np.int64)
        for start in range(0, self.rows, TRUTH_CHUNK_ROWS):
            end = min(self.rows, start + TRUTH_CHUNK_ROWS)
            block = self.matrix[start:end]
            scores = self.queries @ block.T
            if self.metric == "l2":  # higher is better: -(|x|^2 - 2 q.x), |q|^2 being the same for a query
                scores = 2 * scores - np.einsum("ij,ij->i", block, block)[None, :]
            keep = self.live[start:end] if mask is None else self.live[start:end] & mask[start:end]
            scores = np.where(keep[None, :], scores, -np.inf)
            mine = (self.sample >= start) & (self.sample < end)
            scores[np.flatnonzero(mine), self.sample[mine] - start] = -np.inf
            width = min(k, end - start)
            part = np.argpartition(-scores, width - 1, axis=1)[:, :width]
            cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
            cand_rows = np.concatenate([best_rows, part + start], axis=1)
            order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(cand_scores, order, 1)
            best_rows = np.take_along_axis(cand_rows, order, 1)
        return [set(r[np.isfinite(s)].tolist()) for r, s in zip(best_rows, best_scores, strict=True)]


def _hnsw_run(graph: faiss.Index, truth: _Truth, answers: list[set[int]], ef: int,
              selector: Any = None) -> tuple[float, float]:
    """(recall@k, median µs) of filtered or unfiltered HNSW at `ef` over the sample; the recall is the
    one-sided 95% lower confidence bound of the mean over the sample's queries (CONFIDENCE_Z)."""
    params = faiss.SearchParametersHNSW()
    params.efSearch = ef
    if selector is not None:
        params.sel = selector
    k, recalls, times = truth.k, [], []
    for i, row in enumerate(truth.sample.tolist()):
        q = truth.queries[i:i + 1]
        start = time.perf_counter()
        _, labels = graph.search(q, k + 1, params=params)
        times.append(time.perf_counter() - start)
        found = [r for r in labels[0].tolist() if r >= 0 and r != row][:k]
        if answers[i]:
            recalls.append(len(answers[i].intersection(found)) / len(answers[i]))
    if not recalls:
        return 1.0, _median_us(times)
    values = np.array(recalls)  # the mean's lower confidence bound: the target must hold beyond the sample
    bound = values.mean() - CONFIDENCE_Z * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(bound), _median_us(times)


def _ef_for_target(graph: faiss.Index, truth: _Truth, answers: list[set[int]], target: float, ef_min: int,
                   ef_max: int, selector: Any, cost_max: float) -> tuple[int | None, float, float | None]:
    """(smallest ladder efSearch in [ef_min, ef_max] meeting `target`, its recall, its median µs); the ef is
    None when none does, or once a search costs more than `cost_max` µs before reaching it."""
    ladder = [ef for ef in EF_LADDER if ef_min <= ef <= ef_max] or [ef_max]
    runs: dict[int, tuple[float, float]] = {}

    def run(position: int) -> tuple[float, float]:
        ef = ladder[position]
        if ef not in runs:
            runs[ef] = _hnsw_run(graph, truth, answers, ef, selector)
        return runs[ef]

    low, position = 0, 0  # climb in doubling steps, then bisect back between the last miss and the hit
    while True:
        recall, us = run(position)
        if recall >= target:
            break
        if us > cost_max or position == len(ladder) - 1:
            return None, recall, us
        low = position + 1
        position = min(len(ladder) - 1, max(position + 1, 2 * position + 1))
    high = position
    while low < high:
        middle = (low + high) // 2
        if run(middle)[0] >= target:
            high = middle
        else:
            low = middle + 1
    recall, us = run(high)
    return ladder[high], recall, us


def _time_exact(truth: _Truth, mask: np.ndarray, queries: int) -> tuple[float, float]:
    """(gather µs, masked scan µs) medians of exact searches of the rows `mask` allows."""
    matrix, rows, metric, k = truth.matrix, truth.rows, truth.metric, truth.k
    gathers, scans = [], []
    for i in range(min(queries, len(truth.sample))):
        q = truth.queries[i:i + 1]
        start = time.perf_counter()
        chosen = np.flatnonzero(mask)
        exact_top(matrix[chosen], q, k, metric)
        gathers.append(time.perf_counter() - start)
        start = time.perf_counter()
        bits = np.packbits(mask, bitorder="little")
        faiss_knn(q, matrix, rows, k + 1, metric, faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bits)))
        scans.append(time.perf_counter() - start)
    return _median_us(gathers), _median_us(scans)


def calibrate(graph: faiss.Index, matrix: np.ndarray, live: np.ndarray, metric: str, *, recall_target: float,
              queries: int, ef_search_max: int, k: int = 10, seed: int = 0, hnsw_m: int = 0,
              ef_construction: int = 0) -> Calibration | None:
    """Measure the plans of the graph over rows [0, graph.ntotal) of `matrix` (`live` marks the rows not
    tombstoned); None when too few live rows to sample from (fewer than 2 k)."""
    started = time.perf_counter()
    rows = int(graph.ntotal)
    live = np.asarray(live[:rows], dtype=bool)
    live_rows = np.flatnonzero(live)
    if len(live_rows) < 2 * k:
        return None
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(live_rows, size=min(queries, len(live_rows) // 2), replace=False))
    truth = _Truth(matrix, rows, live, sample, metric, k)
    draw = rng.random(rows)

    flat_times = []
    for i in range(min(TIMED_QUERIES, len(sample))):
        start = time.perf_counter()
        faiss_knn(truth.queries[i:i + 1], matrix, rows, k + 1, metric)
        flat_times.append(time.perf_counter() - start)
    flat_us = _median_us(flat_times)
    gather_points, scan_points = [], []
    for fraction in (0.2, 0.05, 0.01):
        mask = live & (draw < fraction)
        gather, scan = _time_exact(truth, mask, TIMED_QUERIES)
        selected = int(np.count_nonzero(mask))
        gather_points.append((selected, gather))
        scan_points.append((selected, scan))
    gather_us, scan_us = _fit(gather_points), _fit(scan_points)

    everything = live if bool(live.all()) else None
    answers = truth.top(None)
    selector_all = None
    if everything is None:  # tombstones: the unfiltered path searches through a selector of the live rows
        bits_all = np.packbits(live, bitorder="little")
        selector_all = faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bits_all))
    ef, recall, hnsw_us = _ef_for_target(graph, truth, answers, recall_target, k, ef_search_max, selector_all,
                                         math.inf)
    points: list[FilteredPoint] = []
    ef_floor = ef or k
    for fraction in FRACTIONS:
        mask = live & (draw < fraction)
        selected = int(np.count_nonzero(mask))
        if selected < 2 * k:
            break
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bits))
        exact_cost = min(gather_us[0] + gather_us[1] * selected, scan_us[0] + scan_us[1] * selected)
        point_ef, point_recall, point_us = _ef_for_target(graph, truth, truth.top(mask), recall_target, ef_floor,
                                                          ef_search_max, selector, exact_cost)
        points.append(FilteredPoint(fraction, point_ef, point_recall, point_us))
        if point_ef is None or (point_us is not None and point_us > exact_cost):
            break  # below this share exact plans win, and HNSW only gets harder
        ef_floor = point_ef
    return Calibration(graph_rows=rows, recall_target=recall_target, k=k, queries=len(sample), ef_search=ef,
                       recall=recall, hnsw_us=hnsw_us if ef else None, flat_us=flat_us, gather_us=gather_us,
                       scan_us=scan_us, filtered=tuple(points), hnsw_m=hnsw_m, ef_construction=ef_construction,
                       seconds=time.perf_counter() - started)


def ladder_at_least(ef: int) -> int:
    """The smallest EF_LADDER value >= ef (ef itself past the ladder)."""
    position = bisect_left(EF_LADDER, ef)
    return EF_LADDER[position] if position < len(EF_LADDER) else ef
