"""Store: one directory owned by one process: WAL (truth), DuckDB tables, in-memory graph and directory.

Write path: validate -> resolve (ids, endpoints, grants) -> WAL append -> group fsync -> apply to
memory in LSN order -> return the LSN. DuckDB is brought up to date by a background applier
that batches records into one DuckDB transaction; every read that touches DuckDB first waits
until DuckDB has applied everything committed before the read started (read-your-writes).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from knowledge.audit import AuditLog
from knowledge.catalog import PREFIX as PRINCIPAL_PREFIX
from knowledge.catalog import Catalog
from knowledge.config import StoreConfig
from knowledge.directory import NodeDirectory
from knowledge.errors import KnowledgeError, SchemaError, StoreClosed, StoreNotFound, StorePoisoned
from knowledge.graph import EdgeIndex
from knowledge.indexer import IndexBuilder
from knowledge.keyword import KeywordIndex
from knowledge.loading import load_memory, replay
from knowledge.lock import DirectoryLock
from knowledge.memory_apply import apply_memory
from knowledge.ops import Op, OpKind, encode_ops
from knowledge.position import Position
from knowledge.principal import ADMIN, Principal
from knowledge.resolve import Resolver, check_payload_size
from knowledge.row_cache import RowCache
from knowledge.schema import Schema
from knowledge.snapshot_file import write_snapshot
from knowledge.tables import Tables
from knowledge.vector_jobs import compaction, hnsw_job
from knowledge.vectors import VectorIndex
from knowledge.wal import WriteAheadLog

if TYPE_CHECKING:
    from knowledge.session import Session

log = logging.getLogger("knowledge.store")
FORMAT = {"format": "knowledge-store", "version": 1}
APPLY_BATCH_RECORDS_MAX = 1024
APPLY_BATCH_RECORDS_MIN = 256
VISIBILITY_CACHE_MAX = 64
BUILD_ROUNDS_MAX = 4  # build_indexes: schedule-and-wait rounds before a last wait


def _marker_path(path: str) -> str:
    return os.path.join(path, "STORE")


def is_store(path: str) -> bool:
    return os.path.isfile(_marker_path(path))


class Store:
    """An open store. Thread-safe; use `session(principal)` for reads and transactions."""

    def __init__(self, path: str, *, create: bool = True, config: StoreConfig | None = None) -> None:
        self.path = os.path.abspath(path)
        self.config = config or StoreConfig()
        if not is_store(self.path):
            if not create:
                raise StoreNotFound(f"no store at {self.path!r} (create it with knowledge init)")
            if os.path.isdir(self.path) and os.listdir(self.path):
                raise StoreNotFound(f"{self.path!r} is a non-empty directory that holds no store")
            os.makedirs(self.path, exist_ok=True)
        self._lock = DirectoryLock(self.path)
        try:
            self._open()
        except BaseException:
            if "indexer" in self.__dict__:
                self.indexer.close()
            for part in ("wal", "tables"):  # a refused open holds no file or lock
                if part in self.__dict__:
                    try:
                        self.__dict__[part].close()
                    except Exception:  # noqa: BLE001 - the original error matters more
                        log.warning("closing %s after a failed open failed", part, exc_info=True)
            self._lock.release()
            raise

    def _open(self) -> None:
        if not is_store(self.path):
            with open(_marker_path(self.path), "w") as f:
                json.dump(FORMAT, f)
        self._closed = False
        self._failure: BaseException | None = None
        self._stage_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._state = threading.RLock()
        self._memory_turn = threading.Condition(threading.Lock())
        self._applier_cv = threading.Condition(threading.Lock())
        self._queue: list[tuple[int, int, list[Op]]] = []
        self._queue_since = time.monotonic()
        self._readers_waiting = 0
        self._inflight_edges: dict[str, int] = {}
        self._visibility_cache: OrderedDict[tuple[Any, int], np.ndarray] = OrderedDict()
        self.tables = Tables(os.path.join(self.path, "state.duckdb"))
        self.wal = WriteAheadLog(os.path.join(self.path, "wal"), fsync=self.config.fsync,
                                 segment_bytes_max=self.config.segment_bytes_max,
                                 preallocate_bytes=self.config.wal_preallocate_bytes)
        self.schema = self.tables.schema
        self.directory = NodeDirectory()
        self.edges: dict[str, EdgeIndex] = {}
        self.catalog = Catalog()
        self.vectors: dict[tuple[str, str], VectorIndex] = {}
        self.keywords: dict[tuple[str, str], KeywordIndex] = {}
        self.audit = AuditLog(self.config.audit_entries_max) if self.config.audit else None
        self.indexer = IndexBuilder(self._state)
        self.row_cache = RowCache(self.config.row_cache_rows_max)
        load_memory(self)
        replay(self)
        self._schedule_index_builds()
        self.epoch = max(self.wal.last_epoch, self.tables.applied_epoch, 1)
        self._applier = threading.Thread(target=self._apply_loop, name="knowledge-applier", daemon=True)
        self._applier.start()

    def _snapshot_path(self, type_name: str, prop: str, kind: str = "vectors") -> str:
        return os.path.join(self.path, "snapshots", f"{kind}-{type_name}-{prop}.snap")

    # -- sessions -----------------------------------------------------------------------------
    def session(self, principal: Principal | str | None = None) -> Session:
        """A session bound to `principal`: admin when None, a catalog principal by name (its grants are
        looked up on every call, so grant changes apply at once), or an ad-hoc Principal."""
        from knowledge.session import Session
        self._check_open()
        if isinstance(principal, str):
            self.catalog.get(principal)
        return Session(self, principal or ADMIN)

    # -- principals -----------------------------------------------------------------------------
    def _catalog_change(self, name: str, build: Callable[[], dict[str, Any]]) -> int:
        """Build the principal's new document from the current catalog and commit it (serialised)."""
        with self._catalog_lock:
            with self._stage_lock:
                self._check_open()
                staged = self._append([Op(OpKind.META, PRINCIPAL_PREFIX + name, document=build())], None)
            return self._finish(*staged)

    def create_principal(self, name: str, *, read: Iterable[str] = (), write: Iterable[str] = (),
                         admin: bool = False) -> Principal:
        """Create a principal with read/write label grants; raises InvalidArgument if it exists."""
        self._catalog_change(name, lambda: self.catalog.document_create(name, read, write, admin))
        return self.catalog.get(name)

    def grant(self, name: str, *, read: Iterable[str] = (), write: Iterable[str] = (),
              admin: bool | None = None) -> Principal:
        """Add read/write grants (and optionally set admin); effective for every session at once."""
        self._catalog_change(name, lambda: self.catalog.document_grants(name, add_read=read, add_write=write,
                                                                           admin=admin))
        return self.catalog.get(name)

    def revoke(self, name: str, *, read: Iterable[str] = (), write: Iterable[str] = ()) -> Principal:
        """Remove read/write grants; effective for every session at once."""
        self._catalog_change(name, lambda: self.catalog.document_grants(name, remove_read=read,
                                                                           remove_write=write))
        return self.catalog.get(name)

    def drop_principal(self, name: str) -> None:
        """Delete a principal and its tokens; its sessions fail from then on."""
        self._catalog_change(name, lambda: self.catalog.document_drop(name))

    def principals(self) -> list[Principal]:
        return sorted(self.catalog.principals.values(), key=lambda p: p.name)

    def issue_token(self, name: str) -> str:
        """A new bearer token for `name`; only its SHA-256 digest is stored, so show it once."""
        issued: list[str] = []

        def build() -> dict[str, Any]:
            token, document = self.catalog.document_token(name)
            issued.append(token)
            return document

        self._catalog_change(name, build)
        return issued[0]

    def revoke_tokens(self, name: str) -> None:
        self._catalog_change(name, lambda: self.catalog.document_revoke_tokens(name))

    def authenticate(self, token: str) -> Principal:
        """The principal a bearer token belongs to; PermissionDenied otherwise."""
        return self.catalog.authenticate(token)

    # -- schema -------------------------------------------------------------------------------
    def apply_schema(self, change: dict[str, Any]) -> int:
        """Apply a schema change ({"nodes": {...}, "edges": {...}}); return its LSN or raise SchemaError."""
        with self._stage_lock:
            self._check_open()
            populated = frozenset(n for n in self.schema.nodes if self.directory.count(n) > 0) | frozenset(
                e for e, idx in self.edges.items() if idx.edge_count > 0)
            target = self.schema.evolve(change, populated)
            if target == self.schema:
                return self.memory_lsn
            ops = [Op(OpKind.SCHEMA, "schema", document=target.to_dict())]
            staged = self._append(ops, None)
        return self._finish(*staged)

    def define_node_type(self, name: str, *, key: str, properties: dict[str, Any] | None = None) -> int:
        """Declare (or compatibly extend) a node type; return the change's LSN."""
        return self.apply_schema({"nodes": {name: {"key": key, "properties": properties or {}}}})

    def define_edge_type(self, name: str, *, source: str | list[str], target: str | list[str],
                         properties: dict[str, Any] | None = None) -> int:
        """Declare (or compatibly extend) an edge type; return the change's LSN."""
        return self.apply_schema({"edges": {name: {"source": source, "target": target,
                                                    "properties": properties or {}}}})

    def add_property(self, type_name: str, name: str, spec: str | dict[str, Any]) -> int:
        """Add an optional property to an existing node or edge type."""
        if type_name in self.schema.nodes:
            node = self.schema.nodes[type_name]
            return self.apply_schema({"nodes": {type_name: {"key": node.key, "properties": {name: spec}}}})
        if type_name in self.schema.edges:
            edge = self.schema.edges[type_name]
            return self.apply_schema({"edges": {type_name: {"source": list(edge.sources), "target": list(edge.targets),
                                                            "properties": {name: spec}}}})
        raise SchemaError(f"no node or edge type {type_name!r}")

    # -- commit pipeline ----------------------------------------------------------------------
    def commit(self, principal: Principal, items: list[tuple[str, str, Any]]) -> int:
        """Resolve, log, fsync and apply one transaction's items; return its LSN."""
        with self._stage_lock:
            self._check_open()
            visible = None if principal.admin else self.visibility(principal, wait=False)
            inflight = {name for name, count in self._inflight_edges.items() if count}
            resolver = Resolver(self.schema, self.directory, self.edges, principal, visible, inflight)
            ops: list[Op] = []
            for action, type_name, data in items:
                op = getattr(resolver, action)(type_name, data)
                if op is not None:
                    ops.append(op)
            if not ops:
                return self.memory_lsn
            staged = self._append(ops, resolver)
        return self._finish(*staged)

    def _append(self, ops: list[Op], resolver: Resolver | None) -> tuple[int, list[Op], set[str]]:
        """Under the stage lock: write the record (not yet durable) and stage what it changes."""
        payload = encode_ops(ops)
        check_payload_size(payload, self.config.transaction_bytes_max)
        lsn = self.wal.append(payload, self.epoch)
        if resolver is not None:
            for type_name, keys, ids in resolver.staged.upserts:
                self.directory.stage_upsert(type_name, keys, ids)
            self.directory.stage_delete(resolver.staged.deletes)
            self.directory.next_id = max(self.directory.next_id, resolver.staged.next_id)
        edge_types = {op.name for op in ops if op.kind in (OpKind.UPSERT_EDGES, OpKind.DELETE_EDGES)}
        for name in edge_types:
            self._inflight_edges[name] = self._inflight_edges.get(name, 0) + 1
        if any(op.kind == OpKind.SCHEMA for op in ops):
            self.schema = Schema.from_dict(ops[-1].document)
        return lsn, ops, edge_types

    def _finish(self, lsn: int, ops: list[Op], edge_types: set[str]) -> int:
        """Outside the stage lock: wait for durability (group commit: concurrent committers share an
        fsync), then apply to memory in LSN order. Readers never wait for an fsync and never see a
        record before it is durable."""
        try:
            self.wal.sync_to(lsn)
        except BaseException as exc:
            self._fail(exc)
            raise
        with self._memory_turn:
            while self.memory_lsn != lsn - 1:
                if self._failure is not None:
                    raise StorePoisoned("an earlier commit failed; reopen the store") from self._failure
                self._memory_turn.wait(0.5)
            try:
                with self._state:
                    apply_memory(self, ops)
                    for name in edge_types:
                        self._inflight_edges[name] -= 1
                    self.memory_lsn = lsn  # inside the state lock: a snapshot sees ops and LSN together
                    self._enqueue(lsn, ops)
            except BaseException as exc:
                self._fail(exc)
                raise
            self._memory_turn.notify_all()
        return lsn

    def _enqueue(self, lsn: int, ops: list[Op]) -> None:
        """Hand a memory-applied record to the DuckDB applier."""
        with self._applier_cv:
            if not self._queue:
                self._queue_since = time.monotonic()
            self._queue.append((lsn, self.epoch, ops))
            if len(self._queue) >= APPLY_BATCH_RECORDS_MIN:
                self._applier_cv.notify_all()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            log.error("store %s poisoned: %s", self.path, exc)
        with self._memory_turn:
            self._memory_turn.notify_all()
        with self._applier_cv:
            self._applier_cv.notify_all()

    # -- DuckDB applier -----------------------------------------------------------------------
    def _apply_loop(self) -> None:
        """Apply queued records to DuckDB in batches: when enough have queued, when the oldest has waited
        `apply_delay_ms`, or at once when a reader waits for them (or the store closes)."""
        delay_s = self.config.apply_delay_ms / 1000
        while True:
            with self._applier_cv:
                while not self._closed and not (self._queue and (
                        self._readers_waiting or len(self._queue) >= APPLY_BATCH_RECORDS_MIN
                        or time.monotonic() - self._queue_since >= delay_s)):
                    timeout = None if not self._queue else max(0.0, self._queue_since + delay_s - time.monotonic())
                    self._applier_cv.wait(timeout)
                if not self._queue and self._closed:
                    return
                batch = self._queue[:APPLY_BATCH_RECORDS_MAX]
                del self._queue[:len(batch)]
                self._queue_since = time.monotonic()
            try:
                self.tables.apply(batch)
            except BaseException as exc:  # the WAL holds the records; reopening replays them
                self._fail(exc)
                return
            with self._applier_cv:
                self._applier_cv.notify_all()

    def wait_applied(self, lsn: int | None = None) -> None:
        """Block until DuckDB reflects every record up to `lsn` (default: everything committed now)."""
        target = self.memory_lsn if lsn is None else lsn
        if self.tables.applied_lsn >= target:
            return
        with self._applier_cv:
            self._readers_waiting += 1
            self._applier_cv.notify_all()
            try:
                while self.tables.applied_lsn < target:
                    if self._failure is not None:
                        raise StorePoisoned("the table applier failed; reopen the store") from self._failure
                    self._applier_cv.wait(0.5)
            finally:
                self._readers_waiting -= 1

    # -- visibility ---------------------------------------------------------------------------
    def visibility(self, principal: Principal, *, wait: bool = False) -> np.ndarray:
        """The bool bitmap over node ids that `principal` may see (cached per directory version)."""
        with self._state:
            if self._failure is not None:
                raise StorePoisoned(f"store {self.path!r} failed ({self._failure}); reopen it to recover")
            directory = self.directory
            cache_key = (principal, directory.version, directory.capacity)
            bitmap = self._visibility_cache.get(cache_key)
            if bitmap is not None:
                self._visibility_cache.move_to_end(cache_key)
                return bitmap
            alive = directory.alive
            if principal.admin:
                bitmap = alive
            else:
                bitmap = np.zeros(directory.capacity, dtype=bool)
                for label in principal.read:
                    label_bits = directory.label_bitmap(label)
                    if label_bits is not None:
                        bitmap |= label_bits
                bitmap &= alive
            bitmap.setflags(write=False)
            self._visibility_cache[cache_key] = bitmap
            while len(self._visibility_cache) > VISIBILITY_CACHE_MAX:
                self._visibility_cache.popitem(last=False)
            return bitmap

    # -- maintenance ----------------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Make DuckDB hold everything committed, fold the graph overlay, compact the vector indexes and
        write their snapshots, then drop WAL segments the checkpoint covers. Commits wait meanwhile.

        Returns the LSN the checkpoint covers.
        """
        with self._stage_lock:
            self._check_open()
            lsn = self.wal.last_lsn
            with self._memory_turn:
                while self.memory_lsn < lsn:
                    self._memory_turn.wait(0.5)
            self.wait_applied(lsn)
            self.tables.checkpoint()
            os.makedirs(os.path.join(self.path, "snapshots"), exist_ok=True)
            with self._state:
                for index in self.edges.values():
                    index.compact(self.directory.capacity, self.directory.alive)
                for (type_name, prop), vectors in self.vectors.items():
                    if vectors.needs_compaction():
                        job = compaction(vectors)
                        if job is None:
                            vectors.compact()  # no graph to rebuild: arrays only
                        else:  # searches keep the current graph until the compacted one is in
                            self.indexer.submit(("vectors", type_name, prop), job)
                    vectors.save(self._snapshot_path(type_name, prop), lsn)
                self._schedule_index_builds()
                for (type_name, prop), keywords in self.keywords.items():
                    write_snapshot(self._snapshot_path(type_name, prop, "keywords"), lsn, keywords.snapshot())
            with self.tables.lock:  # from now on a missing snapshot is worth a warning
                self.tables.con.execute("INSERT OR REPLACE INTO _meta VALUES ('snapshots_lsn', ?)", [str(lsn)])
            self.wal.remove_segments_before(lsn + 1)
            return lsn

    def _schedule_index_builds(self, *, tail_rows_max: int | None = None) -> int:
        """Queue the background HNSW builds that are due; return how many."""
        queued = 0
        with self._state:
            for key, vectors in self.vectors.items():
                if self.indexer.is_pending(("vectors", *key)):
                    continue  # a compaction or build is under way; the next round sees what it left
                job = hnsw_job(vectors, tail_rows_max=tail_rows_max)
                if job is not None:
                    self.indexer.submit(("vectors", *key), job)
                    queued += 1
        return queued

    def build_indexes(self, *, wait: bool = True, timeout_s: float | None = None) -> bool:
        """Bring every HNSW graph up to all current rows in the background (checkpoint and open do this
        by themselves once enough rows lie outside a graph); with `wait`, block until the builds are in.
        Searches stay exact and correct meanwhile. Returns False when `timeout_s` passed first."""
        self._check_open()
        self._schedule_index_builds(tail_rows_max=0)
        if not wait:
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for _ in range(BUILD_ROUNDS_MAX):  # a compaction can leave a tail that one more build covers
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.indexer.wait_idle(remaining):
                return False
            if not self._schedule_index_builds(tail_rows_max=0):
                return True
        return self.indexer.wait_idle(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def backup(self, destination: str) -> int:
        """Write a consistent copy of the store at one LSN to `destination`; return that LSN."""
        from knowledge.backup import backup_store
        self._check_open()
        return backup_store(self, destination)

    @property
    def position(self) -> Position:
        """The (epoch, LSN) of the last committed record visible to reads."""
        return Position(self.epoch, self.memory_lsn)

    def stats(self) -> dict[str, Any]:
        """Whole-store figures (admin view); sessions report visible counts."""
        return {"path": self.path, "lsn": self.memory_lsn, "epoch": self.epoch, "position": str(self.position),
                "applied_lsn": self.tables.applied_lsn, "wal_first_lsn": self.wal.first_lsn,
                "fsyncs": self.wal.fsync_count,
                "row_cache": {"rows": len(self.row_cache), "hits": self.row_cache.hits,
                              "misses": self.row_cache.misses},
                "index_builds": {"pending": self.indexer.pending(), "installed": self.indexer.installed,
                                 "failed": self.indexer.failures},
                "vector_indexes": {f"{t}.{p}": {"rows": v.rows, "live": v.live_count, "graph_rows": v.hnsw_rows,
                                                    "device": v.scan_device}
                                   for (t, p), v in self.vectors.items()}}

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path!r} is closed")
        if self._failure is not None:
            raise StorePoisoned(f"store {self.path!r} failed ({self._failure}); reopen it to recover") from self._failure

    def close(self) -> None:
        """Flush the table applier, close the WAL and DuckDB and release the directory lock."""
        if self._closed:
            return
        try:
            if self._failure is None:
                try:
                    self.wait_applied()
                except KnowledgeError:
                    pass
        finally:
            self.indexer.close()
            with self._applier_cv:
                self._closed = True
                self._applier_cv.notify_all()
            self._applier.join(timeout=30)
            if self._failure is None:
                self._save_new_graphs()
            self.wal.close()
            self.tables.close()
            self._lock.release()

    def _save_new_graphs(self) -> None:
        """Snapshot the vector indexes when a background build installed a graph since the last checkpoint
        (everything is applied by now, so the snapshot's LSN is the tables' LSN)."""
        if not any(vectors.graph_unsaved for vectors in self.vectors.values()):
            return
        lsn = self.tables.applied_lsn
        if lsn != self.memory_lsn:
            return
        os.makedirs(os.path.join(self.path, "snapshots"), exist_ok=True)
        try:
            for (type_name, prop), vectors in self.vectors.items():
                vectors.save(self._snapshot_path(type_name, prop), lsn)
        except OSError as exc:  # the previous snapshots plus the WAL still recover everything
            log.warning("could not save the vector snapshots at close: %s", exc)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r}, lsn={self.memory_lsn})"


def open_store(path: str, *, create: bool = True, config: StoreConfig | None = None) -> Store:
    """Open (or create) the store at `path`; replays the WAL tail. Raises StoreLocked, CorruptionError."""
    return Store(path, create=create, config=config)


