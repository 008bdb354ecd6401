"""Opening a store: the in-memory state rebuilt from the DuckDB tables and index snapshots, then the WAL
tail replayed. Damaged or stale snapshots are rebuilt from the tables with a warning."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from knowledge.errors import KnowledgeError, invariant
from knowledge.graph import EdgeIndex
from knowledge.keyword import KeywordIndex
from knowledge.memory_apply import apply_keywords, apply_memory, apply_vectors
from knowledge.ops import Op, OpKind, decode_ops
from knowledge.snapshot_file import read_snapshot
from knowledge.tables import node_table, query_arrow
from knowledge.vectors import VectorIndex

if TYPE_CHECKING:
    from knowledge.store import Store

log = logging.getLogger("knowledge.store")
REPLAY_BATCH_RECORDS_MAX = 1024  # WAL records per DuckDB transaction while replaying


def load_memory(store: Store) -> None:
    """Rebuild the directory and adjacency from the DuckDB tables."""
    con = store.tables.cursor()
    for (text,) in con.execute("SELECT value FROM _meta WHERE name LIKE 'principal:%' ORDER BY name").fetchall():
        store.catalog.apply(json.loads(text))
    for name, node_type in store.schema.nodes.items():
        store.directory.ensure_type(name)
        table = query_arrow(con, f'SELECT _id, "{node_type.key}" AS k, _labels FROM {node_table(name)}')
        if table.num_rows:
            ids = table.column("_id").to_numpy()
            store.directory.apply_upsert(name, ids, table.column("k").to_pylist(), table.column("_labels"))
    store.directory.next_id = max(store.directory.next_id, store.tables.next_id)
    for name in store.schema.edges:
        index = store.edges[name] = EdgeIndex(store.config.overlay_edges_max)
        pairs = con.execute(f'SELECT _src, _dst FROM "e_{name}"').fetchnumpy()
        if len(pairs["_src"]):
            index.add(np.asarray(pairs["_src"], dtype=np.int64), np.asarray(pairs["_dst"], dtype=np.int64),
                      store.directory.capacity)
            index.compact(store.directory.capacity, store.directory.alive)
    con.close()
    _load_vectors(store)
    _load_keywords(store)

def _load_keywords(store: Store) -> None:
    """Each keyword index from its snapshot plus the WAL up to the tables' LSN, else from the node
    table's text column (the rest of the WAL is replayed after)."""
    applied = store.tables.applied_lsn
    for type_name, node_type in store.schema.nodes.items():
        for prop in node_type.properties.values():
            if prop.type != "text":
                continue
            key = (type_name, prop.name)
            try:
                lsn, body, _ = read_snapshot(store._snapshot_path(type_name, prop.name, "keywords"))
                if lsn > applied or store.wal.first_lsn > lsn + 1:
                    raise ValueError(f"snapshot at LSN {lsn} does not join the log (tables at {applied}, "
                                     f"WAL from {store.wal.first_lsn})")
                store.keywords[key] = KeywordIndex.restore(body)
                for record in store.wal.read_from(lsn + 1, until_lsn=applied):
                    for op in decode_ops(record.payload, record.lsn):
                        if op.name == type_name and op.kind in (OpKind.UPSERT_NODES, OpKind.DELETE_NODES):
                            apply_keywords(store, op, only=key)
            except (OSError, ValueError) as exc:  # KeywordIndexError is a ValueError
                never_saved = isinstance(exc, FileNotFoundError) and store.tables.meta("snapshots_lsn") is None
                if not never_saved:
                    log.warning("keyword index %s.%s rebuilt from the node table: %s", type_name, prop.name, exc)
                store.keywords[key] = _keywords_from_table(store, type_name, prop.name)

def _keywords_from_table(store: Store, type_name: str, prop: str) -> KeywordIndex:
    index = KeywordIndex()
    table = store.tables.column_values(type_name, prop)
    if table.num_rows:
        index.upsert(table.column("_id").to_numpy(), table.column("value").to_pylist())
    return index

def _load_vectors(store: Store) -> None:
    """Each vector index from its snapshot plus the WAL up to the tables' LSN, else from the table."""
    applied = store.tables.applied_lsn
    for type_name, node_type in store.schema.nodes.items():
        for prop in node_type.vector_properties:
            assert prop.dimension is not None and prop.metric is not None
            try:
                index, lsn = VectorIndex.load(store._snapshot_path(type_name, prop.name), prop.dimension,
                                              prop.metric, store.config.vectors)
                if lsn > applied or store.wal.first_lsn > lsn + 1:
                    raise ValueError(f"snapshot at LSN {lsn} does not join the log (tables at {applied}, "
                                     f"WAL from {store.wal.first_lsn})")
                store.vectors[(type_name, prop.name)] = index
                for record in store.wal.read_from(lsn + 1, until_lsn=applied):
                    apply_vectors(store, decode_ops(record.payload, record.lsn), only=(type_name, prop.name))
            except (OSError, ValueError, KeyError) as exc:
                never_saved = isinstance(exc, FileNotFoundError) and store.tables.meta("snapshots_lsn") is None
                if not never_saved:  # a snapshot that a checkpoint wrote is missing or damaged
                    log.warning("vector index %s.%s rebuilt from the node table: %s", type_name, prop.name, exc)
                store.vectors[(type_name, prop.name)] = _vectors_from_table(store, type_name, prop)

def _vectors_from_table(store: Store, type_name: str, prop: Any) -> VectorIndex:
    index = VectorIndex(prop.dimension, prop.metric, store.config.vectors)
    table = store.tables.column_values(type_name, prop.name)
    if table.num_rows:
        flat = pc.list_flatten(table.column("value")).to_numpy(zero_copy_only=False)
        index.upsert(table.column("_id").to_numpy(), flat.reshape(-1, prop.dimension))
    return index

def replay(store: Store) -> None:
    applied = store.tables.applied_lsn
    if store.wal.last_lsn < applied:
        invariant(store.wal.last_lsn == 0, f"WAL ends at {store.wal.last_lsn} below applied LSN {applied}")
        store.wal.start_at(applied, store.tables.applied_epoch)
    if store.wal.first_lsn > applied + 1:
        raise KnowledgeError(f"WAL starts at LSN {store.wal.first_lsn} but the tables stop at {applied}: "
                             f"records in between are missing")
    batch: list[tuple[int, int, list[Op]]] = []
    for record in store.wal.read_from(applied + 1):
        ops = decode_ops(record.payload, record.lsn)
        apply_memory(store, ops)
        batch.append((record.lsn, record.epoch, ops))
        if len(batch) >= REPLAY_BATCH_RECORDS_MAX:
            store.tables.apply(batch)
            batch = []
    store.tables.apply(batch)
    store.memory_lsn = store.wal.last_lsn
    if store.wal.last_lsn > applied:
        log.info("replayed WAL records %d..%d", applied + 1, store.wal.last_lsn)
