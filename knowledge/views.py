"""StoreView and SessionView: what a session needs of its store, and a transaction of its session.

`knowledge/store.py:Store` and `knowledge/session.py:Session` provide them. Sessions, their searches
and transactions are typed against these protocols, so the API modules import each other in one
direction only (store -> session -> transaction), never back, not even for annotations.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from knowledge.access.audit import AuditLog
from knowledge.access.principal import Principal
from knowledge.config import StoreConfig
from knowledge.index.graph import EdgeIndex
from knowledge.index.keyword import KeywordIndex
from knowledge.index.vectors import VectorIndex
from knowledge.storage.catalog import Catalog
from knowledge.storage.directory import NodeDirectory
from knowledge.storage.engine import Engine
from knowledge.storage.row_cache import RowCache
from knowledge.storage.schema import Schema
from knowledge.storage.tables import Tables


class StoreView(Protocol):
    """The store as its sessions read and write it (`knowledge.store.Store`)."""

    engine: Engine
    config: StoreConfig
    audit: AuditLog | None
    tables: Tables
    schema: Schema
    directory: NodeDirectory
    edges: dict[str, EdgeIndex]
    catalog: Catalog
    vectors: dict[tuple[str, str], VectorIndex]
    keywords: dict[tuple[str, str], KeywordIndex]
    row_cache: RowCache
    state_lock: threading.RLock
    memory_lsn: int

    def visibility(self, principal: Principal, *, wait: bool = False,
                   directory: NodeDirectory | None = None) -> np.ndarray:
        """The bitmap over node ids that `principal` may see (in `directory`: default the live one)."""
        ...

    def wait_applied(self, lsn: int | None = None) -> None:
        """Block until DuckDB reflects every record up to `lsn`."""
        ...

    def commit(self, principal: Principal, items: list[tuple[str, str, Any]]) -> int:
        """Resolve, log, fsync and apply one transaction's items; return its LSN."""
        ...


class SessionView(Protocol):
    """A session as its transactions use it (`knowledge.session.Session`)."""

    store: StoreView

    @property
    def principal(self) -> Principal:
        """The principal the session reads and writes as."""
        ...
