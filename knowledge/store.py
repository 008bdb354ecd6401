"""Store: one directory owned by one process, and the API over it (sessions, principals, schema,
maintenance). Its state and the write path live in the engine it owns (`knowledge/storage/engine.py`):
validate -> resolve (ids, endpoints, grants) -> WAL append -> group fsync -> apply to memory in LSN
order -> return the LSN, DuckDB brought up to date by a background applier.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from knowledge.access.audit import AuditLog
from knowledge.access.principal import ADMIN, Principal
from knowledge.access.visibility import VisibilityCache, live_nodes, visible_edges, with_expired
from knowledge.config import StoreConfig
from knowledge.errors import (
    InvalidArgument,
    NotADirectory,
    StoreClosed,
    StoreNotFound,
    StorePoisoned,
)
from knowledge.session import Session
from knowledge.storage.backup import backup_store
from knowledge.storage.backup import restore_store as copy_backup
from knowledge.storage.catalog import PREFIX as PRINCIPAL_PREFIX
from knowledge.storage.catalog import Catalog
from knowledge.storage.directory import NodeDirectory
from knowledge.storage.engine import MARKER, Engine, is_store
from knowledge.storage.lock import DirectoryLock
from knowledge.storage.ops import Op, OpKind
from knowledge.storage.position import Position
from knowledge.storage.resolve import Resolver
from knowledge.storage.retention import space, tables_space
from knowledge.storage.schema import Schema
from knowledge.storage.sweeper import sweep_all
from knowledge.storage.tables import Tables
from knowledge.storage.ttl import POLICY_PREFIX as TTL_POLICY_PREFIX
from knowledge.storage.ttl import policy_document, stamp_ops
from knowledge.storage.wal import WriteAheadLog

if TYPE_CHECKING:
    from knowledge.index.graph import EdgeIndex
    from knowledge.index.indexer import IndexBuilder
    from knowledge.index.keyword import KeywordIndex
    from knowledge.index.vectors import VectorIndex
    from knowledge.storage.row_cache import RowCache

FORMAT = {"format": "knowledge-store", "version": 1}


class Store:
    """An open store. Thread-safe; use `session(principal)` for reads and transactions."""

    def __init__(self, path: str, *, create: bool = True, config: StoreConfig | None = None,
                 allow_data_loss: bool = False) -> None:
        if not isinstance(path, str | os.PathLike):
            raise InvalidArgument(f"store path must be a str or path-like, got {type(path).__name__}")
        if config is not None and not isinstance(config, StoreConfig):
            raise InvalidArgument(f"config must be a knowledge.StoreConfig, got {type(config).__name__}")
        self.path = os.path.abspath(path)
        self.config = config or StoreConfig()
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectory(self.path)
        if not is_store(self.path):
            if not create:
                raise StoreNotFound(f"no store at {self.path!r} (create it with knowledge init)")
            if os.path.isdir(self.path) and os.listdir(self.path):
                raise StoreNotFound(f"{self.path!r} is a non-empty directory that holds no store")
            os.makedirs(self.path, exist_ok=True)
        self._lock = DirectoryLock(self.path)
        try:
            if not is_store(self.path):
                with open(os.path.join(self.path, MARKER), "w") as f:
                    json.dump(FORMAT, f)
            self._catalog_lock = threading.Lock()
            self._visibility_cache = VisibilityCache()
            self._visibility_lock = threading.Lock()  # readers of several threads share the cache
            self.audit = AuditLog(self.config.audit_entries_max) if self.config.audit else None
            # a refused open closes what it opened
            self.engine = Engine(self.path, self.config, allow_data_loss=allow_data_loss)
        except BaseException:
            self._lock.release()  # ... and holds no lock
            raise

    # -- the engine's state, read-only ------------------------------------------------------------
    @property
    def tables(self) -> Tables:
        return self.engine.tables

    @property
    def wal(self) -> WriteAheadLog:
        return self.engine.wal

    @property
    def schema(self) -> Schema:
        return self.engine.schema

    @property
    def directory(self) -> NodeDirectory:
        engine = self.engine
        engine.ttl.refresh(engine.directory, engine.columns)  # expiry is part of visibility (storage/ttl.py)
        return engine.directory

    @property
    def edges(self) -> dict[str, EdgeIndex]:
        return self.engine.edges

    @property
    def catalog(self) -> Catalog:
        return self.engine.catalog

    @property
    def vectors(self) -> dict[tuple[str, str], VectorIndex]:
        return self.engine.vectors

    @property
    def keywords(self) -> dict[tuple[str, str], KeywordIndex]:
        return self.engine.keywords

    @property
    def row_cache(self) -> RowCache:
        return self.engine.row_cache

    @property
    def indexer(self) -> IndexBuilder:
        return self.engine.indexer

    @property
    def state_lock(self) -> threading.RLock:
        """Held by commits applying to memory (and by a read view being made); session reads hold none."""
        return self.engine.state_lock

    @property
    def memory_lsn(self) -> int:
        """The LSN of the last record applied to memory (what reads see)."""
        return self.engine.memory_lsn

    @property
    def epoch(self) -> int:
        return self.engine.epoch

    # -- sessions -----------------------------------------------------------------------------
    def session(self, principal: Principal | str | None = None) -> Session:
        """A session bound to `principal`: admin when None, a catalog principal by name (its grants are
        looked up on every call, so grant changes apply at once), or an ad-hoc Principal."""
        self.engine.check_open()
        if isinstance(principal, str):
            self.catalog.get(principal)
        elif principal is not None and not isinstance(principal, Principal):
            raise InvalidArgument(f"principal must be None (admin), a principal's name or a Principal, "
                                  f"got {type(principal).__name__}")
        return Session(self, principal or ADMIN)

    # -- principals -----------------------------------------------------------------------------
    def _catalog_change(self, name: str, build: Callable[[], dict[str, Any]]) -> int:
        """Build the principal's new document from the current catalog and commit it (serialised)."""
        if not isinstance(name, str):
            raise InvalidArgument(f"a principal name is a str, got {type(name).__name__} {name!r}")
        with self._catalog_lock:
            with self.engine.stage_lock:
                self.engine.check_open()
                staged = self.engine.append([Op(OpKind.META, PRINCIPAL_PREFIX + name, document=build())], None)
            return self.engine.finish(*staged)

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
        """Every principal, by name. Raises StoreClosed."""
        self.engine.check_open()
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
        """The principal a bearer token belongs to; PermissionDenied otherwise (StoreClosed after close)."""
        self.engine.check_open()
        return self.catalog.authenticate(token)

    # -- schema -------------------------------------------------------------------------------
    def apply_schema(self, change: dict[str, Any]) -> int:
        """Apply a schema change ({"nodes": {...}, "edges": {...}}); return its LSN or raise SchemaError."""
        with self.engine.stage_lock:
            self.engine.check_open()
            populated = frozenset(n for n in self.schema.nodes if self.directory.count(n) > 0) | frozenset(
                e for e, idx in self.edges.items() if idx.edge_count > 0)
            target = self.schema.evolve(change, populated)
            if target == self.schema:
                return self.memory_lsn
            ops = [Op(OpKind.SCHEMA, "schema", document=target.to_dict())]
            staged = self.engine.append(ops, None)
        return self.engine.finish(*staged)

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
        return self.apply_schema(self.schema.property_change(type_name, name, spec))

    # -- TTL -------------------------------------------------------------------------------------
    def set_ttl(self, type_name: str, expire_after: str | float | dt.timedelta | None, *,
                on: str | None = None) -> int:
        """Expire the rows of a node or edge type `expire_after` ("7d", "12h", "30m", seconds or a timedelta)
        after their `on` property (a timestamp, or int/float seconds since the epoch) or, without `on`, after
        their last write (rows written before the policy count from now). `expire_after=None` removes the
        policy. A WAL record like a schema change; returns its LSN. Raises UnknownType, SchemaError,
        InvalidArgument."""
        with self.engine.stage_lock:
            self.engine.check_open()
            document = policy_document(self.schema, type_name, expire_after, on, self.config.clock(),
                                       self.engine.ttl.policies.get(type_name))
            if document.get("dropped") and type_name not in self.engine.ttl.policies:
                return self.memory_lsn
            staged = self.engine.append([Op(OpKind.META, TTL_POLICY_PREFIX + type_name, document=document)], None)
        return self.engine.finish(*staged)

    def ttl(self) -> dict[str, dict[str, Any]]:
        """The TTL policies by type: kind ("node"/"edge"), expire_after_s, on, set_at (epoch seconds)."""
        self.engine.check_open()
        with self.state_lock:
            return self.engine.ttl.describe()

    def sweep_expired(self, *, rows_max: int | None = None) -> dict[str, int]:
        """Delete every row past its deadline now, in WAL records of at most `rows_max` rows (default
        `StoreConfig.ttl_sweep_batch_rows`), as the background sweeper does; return the totals (nodes,
        entities, edges, records, lsn)."""
        if rows_max is not None and (isinstance(rows_max, bool) or not isinstance(rows_max, int) or rows_max <= 0):
            raise InvalidArgument(f"rows_max must be a positive int, got {rows_max!r}")
        self.engine.check_open()
        return sweep_all(self.engine, rows_max=rows_max)

    # -- commit pipeline ----------------------------------------------------------------------
    def commit(self, principal: Principal, items: list[tuple[str, str, Any]]) -> int:
        """Resolve, log, fsync and apply one transaction's items (as `Transaction` builds them: use a
        transaction); return its LSN. Raises InvalidArgument for what no transaction builds."""
        _check_principal(principal)
        if not isinstance(items, list | tuple) or not all(
                isinstance(item, tuple) and len(item) == 3 and item[0] in _COMMIT_ACTIONS for item in items):
            raise InvalidArgument("items must be a transaction's (action, type, rows) triples: "
                                  "use session.transaction()")

        def prepare() -> tuple[list[Op], Resolver] | None:  # under the stage lock, by the group's leader
            self.engine.check_open()
            visible = None if principal.admin else self.visibility(principal, wait=False)
            if visible is not None and self.directory.expired is not None and self.engine.ttl.live_expired:  # ttl.py
                visible = with_expired(self.engine.directory, principal)
            inflight = self.engine.inflight_edge_types()
            resolver = Resolver(self.schema, self.directory, self.edges, principal, visible, inflight)
            ops: list[Op] = []
            deadlines: list[tuple[str, Any]] = []  # explicit `_expires_at` values (storage/ttl.py)
            for action, type_name, data in items:
                if action == "expire_nodes":
                    deadlines.append((type_name, data))
                    continue
                op = getattr(resolver, action)(type_name, data)
                if op is not None:
                    ops.append(op)
            if not ops:
                return None
            return stamp_ops(self.engine.ttl, ops, resolver, deadlines, self.config.clock()), resolver
        return self.engine.commit(prepare)  # group commit: concurrent transactions share one write and fsync

    # -- visibility ---------------------------------------------------------------------------
    def visibility(self, principal: Principal, *, wait: bool = False,
                   directory: NodeDirectory | None = None) -> np.ndarray:
        """The bool bitmap over node ids that `principal` may see (cached per directory version) in
        `directory` (a read view's; default: the live one): `knowledge/access/visibility.py:visibility_bitmap`."""
        _check_principal(principal)
        engine = self.engine
        if engine.failure is not None:
            raise StorePoisoned(f"store {self.path!r} failed ({engine.failure}); reopen it to recover")
        if directory is not None:  # a read view's: never written, no state lock needed
            with self._visibility_lock:
                return self._visibility_cache.bitmap(directory, principal)
        with engine.state_lock, self._visibility_lock:
            return self._visibility_cache.bitmap(engine.directory, principal)

    # -- maintenance ----------------------------------------------------------------------------
    def wait_applied(self, lsn: int | None = None) -> None:
        """Block until DuckDB reflects every record up to `lsn` (default: everything committed now)."""
        if lsn is not None and (isinstance(lsn, bool) or not isinstance(lsn, int)):
            raise InvalidArgument(f"lsn must be an int or None, got {lsn!r}")
        self.engine.wait_applied(lsn)

    def checkpoint(self) -> int:
        """Make DuckDB hold everything committed, fold the graph overlay, compact the vector indexes and
        write their snapshots, then drop WAL segments the checkpoint covers. Commits wait meanwhile.

        Returns the LSN the checkpoint covers.
        """
        return self.engine.checkpoint()

    def build_indexes(self, *, wait: bool = True, timeout_s: float | None = None) -> bool:
        """Bring every HNSW graph up to all current rows in the background (checkpoint and open do this
        by themselves once enough rows lie outside a graph); with `wait`, block until the builds are in.
        Searches stay exact and correct meanwhile. Returns False when `timeout_s` passed first."""
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float)
                                      or not timeout_s >= 0):
            raise InvalidArgument(f"timeout_s must be a number of seconds >= 0 or None, got {timeout_s!r}")
        return self.engine.build_indexes(wait=wait, timeout_s=timeout_s)

    def backup(self, destination: str) -> int:
        """Write a consistent copy of the store at one LSN to `destination`; return that LSN."""
        self.engine.check_open()
        if not isinstance(destination, str | os.PathLike):
            raise InvalidArgument(f"backup destination must be a path, got {type(destination).__name__}")
        return backup_store(self.engine, destination)

    @property
    def position(self) -> Position:
        """The (epoch, LSN) of the last committed record visible to reads."""
        return Position(self.epoch, self.memory_lsn)

    def stats(self) -> dict[str, Any]:
        """Whole-store figures (admin view): LSNs, WAL, caches, index builds and vector indexes, with the
        node and edge counts per type that `session().stats()` has (a session counts what it can see).
        Raises StoreClosed (a poisoned store still reports its figures)."""
        if self.engine.closed:
            raise StoreClosed(f"store {self.path!r} is closed")
        with self.state_lock:  # the counts and the LSN together
            alive = live_nodes(self.directory)  # alive and not expired (storage/ttl.py)
            type_of = self.directory.type_of[:len(alive)][alive]
            codes = self.directory.type_codes
            nodes = {name: int(np.count_nonzero(type_of == codes[name])) if name in codes else 0
                     for name in self.schema.nodes}
            edges = {name: len(visible_edges(alive, *index.all_pairs())[0]) for name, index in self.edges.items()}
            lsn = self.memory_lsn
            ttl = self.engine.ttl
            pending, lag_s = ttl.pending(self.directory)
            ttl_stats = {"policies": ttl.describe(), "expired_pending": pending, "expired_total": ttl.swept_nodes,
                         "expired_edges_total": ttl.swept_edges, "sweeper_lag_s": lag_s}
            space_stats = space(self.engine, tables=False)
        space_stats = {"tables": tables_space(self.engine), **space_stats}  # DuckDB's figures without the state lock
        return {"path": self.path, "lsn": lsn, "epoch": self.epoch, "position": str(self.position),
                **self.engine.stats(), "nodes": nodes, "edges": edges, "ttl": ttl_stats, "space": space_stats}

    def close(self) -> None:
        """Flush the table applier, close the WAL and DuckDB and release the directory lock."""
        if self.engine.closed:
            return
        try:
            self.engine.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r}, lsn={self.memory_lsn})"


