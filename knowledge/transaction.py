"""Transaction: a batch of upserts and deletes, validated as they are added and committed as one WAL record."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from knowledge.errors import InvalidArgument, TransactionClosed, UnknownType
from knowledge.storage.rows import is_small, node_rows
from knowledge.storage.ttl import split_deadlines
from knowledge.storage.values import Rows, edge_batch, node_batch

if TYPE_CHECKING:
    from knowledge.views import SessionView

_VOIDED = "void: an error in it voided it"


def _node_keys(keys: Iterable[Any]) -> list[Any]:
    """`keys` as a list of node keys (str or int); InvalidArgument naming the first that is not one."""
    if isinstance(keys, str | bytes | Mapping) or not isinstance(keys, Iterable):
        raise InvalidArgument(f"keys must be a list of node keys, got {type(keys).__name__}")
    out = list(keys)
    for index, key in enumerate(out):
        if isinstance(key, bool) or not isinstance(key, str | int | np.integer):
            raise InvalidArgument(f"keys[{index}]: a node key is a str or an int, got {type(key).__name__} {key!r}")
    return out


class Transaction:
    """Collects changes; `commit()` applies all or nothing and returns the record's LSN.

    Each call validates its rows at once (types, keys, sizes) and raises a ValidationError naming
    the row and field; references (edge endpoints, grants) are checked at commit. After any
    error the transaction is void: nothing of it reaches the store.
    """

    def __init__(self, session: SessionView) -> None:
        self.session = session
        self.items: list[tuple[str, str, Any]] = []
        self.lsn: int | None = None
        self._void = False
        self._ended = ""  # why the transaction is void: "rolled back", or an earlier error voided it

    def _schema(self) -> Any:
        return self.session.store.schema

    def _guard(self) -> None:
        if self.lsn is not None:
            raise TransactionClosed(f"transaction already committed (LSN {self.lsn}); start a new one with "
                                    f"session.transaction()")
        if self._void:
            raise TransactionClosed(f"transaction already {self._ended}; nothing of it was committed: start a "
                                    f"new one with session.transaction()")

    def _end(self, why: str) -> None:
        self._void = True
        self._ended = self._ended or why

    def _node_type(self, type_name: str) -> Any:
        node_type = self._schema().nodes.get(type_name)
        if node_type is None:
            self._end(_VOIDED)
            raise UnknownType(f"unknown node type {type_name!r}", type_name=type_name)
        return node_type

    def _edge_type(self, type_name: str) -> Any:
        edge_type = self._schema().edges.get(type_name)
        if edge_type is None:
            self._end(_VOIDED)
            raise UnknownType(f"unknown edge type {type_name!r}", type_name=type_name)
        return edge_type

    def _add(self, action: str, type_name: str, build: Any) -> Transaction:
        self._guard()
        try:
            self.items.append((action, type_name, build()))
        except BaseException:
            self._end(_VOIDED)
            raise
        return self

    def upsert_nodes(self, type_name: str, rows: Rows) -> Transaction:
        """Insert or replace nodes (by key). Missing optional properties become null. A row's `_expires_at`
        (a datetime, or seconds since the epoch) is its own deadline (storage/ttl.py)."""
        node_type = self._node_type(type_name)
        config = self.session.store.config
        try:
            rows, deadlines = split_deadlines(rows)
        except BaseException:
            self._end(_VOIDED)
            raise
        if is_small(rows):  # a few dict rows: same checks, no Arrow until the table applier
            self._add("upsert_nodes", type_name, lambda: node_rows(node_type, rows, config))
        else:
            self._add("upsert_nodes", type_name, lambda: node_batch(node_type, rows, config))
        if deadlines is not None:
            batch = self.items[-1][2]
            keys = batch.column(node_type.key) if hasattr(batch, "names") else batch.column(node_type.key).to_pylist()
            self.items.append(("expire_nodes", type_name, (keys, deadlines)))
        return self

    def delete_nodes(self, type_name: str, keys: Iterable[Any]) -> Transaction:
        """Delete nodes by key, with their edges; absent keys are ignored."""
        self._node_type(type_name)
        return self._add("delete_nodes", type_name, lambda: _node_keys(keys))

    def upsert_edges(self, type_name: str, rows: Rows) -> Transaction:
        """Insert or replace edges; rows carry `src`, `dst` (node keys), optional `src_type`/`dst_type`."""
        edge_type = self._edge_type(type_name)
        config = self.session.store.config
        return self._add("upsert_edges", type_name, lambda: edge_batch(edge_type, rows, config))

    def delete_edges(self, type_name: str, rows: Rows) -> Transaction:
        """Delete edges given as `src`/`dst` keys; absent edges are ignored."""
        edge_type = self._edge_type(type_name)
        config = self.session.store.config
        return self._add("delete_edges", type_name,
                         lambda: edge_batch(edge_type, rows, config, with_properties=False))

    def commit(self) -> int:
        """Make the transaction durable and visible; return its LSN. Raises ValidationError etc."""
        self._guard()
        try:
            self.lsn = self.session.store.commit(self.session.principal, self.items)
        except BaseException:
            self._end(_VOIDED)
            raise
        return self.lsn

    def rollback(self) -> None:
        """Drop the transaction."""
        self._end("rolled back")
        self.items.clear()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and not self._void and self.lsn is None:
            self.commit()
        else:
            self.rollback()
