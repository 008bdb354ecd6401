"""Vector index of one (node type, vector property): rows of vectors with tombstones, an exact (flat) or HNSW
faiss index, and a selectivity-aware search planner.

Rows are append-only: an upsert tombstones the node's old row and appends a new one; a delete
tombstones. The HNSW graph (faiss cannot remove ids) covers rows [0, hnsw_rows); rows appended
since are searched exactly and merged. Graphs are built and extended in the background
(vector_jobs.py) and installed whole; a checkpoint compacts only when tombstones pass
`tombstone_fraction_max`, and with a graph the compaction runs aside too: the current graph serves
until the compacted rows and their graph are swapped in.

Planner, for an allowed-node mask (visibility & where-filter & has-vector). With a graph calibrated on its
own rows (calibrate.py; VectorConfig.ef_search None, the default), the measured one: of the plans that meet
`recall_target` on the stored rows (exact gather, exact masked scan in place, HNSW at the efSearch measured
to reach the target at that share of rows), the one of least measured time (`plan_costs`). Otherwise
(no graph, no calibration yet, or a fixed ef_search) the estimated one:
- nothing filtered and no tombstones: the index as is (faiss flat or HNSW at ef_search);
- when scanning the allowed rows costs less than a filtered index walk (estimated in distance
  computations: GATHER_COST_PER_ROW per gathered row vs efSearch * M for HNSW), scan them exactly:
  gathered out when they are at most GATHER_FRACTION_MAX of the rows, else by one faiss scan of the
  rows in place with an IDSelectorBitmap (on a GPU: one masked scan of its copy of the rows);
- otherwise: faiss with an IDSelectorBitmap, HNSW's ef widened by 1/sqrt(selectivity) so recall holds;
  when HNSW returns fewer than k allowed rows the search falls back to the exact gather.
A read-only allowed bitmap (a cached visibility bitmap, or visibility & a cached where mask) keeps its row
mask per index version (`_RowMask`); from its second search the allowed rows, up to BLOCK_FRACTION_MAX of
them, are copied into one contiguous block (within `gathered_cache_fraction` of the rows for all blocks),
and an exact search scans that block (plan "gather-cached", the measured "block" cost) instead of
gathering again or scanning the rows in place through a selector.
Cosine vectors are stored normalised and searched by inner product; scores are similarities
(higher is better) for cosine and ip, squared distances (lower is better) for l2.

Why one module of ~700 lines: `VectorIndex` is one object whose row arrays, tombstones, HNSW graph and
device copy every method reads together; the planner, the search paths, the background-build
handshake and the snapshot each touch all of them, so splitting it would spread one invariant (the
rows a search sees are the rows it ranks) over several files. Its parts that stand alone are apart:
jobs (`vector_jobs.py`), the device copy (`vector_device.py`), row buffers (`row_buffer.py`).
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from knowledge.config import VectorConfig
from knowledge.errors import InvalidArgument
from knowledge.index.calibrate import BLOCK_FRACTION_MAX, Calibration
from knowledge.index.row_buffer import rows_copy
from knowledge.index.snapshot_file import read_snapshot, write_snapshot
from knowledge.index.vector_device import DeviceRows
from knowledge.index.vector_scan import exact_top, faiss_knn
from knowledge.kernels import gpu_available

try:  # what np.einsum calls (optimize=False), without its dispatch wrapper: a fixed cost per query
    from numpy._core.multiarray import c_einsum as _einsum
except ImportError:  # pragma: no cover - numpy < 2
    _einsum = np.einsum

log = logging.getLogger("knowledge.index.vectors")
SNAPSHOT_VERSION = 2  # 2: snapshot_file framing, tombstones kept (the live array)
GATHER_COST_PER_ROW = 4  # a gathered row costs a copy and a dot product; measured ~4 HNSW node visits
GATHER_FRACTION_MAX = 0.015  # above this share of rows, a selector scan in place beats copying the rows out
EF_SEARCH_UNCALIBRATED = 160  # efSearch of a graph not calibrated yet, when VectorConfig.ef_search is None
SMALL_RESULT_ROWS = 64  # up to this k, a faiss result row is checked in Python (cheaper than numpy calls)
MASK_ENTRIES_MAX = 8  # row masks of read-only allowed bitmaps kept per index version (with their gathered rows)
BLOCK_USES_MIN = 2  # a filter's rows are copied into a contiguous block from its second search at one version


SearchJob = Callable[[], "tuple[np.ndarray, np.ndarray, str] | None"]


def _done(ids: np.ndarray, scores: np.ndarray, plan: str) -> SearchJob:
    """A job whose search is already done."""
    return lambda: (ids, scores, plan)


def _faiss_ranked(rows: np.ndarray, scores: np.ndarray, row_ids: np.ndarray,
                  metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """`_finish` of one faiss result row (best first, k long) when that keeps faiss's order: every
    slot filled (faiss pads with row -1) and no two scores tied; None otherwise."""
    if len(rows) <= SMALL_RESULT_ROWS:
        found, values = rows.tolist(), scores.tolist()
        filled = min(found) >= 0
        pairs = itertools.pairwise(values)  # NaN compares false: not ordered
        ordered = all(a < b for a, b in pairs) if metric == "l2" else all(a > b for a, b in pairs)
    else:
        filled = bool(rows.min() >= 0)
        ordered = bool((scores[1:] > scores[:-1] if metric == "l2" else scores[1:] < scores[:-1]).all())
    if filled and ordered:
        return row_ids[rows], scores
    return None


def _finish(rows: np.ndarray, scores: np.ndarray, row_ids: np.ndarray, metric: str,
            k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(node ids, float32 scores) of `rows` (numbered as in `row_ids`): best first, ties by lower node id,
    the first k."""
    nodes = row_ids[rows]
    order = np.lexsort((nodes, scores if metric == "l2" else -scores))
    if k is not None:
        order = order[:k]
    return nodes[order], scores[order].astype(np.float32)


