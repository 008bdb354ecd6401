"""HNSW builds for a VectorIndex as background jobs for `indexer.IndexBuilder`.

A build reads only rows below its end mark of one index generation: rows are append-only and
upserts tombstone and append, so those rows cannot change until a compaction, which starts a new
generation and makes the result stale. An extension clones the installed graph first, so searches
keep using the installed one meanwhile. Rows past the installed graph are searched exactly.
A compaction of an index with a graph is a job too: it copies the live rows and builds their graph
aside, and its install carries over the rows appended and the tombstones set meanwhile.
A calibration (calibrate.py) is a job too, due once a graph is in and uncalibrated, or after its rows
changed by `recalibrate_growth`: it measures the installed graph, which is never mutated, and the rows
below it, and is dropped when another graph was installed meanwhile.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import faiss
import numpy as np

from knowledge.index.calibrate import Calibration, calibrate
from knowledge.index.vectors import VectorIndex

BUILD_CHUNK_ROWS = 8192  # rows added between checks of the stop flag. faiss inserts the rows of one `add`
# from the highest HNSW level down, and bigger chunks make a better graph for fresh queries (100k x 384
# clustered, M 32/efConstruction 80, chunks of 8,192 / 65,536 / all: recall@10 0.991 / 0.995 / 0.997 at
# efSearch 1024), but the calibration's queries made from stored rows find the one-add graph harder (its
# efSearch went from 1024 to 2048): kept at 8,192 until the calibration queries with rows held out of the
# graph (bench/RESULTS.md, filtered search notes)


@dataclass
class HnswJob:
    """Bring `index`'s HNSW graph to cover rows [0, end) of generation `generation`."""

    index: VectorIndex
    generation: int
    base: faiss.Index | None  # the installed graph, cloned and extended; None builds anew
    matrix: np.ndarray
    start: int
    end: int

    def run(self, stop: threading.Event) -> faiss.Index | None:
        graph = faiss.clone_index(self.base) if self.base is not None else self.index.new_hnsw()
        for first in range(self.start, self.end, BUILD_CHUNK_ROWS):
            if stop.is_set():
                return None
            graph.add(self.matrix[first:min(first + BUILD_CHUNK_ROWS, self.end)])
        return graph

    def install(self, graph: faiss.Index) -> bool:
        return self.index.install_hnsw(graph, self.generation, self.end)


@dataclass
class CalibrateJob:
    """Calibrate `graph` (the index's installed graph) on rows [0, graph.ntotal) of `matrix`."""

    index: VectorIndex
    graph: faiss.Index
    matrix: np.ndarray
    live: np.ndarray  # a copy of the live flags of the graph's rows when the job was made

    def run(self, stop: threading.Event) -> Calibration | None:
        if stop.is_set():
            return None
        config = self.index.config
        return calibrate(self.graph, self.matrix, self.live, self.index.metric,
                         recall_target=config.recall_target, queries=config.calibration_queries,
                         ef_search_max=config.ef_search_max, hnsw_m=config.hnsw_m,
                         ef_construction=config.ef_construction)

    def install(self, calibration: Calibration) -> bool:
        return self.index.install_calibration(calibration, self.graph)


def calibrate_job(index: VectorIndex) -> CalibrateJob | None:
    """The calibration of the installed graph when one is due (`VectorIndex.calibration_due`), else None.
    Call under the store's state lock."""
    if not index.calibration_due() or index.hnsw is None:
        return None
    return CalibrateJob(index, index.hnsw, index.matrix, index.live[:index.hnsw_rows].copy())


def hnsw_job(index: VectorIndex, *, tail_rows_max: int | None = None) -> HnswJob | CalibrateJob | None:
    """The job that brings the index's HNSW graph up to date, or None when none is due.

    Due: the index wants HNSW and has none, or more than `tail_rows_max` rows (default: the config's
    hnsw_tail_rows_max) lie past the graph; else the graph's calibration, when due. Call under the store's
    state lock.
    """
    if not index.wants_hnsw():
        return None
    limit = index.config.hnsw_tail_rows_max if tail_rows_max is None else tail_rows_max
    if index.hnsw is not None and index.rows - index.hnsw_rows <= limit:
        return calibrate_job(index)
    start = index.hnsw_rows if index.hnsw is not None else 0
    return HnswJob(index, index.generation, index.hnsw, index.matrix, start, index.rows)


@dataclass
class CompactJob:
    """Drop the rows of `index` that were dead at `end` and build the graph of the rest, aside."""

    index: VectorIndex
    generation: int
    matrix: np.ndarray
    keep: np.ndarray  # the rows below `end` that were live when the job was made
    end: int

    def run(self, stop: threading.Event) -> tuple[np.ndarray, faiss.Index] | None:
        compacted = np.ascontiguousarray(self.matrix[self.keep])
        graph = self.index.new_hnsw()
        for first in range(0, len(compacted), BUILD_CHUNK_ROWS):
            if stop.is_set():
                return None
            graph.add(compacted[first:first + BUILD_CHUNK_ROWS])
        return compacted, graph

    def install(self, result: tuple[np.ndarray, faiss.Index]) -> bool:
        compacted, graph = result
        return self.index.install_compaction(self.generation, self.keep, self.end, compacted, graph)


def compaction(index: VectorIndex) -> CompactJob | None:
    """A background compaction for an index that wants a graph, or None (then compact in place: no graph
    to rebuild, only arrays to copy). Call under the store's state lock."""
    if not index.wants_hnsw():
        return None
    keep = np.flatnonzero(index.live[:index.rows])
    return CompactJob(index, index.generation, index.matrix, keep, index.rows)
