"""Small node batches kept as Python rows: validated exactly like the Arrow path, logged as compact
JSON, and turned into Arrow only when the DuckDB applier needs a table.

A single-row commit spends most of its CPU building and encoding tiny Arrow objects; for batches
of at most SMALL_ROWS_MAX dict rows this module does the same checks in plain Python. Values are
held in a canonical form that survives the WAL round trip unchanged:
str, text, json -> str; int -> int; float -> float; bool -> bool; timestamp -> int microseconds
since the epoch (UTC); list[str] -> list of str; vector[d] -> float32 numpy array (base64 in the WAL).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from knowledge.config import StoreConfig
from knowledge.errors import MissingKey, TypeMismatch, ValidationError, ValueTooLarge
from knowledge.storage.schema import NodeType, Property, arrow_type_of
from knowledge.storage.values import (
    LABELS_TYPE,
    check_unknown_fields,
    convert_value,
    labels_of_row,
    mismatch,
    vector_array,
)

SMALL_ROWS_MAX = 64  # up to this many dict rows take the Python path
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)
_TEXT_KINDS = frozenset(("str", "text", "json"))
_EXACT_TYPES: dict[str, type] = {"str": str, "text": str, "int": int, "float": float, "bool": bool}
_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps builds one per call with options


@dataclass(slots=True)
class NodeRows:
    """Validated node rows of one type: one list per property (schema order), labels, and ids once resolved."""

    type_name: str
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    columns: list[list[Any]]
    labels: list[list[str]]
    ids: list[int] | None = None
    _table: pa.Table | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def column(self, name: str) -> list[Any]:
        return self.columns[self.names.index(name)]

    def take(self, rows: list[int]) -> NodeRows:
        """The rows at `rows` (positions), in that order."""
        return NodeRows(self.type_name, self.names, self.kinds, [[col[i] for i in rows] for col in self.columns],
                        [self.labels[i] for i in rows], None if self.ids is None else [self.ids[i] for i in rows])

    def with_ids(self, ids: list[int]) -> NodeRows:
        if len(ids) != len(self):
            raise ValueError(f"{len(ids)} ids for {len(self)} rows")
        return NodeRows(self.type_name, self.names, self.kinds, self.columns, self.labels, list(ids))

    def to_table(self) -> pa.Table:
        """The Arrow table the Arrow path builds for the same rows (`_id` first once resolved); cached."""
        if self._table is None:
            arrays: dict[str, pa.Array] = {}
            if self.ids is not None:
                arrays["_id"] = pa.array(self.ids, type=pa.int64())
            for name, kind, values in zip(self.names, self.kinds, self.columns, strict=True):
                arrays[name] = _arrow_column(kind, values)
            arrays["_labels"] = pa.array(self.labels, type=LABELS_TYPE)
            self._table = pa.table(arrays)
        return self._table

    # -- WAL form ---------------------------------------------------------------------------------
    def encode(self) -> bytes:
        """The JSON bytes of these rows (vectors as base64 little-endian float32)."""
        columns = self.columns
        if any(kind.startswith("vector") for kind in self.kinds):
            columns = [_encode_column(kind, values) for kind, values in zip(self.kinds, columns, strict=True)]
        document = {"n": self.names, "k": self.kinds, "c": columns, "l": self.labels, "i": self.ids}
        return _JSON.encode(document).encode()

    @classmethod
    def decode(cls, type_name: str, blob: bytes | memoryview) -> NodeRows:
        """Rows from `encode` output; raises ValueError when the bytes are not such a document."""
        try:
            document = json.loads(bytes(blob))
            names, kinds, labels, ids = tuple(document["n"]), tuple(document["k"]), document["l"], document["i"]
            columns = [_decode_column(kind, values) for kind, values in zip(kinds, document["c"], strict=True)]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"undecodable node rows: {exc}") from None
        if len(names) != len(columns) or any(len(c) != len(labels) for c in columns) or (
                ids is not None and len(ids) != len(labels)):
            raise ValueError("node rows of unequal lengths")
        return cls(type_name, names, kinds, columns, labels, ids)


def _encode_column(kind: str, values: list[Any]) -> list[Any]:
    if not kind.startswith("vector"):
        return values
    return [None if v is None else base64.b64encode(v.astype("<f4", copy=False).tobytes()).decode("ascii")
            for v in values]


def _decode_column(kind: str, values: list[Any]) -> list[Any]:
    if not kind.startswith("vector"):
        return list(values)
    return [None if v is None else np.frombuffer(base64.b64decode(v), dtype="<f4").astype(np.float32) for v in values]


def _arrow_column(kind: str, values: list[Any]) -> pa.Array:
    arrow_type = arrow_type_of(kind)
    if kind.startswith("vector"):
        return pa.array([None if v is None else v.tolist() for v in values], type=arrow_type)
    return pa.array(values, type=arrow_type)


# -- validation -------------------------------------------------------------------------------------
def is_small(rows: Any) -> bool:
    """Whether `rows` is a short list or tuple of dicts, the input the Python path takes."""
    return isinstance(rows, list | tuple) and len(rows) <= SMALL_ROWS_MAX and all(type(r) is dict for r in rows)


def node_rows(node_type: NodeType, rows: Sequence[Mapping[str, Any]], config: StoreConfig) -> NodeRows:
    """Validate dict rows as `values.node_batch` would (same errors, same row and field); return NodeRows."""
    type_name = node_type.name
    check_unknown_fields(type_name, rows, set(node_type.properties) | {"_labels"})
    names, kinds, columns = [], [], []
    for name, prop in node_type.properties.items():
        values = [row.get(name) for row in rows]
        columns.append(_column(type_name, prop, values, config, name == node_type.key))
        names.append(name)
        kinds.append(prop.type)
    labels = [labels_of_row(type_name, index, row, config) for index, row in enumerate(rows)]
    for index, row_labels in enumerate(labels):
        for label in row_labels:
            _utf8_bytes(type_name, index, "_labels", label)
    return NodeRows(type_name, tuple(names), tuple(kinds), columns, labels)


def _column(type_name: str, prop: Property, values: list[Any], config: StoreConfig, is_key: bool) -> list[Any]:
    kind = prop.type
    exact = _EXACT_TYPES.get(kind)
    out: list[Any] = []
    for index, value in enumerate(values):
        if exact is not None and type(value) is exact:  # already canonical: nothing to convert
            out.append(value)
            continue
        try:
            if kind.startswith("vector"):
                out.append(None if value is None else vector_array(prop, value))
            else:
                out.append(convert_value(prop, value))
        except (TypeError, ValueError, OverflowError) as exc:
            raise mismatch(type_name, prop, index, value, exc, prop.name if is_key else None) from None
    for index, value in enumerate(out):  # what Arrow would refuse when building the column
        if value is None:
            continue
        if kind == "int" and not INT64_MIN <= value <= INT64_MAX:
            raise TypeMismatch(f"bad value for int property: {value} does not fit in 64 bits",
                               type_name=type_name, row=index, field=prop.name, value=value)
        if kind == "list[str]":
            for item in value:
                _utf8_bytes(type_name, index, prop.name, item)
        elif kind == "timestamp":
            out[index] = (value - EPOCH) // MICROSECOND
    if (prop.required or is_key) and None in out:
        error = MissingKey if is_key else ValidationError
        raise error("missing value for required property", type_name=type_name, row=out.index(None),
                    field=prop.name)
    if kind in _TEXT_KINDS:
        lengths = [0 if v is None else _utf8_bytes(type_name, i, prop.name, v) for i, v in enumerate(out)]
        longest = max(lengths, default=0)
        if longest > config.value_bytes_max:
            raise ValueTooLarge(f"value of {longest} bytes exceeds value_bytes_max={config.value_bytes_max}",
                                type_name=type_name, row=lengths.index(longest), field=prop.name)
    return out


def _utf8_bytes(type_name: str, row: int, field_name: str, text: str) -> int:
    """The UTF-8 length of `text`; TypeMismatch for text that has no UTF-8 form (lone surrogates)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise TypeMismatch(f"invalid UTF-8 text: {exc}", type_name=type_name, row=row, field=field_name) from None
