"""RemoteSession and RemoteTransaction: the embedded Session/Transaction API, each method one call.

Same names, arguments, result types (Arrow tables, dicts, NodeRef, RetrievalResult) and exceptions as
knowledge.Session, so code written against a session runs unchanged against a server. Differences:
`snapshot()` does not hold the store (its reads fail with SnapshotMoved when a commit lands during the
block); a transaction's rows are validated by the server when it commits rather than as they are added;
`store.session("name")` of an unknown principal fails on the session's first call, not at once. Arguments
the wire cannot carry (a type name that is no str, keys that are no list, ...) are refused here with the
embedded class and message (tests/test_remote_parity.py).
"""

from __future__ import annotations

import array
import contextlib
import json
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from knowledge.errors import InvalidArgument, KnowledgeError, UnknownType
from knowledge.server import wire
from knowledge.server.v1 import knowledge_pb2 as pb

_LITTLE_ENDIAN = sys.byteorder == "little"  # the wire's vectors are little-endian float32

if TYPE_CHECKING:
    from knowledge.remote.store import RemoteStore


def _limit(limit: int | None) -> int:
    if limit is None:
        return 0
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgument(f"limit must be an int in 1..1000000, got {limit!r}")
    return limit


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > wire.INT64_MAX:
        raise InvalidArgument(f"{name} must be a positive int, got {value!r}")
    return value


def _edge_types(edge_type: str | Iterable[str] | None) -> list[str]:
    if edge_type is None:
        return []
    if not isinstance(edge_type, str) and (isinstance(edge_type, bytes) or not isinstance(edge_type, Iterable)):
        raise InvalidArgument(f"edge_type must be an edge type name or a list of them, got {edge_type!r}")
    names = [edge_type] if isinstance(edge_type, str) else list(edge_type)
    for name in names:
        if not isinstance(name, str):
            raise UnknownType(f"unknown edge type {name!r}", type_name=name)
    return names


# What the wire cannot carry is refused here as the embedded Session and Transaction refuse it, with the
# same class and message: a type name that is no str is an unknown type, keys that are no list are no keys.
def _type(type_name: Any, kind: str = "node") -> str:
    if not isinstance(type_name, str):
        raise UnknownType(f"unknown {kind} type {type_name!r}", type_name=type_name)
    return type_name


def _keys(keys: Any) -> list[Any]:
    if isinstance(keys, str | bytes | Mapping) or not isinstance(keys, Iterable):
        raise InvalidArgument(f"keys must be a list of node keys, got {type(keys).__name__}")
    return list(keys)


def _packed(vector: Any) -> bytes:
    """A vector as little-endian float32 bytes (the wire's cheap form of a query vector)."""
    if _LITTLE_ENDIAN and isinstance(vector, list | tuple):
        try:  # a list of floats (what embedders return): 9 us here, against numpy's 31 for 384 floats
            return array.array("f", vector).tobytes()
        except (TypeError, OverflowError):
            pass  # nested lists and the like: numpy flattens them, or says what is wrong
    try:
        return np.asarray(vector, dtype="<f4").reshape(-1).tobytes()
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"the query vector must be a sequence of numbers: {exc}") from None


