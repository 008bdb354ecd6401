"""Session: every read and write of the store, bound to one principal and its visibility bitmap.

All reads pass the same filter: the principal's visibility bitmap over node ids (alive nodes
whose labels meet the principal's read grants; admins see every alive node). Edges are visible
only when both endpoints are. Invisible and absent are indistinguishable: same NotFound error,
same counts.
"""

from __future__ import annotations

import array
import contextlib
import functools
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowledge.audit import AuditEntry
from knowledge.errors import InvalidArgument, NotFound, PermissionDenied, UnknownType
from knowledge.principal import Principal
from knowledge.tables import edge_table, node_table, query_arrow, quote
from knowledge.transaction import Transaction

if TYPE_CHECKING:
    from knowledge.store import Store

Direction = Literal["out", "in", "both"]
DIRECTIONS = ("out", "in", "both")
LIMIT_MAX = 1_000_000
DEPTH_MAX = 16
SEARCH_K_MAX = 10_000
RANKED_SCHEMAS_MAX = 64  # cached `_id, _key, _score` schemas, one per (key type, plan)
_RANKED_NAMES = ["_id", "_key", "_score"]
_INT64, _FLOAT32, _STRING = pa.int64(), pa.float32(), pa.string()
_KEY_TYPES = {"str": _STRING, "int": _INT64}  # a key property's type -> the Arrow type of its values
_INT64_DTYPE, _FLOAT32_DTYPE = np.dtype(np.int64), np.dtype(np.float32)
RANKED_KEYS_BUILT_MAX = 256  # up to this many str keys, the key column's buffers are built in Python
_RANKED_SCHEMAS: dict[tuple[str, str | None], pa.Schema] = {}
_OPERATORS = {"=": "=", "==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE"}


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node as a traversal sees it: dense id, type and key."""

    id: int
    type: str
    key: Any


_F = TypeVar("_F", bound=Callable[..., Any])


def _consistent(method: _F) -> _F:
    """Run a read under the store's state lock, so its visibility check and the rows it then fetches
    belong to one LSN: a commit that relabels or rewrites a node cannot land in between (it waits)."""
    @functools.wraps(method)
    def wrapper(self: Session, *args: Any, **kwargs: Any) -> Any:
        with self.store._state:
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


class Session:
    """A principal's view of the store. Cheap to create; not meant to be shared between threads."""

    def __init__(self, store: Store, principal: Principal | str) -> None:
        self.store = store
        self._principal = principal
        # (type=, property=) -> (schema it was resolved in, type name, index key, vector index, key type)
        self._vector_properties: dict[tuple[str | None, str | None], tuple[Any, str, Any, Any, str]] = {}
        # (principal, directory, its version, its capacity, bitmap) of the last visible()
        self._visible: tuple[Principal, Any, int, int, np.ndarray] | None = None

    @property
    def principal(self) -> Principal:
        """The principal as of now: a named principal's grants are looked up on every call."""
        if isinstance(self._principal, str):
            principal = self.store.catalog.principals.get(self._principal)
            if principal is None:
                raise PermissionDenied(f"principal {self._principal!r} no longer exists")
            return principal
        return self._principal

    # -- visibility ---------------------------------------------------------------------------
    def visible(self) -> np.ndarray:
        """The visibility bitmap over node ids (read-only)."""
        principal, store = self.principal, self.store
        directory, cached = store.directory, self._visible
        if (cached is not None and cached[0] is principal and cached[1] is directory
                and cached[2] == directory.version and cached[3] == directory.capacity and store._failure is None):
            return cached[4]  # what store.visibility returns for the same key (it caches by it too)
        bitmap = store.visibility(principal)
        self._visible = (principal, directory, directory.version, directory.capacity, bitmap)
        return bitmap

    def _node_type(self, type_name: str) -> Any:
        node_type = self.store.schema.nodes.get(type_name)
        if node_type is None:
            raise UnknownType(f"unknown node type {type_name!r}", type_name=type_name)
        return node_type

    def _visible_id(self, type_name: str, key: Any) -> int:
        self._node_type(type_name)
        node = self.store.directory.id_of(type_name, key)
        visible = self.visible()
        if node is None or node >= len(visible) or not visible[node]:
            raise NotFound(type_name, key)
        return node

    def _columns(self, type_name: str, columns: Iterable[str] | None) -> list[str]:
        node_type = self._node_type(type_name)
        allowed = [n for n, p in node_type.properties.items() if self.principal.admin or not p.hidden]
        if columns is None:
            return allowed
        chosen = list(columns)
        for name in chosen:
            if name not in allowed:
                raise InvalidArgument(f"node type {type_name!r} has no property {name!r}")
        return chosen

    def _audit(self, api: str, node_ids: Any) -> None:
        audit = self.store.audit
        if audit is not None:
            ids = node_ids.tolist() if isinstance(node_ids, np.ndarray) else list(node_ids)
            audit.record(self.principal.name, api, ids, self.store.memory_lsn)

    def audit_log(self, principal: str | None = None, api: str | None = None, node_id: int | None = None,
                  limit: int = 1000) -> list[AuditEntry]:
        """Audit entries, newest first (admins only; empty when auditing is off)."""
        if not self.principal.admin:
            raise PermissionDenied("the audit log is readable by admins only")
        if self.store.audit is None:
            return []
        return self.store.audit.query(principal, api, node_id, limit)

    # -- point reads --------------------------------------------------------------------------
    @_consistent
    def get(self, type_name: str, key: Any, columns: Iterable[str] | None = None) -> dict[str, Any]:
        """The node's properties plus `_id` and `_labels`; raises NotFound when absent or invisible."""
        node = self._visible_id(type_name, key)
        table = self._fetch(type_name, [node], self._columns(type_name, columns))
        if table.num_rows == 0:
            raise NotFound(type_name, key)
        self._audit("get", [node])
        return _decode_row(self._node_type(type_name), table.to_pylist()[0])

    @_consistent
    def get_many(self, type_name: str, keys: Iterable[Any], columns: Iterable[str] | None = None) -> pa.Table:
        """Rows of the visible nodes among `keys` (absent or invisible keys are skipped)."""
        self._node_type(type_name)
        visible = self.visible()
        ids = [n for n in (self.store.directory.id_of(type_name, k) for k in keys)
               if n is not None and n < len(visible) and visible[n]]
        self._audit("get_many", ids)
        return self._fetch(type_name, ids, self._columns(type_name, columns))

    def _fetch(self, type_name: str, ids: list[int], columns: list[str]) -> pa.Table:
        """`_id`, `_labels` and `columns` of the nodes `ids` (already visibility-checked), in id order.

        Reads that want no vector column go through the row cache, which holds rows without their
        vectors (large, and fetched for search results only); the rest come from DuckDB.
        """
        cache = self.store.row_cache
        token = cache.token()  # before the DuckDB read: a write applied after it keeps this read out
        wanted = ["_id", "_labels", *columns]
        cached_columns = self._cached_columns(type_name) if cache.rows_max else None
        if cached_columns is None or not set(columns) <= set(cached_columns):
            self.store.wait_applied()
            return self._fetch_rows(type_name, ids, wanted)
        found = cache.get_many(type_name, ids)
        missing = [node for node in ids if node not in found]
        parts = list(found.values())
        if missing or not ids:
            self.store.wait_applied()
            fetched = self._fetch_rows(type_name, missing, ["_id", "_labels", *cached_columns])
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
        cursor = self.store.tables.cursor()
        try:
            if len(ids) == 1:
                return query_arrow(cursor, f"SELECT {cols} FROM {node_table(type_name)} WHERE _id = ?", ids)
            ids_table = pa.table({"id": pa.array(ids, type=pa.int64())})
            cursor.register("_ids", ids_table)
            return query_arrow(cursor, f"SELECT {cols} FROM {node_table(type_name)} WHERE _id IN (SELECT id FROM _ids) "
                                  f"ORDER BY _id")
        finally:
            cursor.close()

    def ref(self, node: int) -> NodeRef:
        directory = self.store.directory
        return NodeRef(node, directory.type_names[directory.type_of[node]], directory.key_of[node])

    # -- graph --------------------------------------------------------------------------------
    def _edge_types(self, edge_type: str | Iterable[str] | None) -> list[str]:
        edges = self.store.schema.edges
        if edge_type is None:
            return list(edges)
        names = [edge_type] if isinstance(edge_type, str) else list(edge_type)
        for name in names:
            if name not in edges:
                raise UnknownType(f"unknown edge type {name!r}", type_name=name)
        return names

    @_consistent
    def neighbors(self, type_name: str, key: Any, edge_type: str | Iterable[str] | None = None,
                  direction: Direction = "out", limit: int = 1000) -> list[NodeRef]:
        """Visible neighbours of a visible node, ordered by id; raises NotFound, InvalidArgument."""
        _check_direction(direction)
        _check_limit(limit)
        node = self._visible_id(type_name, key)
        visible = self.visible()
        found: list[np.ndarray] = []
        with self.store._state:
            for name in self._edge_types(edge_type):
                index = self.store.edges[name]
                if direction in ("out", "both"):
                    found.append(index.neighbours(node, True))
                if direction in ("in", "both"):
                    found.append(index.neighbours(node, False))
        ids = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        ids = ids[ids < len(visible)]
        ids = ids[visible[ids]][:limit]
        self._audit("neighbors", ids)
        return [self.ref(n) for n in ids.tolist()]

    @_consistent
    def traverse(self, type_name: str, key: Any, edge_type: str | Iterable[str] | None = None,
                 direction: Direction = "out", depth: int = 2, limit: int = 10_000) -> pa.Table:
        """Breadth-first k-hop walk from a visible node through visible nodes only.

        Returns an Arrow table (id, type, key, depth) of at most `limit` nodes, the start at depth 0.
        Nodes reachable only through invisible nodes are not reached.
        """
        _check_direction(direction)
        _check_limit(limit)
        if not 1 <= depth <= DEPTH_MAX:
            raise InvalidArgument(f"depth must be in 1..{DEPTH_MAX}, got {depth}")
        start = self._visible_id(type_name, key)
        visible = self.visible()
        names = self._edge_types(edge_type)
        seen = np.zeros(len(visible), dtype=bool)
        seen[start] = True
        order, depths = [np.array([start], dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
        frontier = order[0]
        total = 1
        with self.store._state:
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
        directory = self.store.directory
        types = [directory.type_names[c] for c in directory.type_of[ids].tolist()]
        return pa.table({"id": ids, "type": types, "key": pa.array(directory.key_of[ids].tolist()),
                         "depth": np.concatenate(depths)})

    def _expand(self, frontier: np.ndarray, names: list[str], direction: str) -> np.ndarray:
        parts = []
        for name in names:
            index = self.store.edges[name]
            if direction in ("out", "both"):
                parts.append(index.expand(frontier, True)[1])
            if direction in ("in", "both"):
                parts.append(index.expand(frontier, False)[1])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def adjacency(self, edge_type: str | Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every visible edge of the given types as arrays (src ids, dst ids, edge-type index into the list
        of types asked for), for graph algorithms (e.g. personalized PageRank) over the visible subgraph."""
        names = self._edge_types(edge_type)
        visible = self.visible()
        srcs, dsts, kinds = [], [], []
        with self.store._state:
            for position, name in enumerate(names):
                src, dst = self.store.edges[name].all_pairs()
                keep = (src < len(visible)) & (dst < len(visible))
                src, dst = src[keep], dst[keep]
                keep = visible[src] & visible[dst]
                srcs.append(src[keep])
                dsts.append(dst[keep])
                kinds.append(np.full(int(keep.sum()), position, dtype=np.int16))
        if not srcs:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.int16)
        return np.concatenate(srcs), np.concatenate(dsts), np.concatenate(kinds)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[int]:
        """Hold the store at one LSN for a group of reads (yields that LSN).

        Commits that finish meanwhile wait to become visible until the block ends, so keep it short
        (a retrieval, not a user interaction). Reads inside see exactly the yielded LSN.
        """
        with self.store._state:
            lsn = self.store.memory_lsn
            self.store.wait_applied(lsn)
            yield lsn

    @_consistent
    def edges(self, edge_type: str, limit: int | None = None) -> pa.Table:
        """Visible edges of one type: src/dst ids, keys and properties (Arrow)."""
        self._edge_types(edge_type)
        self.store.wait_applied()
        visible_ids = pa.table({"id": pa.array(np.flatnonzero(self.visible()), type=pa.int64())})
        cursor = self.store.tables.cursor()
        try:
            cursor.register("_vis", visible_ids)
            sql = (f"SELECT * EXCLUDE (_lsn) FROM {edge_table(edge_type)} WHERE _src IN (SELECT id FROM _vis) "
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

    # -- vector search ------------------------------------------------------------------------
    def search(self, vector: Any, k: int = 10, type: str | None = None, property: str | None = None,
               where: dict[str, Any] | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        """The k visible nodes nearest to `vector` that match `where`, best first, as Arrow.

        Columns: `_id`, `_key`, `_score` (cosine/ip similarity, higher is better; l2 squared distance,
        lower is better), then the requested properties. The where-filter and the session's
        visibility form one mask applied before ranking: fewer than k rows come back only when
        fewer than k nodes qualify. The plan taken is in the schema metadata (b"plan").
        Raises UnknownType, InvalidArgument (wrong dimension, NaN/inf, k out of 1..10000).

        The answer is as of one LSN, like every read. The where-filter's table query and faiss's CPU scan
        run outside the store's state lock, so searches from several threads run them in parallel and
        commits do not wait for them; a commit that lands meanwhile makes the search run again under the
        lock (inside `snapshot()`, the lock is held throughout).
        """
        store, state = self.store, self.store._state
        columns = None if columns is None else list(columns)  # read twice (checked, then fetched)
        with state:
            target, query, visible = self._search_inputs(vector, k, type, property, columns)
            lsn = store.memory_lsn
        matching = self._where_mask(target[0], where, len(visible)) if where else None  # a table query
        job = None
        with state:
            if store.memory_lsn == lsn:
                job = target[1].plan_search(query, k, visible if matching is None else visible & matching)
        result = None if job is None else job()  # the scan
        with state:
            if result is None or store.memory_lsn != lsn:  # a commit landed meanwhile, or too few found alone
                target, query, visible = self._search_inputs(vector, k, type, property, columns)
                allowed = visible & self._where_mask(target[0], where, len(visible)) if where else visible
                result = target[1].search_prepared(query, k, allowed)
            type_name, _, key_type = target
            ids, scores, plan = result
            return self._ranked(type_name, ids, scores, columns, "search", plan, key_type)

    def _search_inputs(self, vector: Any, k: int, type_name: str | None, prop_name: str | None,
                       columns: list[str] | None) -> tuple[tuple[str, Any, str], np.ndarray, np.ndarray]:
        """(`_search_target`, the prepared query, the visibility bitmap) of a search, its arguments checked.
        Call under the state lock."""
        target = self._search_target(type_name, prop_name)
        type_name, index, _ = target
        query = index.query_vector(vector)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= SEARCH_K_MAX:
            raise InvalidArgument(f"k must be an int in 1..{SEARCH_K_MAX}, got {k!r}")
        if columns is not None:
            self._columns(type_name, columns)
        return target, query, self.visible()

    @_consistent
    def keyword_search(self, query: str, k: int = 10, type: str | None = None, property: str | None = None,
                       where: dict[str, Any] | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        """The k visible nodes whose `text` property best matches `query` (BM25), best first, as Arrow.

        Columns `_id`, `_key`, `_score`, then the requested properties. Corpus statistics (document
        counts, lengths) are computed over the visible, where-matching documents only, so scores do
        not depend on what the session cannot see. Raises InvalidArgument, UnknownType.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgument("keyword query must be a non-empty string")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= SEARCH_K_MAX:
            raise InvalidArgument(f"k must be an int in 1..{SEARCH_K_MAX}, got {k!r}")
        if type is not None:
            self._node_type(type)
        candidates = [key for key in self.store.keywords
                      if (type is None or key[0] == type) and (property is None or key[1] == property)]
        if len(candidates) != 1:
            raise InvalidArgument(f"{'no' if not candidates else 'several'} text properties match "
                                  f"{[f'{t}.{p}' for t, p in candidates]}; name type= and property=")
        type_name, _ = candidates[0]
        allowed = self.visible()
        if where:
            allowed = allowed & self._where_mask(type_name, where, len(allowed))
        with self.store._state:
            ids, scores = self.store.keywords[candidates[0]].search(query, k, allowed)
        return self._ranked(type_name, ids, scores, columns, "search_keyword")

    def _ranked(self, type_name: str, ids: np.ndarray, scores: np.ndarray, columns: Iterable[str] | None,
                api: str, plan: str | None = None, key_type: str | None = None) -> pa.Table:
        """`_id`, `_key` (from the directory), `_score`, then the requested columns (from DuckDB, only when
        some are requested) of ranked nodes; `plan`, when given, as the schema metadata b"plan"."""
        chosen = self._columns(type_name, columns) if columns is not None else []
        table = _ranked_table(ids, self.store.directory.key_of[ids].tolist(), scores, key_type, plan)
        if chosen:
            table = pa.Table.from_arrays([*table.columns, *self._property_columns(type_name, ids, chosen)],
                                         names=[*_RANKED_NAMES, *chosen], metadata=table.schema.metadata)
        self._audit(api, ids)
        return table

    def _property_columns(self, type_name: str, ids: np.ndarray, chosen: list[str]) -> list[Any]:
        """The `chosen` property columns of nodes `ids`, in that order."""
        if not len(ids):
            node_type = self._node_type(type_name)
            return [pa.array([], type=node_type.properties[name].arrow_type()) for name in chosen]
        rows = self._fetch(type_name, ids.tolist(), chosen)
        position = {node: i for i, node in enumerate(rows.column("_id").to_pylist())}
        rows = rows.take(pa.array([position[n] for n in ids.tolist()]))
        return [rows.column(name) for name in chosen]

    def _search_target(self, type_name: str | None, prop_name: str | None) -> tuple[str, Any, str]:
        """The node type `_vector_property` finds, its vector index and its key property's type ("str" or
        "int"), remembered per (schema, index) (a schema is immutable: a change replaces it)."""
        store = self.store
        schema, vectors = store.schema, store.vectors
        cached = self._vector_properties.get((type_name, prop_name))
        if cached is not None and cached[0] is schema and vectors.get(cached[2]) is cached[3]:
            return cached[1], cached[3], cached[4]
        found_type, prop = self._vector_property(type_name, prop_name)
        node_type = schema.nodes[found_type]
        key_type = node_type.properties[node_type.key].type
        index_key = (found_type, prop.name)
        index = vectors[index_key]
        self._vector_properties[(type_name, prop_name)] = (schema, found_type, index_key, index, key_type)
        return found_type, index, key_type

    def _vector_property(self, type_name: str | None, prop_name: str | None) -> tuple[str, Any]:
        candidates = [(t, p) for t, nt in self.store.schema.nodes.items() for p in nt.vector_properties
                      if (type_name is None or t == type_name) and (prop_name is None or p.name == prop_name)]
        if type_name is not None:
            self._node_type(type_name)
        if not candidates:
            raise InvalidArgument(f"no vector property {prop_name or ''!s} on {type_name or 'any node type'}")
        if len(candidates) > 1:
            raise InvalidArgument(f"several vector properties match ({[f'{t}.{p.name}' for t, p in candidates]}); "
                                  f"name type= and property=")
        return candidates[0]

    def _where_mask(self, type_name: str, where: dict[str, Any], size: int) -> np.ndarray:
        clauses, params = _where_sql(self._node_type(type_name), where, self.principal)
        self.store.wait_applied()
        cursor = self.store.tables.cursor()
        try:
            table = query_arrow(cursor, f"SELECT _id FROM {node_table(type_name)} WHERE {' AND '.join(clauses)}",
                                params)
        finally:
            cursor.close()
        mask = np.zeros(size, dtype=bool)
        ids = table.column("_id").to_numpy()
        mask[ids[ids < size]] = True
        return mask

    def retrieve(self, question: str, k: int = 10, mode: str = "auto", **options: Any) -> Any:
        """GraphRAG retrieval over this session's visible chunks, entities and edges at one snapshot:
        `knowledge.graphrag.retrieve(self, question, k, mode, **options)` -> RetrievalResult (see there
        for the modes, options such as embedder= and token_budget=, and the errors raised)."""
        from knowledge.graphrag.retrieve import retrieve

        return retrieve(self, question, k, mode, **options)

    # -- scans and counts ---------------------------------------------------------------------
    @_consistent
    def scan(self, type_name: str, where: dict[str, Any] | None = None, columns: Iterable[str] | None = None,
             limit: int | None = None) -> pa.Table:
        """Visible rows of one node type matching `where`, as Arrow (with `_id` and `_labels`).

        `where` maps a property to a value (equality) or to (operator, value) with operator one of
        = != < <= > >= like in contains (contains: a list[str] property holds the value).
        """
        chosen = self._columns(type_name, columns)
        clauses, params = _where_sql(self._node_type(type_name), where or {}, self.principal)
        self.store.wait_applied()
        cursor = self.store.tables.cursor()
        try:
            if not self.principal.admin:
                visible = self.visible()
                code = self.store.directory.type_codes[type_name]
                ids = np.flatnonzero(visible & (self.store.directory.type_of[:len(visible)] == code))
                cursor.register("_vis", pa.table({"id": pa.array(ids, type=pa.int64())}))
                clauses.append("_id IN (SELECT id FROM _vis)")
            cols = ", ".join(["_id", "_labels", *(quote(c) for c in chosen)])
            sql = f"SELECT {cols} FROM {node_table(type_name)}"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += " ORDER BY _id"
            if limit is not None:
                _check_limit(limit)
                sql += f" LIMIT {int(limit)}"
            table = query_arrow(cursor, sql, params)
            self._audit("scan", table.column("_id").to_numpy())
            return table
        finally:
            cursor.close()

    def count(self, type_name: str | None = None) -> int:
        """How many nodes (of one type) this principal can see."""
        visible = self.visible()
        if type_name is None:
            return int(np.count_nonzero(visible))
        self._node_type(type_name)
        code = self.store.directory.type_codes[type_name]
        return int(np.count_nonzero(visible & (self.store.directory.type_of[:len(visible)] == code)))

    def stats(self) -> dict[str, Any]:
        """Visible node counts per type and visible edge counts per type, with the LSN they reflect."""
        visible = self.visible()
        with self.store._state:
            edges = {}
            for name, index in self.store.edges.items():
                src, dst = index.all_pairs()
                keep = (src < len(visible)) & (dst < len(visible))
                src, dst = src[keep], dst[keep]
                edges[name] = int(np.count_nonzero(visible[src] & visible[dst]))
        return {"lsn": self.store.memory_lsn,
                "nodes": {name: self.count(name) for name in self.store.schema.nodes},
                "edges": edges}

    # -- writes -------------------------------------------------------------------------------
    def transaction(self) -> Transaction:
        """A new transaction; commit() (or leaving a `with` block cleanly) makes it durable."""
        return Transaction(self)


def _ranked_table(ids: np.ndarray, keys: list[Any], scores: np.ndarray, key_type: str | None,
                  plan: str | None) -> pa.Table:
    """The `_id, _key, _score` table (metadata b"plan" when `plan` is given).

    With `key_type` (the key property's type), int64 ids, float32 scores and no missing key, the columns
    are built from their buffers against a cached schema. Directory keys of a "str" key are str and of
    an "int" key int (validated on write), so the table equals the one that type inference builds,
    which is what is built otherwise (with no rows, inference gives `_key` the null type).
    """
    metadata = None if plan is None else {"plan": plan}
    if (key_type not in _KEY_TYPES or not keys or None in keys or ids.dtype is not _INT64_DTYPE
            or scores.dtype is not _FLOAT32_DTYPE or not (ids.flags.c_contiguous and scores.flags.c_contiguous)):
        return pa.Table.from_arrays([pa.array(ids), pa.array(keys), pa.array(scores)], names=_RANKED_NAMES,
                                    metadata=metadata)
    schema = _RANKED_SCHEMAS.get((key_type, plan))
    if schema is None:
        schema = pa.schema([pa.field("_id", _INT64), pa.field("_key", _KEY_TYPES[key_type]),
                            pa.field("_score", _FLOAT32)], metadata=metadata)
        if len(_RANKED_SCHEMAS) < RANKED_SCHEMAS_MAX:
            _RANKED_SCHEMAS[(key_type, plan)] = schema
    count = len(keys)  # ids, scores and int keys: zero-copy over numpy buffers, as pa.array makes them
    if key_type == "int":
        key_column = pa.Array.from_buffers(_INT64, count, [None, pa.py_buffer(np.array(keys, dtype=np.int64))])
    elif count <= RANKED_KEYS_BUILT_MAX:
        text = "".join(keys)
        data = text.encode()
        # UTF-8 of a concatenation is the concatenation; equal lengths mean ASCII: a key's bytes are its chars
        lengths = map(len, keys) if len(data) == len(text) else (len(key.encode()) for key in keys)
        offsets = array.array("i", itertools.accumulate(lengths, initial=0))
        key_column = pa.Array.from_buffers(_STRING, count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    else:
        key_column = pa.array(keys, type=_STRING)
    return pa.Table.from_arrays([pa.Array.from_buffers(_INT64, count, [None, pa.py_buffer(ids)]), key_column,
                                 pa.Array.from_buffers(_FLOAT32, count, [None, pa.py_buffer(scores)])], schema=schema)


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InvalidArgument(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIMIT_MAX:
        raise InvalidArgument(f"limit must be an int in 1..{LIMIT_MAX}, got {limit!r}")


def _where_sql(node_type: Any, where: dict[str, Any], principal: Principal) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for name, condition in where.items():
        prop = node_type.properties.get(name)
        if prop is None or (prop.hidden and not principal.admin):
            raise InvalidArgument(f"node type {node_type.name!r} has no property {name!r}")
        if prop.is_vector:
            raise InvalidArgument(f"cannot filter on vector property {name!r}")
        operator, value = condition if isinstance(condition, tuple) else ("=", condition)
        column = quote(name)
        if operator == "in":
            values = list(value)
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})" if values else "FALSE")
            params.extend(values)
        elif operator == "contains":
            if prop.type != "list[str]":
                raise InvalidArgument(f"'contains' needs a list[str] property; {name!r} is {prop.type}")
            clauses.append(f"list_contains({column}, ?)")
            params.append(value)
        elif operator in _OPERATORS:
            if value is None:
                clauses.append(f"{column} IS {'NOT ' if operator == '!=' else ''}NULL")
                continue
            clauses.append(f"{column} {_OPERATORS[operator]} ?")
            params.append(json.dumps(value) if prop.type == "json" else value)
        else:
            raise InvalidArgument(f"unknown operator {operator!r} for {name!r}")
    return clauses, params


def _decode_row(node_type: Any, row: dict[str, Any]) -> dict[str, Any]:
    for name, prop in node_type.properties.items():
        if prop.type == "json" and row.get(name) is not None:
            row[name] = json.loads(row[name])
    return row


__all__ = ["NodeRef", "Session"]
