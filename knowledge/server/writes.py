"""The write and administration RPCs: schema changes, transactions, principals, checkpoint and backup.

A Commit request is one transaction: its items are added to one `session.transaction()` in order and
committed together (all or nothing); the reply is sent only once the record is durable.
"""

from __future__ import annotations

import os
from typing import Any

from knowledge.errors import InvalidArgument
from knowledge.server import wire
from knowledge.server.calls import handler
from knowledge.server.v1 import knowledge_pb2 as pb

ITEMS_PER_COMMIT_MAX = 4096
ACTIONS = ("upsert_nodes", "delete_nodes", "upsert_edges", "delete_edges")


def _add(tx: Any, item: pb.WriteItem) -> None:
    if item.action not in ACTIONS:
        raise InvalidArgument(f"write action must be one of {ACTIONS}, got {item.action!r}")
    if item.action == "delete_nodes":
        tx.delete_nodes(item.type, [wire.key_from_proto(k) for k in item.keys])
        return
    getattr(tx, item.action)(item.type, wire.rows_from_proto(item.rows, item.type))


def _schema_change(text: str) -> dict[str, Any]:
    """The change document, its shape checked ({"nodes": {NAME: {...}}, "edges": {NAME: {...}}})."""
    change = wire.loads(text, "change_json")
    if not isinstance(change, dict) or set(change) - {"nodes", "edges"}:
        raise InvalidArgument("change_json must be a JSON object with 'nodes' and/or 'edges' (and nothing else)")
    for part in ("nodes", "edges"):
        types = change.get(part, {})
        if not isinstance(types, dict) or not all(isinstance(spec, dict) for spec in types.values()):
            raise InvalidArgument(f"change_json {part!r} must map each type name to an object, e.g. "
                                  f'{{"{part}": {{"Person": {{"key": "name", "properties": {{}}}}}}}}')
        for name, spec in types.items():
            if "properties" in spec and not isinstance(spec["properties"], dict):
                raise InvalidArgument(f"change_json {part}.{name}.properties must be an object")
    return change



class Writes:
    """Store and Transaction writes over the wire (mixed into the servicer)."""

    @handler(write=True)
    def Commit(self, request: pb.CommitRequest, session: Any, context: Any) -> pb.LsnReply:
        if len(request.items) > ITEMS_PER_COMMIT_MAX:
            raise InvalidArgument(f"a commit holds at most {ITEMS_PER_COMMIT_MAX} items; got {len(request.items)}")
        tx = session.transaction()
        for item in request.items:
            _add(tx, item)
        return pb.LsnReply(lsn=tx.commit())

    @handler(write=True, admin=True)
    def ApplySchema(self, request: pb.ApplySchemaRequest, session: Any, context: Any) -> pb.LsnReply:
        return pb.LsnReply(lsn=session.store.apply_schema(_schema_change(request.change_json)))


    @handler(write=True, admin=True)
    def CreatePrincipal(self, request: pb.PrincipalChange, session: Any, context: Any) -> pb.PrincipalReply:
        principal = session.store.create_principal(request.name, read=list(request.read), write=list(request.write),
                                                   admin=request.admin)
        return pb.PrincipalReply(principal=wire.principal_to_proto(principal))

    @handler(write=True, admin=True)
    def Grant(self, request: pb.PrincipalChange, session: Any, context: Any) -> pb.PrincipalReply:
        principal = session.store.grant(request.name, read=list(request.read), write=list(request.write),
                                        admin=request.admin if request.has_admin else None)
        return pb.PrincipalReply(principal=wire.principal_to_proto(principal))

    @handler(write=True, admin=True)
    def Revoke(self, request: pb.PrincipalChange, session: Any, context: Any) -> pb.PrincipalReply:
        principal = session.store.revoke(request.name, read=list(request.read), write=list(request.write))
        return pb.PrincipalReply(principal=wire.principal_to_proto(principal))

    @handler(write=True, admin=True)
    def DropPrincipal(self, request: pb.PrincipalName, session: Any, context: Any) -> pb.LsnReply:
        session.store.drop_principal(request.name)
        return pb.LsnReply(lsn=session.store.memory_lsn)

    @handler(admin=True)
    def ListPrincipals(self, request: pb.ListPrincipalsRequest, session: Any, context: Any) -> pb.PrincipalsReply:
        return pb.PrincipalsReply(principals=[wire.principal_to_proto(p) for p in session.store.principals()])

    @handler(write=True, admin=True)
    def IssueToken(self, request: pb.PrincipalName, session: Any, context: Any) -> pb.TokenReply:
        return pb.TokenReply(token=session.store.issue_token(request.name))

    @handler(write=True, admin=True)
    def RevokeTokens(self, request: pb.PrincipalName, session: Any, context: Any) -> pb.LsnReply:
        session.store.revoke_tokens(request.name)
        return pb.LsnReply(lsn=session.store.memory_lsn)

    @handler(admin=True)
    def Checkpoint(self, request: pb.CheckpointRequest, session: Any, context: Any) -> pb.LsnReply:
        return pb.LsnReply(lsn=session.store.checkpoint())

    @handler(admin=True)
    def Backup(self, request: pb.BackupRequest, session: Any, context: Any) -> pb.LsnReply:
        if not request.destination or not os.path.isabs(request.destination):
            raise InvalidArgument(f"backup destination must be an absolute path on the server's machine, "
                                  f"got {request.destination!r}")
        return pb.LsnReply(lsn=session.store.backup(request.destination))

    @handler(admin=True)
    def BuildIndexes(self, request: pb.BuildIndexesRequest, session: Any, context: Any) -> pb.BuildIndexesReply:
        timeout = request.timeout_s if request.timeout_s > 0 else None
        return pb.BuildIndexesReply(done=session.store.build_indexes(wait=request.wait, timeout_s=timeout))
