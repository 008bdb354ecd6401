"""Session: every read and write of the store, bound to one principal and its visibility bitmap.

All reads pass the same filter: the principal's visibility bitmap over node ids (the rule is in
`knowledge/access/visibility.py`: alive nodes whose labels meet the principal's read grants; admins
see every alive node). Edges are visible only when both endpoints are. Invisible and absent are
indistinguishable: same NotFound error, same counts. Searches are inherited from
`knowledge/session_search.py:SessionSearch`; GraphRAG retrieval is `knowledge.graphrag.retrieve`
(`Session.retrieve` is a convenience that imports it when called).

Over ~450 lines on purpose: each read method carries its own visibility check and argument checks
next to it (so the filter every read passes is visible where the read is); searches already live
in session_search.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowledge.access.audit import AuditEntry
from knowledge.access.labels import readable_labels, with_readable_labels
from knowledge.access.principal import Principal
from knowledge.access.visibility import is_visible, visible_edges, visible_nodes
from knowledge.errors import (
    InvalidArgument,
    NodeIdNotFound,
    NotFound,
    PermissionDenied,
    StoreClosed,
    UnknownType,
)
from knowledge.session_pin import PinnedStore
from knowledge.session_search import SessionSearch, key_array, pinned_read, where_sql
from knowledge.session_where import check_offset, cursor_after, with_page
from knowledge.storage.tables import edge_table, node_table, query_arrow, quote
from knowledge.transaction import Transaction

if TYPE_CHECKING:
    from knowledge.views import StoreView

Direction = Literal["out", "in", "both"]
DIRECTIONS = ("out", "in", "both")
LIMIT_MAX = 1_000_000
DEPTH_MAX = 16


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node as a traversal sees it: dense id, type and key."""

    id: int
    type: str
    key: Any


