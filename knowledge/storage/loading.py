"""Opening a store (its engine): the in-memory state rebuilt from the DuckDB tables and index snapshots, then the WAL
tail replayed. Damaged or stale snapshots are rebuilt from the tables with a warning."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from knowledge.errors import StorageFull
from knowledge.index.columns import MEMORY_TYPES, TypeColumns
from knowledge.index.graph import EdgeIndex
from knowledge.index.keyword import KeywordIndex
from knowledge.index.snapshot_file import read_snapshot
from knowledge.index.vectors import VectorIndex
from knowledge.storage.memory_apply import apply_keywords, apply_memory, apply_vectors
from knowledge.storage.ops import Op, OpKind, decode_ops
from knowledge.storage.tables import node_table, query_arrow
from knowledge.storage.ttl import load_ttl

if TYPE_CHECKING:
    from knowledge.storage.state import EngineState

log = logging.getLogger("knowledge.store")
REPLAY_BATCH_RECORDS_MAX = 1024  # WAL records per DuckDB transaction while replaying


def load_memory(engine: EngineState) -> None:
    """Rebuild the directory and adjacency from the DuckDB tables."""
    con = engine.tables.cursor()
    for (text,) in con.execute("SELECT value FROM _meta WHERE name LIKE 'principal:%' ORDER BY name").fetchall():
        engine.catalog.apply(json.loads(text))
    for name, node_type in engine.schema.nodes.items():
        engine.directory.ensure_type(name)
        table = query_arrow(con, f'SELECT _id, "{node_type.key}" AS k, _labels FROM {node_table(name)}')
        if table.num_rows:
            ids = table.column("_id").to_numpy()
            engine.directory.apply_upsert(name, ids, table.column("k").to_pylist(), table.column("_labels"))
    engine.directory.next_id = max(engine.directory.next_id, engine.tables.next_id)
    _load_columns(engine, con)
    for name in engine.schema.edges:
        index = engine.edges[name] = EdgeIndex(engine.config.overlay_edges_max)
        pairs = con.execute(f'SELECT _src, _dst FROM "e_{name}"').fetchnumpy()
        if len(pairs["_src"]):
            index.add(np.asarray(pairs["_src"], dtype=np.int64), np.asarray(pairs["_dst"], dtype=np.int64),
                      engine.directory.capacity)
            index.compact(engine.directory.capacity, engine.directory.alive)
    load_ttl(engine.ttl, con)
    con.close()
    _load_vectors(engine)
    _load_keywords(engine)

def _load_columns(engine: EngineState, con: Any) -> None:
    """The in-memory column indexes of every node type from its table (the WAL tail is replayed after)."""
    for name, node_type in engine.schema.nodes.items():
        scalar = {prop.name: prop.type for prop in node_type.properties.values() if prop.type in MEMORY_TYPES}
        columns = engine.columns[name] = TypeColumns(scalar)
        selected = "".join(f', "{prop}"' for prop in scalar)
        table = query_arrow(con, f"SELECT _id{selected} FROM {node_table(name)}")
        if table.num_rows:
            columns.upsert(table.column("_id").to_numpy(), {prop: table.column(prop).to_pylist() for prop in scalar})

def _load_keywords(engine: EngineState) -> None:
    """Each keyword index from its snapshot plus the WAL up to the tables' LSN, else from the node
    table's text column (the rest of the WAL is replayed after)."""
    applied = engine.tables.applied_lsn
    for type_name, node_type in engine.schema.nodes.items():
        for prop in node_type.properties.values():
            if prop.type != "text":
                continue
            key = (type_name, prop.name)
            try:
                lsn, body, _ = read_snapshot(engine.snapshot_path(type_name, prop.name, "keywords"))
                if lsn > applied or engine.wal.first_lsn > lsn + 1:
                    raise ValueError(f"snapshot at LSN {lsn} does not join the log (tables at {applied}, "
                                     f"WAL from {engine.wal.first_lsn})")
                engine.keywords[key] = KeywordIndex.restore(body)
                for record in engine.wal.read_from(lsn + 1, until_lsn=applied):
                    for op in decode_ops(record.payload, record.lsn):
                        if op.name == type_name and op.kind in (OpKind.UPSERT_NODES, OpKind.DELETE_NODES):
                            apply_keywords(engine, op, only=key)
            except (OSError, ValueError) as exc:  # KeywordIndexError is a ValueError
                never_saved = isinstance(exc, FileNotFoundError) and engine.tables.meta("snapshots_lsn") is None
                if not never_saved:
                    log.warning("keyword index %s.%s rebuilt from the node table: %s", type_name, prop.name, exc)
                engine.keywords[key] = _keywords_from_table(engine, type_name, prop.name)