class _RowMask:
    """The rows a search may rank for one allowed bitmap (live and allowed), how many, and what is kept of
    them while the bitmap is reused at one index version: the row numbers, the packed bits of a selector,
    and a contiguous copy of the rows (`block`, with their node ids), made from the second search on."""

    __slots__ = ("allowed", "mask", "selected", "uses", "rows", "bits", "block", "block_ids")

    def __init__(self, allowed: np.ndarray | None, mask: np.ndarray, selected: int) -> None:
        self.allowed, self.mask, self.selected, self.uses = allowed, mask, selected, 1
        self.rows: np.ndarray | None = None
        self.bits: dict[int, np.ndarray] = {}
        self.block: np.ndarray | None = None
        self.block_ids: np.ndarray | None = None

    def row_numbers(self) -> np.ndarray:
        if self.rows is None:
            self.rows = np.flatnonzero(self.mask)
        return self.rows

    def packed(self, count: int) -> np.ndarray:
        """The first `count` rows' bits, packed as faiss's IDSelectorBitmap reads them."""
        bits = self.bits.get(count)
        if bits is None:
            bits = self.bits[count] = np.packbits(self.mask[:count], bitorder="little")
        return bits


def _grow_rows(array: np.ndarray, rows: int) -> np.ndarray:
    if rows <= len(array):
        return array
    out = np.zeros((max(rows, 2 * len(array), 1024),) + array.shape[1:], dtype=array.dtype)
    out[:len(array)] = array
    return out


