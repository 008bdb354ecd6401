"""Bulk ingest of JSONL, Parquet and CSV files into one node or edge type, one transaction per batch.

The file is read in a streaming fashion with pyarrow's readers, its columns are converted to the
schema's Arrow types here (so that a value that does not fit is reported with its row in the file),
and every `batch_rows` rows are committed as one transaction. Guarantees:

* batches are committed in file order; when a batch fails nothing of it is committed, the batches
  before it stay committed (their last LSN is on the raised error as `committed_lsn`, and
  `committed_rows` says how many rows they held);
* every ValidationError names the row counted from 0 over the data rows of the file (a CSV
  header is not a row; blank JSONL lines are not rows) and the file it came from;
* a file that cannot be read in the given format raises UnreadableFile naming the file.

Reading (formats, streaming readers) is in `knowledge/ingest_formats.py`.

Formats, chosen from the file name (`.jsonl`/`.ndjson`/`.json`, `.parquet`/`.pq`, `.csv`/`.tsv`,
each optionally compressed `.gz`/`.bz2`/`.zst`/`.lz4` except Parquet) or given as `fmt`:

* jsonl: one JSON object per line; fields are property names (`src`/`dst` for edges); `_labels`
  a list of strings;
* parquet: columns as above, any Arrow types that cast safely to the schema's types;
* csv: a header row naming the columns; empty fields are null; `list[str]` properties and
  `_labels` are `;`-separated strings; vector properties are not supported.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from knowledge.errors import (
    InvalidArgument,
    KnowledgeError,
    TypeMismatch,
    UnknownType,
    UnreadableFile,
    ValidationError,
)
from knowledge.ingest_formats import (
    FORMATS,
    LABELS_TYPE,
    Target,
    detect_format,
    in_file,
    parquet_rows,
    read_batches,
)

if TYPE_CHECKING:
    from knowledge.session import Session

BATCH_ROWS_DEFAULT = 100_000
LIST_SEPARATOR = ";"


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one `ingest_file` call did: rows read and committed, wall seconds, batches, last LSN.

    `last_lsn` is None when the file held no rows (nothing was committed).
    """

    rows: int
    seconds: float
    batches: int
    last_lsn: int | None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One human line: rows, seconds, rows/s, batches and the last LSN."""
        batches = f"{self.batches} batch{'es' if self.batches != 1 else ''}"
        return (f"ingested {self.rows:,} rows in {self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s), "
                f"{batches}, last LSN {self.last_lsn if self.last_lsn is not None else '-'}")


def ingest_file(session: Session, type_name: str, path: str | os.PathLike[str], *, edges: bool = False,
                fmt: str | None = None, batch_rows: int = BATCH_ROWS_DEFAULT, progress: bool = True,
                labels: Sequence[str] | None = None) -> IngestReport:
    """Read `path` and upsert its rows as nodes (or, with `edges`, edges) of `type_name`.

    One transaction per `batch_rows` rows. `labels`, when given, are the access labels of every row
    whose `_labels` is absent or null. `progress` shows a tqdm bar on stderr when stderr is a TTY.

    Raises UnknownType (type not declared, or a node type given for edges / vice versa),
    InvalidArgument (bad batch_rows or fmt), UnreadableFile (missing file, wrong format, malformed
    content), ValidationError and its subclasses (a row that does not fit: row counted in the file),
    and whatever the commit raises (StoreClosed, StorePoisoned, ...). On any error the batch being
    read is not committed; earlier batches stay committed.
    """
    path = os.fspath(path)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise InvalidArgument(f"batch_rows must be a positive int, got {batch_rows!r}")
    if fmt is None:
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise InvalidArgument(f"format must be one of {FORMATS}, got {fmt!r}")
    if not os.path.isfile(path):
        raise UnreadableFile(f"no such file: {path!r}", path=path, format=fmt)
    target = _target(session, type_name, edges)
    default_labels = pa.scalar(sorted(set(labels)), type=LABELS_TYPE) if labels is not None else None

    from tqdm import tqdm

    started = time.perf_counter()
    rows = batches = 0
    last_lsn: int | None = None
    total = parquet_rows(path) if fmt == "parquet" else None
    bar = tqdm(total=total, unit="rows", unit_scale=True, desc=f"{type_name}", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()), leave=False)
    try:
        for table in _batches(read_batches(path, fmt, target, batch_rows), batch_rows):
            try:
                table = _conform(table, target, fmt, default_labels)
                tx = session.transaction()
                if edges:
                    tx.upsert_edges(type_name, table)
                else:
                    tx.upsert_nodes(type_name, table)
                last_lsn = tx.commit()
            except ValidationError as exc:
                raise in_file(exc, rows, path) from exc
            rows += table.num_rows
            batches += 1
            bar.update(table.num_rows)
    except KnowledgeError as exc:
        exc.committed_lsn = last_lsn  # type: ignore[attr-defined]
        exc.committed_rows = rows  # type: ignore[attr-defined]
        raise
    finally:
        bar.close()
    return IngestReport(rows, time.perf_counter() - started, batches, last_lsn)


# -- schema ----------------------------------------------------------------------------------------
def _target(session: Session, type_name: str, edges: bool) -> Target:
    schema = session.store.schema
    if edges:
        edge_type = schema.edges.get(type_name)
        if edge_type is None:
            hint = " (it is a node type: ingest it without --edges)" if type_name in schema.nodes else ""
            raise UnknownType(f"unknown edge type {type_name!r}{hint}", type_name=type_name)
        extra = {"src": _key_type(schema, edge_type.sources), "dst": _key_type(schema, edge_type.targets),
                 "src_type": pa.string(), "dst_type": pa.string()}
        return Target(type_name, True, dict(edge_type.properties), extra)
    node_type = schema.nodes.get(type_name)
    if node_type is None:
        hint = " (it is an edge type: ingest it with --edges)" if type_name in schema.edges else ""
        raise UnknownType(f"unknown node type {type_name!r}{hint}", type_name=type_name)
    return Target(type_name, False, dict(node_type.properties), {})


def _key_type(schema: Any, node_types: tuple[str, ...]) -> pa.DataType | None:
    """The Arrow type of the keys of `node_types` when they agree (str or int), else None."""
    kinds = {schema.nodes[name].properties[schema.nodes[name].key].type for name in node_types}
    if len(kinds) != 1:
        return None
    return pa.int64() if kinds == {"int"} else pa.string()


# -- batching and conversion -----------------------------------------------------------------------
def _batches(source: Iterator[pa.RecordBatch], batch_rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `batch_rows` rows (the last may be shorter) cut from `source` in order."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in source:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while count >= batch_rows:
            table = _concat(pending)
            yield table.slice(0, batch_rows)
            rest = table.slice(batch_rows)
            pending = rest.to_batches() if rest.num_rows else []
            count = rest.num_rows
    if count:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.Table:
    tables = [pa.Table.from_batches([b]) for b in batches]
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def _conform(table: pa.Table, target: Target, fmt: str, default_labels: pa.Scalar | None) -> pa.Table:
    """Cast the declared columns to the schema's Arrow types; a value that does not fit raises
    TypeMismatch naming its row in the batch. Undeclared columns are left for the store to reject."""
    columns: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name)
        _check_utf8(column, target, name)
        prop = target.properties.get(name)
        if name == "_labels" and not target.edges:
            column = _labels_column(column, fmt, default_labels)
            kind: pa.DataType | None = LABELS_TYPE
        elif prop is not None and prop.type == "list[str]":
            column = _list_column(column, fmt)
            kind = LABELS_TYPE
        elif prop is not None:
            kind = None if prop.type == "json" and not pa.types.is_string(column.type) else prop.arrow_type()
        else:
            kind = target.extra.get(name)
        if kind is not None and column.type != kind:
            column = _cast_or_raise(column, kind, target, name)
        columns[name] = column
    if "_labels" not in columns and default_labels is not None and not target.edges:
        columns["_labels"] = pa.array([default_labels.as_py()] * table.num_rows, type=LABELS_TYPE)
    return pa.table(columns)


def _list_column(column: pa.ChunkedArray, fmt: str) -> pa.ChunkedArray:
    """CSV carries lists as `;`-separated text; split it (empty items dropped)."""
    if fmt != "csv" or not pa.types.is_string(column.type):
        return column
    values = [None if text is None else [item.strip() for item in text.split(LIST_SEPARATOR) if item.strip()]
              for text in column.to_pylist()]
    return pa.chunked_array([pa.array(values, type=LABELS_TYPE)])


def _labels_column(column: pa.ChunkedArray, fmt: str, default: pa.Scalar | None) -> pa.ChunkedArray:
    """Labels as the store's row-dict path keeps them: sorted, unique, empty strings dropped; null
    (or an empty CSV field) becomes `default` when given. A column that is not a list of strings is
    returned as is for the store to reject."""
    column = _list_column(column, fmt)
    if not (pa.types.is_list(column.type) and pa.types.is_string(column.type.value_type)):
        return column
    fallback = None if default is None else default.as_py()
    values = [fallback if labels is None else sorted({label for label in labels if label})
              for labels in column.to_pylist()]
    return pa.chunked_array([pa.array(values, type=LABELS_TYPE)])


def _caster(kind: pa.DataType) -> Callable[[pa.ChunkedArray], pa.ChunkedArray]:
    def cast(column: pa.ChunkedArray) -> pa.ChunkedArray:
        try:
            return column.cast(kind, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if not (pa.types.is_timestamp(kind) and kind.tz is not None and pa.types.is_string(column.type)):
                raise
            # ISO-8601 text without a zone offset: read as UTC, as the store does for naive datetimes
            return column.cast(pa.timestamp(kind.unit), safe=True).cast(kind)
    return cast


def _first_failing_row(column: pa.ChunkedArray, check: Callable[[pa.ChunkedArray], object],
                       errors: tuple[type[BaseException], ...]) -> int:
    """The row whose inclusion first makes `check` fail on a prefix (binary search; `check` fails on all)."""
    low, high = 0, len(column)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            check(column.slice(0, middle))
            low = middle
        except errors:
            high = middle
    return high - 1


def _check_utf8(column: pa.ChunkedArray, target: Target, name: str) -> None:
    """Arrow's JSON reader (and Parquet files) may carry invalid UTF-8 in string columns: find it here."""
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or (pa.types.is_list(kind) and pa.types.is_string(kind.value_type))):
        return

    def validate(part: pa.ChunkedArray) -> None:
        part.validate(full=True)

    try:
        validate(column)
        return
    except pa.ArrowInvalid:
        pass
    if pa.types.is_list(kind):  # a sliced list still validates all its items: search the items
        items = pc.list_flatten(column)
        row = pc.list_parent_indices(column)[_first_failing_row(items, validate, (pa.ArrowInvalid,))].as_py()
    else:
        row = _first_failing_row(column, validate, (pa.ArrowInvalid,))
    raise TypeMismatch("not valid UTF-8 text", type_name=target.type_name, row=row, field=name)


def _cast_or_raise(column: pa.ChunkedArray, kind: pa.DataType, target: Target, name: str) -> pa.ChunkedArray:
    cast = _caster(kind)
    errors = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
    try:
        return cast(column)
    except errors as exc:
        reason = str(exc)
    prop = target.properties.get(name)
    wanted = prop.type if prop is not None else str(kind)
    row = _first_failing_row(column, cast, errors)
    try:
        cast(column.slice(row, 1))
    except errors:
        value = column[row].as_py()
        raise TypeMismatch(f"cannot convert {value!r} to {wanted}", type_name=target.type_name,
                           row=row, field=name, value=value) from None
    raise TypeMismatch(f"column of Arrow type {column.type} does not fit {wanted}: {reason}",
                       type_name=target.type_name, field=name)


__all__ = ["FORMATS", "IngestReport", "UnreadableFile", "detect_format", "ingest_file"]
