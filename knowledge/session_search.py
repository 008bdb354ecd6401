"""Session searches: vector search (`search`) and BM25 keyword search (`keyword_search`), the where
filters they share with scans, the ranked `_id, _key, _score` Arrow tables they return, and the key
column of a traversal (`key_array`).

`SessionSearch` is the search half of `knowledge.session.Session` (which inherits it); it relies on
the session's `store`, `principal`, `visible()`, `_node_type`, `_columns`, `_fetch` and `_audit`.
Every search is filtered by the session's visibility bitmap before ranking and answers as of one LSN.
"""

from __future__ import annotations

import array
import functools
import itertools
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from knowledge.errors import InvalidArgument
from knowledge.session_pin import PinnedStore
from knowledge.session_where import Predicate, parse_where, predicate_sql, where_sql
from knowledge.storage.tables import node_table, query_arrow
from knowledge.storage.versions import ReadView, SnapshotCursor, TablesPassed

if TYPE_CHECKING:
    from knowledge.views import StoreView

SEARCH_K_MAX = 10_000
RANKED_SCHEMAS_MAX = 64  # cached `_id, _key, _score` schemas, one per (key type, plan)
_RANKED_NAMES = ["_id", "_key", "_score"]
_INT64, _FLOAT32, _STRING = pa.int64(), pa.float32(), pa.string()
_KEY_TYPES = {"str": _STRING, "int": _INT64}  # a key property's type -> the Arrow type of its values
_INT64_DTYPE, _FLOAT32_DTYPE = np.dtype(np.int64), np.dtype(np.float32)
RANKED_KEYS_BUILT_MAX = 256  # up to this many str keys, the key column's buffers are built in Python
_RANKED_SCHEMAS: dict[tuple[str, str | None, str | None], pa.Schema] = {}
WHERE_MASKS_CACHED_MAX = 64  # where-filter masks kept per node type, until its next write
WHERE_ALLOWED_CACHED_MAX = 8  # (visibility & where mask) bitmaps kept per session, while both are current
__all__ = ["SessionSearch", "key_array", "pinned_read", "where_sql"]
_F = TypeVar("_F", bound=Callable[..., Any])


