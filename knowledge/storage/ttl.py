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
from knowledge.index.arrays import grown
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




class ExpiryTracker:
    """Policies and node deadlines in memory, and the mask of nodes past their deadline (see the module).

    `deadline` holds every node's deadline by id (inf: none), kept up to date as records are applied (under
    the engine's state lock): a stamp sets its ids', a policy change recomputes them all (lazily, from the
    live state that `live()` returns). A node's id and type never change, so one array serves the live
    directory and every read view's. `refresh` hands a directory the mask of the ids whose deadline has
    passed: the same array object for all until a deadline passes or a stamp changes a bit, so it costs a
    comparison with the next deadline most of the time. The mask keeps the bits of deleted ids (visibility
    takes `alive` with it).
    """

    def __init__(self, clock: Callable[[], float], lock: Any = None,
                 live: Callable[[], tuple[NodeDirectory, dict[str, Any]]] | None = None) -> None:
        self.clock = clock
        self.live = live
        self.policies: dict[str, TtlPolicy] = {}
        self.written = np.zeros(0, dtype=np.float64)   # last write time per node id (NaN: before any stamp)
        self.explicit = np.zeros(0, dtype=np.float64)  # an explicit `_expires_at` per node id (inf: none)
        self.deadline = np.zeros(0, dtype=np.float64)  # the deadline per node id (inf: none)
        self.explicit_types: set[str] = set()  # types some node of which was given an explicit deadline
        self.version = 0  # bumped by every policy or stamp applied
        self.swept_nodes = 0  # nodes (and entities) the sweeper deleted since open
        self.swept_edges = 0
        self.last_sweep_at: float | None = None
        self._lock = lock if lock is not None else threading.RLock()  # the engine's state lock
        self._stale = True  # a policy changed (or nothing computed yet): every deadline is recomputed
        self._changed: list[np.ndarray] = []  # ids whose deadline a stamp changed since the last refresh
        self._mask: np.ndarray | None = None  # the ids past their deadline at `_mask_at` (None: none)
        self._mask_at = -math.inf
        self._next = math.inf  # the earliest deadline after `_mask_at`
        self.live_expired = False  # some live node may be in the mask (never False while one is: a hint for
        # callers that take a cheaper path when nothing live expired; it can stay True after the sweep)

    @property
    def active(self) -> bool:
        """Whether anything can expire (a node policy, or an explicit deadline)."""
        return any(p.kind == "node" for p in self.policies.values()) or bool(self.explicit_types)

    def node_policy(self, type_name: str) -> TtlPolicy | None:
        policy = self.policies.get(type_name)
        return policy if policy is not None and policy.kind == "node" else None

    # -- applying records (under the engine's state lock) ------------------------------------------
    def apply_policy(self, name: str, document: dict[str, Any]) -> None:
        type_name = name[len(POLICY_PREFIX):]
        if document.get("dropped"):
            self.policies.pop(type_name, None)
        else:
            self.policies[type_name] = TtlPolicy.from_dict(document)
        self.version += 1
        self._stale = True

    def apply_stamp(self, name: str, document: dict[str, Any], columns: dict[str, Any] | None = None) -> None:
        """A stamp of record `name` (applied after the upserts of its record, so `columns` holds their values)."""
        if document.get("edges"):
            return  # edge stamps live in the tables only: the sweeper reads them there
        ids = np.asarray(document["ids"], dtype=np.int64)
        if not len(ids):
            return
        type_name = name[len(STAMP_PREFIX):]
        self._grow(int(ids.max()) + 1)
        self.written[ids] = float(document["at"])
        deadlines = document.get("exp")
        if deadlines is None:
            self.explicit[ids] = math.inf
        else:
            self.explicit[ids] = [math.inf if d is None else float(d) for d in deadlines]
            self.explicit_types.add(type_name)
        self.version += 1
        if not self._stale:
            self.deadline[ids] = self._deadlines_of(type_name, ids, columns or {})
            self._changed.append(ids)

    def load(self, ids: np.ndarray, written: np.ndarray, explicit: np.ndarray, types: set[str]) -> None:
        """The stamps the tables hold (at open)."""
        if len(ids):
            self._grow(int(ids.max()) + 1)
            self.written[ids] = written
            self.explicit[ids] = explicit
        self.explicit_types |= types
        self.version += 1
        self._stale = True

    def _grow(self, size: int) -> None:
        self.written = grown(self.written, size, math.nan)
        self.explicit = grown(self.explicit, size, math.inf)
        self.deadline = grown(self.deadline, size, math.inf)

    # -- deadlines ---------------------------------------------------------------------------------
    def _deadlines_of(self, type_name: str, ids: np.ndarray, columns: dict[str, Any]) -> np.ndarray:
        """The deadlines of `ids` (all of `type_name`): their own `_expires_at`, else their type's policy."""
        out = np.full(len(ids), math.inf)
        policy = self.node_policy(type_name)
        if policy is not None:
            if policy.on is not None:
                column = columns[type_name].columns.get(policy.on) if type_name in columns else None
                if column is not None:
                    inside = ids < len(column.values)
                    known = np.zeros(len(ids), dtype=bool)
                    known[inside] = column.valid[ids[inside]]
                    values = column.values[ids[known]].astype(np.float64)
                    out[known] = (values / 1e6 if column.prop_type == "timestamp" else values) + policy.expire_after_s
            else:  # the later of the last write and the policy's setting
                inside = ids < len(self.written)
                base = np.full(len(ids), policy.set_at)
                base[inside] = np.fmax(self.written[ids[inside]], policy.set_at)
                out = base + policy.expire_after_s
        inside = ids < len(self.explicit)
        given = np.full(len(ids), math.inf)
        given[inside] = self.explicit[ids[inside]]
        return np.where(np.isfinite(given), given, out)  # a node's own deadline wins over its type's

    def _recompute(self, directory: NodeDirectory, columns: dict[str, Any]) -> None:
        """Every deadline, from the live directory and columns."""
        self.deadline = np.full(max(directory.capacity, len(self.deadline)), math.inf)
        type_of = directory.type_of
        for type_name in set(self.policies) | self.explicit_types:
            code = directory.type_codes.get(type_name)
            if code is None:
                continue
            ids = np.flatnonzero(type_of == code)
            if len(ids):
                self.deadline[ids] = self._deadlines_of(type_name, ids, columns)
        self._stale = False
        self._changed = []
        self._mask_at = -math.inf  # the mask is rebuilt below

    def refresh(self, directory: NodeDirectory, columns: dict[str, Any] | None = None, now: float | None = None) -> None:
        """Bring `directory.expired` (the mask visibility takes out) up to the clock; the directory's version
        moves only when its mask changes, so visibility caches stay valid otherwise."""
        if not self.active and self._mask is None and not self._stale:
            if directory.expired is not None:
                with self._lock:
                    directory.expired = None
                    directory.version += 1
            return
        now = self.clock() if now is None else now
        if self._stale or self._changed or now >= self._next or now < self._mask_at:
            with self._lock:
                self._update(now)
        mask = self._mask
        if directory.expired is not mask:
            with self._lock:
                if directory.expired is not mask:
                    directory.expired = mask
                    directory.version += 1

    def _update(self, now: float) -> None:
        """Under the lock: the deadlines and the mask as of `now`."""
        if self._stale:
            if self.live is None:
                return
            self._recompute(*self.live())
        deadline = self.deadline
        if self._changed and self._mask_at <= now < self._next:  # a few stamped ids: patch the mask
            ids = self._changed[0] if len(self._changed) == 1 else np.concatenate(self._changed)
            values = deadline[ids]
            due = values <= now
            if not due.all():
                self._next = min(self._next, float(values[~due].min()))
            old = self._mask
            if old is None:
                changed = bool(due.any())
            else:
                inside = ids < len(old)
                had = np.zeros(len(ids), dtype=bool)
                had[inside] = old[ids[inside]]
                changed = bool((had != due).any())
            if changed:
                mask = np.zeros(len(deadline), dtype=bool) if old is None else _grown_mask(old, len(deadline))
                mask[ids] = due
                self._mask = mask if mask.any() else None
                self.live_expired = self.live_expired or bool(due.any())
        else:
            expired = deadline <= now
            ahead = deadline[~expired]
            self._next = float(ahead.min()) if len(ahead) else math.inf
            self._mask = expired if expired.any() else None
            self.live_expired = self._mask is not None and self._any_live(self._mask)
        self._mask_at = now
        self._changed = []

    def _any_live(self, mask: np.ndarray) -> bool:
        if self.live is None:
            return True
        alive = self.live()[0].alive
        n = min(len(alive), len(mask))
        return bool((mask[:n] & alive[:n]).any())

    def expired_ids(self, directory: NodeDirectory, columns: dict[str, Any], now: float) -> np.ndarray:
        """The live node ids past their deadline at `now`, in id order (call under the state lock)."""
        if not self.active:
            return np.zeros(0, dtype=np.int64)
        if self._stale:
            self._recompute(directory, columns)
        n = min(len(self.deadline), directory.capacity)
        return np.flatnonzero((self.deadline[:n] <= now) & directory.alive[:n]).astype(np.int64)

    def pending(self, directory: NodeDirectory) -> tuple[int, float]:
        """(live nodes past their deadline and not yet deleted, how long the oldest of them has been)."""
        mask = self._mask
        if mask is None:
            return 0, 0.0
        n = min(len(mask), directory.capacity, len(self.deadline))
        due = mask[:n] & directory.alive[:n]
        if not due.any():
            return 0, 0.0
        return int(np.count_nonzero(due)), max(0.0, self.clock() - float(self.deadline[:n][due].min()))

    def describe(self) -> dict[str, Any]:
        return {name: {"kind": p.kind, "expire_after_s": p.expire_after_s, "on": p.on, "set_at": p.set_at}
                for name, p in sorted(self.policies.items())}


