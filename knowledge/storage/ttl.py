"""TTL policies and per-node expiry: what expires when, as the WAL records it.

A policy (`store.set_ttl("AgentLog", expire_after="7d", on="created_at")`) is a META record named
`ttl:<type>` whose document is the policy (or {"dropped": true}), logged, replicated and persisted like
the principal catalog. Without `on=`, a node's clock starts at its last write: every upsert of a type
with a node policy (or of a node given `_expires_at`) carries a stamp, a META op `ttl-stamp:<type>` in
the same record, with the node ids, the write time and the explicit deadlines. A node's clock starts at the later of its
last write and the time its type's policy was first set (`set_at`), so nodes written before the policy
count from then. A node's own `_expires_at` wins over its type's policy. Edge types take policies too (their
stamps carry (src, dst) pairs); the sweeper deletes their expired edges.

`ExpiryTracker` holds the policies and stamps in memory and answers which nodes are past their deadline
at a given time: the mask that `knowledge/access/visibility.py` takes out of every read, so an expired
node is never read even before the sweeper (`knowledge/storage/sweeper.py`) deletes it. The stamps
persist in the DuckDB tables `_ttl` (nodes) and `_ttl_edges` (edges), applied with the rest of a record.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from knowledge.errors import InvalidArgument, SchemaError, UnknownType
from knowledge.storage.ops import Op, OpKind

if TYPE_CHECKING:
    import duckdb

    from knowledge.storage.directory import NodeDirectory
    from knowledge.storage.resolve import Resolver
    from knowledge.storage.schema import Schema

POLICY_PREFIX = "ttl:"
STAMP_PREFIX = "ttl-stamp:"
ON_TYPES = ("timestamp", "int", "float")  # an `on=` property: a timestamp, or epoch seconds
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(value: str | int | float | dt.timedelta) -> float:
    """Seconds from "90s", "15m", "12h", "7d", "2w", a number of seconds or a timedelta; InvalidArgument
    unless it is a positive finite duration."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidArgument(f"expire_after must be a duration such as '7d', '12h' or seconds, got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise InvalidArgument(f"expire_after must be a duration such as '7d', '12h', '30m', '90s' or a number of "
                              f"seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgument(f"expire_after must be a positive duration, got {value!r}")
    return seconds


def epoch_seconds(value: Any, what: str = "_expires_at") -> float | None:
    """A deadline as seconds since the epoch: a datetime or ISO 8601 string (naive is UTC), or epoch seconds;
    None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if hasattr(value, "to_pydatetime"):  # a pandas Timestamp
        return epoch_seconds(value.to_pydatetime(), what)
    if isinstance(value, str):  # ISO 8601, as JSONL and CSV files carry it
        try:
            return epoch_seconds(dt.datetime.fromisoformat(value), what)
        except ValueError:
            pass
    raise InvalidArgument(f"{what} must be a datetime, an ISO 8601 string or seconds since the epoch, got "
                          f"{type(value).__name__} {value!r}")


EXPIRES_FIELD = "_expires_at"


def split_deadlines(rows: Any) -> tuple[Any, list[float | None] | None]:
    """(rows without their `_expires_at` field, the deadlines in row order) — None when no row has one."""
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    if isinstance(rows, pa.Table):
        if EXPIRES_FIELD not in rows.column_names:
            return rows, None
        values = rows.column(EXPIRES_FIELD).to_pylist()
        return rows.drop_columns([EXPIRES_FIELD]), [epoch_seconds(v) for v in values]
    if type(rows).__name__ == "DataFrame" and hasattr(rows, "drop"):
        if EXPIRES_FIELD not in rows.columns:
            return rows, None
        import pandas as pd  # a DataFrame was given: pandas is there
        values = [None if pd.isna(v) else v for v in rows[EXPIRES_FIELD].tolist()]
        return rows.drop(columns=[EXPIRES_FIELD]), [epoch_seconds(v) for v in values]
    if isinstance(rows, dict):
        rows = [rows]
    elif not isinstance(rows, list | tuple) and not isinstance(rows, str | bytes) and hasattr(rows, "__iter__"):
        rows = list(rows)
    if not isinstance(rows, list | tuple) or not any(isinstance(r, dict) and EXPIRES_FIELD in r for r in rows):
        return rows, None
    deadlines = [epoch_seconds(r.get(EXPIRES_FIELD)) if isinstance(r, dict) else None for r in rows]
    return [{k: v for k, v in r.items() if k != EXPIRES_FIELD} if isinstance(r, dict) else r for r in rows], deadlines


@dataclass(frozen=True, slots=True)
class TtlPolicy:
    """One type's policy: rows expire `expire_after_s` after their `on` property, or after their last write."""

    type_name: str
    kind: str  # "node" or "edge"
    expire_after_s: float
    on: str | None
    set_at: float  # when the policy was set: the clock start of rows written before it

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "kind": self.kind, "expire_after_s": self.expire_after_s, "on": self.on,
                "set_at": self.set_at}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> TtlPolicy:
        return cls(document["type"], document["kind"], float(document["expire_after_s"]), document.get("on"),
                   float(document["set_at"]))


