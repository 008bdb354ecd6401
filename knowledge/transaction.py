"""Transaction: a batch of upserts and deletes, validated as they are added and committed as one WAL record."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from knowledge.errors import KnowledgeError, UnknownType
from knowledge.storage.rows import is_small, node_rows
from knowledge.storage.values import Rows, edge_batch, node_batch

if TYPE_CHECKING:
    from knowledge.views import SessionView


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

    def _schema(self) -> Any:
        return self.session.store.schema

    def _guard(self) -> None:
        if self.lsn is not None or self._void:
            raise KnowledgeError("transaction already committed or rolled back")

    def _node_type(self, type_name: str) -> Any:
        node_type = self._schema().nodes.get(type_name)
        if node_type is None:
            self._void = True
            raise UnknownType(f"unknown node type {type_name!r}", type_name=type_name)
        return node_type

    def _edge_type(self, type_name: str) -> Any:
        edge_type = self._schema().edges.get(type_name)
        if edge_type is None:
            self._void = True
            raise UnknownType(f"unknown edge type {type_name!r}", type_name=type_name)
        return edge_type

    def _add(self, action: str, type_name: str, build: Any) -> Transaction:
        self._guard()
        try:
            self.items.append((action, type_name, build()))
        except BaseException:
            self._void = True
            raise
        return self

    def upsert_nodes(self, type_name: str, rows: Rows) -> Transaction:
        """Insert or replace nodes (by key). Missing optional properties become null."""
        node_type = self._node_type(type_name)
        config = self.session.store.config
        if is_small(rows):  # a few dict rows: same checks, no Arrow until the table applier
            return self._add("upsert_nodes", type_name, lambda: node_rows(node_type, rows, config))
        return self._add("upsert_nodes", type_name, lambda: node_batch(node_type, rows, config))

    def delete_nodes(self, type_name: str, keys: Iterable[Any]) -> Transaction:
        """Delete nodes by key, with their edges; absent keys are ignored."""
        self._node_type(type_name)
        return self._add("delete_nodes", type_name, lambda: list(keys))

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
            self._void = True
            raise
        return self.lsn

    def rollback(self) -> None:
        """Drop the transaction."""
        self._void = True
        self.items.clear()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and not self._void and self.lsn is None:
            self.commit()
        else:
            self.rollback()
