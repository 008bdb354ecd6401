"""The DuckDB file: one typed table per node type and per edge type, plus `_meta` with applied_lsn.

Each WAL record is applied in one DuckDB transaction that also writes `applied_lsn`, so replay
after a crash is idempotent: records at or below applied_lsn are skipped.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowledge.errors import (
    ApplyError,
    CorruptionError,
    InvalidQuery,
    InvariantViolation,
    KnowledgeError,
    StorageFull,
    StoreClosed,
    StoreLocked,
    invariant,
)
from knowledge.storage.ops import Op, OpKind
from knowledge.storage.rows import NodeRows
from knowledge.storage.schema import Property, Schema
from knowledge.storage.ttl import STAMP_PREFIX, StampBatch, has_table

_SQL_TYPES = {"str": "VARCHAR", "text": "VARCHAR", "json": "VARCHAR", "int": "BIGINT", "float": "DOUBLE",
              "bool": "BOOLEAN", "timestamp": "TIMESTAMPTZ", "list[str]": "VARCHAR[]"}
INLINE_IDS_MAX = 512


def node_table(type_name: str) -> str:
    return f'"n_{type_name}"'


def edge_table(type_name: str) -> str:
    return f'"e_{type_name}"'


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_type(prop: Property) -> str:
    if prop.is_vector:
        return f"FLOAT[{prop.dimension}]"
    return _SQL_TYPES[prop.type]


class Tables:
    """Owner of the DuckDB connection; applies ops and answers column scans."""

    def __init__(self, path: str) -> None:
        """Open (or create) the DuckDB file at `path`. Raises CorruptionError naming the file when DuckDB
        cannot read it (not a DuckDB file, damaged, or its metadata unreadable)."""
        self.path = path
        self.lock = threading.Lock()
        try:
            self.con = duckdb.connect(path)
        except duckdb.Error as exc:
            raise _unreadable(path, exc) from exc
        try:
            self.con.execute("SET preserve_insertion_order = true")
            self.con.execute("CREATE TABLE IF NOT EXISTS _meta (name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
            self.schema = self._load_schema()
            self.applied_lsn = int(self.meta("applied_lsn", "0") or 0)
            self.applied_epoch = int(self.meta("applied_epoch", "0") or 0)
            self.next_id = int(self.meta("next_id", "0") or 0)
            self.has_ttl = has_table(self.con, "_ttl")  # TTL stamps exist: node deletes drop theirs
        except (duckdb.Error, ValueError, KeyError, TypeError) as exc:  # unreadable meta: a damaged file
            self.con.close()
            raise _unreadable(path, exc) from exc

    # -- meta ---------------------------------------------------------------------------------
    def meta(self, name: str, default: str | None = None) -> str | None:
        row = self.con.execute("SELECT value FROM _meta WHERE name = ?", [name]).fetchone()
        return row[0] if row else default

    def _set_meta(self, con: duckdb.DuckDBPyConnection, name: str, value: Any) -> None:
        con.execute("INSERT OR REPLACE INTO _meta VALUES (?, ?)", [name, str(value)])

    def _set_positions(self, con: duckdb.DuckDBPyConnection, lsn: int, epoch: int, next_id: int) -> None:
        """applied_lsn, applied_epoch and next_id in _meta, in one statement: an UPDATE once the rows
        exist (DuckDB spends ~1.3 ms CPU on it, ~4 ms on an INSERT OR REPLACE of the three, per batch)."""
        values = [str(lsn), str(epoch), str(next_id)]
        updated = con.execute("UPDATE _meta SET value = CASE name WHEN 'applied_lsn' THEN ? WHEN 'applied_epoch' "
                              "THEN ? ELSE ? END WHERE name IN ('applied_lsn', 'applied_epoch', 'next_id')",
                              values).fetchone()
        if updated is None or updated[0] != 3:
            con.execute("INSERT OR REPLACE INTO _meta VALUES ('applied_lsn', ?), ('applied_epoch', ?), "
                        "('next_id', ?)", values)

    def _load_schema(self) -> Schema:
        text = self.meta("schema")
        return Schema.from_dict(json.loads(text)) if text else Schema()

    # -- apply ----------------------------------------------------------------------------------
    def apply(self, records: list[tuple[int, int, list[Op]]]) -> None:
        """Apply records (lsn, epoch, ops) in order in one DuckDB transaction with applied_lsn."""
        if not records:
            return
        with self.lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            schema = self.schema
            try:
                run: list[tuple[int, Op]] = []  # consecutive plain inserts into one table: one INSERT
                stamps = StampBatch()
                for lsn, _, ops in records:
                    for op in ops:
                        if op.kind == OpKind.META and op.name.startswith(STAMP_PREFIX):
                            stamps.add(op)  # TTL stamps, written at the batch's end: knowledge/storage/ttl.py
                            continue
                        if op.kind == OpKind.DELETE_NODES and stamps and op.table is not None:
                            stamps.forget(op.table.column("_id"))
                        if run and not _joins_run(run, op):
                            self._insert_run(con, run)
                            run = []
                        if _joins_run(run, op):
                            run.append((lsn, op))
                        elif op.kind == OpKind.SCHEMA:
                            target = Schema.from_dict(op.document)
                            self._migrate(con, schema, target)
                            self._set_meta(con, "schema", json.dumps(target.to_dict()))
                            schema = target
                        elif op.kind == OpKind.META:
                            self._set_meta(con, op.name, json.dumps(op.document))
                        else:
                            self._apply_data(con, lsn, op, schema)
                if run:
                    self._insert_run(con, run)
                stamps.flush(con)
                next_id = max([self.next_id] + [_top_id(op) + 1 for _, _, ops in records for op in ops
                                                if op.kind == OpKind.UPSERT_NODES])
                self._set_positions(con, records[-1][0], records[-1][1], next_id)  # ids are never reused
                con.execute("COMMIT")
                self.has_ttl = self.has_ttl or bool(stamps.nodes)  # `_ttl` exists: node deletes drop their stamps
            except duckdb.Error as exc:
                _rollback(con)
                if is_disk_full_error(exc):
                    raise StorageFull(f"no space left on the device holding {self.path} to apply WAL records "
                                      f"{records[0][0]}..{records[-1][0]}; they are durable in the WAL and are "
                                      f"applied once space is freed", path=self.path) from exc
                raise ApplyError(f"applying WAL records {records[0][0]}..{records[-1][0]} to {self.path} failed: "
                                 f"{exc}", lsn=records[0][0]) from exc
            except BaseException:
                _rollback(con)
                raise
            self.schema = schema
            self.applied_lsn = records[-1][0]
            self.next_id = next_id

    def _migrate(self, con: duckdb.DuckDBPyConnection, old: Schema, new: Schema) -> None:
        for name, node_type in new.nodes.items():
            before = old.nodes.get(name)
            if before is None:
                cols = ", ".join(f"{quote(p.name)} {sql_type(p)}" for p in node_type.properties.values())
                con.execute(f"CREATE TABLE {node_table(name)} (_id BIGINT NOT NULL, _labels VARCHAR[] NOT NULL, "
                            f"_lsn BIGINT NOT NULL, {cols})")
            else:
                self._add_columns(con, node_table(name), before.properties, node_type.properties)
        for name, edge_type in new.edges.items():
            before_edge = old.edges.get(name)
            if before_edge is None:
                cols = "".join(f", {quote(p.name)} {sql_type(p)}" for p in edge_type.properties.values())
                con.execute(f"CREATE TABLE {edge_table(name)} (_src BIGINT NOT NULL, _dst BIGINT NOT NULL, "
                            f"_lsn BIGINT NOT NULL{cols})")
            else:
                self._add_columns(con, edge_table(name), before_edge.properties, edge_type.properties)

    def _add_columns(self, con: duckdb.DuckDBPyConnection, table: str, old: dict[str, Property],
                     new: dict[str, Property]) -> None:
        for prop_name, prop in new.items():
            if prop_name not in old:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {quote(prop_name)} {sql_type(prop)}")

    def _apply_data(self, con: duckdb.DuckDBPyConnection, lsn: int, op: Op, schema: Schema) -> None:
        if op.kind == OpKind.UPSERT_NODES:
            table = node_table(op.name)
            if op.may_replace:
                ids = op.rows.ids if op.rows is not None else op.arrow().column("_id")
                self._delete_ids(con, table, "_id", ids)
            self._insert_run(con, [(lsn, op)])
            return
        assert op.table is not None
        if op.kind == OpKind.DELETE_NODES:
            ids = op.table.column("_id")
            self._delete_ids(con, node_table(op.name), "_id", ids)
            if self.has_ttl:
                self._delete_ids(con, "_ttl", "id", ids)
            for edge_name, edge_type in schema.edges.items():
                if op.name in edge_type.sources:
                    self._delete_ids(con, edge_table(edge_name), "_src", ids)
                if op.name in edge_type.targets:
                    self._delete_ids(con, edge_table(edge_name), "_dst", ids)
        elif op.kind == OpKind.UPSERT_EDGES:
            table = edge_table(op.name)
            if op.may_replace:
                self._delete_pairs(con, table, op.table)
            self._insert_run(con, [(lsn, op)])
        elif op.kind == OpKind.DELETE_EDGES:
            self._delete_pairs(con, edge_table(op.name), op.table)

    def _insert_run(self, con: duckdb.DuckDBPyConnection, run: list[tuple[int, Op]]) -> None:
        """Insert the rows of several insert-only ops on one table at once, each row with its op's LSN."""
        first = run[0][1]
        table = node_table(first.name) if first.kind == OpKind.UPSERT_NODES else edge_table(first.name)
        if len(run) > 1 and all(op.rows is not None for _, op in run):
            batch = _rows_batch(run)  # many small commits: one Arrow table, not one per record
        else:
            parts = [op.arrow().append_column("_lsn", pa.array(np.full(len(op.arrow()), lsn, dtype=np.int64)))
                     for lsn, op in run]
            batch = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        cols = ", ".join(quote(c) for c in batch.column_names)
        con.register("_batch", batch)
        try:
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _batch")
        finally:
            con.unregister("_batch")

    def _delete_ids(self, con: duckdb.DuckDBPyConnection, table: str, column: str, ids: Any) -> None:
        values = ids.to_pylist() if hasattr(ids, "to_pylist") else list(ids)
        if not values:
            return
        if len(values) <= INLINE_IDS_MAX:
            con.execute(f"DELETE FROM {table} WHERE {column} IN ({', '.join(str(int(v)) for v in values)})")
            return
        con.register("_ids", pa.table({"id": pa.array(values, type=pa.int64())}))
        try:
            con.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT id FROM _ids)")
        finally:
            con.unregister("_ids")

    def _delete_pairs(self, con: duckdb.DuckDBPyConnection, table: str, batch: pa.Table) -> None:
        pairs = batch.select(["_src", "_dst"])
        con.register("_pairs", pairs)
        try:
            con.execute(f"DELETE FROM {table} t USING _pairs p WHERE t._src = p._src AND t._dst = p._dst")
        finally:
            con.unregister("_pairs")

    def column_values(self, type_name: str, prop: str) -> pa.Table:
        """(_id, value) of every node of `type_name` whose `prop` is not null, in id order."""
        cursor = self.con.cursor()
        try:
            return query_arrow(cursor, f'SELECT _id, {quote(prop)} AS value FROM {node_table(type_name)} '
                                       f'WHERE {quote(prop)} IS NOT NULL ORDER BY _id')
        finally:
            cursor.close()

    # -- reads ----------------------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one reader; StoreClosed once the tables are closed."""
        try:
            return self.con.cursor()
        except duckdb.ConnectionException as exc:
            raise StoreClosed(f"the store's tables ({self.path!r}) are closed: the store was closed") from exc

    def checkpoint(self) -> None:
        with self.lock:
            try:
                self.con.execute("CHECKPOINT")
            except duckdb.Error as exc:
                if is_disk_full_error(exc):
                    raise StorageFull(f"no space left on the device holding {self.path} to checkpoint the "
                                      f"tables (free space, then retry)", path=self.path) from exc
                raise

    def close(self) -> None:
        with self.lock:
            self.con.close()