def policy_document(schema: Schema, type_name: str, expire_after: Any, on: str | None, now: float,
                    previous: TtlPolicy | None = None) -> dict[str, Any]:
    """The META document `set_ttl` writes (validated against `schema`); {"dropped": true} when expire_after is
    None. A policy that replaces one keeps its `set_at`: changing a duration does not restart the clocks."""
    if not isinstance(type_name, str):
        raise InvalidArgument(f"a type name is a str, got {type(type_name).__name__} {type_name!r}")
    if type_name in schema.nodes:
        kind, props = "node", schema.nodes[type_name].properties
    elif type_name in schema.edges:
        kind, props = "edge", schema.edges[type_name].properties
    else:
        raise UnknownType(f"no node or edge type {type_name!r} to set a TTL on", type_name=type_name)
    if expire_after is None:
        if on is not None:
            raise InvalidArgument("on= needs expire_after (expire_after=None removes the policy)")
        return {"type": type_name, "dropped": True}
    seconds = parse_duration(expire_after)
    if on is not None:
        if not isinstance(on, str) or on not in props:
            raise SchemaError(f"{kind} type {type_name!r} has no property {on!r} to count expiry from")
        if props[on].type not in ON_TYPES:
            raise SchemaError(f"{kind} type {type_name!r}: on={on!r} is a {props[on].type} property; expiry counts "
                              f"from a {' / '.join(ON_TYPES)} property (int and float: seconds since the epoch)")
    return TtlPolicy(type_name, kind, seconds, on, float(now if previous is None else previous.set_at)).to_dict()


def _grown(array: np.ndarray, size: int, fill: float) -> np.ndarray:
    if size <= len(array):
        return array
    out = np.full(max(size, 2 * len(array), 1024), fill, dtype=array.dtype)
    out[:len(array)] = array
    return out