def pinned_read(method: _F) -> _F:
    """Run a session read at one read view (`knowledge/storage/versions.py:ReadView`): the view of the
    store's LSN when it starts, or the enclosing `snapshot()`'s, so its visibility check and everything it
    then reads belong to one LSN. It holds no lock: reads run in parallel and commits go on meanwhile."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        pins, me = self._pins, threading.get_ident()
        if me in pins:
            return method(self, *args, **kwargs)
        real = self.store
        view = real.engine.read_view()
        for again in (False, True):
            pins[me] = PinnedStore(real, view)
            try:
                return method(self, *args, **kwargs)
            except TablesPassed:  # the tables were asked for too late: again, with them asked for at once
                if again:
                    raise
                view = real.engine.read_view(tables=True)
            finally:
                del pins[me]
        raise AssertionError("unreachable")
    return wrapper  # type: ignore[return-value]


class SessionSearch:
    """Vector and keyword search over what the session's principal can see."""

    store: StoreView
    _vector_properties: dict[tuple[str | None, str | None, bool], tuple[Any, str, Any, Any, str]]
    _pins: dict[int, PinnedStore]  # thread id -> the store as its current read (or snapshot) is pinned to
    _where_allowed: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None  # _allowed_by

    @property
    def _at(self) -> StoreView:
        """The store as this thread's read (or `snapshot()`) sees it: as of its read view
        (`knowledge/session_pin.py:PinnedStore`); outside a read, the store itself. Reads go through it, never
        through `store` (the store itself, always)."""
        pinned = self._pins.get(threading.get_ident())
        return self.store if pinned is None else pinned  # type: ignore[return-value]

    def _view(self) -> ReadView:
        """The read view this thread's read is pinned to, else the store's current one."""
        pinned = self._pins.get(threading.get_ident())
        return pinned.view if pinned is not None else self.store.engine.read_view()

    def _tables_cursor(self) -> SnapshotCursor:
        """A cursor on the tables as of the read view's LSN (close it when done; one user at a time)."""
        view = self._view()
        self.store.engine.tables_at(view.tables)
        return SnapshotCursor(view.tables)

    # -- vector search ------------------------------------------------------------------------
    @pinned_read
    def search(self, vector: Any, k: int = 10, type: str | None = None, property: str | None = None,
               where: dict[str, Any] | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        """The k visible nodes nearest to `vector` that match `where`, best first, as Arrow.

        Columns: `_id`, `_key`, `_score` (cosine/ip similarity, higher is better; l2 squared distance,
        lower is better), then the requested properties. The where-filter and the session's
        visibility form one mask applied before ranking: fewer than k rows come back only when
        fewer than k nodes qualify. The plan taken is in the schema metadata (b"plan") for admins; a
        non-admin's reads b"filtered" (b"empty" when nothing qualifies), since the plan depends on how many
        rows it cannot see.
        Raises UnknownType, InvalidArgument (wrong dimension, NaN/inf, k out of 1..10000).

        When `where` is given, b"filter" in the schema metadata names how its mask was built: b"memory"
        (the in-memory column indexes, as of the search's LSN) or b"duckdb" (a table query, for what they
        cannot answer: like, contains, json, text and list[str] properties, non-finite float values). The
        choice depends on the filter and the schema only, never on the rows.

        The answer is as of one LSN, like every read: the search runs at one read view, holding no lock, so
        searches from several threads run in parallel (faiss's scans and DuckDB's where-filter queries
        release the GIL) and commits do not wait for them.
        """
        columns = None if columns is None else list(columns)
        target, query, visible = self._search_inputs(vector, k, type, property, columns)
        allowed, path = visible, None
        if where:
            mask, path = self._where_mask(target[0], where, len(visible))
            allowed = self._allowed_by(visible, mask)
        ids, scores, plan = target[1].search_prepared(query, k, allowed)
        if not self.principal.admin:  # the plan taken depends on how many rows are hidden: not shown
            plan = "filtered" if len(ids) else "empty"
        return self._ranked(target[0], ids, scores, columns, "search", plan, target[2], path)

    def _search_inputs(self, vector: Any, k: int, type_name: str | None, prop_name: str | None,
                       columns: list[str] | None) -> tuple[tuple[str, Any, str], np.ndarray, np.ndarray]:
        """(`_search_target`, the prepared query, the visibility bitmap) of a search, its arguments checked."""
        target = self._search_target(type_name, prop_name)
        type_name, index, _ = target
        query = index.query_vector(vector)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= SEARCH_K_MAX:
            raise InvalidArgument(f"k must be an int in 1..{SEARCH_K_MAX}, got {k!r}")
        if columns is not None:
            self._columns(type_name, columns)
        return target, query, self._bitmap()

    @pinned_read
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
        view = self._view()
        admin, nodes = self.principal.admin, view.schema.nodes  # a hidden property does not exist for others
        candidates = [key for key in view.keywords
                      if (type is None or key[0] == type) and (property is None or key[1] == property)
                      and (admin or (key[0] in nodes and not nodes[key[0]].properties[key[1]].hidden))]
        if len(candidates) != 1:
            raise InvalidArgument(f"{'no' if not candidates else 'several'} text properties match "
                                  f"{[f'{t}.{p}' for t, p in candidates]}; name type= and property=")
        type_name, _ = candidates[0]
        allowed, path = self._bitmap(), None
        if where:
            mask, path = self._where_mask(type_name, where, len(allowed))
            allowed = allowed & mask
        ids, scores = view.keywords[candidates[0]].search(query, k, allowed)
        return self._ranked(type_name, ids, scores, columns, "search_keyword", where_path=path)

    def _ranked(self, type_name: str, ids: np.ndarray, scores: np.ndarray, columns: Iterable[str] | None,
                api: str, plan: str | None = None, key_type: str | None = None,
                where_path: str | None = None) -> pa.Table:
        """`_id`, `_key` (from the directory), `_score`, then the requested columns (from DuckDB, only when
        some are requested) of ranked nodes; `plan` and `where_path`, when given, as the schema metadata
        b"plan" and b"filter"."""
        chosen = self._columns(type_name, columns) if columns is not None else []
        table = _ranked_table(ids, self._view().directory.key_of[ids].tolist(), scores, key_type, plan, where_path)
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
        view = self._view()
        schema, vectors = view.schema, view.vectors
        cache_key = (type_name, prop_name, self.principal.admin)  # admins resolve among hidden properties too
        cached = self._vector_properties.get(cache_key)
        if cached is not None and cached[0] is schema and vectors.get(cached[2]) is cached[3]:
            return cached[1], cached[3], cached[4]
        found_type, prop = self._vector_property(type_name, prop_name)
        node_type = schema.nodes[found_type]
        key_type = node_type.properties[node_type.key].type
        index_key = (found_type, prop.name)
        index = vectors[index_key]
        self._vector_properties[cache_key] = (schema, found_type, index_key, index, key_type)
        return found_type, index, key_type

    def _vector_property(self, type_name: str | None, prop_name: str | None) -> tuple[str, Any]:
        admin = self.principal.admin  # for a non-admin a hidden property does not exist
        candidates = [(t, p) for t, nt in self._view().schema.nodes.items() for p in nt.vector_properties
                      if (type_name is None or t == type_name) and (prop_name is None or p.name == prop_name)
                      and (admin or not p.hidden)]
        if type_name is not None:
            self._node_type(type_name)
        if not candidates:
            raise InvalidArgument(f"no vector property {prop_name or ''!s} on {type_name or 'any node type'}")
        if len(candidates) > 1:
            raise InvalidArgument(f"several vector properties match ({[f'{t}.{p.name}' for t, p in candidates]}); "
                                  f"name type= and property=")
        return candidates[0]

    def _allowed_by(self, visible: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`visible & mask`; read-only and kept (WHERE_ALLOWED_CACHED_MAX of them, per session) when both are
        (a cached visibility bitmap and a cached where mask), so a repeated filter hands the vector index the
        same bitmap, whose row mask, row numbers and gathered rows it keeps."""
        key = (id(visible), id(mask))
        cache = self._where_allowed
        if cache is None:
            cache = self._where_allowed = {}
        found = cache.get(key)
        if found is not None and found[0] is visible and found[1] is mask:
            return found[2]
        allowed = visible & mask
        if not visible.flags.writeable and not mask.flags.writeable:
            allowed.flags.writeable = False
            if len(cache) >= WHERE_ALLOWED_CACHED_MAX:
                cache.pop(next(iter(cache), None), None)
            cache[key] = (visible, mask, allowed)
        return allowed

    def _where_mask(self, type_name: str, where: Any, size: int) -> tuple[np.ndarray, str]:
        """The rows of `type_name` matching `where` (not yet ANDed with visibility) and how the mask was
        built ("memory" or "duckdb")."""
        predicate = parse_where(self._node_type(type_name), where, self.principal)
        mask = self._memory_mask(type_name, predicate, size)
        if mask is not None:
            return mask, "memory"
        return self._duckdb_mask(type_name, predicate, size), "duckdb"

    def _memory_mask(self, type_name: str, predicate: Predicate, size: int) -> np.ndarray | None:
        """`predicate`'s mask from the in-memory column indexes (read-only, cached until the type's next
        write), or None when they cannot answer it."""
        columns = self._view().columns.get(type_name)
        return None if columns is None else columns.cached_mask(predicate, size, WHERE_MASKS_CACHED_MAX)

    def _duckdb_mask(self, type_name: str, predicate: Predicate, size: int) -> np.ndarray:
        """`predicate`'s mask from a table query."""
        sql, params = predicate_sql(predicate)
        cursor = self._tables_cursor()
        try:
            table = query_arrow(cursor, f"SELECT _id FROM {node_table(type_name)} WHERE {sql}", params)
        finally:
            cursor.close()
        mask = np.zeros(size, dtype=bool)
        ids = table.column("_id").to_numpy()
        mask[ids[ids < size]] = True
        return mask


def _ranked_table(ids: np.ndarray, keys: list[Any], scores: np.ndarray, key_type: str | None,
                  plan: str | None, where_path: str | None = None) -> pa.Table:
    """The `_id, _key, _score` table (metadata b"plan" when `plan` is given, b"filter" when `where_path` is).

    With `key_type` (the key property's type), int64 ids, float32 scores and no missing key, the columns
    are built from their buffers against a cached schema. Directory keys of a "str" key are str and of
    an "int" key int (validated on write), so the table equals the one that type inference builds,
    which is what is built otherwise (with no rows, inference gives `_key` the null type).
    """
    named = {name: value for name, value in (("plan", plan), ("filter", where_path)) if value is not None}
    metadata = named or None
    if (key_type not in _KEY_TYPES or not keys or None in keys or ids.dtype is not _INT64_DTYPE
            or scores.dtype is not _FLOAT32_DTYPE or not (ids.flags.c_contiguous and scores.flags.c_contiguous)):
        return pa.Table.from_arrays([pa.array(ids), pa.array(keys), pa.array(scores)], names=_RANKED_NAMES,
                                    metadata=metadata)
    schema = _RANKED_SCHEMAS.get((key_type, plan, where_path))
    if schema is None:
        schema = pa.schema([pa.field("_id", _INT64), pa.field("_key", _KEY_TYPES[key_type]),
                            pa.field("_score", _FLOAT32)], metadata=metadata)
        if len(_RANKED_SCHEMAS) < RANKED_SCHEMAS_MAX:
            _RANKED_SCHEMAS[(key_type, plan, where_path)] = schema
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


def key_array(keys: list[Any]) -> pa.Array:
    """Node keys as one Arrow column: string or int64 when they share a type, else a dense union of the two
    (a walk from a str-keyed type may reach an int-keyed one); `to_pylist()` gives the keys back as they are."""
    kinds = {type(key) for key in keys}
    if kinds <= {str}:
        return pa.array(keys, type=pa.string())
    if kinds <= {int}:
        return pa.array(keys, type=pa.int64())
    strings = [key for key in keys if isinstance(key, str)]
    ints = [key for key in keys if not isinstance(key, str)]
    codes, offsets, seen = [], [], [0, 0]
    for key in keys:
        code = 0 if isinstance(key, str) else 1
        codes.append(code)
        offsets.append(seen[code])
        seen[code] += 1
    return pa.UnionArray.from_dense(pa.array(codes, type=pa.int8()), pa.array(offsets, type=pa.int32()),
                                    [pa.array(strings, type=pa.string()), pa.array(ints, type=pa.int64())],
                                    field_names=["str", "int"])
