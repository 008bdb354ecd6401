"""RemoteStore: the embedded Store API (schema, sessions, principals, maintenance) against a server."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from knowledge.errors import InvalidArgument, NotAvailableRemotely
from knowledge.remote.channel import Connection
from knowledge.remote.session import RemoteSession
from knowledge.server import wire
from knowledge.server.v1 import knowledge_pb2 as pb


def _schema_class() -> Any:
    try:
        from knowledge.storage.schema import Schema
    except ImportError:  # before the layout change
        from knowledge.schema import Schema  # type: ignore[no-redef]
    return Schema


@dataclass(frozen=True)
class Change:
    """One change of a committed record: `table` (rows the caller may see) or `document` (schema, principal)."""

    kind: str
    type: str
    table: pa.Table | None = None
    document: Any = None


@dataclass(frozen=True)
class ChangeRecord:
    """A committed record as the change feed shows it to the caller."""

    lsn: int
    epoch: int
    timestamp_ns: int
    changes: list[Change] = field(default_factory=list)


REPR_CHARS_MAX = 200  # a value the wire cannot carry travels as its repr, cut to this many characters
INT64_MAX = (1 << 63) - 1

# The public Store attributes a client deliberately lacks, and why: the engine's in-process state (and the
# commit pipeline under Transaction) exist only in the process that owns the store directory. Each one is an
# attribute of RemoteStore that raises NotAvailableRemotely (an AttributeError too) naming the remote way.
# tests/test_remote_parity.py fails when a public Store attribute is neither implemented here nor listed.
EMBEDDED_ONLY: dict[str, str] = {
    "engine": "the storage engine object of the process that owns the store directory",
    "config": "the StoreConfig the server process opened the store with (its settings are the server's)",
    "audit": "the in-process audit ring; read it with session.audit_log() (admins)",
    "tables": "the in-process DuckDB tables; read rows with session.scan() / get_many()",
    "wal": "the in-process write-ahead log; follow commits with store.changes()",
    "directory": "the in-process node directory; use session.ref(), session.count() or session.visible()",
    "edges": "the in-process graph indexes; use session.edges(), neighbors(), traverse() or adjacency()",
    "catalog": "the in-process principal catalog; use store.principals() and the principal methods",
    "vectors": "the in-process vector indexes; use session.search()",
    "keywords": "the in-process keyword indexes; use session.keyword_search()",
    "row_cache": "the in-process row cache; use session.get() / get_many()",
    "indexer": "the in-process index builder; use store.build_indexes()",
    "state_lock": "a lock of the server process; a remote read is consistent at one LSN by itself "
                  "(session.snapshot() groups several)",
    "commit": "the in-process commit pipeline (Store.commit(principal, items)) that transactions run on; use "
              "store.session(...).transaction()",
}


class _EmbeddedOnly:
    """A Store attribute a client cannot have: reading it raises NotAvailableRemotely saying why."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        raise NotAvailableRemotely(f"Store.{self.name} is not available over a connection ({instance.path}): it is "
                                   f"{self.why}")


def _repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= REPR_CHARS_MAX else text[:REPR_CHARS_MAX] + "..."


def _schema_change(change: Any) -> Any:
    """`change` without its empty sections, refused here with the embedded store's SchemaError when its shape
    is one the server's ApplySchema refuses before its store sees it (as an InvalidArgument)."""
    def refuse(part: Any) -> None:
        _schema_class()({}, {}).evolve(part, frozenset())  # raises what the embedded store raises

    if not isinstance(change, dict) or set(change) - {"nodes", "edges"}:
        refuse(change)
    change = {section: types for section, types in change.items() if types}  # embedded: None or {} is none
    for section, types in change.items():
        if not isinstance(types, dict):
            refuse(change)
        for name, spec in list(types.items()):
            if isinstance(spec, dict) and "properties" in spec and spec["properties"] is None:
                types = change[section] = {**types, name: {**spec, "properties": {}}}  # embedded: None is none
            elif not isinstance(spec, dict) or not isinstance(spec.get("properties", {}), dict):
                refuse({section: {name: spec}})
    return change


