"""The where-filter of scans and searches: one parser (`parse_where`) that checks a filter against the
node type and turns it into a normalised, hashable predicate tree, and its SQL form (`predicate_sql`).

    {"genre": "poem"}                          equality; {"genre": None} is IS NULL
    {"year": (">=", 1840)}                     = != < <= > >= like in contains between
    {"year": ("between", (1840, 1900))}        a two-sided range, both ends included
    {"genre": ("in", ["poem", "essay"])}       one of the values
    {"genre": ("!=", None)}                    IS NOT NULL
    {"$or": [{"genre": "poem"}, {"year": ("<", 1800)}]}   any of several filters (each a dict: all hold)

Several entries in one dict must all hold. Every value is checked against its property's type (the
rules of a dict row's values), so a filter that does not fit raises InvalidQuery naming the property,
operator and value, never a DuckDB error.

Predicates: ("and", children), ("or", children), or a leaf (operator, property, property type, value)
with operator one of = != < <= > >= like in contains between is_null not_null; `in` and `between`
values are tuples. `knowledge.index.columns` answers them from memory where it can.

Scan pages (`scan_cursor` / `cursor_after`): a scan's rows come in id order, and its opaque cursor names
the type and the last id returned; the next page is the rows with a larger id. Ids are never reused and
new nodes get larger ones, so paging is stable under concurrent inserts (they show up on later pages).
A cursor holds nothing the reader did not see (the `_id` of a row it was given) and is not checked
against the store: one naming an id that is hidden, deleted or never existed resumes after that id
exactly as any other would, so it cannot tell them apart.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

from knowledge.access.principal import Principal
from knowledge.errors import InvalidArgument, InvalidQuery
from knowledge.storage.tables import quote
from knowledge.storage.values import convert_value

Predicate = tuple[Any, ...]
OR_KEY = "$or"
_OPERATORS = {"=": "=", "==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE"}
_SQL = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE"}


def parse_where(node_type: Any, where: Any, principal: Principal) -> Predicate:
    """The predicate tree of a `where` filter on `node_type` (see the module); raises InvalidQuery."""
    if not isinstance(where, Mapping):
        raise InvalidQuery(f"where must be a dict mapping property names to a value or to (operator, value), "
                           f"got {type(where).__name__}")
    children: list[Predicate] = []
    for name, condition in where.items():
        if name == OR_KEY:
            if isinstance(condition, str | bytes | Mapping) or not isinstance(condition, Iterable):
                raise InvalidQuery(f"where {OR_KEY!r} takes a list of where-filters (dicts), got {condition!r}",
                                   operator=OR_KEY, value=condition)
            branches = list(condition)
            if not branches:
                raise InvalidQuery(f"where {OR_KEY!r} needs at least one where-filter", operator=OR_KEY,
                                   value=condition)
            children.append(("or", tuple(parse_where(node_type, branch, principal) for branch in branches)))
            continue
        children.append(_leaf(node_type, name, condition, principal))
    return children[0] if len(children) == 1 and children[0][0] == "or" else ("and", tuple(children))


def _leaf(node_type: Any, name: Any, condition: Any, principal: Principal) -> Predicate:
    prop = node_type.properties.get(name) if isinstance(name, str) else None
    if prop is None or (prop.hidden and not principal.admin):
        raise InvalidQuery(f"node type {node_type.name!r} has no property {name!r}", property=name)
    if prop.is_vector:
        raise InvalidQuery(f"cannot filter on vector property {name!r}", property=name)
    if isinstance(condition, tuple) and (len(condition) != 2 or not isinstance(condition[0], str)):
        raise InvalidQuery(f"where {name!r}: a condition is a value or an (operator, value) pair, got "
                           f"{condition!r}", property=name, value=condition)
    operator, value = condition if isinstance(condition, tuple) else ("=", condition)
    if operator == "in":
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
            raise InvalidQuery(f"where {name!r} in {value!r}: 'in' takes a list of values", property=name,
                               operator=operator, value=value)
        return ("in", name, prop.type, tuple(_where_value(node_type, prop, operator, item) for item in value))
    if operator == "between":
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable) or len(list(value)) != 2:
            raise InvalidQuery(f"where {name!r} between {value!r}: 'between' takes (low, high)", property=name,
                               operator=operator, value=value)
        low, high = list(value)
        if low is None or high is None or prop.type in ("json", "list[str]"):
            raise InvalidQuery(f"where {name!r} between {value!r}: needs two values of a str, text, int, float, "
                               f"bool or timestamp property ({name!r} is {prop.type})", property=name,
                               operator=operator, value=value)
        return ("between", name, prop.type, (_where_value(node_type, prop, operator, low),
                                             _where_value(node_type, prop, operator, high)))
    if operator == "contains":
        if prop.type != "list[str]":
            raise InvalidQuery(f"'contains' needs a list[str] property; {name!r} is {prop.type}", property=name,
                               operator=operator, value=value)
        if not isinstance(value, str):
            raise InvalidQuery(f"where {name!r} contains {value!r}: expected str, got {type(value).__name__}",
                               property=name, operator=operator, value=value)
        return ("contains", name, prop.type, value)
    if operator not in _OPERATORS:
        raise InvalidQuery(f"unknown operator {operator!r} for {name!r}", property=name, operator=operator)
    if value is None:
        return ("not_null" if operator == "!=" else "is_null", name, prop.type, None)
    if operator == "like" and prop.type not in ("str", "text"):
        raise InvalidQuery(f"'like' needs a str or text property; {name!r} is {prop.type}", property=name,
                           operator=operator, value=value)
    return ("=" if operator == "==" else operator, name, prop.type, _where_value(node_type, prop, operator, value))


def _where_value(node_type: Any, prop: Any, operator: str, value: Any) -> Any:
    """A filter value as the query parameter for `prop`; InvalidQuery when a dict row could not store it."""
    if prop.type == "json":
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidQuery(f"where {prop.name!r} {operator} {value!r}: not JSON ({exc})", property=prop.name,
                               operator=operator, value=value) from None
    if value is None and operator in ("in", "between"):
        return None
    try:
        return convert_value(prop, value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidQuery(f"where {prop.name!r} {operator} {value!r}: {exc} ({node_type.name}.{prop.name} is "
                           f"{prop.type})", property=prop.name, operator=operator, value=value) from None


def predicate_sql(predicate: Predicate) -> tuple[str, list[Any]]:
    """A SQL boolean expression and its parameters for `predicate`."""
    kind = predicate[0]
    if kind in ("and", "or"):
        if not predicate[1]:
            return ("TRUE" if kind == "and" else "FALSE"), []
        parts, params = [], []
        for child in predicate[1]:
            sql, child_params = predicate_sql(child)
            parts.append(f"({sql})")
            params.extend(child_params)
        return f" {kind.upper()} ".join(parts), params
    operator, name, _, value = predicate
    column = quote(name)
    if operator == "in":
        return (f"{column} IN ({', '.join('?' for _ in value)})" if value else "FALSE"), list(value)
    if operator == "between":
        return f"{column} BETWEEN ? AND ?", list(value)
    if operator == "contains":
        return f"list_contains({column}, ?)", [value]
    if operator == "is_null":
        return f"{column} IS NULL", []
    if operator == "not_null":
        return f"{column} IS NOT NULL", []
    return f"{column} {_SQL[operator]} ?", [value]


def where_sql(node_type: Any, where: Any, principal: Principal) -> tuple[list[str], list[Any]]:
    """SQL clauses (ANDed) and parameters for a `where` filter (empty for an empty filter); each clause is
    parenthesised, so a top-level OR stays one term when the caller ANDs more clauses (visibility)."""
    predicate = parse_where(node_type, where, principal)
    if predicate == ("and", ()):
        return [], []
    sql, params = predicate_sql(predicate)
    return [f"({sql})"], params


# -- scan pages ---------------------------------------------------------------------------------------
CURSOR_PREFIX = "kc1."
OFFSET_MAX = 1 << 62


def scan_cursor(type_name: str, after_id: int) -> str:
    """The opaque cursor of a scan of `type_name` resuming after node id `after_id` (-1: from the start)."""
    payload = json.dumps([type_name, int(after_id)], separators=(",", ":")).encode()
    return CURSOR_PREFIX + base64.urlsafe_b64encode(payload).decode().rstrip("=")


def cursor_after(cursor: str | None, type_name: str) -> int:
    """The node id a scan `cursor` resumes after (-1 for None or ""); InvalidArgument when it is no scan
    cursor of `type_name` (never a question of what the store holds)."""
    if cursor is None or cursor == "":
        return -1
    hint = "pass the next_cursor of a scan's result (schema metadata), or no cursor to start from the first row"
    if not isinstance(cursor, str) or not cursor.startswith(CURSOR_PREFIX):
        raise InvalidArgument(f"cursor {str(cursor)[:80]!r} is not a scan cursor: {hint}")
    text = cursor[len(CURSOR_PREFIX):]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        decoded = None
    if not (isinstance(decoded, list) and len(decoded) == 2 and isinstance(decoded[0], str)
            and type(decoded[1]) is int and -1 <= decoded[1] < OFFSET_MAX):
        raise InvalidArgument(f"cursor {cursor[:80]!r} is not a scan cursor: {hint}")
    if decoded[0] != type_name:
        raise InvalidArgument(f"the cursor belongs to a scan of {decoded[0][:80]!r}, not of {type_name!r}: {hint}")
    return decoded[1]


def check_offset(offset: Any) -> int:
    """A scan's `offset` (rows to skip); InvalidArgument unless an int >= 0."""
    if offset is None:
        return 0
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < OFFSET_MAX:
        raise InvalidArgument(f"offset must be an int >= 0, got {offset!r}")
    return offset


def with_page(table: Any, type_name: str, after: int, more: bool) -> Any:
    """`table` (a scan page, in id order) with `next_cursor` and `has_more` in its schema metadata."""
    ids = table.column("_id")
    last = ids[len(ids) - 1].as_py() if len(ids) else after
    metadata = dict(table.schema.metadata or {})
    metadata[b"next_cursor"] = scan_cursor(type_name, last).encode()
    metadata[b"has_more"] = b"true" if more else b"false"
    return table.replace_schema_metadata(metadata)
