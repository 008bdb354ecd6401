"""The metadata filter language of the adapters (the Mongo-style dict that Chroma, PGVector and
LangChain's own stores take; LlamaIndex's MetadataFilters are translated into it):

    {"genre": "poem"}                                   equality (a scalar value)
    {"year": {"$gte": 1840, "$lt": 1900}}               several operators on one field: all hold
    {"$or": [{"author": "ada"}, {"tags": {"$contains": "math"}}]}
    {"$and": [...]}, {"$not": {...}}

Field operators: $eq $ne $gt $gte $lt $lte, $in $nin (value in / not in a list), $contains (a list
field holds the value, or a string field contains it), $any $all (a list field holds any / all of
the values), $text / $itext (substring, case-sensitive / not), $exists (bool), $empty (bool: the
field is missing, None, "" or []). A missing field matches only $ne, $nin, $exists false and $empty
true. Comparing values of different types (a string with a number) is false, never an error. An
unknown operator, or a malformed clause, raises InvalidArgument.

A filter only narrows what the session sees: it is evaluated over the session's visible records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from knowledge.errors import InvalidArgument

Test = Callable[[dict[str, Any]], bool]
_MISSING = object()
FIELD_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains", "$any", "$all",
                   "$text", "$itext", "$exists", "$empty")


def compile_filter(spec: Mapping[str, Any] | None) -> Test | None:
    """A test over a metadata dict for the filter `spec` (None or {} -> None: keep everything)."""
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return None
    return _clause(spec)


def _clause(spec: Any) -> Test:
    if not isinstance(spec, Mapping):
        raise InvalidArgument(f"a filter clause must be a dict, got {spec!r}")
    tests: list[Test] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list | tuple) or not value:
                raise InvalidArgument(f"{key} takes a non-empty list of clauses, got {value!r}")
            parts = [_clause(part) for part in value]
            tests.append(_all(parts) if key == "$and" else _any(parts))
        elif key == "$not":
            inner = _clause(value)
            tests.append(lambda m, inner=inner: not inner(m))
        elif isinstance(key, str) and key.startswith("$"):
            raise InvalidArgument(f"unknown filter operator {key!r} at the top of a clause "
                                  f"(use $and, $or, $not or a field name)")
        elif not isinstance(key, str):
            raise InvalidArgument(f"a filter field name must be a string, got {key!r}")
        else:
            tests.append(_field(key, value))
    return _all(tests)


def _all(tests: list[Test]) -> Test:
    return lambda m: all(test(m) for test in tests)


def _any(tests: list[Test]) -> Test:
    return lambda m: any(test(m) for test in tests)


def _field(name: str, condition: Any) -> Test:
    if isinstance(condition, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in condition):
        checks = [_operator(name, op, value) for op, value in condition.items()]
    else:
        checks = [_operator(name, "$eq", condition)]
    return lambda m: all(check(m.get(name, _MISSING)) for check in checks)


def _compare(op: str, left: Any, right: Any) -> bool:
    try:
        if op == "$gt":
            return bool(left > right)
        if op == "$gte":
            return bool(left >= right)
        if op == "$lt":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


def _operator(name: str, op: Any, value: Any) -> Callable[[Any], bool]:
    if op not in FIELD_OPERATORS:
        raise InvalidArgument(f"unknown filter operator {op!r} on field {name!r}; known: {', '.join(FIELD_OPERATORS)}")
    if op in ("$in", "$nin", "$any", "$all") and not isinstance(value, list | tuple | set | frozenset):
        raise InvalidArgument(f"{op} on field {name!r} takes a list, got {value!r}")
    if op in ("$exists", "$empty") and not isinstance(value, bool):
        raise InvalidArgument(f"{op} on field {name!r} takes true or false, got {value!r}")
    if op in ("$text", "$itext") and not isinstance(value, str):
        raise InvalidArgument(f"{op} on field {name!r} takes a string, got {value!r}")
    return _check(op, value)


def _check(op: str, value: Any) -> Callable[[Any], bool]:  # noqa: C901 - one branch per operator
    def test(field: Any) -> bool:
        if op == "$exists":
            return (field is not _MISSING) == value
        if op == "$empty":
            return (field is _MISSING or field is None or field == "" or field == []) == value
        if op == "$ne":
            return field is _MISSING or not _equal(field, value)
        if op == "$nin":
            return field is _MISSING or not any(_equal(field, v) for v in value)
        if field is _MISSING:
            return False
        if op == "$eq":
            return _equal(field, value)
        if op == "$in":
            return any(_equal(field, v) for v in value)
        if op == "$contains":
            if isinstance(field, list):
                return any(_equal(item, value) for item in field)
            return isinstance(field, str) and isinstance(value, str) and value in field
        if op in ("$any", "$all"):
            items = field if isinstance(field, list) else [field]
            found = [any(_equal(item, v) for item in items) for v in value]
            return any(found) if op == "$any" else all(found)
        if op == "$text":
            return isinstance(field, str) and value in field
        if op == "$itext":
            return isinstance(field, str) and value.lower() in field.lower()
        return _compare(op, field, value)
    return test


def _equal(left: Any, right: Any) -> bool:
    """Equality that keeps True apart from 1 (JSON keeps them apart too)."""
    if isinstance(left, bool) != isinstance(right, bool):
        return False
    return bool(left == right)


__all__ = ["FIELD_OPERATORS", "Test", "compile_filter"]
