"""RemoteStore: the embedded Store API (schema, sessions, principals, maintenance) against a server."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

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


class RemoteStore:
    """A store served by `knowledge serve`, reached through `knowledge.connect(address, token=...)`."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.path = connection.address

    def _call(self, method: str, request: Any) -> Any:
        return self._connection.call(method, request)

    # -- sessions -----------------------------------------------------------------------------------
    def session(self, principal: Any = None) -> RemoteSession:
        """A session as the token's principal (None), or, for an admin token, as the catalog principal
        named `principal` or an ad-hoc knowledge.Principal."""
        return RemoteSession(self, principal)

    # -- schema -----------------------------------------------------------------------------------------
    @property
    def schema(self) -> Any:
        """The current schema (a knowledge Schema, fetched on each access)."""
        reply = self._call("GetSchema", pb.GetSchemaRequest())
        return _schema_class().from_dict(json.loads(reply.schema_json))

    def apply_schema(self, change: dict[str, Any]) -> int:
        """Apply a schema change ({"nodes": {...}, "edges": {...}}); return its LSN or raise SchemaError."""
        return self._call("ApplySchema", pb.ApplySchemaRequest(change_json=wire.dumps(change))).lsn

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
        request = pb.PrincipalChange(name=name, read=list(read), write=list(write), admin=bool(admin),
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
        self._call("DropPrincipal", pb.PrincipalName(name=name))

    def principals(self) -> list[Any]:
        return [wire.principal_from_proto(p) for p in self._call("ListPrincipals", pb.ListPrincipalsRequest()).principals]

    def issue_token(self, name: str) -> str:
        return self._call("IssueToken", pb.PrincipalName(name=name)).token

    def revoke_tokens(self, name: str) -> None:
        self._call("RevokeTokens", pb.PrincipalName(name=name))

    def authenticate(self, token: str) -> Any:
        """The principal a bearer token belongs to; PermissionDenied (Unauthenticated) otherwise."""
        metadata = (("authorization", f"Bearer {token}"),)
        return wire.principal_from_proto(self._connection.call("WhoAmI", pb.WhoAmIRequest(), metadata).principal)

    # -- maintenance --------------------------------------------------------------------------------------
    def checkpoint(self) -> int:
        return self._call("Checkpoint", pb.CheckpointRequest()).lsn

    def backup(self, destination: str) -> int:
        """A consistent copy at one LSN written to `destination`, a path on the server's machine."""
        return self._call("Backup", pb.BackupRequest(destination=destination)).lsn

    def build_indexes(self, *, wait: bool = True, timeout_s: float | None = None) -> bool:
        return self._call("BuildIndexes", pb.BuildIndexesRequest(wait=wait, timeout_s=timeout_s or 0)).done

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
