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

Formats, chosen from the file name (`.jsonl`/`.ndjson`/`.json`, `.parquet`/`.pq`, `.csv`/`.tsv`,
each optionally compressed `.gz`/`.bz2`/`.zst`/`.lz4` except Parquet) or given as `fmt`:

* jsonl: one JSON object per line; fields are property names (`src`/`dst` for edges); `_labels`
  a list of strings;
* parquet: columns as above, any Arrow types that cast safely to the schema's types;
* csv: a header row naming the columns; empty fields are null; `list[str]` properties and
  `_labels` are `;`-separated strings; vector properties are not supported.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from knowledge.errors import (
    InvalidArgument,
    KnowledgeError,
    TypeMismatch,
    UnknownType,
    UnreadableFile,
    ValidationError,
)
from knowledge.schema import Property

if TYPE_CHECKING:
    from knowledge.session import Session

FORMATS = ("jsonl", "parquet", "csv")
BATCH_ROWS_DEFAULT = 100_000
LIST_SEPARATOR = ";"
LABELS_TYPE = pa.list_(pa.string())
READ_BLOCK_BYTES = 4 << 20
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                   ".pq": "parquet", ".csv": "csv", ".tsv": "csv"}
# Arrow types the JSON reader is told to expect (other properties are inferred, then cast here)
_JSON_READ_TYPES = {"str": pa.string(), "text": pa.string(), "int": pa.int64(), "float": pa.float64(),
                    "bool": pa.bool_(), "list[str]": LABELS_TYPE}


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


@dataclass(frozen=True, slots=True)
class _Target:
    """The columns a file may carry for one node or edge type, and the Arrow type each must end up as."""

    type_name: str
    edges: bool
    properties: dict[str, Property]
    extra: dict[str, pa.DataType | None]  # src/dst/src_type/dst_type (None: leave as read)

    def columns(self) -> set[str]:
        return {*self.properties, *self.extra, *(() if self.edges else ("_labels",))}


def _suffix(path: str) -> str:
    """The lower-case extension of `path` once a compression suffix is removed."""
    name = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.splitext(name)[1]


def detect_format(path: str) -> str:
    """The format implied by the file name (compression suffixes ignored); raises UnreadableFile."""
    fmt = _SUFFIX_FORMATS.get(_suffix(path))
    if fmt is None:
        raise UnreadableFile(f"cannot tell the format of {path!r} from its name; give it as one of "
                             f"{', '.join(FORMATS)}", path=path)
    return fmt


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
    total = _parquet_rows(path) if fmt == "parquet" else None
    bar = tqdm(total=total, unit="rows", unit_scale=True, desc=f"{type_name}", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()), leave=False)
    try:
        for table in _batches(_read(path, fmt, target, batch_rows), batch_rows):
            try:
                table = _conform(table, target, fmt, default_labels)
                tx = session.transaction()
                if edges:
                    tx.upsert_edges(type_name, table)
                else:
                    tx.upsert_nodes(type_name, table)
                last_lsn = tx.commit()
            except ValidationError as exc:
                raise _in_file(exc, rows, path) from exc
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
def _target(session: Session, type_name: str, edges: bool) -> _Target:
    schema = session.store.schema
    if edges:
        edge_type = schema.edges.get(type_name)
        if edge_type is None:
            hint = " (it is a node type: ingest it without --edges)" if type_name in schema.nodes else ""
            raise UnknownType(f"unknown edge type {type_name!r}{hint}", type_name=type_name)
        extra = {"src": _key_type(schema, edge_type.sources), "dst": _key_type(schema, edge_type.targets),
                 "src_type": pa.string(), "dst_type": pa.string()}
        return _Target(type_name, True, dict(edge_type.properties), extra)
    node_type = schema.nodes.get(type_name)
    if node_type is None:
        hint = " (it is an edge type: ingest it with --edges)" if type_name in schema.edges else ""
        raise UnknownType(f"unknown node type {type_name!r}{hint}", type_name=type_name)
    return _Target(type_name, False, dict(node_type.properties), {})


