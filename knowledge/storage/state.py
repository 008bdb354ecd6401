"""EngineState: what the storage modules that work on a whole store (loading, applying records to
memory, backup) need of it. `knowledge/storage/engine.py:Engine` provides it; they take this
protocol, so they never import the engine (or anything above it) back."""

from __future__ import annotations

import threading
from typing import Protocol

from knowledge.config import StoreConfig
from knowledge.index.columns import TypeColumns
from knowledge.index.graph import EdgeIndex
from knowledge.index.keyword import KeywordIndex
from knowledge.index.vectors import VectorIndex
from knowledge.storage.catalog import Catalog
from knowledge.storage.directory import NodeDirectory
from knowledge.storage.ops import Op
from knowledge.storage.row_cache import RowCache
from knowledge.storage.schema import Schema
from knowledge.storage.tables import Tables
from knowledge.storage.ttl import ExpiryTracker
from knowledge.storage.wal import WriteAheadLog


class EngineState(Protocol):
    """An open store's parts and positions (read and replaced by its owner under its locks)."""

    path: str
    config: StoreConfig
    tables: Tables
    wal: WriteAheadLog
    schema: Schema
    directory: NodeDirectory
    edges: dict[str, EdgeIndex]
    catalog: Catalog
    vectors: dict[tuple[str, str], VectorIndex]
    keywords: dict[tuple[str, str], KeywordIndex]
    columns: dict[str, TypeColumns]  # where-filter column indexes per node type
    row_cache: RowCache
    ttl: ExpiryTracker  # TTL policies and stamps (knowledge/storage/ttl.py)
    memory_lsn: int
    replay_backlog: list[tuple[int, int, list[Op]]]
    epoch: int
    stage_lock: threading.Lock

    def snapshot_path(self, type_name: str, prop: str, kind: str = "vectors") -> str:
        """Where the snapshot of the (type, property) index of `kind` lives."""
        ...

    def wait_applied(self, lsn: int | None = None) -> None:
        """Block until DuckDB reflects every record up to `lsn`."""
        ...
