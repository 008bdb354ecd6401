"""Feeding the view clock (`knowledge/access/view_clock.py`): which labels each applied op touches, and, once
per open store, what the tables' `_lsn` columns say about the writes before it was opened."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc

from knowledge.access.view_clock import ViewClock, label_pairs, labels_of_ids
from knowledge.storage.catalog import PREFIX as PRINCIPAL_PREFIX
from knowledge.storage.ops import Op, OpKind
from knowledge.storage.tables import edge_table, node_table, query_arrow

if TYPE_CHECKING:
    from knowledge.storage.directory import NodeDirectory
    from knowledge.storage.tables import Tables


def record_view(clock: ViewClock, directory: NodeDirectory, op: Op, lsn: int,
                hidden_edges: frozenset[str] = frozenset()) -> None:
    """Tell `clock` which labels (and endpoint label pairs) op `lsn` touches. Call it before applying the
    op, so that the labels a node write replaces or a delete removes are still in the directory. Writes of
    `hidden_edges` types touch nothing: no non-admin sees them."""
    if op.kind == OpKind.META:
        if op.name.startswith(PRINCIPAL_PREFIX):
            clock.principal(lsn, op.name[len(PRINCIPAL_PREFIX):])
    elif op.kind == OpKind.SCHEMA:
        clock.schema_change(lsn)
    elif op.kind in (OpKind.UPSERT_NODES, OpKind.DELETE_NODES):
        if op.rows is not None:
            assert op.rows.ids is not None
            ids = np.array(op.rows.ids, dtype=np.int64)
            clock.node_labels(lsn, {label for labels in op.rows.labels for label in labels or ()})
        else:
            assert op.table is not None
            ids = op.table.column("_id").to_numpy()
            if op.kind == OpKind.UPSERT_NODES:
                clock.node_labels(lsn, pc.unique(pc.list_flatten(op.table.column("_labels"))).to_pylist())
        inside = ids[ids < directory.capacity]
        replaced = inside[directory.type_of[inside] >= 0]
        if len(replaced):
            clock.node_labels(lsn, labels_of_ids(directory.labels, replaced))
    elif op.kind in (OpKind.UPSERT_EDGES, OpKind.DELETE_EDGES) and op.name not in hidden_edges:
        assert op.table is not None
        clock.edge_labels(lsn, label_pairs(directory.labels, op.table.column("_src").to_numpy(),
                                           op.table.column("_dst").to_numpy()))


def seed_view_clock(clock: ViewClock, tables: Tables, directory: NodeDirectory, node_types: list[str],
                    edge_types: list[str]) -> None:
    """Raise `clock` to what the tables show: each live row's `_lsn` under its labels, each edge's under its
    endpoints' labels (call with every record applied to the tables, under the state lock)."""
    cursor = tables.cursor()
    try:
        for name in node_types:
            table = query_arrow(cursor, f"SELECT label, max(_lsn) AS lsn FROM (SELECT unnest(_labels) AS label, _lsn "
                                        f"FROM {node_table(name)}) GROUP BY label")
            clock.node_labels_from(dict(zip(table.column("label").to_pylist(), table.column("lsn").to_pylist(),
                                            strict=True)))
        for name in edge_types:
            table = query_arrow(cursor, f"SELECT _src, _dst, max(_lsn) AS lsn FROM {edge_table(name)} GROUP BY _src, _dst")
            if not table.num_rows:
                continue
            clock.edge_labels_from(label_pairs(directory.labels, table.column("_src").to_numpy(),
                                               table.column("_dst").to_numpy(), table.column("lsn").to_numpy()))
    finally:
        cursor.close()


__all__ = ["record_view", "seed_view_clock"]
