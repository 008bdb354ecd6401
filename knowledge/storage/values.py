"""Turn caller rows (dicts, Arrow tables, pandas frames) into typed Arrow tables, or say exactly why not.

Every error names the type, the row (0-based within the batch given) and the field. Nothing here
touches the store: a failure leaves no trace.

Over ~450 lines on purpose: one checker per property type, the same rules for dict rows, Arrow
columns and pandas frames side by side, so the three input paths cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowledge.config import StoreConfig
from knowledge.errors import MissingKey, TypeMismatch, ValidationError, ValueTooLarge, WrongEndpointType
from knowledge.storage.schema import EdgeType, NodeType, Property

LABELS_TYPE = pa.list_(pa.string())
Rows = Sequence[Mapping[str, Any]] | pa.Table | pa.RecordBatch | Any


def to_table(rows: Rows, type_name: str) -> pa.Table | list[Mapping[str, Any]]:
    """Normalise input: Arrow stays Arrow, pandas becomes Arrow, anything iterable of dicts a list."""
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, pa.Table):
        return rows
    if type(rows).__name__ == "DataFrame" and hasattr(rows, "to_dict"):
        return _from_pandas(rows, type_name)
    if isinstance(rows, Mapping):
        return [rows]
    if isinstance(rows, Iterable) and not isinstance(rows, str | bytes):
        out = list(rows)
        for index, row in enumerate(out):
            if type(row) is not dict and not isinstance(row, Mapping):
                raise ValidationError(f"expected a dict per row, got {type(row).__name__}",
                                      type_name=type_name, row=index)
        return out
    raise ValidationError(f"expected rows as a list of dicts, an Arrow table or a pandas DataFrame, "
                          f"got {type(rows).__name__}", type_name=type_name)


def _from_pandas(frame: Any, type_name: str) -> pa.Table | list[dict[str, Any]]:
    """A DataFrame as Arrow; one that Arrow cannot hold as typed columns (an object column mixing
    kinds) as dict rows, so that each value is judged as a dict row's would be."""
    import pandas as pd  # a DataFrame was given: pandas is there

    mixed = any(pd.api.types.is_object_dtype(dtype) and _mixes_kinds(frame.iloc[:, position], pd)
                for position, dtype in enumerate(frame.dtypes))
    if not mixed:  # Arrow would turn [0.0, False] into doubles: a mixed object column is judged per value
        try:
            return pa.Table.from_pandas(frame, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass

    def plain(value: Any) -> Any:  # pandas' missing markers (NaN, NA, NaT) become None, as Arrow reads them
        if isinstance(value, list | tuple | dict | np.ndarray):
            return value
        return None if pd.isna(value) else value

    names = [str(name) for name in frame.columns]
    if len(set(names)) != len(names):
        raise ValidationError("DataFrame has duplicate column names", type_name=type_name)
    columns = [[plain(value) for value in frame.iloc[:, position].tolist()] for position in range(len(names))]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _mixes_kinds(column: Any, pd: Any) -> bool:
    """Whether an object column holds values of more than one Python type (missing values aside)."""
    kinds = {type(value) for value in column.tolist()
             if isinstance(value, list | tuple | dict | np.ndarray) or not pd.isna(value)}
    return len(kinds) > 1


def mismatch(type_name: str, prop: Property, index: int, value: Any, exc: BaseException,
              key: str | None) -> TypeMismatch:
    """The TypeMismatch for `value` at row `index` (every input path builds it here, so alike)."""
    message = f"bad value for {prop.type} property: {exc}"
    if prop.name == key and prop.type == "str" and isinstance(value, int | np.integer) and not isinstance(value, bool):
        message += (f"; a key is str unless properties declares its type, "
                    f"e.g. properties={{{prop.name!r}: 'int'}}")
    return TypeMismatch(message, type_name=type_name, row=index, field=prop.name, value=value)


def convert_value(prop: Property, value: Any) -> Any:
    """One Python value as the Arrow builder wants it; raise TypeError/ValueError when it does not fit."""
    if value is None:
        return None
    kind = prop.type
    if kind in ("str", "text"):
        if not isinstance(value, str):
            raise TypeError(f"expected str, got {type(value).__name__}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"expected int, got {type(value).__name__}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise TypeError(f"expected float, got {type(value).__name__}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"expected bool, got {type(value).__name__}")
        return bool(value)
    if kind == "timestamp":
        return _timestamp(value)
    if kind == "json":
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    if kind == "list[str]":
        if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
            raise TypeError(f"expected a list of str, got {type(value).__name__}")
        if not all(isinstance(item, str) for item in value):
            raise TypeError("expected a list of str, found a non-str item")
        return list(value)
    return _vector(prop, value)


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from exc
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime or ISO-8601 string, got {type(value).__name__}")
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def vector_array(prop: Property, value: Any) -> np.ndarray:
    """`value` as a float32 vector of the property's dimension; TypeError when its items are not
    numbers (str, bool), ValueError when it is not one vector of that dimension."""
    if isinstance(value, str | bytes):
        raise TypeError(f"expected a vector of numbers, got {type(value).__name__}")
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"expected a vector of numbers, got items of dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if array.ndim != 1 or array.shape[0] != prop.dimension:
        raise ValueError(f"expected a vector of dimension {prop.dimension}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("vector has NaN or infinite components")
    return array


def _vector(prop: Property, value: Any) -> list[float]:
    return vector_array(prop, value).tolist()


def _column_from_values(type_name: str, prop: Property, values: list[Any], key: str | None = None) -> pa.Array:
    converted = []
    for index, value in enumerate(values):
        try:
            converted.append(convert_value(prop, value))
        except (TypeError, ValueError, OverflowError) as exc:
            raise mismatch(type_name, prop, index, value, exc, key) from None
    try:
        return pa.array(converted, type=prop.arrow_type())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError) as exc:
        row = _first_refused_row(converted, prop.arrow_type())
        raise TypeMismatch(f"bad value for {prop.type} property: {exc}", type_name=type_name, row=row,
                           field=prop.name, value=None if row is None else values[row]) from None


def _first_refused_row(values: list[Any], arrow_type: pa.DataType) -> int | None:
    """The first row whose value Arrow will not store as `arrow_type` (lone surrogates, int overflow)."""
    for index, value in enumerate(values):
        try:
            pa.array([value], type=arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeEncodeError):
            return index
    return None


def _is_text(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(
        arrow_type)


def _is_list(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list_view(arrow_type))


def _arrow_kind_fits(prop: Property, arrow_type: pa.DataType) -> bool:
    """Whether a column of `arrow_type` holds the very values a dict row may give `prop` (so a cast
    changes their representation, never their kind: no int becomes '100', no 1.0 becomes True).
    Other columns are judged value by value, as dict rows are."""
    if pa.types.is_null(arrow_type):
        return True
    kind = prop.type
    if kind in ("str", "text", "json"):
        return _is_text(arrow_type)
    if kind == "int":
        return pa.types.is_integer(arrow_type)
    if kind == "float":
        return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
    if kind == "bool":
        return pa.types.is_boolean(arrow_type)
    if kind == "timestamp":
        return pa.types.is_timestamp(arrow_type)
    if not _is_list(arrow_type):
        return False
    item = arrow_type.value_type
    if kind == "list[str]":
        return _is_text(item) or pa.types.is_null(item)
    return pa.types.is_integer(item) or pa.types.is_floating(item)  # vector[d]


def _column_from_arrow(type_name: str, prop: Property, column: pa.ChunkedArray,
                       key: str | None = None) -> pa.ChunkedArray | pa.Array:
    target = prop.arrow_type()
    if not _arrow_kind_fits(prop, column.type):
        return _column_from_values(type_name, prop, column.to_pylist(), key)
    if column.type == target:
        out = column
    else:
        try:
            out = column.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            # out of range, a vector of another dimension, ...: the value path names the row
            return _column_from_values(type_name, prop, column.to_pylist(), key)
    _check_utf8(type_name, prop.name, out)
    if prop.type == "json":
        for index, text in enumerate(out.to_pylist()):
            if text is not None:
                try:
                    json.loads(text)
                except ValueError:
                    raise TypeMismatch("not valid JSON text", type_name=type_name, row=index,
                                       field=prop.name, value=text) from None
    if prop.is_vector:
        flat = pc.list_flatten(out).to_numpy(zero_copy_only=False)
        if flat.size and not np.isfinite(flat).all():
            bad = int(np.flatnonzero(~np.isfinite(flat))[0] // (prop.dimension or 1))
            raise TypeMismatch("vector has NaN or infinite components", type_name=type_name, row=bad,
                               field=prop.name)
    return out


def _check_utf8(type_name: str, field: str, column: pa.ChunkedArray | pa.Array) -> None:
    """Arrow string data built from raw bytes (e.g. by a JSON reader) may hold invalid UTF-8."""
    value_type = column.type.value_type if pa.types.is_list(column.type) else column.type
    if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
        return
    try:
        column.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise TypeMismatch(f"invalid UTF-8 text: {exc}", type_name=type_name, field=field) from None


def normalise_labels(labels: pa.Array) -> pa.Array:
    """Each row's labels sorted and deduplicated (as a set), without a Python loop."""
    flat = pc.list_flatten(labels)
    if len(flat) == 0:
        return labels
    parents = pc.list_parent_indices(labels).to_numpy()
    encoded = pc.dictionary_encode(flat)
    names = np.array(encoded.dictionary.to_pylist(), dtype=object)
    rank = np.argsort(np.argsort(names))  # sorted order of the distinct labels
    codes = rank[encoded.indices.to_numpy()]
    order = np.lexsort((codes, parents))
    parents, codes = parents[order], codes[order]
    keep = np.ones(len(codes), dtype=bool)
    keep[1:] = (parents[1:] != parents[:-1]) | (codes[1:] != codes[:-1])
    parents, codes = parents[keep], codes[keep]
    offsets = np.zeros(len(labels) + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents, minlength=len(labels)), out=offsets[1:])
    values = pa.array(np.sort(names)[codes].tolist(), type=pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _check_sizes(type_name: str, prop: Property, column: pa.ChunkedArray | pa.Array, config: StoreConfig,
                 values: list[Any] | None = None) -> None:
    if prop.type not in ("str", "text", "json") or len(column) == 0:
        return
    if values is not None and len(values) <= 64:
        # small batches (single-row commits): a Python bound is cheaper than an Arrow kernel call
        if max((len(v) for v in values if isinstance(v, str)), default=0) * 4 <= config.value_bytes_max:
            return
    lengths = pc.binary_length(column)
    longest = pc.max(lengths).as_py()
    if longest is not None and longest > config.value_bytes_max:
        row = int(pc.index(lengths, longest).as_py())
        raise ValueTooLarge(f"value of {longest} bytes exceeds value_bytes_max={config.value_bytes_max}",
                            type_name=type_name, row=row, field=prop.name)


def _check_required(type_name: str, prop: Property, column: pa.ChunkedArray | pa.Array, is_key: bool) -> None:
    if not (prop.required or is_key) or column.null_count == 0:
        return
    row = int(pc.index(pc.is_null(column), True).as_py())
    error = MissingKey if is_key else ValidationError
    raise error("missing value for required property", type_name=type_name, row=row, field=prop.name)


def _labels_column(type_name: str, source: pa.Table | list[Mapping[str, Any]], rows: int,
                   config: StoreConfig) -> pa.ChunkedArray | pa.Array:
    if isinstance(source, pa.Table):
        if "_labels" not in source.column_names:
            return pa.array([[]] * rows, type=LABELS_TYPE)
        column = source.column("_labels")
        if not (pa.types.is_null(column.type) or (_is_list(column.type) and (
                _is_text(column.type.value_type) or pa.types.is_null(column.type.value_type)))):
            for index, labels in enumerate(column.to_pylist()):  # judged as dict rows are: names the row
                labels_of_row(type_name, index, {"_labels": labels}, config)
            raise TypeMismatch("_labels must be a list of str", type_name=type_name, field="_labels")
        column = column.cast(LABELS_TYPE)
        column = pc.fill_null(column, pa.scalar([], type=LABELS_TYPE))
        _check_utf8(type_name, "_labels", column)
        flat = pc.list_flatten(column)
        if len(flat) and (flat.null_count or pc.any(pc.equal(pc.utf8_length(flat), 0)).as_py()):
            raise TypeMismatch("_labels must be a list of non-empty str", type_name=type_name, field="_labels")
        column = normalise_labels(column.combine_chunks())
    else:
        values = [labels_of_row(type_name, index, row, config) for index, row in enumerate(source)]
        try:
            return pa.array(values, type=LABELS_TYPE)
        except (pa.ArrowInvalid, UnicodeEncodeError) as exc:
            row = _first_refused_row(values, LABELS_TYPE)
            raise TypeMismatch(f"invalid label text: {exc}", type_name=type_name, row=row,
                               field="_labels") from None
    if len(column) and pc.max(pc.list_value_length(column)).as_py() > config.labels_per_node_max:
        raise ValueTooLarge(f"more than {config.labels_per_node_max} labels on a node", type_name=type_name,
                            field="_labels")
    return column


def labels_of_row(type_name: str, index: int, row: Mapping[str, Any], config: StoreConfig) -> list[str]:
    """A dict row's `_labels` as a sorted set; TypeMismatch or ValueTooLarge naming the row."""
    labels = row.get("_labels") or []
    if isinstance(labels, str) or not all(isinstance(x, str) and x for x in labels):
        raise TypeMismatch("_labels must be a list of non-empty str", type_name=type_name,
                           row=index, field="_labels", value=labels)
    if len(labels) > config.labels_per_node_max:
        raise ValueTooLarge(f"more than {config.labels_per_node_max} labels on a node",
                            type_name=type_name, row=index, field="_labels")
    return sorted(set(labels))


def check_unknown_fields(type_name: str, source: pa.Table | Sequence[Mapping[str, Any]],
                          allowed: set[str]) -> None:
    if isinstance(source, pa.Table):
        unknown = [name for name in source.column_names if name not in allowed]
        if unknown:
            raise ValidationError(f"unknown field {unknown[0]!r}", type_name=type_name, field=unknown[0])
        return
    for index, row in enumerate(source):
        for name in row:
            if name not in allowed:
                raise ValidationError("unknown field", type_name=type_name, row=index, field=str(name))


def _typed_columns(type_name: str, props: dict[str, Property], source: pa.Table | list[Mapping[str, Any]],
                   rows: int, config: StoreConfig, key: str | None) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for name, prop in props.items():
        if isinstance(source, pa.Table):
            if name in source.column_names:
                column = _column_from_arrow(type_name, prop, source.column(name), key)
            else:
                column = pa.nulls(rows, type=prop.arrow_type())
            values = None
        else:
            values = [row.get(name) for row in source]
            column = _column_from_values(type_name, prop, values, key)
        _check_required(type_name, prop, column, name == key)
        _check_sizes(type_name, prop, column, config, values if prop.type != "json" else None)
        columns[name] = column
    return columns


def node_batch(node_type: NodeType, rows: Rows, config: StoreConfig) -> pa.Table:
    """Typed table with one column per property (schema order) and `_labels`; raises ValidationError."""
    source = to_table(rows, node_type.name)
    count = source.num_rows if isinstance(source, pa.Table) else len(source)
    if count > config.transaction_rows_max:
        raise ValueTooLarge(f"{count} rows exceed transaction_rows_max={config.transaction_rows_max}",
                            type_name=node_type.name)
    check_unknown_fields(node_type.name, source, set(node_type.properties) | {"_labels"})
    columns = _typed_columns(node_type.name, node_type.properties, source, count, config, node_type.key)
    columns["_labels"] = _labels_column(node_type.name, source, count, config)
    return pa.table(columns)


@dataclass(frozen=True, slots=True)
class EdgeBatch:
    """Edges as given: endpoint keys and types per row, plus the typed property columns."""

    src_keys: list[Any]
    dst_keys: list[Any]
    src_types: list[str]
    dst_types: list[str]
    properties: pa.Table

    def __len__(self) -> int:
        return len(self.src_keys)


def edge_batch(edge_type: EdgeType, rows: Rows, config: StoreConfig, *, with_properties: bool = True) -> EdgeBatch:
    """Validate edge rows (endpoints as keys, optional src_type/dst_type); raises ValidationError."""
    source = to_table(rows, edge_type.name)
    count = source.num_rows if isinstance(source, pa.Table) else len(source)
    if count > config.transaction_rows_max:
        raise ValueTooLarge(f"{count} rows exceed transaction_rows_max", type_name=edge_type.name)
    allowed = set(edge_type.properties) if with_properties else set()
    check_unknown_fields(edge_type.name, source, allowed | {"src", "dst", "src_type", "dst_type"})
    props = edge_type.properties if with_properties else {}
    columns = _typed_columns(edge_type.name, props, source, count, config, None)
    return EdgeBatch(
        _endpoint_keys(edge_type.name, source, "src", count),
        _endpoint_keys(edge_type.name, source, "dst", count),
        _endpoint_types(edge_type.name, source, "src_type", count, edge_type.sources),
        _endpoint_types(edge_type.name, source, "dst_type", count, edge_type.targets),
        pa.table(columns),
    )


def _field_values(source: pa.Table | list[Mapping[str, Any]], name: str, rows: int) -> list[Any]:
    if isinstance(source, pa.Table):
        return source.column(name).to_pylist() if name in source.column_names else [None] * rows
    return [row.get(name) for row in source]


def _endpoint_keys(type_name: str, source: pa.Table | list[Mapping[str, Any]], end: str, rows: int) -> list[Any]:
    if isinstance(source, pa.Table) and end in source.column_names:
        column = source.column(end)
        _check_utf8(type_name, end, column)
        if column.null_count == 0 and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                                       or pa.types.is_integer(column.type)):
            return column.to_pylist()  # typed, non-null: every value is a valid key
    values = _field_values(source, end, rows)
    for index, value in enumerate(values):
        if value is None or isinstance(value, bool) or not isinstance(value, str | int):
            raise MissingKey(f"edge {end} must be the key (str or int) of a node", type_name=type_name,
                             row=index, field=end, value=value)
    return values


def _endpoint_types(type_name: str, source: pa.Table | list[Mapping[str, Any]], end: str, rows: int,
                    allowed: tuple[str, ...]) -> list[str]:
    absent = isinstance(source, pa.Table) and end not in source.column_names
    if len(allowed) == 1 and (absent or all(not isinstance(row, Mapping) or row.get(end) is None for row in source)):
        return [allowed[0]] * rows
    values = _field_values(source, end, rows)
    out = []
    for index, value in enumerate(values):
        if value is None:
            if len(allowed) != 1:
                raise ValidationError(f"{end} is needed: the edge type allows {list(allowed)}",
                                      type_name=type_name, row=index, field=end)
            value = allowed[0]
        if value not in allowed:
            raise WrongEndpointType(f"{end} {value!r} is not allowed (allowed: {list(allowed)})",
                                    type_name=type_name, row=index, field=end, value=value)
        out.append(value)
    return out
