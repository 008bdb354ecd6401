"""The store as a pinned session read sees it: the parts of one read view, the rest the store's own.

A session read (`knowledge/session_search.py:pinned_read`) and a `Session.snapshot()` block pin the
current `knowledge/storage/versions.py:ReadView`; while pinned, the session's `_at` (what its reads go
through; `session.store` stays the store itself) is a `PinnedStore` over it, so every `.directory`,
`.edges`, `.vectors`, `.keywords`, `.schema`, `.catalog`, `.memory_lsn` a read touches is as of the
view's LSN; `.tables` hands out cursors on the view's DuckDB snapshot, `.row_cache` serves only rows
written at or before the view, `.wait_applied()` waits for that snapshot, and `.state_lock` is a no-op
(nothing to hold: the view never changes). Anything else (`commit`, `audit`, `config`, ...) is the
store's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from knowledge.access.principal import Principal
from knowledge.storage.versions import ReadView, SnapshotCursor

if TYPE_CHECKING:
    from knowledge.views import StoreView


class _NoLock:
    """`state_lock` of a pinned read: the view it reads never changes, so there is nothing to hold."""

    def __enter__(self) -> _NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NO_LOCK = _NoLock()


class _ViewTables:
    """`tables` of a pinned read: cursors on the read view's DuckDB snapshot."""

    def __init__(self, engine: Any, view: ReadView) -> None:
        self._engine = engine
        self._view = view

    def cursor(self) -> SnapshotCursor:
        self._engine.tables_at(self._view.tables)
        return SnapshotCursor(self._view.tables)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine.tables, name)


class _ViewRowCache:
    """`row_cache` of a pinned read. A cached row is the current one (a write invalidates it before it is
    visible), so it is the view's too when it was written at or before the view's LSN (its `_lsn`); what
    the read fetches is cached only when no write was applied since the view (its rows are then current)."""

    def __init__(self, cache: Any, token: int, lsn: int) -> None:
        self._cache = cache
        self._token = token
        self._lsn = lsn
        self.rows_max = cache.rows_max

    def token(self) -> int:
        return self._token

    def get_many(self, type_name: str, ids: Any) -> dict[int, pa.Table]:
        found = self._cache.get_many(type_name, ids)
        lsn = self._lsn
        return {node: row for node, row in found.items()
                if "_lsn" in row.column_names and row.column("_lsn")[0].as_py() <= lsn}

    def put(self, type_name: str, table: pa.Table, token: int) -> None:
        self._cache.put(type_name, table, token)


class PinnedStore:
    """The store for a session read pinned to `view` (see the module)."""

    def __init__(self, real: StoreView, view: ReadView) -> None:
        self.real = real
        self.view = view
        self.engine = real.engine
        self.state_lock = NO_LOCK
        self.tables = _ViewTables(real.engine, view)
        self.row_cache = _ViewRowCache(real.row_cache, view.cache_token, view.lsn)
        self.schema = view.schema
        self.edges = view.edges
        self.vectors = view.vectors
        self.keywords = view.keywords
        self.catalog = view.catalog
        self.memory_lsn = view.lsn

    @property
    def directory(self) -> Any:
        view = self.view
        ttl = getattr(self.engine, "ttl", None)
        if ttl is not None:  # expiry is part of visibility (storage/ttl.py)
            ttl.refresh(view.directory, view.columns)
        return view.directory

    def visibility(self, principal: Principal, *, wait: bool = False) -> np.ndarray:
        return self.real.visibility(principal, wait=wait, directory=self.directory)

    def wait_applied(self, lsn: int | None = None) -> None:
        """Wait until the view's table snapshot is open (the tables as of its LSN)."""
        self.engine.tables_at(self.view.tables)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