class ExpiryTracker:
    """Policies and node stamps in memory, and the mask of nodes past their deadline (see the module).

    Changed under the engine's state lock (as records are applied); `refresh` may run from any read.
    """

    def __init__(self, clock: Callable[[], float], lock: Any = None) -> None:
        self.clock = clock
        self.policies: dict[str, TtlPolicy] = {}
        self.written = np.zeros(0, dtype=np.float64)   # last write time per node id (NaN: before any stamp)
        self.explicit = np.zeros(0, dtype=np.float64)  # an explicit `_expires_at` per node id (inf: none)
        self.explicit_types: set[str] = set()  # types some node of which was given an explicit deadline
        self.version = 0  # bumped by every policy or stamp applied
        self.swept_nodes = 0  # nodes (and entities) the sweeper deleted since open
        self.swept_edges = 0
        self.last_sweep_at: float | None = None
        self._lock = lock if lock is not None else threading.RLock()  # the engine's state lock
        self._seen: tuple[int, int, int, int] = (-1, -1, -1, -1)  # (directory, its version, own version, capacity)
        self._next = math.inf  # the earliest deadline still ahead when the mask was computed
        self._oldest = math.inf  # the earliest deadline among the expired nodes of the mask

    @property
    def active(self) -> bool:
        """Whether anything can expire (a node policy, or an explicit deadline)."""
        return any(p.kind == "node" for p in self.policies.values()) or bool(self.explicit_types)

    def node_policy(self, type_name: str) -> TtlPolicy | None:
        policy = self.policies.get(type_name)
        return policy if policy is not None and policy.kind == "node" else None

    # -- applying records ------------------------------------------------------------------------
    def apply_policy(self, name: str, document: dict[str, Any]) -> None:
        type_name = name[len(POLICY_PREFIX):]
        if document.get("dropped"):
            self.policies.pop(type_name, None)
        else:
            self.policies[type_name] = TtlPolicy.from_dict(document)
        self.version += 1

    def apply_stamp(self, name: str, document: dict[str, Any]) -> None:
        if document.get("edges"):
            return  # edge stamps live in the tables only: the sweeper reads them there
        ids = np.asarray(document["ids"], dtype=np.int64)
        if not len(ids):
            return
        top = int(ids.max()) + 1
        self.written = _grown(self.written, top, math.nan)
        self.explicit = _grown(self.explicit, top, math.inf)
        self.written[ids] = float(document["at"])
        deadlines = document.get("exp")
        if deadlines is None:
            self.explicit[ids] = math.inf
        else:
            self.explicit[ids] = [math.inf if d is None else float(d) for d in deadlines]
            self.explicit_types.add(name[len(STAMP_PREFIX):])
        self.version += 1

    def load(self, ids: np.ndarray, written: np.ndarray, explicit: np.ndarray, types: set[str]) -> None:
        """The stamps the tables hold (at open)."""
        if len(ids):
            top = int(ids.max()) + 1
            self.written = _grown(self.written, top, math.nan)
            self.explicit = _grown(self.explicit, top, math.inf)
            self.written[ids] = written
            self.explicit[ids] = explicit
        self.explicit_types |= types
        self.version += 1

    # -- deadlines ---------------------------------------------------------------------------------
    def deadlines(self, directory: NodeDirectory, columns: dict[str, Any]) -> np.ndarray:
        """The deadline (epoch seconds, inf: never) of every node id below the directory's capacity."""
        size = directory.capacity
        out = np.full(size, math.inf)
        type_of = directory.type_of
        for type_name, policy in self.policies.items():
            code = directory.type_codes.get(type_name)
            if policy.kind != "node" or code is None:
                continue
            ids = np.flatnonzero(type_of == code)
            if not len(ids):
                continue
            if policy.on is not None:
                column = columns[type_name].columns.get(policy.on) if type_name in columns else None
                base = np.full(len(ids), math.inf)
                if column is not None:
                    inside = ids < len(column.values)
                    known = np.zeros(len(ids), dtype=bool)
                    known[inside] = column.valid[ids[inside]]
                    values = column.values[ids[known]].astype(np.float64)
                    base[known] = values / 1e6 if column.prop_type == "timestamp" else values
            else:
                base = np.full(len(ids), policy.set_at)  # the later of the last write and the policy's setting
                inside = ids < len(self.written)
                base[inside] = np.fmax(self.written[ids[inside]], policy.set_at)
            out[ids] = base + policy.expire_after_s
        if self.explicit_types and len(self.explicit):
            n = min(size, len(self.explicit))
            given = self.explicit[:n]
            out[:n] = np.where(np.isfinite(given), given, out[:n])  # a node's own deadline wins over its type's
        out[~directory.alive[:size]] = math.inf
        return out

    def refresh(self, directory: NodeDirectory, columns: dict[str, Any], now: float | None = None) -> None:
        """Bring `directory.expired` (the mask visibility takes out) up to the clock: recomputed when a record
        changed the directory or the stamps, or a deadline passed; the directory's version moves only when
        the mask changed (so visibility caches stay valid otherwise)."""
        if not self.active:
            if directory.expired is not None:
                with self._lock:
                    directory.expired = None
                    directory.version += 1
            return
        now = self.clock() if now is None else now
        if (id(directory), directory.version, self.version, directory.capacity) == self._seen and now < self._next:
            return
        with self._lock:
            deadlines = self.deadlines(directory, columns)
            mask = deadlines <= now
            ahead = deadlines[~mask]
            self._next = float(ahead.min()) if len(ahead) else math.inf
            passed = deadlines[mask]
            self._oldest = float(passed.min()) if len(passed) else math.inf
            old = directory.expired
            if len(passed) == 0:
                mask = None
            if not (old is None and mask is None) and (old is None or mask is None or not np.array_equal(old, mask)):
                directory.expired = mask
                directory.version += 1
            self._seen = (id(directory), directory.version, self.version, directory.capacity)

    def expired_ids(self, directory: NodeDirectory, columns: dict[str, Any], now: float) -> np.ndarray:
        """The live node ids past their deadline at `now`, in id order."""
        if not self.active:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.deadlines(directory, columns) <= now).astype(np.int64)

    def lag_s(self, now: float | None = None) -> float:
        """How long the oldest expired node not yet deleted has been past its deadline (0 when none)."""
        now = self.clock() if now is None else now
        return max(0.0, now - self._oldest) if math.isfinite(self._oldest) else 0.0

    def describe(self) -> dict[str, Any]:
        return {name: {"kind": p.kind, "expire_after_s": p.expire_after_s, "on": p.on, "set_at": p.set_at}
                for name, p in sorted(self.policies.items())}


