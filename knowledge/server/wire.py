"""Values on the wire, both directions: keys, where-clauses, column lists, Arrow tables, write rows,
principals and retrieval results (knowledge.v1 messages <-> the Python values of the embedded API)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from knowledge.errors import InvalidArgument, InvalidQuery, ValidationError
from knowledge.server.v1 import knowledge_pb2 as pb

_IPC_OPTIONS = pa.ipc.IpcWriteOptions()
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
WHERE_DEPTH_MAX = 32  # nested "$or" levels a request may carry


# -- keys ------------------------------------------------------------------------------------------
def key_to_proto(key: Any) -> pb.Key:
    """A node key (str or int) as a Key; InvalidArgument for anything else."""
    if isinstance(key, bool):
        raise InvalidArgument(f"a node key is a str or an int, got {key!r}")
    if isinstance(key, str):
        return pb.Key(text=key)
    if isinstance(key, int | np.integer):
        if not INT64_MIN <= int(key) <= INT64_MAX:
            raise InvalidArgument(f"int key {key} is outside the int64 range")
        return pb.Key(integer=int(key))
    raise InvalidArgument(f"a node key is a str or an int, got {type(key).__name__} {key!r}")


def key_from_proto(key: pb.Key) -> Any:
    kind = key.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("the request names no key (Key.text or Key.integer)")
    return key.text if kind == "text" else key.integer


# -- JSON values -------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None


# -- where and columns --------------------------------------------------------------------------------
# A where-filter travels as Conditions that nest through "$or" (see the Condition message): the client
# encodes every form the embedded API takes, malformed ones included, and the server rebuilds the same
# Python value, so the embedded parser (knowledge.session_where) judges it and raises the same errors.
OR_KEY = "$or"
NOT_A_FILTER = ("where must be a dict mapping property names to a value or to (operator, value), "
                "got {kind}")  # knowledge.session_where.parse_where's message


def _value_json(name: Any, value: Any) -> str:
    try:
        return dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidQuery(f"where {name!r} {value!r}: {exc}", property=name, value=value) from None


def _condition_to_proto(name: Any, condition: Any) -> pb.Condition:
    if name == OR_KEY:
        if isinstance(condition, str | bytes | Mapping) or not isinstance(condition, Iterable):
            return pb.Condition(property=OR_KEY, value_json=_value_json(name, condition))
        return pb.Condition(property=OR_KEY, operator="or", any_of=[_filter_to_proto(b) for b in condition])
    if not isinstance(name, str):
        raise InvalidQuery(f"where names property {name!r}, which is not a str", property=name)
    if isinstance(condition, tuple):
        if len(condition) == 2 and isinstance(condition[0], str):
            return pb.Condition(property=name, operator=condition[0], value_json=_value_json(name, condition[1]))
        return pb.Condition(property=name, as_tuple=True, value_json=_value_json(name, list(condition)))
    return pb.Condition(property=name, operator="=", value_json=_value_json(name, condition))


def _filter_to_proto(branch: Any) -> pb.Filter:
    if isinstance(branch, Mapping):
        return pb.Filter(all=[_condition_to_proto(n, c) for n, c in branch.items()])
    return pb.Filter(other_json=_value_json(OR_KEY, branch))


def where_to_proto(where: Mapping[str, Any] | None) -> list[pb.Condition]:
    """A where-filter (any form knowledge.Session.scan/search accept: comparisons, in, between, IS NULL,
    nested "$or") as Conditions."""
    if not where:
        return []
    if not isinstance(where, Mapping):
        raise InvalidQuery(NOT_A_FILTER.format(kind=type(where).__name__))
    return [_condition_to_proto(name, condition) for name, condition in where.items()]


def _condition_from_proto(condition: pb.Condition, depth: int) -> Any:
    if condition.property == OR_KEY and condition.operator == "or":
        return [_filter_from_proto(branch, depth + 1) for branch in condition.any_of]
    value = loads(condition.value_json, f"the where value of {condition.property!r}")
    if condition.as_tuple:
        if not isinstance(value, list):
            raise InvalidArgument(f"where {condition.property!r}: as_tuple takes a JSON array, got {value!r}")
        return tuple(value)
    if condition.property == OR_KEY:
        return value
    if condition.operator == "in" and not isinstance(value, list):
        raise InvalidArgument(f"where {condition.property!r} 'in' takes a JSON array, got {value!r}")
    if condition.operator == "between" and isinstance(value, list):
        value = tuple(value)  # the documented (low, high) form, as errors quote it
    return (condition.operator or "=", value)


def _filter_from_proto(branch: pb.Filter, depth: int) -> Any:
    if depth > WHERE_DEPTH_MAX:
        raise InvalidArgument(f"where nests {OR_KEY!r} more than {WHERE_DEPTH_MAX} deep")
    if branch.other_json:
        return loads(branch.other_json, f"a {OR_KEY!r} branch")
    return _conditions_from_proto(branch.all, depth)


def _conditions_from_proto(conditions: Iterable[pb.Condition], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for condition in conditions:
        if condition.property in out:
            raise InvalidArgument(f"where names property {condition.property!r} twice")
        out[condition.property] = _condition_from_proto(condition, depth)
    return out


def where_from_proto(conditions: Iterable[pb.Condition]) -> dict[str, Any] | None:
    """The where-filter the client sent (None when empty)."""
    return _conditions_from_proto(conditions, 0) or None


def columns_to_proto(columns: Iterable[str] | None) -> pb.Columns:
    if columns is None:
        return pb.Columns(all=True)
    if isinstance(columns, str):
        raise InvalidArgument(f"columns must be a list of property names, got the str {columns!r}")
    return pb.Columns(names=[str(c) for c in columns])


def columns_from_proto(columns: pb.Columns, present: bool) -> list[str] | None:
    """None (every column) when the request set `all` or left `columns` out."""
    if not present or columns.all:
        return None
    return list(columns.names)


# -- tables -------------------------------------------------------------------------------------------
def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_ipc(data: bytes, what: str = "table") -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise InvalidArgument(f"the {what} is not a readable Arrow IPC stream: {exc}") from None


def row_to_proto(row: dict[str, Any], json_columns: list[str]) -> pb.RowReply:
    """A get() row: one Arrow row, `json_columns` (json properties) carried as JSON text."""
    encoded = {k: (dumps(v) if k in json_columns and v is not None else v) for k, v in row.items()}
    return pb.RowReply(arrow_ipc=table_to_ipc(pa.Table.from_pylist([encoded])), json_columns=json_columns)


def row_from_proto(reply: pb.RowReply) -> dict[str, Any]:
    row = table_from_ipc(reply.arrow_ipc, "row").to_pylist()[0]
    for name in reply.json_columns:
        if row.get(name) is not None:
            row[name] = json.loads(row[name])
    return row


# -- write rows ---------------------------------------------------------------------------------------
def rows_to_proto(rows: Any, type_name: str) -> pb.Rows:
    """Caller rows as a Rows message: Arrow tables, record batches and pandas frames as Arrow IPC, dict rows
    as JSON (datetimes as ISO text, numpy arrays as lists); dict rows JSON cannot hold go as Arrow."""
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    if type(rows).__name__ == "DataFrame" and hasattr(rows, "to_dict"):
        rows = pa.Table.from_pandas(rows, preserve_index=False)
    if isinstance(rows, pa.Table):
        return pb.Rows(arrow_ipc=table_to_ipc(rows))
    if isinstance(rows, Mapping):
        rows = [rows]
    if isinstance(rows, str | bytes) or not isinstance(rows, Iterable):
        raise ValidationError(f"expected rows as a list of dicts, an Arrow table or a pandas DataFrame, "
                              f"got {type(rows).__name__}", type_name=type_name)
    rows = list(rows)
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValidationError(f"expected a dict per row, got {type(row).__name__}", type_name=type_name,
                                  row=index)
    try:
        return pb.Rows(json=dumps([dict(r) for r in rows]))
    except (TypeError, ValueError):
        return pb.Rows(arrow_ipc=table_to_ipc(pa.Table.from_pylist([dict(r) for r in rows])))


def rows_from_proto(rows: pb.Rows, type_name: str) -> Any:
    kind = rows.WhichOneof("payload")
    if kind == "arrow_ipc":
        return table_from_ipc(rows.arrow_ipc, f"rows of {type_name!r}")
    if kind == "json":
        value = loads(rows.json, f"the rows of {type_name!r}")
        if not isinstance(value, list):
            raise ValidationError("JSON rows must be an array of objects", type_name=type_name)
        return value
    raise ValidationError("the write item carries no rows (Rows.arrow_ipc or Rows.json)", type_name=type_name)


# -- principals ---------------------------------------------------------------------------------------
def principal_to_proto(principal: Any) -> pb.Principal:
    return pb.Principal(name=principal.name, read=sorted(principal.read), write=sorted(principal.write),
                        admin=principal.admin)


def principal_from_proto(message: pb.Principal) -> Any:
    from knowledge import Principal
    return Principal(message.name, frozenset(message.read), frozenset(message.write), message.admin)


# -- retrieval results --------------------------------------------------------------------------------
def _result_default(value: Any) -> Any:
    fields = getattr(type(value), "__dataclass_fields__", None)
    if fields is not None:  # the result's dataclasses, as the dicts dataclasses.asdict makes, without its deep copy
        attributes = getattr(value, "__dict__", None)
        if attributes is not None and len(attributes) == len(fields):
            return attributes  # its fields and nothing else: encoded as they are, no dict built per object
        return {name: getattr(value, name) for name in fields}
    return _json_default(value)


def result_to_json(result: Any) -> str:
    """A RetrievalResult as JSON (what dataclasses.asdict and dumps make, in a fifth of the time)."""
    return json.dumps(result, default=_result_default, separators=(",", ":"))


def result_from_json(text: str) -> Any:
    from knowledge.graphrag import (
        RetrievalResult,
        RetrievedChunk,
        RetrievedDocument,
        RetrievedEdge,
        RetrievedEntity,
    )
    data = json.loads(text)
    data["chunks"] = [RetrievedChunk(**c) for c in data["chunks"]]
    data["documents"] = [RetrievedDocument(**d) for d in data["documents"]]
    data["entities"] = [RetrievedEntity(**e) for e in data["entities"]]
    data["edges"] = [RetrievedEdge(**e) for e in data["edges"]]
    return RetrievalResult(**data)


def params_to_json(params: Any) -> str:
    return "" if params is None else dumps(dataclasses.asdict(params))


def params_from_json(text: str) -> Any:
    if not text:
        return None
    from knowledge.graphrag import GraphParams
    fields = loads(text, "params_json")
    if not isinstance(fields, dict):
        raise InvalidArgument("params_json must be a JSON object of GraphParams fields")
    try:
        return GraphParams(**fields)
    except TypeError as exc:
        raise InvalidArgument(f"params_json: {exc}") from None
