"""Bulk ingest, reading side: file formats, streaming readers (JSONL, Parquet, CSV) and the errors
that name a file's row. `knowledge/ingest.py:ingest_file` batches, converts and commits what they read.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from knowledge.errors import TypeMismatch, UnreadableFile, ValidationError
from knowledge.storage.schema import Property

FORMATS = ("jsonl", "parquet", "csv")
LABELS_TYPE = pa.list_(pa.string())
READ_BLOCK_BYTES = 4 << 20
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                   ".pq": "parquet", ".csv": "csv", ".tsv": "csv"}
# Arrow types the JSON reader is told to expect (other properties are inferred, then cast here)
_JSON_READ_TYPES = {"str": pa.string(), "text": pa.string(), "int": pa.int64(), "float": pa.float64(),
                    "bool": pa.bool_(), "list[str]": LABELS_TYPE}


@dataclass(frozen=True, slots=True)
class Target:
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


# -- reading ---------------------------------------------------------------------------------------
def read_batches(path: str, fmt: str, target: Target, batch_rows: int) -> Iterator[pa.RecordBatch]:
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


def parquet_rows(path: str) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError):
        return None  # _read reports it


def _parquet_batches(path: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=min(batch_rows, 1 << 16))


def _csv_batches(path: str, target: Target) -> Iterator[pa.RecordBatch]:
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


def _json_read_schema(target: Target) -> pa.Schema:
    fields = [pa.field(name, _JSON_READ_TYPES[prop.type]) for name, prop in target.properties.items()
              if prop.type in _JSON_READ_TYPES]
    fields += [pa.field(name, kind) for name, kind in target.extra.items() if kind is not None]
    if not target.edges:
        fields.append(pa.field("_labels", LABELS_TYPE))
    return pa.schema(fields)


def _json_batches(path: str, target: Target) -> Iterator[pa.RecordBatch]:
    if any(prop.type == "json" for prop in target.properties.values()):
        yield from _python_json_batches(path, target)
        return
    reader = pjson.open_json(
        path,
        read_options=pjson.ReadOptions(block_size=READ_BLOCK_BYTES),
        parse_options=pjson.ParseOptions(explicit_schema=_json_read_schema(target),
                                         unexpected_field_behavior="infer"))
    yield from reader


def _python_json_batches(path: str, target: Target, rows_per_batch: int = 1 << 15) -> Iterator[pa.RecordBatch]:
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


def _jsonl_objects(path: str, target: Target) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, object) for each non-blank line; a line that is not a JSON object raises ValidationError."""
    with pa.input_stream(path, compression="detect") as raw, io.BufferedReader(raw) as lines:
        row = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise with_path(ValidationError(f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                                                 type_name=target.type_name, row=row), path) from None
            except ValueError as exc:
                raise with_path(ValidationError(f"not valid JSON: {exc}", type_name=target.type_name,
                                                 row=row), path) from None
            if not isinstance(value, dict):
                raise with_path(ValidationError(f"expected a JSON object per line, got {type(value).__name__}",
                                                 type_name=target.type_name, row=row), path)
            yield row, value
            row += 1


def _diagnose_jsonl(path: str, target: Target) -> None:
    """After reading JSONL into Arrow failed: find the first offending row in Python and raise for it.

    Returns (without raising) when no row explains the failure.
    """
    expected = {field.name: field.type for field in _json_read_schema(target)}
    for row, value in _jsonl_objects(path, target):
        for name, kind in expected.items():
            item = value.get(name)
            if item is not None and not _json_fits(item, kind):
                raise with_path(TypeMismatch(f"expected {_describe(name, kind, target)}, got "
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


def _describe(name: str, kind: pa.DataType, target: Target) -> str:
    prop = target.properties.get(name)
    if prop is not None:
        return prop.type
    return "a list of str" if name == "_labels" else ("int" if pa.types.is_integer(kind) else "str")


# -- errors ----------------------------------------------------------------------------------------
def _rebuild(exc: ValidationError, message: str, row: int | None) -> ValidationError:
    try:
        new = type(exc)(message, type_name=exc.type_name, row=row, field=exc.field, value=exc.value)
    except TypeError:  # a subclass with another constructor: keep the class family
        new = ValidationError(message, type_name=exc.type_name, row=row, field=exc.field, value=exc.value)
    return new


def with_path(exc: ValidationError, path: str) -> ValidationError:
    new = _rebuild(exc, f"{exc.detail} (in {path!r})", exc.row)
    new.path = path  # type: ignore[attr-defined]
    return new


def in_file(exc: ValidationError, start: int, path: str) -> ValidationError:
    """`exc` (its row counted within the batch that starts at file row `start`) with the row in the file."""
    row = None if exc.row is None else exc.row + start
    new = _rebuild(exc, f"{exc.detail} (in {path!r})", row)
    new.path = path  # type: ignore[attr-defined]
    return new