def _joins_run(run: list[tuple[int, Op]], op: Op) -> bool:
    """Whether `op` is a plain insert (no row it writes exists yet) that can share the run's INSERT."""
    if op.kind not in (OpKind.UPSERT_NODES, OpKind.UPSERT_EDGES) or op.may_replace:
        return False
    if not run:
        return True
    first = run[0][1]
    if first.kind != op.kind or first.name != op.name:
        return False
    if first.rows is not None and op.rows is not None:
        return first.rows.names == op.rows.names and first.rows.kinds == op.rows.kinds
    return first.arrow().schema.equals(op.arrow().schema)


def _rows_batch(run: list[tuple[int, Op]]) -> pa.Table:
    """One table (with `_lsn`) from a run of NodeRows ops that share their columns."""
    first = run[0][1].rows
    assert first is not None
    columns: list[list[Any]] = [[] for _ in first.columns]
    labels: list[list[str]] = []
    ids: list[int] = []
    lsns: list[int] = []
    for lsn, op in run:
        rows = op.rows
        assert rows is not None and rows.ids is not None
        invariant(rows.names == first.names and rows.kinds == first.kinds, "a run mixes node row shapes")
        for merged, column in zip(columns, rows.columns, strict=True):
            merged.extend(column)
        labels.extend(rows.labels)
        ids.extend(rows.ids)
        lsns.extend([lsn] * len(rows))
    merged_rows = NodeRows(first.type_name, first.names, first.kinds, columns, labels, ids)
    return merged_rows.to_table().append_column("_lsn", pa.array(lsns, type=pa.int64()))


