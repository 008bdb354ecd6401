"""The read RPCs: one handler per Session read method, each a thin shell over it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pyarrow as pa

from knowledge.errors import InvalidArgument
from knowledge.server import wire
from knowledge.server.calls import handler, session_lsn
from knowledge.server.v1 import knowledge_pb2 as pb

KEYS_PER_CALL_MAX = 1_000_000
VECTOR_DIMENSION_MAX = 65_536


def _int(value: int, name: str, default: int | None = None) -> int | None:
    """A request's int field: 0 means `default` (proto3 has no absent ints)."""
    return default if value == 0 else int(value)


def _refs(refs: list[Any]) -> pb.NodeRefsReply:
    return pb.NodeRefsReply(refs=[pb.NodeRef(id=r.id, type=r.type, key=wire.key_to_proto(r.key)) for r in refs])


def _table(table: pa.Table) -> pb.TableReply:
    return pb.TableReply(arrow_ipc=wire.table_to_ipc(table))


def _vector(values: Any, packed: bytes, name: str) -> np.ndarray:
    """A request's vector: `packed` (little-endian float32 bytes) when set, else the repeated floats."""
    if packed:
        if len(packed) % 4:
            raise InvalidArgument(f"{name} bytes must be float32s (a multiple of 4 bytes), got {len(packed)} bytes")
        if len(packed) > 4 * VECTOR_DIMENSION_MAX:
            raise InvalidArgument(f"{name} has {len(packed) // 4} components; at most {VECTOR_DIMENSION_MAX}")
        return np.frombuffer(packed, dtype="<f4")
    if len(values) > VECTOR_DIMENSION_MAX:
        raise InvalidArgument(f"{name} has {len(values)} components; at most {VECTOR_DIMENSION_MAX}")
    return np.asarray(values, dtype=np.float32)