class RemoteSession:
    """A principal's view of the store behind a server (the token's principal, or one an admin acts as)."""

    def __init__(self, store: RemoteStore, principal: Any = None) -> None:
        self._store = store
        self._connection = store._connection
        self._metadata = self._connection.metadata_as(principal)

    @property
    def store(self) -> RemoteStore:
        """The RemoteStore this session reads through."""
        return self._store

    def _call(self, method: str, request: Any) -> Any:
        return self._connection.call(method, request, self._metadata)

    def _table(self, method: str, request: Any) -> pa.Table:
        return wire.table_from_ipc(self._call(method, request).arrow_ipc)

    @property
    def principal(self) -> Any:
        """The principal as of now (grants are looked up on the server)."""
        return wire.principal_from_proto(self._call("WhoAmI", pb.WhoAmIRequest()).principal)

    def visible(self) -> np.ndarray:
        """The visibility bitmap over node ids (read-only)."""
        reply = self._call("Visible", pb.VisibleRequest())
        bits = np.unpackbits(np.frombuffer(reply.packed_bits, dtype=np.uint8), count=reply.size).astype(bool)
        bits.setflags(write=False)
        return bits

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[int]:
        """A group of reads as of one LSN (yields it: the store's for an admin, the view LSN for others, as
        embedded). Over the network the store is not held: each read in the block is checked on the server to
        be answered as of that LSN, and raises SnapshotMoved when a commit the principal can see landed
        meanwhile (run the block again; writes it cannot see move nothing). Writes inside are not pinned."""
        lsn = self._call("GetSchema", pb.GetSchemaRequest()).lsn
        outer = self._metadata
        self._metadata = (*outer, ("knowledge-lsn", str(lsn)))
        try:
            yield lsn
        finally:
            self._metadata = outer

    @contextlib.contextmanager
    def min_lsn(self, token: int | str, timeout_s: float = 5.0) -> Iterator[None]:
        """Read-your-writes on a replica: every call in the block first waits (at most `timeout_s`) until
        the server has applied commit `token` (the LSN a commit returned, or its "epoch/lsn" text), else
        raises DeadlineExceeded."""
        outer = self._metadata
        self._metadata = (*outer, ("knowledge-min-lsn", str(token)),
                          ("knowledge-min-lsn-timeout-ms", str(max(0, int(timeout_s * 1000)))))
        try:
            yield
        finally:
            self._metadata = outer

    # -- point reads --------------------------------------------------------------------------------------
    def get(self, type_name: str, key: Any, columns: Iterable[str] | None = None) -> dict[str, Any]:
        """The node's properties plus `_id` and `_labels`; raises NotFound when absent or invisible."""
        request = pb.GetRequest(type=_type(type_name), key=wire.key_to_proto(key), columns=wire.columns_to_proto(columns))
        return wire.row_from_proto(self._call("Get", request))

    def get_many(self, type_name: str, keys: Iterable[Any], columns: Iterable[str] | None = None) -> pa.Table:
        """Rows of the visible nodes among `keys` (absent or invisible keys are skipped)."""
        request = pb.GetManyRequest(type=_type(type_name), keys=[wire.key_to_proto(k) for k in _keys(keys)],
                                    columns=wire.columns_to_proto(columns))
        return self._table("GetMany", request)

    def scan(self, type_name: str, where: dict[str, Any] | None = None, columns: Iterable[str] | None = None,
             limit: int | None = None, offset: int = 0, cursor: str | None = None) -> pa.Table:
        """Visible rows of one node type matching `where`, as Arrow (with `_id` and `_labels`), in id order;
        paged by `limit`, `offset` and an opaque `cursor` as knowledge.Session.scan is (`next_cursor` and
        `has_more` in the result's schema metadata)."""
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= wire.INT64_MAX:
            raise InvalidArgument(f"offset must be an int >= 0, got {offset!r}")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidArgument(f"cursor {str(cursor)[:80]!r} is not a scan cursor: pass the next_cursor of a "
                                  f"scan's result (schema metadata), or no cursor to start from the first row")
        request = pb.ScanRequest(type=_type(type_name), where=wire.where_to_proto(where),
                                 columns=wire.columns_to_proto(columns), limit=_limit(limit), offset=offset)
        if cursor is not None:
            request.cursor = cursor
        return self._table("Scan", request)

    def edges(self, edge_type: str, limit: int | None = None) -> pa.Table:
        """Visible edges of one type: src/dst ids, keys and properties (Arrow)."""
        if not isinstance(edge_type, str):
            _edge_types(edge_type)  # raises as embedded: InvalidArgument, or UnknownType for a list
            raise UnknownType(f"unknown edge type {edge_type!r}", type_name=edge_type)
        return self._table("Edges", pb.EdgesRequest(edge_type=edge_type, limit=_limit(limit)))

    def count(self, type_name: str | None = None) -> int:
        """How many nodes (of one type) this principal can see."""
        return self._call("Count", pb.CountRequest(type="" if type_name is None else _type(type_name))).count

    def stats(self) -> dict[str, Any]:
        """Visible node counts per type and visible edge counts per type, with the LSN they reflect."""
        return json.loads(self._call("Stats", pb.StatsRequest()).json)

    def audit_log(self, principal: str | None = None, api: str | None = None, node_id: int | None = None,
                  limit: int = 1000) -> list[Any]:
        """Audit entries, newest first (admins only), as knowledge's AuditEntry values."""
        request = pb.AuditLogRequest(principal=principal or "", api=api or "", limit=_limit(limit))
        if node_id is not None:
            request.node_id = node_id
        entries = json.loads(self._call("AuditLog", request).json)
        try:
            from knowledge.access.audit import AuditEntry
        except ImportError:  # before the layout change
            from knowledge.audit import AuditEntry  # type: ignore[no-redef]
        return [AuditEntry(**{**e, "node_ids": tuple(e["node_ids"])}) for e in entries]

    # -- graph ----------------------------------------------------------------------------------------------
    def ref(self, node: int) -> Any:
        """The NodeRef of a visible node id."""
        from knowledge import NodeRef
        if isinstance(node, bool) or not isinstance(node, int | np.integer) or node < 0:
            raise InvalidArgument(f"a node id is a non-negative int, got {node!r}")
        found = self._call("Refs", pb.RefsRequest(ids=[int(node)])).refs[0]
        return NodeRef(found.id, found.type, wire.key_from_proto(found.key))

    def neighbors(self, type_name: str, key: Any, edge_type: str | Iterable[str] | None = None,
                  direction: str = "out", limit: int = 1000) -> list[Any]:
        """Visible neighbours of a visible node, ordered by id; raises NotFound, InvalidArgument."""
        from knowledge import NodeRef
        request = pb.NeighborsRequest(type=_type(type_name), key=wire.key_to_proto(key), edge_types=_edge_types(edge_type),
                                      direction=str(direction), limit=_limit(limit))
        refs = self._call("Neighbors", request).refs
        return [NodeRef(r.id, r.type, wire.key_from_proto(r.key)) for r in refs]

    def traverse(self, type_name: str, key: Any, edge_type: str | Iterable[str] | None = None,
                 direction: str = "out", depth: int = 2, limit: int = 10_000) -> pa.Table:
        """Breadth-first k-hop walk through visible nodes: Arrow table (id, type, key, depth)."""
        request = pb.TraverseRequest(type=_type(type_name), key=wire.key_to_proto(key), edge_types=_edge_types(edge_type),
                                     direction=str(direction), depth=_positive(depth, "depth"), limit=_limit(limit))
        return self._table("Traverse", request)

    def adjacency(self, edge_type: str | Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every visible edge of the given types as arrays (src ids, dst ids, edge-type index)."""
        table = self._table("Adjacency", pb.AdjacencyRequest(edge_types=_edge_types(edge_type)))
        return (table.column("src").to_numpy(), table.column("dst").to_numpy(),
                table.column("kind").to_numpy().astype(np.int16))

    # -- search -----------------------------------------------------------------------------------------------
    def search(self, vector: Any, k: int = 10, type: str | None = None, property: str | None = None,
               where: dict[str, Any] | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        """The k visible nodes nearest to `vector` that match `where`, best first (`_id`, `_key`, `_score`)."""
        request = pb.SearchRequest(vector_f32=_packed(vector), k=_positive(k, "k"),
                                   type=type or "", property=property or "", where=wire.where_to_proto(where),
                                   columns=wire.columns_to_proto(columns))
        return self._table("Search", request)

    def keyword_search(self, query: str, k: int = 10, type: str | None = None, property: str | None = None,
                       where: dict[str, Any] | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        """The k visible nodes whose `text` property best matches `query` (BM25), best first."""
        if not isinstance(query, str):
            raise InvalidArgument("keyword query must be a non-empty string")
        request = pb.KeywordSearchRequest(query=query, k=_positive(k, "k"), type=type or "",
                                          property=property or "", where=wire.where_to_proto(where),
                                          columns=wire.columns_to_proto(columns))
        return self._table("KeywordSearch", request)

    def retrieve(self, question: str, k: int = 10, mode: str = "auto", embedder: Any = None,
                 token_budget: int | None = None, *, query_vector: Any = None, candidates: int | None = None,
                 params: Any = None) -> Any:
        """GraphRAG retrieval on the server -> RetrievalResult. An `embedder` runs here, in the client: the
        question's embedding travels as query_vector."""
        if not isinstance(question, str) or not question.strip():
            raise InvalidArgument("question must be a non-empty string")
        if query_vector is None and embedder is not None and mode != "keyword":
            query_vector = np.asarray(embedder.embed([question]), dtype=np.float32)[0]
        request = pb.RetrieveRequest(question=question, k=_positive(k, "k"), mode=str(mode),
                                     token_budget=0 if token_budget is None else _positive(token_budget, "token_budget"),
                                     candidates=0 if candidates is None else _positive(candidates, "candidates"),
                                     params_json=wire.params_to_json(params))
        if query_vector is not None:
            request.query_vector_f32 = _packed(query_vector)
        result = wire.result_from_json(self._call("Retrieve", request).result_json)
        for note in result.notes:
            warnings.warn(note, stacklevel=2)
        return result

    # -- writes -------------------------------------------------------------------------------------------------
    def transaction(self) -> RemoteTransaction:
        """A new transaction; commit() (or leaving a `with` block cleanly) makes it durable on the server."""
        return RemoteTransaction(self)


class RemoteTransaction:
    """Collects changes; `commit()` sends them as one Commit call (all or nothing) and returns the LSN."""

    def __init__(self, session: RemoteSession) -> None:
        self.session = session
        self.items: list[pb.WriteItem] = []
        self.lsn: int | None = None
        self._void = False

    def _guard(self) -> None:
        if self.lsn is not None or self._void:
            raise KnowledgeError("transaction already committed or rolled back")

    def _add(self, item: Any) -> RemoteTransaction:
        self._guard()
        try:
            self.items.append(item())
        except BaseException:
            self._void = True
            raise
        return self

    def upsert_nodes(self, type_name: str, rows: Any) -> RemoteTransaction:
        return self._add(lambda: pb.WriteItem(action="upsert_nodes", type=_type(type_name),
                                              rows=wire.rows_to_proto(rows, type_name)))

    def delete_nodes(self, type_name: str, keys: Iterable[Any]) -> RemoteTransaction:
        return self._add(lambda: pb.WriteItem(action="delete_nodes", type=_type(type_name),
                                              keys=[wire.key_to_proto(k) for k in _keys(keys)]))

    def upsert_edges(self, type_name: str, rows: Any) -> RemoteTransaction:
        return self._add(lambda: pb.WriteItem(action="upsert_edges", type=_type(type_name, "edge"),
                                              rows=wire.rows_to_proto(rows, type_name)))

    def delete_edges(self, type_name: str, rows: Any) -> RemoteTransaction:
        return self._add(lambda: pb.WriteItem(action="delete_edges", type=_type(type_name, "edge"),
                                              rows=wire.rows_to_proto(rows, type_name)))

    def commit(self) -> int:
        """Make the transaction durable and visible; return its LSN. Raises what the server's commit raised
        (DeadlineExceeded or Unavailable: the outcome is unknown; read back to know)."""
        self._guard()
        try:
            self.lsn = self.session._call("Commit", pb.CommitRequest(items=self.items)).lsn
        except BaseException:
            self._void = True
            raise
        return self.lsn

    def rollback(self) -> None:
        self._void = True
        self.items.clear()

    def __enter__(self) -> RemoteTransaction:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and not self._void and self.lsn is None:
            self.commit()
        else:
            self.rollback()