def _grown_mask(mask: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(max(size, len(mask)), dtype=bool)
    out[:len(mask)] = mask
    return out


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
            if not op.may_replace:
                document["fresh"] = True  # every id is new: the tables have no stamp of it to replace
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


# -- the tables' side (knowledge/storage/tables.py, inside its apply transaction) --------------------------
class StampBatch:
    """The stamps of one batch of records, written to `_ttl` / `_ttl_edges` (created on first use) by one
    DELETE and one INSERT per table at the end of the batch, so that stamps do not split the batch's runs of
    inserts; a later stamp of an id wins, and a node deleted later in the batch keeps none."""

    def __init__(self) -> None:
        self.nodes: dict[int, tuple[str, float, float | None]] = {}
        self.edges: dict[tuple[str, int, int], float] = {}
        self.replaces = False  # some stamped id may have a row already

    def __bool__(self) -> bool:
        return bool(self.nodes or self.edges)

    def add(self, op: Op) -> None:
        document = op.document
        type_name = op.name[len(STAMP_PREFIX):]
        at = float(document["at"])
        if document.get("edges"):
            for src, dst in zip(document["src"], document["dst"], strict=True):
                self.edges[(type_name, src, dst)] = at
            return
        deadlines = document.get("exp") or [None] * len(document["ids"])
        for node, deadline in zip(document["ids"], deadlines, strict=True):
            self.nodes[node] = (type_name, at, deadline)
        self.replaces = self.replaces or not document.get("fresh")

    def forget(self, ids: Any) -> None:
        """Nodes deleted after their stamp in this batch."""
        if self.nodes:
            for node in ids.to_pylist() if hasattr(ids, "to_pylist") else list(ids):
                self.nodes.pop(node, None)

    def flush(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.nodes:
            con.execute("CREATE TABLE IF NOT EXISTS _ttl (id BIGINT NOT NULL, type VARCHAR NOT NULL, "
                        "written_at DOUBLE NOT NULL, expires_at DOUBLE)")
            rows = list(self.nodes.values())
            batch = pa.table({"id": pa.array(list(self.nodes), type=pa.int64()),
                              "type": pa.array([r[0] for r in rows], type=pa.string()),
                              "written_at": pa.array([r[1] for r in rows], type=pa.float64()),
                              "expires_at": pa.array([r[2] for r in rows], type=pa.float64())})
            self._write(con, "_ttl", batch, "DELETE FROM _ttl WHERE id IN (SELECT id FROM _stamp)"
                        if self.replaces else None)
        if self.edges:
            con.execute("CREATE TABLE IF NOT EXISTS _ttl_edges (type VARCHAR NOT NULL, src BIGINT NOT NULL, "
                        "dst BIGINT NOT NULL, written_at DOUBLE NOT NULL)")
            keys = list(self.edges)
            batch = pa.table({"type": pa.array([k[0] for k in keys], type=pa.string()),
                              "src": pa.array([k[1] for k in keys], type=pa.int64()),
                              "dst": pa.array([k[2] for k in keys], type=pa.int64()),
                              "written_at": pa.array(list(self.edges.values()), type=pa.float64())})
            self._write(con, "_ttl_edges", batch, "DELETE FROM _ttl_edges t USING _stamp s WHERE t.type = s.type "
                        "AND t.src = s.src AND t.dst = s.dst")

    @staticmethod
    def _write(con: duckdb.DuckDBPyConnection, table: str, batch: pa.Table, delete: str | None) -> None:
        con.register("_stamp", batch)
        try:
            if delete is not None:
                con.execute(delete)
            con.execute(f"INSERT INTO {table} SELECT * FROM _stamp")
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


__all__ = ["EXPIRES_FIELD", "POLICY_PREFIX", "STAMP_PREFIX", "ExpiryTracker", "StampBatch", "TtlPolicy", "epoch_seconds",
           "load_ttl", "parse_duration", "policy_document", "split_deadlines", "stamp_ops"]