class Reads:
    """Session reads over the wire (mixed into the servicer)."""

    @handler()
    def Get(self, request: pb.GetRequest, session: Any, context: Any) -> pb.RowReply:
        columns = wire.columns_from_proto(request.columns, request.HasField("columns"))
        row = session.get(request.type, wire.key_from_proto(request.key), columns)
        node_type = session.store.schema.nodes[request.type]
        json_columns = [n for n, p in node_type.properties.items() if p.type == "json" and n in row]
        return wire.row_to_proto(row, json_columns)

    @handler(heavy=True)
    def GetMany(self, request: pb.GetManyRequest, session: Any, context: Any) -> pb.TableReply:
        if len(request.keys) > KEYS_PER_CALL_MAX:
            raise InvalidArgument(f"get_many takes at most {KEYS_PER_CALL_MAX} keys per call")
        keys = [wire.key_from_proto(k) for k in request.keys]
        columns = wire.columns_from_proto(request.columns, request.HasField("columns"))
        return _table(session.get_many(request.type, keys, columns))

    @handler(heavy=True)
    def Scan(self, request: pb.ScanRequest, session: Any, context: Any) -> pb.TableReply:
        columns = wire.columns_from_proto(request.columns, request.HasField("columns"))
        if request.offset < 0:
            raise InvalidArgument(f"offset must be an int >= 0, got {request.offset}")
        return _table(session.scan(request.type, where=wire.where_from_proto(request.where), columns=columns,
                                   limit=_int(request.limit, "limit"), offset=int(request.offset),
                                   cursor=request.cursor if request.HasField("cursor") else None))

    @handler(heavy=True)
    def Edges(self, request: pb.EdgesRequest, session: Any, context: Any) -> pb.TableReply:
        return _table(session.edges(request.edge_type, limit=_int(request.limit, "limit")))

    @handler()
    def Neighbors(self, request: pb.NeighborsRequest, session: Any, context: Any) -> pb.NodeRefsReply:
        refs = session.neighbors(request.type, wire.key_from_proto(request.key),
                                 edge_type=list(request.edge_types) or None, direction=request.direction or "out",
                                 limit=_int(request.limit, "limit", 1000))
        return _refs(refs)

    @handler(heavy=True)
    def Traverse(self, request: pb.TraverseRequest, session: Any, context: Any) -> pb.TableReply:
        return _table(session.traverse(request.type, wire.key_from_proto(request.key),
                                       edge_type=list(request.edge_types) or None,
                                       direction=request.direction or "out", depth=_int(request.depth, "depth", 2),
                                       limit=_int(request.limit, "limit", 10_000)))

    @handler()
    def Refs(self, request: pb.RefsRequest, session: Any, context: Any) -> pb.NodeRefsReply:
        if len(request.ids) > KEYS_PER_CALL_MAX:
            raise InvalidArgument(f"refs takes at most {KEYS_PER_CALL_MAX} ids per call")
        refs = []
        for node in request.ids:
            if node < 0:
                raise InvalidArgument(f"node ids are >= 0, got {node}")
            try:
                refs.append(session.ref(int(node)))
            except IndexError:
                raise InvalidArgument(f"no node with id {node}") from None
        return _refs(refs)

    @handler()
    def Visible(self, request: pb.VisibleRequest, session: Any, context: Any) -> pb.VisibleReply:
        bitmap = session.visible()
        return pb.VisibleReply(packed_bits=np.packbits(bitmap).tobytes(), size=len(bitmap))

    @handler(heavy=True)
    def Adjacency(self, request: pb.AdjacencyRequest, session: Any, context: Any) -> pb.TableReply:
        src, dst, kind = session.adjacency(list(request.edge_types) or None)
        return _table(pa.table({"src": src, "dst": dst, "kind": kind}))

    @handler(heavy=True)
    def Search(self, request: pb.SearchRequest, session: Any, context: Any) -> pb.TableReply:
        columns = wire.columns_from_proto(request.columns, request.HasField("columns"))
        vector, where = _vector(request.vector, request.vector_f32, "the query vector"), wire.where_from_proto(request.where)
        table = session.search(vector, k=int(request.k), type=request.type or None,
                               property=request.property or None, where=where, columns=columns)
        if self.calls.metrics is not None:  # the plan taken; maybe re-run exactly for sampled recall
            self.calls.metrics.searched(session, vector, int(request.k), table, type=request.type or None,
                                        property=request.property or None, where=where)
        return _table(table)

    @handler(heavy=True)
    def KeywordSearch(self, request: pb.KeywordSearchRequest, session: Any, context: Any) -> pb.TableReply:
        columns = wire.columns_from_proto(request.columns, request.HasField("columns"))
        return _table(session.keyword_search(request.query, k=int(request.k), type=request.type or None,
                                             property=request.property or None,
                                             where=wire.where_from_proto(request.where), columns=columns))

    @handler(heavy=True)
    def Retrieve(self, request: pb.RetrieveRequest, session: Any, context: Any) -> pb.RetrieveReply:
        from knowledge.graphrag.retrieve import CANDIDATES, TOKEN_BUDGET
        options: dict[str, Any] = {"token_budget": _int(request.token_budget, "token_budget", TOKEN_BUDGET),
                                   "candidates": _int(request.candidates, "candidates", CANDIDATES),
                                   "params": wire.params_from_json(request.params_json)}
        if len(request.query_vector) or request.query_vector_f32:
            options["query_vector"] = _vector(request.query_vector, request.query_vector_f32, "the query vector")
        mode = request.mode or "auto"
        result = session.retrieve(request.question, k=int(request.k), mode=mode, **options)
        if self.calls.metrics is not None:
            self.calls.metrics.retrieved(result, mode)  # per-stage latency, fallbacks
        return pb.RetrieveReply(result_json=wire.result_to_json(result))

    @handler()
    def Count(self, request: pb.CountRequest, session: Any, context: Any) -> pb.CountReply:
        return pb.CountReply(count=session.count(request.type or None))

    @handler()
    def Stats(self, request: pb.StatsRequest, session: Any, context: Any) -> pb.JsonReply:
        return pb.JsonReply(json=wire.dumps(session.stats()))

    @handler(admin=True)
    def StoreStats(self, request: pb.StatsRequest, session: Any, context: Any) -> pb.JsonReply:
        return pb.JsonReply(json=wire.dumps(session.store.stats()))

    @handler()
    def AuditLog(self, request: pb.AuditLogRequest, session: Any, context: Any) -> pb.JsonReply:
        entries = session.audit_log(principal=request.principal or None, api=request.api or None,
                                    node_id=request.node_id if request.HasField("node_id") else None,
                                    limit=_int(request.limit, "limit", 1000))
        return pb.JsonReply(json=json.dumps([dataclasses.asdict(e) for e in entries]))

    @handler()
    def WhoAmI(self, request: pb.WhoAmIRequest, session: Any, context: Any) -> pb.PrincipalReply:
        return pb.PrincipalReply(principal=wire.principal_to_proto(session.principal))

    @handler()
    def GetSchema(self, request: pb.GetSchemaRequest, session: Any, context: Any) -> pb.SchemaReply:
        return pb.SchemaReply(schema_json=json.dumps(session.store.schema.to_dict()), lsn=session_lsn(session))
