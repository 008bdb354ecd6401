"""HNSW builds for a VectorIndex as background jobs for `indexer.IndexBuilder`.

A build reads only rows below its end mark of one index generation: rows are append-only and
upserts tombstone and append, so those rows cannot change until a compaction, which starts a new
generation and makes the result stale. An extension clones the installed graph first, so searches
keep using the installed one meanwhile. Rows past the installed graph are searched exactly.
A compaction of an index with a graph is a job too: it copies the live rows and builds their graph
aside, and its install carries over the rows appended and the tombstones set meanwhile.
A build whose graph will want a calibration (none yet, or its rows changed by `recalibrate_growth`)
calibrates it (calibrate.py) on fresh queries: calibration_queries of its new rows, held out of the
graph until it is measured. Otherwise (too few new rows to hold out) a calibration is a job of its own,
due once a graph is in and uncalibrated or grew that much: it measures the installed graph, which is
never mutated, with stored rows moved off themselves as queries, and is dropped when another graph was
installed meanwhile.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import faiss
import numpy as np

from knowledge.index.calibrate import Calibration, calibrate
from knowledge.index.vectors import VectorIndex

BUILD_CHUNK_ROWS = 262_144  # rows added between checks of the stop flag. faiss inserts the rows of one `add`
# from the highest HNSW level down, so smaller chunks make a worse graph: 100k x 384 clustered rows (M 32,
# efConstruction 80) added in chunks of 8,192 / 32,768 / 65,536 / all reached recall@10 0.991 / 0.992 /
# 0.995 / 0.997 at efSearch 1024 on fresh queries. A stopped build (the store closing) finishes its chunk on
# the indexer's daemon thread. (8,192 until the build calibrated on held-out rows: the stored-row queries
# found the one-add graph harder than fresh queries do and took its efSearch from 1024 to 2048.)


@dataclass
class HnswJob:
    """Bring `index`'s HNSW graph to cover rows [0, end) of generation `generation`. With `held_out` (rows
    of [start, end), sorted) the build calibrates: the graph is built without those rows, calibrated with
    them as queries (fresh ones: no node of theirs is in it) against exact search of the rows it holds, then
    they are added and the graph's nodes put back in row order (faiss's `permute_entries`)."""

    index: VectorIndex
    generation: int
    base: faiss.Index | None  # the installed graph, cloned and extended; None builds anew
    matrix: np.ndarray
    start: int
    end: int
    held_out: np.ndarray | None = None
    live: np.ndarray | None = None  # with held_out: the live flags of rows [0, end) when the job was made

    def run(self, stop: threading.Event) -> tuple[faiss.Index, Calibration | None] | None:
        graph = faiss.clone_index(self.base) if self.base is not None else self.index.new_hnsw()
        if self.held_out is None:
            for first in range(self.start, self.end, BUILD_CHUNK_ROWS):
                if stop.is_set():
                    return None
                graph.add(self.matrix[first:min(first + BUILD_CHUNK_ROWS, self.end)])
            return graph, None
        assert self.live is not None
        held = self.held_out
        kept = np.setdiff1d(np.arange(self.start, self.end), held, assume_unique=True)
        for first in range(0, len(kept), BUILD_CHUNK_ROWS):
            if stop.is_set():
                return None
            graph.add(self.matrix[kept[first:first + BUILD_CHUNK_ROWS]])
        positions = np.concatenate([np.arange(self.start), kept])  # the graph's node -> row, so far
        config = self.index.config
        calibration = calibrate(graph, np.ascontiguousarray(self.matrix[positions]), self.live[positions],
                                self.index.metric, recall_target=config.recall_target,
                                queries=len(held), ef_search_max=config.ef_search_max, hnsw_m=config.hnsw_m,
                                ef_construction=config.ef_construction,
                                held_out=np.ascontiguousarray(self.matrix[held]))
        if stop.is_set():
            return None
        graph.add(self.matrix[held])
        graph.permute_entries(np.argsort(np.concatenate([positions, held])))  # node i is row i again
        if calibration is not None:
            calibration = replace(calibration, graph_rows=self.end)
        return graph, calibration

    def install(self, result: tuple[faiss.Index, Calibration | None]) -> bool:
        graph, calibration = result
        if not self.index.install_hnsw(graph, self.generation, self.end):
            return False
        if calibration is not None:
            self.index.install_calibration(calibration, graph)
        return True


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
    job = HnswJob(index, index.generation, index.hnsw, index.matrix, start, index.rows)
    held = _held_out(index, start, index.rows)
    if held is not None:
        job.held_out, job.live = held, index.live[:index.rows].copy()
    return job


def _held_out(index: VectorIndex, start: int, end: int) -> np.ndarray | None:
    """The rows a build of [start, end) holds out to calibrate on (calibration_queries of the live rows in
    that range, drawn at random, sorted), when the graph it makes will want a calibration and the range has
    at least twice that many live rows; else None (a CalibrateJob measures the graph once it is in, with
    stored rows moved off themselves as queries)."""
    config = index.config
    cal = index.calibration
    if config.ef_search is not None or (cal is not None and index.hnsw is not None and
                                        abs(end - cal.graph_rows) <= config.recalibrate_growth * cal.graph_rows):
        return None
    live_rows = start + np.flatnonzero(index.live[start:end])
    if len(live_rows) < 2 * config.calibration_queries:
        return None
    rng = np.random.default_rng(end)
    return np.sort(rng.choice(live_rows, size=config.calibration_queries, replace=False))


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
