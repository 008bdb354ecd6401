"""Read views: the in-memory state of a store as of one LSN, for readers that hold no lock.

A `ReadView` names the parts (directory, catalog, view clock, edge, vector, keyword and column indexes)
as they were when it was made, under the engine's state lock at `memory_lsn`, plus a DuckDB read
transaction at that same LSN (`TablesAt`). Making one copies nothing: it counts itself on the parts it
names, until it dies (no reader holds it). A part that a live view names is never changed. The writer
(applying a record, a checkpoint's compaction, a background index install) first calls `own`, which
replaces such a part in the engine by a fork: a new object that takes over the writable state and copies
what the writer changes in place, while sharing what is append-only (vector rows, posting arrays, CSR
arrays, keys). A part no live view names is written in place, as before. So a view stays valid, and
exact, for as long as a reader holds it, a commit never waits for a reader, and forks happen only while
readers actually read.

What each fork copies (its cost, paid once per shared part per commit while readers are active):
directory: `type_of` and the label bitmaps (the key -> id maps, keys and staged state are shared; a
deleted key keeps its former id in `former`); edges: the overlay (CSR arrays are shared); vectors: the
tombstone array (rows and graphs are shared); keywords: per-document arrays and per-term lists of arrays
(postings are shared); columns: every column array; catalog and view clock: their dicts.
"""

from __future__ import annotations

import copy
import itertools
import threading
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from knowledge.access.view_clock import ViewClock
from knowledge.errors import invariant
from knowledge.storage.ops import Op, OpKind

if TYPE_CHECKING:
    import duckdb

    from knowledge.index.columns import ColumnIndex, TypeColumns
    from knowledge.index.graph import EdgeIndex
    from knowledge.index.keyword import KeywordIndex
    from knowledge.index.vectors import VectorIndex
    from knowledge.storage.catalog import Catalog
    from knowledge.storage.directory import NodeDirectory
    from knowledge.storage.tables import Tables

NAMED = "_read_views_naming"  # the attribute counting the live read views that name a part
_NAMED_LOCK = threading.RLock()  # views are made under the state lock, but die in any thread
_FORK_SERIALS = itertools.count(1)


class TablesPassed(Exception):  # noqa: N818 - control flow inside a session read, never raised to a caller
    """A read view's tables are needed, but the table applier went past its LSN before they were asked
    for: the read starts again at a view whose table snapshot is asked for at once."""


class TablesAt:
    """A DuckDB read transaction whose snapshot is the tables at `lsn`: asked for (`wanted`) while the
    tables are at or below `lsn`, the applier then stops there until it is open (opened by whoever first
    finds the tables there: the applier, or a reader waiting for it); one user at a time (`lock`)."""

    __slots__ = ("lsn", "cursor", "lock", "wanted", "__weakref__")

    def __init__(self, lsn: int) -> None:
        self.lsn = lsn
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.lock = threading.RLock()
        self.wanted = False

    def open(self, tables: Tables) -> None:
        """Begin the transaction (the tables must hold exactly `lsn` now, and until this returns)."""
        cursor = tables.cursor()
        cursor.begin()
        rows = cursor.execute("SELECT value FROM _meta WHERE name = 'applied_lsn'").fetchall()  # fixes the snapshot
        invariant((int(rows[0][0]) if rows else 0) == self.lsn,
                  f"a table snapshot for LSN {self.lsn} found the tables at {rows}")
        self.cursor = cursor

    def close(self) -> None:
        cursor, self.cursor = self.cursor, None
        if cursor is not None:
            try:
                cursor.close()
            except Exception:  # noqa: BLE001 - the tables may be closed already; nothing to release then
                pass