def _name(name: Any) -> str:
    """A principal name, checked as the embedded store checks it first."""
    if not isinstance(name, str):
        raise InvalidArgument(f"a principal name is a str, got {type(name).__name__} {name!r}")
    return name


def _labels(kind: str, labels: Any) -> list[str]:
    """Grants as a list, refused as the embedded store refuses them when the wire cannot carry them (a str,
    no iterable, a label that is no str); the server checks the rest (empty, too long)."""
    from knowledge.storage.catalog import check_labels
    if isinstance(labels, str | bytes) or not isinstance(labels, Iterable):
        check_labels(kind, labels)  # raises
    items = list(labels)
    if not all(isinstance(label, str) for label in items):
        check_labels(kind, items)  # raises
    return items


def _strs(labels: Any) -> list[str]:
    return [label for label in labels if isinstance(label, str)]


def _ttl_request(type_name: str, expire_after: Any, on: Any) -> pb.SetTtlRequest:
    """set_ttl's arguments as the Python types they are (the server rebuilds them: lifecycle.py)."""
    if not isinstance(type_name, str):
        raise InvalidArgument(f"a type name is a str, got {type(type_name).__name__} {type_name!r}")
    request = pb.SetTtlRequest(type=type_name)
    if isinstance(expire_after, dt.timedelta):
        request.timedelta_seconds = expire_after.total_seconds()
    elif isinstance(expire_after, str):
        request.duration = expire_after
    elif isinstance(expire_after, int) and not isinstance(expire_after, bool) and abs(expire_after) <= INT64_MAX:
        request.whole_seconds = expire_after
    elif isinstance(expire_after, int | float) and not isinstance(expire_after, bool):
        request.seconds = float(expire_after)
    elif expire_after is not None:
        request.unsupported = _repr(expire_after)
    if isinstance(on, str):
        request.on = on
    elif on is not None:
        request.on_unsupported = _repr(on)
    return request


