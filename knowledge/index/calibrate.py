"""Calibration of a vector index's search plans on its own rows, for the planner and `stats()`.

The queries are fresh ones where the caller has them: rows held out of the graph's build until it is
measured (`held_out`; vector_jobs.HnswJob does so whenever the build has enough new rows). Otherwise a
sample of the graph's live rows, each moved in a random direction by FRESH_REACH of its distance to its
nearest other row, serves as queries (like fresh draws: a stored row itself is found through its own node, which
flatters recall: 0.991 on the rows vs 0.988 on fresh queries at 100k x 384 clustered; but the estimate does
not track fresh recall from graph to graph: on a graph built in one `add` it asked for efSearch 2048 where
fresh queries reached 0.997 at 1024). Their exact top k (numpy over every row) is the truth. Measured, at
the recall target:
- unfiltered HNSW: the smallest efSearch on EF_LADDER whose recall@k reaches the target (its lower 95%
  confidence bound over the sample's queries, so that the target holds for queries beyond the sample),
  and the median time of a search at it;
- filtered HNSW (an IDSelectorBitmap over a random share of the rows) at each of FRACTIONS, from the
  largest down: the efSearch that reaches the target there and its median time; the descent stops where
  filtered HNSW no longer beats both exact plans (its cost only grows, theirs only shrinks, as the share
  falls) or cannot reach the target by ef_search_max;
- then every plan timed at each of TIMED_FRACTIONS, query by query in turn (so that the machine's load
  weighs on all alike): a gather (the allowed rows copied out and scanned with numpy), faiss's masked
  scan of the rows in place (at share 1 the unfiltered scan), HNSW at the efSearch found there, and up to
  BLOCK_FRACTION_MAX a scan of the allowed rows copied out beforehand (the "block" the index keeps for a
  filter searched again: one contiguous scan, 5x faster than the masked scan at 10% of 100k x 384).
Times are medians of single queries in microseconds, on the machine and load of the moment; the planner
interpolates them between shares (`Calibration.plan_costs`).
"""

from __future__ import annotations

import itertools
import math
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from knowledge.index.vector_scan import exact_top, faiss_knn

EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536,
             2048, 3072, 4096)
FRACTIONS = (0.8, 0.5, 0.25, 0.1, 0.05, 0.025, 0.01)  # shares of rows at which filtered HNSW is calibrated
TIMED_FRACTIONS = (1.0, *FRACTIONS, 0.0025)  # shares at which every plan is timed
GATHER_FRACTION_MAX = 0.25  # above this share, copying the rows out never beats scanning them in place
BLOCK_FRACTION_MAX = 0.25  # a filter's rows are kept as a contiguous copy (a "block") up to this share
FRESH_REACH = 0.75  # tuned on bench/filtered's tune half (100k x 384): at efSearch 384/512/768 fresh queries
# reached recall 0.978/0.990/0.995, rows moved by 0.5 of their neighbour distance 0.992/0.992/0.995 and by
# 1.0 0.973/0.976/0.985, the rows themselves 0.992/0.994/0.995
CONFIDENCE_Z = 1.645  # recall counts as met when its one-sided 95% lower bound over the sample's queries is
PROBE_QUERIES = 8  # queries timing the exact plans before filtered HNSW is calibrated at a share
TIMED_QUERIES = 24  # queries timing every plan at each share
TRUTH_CHUNK_ROWS = 32_768  # rows scored at once when computing the exact answers


@dataclass(frozen=True)
class FilteredPoint:
    """Filtered HNSW at one share of the rows: the efSearch meeting the target (None: not by ef_search_max,
    or not before a search cost more than an exact plan), and the recall at it (or at the last tried)."""

    fraction: float
    ef_search: int | None
    recall: float


