"""Applying durable WAL ops to a store's in-memory state (its engine) (directory, catalog, schema, adjacency, vector and
keyword indexes, row cache). Called under the engine's state lock, in LSN order, by commits and replay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowledge.index.columns import TypeColumns
from knowledge.index.graph import EdgeIndex
from knowledge.index.keyword import KeywordIndex
from knowledge.index.vectors import VectorIndex
from knowledge.storage.catalog import PREFIX as PRINCIPAL_PREFIX
from knowledge.storage.ops import Op, OpKind
from knowledge.storage.rows import NodeRows
from knowledge.storage.schema import Schema
from knowledge.storage.ttl import POLICY_PREFIX as TTL_POLICY_PREFIX
from knowledge.storage.ttl import STAMP_PREFIX as TTL_STAMP_PREFIX
from knowledge.storage.view_record import record_view

if TYPE_CHECKING:
    from knowledge.storage.state import EngineState


def apply_memory(engine: EngineState, ops: list[Op], lsn: int) -> None:
    """Apply the durable ops of record `lsn` to the in-memory state: directory, catalog, schema, adjacency,
    vector and keyword indexes, row cache, view clock (under the engine's state lock, in LSN order)."""
    directory = engine.directory
    for op in ops:
        record_view(engine.view_clock, directory, op, lsn,  # first: the labels the op replaces are still there
                    frozenset(name for name, edge in engine.schema.edges.items() if edge.hidden))
        if op.kind == OpKind.META:
            if op.name.startswith(PRINCIPAL_PREFIX):
                engine.catalog.apply(op.document)
            elif op.name.startswith(TTL_POLICY_PREFIX):
                engine.ttl.apply_policy(op.name, op.document)
            elif op.name.startswith(TTL_STAMP_PREFIX):
                engine.ttl.apply_stamp(op.name, op.document, engine.columns)
        elif op.kind == OpKind.SCHEMA:
            engine.row_cache.clear()
            engine.schema = Schema.from_dict(op.document)
            for name, node_type in engine.schema.nodes.items():
                directory.ensure_type(name)
                scalar = {prop.name: prop.type for prop in node_type.properties.values()}
                engine.columns.setdefault(name, TypeColumns({})).ensure(scalar)
                for prop in node_type.properties.values():
                    if prop.type == "text":
                        engine.keywords.setdefault((name, prop.name), KeywordIndex())
                for prop in node_type.vector_properties:
                    assert prop.dimension is not None and prop.metric is not None
                    engine.vectors.setdefault((name, prop.name), VectorIndex(prop.dimension, prop.metric,
                                                                           engine.config.vectors))
            for name in engine.schema.edges:
                engine.edges.setdefault(name, EdgeIndex(engine.config.overlay_edges_max))
        elif op.kind == OpKind.UPSERT_NODES and op.rows is not None:
            _apply_node_rows(engine, op)
        elif op.kind == OpKind.UPSERT_NODES:
            assert op.table is not None
            engine.row_cache.invalidate(op.name, op.table.column("_id").to_numpy())
            key = engine.schema.nodes[op.name].key
            directory.apply_upsert(op.name, op.table.column("_id").to_numpy(),
                                   op.table.column(key).to_pylist(), op.table.column("_labels"))
            apply_vectors(engine, [op])
            apply_keywords(engine, op)
            apply_columns(engine, op)
        elif op.kind == OpKind.DELETE_NODES:
            assert op.table is not None
            engine.row_cache.invalidate(op.name, op.table.column("_id").to_numpy())
            directory.apply_delete(op.name, op.table.column("_id").to_numpy())
            apply_vectors(engine, [op])
            apply_keywords(engine, op)
            apply_columns(engine, op)
        elif op.kind in (OpKind.UPSERT_EDGES, OpKind.DELETE_EDGES):
            assert op.table is not None
            src = op.table.column("_src").to_numpy()
            dst = op.table.column("_dst").to_numpy()
            index = engine.edges[op.name]
            if op.kind == OpKind.UPSERT_EDGES:
                index.add(src, dst, directory.capacity)
            else:
                index.remove(src, dst, directory.capacity)


def _apply_node_rows(engine: EngineState, op: Op) -> None:
    """apply_memory of a node upsert given as NodeRows (after record_view)."""
    rows = op.rows
    assert rows is not None and rows.ids is not None
    engine.row_cache.invalidate(op.name, rows.ids)
    engine.directory.apply_upsert_rows(op.name, rows.ids, rows.column(engine.schema.nodes[op.name].key),
                                       rows.labels)
    apply_vectors(engine, [op])
    apply_keywords(engine, op)
    apply_columns(engine, op)


def fresh_rows_op(ops: list[Op]) -> Op | None:
    """The op of a record that holds one insert-only node upsert given as NodeRows (every row a new
    node: nothing it writes existed when it was resolved), else None: `apply_fresh_rows` takes such records."""
    if len(ops) != 1:
        return None
    op = ops[0]
    return op if op.kind == OpKind.UPSERT_NODES and op.rows is not None and not op.flags else None


def merged_rows_op(ops: list[Op]) -> Op:
    """One insert-only upsert of the rows of `ops` (`fresh_rows_op` ops of one type and shape), in order."""
    first = ops[0].rows
    assert first is not None
    columns: list[list[Any]] = [[] for _ in first.columns]
    labels: list[list[str]] = []
    ids: list[int] = []
    for op in ops:
        rows = op.rows
        assert rows is not None and rows.ids is not None
        for merged, column in zip(columns, rows.columns, strict=True):
            merged.extend(column)
        labels.extend(rows.labels)
        ids.extend(rows.ids)
    return Op(OpKind.UPSERT_NODES, ops[0].name,
              rows=NodeRows(first.type_name, first.names, first.kinds, columns, labels, ids))


def apply_fresh_rows(engine: EngineState, records: list[tuple[int, Op]], merged: Op) -> None:
    """apply_memory of consecutive records (lsn, op), each a `fresh_rows_op` of one type and shape, as the
    one upsert `merged` (`merged_rows_op` of them): the same state as applying them one by one (their ids
    are distinct and new, so no row replaces another), with one call into each index instead of one per
    record. The view clock still gets each record's labels at its own LSN (a new node replaces no labels)."""
    clock = engine.view_clock
    for lsn, op in records:
        assert op.rows is not None
        clock.node_labels(lsn, {label for labels in op.rows.labels for label in labels or ()})
    _apply_node_rows(engine, merged)


def apply_vectors(engine: EngineState, ops: list[Op], only: tuple[str, str] | None = None) -> None:
    """Feed node upserts and deletes to the vector indexes (all, or the `only` one)."""
    for op in ops:
        if op.kind not in (OpKind.UPSERT_NODES, OpKind.DELETE_NODES) or (op.table is None and op.rows is None):
            continue
        node_type = engine.schema.nodes.get(op.name)
        props = node_type.vector_properties if node_type is not None else []
        if not props:
            continue
        if op.rows is not None:
            _apply_vector_rows(engine, op.rows, props, only)
            continue
        assert op.table is not None
        ids = op.table.column("_id").to_numpy()
        for prop in props:
            index = engine.vectors.get((op.name, prop.name))
            if index is None or (only is not None and only != (op.name, prop.name)):
                continue
            if op.kind == OpKind.DELETE_NODES or prop.name not in op.table.column_names:
                index.remove(ids)
                continue
            column = op.table.column(prop.name).combine_chunks()
            present = ~column.is_null().to_numpy(zero_copy_only=False)
            index.remove(ids[~present])
            if present.any():
                values = pc.list_flatten(column.filter(pa.array(present))).to_numpy(zero_copy_only=False)
                index.upsert(ids[present], values.reshape(-1, index.dimension))

def _apply_vector_rows(engine: EngineState, rows: NodeRows, props: list[Any], only: tuple[str, str] | None) -> None:
    """apply_vectors for an upsert given as NodeRows."""
    assert rows.ids is not None
    for prop in props:
        index = engine.vectors.get((rows.type_name, prop.name))
        if index is None or (only is not None and only != (rows.type_name, prop.name)):
            continue
        values = rows.column(prop.name) if prop.name in rows.names else [None] * len(rows)
        absent = [node for node, value in zip(rows.ids, values, strict=True) if value is None]
        if absent:
            index.remove(np.array(absent, dtype=np.int64))
        present = [(node, value) for node, value in zip(rows.ids, values, strict=True) if value is not None]
        if present:
            index.upsert(np.array([node for node, _ in present], dtype=np.int64),
                         np.stack([value for _, value in present]))

def apply_columns(engine: EngineState, op: Op) -> None:
    """Feed a node upsert or delete to its type's in-memory column indexes (where-filter masks)."""
    columns = engine.columns.get(op.name)
    if columns is None:
        return
    if op.kind == OpKind.DELETE_NODES:
        assert op.table is not None
        columns.delete(op.table.column("_id").to_numpy())
    elif op.rows is not None:
        assert op.rows.ids is not None
        names = op.rows.names
        columns.upsert(np.array(op.rows.ids, dtype=np.int64),
                       {name: op.rows.column(name) for name in columns.columns if name in names})
    else:
        assert op.table is not None
        table = op.table
        columns.upsert(table.column("_id").to_numpy(),
                       {name: table.column(name).to_pylist() for name in columns.columns if name in table.column_names})

def apply_keywords(engine: EngineState, op: Op, only: tuple[str, str] | None = None) -> None:
    """Feed a node upsert or delete to the keyword indexes of its type's text properties (or `only`)."""
    if op.rows is not None:
        assert op.rows.ids is not None
        ids = np.array(op.rows.ids, dtype=np.int64)
        names: tuple[str, ...] | list[str] = op.rows.names
    else:
        assert op.table is not None
        ids = op.table.column("_id").to_numpy()
        names = op.table.column_names
    for (type_name, prop), index in engine.keywords.items():
        if type_name != op.name or (only is not None and only != (type_name, prop)):
            continue
        if op.kind == OpKind.DELETE_NODES or prop not in names:
            index.remove(ids)
        elif op.rows is not None:
            index.upsert(ids, op.rows.column(prop))
        else:
            assert op.table is not None
            index.upsert(ids, op.table.column(prop).to_pylist())