def _keywords_from_table(engine: EngineState, type_name: str, prop: str) -> KeywordIndex:
    index = KeywordIndex()
    table = engine.tables.column_values(type_name, prop)
    if table.num_rows:
        index.upsert(table.column("_id").to_numpy(), table.column("value").to_pylist())
    return index

def _load_vectors(engine: EngineState) -> None:
    """Each vector index from its snapshot plus the WAL up to the tables' LSN, else from the table."""
    applied = engine.tables.applied_lsn
    for type_name, node_type in engine.schema.nodes.items():
        for prop in node_type.vector_properties:
            assert prop.dimension is not None and prop.metric is not None
            try:
                index, lsn = VectorIndex.load(engine.snapshot_path(type_name, prop.name), prop.dimension,
                                              prop.metric, engine.config.vectors)
                if lsn > applied or engine.wal.first_lsn > lsn + 1:
                    raise ValueError(f"snapshot at LSN {lsn} does not join the log (tables at {applied}, "
                                     f"WAL from {engine.wal.first_lsn})")
                engine.vectors[(type_name, prop.name)] = index
                for record in engine.wal.read_from(lsn + 1, until_lsn=applied):
                    apply_vectors(engine, decode_ops(record.payload, record.lsn), only=(type_name, prop.name))
            except (OSError, ValueError, KeyError) as exc:
                never_saved = isinstance(exc, FileNotFoundError) and engine.tables.meta("snapshots_lsn") is None
                if not never_saved:  # a snapshot that a checkpoint wrote is missing or damaged
                    log.warning("vector index %s.%s rebuilt from the node table: %s", type_name, prop.name, exc)
                engine.vectors[(type_name, prop.name)] = _vectors_from_table(engine, type_name, prop)

def _vectors_from_table(engine: EngineState, type_name: str, prop: Any) -> VectorIndex:
    index = VectorIndex(prop.dimension, prop.metric, engine.config.vectors)
    table = engine.tables.column_values(type_name, prop.name)
    if table.num_rows:
        flat = pc.list_flatten(table.column("value")).to_numpy(zero_copy_only=False)
        index.upsert(table.column("_id").to_numpy(), flat.reshape(-1, prop.dimension))
    return index

def _apply_or_defer(engine: EngineState, batch: list[tuple[int, int, list[Op]]]
                    ) -> list[tuple[int, int, list[Op]]] | None:
    """Apply a replayed batch to the tables; on a full disk return it for the background applier (which
    waits for space) so that the store still opens and serves what memory holds."""
    try:
        engine.tables.apply(batch)
    except StorageFull as exc:
        log.warning("opening with the tables behind the WAL: %s", exc)
        return list(batch)
    return None


def replay(engine: EngineState) -> None:
    applied = engine.tables.applied_lsn
    if engine.wal.last_lsn < applied:  # an empty log (a restore, or set aside): continue after the tables
        engine.wal.start_at(applied, engine.tables.applied_epoch)
    batch: list[tuple[int, int, list[Op]]] = []
    deferred: list[tuple[int, int, list[Op]]] | None = None  # left to the applier: the disk was full
    # a replicated store applies nothing past its tables here: replication applies the rest once committed
    until = applied if engine.config.replicated else None
    for record in engine.wal.read_from(applied + 1, until_lsn=until):
        ops = decode_ops(record.payload, record.lsn)
        apply_memory(engine, ops, record.lsn)
        if deferred is not None:
            deferred.append((record.lsn, record.epoch, ops))
            continue
        batch.append((record.lsn, record.epoch, ops))
        if len(batch) >= REPLAY_BATCH_RECORDS_MAX:
            deferred = _apply_or_defer(engine, batch)
            batch = []
    if deferred is None:
        deferred = _apply_or_defer(engine, batch)
    engine.replay_backlog = deferred or []
    engine.memory_lsn = applied if engine.config.replicated else engine.wal.last_lsn
    if engine.wal.last_lsn > applied and not engine.config.replicated:
        log.info("replayed WAL records %d..%d", applied + 1, engine.wal.last_lsn)