class Session(SessionSearch):
    """A principal's view of the store. Cheap to create; not meant to be shared between threads."""

    def __init__(self, store: StoreView, principal: Principal | str) -> None:
        self.store = store
        self._pins: dict[int, Any] = {}  # thread id -> its read's PinnedStore (session_search.py:_at)
        self._principal = principal
        # (type=, property=, admin) -> (schema it was resolved in, type name, index key, vector index, key type)
        self._vector_properties: dict[tuple[str | None, str | None, bool], tuple[Any, str, Any, Any, str]] = {}
        # (principal, directory, its version, its capacity, bitmap) of the last visible()
        self._visible: tuple[Principal, Any, int, int, np.ndarray] | None = None
        self._visible_view: tuple[np.ndarray, np.ndarray] | None = None  # (bitmap, what visible() hands out)

    @property
    def principal(self) -> Principal:
        """The principal as of now: a named principal's grants are looked up on every call."""
        if isinstance(self._principal, str):
            principal = self._at.catalog.principals.get(self._principal)
            if principal is None:
                raise PermissionDenied(f"principal {self._principal!r} no longer exists")
            return principal
        return self._principal

    # -- visibility ---------------------------------------------------------------------------
    @pinned_read
    def visible(self) -> np.ndarray:
        """The visibility bitmap over node ids (read-only): True at the nodes this principal may see.

        An admin's covers every id; a non-admin's ends at its last visible id, so that nothing past it (how
        many nodes it cannot see were created later, the directory's capacity) shows. Below it, False reads
        the same for absent, deleted and invisible ids (dense ids have gaps: README, Security model)."""
        bitmap = self._bitmap()
        if self.principal.admin:
            return bitmap
        cached = self._visible_view
        if cached is not None and cached[0] is bitmap:
            return cached[1]
        found = np.flatnonzero(bitmap)
        view = bitmap[:int(found[-1]) + 1 if len(found) else 0]  # a read-only view of the read-only bitmap
        self._visible_view = (bitmap, view)
        return view

    def _bitmap(self) -> np.ndarray:
        """The whole visibility bitmap over node ids (read-only), for the session's own filtering."""
        principal, store = self.principal, self._at
        if store.engine.closed:
            raise StoreClosed(f"store {store.path!r} is closed: this session can no longer be used")
        directory, cached = store.directory, self._visible
        if (cached is not None and cached[0] is principal and cached[1] is directory
                and cached[2] == directory.version and cached[3] == directory.capacity and store.engine.failure is None):
            return cached[4]  # what store.visibility returns for the same key (it caches by it too)
        bitmap = store.visibility(principal)
        self._visible = (principal, directory, directory.version, directory.capacity, bitmap)
        return bitmap

    def _node_type(self, type_name: str) -> Any:
        node_type = self._at.schema.nodes.get(type_name)
        if node_type is None:
            raise UnknownType(f"unknown node type {type_name!r}", type_name=type_name)
        return node_type

    def _visible_id(self, type_name: str, key: Any) -> int:
        self._node_type(type_name)
        _check_key(key)
        node = self._at.directory.id_of(type_name, key)
        if not is_visible(self._bitmap(), node):
            raise NotFound(type_name, key)
        return node

    def _columns(self, type_name: str, columns: Iterable[str] | None) -> list[str]:
        node_type = self._node_type(type_name)
        allowed = [n for n, p in node_type.properties.items() if self.principal.admin or not p.hidden]
        if columns is None:
            return allowed
        if isinstance(columns, str | bytes) or not isinstance(columns, Iterable):
            raise InvalidArgument(f"columns must be a list of property names, got {type(columns).__name__}")
        chosen = list(columns)
        for name in chosen:
            if name not in allowed:
                raise InvalidArgument(f"node type {type_name!r} has no property {name!r}")
        return chosen

    def _audit(self, api: str, node_ids: Any) -> None:
        audit = self._at.audit
        if audit is not None:
            ids = node_ids.tolist() if isinstance(node_ids, np.ndarray) else list(node_ids)
            audit.record(self.principal.name, api, ids, self._at.memory_lsn)

    def audit_log(self, principal: str | None = None, api: str | None = None, node_id: int | None = None,
                  limit: int = 1000) -> list[AuditEntry]:
        """Audit entries, newest first (admins only; empty when auditing is off)."""
        self._at.engine.check_open()
        if not self.principal.admin:
            raise PermissionDenied("the audit log is readable by admins only")
        if limit is None:
            limit = 1000
        elif isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1_000_000:
            raise InvalidArgument(f"limit must be an int in 1..1000000, got {limit!r}")
        if self._at.audit is None:
            return []
        return self._at.audit.query(principal, api, node_id, limit)

    # -- point reads --------------------------------------------------------------------------
    @pinned_read
    def get(self, type_name: str, key: Any, columns: Iterable[str] | None = None) -> dict[str, Any]:
        """The node's properties plus `_id` and `_labels`; raises NotFound when absent or invisible."""
        node = self._visible_id(type_name, key)
        table = self._fetch(type_name, [node], self._columns(type_name, columns))
        if table.num_rows == 0:
            raise NotFound(type_name, key)
        self._audit("get", [node])
        row = _decode_row(self._node_type(type_name), table.to_pylist()[0])
        row["_labels"] = readable_labels(row["_labels"], self.principal)
        return row

    @pinned_read
    def get_many(self, type_name: str, keys: Iterable[Any], columns: Iterable[str] | None = None) -> pa.Table:
        """Rows of the visible nodes among `keys` (absent or invisible keys are skipped)."""
        self._node_type(type_name)
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            raise InvalidArgument(f"keys must be a list of node keys, got {type(keys).__name__}")
        keys = [_check_key(key) for key in keys]
        visible = self._bitmap()
        ids = [n for n in (self._at.directory.id_of(type_name, k) for k in keys) if is_visible(visible, n)]
        self._audit("get_many", ids)
        return with_readable_labels(self._fetch(type_name, ids, self._columns(type_name, columns)), self.principal)

    def _fetch(self, type_name: str, ids: list[int], columns: list[str]) -> pa.Table:
        """`_id`, `_labels` and `columns` of the nodes `ids` (already visibility-checked), in id order.

        Reads that want no vector column go through the row cache, which holds rows without their
        vectors (large, and fetched for search results only); the rest come from DuckDB.
        """
        cache = self._at.row_cache
        token = cache.token()  # before the DuckDB read: a write applied after it keeps this read out
        wanted = ["_id", "_labels", *columns]
        cached_columns = self._cached_columns(type_name) if cache.rows_max else None
        if cached_columns is None or not set(columns) <= set(cached_columns):
            self._at.wait_applied()
            return self._fetch_rows(type_name, ids, wanted)
        found = cache.get_many(type_name, ids)
        missing = [node for node in ids if node not in found]
        parts = list(found.values())
        if missing or not ids:
            self._at.wait_applied()
            fetched = self._fetch_rows(type_name, missing, ["_id", "_labels", "_lsn", *cached_columns])
            cache.put(type_name, fetched, token)
            if not found:
                return fetched.select(wanted)
            parts.append(fetched)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if len(ids) > 1:
            table = table.take(pc.sort_indices(table.column("_id")))
        return table.select(wanted)

    def _cached_columns(self, type_name: str) -> list[str]:
        """The property columns a row cache entry of `type_name` holds: all but the vectors."""
        return [name for name, prop in self._node_type(type_name).properties.items() if not prop.is_vector]

    def _fetch_rows(self, type_name: str, ids: list[int], columns: list[str]) -> pa.Table:
        """`columns` of the rows of `ids` from DuckDB, in id order."""
        cols = ", ".join(quote(c) for c in columns)
        cursor = self._at.tables.cursor()
        try:
            if len(ids) == 1:
                return query_arrow(cursor, f"SELECT {cols} FROM {node_table(type_name)} WHERE _id = ?", ids)
            ids_table = pa.table({"id": pa.array(ids, type=pa.int64())})
            cursor.register("_ids", ids_table)
            return query_arrow(cursor, f"SELECT {cols} FROM {node_table(type_name)} WHERE _id IN (SELECT id FROM _ids) "
                                  f"ORDER BY _id")
        finally:
            cursor.close()

    @pinned_read
    def ref(self, node: int) -> NodeRef:
        """The type and key of the node with dense id `node`; raises NodeIdNotFound when it is absent or
        invisible (the same error, naming only the id), InvalidArgument for a non-integer or negative id."""
        if isinstance(node, bool) or not isinstance(node, int | np.integer) or node < 0:
            raise InvalidArgument(f"a node id is a non-negative int, got {node!r}")
        node = int(node)
        if not is_visible(self._bitmap(), node):
            raise NodeIdNotFound(node)
        directory = self._at.directory
        return NodeRef(node, directory.type_names[directory.type_of[node]], directory.key_of[node])

    # -- graph --------------------------------------------------------------------------------
    def _edge_types(self, edge_type: str | Iterable[str] | None) -> list[str]:
        edges = self._at.schema.edges
        if not self.principal.admin:  # for a non-admin a hidden edge type does not exist
            edges = {name: edge for name, edge in edges.items() if not edge.hidden}
        if edge_type is None:
            return list(edges)
        if not isinstance(edge_type, str) and (isinstance(edge_type, bytes) or not isinstance(edge_type, Iterable)):
            raise InvalidArgument(f"edge_type must be an edge type name or a list of them, got {edge_type!r}")
        names = [edge_type] if isinstance(edge_type, str) else list(edge_type)
        for name in names:
            if name not in edges:
                raise UnknownType(f"unknown edge type {name!r}", type_name=name)
        return names

    @pinned_read
    def neighbors(self, type_name: str, key: Any, edge_type: str | Iterable[str] | None = None,
                  direction: Direction = "out", limit: int = 1000) -> list[NodeRef]:
        """Visible neighbours of a visible node, ordered by id; raises NotFound, InvalidArgument."""
        _check_direction(direction)
        _check_limit(limit)
        node = self._visible_id(type_name, key)
        visible = self._bitmap()
        found: list[np.ndarray] = []
        with self._at.state_lock:
            for name in self._edge_types(edge_type):
                index = self._at.edges[name]
                if direction in ("out", "both"):
                    found.append(index.neighbours(node, True))
                if direction in ("in", "both"):
                    found.append(index.neighbours(node, False))
        ids = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        ids = visible_nodes(visible, ids)[:limit]
        self._audit("neighbors", ids)
        return [self.ref(n) for n in ids.tolist()]

    @pinned_read
    def traverse(self, type_name: str, key: Any, edge_type: str | Iterable[str] | None = None,
                 direction: Direction = "out", depth: int = 2, limit: int = 10_000) -> pa.Table:
        """Breadth-first k-hop walk from a visible node through visible nodes only.

        Returns an Arrow table (id, type, key, depth) of at most `limit` nodes, the start at depth 0.
        Nodes reachable only through invisible nodes are not reached.
        """
        _check_direction(direction)
        _check_limit(limit)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= DEPTH_MAX:
            raise InvalidArgument(f"depth must be in 1..{DEPTH_MAX}, got {depth}")
        start = self._visible_id(type_name, key)
        visible = self._bitmap()
        names = self._edge_types(edge_type)
        seen = np.zeros(len(visible), dtype=bool)
        seen[start] = True
        order, depths = [np.array([start], dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
        frontier = order[0]
        total = 1
        with self._at.state_lock:
            for level in range(1, depth + 1):
                if total >= limit or not len(frontier):
                    break
                nxt = self._expand(frontier, names, direction)
                nxt = nxt[nxt < len(visible)]
                nxt = np.unique(nxt[visible[nxt] & ~seen[nxt]])[:limit - total]
                seen[nxt] = True
                order.append(nxt)
                depths.append(np.full(len(nxt), level, dtype=np.int64))
                total += len(nxt)
                frontier = nxt
        ids = np.concatenate(order)
        self._audit("traverse", ids)
        directory = self._at.directory
        types = [directory.type_names[c] for c in directory.type_of[ids].tolist()]
        return pa.table({"id": ids, "type": types, "key": key_array(directory.key_of[ids].tolist()),
                         "depth": np.concatenate(depths)})

    def _expand(self, frontier: np.ndarray, names: list[str], direction: str) -> np.ndarray:
        parts = []
        for name in names:
            index = self._at.edges[name]
            if direction in ("out", "both"):
                parts.append(index.expand(frontier, True)[1])
            if direction in ("in", "both"):
                parts.append(index.expand(frontier, False)[1])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @pinned_read
    def adjacency(self, edge_type: str | Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every visible edge of the given types as arrays (src ids, dst ids, edge-type index into the list
        of types asked for), for graph algorithms (e.g. personalized PageRank) over the visible subgraph."""
        names = self._edge_types(edge_type)
        visible = self._bitmap()
        srcs, dsts, kinds = [], [], []
        with self._at.state_lock:
            for position, name in enumerate(names):
                src, dst = visible_edges(visible, *self._at.edges[name].all_pairs())
                srcs.append(src)
                dsts.append(dst)
                kinds.append(np.full(len(src), position, dtype=np.int16))
        if not srcs:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.int16)
        return np.concatenate(srcs), np.concatenate(dsts), np.concatenate(kinds)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[int]:
        """Hold this thread's reads at one LSN for a group of reads (yields that LSN).

        Reads inside (in this thread) see exactly the yielded LSN: they all read one read view
        (`knowledge/storage/versions.py:ReadView`), holding no lock, so other threads read in parallel and
        commits go on (and are visible outside the block) meanwhile. A view kept long holds the memory of
        what commits replaced since, and of its DuckDB snapshot: keep the block to a retrieval, not a user
        interaction.
        """
        real = self.store
        real.engine.check_open()
        pins, me = self._pins, threading.get_ident()
        outer = pins.get(me)
        if outer is None:  # its tables asked for at once: a read inside may need them
            pins[me] = PinnedStore(real, real.engine.read_view(tables=True))
        try:
            yield self._view().lsn if self.principal.admin else self._view_lsn()
        finally:
            if outer is None:
                del pins[me]

    @pinned_read
    def edges(self, edge_type: str, limit: int | None = None) -> pa.Table:
        """Visible edges of one type: src/dst ids, keys and properties (Arrow)."""
        self._edge_types(edge_type)
        self._at.wait_applied()
        visible_ids = pa.table({"id": pa.array(np.flatnonzero(self._bitmap()), type=pa.int64())})
        cursor = self._at.tables.cursor()
        try:
            cursor.register("_vis", visible_ids)
            shown = [name for name, prop in self._at.schema.edges[edge_type].properties.items()
                     if self.principal.admin or not prop.hidden]  # for a non-admin a hidden property does not exist
            cols = ", ".join(["_src", "_dst", *(quote(name) for name in shown)])
            sql = (f"SELECT {cols} FROM {edge_table(edge_type)} WHERE _src IN (SELECT id FROM _vis) "
                   f"AND _dst IN (SELECT id FROM _vis) ORDER BY _src, _dst")
            if limit is not None:
                _check_limit(limit)
                sql += f" LIMIT {int(limit)}"
            table = query_arrow(cursor, sql)
            self._audit("edges", np.unique(np.concatenate([table.column("_src").to_numpy(),
                                                           table.column("_dst").to_numpy()])))
            return table
        finally:
            cursor.close()

    def retrieve(self, question: str, k: int = 10, mode: str = "auto", **options: Any) -> Any:
        """GraphRAG retrieval over this session's visible chunks, entities and edges at one snapshot:
        `knowledge.graphrag.retrieve(self, question, k, mode, **options)` -> RetrievalResult (see there
        for the modes, options such as embedder= and token_budget=, and the errors raised)."""
        from knowledge.graphrag.retrieve import retrieve

        return retrieve(self, question, k, mode, **options)

    # -- scans and counts ---------------------------------------------------------------------
    @pinned_read
    def scan(self, type_name: str, where: dict[str, Any] | None = None, columns: Iterable[str] | None = None,
             limit: int | None = None, offset: int = 0, cursor: str | None = None) -> pa.Table:
        """Visible rows of one node type matching `where`, as Arrow (with `_id` and `_labels`), in id order.

        `where` maps a property to a value (equality; None: IS NULL) or to (operator, value) with operator
        one of = != < <= > >= like in contains between (contains: a list[str] property holds the value;
        between: (low, high), both included; ("!=", None): IS NOT NULL); the key "$or" takes a list of such
        dicts, any of which may hold (see knowledge.session_where).

        Pages: at most `limit` rows, after skipping `offset` matching rows, after the row an opaque `cursor`
        names. With any of these the result's schema metadata holds `next_cursor` (resumes after the last
        row returned) and `has_more` (b"true" when more rows matched as of this read).
        """
        chosen = self._columns(type_name, columns)
        clauses, params = where_sql(self._node_type(type_name), where or {}, self.principal)
        after, skip = cursor_after(cursor, type_name), check_offset(offset)
        if limit is not None:
            _check_limit(limit)
        self._at.wait_applied()
        db = self._at.tables.cursor()
        try:
            if not self.principal.admin or (self._at.directory.expired is not None  # (refreshed: storage/ttl.py)
                                            and self._at.engine.ttl.live_expired):  # expired rows: filter
                visible = self._bitmap()
                code = self._at.directory.type_codes[type_name]
                ids = np.flatnonzero(visible & (self._at.directory.type_of[:len(visible)] == code))
                db.register("_vis", pa.table({"id": pa.array(ids[ids > after], type=pa.int64())}))
                clauses.append("_id IN (SELECT id FROM _vis)")
            if after >= 0:
                clauses.append(f"_id > {int(after)}")
            cols = ", ".join(["_id", "_labels", *(quote(c) for c in chosen)])
            sql = f"SELECT {cols} FROM {node_table(type_name)}"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY _id" + ("" if limit is None else f" LIMIT {int(limit) + 1}") + f" OFFSET {skip}"
            table = query_arrow(db, sql, params)
            more = limit is not None and table.num_rows > limit
            table = table.slice(0, limit) if more else table
            self._audit("scan", table.column("_id").to_numpy())
            table = with_readable_labels(table, self.principal)
            paged = limit is not None or skip > 0 or cursor is not None
            return with_page(table, type_name, after, more) if paged else table
        finally:
            db.close()

    @pinned_read
    def count(self, type_name: str | None = None) -> int:
        """How many nodes (of one type) this principal can see."""
        visible = self._bitmap()
        if type_name is None:
            return int(np.count_nonzero(visible))
        self._node_type(type_name)
        code = self._at.directory.type_codes[type_name]
        return int(np.count_nonzero(visible & (self._at.directory.type_of[:len(visible)] == code)))

    @pinned_read
    def stats(self) -> dict[str, Any]:
        """Visible node counts per type and visible edge counts per type, with the LSN they reflect."""
        with self._at.state_lock:
            visible = self._bitmap()
            edges = {}
            for name in self._edge_types(None):
                edges[name] = len(visible_edges(visible, *self._at.edges[name].all_pairs())[0])
            return {"lsn": self._at.memory_lsn if self.principal.admin else self._view_lsn(),
                    "nodes": {name: self.count(name) for name in self._at.schema.nodes},
                    "edges": edges}

    def _view_lsn(self) -> int:
        """For a non-admin, the LSN of the last write it could see: the store's LSN would count the writes it
        cannot see. Its reads are still made at one store LSN; nothing it sees changed in between."""
        return self.store.engine.view_lsn(self.principal, isinstance(self._principal, str), self._view())

    # -- writes -------------------------------------------------------------------------------
    def transaction(self) -> Transaction:
        """A new transaction; commit() (or leaving a `with` block cleanly) makes it durable."""
        return Transaction(self)


def _check_key(key: Any) -> Any:
    """`key` when it can be a node key (a str or an int); InvalidArgument otherwise."""
    if isinstance(key, bool) or not isinstance(key, str | int | np.integer):
        raise InvalidArgument(f"a node key is a str or an int, got {type(key).__name__} {key!r}")
    return key


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InvalidArgument(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIMIT_MAX:
        raise InvalidArgument(f"limit must be an int in 1..{LIMIT_MAX}, got {limit!r}")


def _decode_row(node_type: Any, row: dict[str, Any]) -> dict[str, Any]:
    for name, prop in node_type.properties.items():
        if prop.type == "json" and row.get(name) is not None:
            row[name] = json.loads(row[name])
    return row


__all__ = ["NodeRef", "Session"]