_COMMIT_ACTIONS = frozenset(("upsert_nodes", "delete_nodes", "upsert_edges", "delete_edges", "expire_nodes"))


def _check_principal(principal: Any) -> None:
    if not isinstance(principal, Principal):
        raise InvalidArgument(f"principal must be a knowledge.Principal, got {type(principal).__name__}")


def open_store(path: str, *, create: bool = True, config: StoreConfig | None = None,
               allow_data_loss: bool = False) -> Store:
    """Open (or create) the store at `path`; replays the WAL tail. Raises StoreLocked, CorruptionError.

    A missing or shortened WAL segment, or a log that no longer joins the tables, refuses to open with a
    CorruptionError naming the file and LSN range; `allow_data_loss=True` opens with what is left
    instead (set-aside segments go to wal/quarantine/, and `stats()["recovery"]` says what was lost).
    """
    return Store(path, create=create, config=config, allow_data_loss=allow_data_loss)


def restore_store(source: str, destination: str, *, config: StoreConfig | None = None) -> int:
    """Copy the backup at `source` to a new store directory `destination`; return the LSN it holds.

    The copy is opened once (replaying its WAL) to prove it is a valid store before it is published.
    An encrypted backup needs the store's keys in `config` (encryption_key, ...). Raises BackupError
    (EncryptionKeyMissing / EncryptionKeyWrong for keys that do not open it).
    """
    def verify(path: str) -> int:
        with Store(path, create=False, config=config) as restored:
            return restored.memory_lsn

    return copy_backup(source, destination, verify, None if config is None else config.keyring())


def recover_store(source: str, destination: str, *, backup: str | None = None,
                  config: StoreConfig | None = None) -> dict[str, Any]:
    """Rebuild the store at `source` (whose state.duckdb is damaged) into a new store at `destination`
    from its WAL, plus the tables of `backup` where a checkpoint dropped the WAL's start; return what
    was recovered (`lsn`, `wal_first_lsn`, `wal_last_lsn`, `records_replayed`, `from_backup_lsn`,
    `lsn_ranges_lost`). The source is only read. Raises CorruptionError, BackupError."""
    from knowledge.storage.recover import recover_store as rebuild
    return rebuild(source, destination, backup=backup, config=config)


__all__ = ["Store", "is_store", "open_store", "recover_store", "restore_store"]