def _key_type(schema: Any, node_types: tuple[str, ...]) -> pa.DataType | None:
    """The Arrow type of the keys of `node_types` when they agree (str or int), else None."""
    kinds = {schema.nodes[name].properties[schema.nodes[name].key].type for name in node_types}
    if len(kinds) != 1:
        return None
    return pa.int64() if kinds == {"int"} else pa.string()


# -- reading ---------------------------------------------------------------------------------------
def _read(path: str, fmt: str, target: _Target, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of the file in order; reader failures become UnreadableFile or TypeMismatch."""
    if fmt == "parquet":
        reader: Iterator[pa.RecordBatch] = _parquet_batches(path, batch_rows)
    elif fmt == "csv":
        reader = _csv_batches(path, target)
    else:
        reader = _json_batches(path, target)
    what = {"jsonl": "JSON Lines (one object per line)", "csv": "CSV with a header row"}.get(fmt, fmt)
    try:
        yield from reader
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError, ValueError) as exc:
        if fmt == "jsonl":
            _diagnose_jsonl(path, target)
        raise UnreadableFile(f"cannot read {path!r} as {what}: {exc}", path=path, format=fmt) from exc


def _parquet_rows(path: str) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError):
        return None  # _read reports it


def _parquet_batches(path: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=min(batch_rows, 1 << 16))


def _csv_batches(path: str, target: _Target) -> Iterator[pa.RecordBatch]:
    # Every declared column is read as text and cast here: CSV type inference works per block, so
    # numeric-looking str keys would become ints and a late bad value would fail the whole read.
    text_columns = {name: pa.string() for name in target.columns()}
    delimiter = "\t" if _suffix(path) == ".tsv" else ","
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=READ_BLOCK_BYTES),
        parse_options=pcsv.ParseOptions(delimiter=delimiter),
        convert_options=pcsv.ConvertOptions(column_types=text_columns, null_values=[""],
                                            strings_can_be_null=True, quoted_strings_can_be_null=False))
    yield from reader


def _json_read_schema(target: _Target) -> pa.Schema:
    fields = [pa.field(name, _JSON_READ_TYPES[prop.type]) for name, prop in target.properties.items()
              if prop.type in _JSON_READ_TYPES]
    fields += [pa.field(name, kind) for name, kind in target.extra.items() if kind is not None]
    if not target.edges:
        fields.append(pa.field("_labels", LABELS_TYPE))
    return pa.schema(fields)


def _json_batches(path: str, target: _Target) -> Iterator[pa.RecordBatch]:
    if any(prop.type == "json" for prop in target.properties.values()):
        yield from _python_json_batches(path, target)
        return
    reader = pjson.open_json(
        path,
        read_options=pjson.ReadOptions(block_size=READ_BLOCK_BYTES),
        parse_options=pjson.ParseOptions(explicit_schema=_json_read_schema(target),
                                         unexpected_field_behavior="infer"))
    yield from reader


def _python_json_batches(path: str, target: _Target, rows_per_batch: int = 1 << 15) -> Iterator[pa.RecordBatch]:
    """JSONL parsed by Python, for types with `json` properties: their values (any JSON, mixed kinds)
    are kept as exact JSON text, which Arrow's reader cannot do (it infers one struct type per column)."""
    json_properties = [name for name, prop in target.properties.items() if prop.type == "json"]
    read_types = {field.name: field.type for field in _json_read_schema(target)}
    pending: list[dict[str, Any]] = []
    for _, value in _jsonl_objects(path, target):
        for name in json_properties:
            if value.get(name) is not None:
                value[name] = json.dumps(value[name], ensure_ascii=False, separators=(",", ":"))
        pending.append(value)
        if len(pending) == rows_per_batch:
            yield _dicts_to_batch(pending, read_types)
            pending = []
    if pending:
        yield _dicts_to_batch(pending, read_types)


def _dicts_to_batch(rows: list[dict[str, Any]], read_types: dict[str, pa.DataType]) -> pa.RecordBatch:
    names = dict.fromkeys(name for row in rows for name in row)
    return pa.RecordBatch.from_pydict({name: pa.array([row.get(name) for row in rows], type=read_types.get(name))
                                       for name in names})


def _jsonl_objects(path: str, target: _Target) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, object) for each non-blank line; a line that is not a JSON object raises ValidationError."""
    with pa.input_stream(path, compression="detect") as raw, io.BufferedReader(raw) as lines:
        row = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise _with_path(ValidationError(f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                                                 type_name=target.type_name, row=row), path) from None
            except ValueError as exc:
                raise _with_path(ValidationError(f"not valid JSON: {exc}", type_name=target.type_name,
                                                 row=row), path) from None
            if not isinstance(value, dict):
                raise _with_path(ValidationError(f"expected a JSON object per line, got {type(value).__name__}",
                                                 type_name=target.type_name, row=row), path)
            yield row, value
            row += 1


def _diagnose_jsonl(path: str, target: _Target) -> None:
    """After reading JSONL into Arrow failed: find the first offending row in Python and raise for it.

    Returns (without raising) when no row explains the failure.
    """
    expected = {field.name: field.type for field in _json_read_schema(target)}
    for row, value in _jsonl_objects(path, target):
        for name, kind in expected.items():
            item = value.get(name)
            if item is not None and not _json_fits(item, kind):
                raise _with_path(TypeMismatch(f"expected {_describe(name, kind, target)}, got "
                                              f"{type(item).__name__} {item!r}", type_name=target.type_name,
                                              row=row, field=name, value=item), path)


def _json_fits(value: Any, kind: pa.DataType) -> bool:
    if pa.types.is_string(kind):
        return isinstance(value, str)
    if pa.types.is_boolean(kind):
        return isinstance(value, bool)
    if pa.types.is_integer(kind):
        return isinstance(value, int) and not isinstance(value, bool)
    if pa.types.is_floating(kind):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if pa.types.is_list(kind):
        return isinstance(value, list) and all(item is None or isinstance(item, str) for item in value)
    return True


def _describe(name: str, kind: pa.DataType, target: _Target) -> str:
    prop = target.properties.get(name)
    if prop is not None:
        return prop.type
    return "a list of str" if name == "_labels" else ("int" if pa.types.is_integer(kind) else "str")


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


def _conform(table: pa.Table, target: _Target, fmt: str, default_labels: pa.Scalar | None) -> pa.Table:
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


def _check_utf8(column: pa.ChunkedArray, target: _Target, name: str) -> None:
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


def _cast_or_raise(column: pa.ChunkedArray, kind: pa.DataType, target: _Target, name: str) -> pa.ChunkedArray:
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


# -- errors ----------------------------------------------------------------------------------------
def _rebuild(exc: ValidationError, message: str, row: int | None) -> ValidationError:
    try:
        new = type(exc)(message, type_name=exc.type_name, row=row, field=exc.field, value=exc.value)
    except TypeError:  # a subclass with another constructor: keep the class family
        new = ValidationError(message, type_name=exc.type_name, row=row, field=exc.field, value=exc.value)
    return new


def _with_path(exc: ValidationError, path: str) -> ValidationError:
    new = _rebuild(exc, f"{exc.detail} (in {path!r})", exc.row)
    new.path = path  # type: ignore[attr-defined]
    return new


def _in_file(exc: ValidationError, start: int, path: str) -> ValidationError:
    """`exc` (its row counted within the batch that starts at file row `start`) with the row in the file."""
    row = None if exc.row is None else exc.row + start
    new = _rebuild(exc, f"{exc.detail} (in {path!r})", row)
    new.path = path  # type: ignore[attr-defined]
    return new


__all__ = ["FORMATS", "IngestReport", "UnreadableFile", "detect_format", "ingest_file"]