def _top_id(op: Op) -> int:
    """The highest node id an upsert writes (-1 when it writes none)."""
    if op.rows is not None:
        return max(op.rows.ids or [-1])
    column = op.arrow().column("_id")
    return int(pc.max(column).as_py()) if len(column) else -1


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pa.Table:
    """Run `sql` and return the whole result as an Arrow table. DuckDB's errors leave as KnowledgeErrors:
    StoreClosed (a closed connection), InvalidQuery (a value that does not fit a column's type: callers
    check filters first, this is the backstop), InvariantViolation (anything else: a bug)."""
    try:
        relation = con.sql(sql, params=params) if params else con.sql(sql)
        if hasattr(relation, "to_arrow_table"):
            return relation.to_arrow_table()
        return relation.arrow()
    except duckdb.Error as exc:
        raise translate(exc) from exc


def translate(exc: duckdb.Error) -> KnowledgeError:
    """The KnowledgeError a DuckDB error at a read means (see query_arrow)."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, duckdb.ConnectionException):
        return StoreClosed(f"the store is closed ({reason})")
    if isinstance(exc, duckdb.ConversionException | duckdb.BinderException | duckdb.InvalidInputException
                  | duckdb.TypeMismatchException | duckdb.OutOfRangeException):
        return InvalidQuery(f"the query does not fit the schema: {reason}")
    return InvariantViolation(f"unexpected DuckDB error: {type(exc).__name__}: {reason}")


def is_disk_full_error(exc: BaseException) -> bool:
    """Whether a DuckDB error is the file system running out of space."""
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction, if DuckDB still holds one (a failed COMMIT already ended it)."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass


def _unreadable(path: str, exc: BaseException) -> KnowledgeError:
    """The error for a table file DuckDB will not open: StorageFull when the disk has no room, StoreLocked
    when another process holds DuckDB's lock on it, CorruptionError otherwise."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if is_disk_full_error(exc):
        return StorageFull(f"no space left on the device holding {path} to open the tables", path=path)
    if isinstance(exc, duckdb.IOException) and "lock" in reason.lower():
        return StoreLocked(os.path.dirname(path), None)
    return CorruptionError(f"cannot read the table file {path!r} ({reason}); it is damaged or not a "
                           f"knowledge store file: rebuild it from its WAL (knowledge recover SRC DEST) "
                           f"or restore a backup (knowledge restore BACKUP DEST)", segment=os.path.basename(path),
                           offset=0)