class SnapshotCursor:
    """One turn on a view's table snapshot, used like a DuckDB cursor (`register`, `sql`, `execute`);
    `close` unregisters what was registered and ends the turn."""

    def __init__(self, holder: TablesAt) -> None:
        holder.lock.acquire()
        self._holder: TablesAt | None = holder
        self._names: list[str] = []

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        holder = self._holder
        invariant(holder is not None and holder.cursor is not None, "a closed snapshot cursor was used")
        assert holder is not None and holder.cursor is not None
        return holder.cursor

    def register(self, name: str, table: pa.Table) -> None:
        self._cursor().register(name, table)
        self._names.append(name)

    def sql(self, query: str, params: Any = None) -> Any:
        return self._cursor().sql(query, params=params) if params else self._cursor().sql(query)

    def execute(self, query: str, params: Any = None) -> Any:
        return self._cursor().execute(query, params) if params else self._cursor().execute(query)

    def close(self) -> None:
        holder, self._holder = self._holder, None
        if holder is None:
            return
        try:
            for name in self._names:
                try:
                    if holder.cursor is not None:
                        holder.cursor.unregister(name)
                except Exception:  # noqa: BLE001 - already gone with a closed store
                    pass
        finally:
            holder.lock.release()


class ReadView:
    """The store's in-memory state as of `lsn` (read-only: see the module), and its tables at `lsn`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.lsn: int = engine.memory_lsn
        self.schema = engine.memory_schema
        self.directory: NodeDirectory = engine.directory
        self.catalog: Catalog = engine.catalog
        self.view_clock: ViewClock = engine.view_clock
        self.seeded: bool = engine._view_seeded  # the clock holds what the tables' `_lsn` columns show
        self.edges: dict[str, EdgeIndex] = dict(engine.edges)
        self.vectors: dict[tuple[str, str], VectorIndex] = dict(engine.vectors)
        self.keywords: dict[tuple[str, str], KeywordIndex] = dict(engine.keywords)
        self.columns: dict[str, TypeColumns] = dict(engine.columns)
        self.cache_token: int = engine.row_cache.token()  # row cache entries are valid here while it holds
        self.tables = TablesAt(self.lsn)
        self._parts = (self.directory, self.catalog, self.view_clock, *self.edges.values(), *self.vectors.values(),
                       *self.keywords.values(), *self.columns.values())
        with _NAMED_LOCK:
            for part in self._parts:
                setattr(part, NAMED, getattr(part, NAMED, 0) + 1)

    def __del__(self) -> None:  # no reader holds the view any more: its parts may be written in place again
        with _NAMED_LOCK:
            for part in self._parts:
                setattr(part, NAMED, getattr(part, NAMED, 1) - 1)

    def __repr__(self) -> str:
        return f"ReadView(lsn={self.lsn})"


def is_shared(part: Any) -> bool:
    """Whether a live read view names `part` (then it must not change)."""
    return getattr(part, NAMED, 0) > 0


# -- forks -------------------------------------------------------------------------------------------
def fork_directory(old: NodeDirectory) -> NodeDirectory:
    new = copy.copy(old)  # shares ids, former, pending_deletes, key_of (written at fresh ids only)
    new.type_of = old.type_of.copy()
    new.labels = {label: bitmap.copy() for label, bitmap in old.labels.items()}
    new.type_names = list(old.type_names)
    new.type_codes = dict(old.type_codes)
    new.version = next(_FORK_SERIALS) << 32  # versions of two forks never meet (visibility caches key on them)
    return new


def fork_edges(old: EdgeIndex) -> EdgeIndex:
    new = copy.copy(old)  # CSR arrays, overlay pair arrays and packed base keys are replaced, never written
    new._added_out = {node: set(found) for node, found in old._added_out.items()}
    new._added_in = {node: set(found) for node, found in old._added_in.items()}
    new._removed = set(old._removed)
    return new


def fork_vectors(old: VectorIndex) -> VectorIndex:
    new = copy.copy(old)  # rows below old.rows and installed graphs are never rewritten
    new.live = old.live.copy()
    new._mask_cache = None
    new.row_of, old.row_of = old.row_of, {}  # only writes use it: the fork takes it over
    return new


def fork_keywords(old: KeywordIndex) -> KeywordIndex:
    new = copy.copy(old)  # vocabulary and terms grow only; posting arrays are written past `_used` or replaced
    new._post, new._pend = list(old._post), list(old._pend)  # pending blocks are tuples: replaced, not extended
    new._used, new._dead = list(old._used), list(old._dead)
    new._len, new._live, new._gen = old._len.copy(), old._live.copy(), old._gen.copy()
    new._doc_terms, old._doc_terms = old._doc_terms, {}  # only writes use it: the fork takes it over
    return new


def _fork_column(old: ColumnIndex) -> ColumnIndex:
    new = copy.copy(old)
    new.valid = old.valid.copy()
    if old.numeric:
        new.values = old.values.copy()  # the sorted pairs are replaced on a change, never written
    else:
        new.codes = old.codes.copy()
        new.dictionary, new.decoded = dict(old.dictionary), list(old.decoded)
        new.bitmaps = None if old.bitmaps is None else {code: bits.copy() for code, bits in old.bitmaps.items()}
    return new


def fork_columns(old: TypeColumns) -> TypeColumns:
    new = copy.copy(old)
    new.live = old.live.copy()
    new.columns = {name: _fork_column(index) for name, index in old.columns.items()}
    new._masks = {}
    return new


def fork_catalog(old: Catalog) -> Catalog:
    new = copy.copy(old)  # Principal objects and token lists are replaced on a change
    new.principals, new.token_hashes, new._by_digest = dict(old.principals), dict(old.token_hashes), \
        dict(old._by_digest)
    return new


def fork_view_clock(old: ViewClock) -> ViewClock:
    new = ViewClock()
    new.labels, new.pairs, new.principals, new.schema = dict(old.labels), dict(old.pairs), \
        dict(old.principals), old.schema
    return new


_FORKS = {"edges": fork_edges, "vectors": fork_vectors, "keywords": fork_keywords, "columns": fork_columns}
_SINGLE = {"directory": fork_directory, "catalog": fork_catalog, "view_clock": fork_view_clock}


def own(engine: Any, kind: str, key: Any = None) -> Any:
    """The engine's live part `kind` (`key` in its dict for edges, vectors, keywords, columns), forked
    first when a view shares it: the caller (under the state lock) may then change it in place."""
    if kind in _SINGLE:
        part = getattr(engine, kind)
        if is_shared(part):
            part = _SINGLE[kind](part)
            setattr(part, NAMED, 0)
            setattr(engine, kind, part)
        return part
    parts = getattr(engine, kind)
    part = parts.get(key)
    if part is not None and is_shared(part):
        part = _FORKS[kind](part)
        setattr(part, NAMED, 0)
        parts[key] = part
    return part


def own_for(engine: Any, ops: list[Op]) -> None:
    """Fork every shared part that applying `ops` changes (see `apply_memory`)."""
    if not any(is_shared(part) for part in (engine.directory, engine.catalog, engine.view_clock)) and not any(
            is_shared(part) for parts in (engine.edges, engine.vectors, engine.keywords, engine.columns)
            for part in parts.values()):
        return  # nothing was handed to a reader since the last write
    own(engine, "view_clock")
    for op in ops:
        if op.kind == OpKind.META:
            own(engine, "catalog")
        elif op.kind == OpKind.SCHEMA:
            own(engine, "directory")
            for kind in ("edges", "vectors", "keywords", "columns"):
                for key in list(getattr(engine, kind)):
                    own(engine, kind, key)
        elif op.kind in (OpKind.UPSERT_NODES, OpKind.DELETE_NODES):
            own(engine, "directory")
            own(engine, "columns", op.name)
            for kind in ("vectors", "keywords"):
                for key in [key for key in getattr(engine, kind) if key[0] == op.name]:
                    own(engine, kind, key)
        elif op.kind in (OpKind.UPSERT_EDGES, OpKind.DELETE_EDGES):
            own(engine, "edges", op.name)