class VectorIndex:
    """All vectors of one vector property, searchable under an allowed-node mask."""

    def __init__(self, dimension: int, metric: str, config: VectorConfig | None = None) -> None:
        self.dimension = dimension
        self.metric = metric
        self.config = config or VectorConfig()
        self.matrix = np.zeros((0, dimension), dtype=np.float32)
        self.row_ids = np.zeros(0, dtype=np.int64)
        self.live = np.zeros(0, dtype=bool)
        self.rows = 0
        self.live_count = 0
        self.row_of: dict[int, int] = {}
        self.hnsw: faiss.IndexHNSW | None = None  # covers rows [0, hnsw_rows); never mutated once installed
        self.hnsw_rows = 0
        self.generation = 0  # bumped when rows are renumbered (compaction): older HNSW builds no longer fit
        self.graph_unsaved = False  # an HNSW graph was installed after the last snapshot
        self.version = 0
        self._mask_cache: dict[tuple[int, int, int], _RowMask] | None = None  # None: empty (a fork starts so)
        self._cache_lock = threading.Lock()  # guards _mask_cache's entries and their blocks
        self._hnsw_params: tuple[int, faiss.SearchParametersHNSW] | None = None  # (efSearch, params), unfiltered
        self.calibration: Calibration | None = None  # of the current graph (calibrate.py), or None
        self._consecutive: tuple[tuple[int, int], int | None] | None = None  # ((version, rows), first node id)
        self.use_gpu = self.config.device == "gpu" or (self.config.device == "auto" and gpu_available()[0])
        self._device: DeviceRows | None = None  # the rows in GPU memory, while use_gpu

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    @property
    def kernel_metric(self) -> str:
        return "l2" if self.metric == "l2" else "ip"

    # -- writes -------------------------------------------------------------------------------
    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Rows as contiguous float32 [n, dimension], normalised for cosine (zero rows stay zero)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        if self.metric == "cosine":
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
            vectors = vectors / np.where(norms == 0, 1, norms)
        return vectors

    def upsert(self, node_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Set the vectors of `node_ids` (rows of `vectors`, already validated finite and of the right width)."""
        self.remove(node_ids)
        count = len(node_ids)
        if not count:
            return
        start, end = self.rows, self.rows + count
        if end > len(self.matrix):
            self.matrix = rows_copy(self.matrix[:self.rows], max(end, 2 * len(self.matrix), 1024))
        self.row_ids = _grow_rows(self.row_ids, end)
        self.live = _grow_rows(self.live, end)
        self.matrix[start:end] = self.prepare(vectors)
        self.row_ids[start:end] = node_ids
        self.live[start:end] = True
        self.row_of.update(zip(node_ids.tolist(), range(start, end), strict=True))
        self.rows = end
        self.live_count += count
        self.version += 1

    def remove(self, node_ids: np.ndarray) -> None:
        rows = [r for r in (self.row_of.pop(n, None) for n in node_ids.tolist()) if r is not None]
        if rows:
            self.live[rows] = False
            self.live_count -= len(rows)
            self.version += 1

    # -- search -------------------------------------------------------------------------------
    def query_vector(self, vector: Any) -> np.ndarray:
        """One query vector of `dimension` numbers as `prepare` makes it: float32 [1, dimension], normalised
        for cosine. Raises InvalidArgument when it is not numeric, not of `dimension` components, or has a
        NaN or infinite component."""
        try:
            q = np.asarray(vector, dtype=np.float32, order="C")  # copies only when it must
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"query vector is not numeric: {exc}") from None
        if q.shape != (self.dimension,):
            raise InvalidArgument(f"query vector must have dimension {self.dimension}, got shape {q.shape}")
        q = q.reshape(1, self.dimension)
        if self.metric != "cosine":
            if np.isfinite(q).all():
                return q
        else:
            total = _einsum("ij,ij->i", q, q).item()  # as in prepare, so the normalised query is the same
            if math.isfinite(total):  # a finite sum of squares has finite terms
                # the float32 square root, correctly rounded (float64 sqrt rounded to float32 is): as prepare's
                return q / math.sqrt(total) if total != 0 else q
            if np.isfinite(q).all():  # the squares overflowed: normalise as prepare does
                return q / np.sqrt(_einsum("ij,ij->i", q, q))
        raise InvalidArgument("query vector has NaN or infinite components")

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None,
               force: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """(node ids, scores, plan) of the best k rows whose node is allowed (allowed[node] True); `force`
        names the plan to take (as in `plan_search`)."""
        return self.search_prepared(self.prepare(query), k, allowed, force)

    def search_prepared(self, q: np.ndarray, k: int, allowed: np.ndarray | None,
                        force: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """`search` of a query that `prepare` or `query_vector` made (`force`: as in `plan_search`)."""
        result = (self.plan_search(q, k, allowed) if force is None else self.plan_search(q, k, allowed, force))()
        if result is None:  # the graph walk found fewer than k allowed rows: exact search of them all
            result = self._exact_filtered(q, k, self._mask_entry(allowed))()
            assert result is not None
        return result

    def plan_search(self, q: np.ndarray, k: int, allowed: np.ndarray | None,
                    force: str | None = None) -> SearchJob:
        """`search_prepared` in two steps, so that faiss's CPU scans can run outside the store's state lock.

        This call reads the index (make it under the lock) and runs every search that is not a faiss CPU
        scan (GPU scans, gathers). The job it returns runs the rest and reads only what was captured here:
        rows below `rows` are never rewritten, and arrays or graphs replaced meanwhile stay alive in the job.
        So the job may run while commits append rows, a compaction renumbers them or a build installs a
        graph, and still answers as of this call. It returns (node ids, scores, plan), or None when a graph
        walk found fewer than k allowed rows (then `search_prepared`, under the lock, searches exactly).

        `force` ("gather", "scan" or "hnsw") takes that plan instead of the planner's choice (HNSW at the
        calibrated efSearch; without a graph, "hnsw" scans). With a calibration (`calibrated()`) the planner
        takes the plan of least measured cost among those meeting the recall target (`plan_costs`).
        """
        if self.live_count == 0 or k <= 0:
            return _done(np.zeros(0, np.int64), np.zeros(0, np.float32), "empty")
        entry = self._mask_entry(allowed)
        row_mask, selected = entry.mask, entry.selected
        if selected == 0:
            return _done(np.zeros(0, np.int64), np.zeros(0, np.float32), "empty")
        unfiltered = selected == self.rows
        if not unfiltered and self._on_device():  # one masked scan of the GPU copy: exact, no host gather
            return self._flat(q, k, row_mask, selected)
        block = None if unfiltered else self._block(entry)
        ef = None
        if force is None and self.calibrated():
            force, ef = self.choose_plan(selected, k, block is not None)
        if block is not None and force in ("block", "gather", None) and (
                force is not None or self._gather_is_cheaper(selected, k)):
            return self._scan_rows(q, k, block, len(block), entry.block_ids, None, selected, "gather-cached")
        if force is not None:  # a measured choice, or one a caller forces
            if force == "gather":
                return _done(*self._gather(q, k, entry), "gather")
            if force == "hnsw" and self.hnsw is not None:
                return self._hnsw(q, k, None if unfiltered else entry, selected, ef)
            if force not in ("scan", "hnsw"):
                raise InvalidArgument(f"plan must be gather, scan or hnsw, not {force!r}")
            return self._flat(q, k, row_mask, selected, entry)
        if not unfiltered and self._gather_is_cheaper(selected, k):
            return self._exact_filtered(q, k, entry)
        if self.hnsw is not None:
            return self._hnsw(q, k, None if unfiltered else entry, selected)
        return self._flat(q, k, row_mask, selected, entry)

    # -- the measured planner -----------------------------------------------------------------
    def calibrated(self) -> bool:
        """Whether the planner follows measured costs: a graph with a calibration of it, efSearch not fixed."""
        return self.hnsw is not None and self.calibration is not None and self.config.ef_search is None

    def plan_costs(self, selected: int, k: int, block: bool = False) -> dict[str, tuple[float, int | None]]:
        """Estimated µs of each plan that meets the recall target for a search of `selected` allowed rows,
        from the calibration: {"gather" | "scan" | "hnsw" | "block": (µs, efSearch for hnsw)}. Exact plans
        always qualify ("block", the scan of the rows gathered already, only when `block`); HNSW where the
        calibration found an efSearch reaching the target at this share of rows."""
        assert self.calibration is not None
        return self.calibration.plan_costs(selected, k, self.rows, self.hnsw_rows, self.config.ef_search_max,
                                           block=block)

    def choose_plan(self, selected: int, k: int, block: bool = False) -> tuple[str, int | None]:
        """(the cheapest plan of `plan_costs`, its efSearch); `block`: the allowed rows are gathered already
        (a "block" plan: one scan of their contiguous copy)."""
        costs = self.plan_costs(selected, k, block)
        name = min(costs, key=lambda plan: costs[plan][0])
        return name, costs[name][1]

    def calibration_due(self) -> bool:
        """Whether the graph wants a (new) calibration: none yet, or its rows changed by recalibrate_growth."""
        if self.hnsw is None or self.config.ef_search is not None:
            return False
        cal = self.calibration
        return cal is None or abs(self.hnsw_rows - cal.graph_rows) > self.config.recalibrate_growth * cal.graph_rows

    def install_calibration(self, calibration: Calibration, graph: faiss.Index) -> bool:
        """Take `calibration` (measured on `graph`) if that graph is still the one searched. Under the lock."""
        if graph is not self.hnsw:
            return False
        self.calibration = calibration
        self.graph_unsaved = True  # saved with the graph, at the next checkpoint or close
        self.version += 1
        return True

    def calibration_stats(self) -> dict[str, Any]:
        """{"calibration": what `stats()` reports of it, with "in_use" (the planner follows it)}, or {} when
        the index has none."""
        if self.calibration is None:
            return {}
        return {"calibration": {**self.calibration.as_dict(), "in_use": self.calibrated()}}

    def _exact_filtered(self, q: np.ndarray, k: int, entry: _RowMask) -> SearchJob:
        """Exact search of the allowed rows: gathered and scanned when they are few (up to
        GATHER_FRACTION_MAX of the rows), else one faiss scan of the rows in place that skips the others."""
        if entry.selected <= GATHER_FRACTION_MAX * self.rows or self._on_device():
            return _done(*self._gather(q, k, entry), "gather")
        return self._exhaustive(q, k, entry.mask, entry.selected, "flat-filtered", entry)

    def _exhaustive(self, q: np.ndarray, k: int, row_mask: np.ndarray | None, selected: int,
                    plan: str, entry: _RowMask | None = None) -> SearchJob:
        """faiss's exhaustive search of the rows in place: every row (row_mask None), or the `selected` rows
        of `row_mask` through an IDSelectorBitmap (its bits kept in `entry`, the mask's cache entry)."""
        rows = self.rows
        bits = None
        if row_mask is not None:
            bits = entry.packed(rows) if entry is not None else np.packbits(row_mask, bitorder="little")
        return self._scan_rows(q, k, self.matrix, rows, self.row_ids[:rows], bits, selected, plan)

    def _scan_rows(self, q: np.ndarray, k: int, matrix: np.ndarray, rows: int, row_ids: np.ndarray,
                   bits: np.ndarray | None, selected: int, plan: str) -> SearchJob:
        """faiss's exhaustive search of rows [0, rows) of `matrix` (node ids `row_ids`), all of them or those
        whose bit is set in `bits` (`selected` of them). Asks one row past the k-th, widening while rows tie
        with it, so ties are ranked by node id as everywhere else."""
        metric = self.metric

        def run() -> tuple[np.ndarray, np.ndarray, str]:
            selector = None if bits is None else faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bits))
            want = min(selected, k + 1)
            while True:
                scores, found = faiss_knn(q, matrix, rows, want, metric, selector)
                values = scores.tolist()
                if want >= selected or values[-1] != values[min(k, want) - 1]:
                    break
                want = min(selected, 4 * want)  # rows tied with the k-th run past the results: widen
            if want > k and values[k] != values[k - 1]:
                ranked = _faiss_ranked(found[:k], scores[:k], row_ids, metric)
                if ranked is not None:
                    return (*ranked, plan)
            keep = found >= 0
            return (*_finish(found[keep], scores[keep], row_ids, metric, k), plan)

        return run

    def _row_mask(self, allowed: np.ndarray | None) -> tuple[np.ndarray, int]:
        """Rows that are live and whose node is allowed, and how many (`_mask_entry`)."""
        entry = self._mask_entry(allowed)
        return entry.mask, entry.selected

    def _mask_entry(self, allowed: np.ndarray | None) -> _RowMask:
        """The rows that are live and whose node is allowed, as a `_RowMask`; kept (MASK_ENTRIES_MAX of them,
        the least recently used going first) per (bitmap, index version) when the bitmap is read-only (a
        cached visibility bitmap or where-filter mask) or None (every row)."""
        cache_key = (id(allowed), self.version, self.rows)
        reusable = allowed is None or not allowed.flags.writeable
        if reusable:
            with self._cache_lock:
                cache = self._mask_cache
                entry = None if cache is None else cache.get(cache_key)
                if entry is not None and entry.allowed is allowed:
                    entry.uses += 1
                    cache[cache_key] = cache.pop(cache_key)  # the most recently used last
                    return entry
        row_mask = self.live[:self.rows]
        if allowed is not None:
            first = self._consecutive_from()
            if first is not None and first + self.rows <= len(allowed):  # row i is node first + i: a slice
                row_mask = row_mask & allowed[first:first + self.rows]
            else:
                nodes = self.row_ids[:self.rows]
                inside = nodes < len(allowed)
                row_mask = row_mask & inside & allowed[np.where(inside, nodes, 0)]
        entry = _RowMask(allowed, row_mask, int(np.count_nonzero(row_mask)))
        if reusable:
            if allowed is not None:
                row_mask.flags.writeable = False  # shared by later searches (and their GPU copy of it)
            with self._cache_lock:
                cache = self._mask_cache
                if cache is None or any(key[1:] != cache_key[1:] for key in cache):  # another version: all stale
                    cache = self._mask_cache = {}
                cache[cache_key] = entry
                while len(cache) > MASK_ENTRIES_MAX:
                    cache.pop(next(iter(cache)))
        return entry

    def _block(self, entry: _RowMask) -> np.ndarray | None:
        """A contiguous copy of the entry's rows, made on its BLOCK_USES_MIN-th search when they are at most
        BLOCK_FRACTION_MAX of the rows and the copies kept stay within `gathered_cache_fraction` of the
        rows (None otherwise): one scan of it replaces a gather (copy, then scan) or a masked scan."""
        if entry.block is not None or entry.uses < BLOCK_USES_MIN or entry.selected > BLOCK_FRACTION_MAX * self.rows:
            return entry.block
        with self._cache_lock:
            cache = self._mask_cache or {}
            if all(other is not entry for other in cache.values()):
                return None  # not kept (a writable bitmap, or evicted): a copy would be used once
            held = sum(len(other.block) for other in cache.values() if other.block is not None)
            if held + entry.selected > self.config.gathered_cache_fraction * self.rows:
                return None
        rows = entry.row_numbers()
        entry.block_ids = self.row_ids[rows]
        entry.block = np.ascontiguousarray(self.matrix[rows])
        return entry.block

    def _consecutive_from(self) -> int | None:
        """The node id of row 0 when rows hold consecutive node ids (row i is node row_ids[0] + i, as after
        an ingest with no updates), else None; checked once per index version."""
        cached = self._consecutive
        if cached is not None and cached[0] == (self.version, self.rows):
            return cached[1]
        nodes = self.row_ids[:self.rows]
        first = int(nodes[0]) if self.rows else 0
        consecutive = self.rows > 0 and int(nodes[-1]) - first == self.rows - 1 and bool(
            (np.diff(nodes) == 1).all())
        self._consecutive = ((self.version, self.rows), first if consecutive else None)
        return first if consecutive else None

    def _gather_is_cheaper(self, selected: int, k: int) -> bool:
        """Exact scan of the selected rows vs a filtered index search, in distance computations.

        Filtered HNSW visits about ef * M nodes with ef widened to ef_search / selectivity; a filtered
        flat search scans every row. The gather path scans only the selected rows (and is exact).
        """
        if selected <= self.config.gather_rows_min:
            return True
        if self.hnsw is None:
            return selected <= self.config.gather_fraction * self.rows or selected < self.rows // 2
        fraction = selected / max(self.rows, 1)
        ef_search = self.config.ef_search or EF_SEARCH_UNCALIBRATED
        ef = min(self.config.ef_search_max, max(k, ef_search / math.sqrt(fraction)))
        return selected * GATHER_COST_PER_ROW <= ef * self.config.hnsw_m

    def _gather(self, q: np.ndarray, k: int, entry: _RowMask) -> tuple[np.ndarray, np.ndarray]:
        found, scores = self._exact_rows(q, k, entry.row_numbers())
        return _finish(found, scores, self.row_ids, self.metric, k)

    def _flat(self, q: np.ndarray, k: int, row_mask: np.ndarray, selected: int,
              entry: _RowMask | None = None) -> SearchJob:
        """Exact search of every row (`selected` of them allowed by `row_mask`): the GPU copy of the rows, or
        faiss's exhaustive search of the rows themselves (no copy of them in a faiss index) on the CPU."""
        unfiltered = selected == self.rows
        plan = "flat" if unfiltered else "flat-filtered"
        if self._on_device():
            found, scores = self._exact_rows(q, k, None, None if unfiltered else row_mask)
            return _done(*_finish(found, scores, self.row_ids, self.metric, k), plan)
        return self._exhaustive(q, k, None if unfiltered else row_mask, selected, plan, entry)

    @property
    def scan_device(self) -> str:
        """Where exact scans of this index run now: "gpu" or "cpu"."""
        small = self.config.device == "auto" and self.rows < self.config.gpu_rows_min
        return "gpu" if self.use_gpu and not small else "cpu"

    def _on_device(self) -> bool:
        """Whether exact scans run on the GPU: use_gpu, and the rows are (now) in GPU memory. An index that
        outgrows `gpu_memory_fraction_max` of the GPU's memory moves to the CPU for good, with a warning; with
        device "auto", an index of fewer than `gpu_rows_min` rows scans on the CPU (faster at that size)."""
        if self.scan_device != "gpu":
            if self._device is not None:  # shrunk below gpu_rows_min (compaction): free the copy
                self._device.drop()
            return False
        if self._device is None:
            self._device = DeviceRows(self.dimension, self.config.gpu_memory_fraction_max)
        with self._device.lock:
            synced = self._device.sync(self.matrix, self.rows, self.generation)
        if synced:
            return True
        log.warning("vector index of %d x %d float32 rows exceeds %.0f%% of GPU memory "
                    "(VectorConfig.gpu_memory_fraction_max): its exact scans now run on the CPU",
                    self.rows, self.dimension, 100 * self.config.gpu_memory_fraction_max)
        self.use_gpu, self._device = False, None
        return False

    def _exact_rows(self, q: np.ndarray, k: int, rows: np.ndarray | None,
                    mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, scores) of the best k of `rows` (every row when None; `mask` over every row), exact,
        every row tied with the k-th included: on the GPU copy of the rows when there is one."""
        if self._on_device():
            device = self._device
            assert device is not None
            with device.lock:  # read views' forks of this index share the copy: sync to this one's rows
                if device.sync(self.matrix, self.rows, self.generation):
                    return device.exact(q, k, self.kernel_metric, rows, mask)
        found, scores = self._exact(q, k, self.matrix[:self.rows] if rows is None else self.matrix[rows], mask)
        return (found if rows is None else rows[found]), scores

    def _exact(self, q: np.ndarray, k: int, base: np.ndarray,
               mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `base`, scores) of the best k rows, exact, every row tied with the k-th included
        (`vector_scan.exact_top`); ties are settled by node id in `_finish`."""
        return exact_top(base, q, k, self.metric, mask)

    def _hnsw(self, q: np.ndarray, k: int, entry: _RowMask | None, selected: int,
              ef: int | None = None) -> SearchJob:
        """A search of the HNSW graph (filtered by `entry`'s row mask when given) at efSearch `ef` (by default the
        fixed or calibrated one, widened by 1/sqrt(selectivity)); rows appended since the graph was built
        (the tail) are searched exactly, now, and merged."""
        assert self.hnsw is not None
        graph, covered, rows, metric = self.hnsw, self.hnsw_rows, self.rows, self.metric
        row_ids = self.row_ids[:rows]
        row_mask = None if entry is None else entry.mask
        bits = selector = None
        fraction = max(selected / max(rows, 1), 1e-6)
        if ef is None and self.calibrated() and k <= self.config.ef_search_max:  # a forced HNSW plan
            ef = self.plan_costs(selected, k).get("hnsw", (0.0, None))[1] or self.config.ef_search_max
        base_ef = self.config.ef_search or (self.calibration.ef_search if self.calibration else None) \
            or EF_SEARCH_UNCALIBRATED
        if row_mask is None and not (self.live_count < rows):
            params = self._unfiltered_hnsw_params(max(ef or base_ef, k))
        else:
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(ef or min(self.config.ef_search_max, max(k, base_ef / math.sqrt(fraction))))
            bits = np.packbits(self.live[:covered], bitorder="little") if entry is None else entry.packed(covered)
            selector = faiss.IDSelectorBitmap(covered, faiss.swig_ptr(bits))  # bits and selector live in the job
            params.sel = selector
        tail: tuple[np.ndarray, np.ndarray] | None = None
        if covered < rows:  # rows appended since the HNSW build: searched exactly (on the GPU copy, if any)
            tail_mask = self.live[covered:rows] if row_mask is None else row_mask[covered:rows]
            if tail_mask.any():
                tail = self._exact_rows(q, k, covered + np.flatnonzero(tail_mask))
        plan = "hnsw" if row_mask is None else "hnsw-filtered"

        def run() -> tuple[np.ndarray, np.ndarray, str] | None:
            _ = (bits, selector)  # held here, so as long as the job: params.sel points into them
            distances, labels = graph.search(q, k, params=params)
            if covered == rows:  # no tail to merge
                ranked = _faiss_ranked(labels[0], distances[0], row_ids, metric)
                if ranked is not None:
                    return (*ranked, plan)
            keep = labels[0] >= 0
            found = labels[0][keep]
            scores = distances[0][keep]
            if tail is not None:
                found = np.concatenate([found, tail[0]])
                scores = np.concatenate([scores, tail[1]])
            if len(found) < min(k, selected):
                return None
            return (*_finish(found, scores, row_ids, metric, k), plan)

        return run

    def _unfiltered_hnsw_params(self, ef_search: int) -> faiss.SearchParametersHNSW:
        """Search parameters without a selector (read-only to faiss, so shared); the last one is reused."""
        cached = self._hnsw_params
        if cached is not None and cached[0] == ef_search:
            return cached[1]
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef_search
        self._hnsw_params = (ef_search, params)
        return params

    # -- maintenance --------------------------------------------------------------------------
    def compact(self) -> None:
        """Drop tombstoned rows. Rows are renumbered, so the HNSW graph goes too (rebuilt in the background)."""
        keep = np.flatnonzero(self.live[:self.rows])
        self.matrix = rows_copy(self.matrix[keep])
        self.row_ids = self.row_ids[keep].copy()
        self.live = np.ones(len(keep), dtype=bool)
        self.rows = self.live_count = len(keep)
        self.row_of = dict(zip(self.row_ids.tolist(), range(self.rows), strict=True))
        self.hnsw, self.hnsw_rows = None, 0
        self.generation += 1
        self.version += 1

    def wants_hnsw(self) -> bool:
        """Whether the index kind calls for an HNSW graph at the current size."""
        return (self.config.kind == "hnsw" and self.live_count > 0) or (
            self.config.kind == "auto" and self.live_count >= self.config.hnsw_rows_min)

    def new_hnsw(self) -> faiss.IndexHNSWFlat:
        """An empty HNSW graph with this index's settings."""
        index = faiss.IndexHNSWFlat(self.dimension, self.config.hnsw_m, self.faiss_metric)
        index.hnsw.efConstruction = self.config.ef_construction
        return index

    def install_hnsw(self, graph: faiss.Index, generation: int, rows: int) -> bool:
        """Make `graph` (built over rows [0, rows) of `generation`) the searched graph, if it still fits and
        covers more than the current one. Call under the store's state lock."""
        if generation != self.generation or rows > self.rows or graph.ntotal != rows or (
                self.hnsw is not None and rows <= self.hnsw_rows) or not self.wants_hnsw():
            return False
        self.hnsw, self.hnsw_rows = graph, rows
        self.graph_unsaved = True
        self.version += 1
        return True

    def install_compaction(self, generation: int, keep: np.ndarray, end: int, compacted: np.ndarray,
                           graph: faiss.Index) -> bool:
        """Swap in rows `keep` of [0, end) (as `compacted`, with their graph), then the rows appended since;
        tombstones set meanwhile carry over. False when another compaction came first. Under the state lock."""
        if generation != self.generation or end > self.rows or graph.ntotal != len(keep):
            return False
        self.matrix = rows_copy(np.concatenate([compacted, self.matrix[end:self.rows]]))
        self.row_ids = np.concatenate([self.row_ids[keep], self.row_ids[end:self.rows]])
        self.live = np.concatenate([self.live[keep], self.live[end:self.rows]])
        self.rows = len(self.row_ids)
        live_rows = np.flatnonzero(self.live)
        self.row_of = dict(zip(self.row_ids[live_rows].tolist(), live_rows.tolist(), strict=True))
        self.live_count = len(live_rows)
        self.hnsw, self.hnsw_rows = graph, len(keep)
        self.generation += 1
        self.graph_unsaved = True
        self.version += 1
        return True

    def needs_compaction(self) -> bool:
        """Whether dead rows passed `tombstone_fraction_max`, or a graph is held that the kind no longer wants."""
        dead = self.rows - self.live_count
        return (dead > 0 and dead >= self.config.tombstone_fraction_max * self.rows) or (
            self.hnsw is not None and not self.wants_hnsw())

    # -- snapshots ----------------------------------------------------------------------------
    def save(self, path: str, lsn: int) -> None:
        """Write the index (rows, tombstones, HNSW graph) to `path` atomically, stamped with `lsn`."""
        buffer = io.BytesIO()
        arrays = {"matrix": self.matrix[:self.rows], "row_ids": self.row_ids[:self.rows],
                  "live": self.live[:self.rows]}
        if self.hnsw is not None:
            arrays["hnsw"] = faiss.serialize_index(self.hnsw)
        np.savez(buffer, **arrays)
        extra = {} if self.hnsw is None or self.calibration is None else {"calibration": self.calibration.as_dict()}
        write_snapshot(path, lsn, buffer.getvalue(), dimension=self.dimension, metric=self.metric,
                       hnsw_rows=self.hnsw_rows, format=SNAPSHOT_VERSION, **extra)
        self.graph_unsaved = False

    @classmethod
    def load(cls, path: str, dimension: int, metric: str, config: VectorConfig) -> tuple[VectorIndex, int]:
        """(index, lsn) from a snapshot; raises ValueError (or OSError) when missing, damaged or mismatched."""
        lsn, body, header = read_snapshot(path)
        if header.get("format") != SNAPSHOT_VERSION:
            raise ValueError(f"vector snapshot {path} has format {header.get('format')!r}, not {SNAPSHOT_VERSION}")
        if header["dimension"] != dimension or header["metric"] != metric:
            raise ValueError(f"vector snapshot {path} is for another property definition")
        arrays = np.load(io.BytesIO(body))
        index = cls(dimension, metric, config)
        index.matrix = rows_copy(np.asarray(arrays["matrix"], dtype=np.float32).reshape(-1, dimension))
        index.row_ids = arrays["row_ids"].copy()
        index.live = arrays["live"].astype(bool)
        index.rows = len(index.row_ids)
        if index.matrix.shape != (index.rows, dimension) or len(index.live) != index.rows:
            raise ValueError(f"vector snapshot {path} holds arrays of unequal lengths")
        index.live_count = int(index.live.sum())
        live_rows = np.flatnonzero(index.live)
        index.row_of = dict(zip(index.row_ids[live_rows].tolist(), live_rows.tolist(), strict=True))
        if len(index.row_of) != index.live_count:
            raise ValueError(f"vector snapshot {path} holds a node twice")
        if "hnsw" in arrays:
            index.hnsw = faiss.deserialize_index(arrays["hnsw"])
            index.hnsw_rows = int(header["hnsw_rows"])
            if index.hnsw.ntotal != index.hnsw_rows or index.hnsw_rows > index.rows:
                raise ValueError(f"vector snapshot {path} holds a graph that does not match its rows")
            if "calibration" in header:  # measured on this graph before; a damaged one is measured again
                try:
                    index.calibration = Calibration.from_dict(header["calibration"])
                except (TypeError, ValueError, KeyError):
                    log.warning("vector snapshot %s: calibration unreadable; the graph is calibrated again", path)
        return index, lsn