class RemoteStore:
    """A store served by `knowledge serve`, reached through `knowledge.connect(address, token=...)`.

    It has every public Store method with the same arguments, results and exceptions, except the engine's
    in-process state (EMBEDDED_ONLY), which raises NotAvailableRemotely."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.path = connection.address

    def _call(self, method: str, request: Any) -> Any:
        return self._connection.call(method, request)

    # -- sessions -----------------------------------------------------------------------------------
    def session(self, principal: Any = None) -> RemoteSession:
        """A session as the token's principal (None), or, for an admin token, as the catalog principal
        named `principal` or an ad-hoc knowledge.Principal."""
        from knowledge.access.principal import Principal
        if principal is not None and not isinstance(principal, str | Principal):
            raise InvalidArgument(f"principal must be None (the token's own), a principal's name or a Principal, "
                                  f"got {type(principal).__name__}")
        return RemoteSession(self, principal)

    # -- schema -----------------------------------------------------------------------------------------
    @property
    def schema(self) -> Any:
        """The current schema (a knowledge Schema, fetched on each access)."""
        reply = self._call("GetSchema", pb.GetSchemaRequest())
        return _schema_class().from_dict(json.loads(reply.schema_json))

    def apply_schema(self, change: dict[str, Any]) -> int:
        """Apply a schema change ({"nodes": {...}, "edges": {...}}); return its LSN or raise SchemaError."""
        return self._call("ApplySchema", pb.ApplySchemaRequest(change_json=wire.dumps(_schema_change(change)))).lsn

    def define_node_type(self, name: str, *, key: str, properties: dict[str, Any] | None = None) -> int:
        return self.apply_schema({"nodes": {name: {"key": key, "properties": properties or {}}}})

    def define_edge_type(self, name: str, *, source: str | list[str], target: str | list[str],
                         properties: dict[str, Any] | None = None) -> int:
        return self.apply_schema({"edges": {name: {"source": source, "target": target,
                                                    "properties": properties or {}}}})

    def add_property(self, type_name: str, name: str, spec: str | dict[str, Any]) -> int:
        """Add an optional property to an existing node or edge type."""
        return self.apply_schema(self.schema.property_change(type_name, name, spec))

    # -- principals -----------------------------------------------------------------------------------
    def _principal(self, method: str, name: str, read: Iterable[str] = (), write: Iterable[str] = (),
                   admin: bool | None = None) -> Any:
        if method == "Revoke":  # as embedded, what is no label matches none: nothing to remove
            read, write = _strs(read), _strs(write)
        else:
            read, write = _labels("read", read), _labels("write", write)
        request = pb.PrincipalChange(name=_name(name), read=read, write=write, admin=bool(admin),
                                     has_admin=admin is not None)
        return wire.principal_from_proto(self._call(method, request).principal)

    def create_principal(self, name: str, *, read: Iterable[str] = (), write: Iterable[str] = (),
                         admin: bool = False) -> Any:
        return self._principal("CreatePrincipal", name, read, write, admin)

    def grant(self, name: str, *, read: Iterable[str] = (), write: Iterable[str] = (),
              admin: bool | None = None) -> Any:
        return self._principal("Grant", name, read, write, admin)

    def revoke(self, name: str, *, read: Iterable[str] = (), write: Iterable[str] = ()) -> Any:
        return self._principal("Revoke", name, read, write)

    def drop_principal(self, name: str) -> None:
        self._call("DropPrincipal", pb.PrincipalName(name=_name(name)))

    def principals(self) -> list[Any]:
        return [wire.principal_from_proto(p) for p in self._call("ListPrincipals", pb.ListPrincipalsRequest()).principals]

    def issue_token(self, name: str) -> str:
        return self._call("IssueToken", pb.PrincipalName(name=_name(name))).token

    def revoke_tokens(self, name: str) -> None:
        self._call("RevokeTokens", pb.PrincipalName(name=_name(name)))

    def authenticate(self, token: str) -> Any:
        """The principal a bearer token belongs to; PermissionDenied (Unauthenticated) otherwise."""
        metadata = (("authorization", f"Bearer {token}"),)
        return wire.principal_from_proto(self._connection.call("WhoAmI", pb.WhoAmIRequest(), metadata).principal)

    # -- TTL ------------------------------------------------------------------------------------------------
    def set_ttl(self, type_name: str, expire_after: str | float | dt.timedelta | None, *,
                on: str | None = None) -> int:
        """Expire the rows of a node or edge type `expire_after` ("7d", "12h", "30m", seconds or a timedelta)
        after their `on` property or, without `on`, after their last write; None removes the policy. Returns
        the LSN (admins only). Raises UnknownType, SchemaError, InvalidArgument as the embedded store does."""
        return self._call("SetTtl", _ttl_request(type_name, expire_after, on)).lsn

    def ttl(self) -> dict[str, dict[str, Any]]:
        """The TTL policies by type: kind ("node"/"edge"), expire_after_s, on, set_at (admins only)."""
        return json.loads(self._call("GetTtl", pb.GetTtlRequest()).json)

    def sweep_expired(self, *, rows_max: int | None = None) -> dict[str, int]:
        """Delete every row past its deadline now, in WAL records of at most `rows_max` rows (default: the
        server store's `ttl_sweep_batch_rows`); the totals (nodes, entities, edges, records, lsn). Admins only."""
        request = pb.SweepExpiredRequest()
        if rows_max is not None:
            if isinstance(rows_max, bool) or not isinstance(rows_max, int):
                raise InvalidArgument(f"rows_max must be a positive int, got {rows_max!r}")
            request.rows_max = max(min(rows_max, INT64_MAX), -INT64_MAX)  # <= 0 is refused by the server's store
        return {name: int(value) for name, value in json.loads(self._call("SweepExpired", request).json).items()}

    # -- visibility -----------------------------------------------------------------------------------------
    def visibility(self, principal: Any, *, wait: bool = False, directory: Any = None) -> np.ndarray:
        """The bool bitmap over node ids that `principal` (a knowledge.Principal) may see, read-only: that of
        `store.session(principal).visible()`, so an admin token is needed unless it is the token's own
        principal acted as. It covers every node id (the embedded one may run on, padded with False).
        `directory` (a read view's, in-process) has no remote form."""
        from knowledge.access.principal import Principal
        if not isinstance(principal, Principal):
            raise InvalidArgument(f"principal must be a knowledge.Principal, got {type(principal).__name__}")
        if directory is not None:
            raise InvalidArgument("directory= names an in-process read view's NodeDirectory, which a "
                                  "knowledge.connect() client has none of; read inside session.snapshot() instead")
        return self.session(principal).visible()

    # -- maintenance --------------------------------------------------------------------------------------
    def wait_applied(self, lsn: int | None = None) -> None:
        """Block until the server's tables reflect every record up to `lsn` (default: everything committed
        now); a `lsn` past the server's last commit waits for one within the call's deadline (else
        DeadlineExceeded). Reads on the server wait by themselves: this is for code that waits explicitly."""
        if lsn is not None and (isinstance(lsn, bool) or not isinstance(lsn, int)):
            raise InvalidArgument(f"lsn must be an int or None, got {lsn!r}")
        request = pb.WaitAppliedRequest()
        if lsn is not None:
            request.lsn = max(min(lsn, INT64_MAX), -INT64_MAX)
        self._call("WaitApplied", request)

    def checkpoint(self) -> int:
        return self._call("Checkpoint", pb.CheckpointRequest()).lsn

    def backup(self, destination: str) -> int:
        """A consistent copy at one LSN written to `destination`, an absolute path on the server's machine."""
        if not isinstance(destination, str | os.PathLike):
            raise InvalidArgument(f"backup destination must be a path, got {type(destination).__name__}")
        return self._call("Backup", pb.BackupRequest(destination=os.fspath(destination))).lsn

    def build_indexes(self, *, wait: bool = True, timeout_s: float | None = None) -> bool:
        """Bring every HNSW graph up to all current rows on the server (admins only); with `wait`, block
        until the builds are in. Returns False when `timeout_s` passed first."""
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float)
                                      or not timeout_s >= 0):
            raise InvalidArgument(f"timeout_s must be a number of seconds >= 0 or None, got {timeout_s!r}")
        # the wire's 0 means no timeout: a timeout of 0 s travels as the shortest positive one
        wire_timeout = 0.0 if timeout_s is None else max(float(timeout_s), 1e-9)
        return self._call("BuildIndexes", pb.BuildIndexesRequest(wait=bool(wait), timeout_s=wire_timeout)).done

    def stats(self) -> dict[str, Any]:
        """Whole-store figures (admins only)."""
        return json.loads(self._call("StoreStats", pb.StatsRequest()).json)

    @property
    def epoch(self) -> int:
        """The store's epoch (admins only)."""
        return int(self.stats()["epoch"])

    @property
    def position(self) -> Any:
        """The (epoch, LSN) of the last committed record visible to reads (admins only)."""
        from knowledge.storage.position import Position
        stats = self.stats()
        return Position(int(stats["epoch"]), int(stats["lsn"]))

    @property
    def memory_lsn(self) -> int:
        """The LSN of the last commit visible to reads on the server."""
        return self._call("GetSchema", pb.GetSchemaRequest()).lsn

    def changes(self, after_lsn: int = 0, *, follow: bool = False, timeout_s: float | None = None
                ) -> Iterator[ChangeRecord]:
        """Committed records after `after_lsn` as the caller may see them; with `follow`, then new ones as
        they commit (until `timeout_s` or the iterator is closed)."""
        request = pb.ChangesRequest(after_lsn=after_lsn, follow=follow)
        for record in self._connection.stream("Changes", request, timeout_s=timeout_s):
            changes = [Change(c.kind, c.type, wire.table_from_ipc(c.arrow_ipc) if c.arrow_ipc else None,
                              json.loads(c.document_json) if c.document_json else None) for c in record.changes]
            yield ChangeRecord(record.lsn, record.epoch, record.timestamp_ns, changes)

    def close(self) -> None:
        """Close the connection (the server and its store stay up)."""
        self._connection.close()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteStore({self.path!r})"


for _attribute, _why in EMBEDDED_ONLY.items():
    setattr(RemoteStore, _attribute, _EmbeddedOnly(_attribute, _why))
del _attribute, _why