# -- stamps (written by Store.commit, under the stage lock) -------------------------------------------------
def stamp_ops(tracker: ExpiryTracker, ops: list[Op], resolver: Resolver,
              explicit: list[tuple[str, tuple[list[Any], list[float | None]]]], now: float) -> list[Op]:
    """`ops` followed by the stamps they need: one per node upsert of a type with a node policy, with
    explicit deadlines (`explicit`: (type, (keys, deadlines)) as the transaction collected them) or of a type
    some node of which holds one; one per edge upsert of a type with an edge policy without `on=`."""
    given: dict[str, dict[int, float | None]] = {}
    for type_name, (keys, deadlines) in explicit:
        slot = given.setdefault(type_name, {})
        for key, deadline in zip(keys, deadlines, strict=True):
            node = resolver.lookup(type_name, key)
            if node is not None:
                slot[node] = deadline
    stamps: list[Op] = []
    for op in ops:
        policy = tracker.policies.get(op.name)
        if op.kind == OpKind.UPSERT_NODES:
            if policy is None and op.name not in given and op.name not in tracker.explicit_types:
                continue
            ids = list(op.rows.ids) if op.rows is not None and op.rows.ids is not None else \
                op.arrow().column("_id").to_pylist()
            document: dict[str, Any] = {"ids": ids, "at": now}
            slot = given.get(op.name)
            if slot is not None or op.name in tracker.explicit_types:
                document["exp"] = [None if slot is None else slot.get(node) for node in ids]
            stamps.append(Op(OpKind.META, STAMP_PREFIX + op.name, document=document))
        elif op.kind == OpKind.UPSERT_EDGES and policy is not None and policy.on is None:
            assert op.table is not None
            stamps.append(Op(OpKind.META, STAMP_PREFIX + op.name, document={
                "edges": True, "src": op.table.column("_src").to_pylist(),
                "dst": op.table.column("_dst").to_pylist(), "at": now}))
    return ops + stamps if stamps else ops


# -- the tables' side (called by knowledge/storage/tables.py inside its apply transaction) ------------------
def apply_stamp_sql(con: duckdb.DuckDBPyConnection, op: Op) -> None:
    """Write a stamp into `_ttl` / `_ttl_edges` (created on first use), replacing the rows it restamps."""
    document = op.document
    if document.get("edges"):
        con.execute("CREATE TABLE IF NOT EXISTS _ttl_edges (type VARCHAR NOT NULL, src BIGINT NOT NULL, "
                    "dst BIGINT NOT NULL, written_at DOUBLE NOT NULL)")
        n = len(document["src"])
        batch = pa.table({"type": pa.array([op.name[len(STAMP_PREFIX):]] * n, type=pa.string()),
                          "src": pa.array(document["src"], type=pa.int64()),
                          "dst": pa.array(document["dst"], type=pa.int64()),
                          "written_at": pa.array([float(document["at"])] * n, type=pa.float64())})
        con.register("_stamp", batch)
        try:
            con.execute("DELETE FROM _ttl_edges t USING _stamp s WHERE t.type = s.type AND t.src = s.src "
                        "AND t.dst = s.dst")
            con.execute("INSERT INTO _ttl_edges SELECT * FROM _stamp")
        finally:
            con.unregister("_stamp")
        return
    con.execute("CREATE TABLE IF NOT EXISTS _ttl (id BIGINT NOT NULL, type VARCHAR NOT NULL, "
                "written_at DOUBLE NOT NULL, expires_at DOUBLE)")
    n = len(document["ids"])
    deadlines = document.get("exp") or [None] * n
    batch = pa.table({"id": pa.array(document["ids"], type=pa.int64()),
                      "type": pa.array([op.name[len(STAMP_PREFIX):]] * n, type=pa.string()),
                      "written_at": pa.array([float(document["at"])] * n, type=pa.float64()),
                      "expires_at": pa.array(deadlines, type=pa.float64())})
    con.register("_stamp", batch)
    try:
        con.execute("DELETE FROM _ttl WHERE id IN (SELECT id FROM _stamp)")
        con.execute("INSERT INTO _ttl SELECT * FROM _stamp")
    finally:
        con.unregister("_stamp")


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])


def load_ttl(tracker: ExpiryTracker, con: duckdb.DuckDBPyConnection) -> None:
    """Policies and node stamps from the tables (at open, before the WAL tail is replayed)."""
    for name, text in con.execute("SELECT name, value FROM _meta WHERE name LIKE 'ttl:%' ORDER BY name").fetchall():
        tracker.apply_policy(name, json.loads(text))
    if not has_table(con, "_ttl"):
        return
    rows = con.execute("SELECT id, written_at, coalesce(expires_at, 'inf'::DOUBLE) AS e, type FROM _ttl").fetchnumpy()
    explicit_types = set(con.execute("SELECT DISTINCT type FROM _ttl WHERE expires_at IS NOT NULL").fetchall())
    tracker.load(np.asarray(rows["id"], dtype=np.int64), np.asarray(rows["written_at"], dtype=np.float64),
                 np.asarray(rows["e"], dtype=np.float64), {t for (t,) in explicit_types})


__all__ = ["EXPIRES_FIELD", "POLICY_PREFIX", "STAMP_PREFIX", "ExpiryTracker", "TtlPolicy", "apply_stamp_sql", "epoch_seconds",
           "load_ttl", "parse_duration", "policy_document", "split_deadlines", "stamp_ops"]