@dataclass(frozen=True)
class Timing:
    """Median µs of each plan at one share of the rows, timed query by query in turn so that the machine's
    load weighs on all alike: gather (None: not timed, as it cannot win at this share), masked scan in
    place (at share 1, the unfiltered scan), HNSW at `ef_search` (None: it does not meet the target) and
    the scan of the allowed rows gathered already into a contiguous block (None: not kept at this share)."""

    fraction: float
    gather_us: float | None
    scan_us: float
    hnsw_us: float | None
    ef_search: int | None
    block_us: float | None = None  # absent from calibrations made before blocks


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` measured on one graph; `graph_rows` rows [0, graph_rows) were covered."""

    graph_rows: int
    recall_target: float
    k: int
    queries: int
    ef_search: int | None  # unfiltered efSearch meeting the target; None: not reached by ef_search_max
    recall: float          # recall@k at ef_search (or at ef_search_max when not reached): lower 95% bound
    filtered: tuple[FilteredPoint, ...] = field(default_factory=tuple)
    timings: tuple[Timing, ...] = field(default_factory=tuple)  # by share, largest first
    hnsw_m: int = 0
    ef_construction: int = 0
    seconds: float = 0.0
    held_out: bool = False  # queried with rows held out of the graph's build (else stored rows moved off)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        values = dict(data)
        values["filtered"] = tuple(FilteredPoint(**p) for p in values.get("filtered", ()))
        values["timings"] = tuple(Timing(**t) for t in values.get("timings", ()))
        return cls(**values)

    def _interpolated(self, fraction: float, name: str) -> float:
        """The µs of exact plan `name` at `fraction`, log-log interpolated between the timed shares (and
        proportional to the share past the largest, flat below the smallest)."""
        field_name = f"{name}_us"
        points = sorted((t.fraction, getattr(t, field_name)) for t in self.timings
                        if getattr(t, field_name) is not None)
        if not points:
            return math.inf
        if fraction <= points[0][0]:
            return points[0][1]
        for (f0, us0), (f1, us1) in itertools.pairwise(points):
            if f0 <= fraction <= f1:
                w = math.log(fraction / f0) / math.log(f1 / f0)
                return math.exp((1 - w) * math.log(max(us0, 1e-3)) + w * math.log(max(us1, 1e-3)))
        top_fraction, top_us = points[-1]
        return top_us * fraction / top_fraction

    def plan_costs(self, selected: int, k: int, rows: int, graph_rows: int, ef_search_max: int,
                   block: bool = False) -> dict[str, tuple[float, int | None]]:
        """Estimated µs of each plan meeting the recall target for a search of `selected` allowed rows of an
        index of `rows` rows, `graph_rows` of them in the graph: {"gather" | "scan" | "hnsw" | "block": (µs,
        efSearch for hnsw)}. Exact plans always qualify, "block" (a scan of the allowed rows copied out
        already) when `block`; HNSW at the efSearch and time measured at the largest timed share at or below
        this one (a smaller share needs a wider search: this errs towards recall)."""
        rows = max(rows, 1)
        fraction = selected / rows
        growth = rows / max(self.graph_rows, 1)
        costs: dict[str, tuple[float, int | None]] = {"scan": (self._interpolated(fraction, "scan") * growth, None)}
        if selected < rows:
            costs["gather"] = (self._interpolated(fraction, "gather") * growth, None)
        if block and selected < rows:
            block_us = self._interpolated(fraction, "block")
            if not math.isfinite(block_us):  # not measured (an older calibration): a contiguous scan's share
                block_us = self._interpolated(1.0, "scan") * fraction
            costs["block"] = (block_us * growth, None)
        eligible = [t for t in self.timings if (t.fraction == 1) == (selected == rows)
                    and t.fraction <= fraction * (1 + 1e-9)]
        point = max(eligible, key=lambda t: t.fraction) if eligible else None
        if point is None or point.ef_search is None or point.hnsw_us is None:
            return costs
        ef, us = point.ef_search, point.hnsw_us
        if k > self.k:  # a longer answer needs a proportionally wider search at the same recall
            widened = ladder_at_least(ef * k // self.k)
            ef, us = widened, us * widened / ef
        if ef <= ef_search_max:
            tail = int((rows - graph_rows) * fraction)  # rows past the graph, searched exactly too
            tail_us = self._interpolated(tail / rows, "gather") if tail else 0.0
            costs["hnsw"] = (us + (tail_us if math.isfinite(tail_us) else 0.0), max(ef, k))
        return costs


def _median_us(times: list[float]) -> float:
    return float(np.median(times)) * 1e6 if times else math.inf


class _Truth:
    """Exact top k of each query among the live rows a mask allows. The queries are the sample's rows (each
    row excluded from its own answers) or, given `queries`, those (one per sample row; nothing excluded)."""

    def __init__(self, matrix: np.ndarray, rows: int, live: np.ndarray, sample: np.ndarray, metric: str,
                 k: int, queries: np.ndarray | None = None) -> None:
        self.matrix, self.rows, self.live, self.sample, self.metric, self.k = matrix, rows, live, sample, metric, k
        self.exclude = queries is None
        self.queries = np.ascontiguousarray(matrix[sample] if queries is None else queries, dtype=np.float32)

    def top(self, mask: np.ndarray | None) -> list[set[int]]:
        best_rows, best_scores = self.ranked(mask)
        return [set(r[np.isfinite(s)].tolist()) for r, s in zip(best_rows, best_scores, strict=True)]

    def ranked(self, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) [queries, k] of each query's best k, best first (score -inf: fewer qualify)."""
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
            if self.exclude:
                mine = (self.sample >= start) & (self.sample < end)
                scores[np.flatnonzero(mine), self.sample[mine] - start] = -np.inf
            width = min(k, end - start)
            part = np.argpartition(-scores, width - 1, axis=1)[:, :width]
            cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
            cand_rows = np.concatenate([best_rows, part + start], axis=1)
            order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(cand_scores, order, 1)
            best_rows = np.take_along_axis(cand_rows, order, 1)
        return best_rows, best_scores


def _fresh_like(matrix: np.ndarray, rows: int, live: np.ndarray, sample: np.ndarray, metric: str, k: int,
                rng: np.random.Generator) -> np.ndarray:
    """Queries like fresh draws from the stored rows' distribution: each sample row moved in a random
    direction by FRESH_REACH of its distance to its nearest other row (a stored row as the query itself
    would be found through its own node, which flatters recall), normalised again for cosine."""
    nearest, found = _Truth(matrix, rows, live, sample, metric, k).ranked(None)
    base = matrix[sample].astype(np.float32)
    reach = np.where(np.isfinite(found[:, 0]), np.linalg.norm(base - matrix[nearest[:, 0]], axis=1), 0.0)
    direction = rng.normal(size=base.shape).astype(np.float32)
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    queries = base + direction * (FRESH_REACH * reach)[:, None].astype(np.float32)
    if metric == "cosine":
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return queries


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
        found = [r for r in labels[0].tolist() if r >= 0 and (r != row or not truth.exclude)][:k]
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


def _timed(truth: _Truth, mask: np.ndarray | None, gather: bool, hnsw: tuple[faiss.Index, int] | None,
           queries: int, block: bool = False) -> tuple[float | None, float, float | None, float | None]:
    """(gather µs, scan µs, HNSW µs, block µs) medians at one mask (None: every row), each query run by each
    plan in turn; gather, HNSW and the block (the allowed rows copied out once, beforehand, and scanned) are
    timed only when asked (`hnsw`: the graph and its efSearch)."""
    matrix, rows, metric, k = truth.matrix, truth.rows, truth.metric, truth.k
    times: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])
    params = None
    if hnsw is not None:
        params = faiss.SearchParametersHNSW()
        params.efSearch = hnsw[1]
    copied = np.ascontiguousarray(matrix[np.flatnonzero(mask)]) if block and mask is not None else None
    for i in range(min(queries, len(truth.sample))):
        q = truth.queries[i:i + 1]
        if gather and mask is not None:
            start = time.perf_counter()
            exact_top(matrix[np.flatnonzero(mask)], q, k, metric)
            times[0].append(time.perf_counter() - start)
        start = time.perf_counter()
        bits = selector = None
        if mask is not None:
            bits = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bits))
        faiss_knn(q, matrix, rows, k + 1, metric, selector)
        times[1].append(time.perf_counter() - start)
        if hnsw is not None and params is not None:
            start = time.perf_counter()
            if mask is not None:
                bits = np.packbits(mask, bitorder="little")
                selector = faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bits))
                params.sel = selector
            hnsw[0].search(q, k, params=params)
            times[2].append(time.perf_counter() - start)
        if copied is not None:
            start = time.perf_counter()
            faiss_knn(q, copied, len(copied), min(k + 1, len(copied)), metric)
            times[3].append(time.perf_counter() - start)
    return (_median_us(times[0]) if times[0] else None, _median_us(times[1]),
            _median_us(times[2]) if times[2] else None, _median_us(times[3]) if times[3] else None)


def calibrate(graph: faiss.Index, matrix: np.ndarray, live: np.ndarray, metric: str, *, recall_target: float,
              queries: int, ef_search_max: int, k: int = 10, seed: int = 0, hnsw_m: int = 0,
              ef_construction: int = 0, held_out: np.ndarray | None = None) -> Calibration | None:
    """Measure the plans of the graph over rows [0, graph.ntotal) of `matrix` (`live` marks the rows not
    tombstoned); None when too few live rows to sample from (fewer than 2 k). `held_out`: query vectors
    [n, dimension] that are not in the graph (rows held out of its build, `vector_jobs.HnswJob`), used as
    they are instead of `queries` stored rows moved FRESH_REACH off themselves."""
    started = time.perf_counter()
    rows = int(graph.ntotal)
    live = np.asarray(live[:rows], dtype=bool)
    live_rows = np.flatnonzero(live)
    if len(live_rows) < 2 * k:
        return None
    rng = np.random.default_rng(seed)
    if held_out is not None:
        sample = np.arange(len(held_out))  # nothing to exclude: these queries are no rows of the graph
        truth = _Truth(matrix, rows, live, sample, metric, k, held_out)
    else:
        sample = np.sort(rng.choice(live_rows, size=min(queries, len(live_rows) // 2), replace=False))
        truth = _Truth(matrix, rows, live, sample, metric, k, _fresh_like(matrix, rows, live, sample, metric, k, rng))
    draw = rng.random(rows)
    masks = {fraction: live & (draw < fraction) for fraction in TIMED_FRACTIONS if fraction < 1}
    everything = None if bool(live.all()) else live  # tombstones: unfiltered searches select the live rows
    masks[1.0] = everything  # type: ignore[assignment]

    selector_all = None
    if everything is not None:
        bits_all = np.packbits(live, bitorder="little")
        selector_all = faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bits_all))
    ef, recall, _ = _ef_for_target(graph, truth, truth.top(None), recall_target, k, ef_search_max, selector_all,
                                   math.inf)
    efs: dict[float, int | None] = {1.0: ef}
    points: list[FilteredPoint] = []
    ef_floor = ef or k
    for fraction in FRACTIONS:
        mask = masks[fraction]
        if int(np.count_nonzero(mask)) < 2 * k:
            break
        gather_us, scan_us, _, _ = _timed(truth, mask, fraction <= GATHER_FRACTION_MAX, None, PROBE_QUERIES)
        exact_cost = min(scan_us, gather_us or math.inf)
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bits))
        point_ef, point_recall, point_us = _ef_for_target(graph, truth, truth.top(mask), recall_target, ef_floor,
                                                          ef_search_max, selector, 1.5 * exact_cost)
        points.append(FilteredPoint(fraction, point_ef, point_recall))
        efs[fraction] = point_ef
        if point_ef is None or (point_us is not None and point_us > 1.5 * exact_cost):
            break  # below this share exact plans win, and HNSW only gets harder
        ef_floor = point_ef
    timings = []
    for fraction in TIMED_FRACTIONS:
        mask = masks[fraction]
        if mask is not None and int(np.count_nonzero(mask)) < 1:
            break
        point_ef = efs.get(fraction)
        gather_us, scan_us, hnsw_us, block_us = _timed(truth, mask, fraction <= GATHER_FRACTION_MAX,
                                                       None if point_ef is None else (graph, point_ef),
                                                       TIMED_QUERIES, fraction <= BLOCK_FRACTION_MAX)
        timings.append(Timing(fraction, gather_us, scan_us, hnsw_us, point_ef, block_us))
    return Calibration(graph_rows=rows, recall_target=recall_target, k=k, queries=len(sample), ef_search=ef,
                       recall=recall, filtered=tuple(points), timings=tuple(timings), hnsw_m=hnsw_m,
                       ef_construction=ef_construction, seconds=time.perf_counter() - started,
                       held_out=held_out is not None)


def ladder_at_least(ef: int) -> int:
    """The smallest EF_LADDER value >= ef (ef itself past the ladder)."""
    position = bisect_left(EF_LADDER, ef)
    return EF_LADDER[position] if position < len(EF_LADDER) else ef
