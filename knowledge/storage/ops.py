"""The operations a WAL record carries, and their binary encoding (the record payload).

Payload: a sequence of ops, each `kind u8 | flags u8 | name_bytes u16 | blob_bytes u32 | name | blob`.
Table-shaped ops carry an Arrow IPC stream (zero-copy to decode, fast to hand to DuckDB), except
small node upserts given as dict rows, which carry `rows.NodeRows` JSON (flag FLAG_ROWS): building
and encoding tiny Arrow objects would dominate a single-row commit. Schema ops carry the complete
resulting schema as JSON so replay needs no earlier state to interpret it.
Ops are resolved: node ids are assigned and edge endpoints are ids, so replay is deterministic.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from knowledge.errors import CorruptionError
from knowledge.storage.rows import NodeRows

_OP = struct.Struct("<BBHI")
FLAG_MAY_REPLACE = 1  # some rows may already exist: delete them before inserting
FLAG_ROWS = 2  # the blob is NodeRows JSON, not an Arrow stream


class OpKind(enum.IntEnum):
    SCHEMA = 1
    UPSERT_NODES = 2
    DELETE_NODES = 3
    UPSERT_EDGES = 4
    DELETE_EDGES = 5
    META = 6  # principals, grants and other catalog rows (JSON)


@dataclass(frozen=True, slots=True)
class Op:
    """One resolved operation: `name` is the node/edge type (or catalog entry); `table`, `rows` or `document`."""

    kind: OpKind
    name: str
    table: pa.Table | None = None
    document: Any = None
    flags: int = 0
    rows: NodeRows | None = None

    @property
    def may_replace(self) -> bool:
        return bool(self.flags & FLAG_MAY_REPLACE)

    def arrow(self) -> pa.Table:
        """The op's rows as an Arrow table (built from `rows` on first use)."""
        if self.table is not None:
            return self.table
        if self.rows is None:
            raise ValueError(f"{self.kind.name} op carries no rows")
        return self.rows.to_table()


_WRITE_OPTIONS = pa.ipc.IpcWriteOptions()  # explicit: pyarrow's defaults consult the environment on every call


def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    writer = pa.ipc.RecordBatchStreamWriter(sink, table.schema, options=_WRITE_OPTIONS)
    writer.write_table(table)
    writer.close()
    return sink.getvalue().to_pybytes()


def encode_ops(ops: list[Op]) -> bytes:
    """The payload bytes of a record holding `ops`."""
    parts: list[bytes] = []
    for op in ops:
        name = op.name.encode()
        flags = op.flags
        if flags & FLAG_ROWS:
            raise ValueError("FLAG_ROWS is set by the encoder, not by callers")
        if op.kind in (OpKind.SCHEMA, OpKind.META):
            blob = json.dumps(op.document, separators=(",", ":")).encode()
        elif op.rows is not None:
            blob = op.rows.encode()
            flags |= FLAG_ROWS
        else:
            assert op.table is not None
            blob = _table_bytes(op.table)
        parts.append(_OP.pack(op.kind, flags, len(name), len(blob)))
        parts.append(name)
        parts.append(blob)
    return b"".join(parts)


def decode_ops(payload: bytes, lsn: int = 0) -> list[Op]:
    """The ops in a record payload; a malformed payload raises CorruptionError."""
    view = memoryview(payload)
    ops: list[Op] = []
    offset = 0
    try:
        while offset < len(view):
            kind, flags, name_bytes, blob_bytes = _OP.unpack_from(view, offset)
            offset += _OP.size
            name = bytes(view[offset:offset + name_bytes]).decode()
            offset += name_bytes
            blob = view[offset:offset + blob_bytes]
            if len(blob) != blob_bytes:
                raise ValueError("op runs past the payload")
            offset += blob_bytes
            op_kind = OpKind(kind)
            if op_kind in (OpKind.SCHEMA, OpKind.META):
                ops.append(Op(op_kind, name, document=json.loads(bytes(blob)), flags=flags))
            elif flags & FLAG_ROWS:
                if op_kind != OpKind.UPSERT_NODES:
                    raise ValueError(f"{op_kind.name} op with node rows")
                ops.append(Op(op_kind, name, rows=NodeRows.decode(name, blob), flags=flags & ~FLAG_ROWS))
            else:
                table = pa.ipc.open_stream(pa.py_buffer(bytes(blob))).read_all()
                ops.append(Op(op_kind, name, table=table, flags=flags))
    except (ValueError, struct.error, pa.ArrowInvalid) as exc:
        raise CorruptionError(f"record {lsn} holds an undecodable payload: {exc}") from exc
    return ops
