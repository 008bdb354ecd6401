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
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda m: first(m) and second(m)
    return lambda m: all(test(m) for test in tests)


def _any(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    return lambda m: any(test(m) for test in tests)


def _field(name: str, condition: Any) -> Test:
    if isinstance(condition, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in condition):
        checks = [_operator(name, op, value) for op, value in condition.items()]
    else:
        checks = [_operator(name, "$eq", condition)]
    if len(checks) == 1:
        check = checks[0]
        return lambda m: check(m.get(name, _MISSING))
    return lambda m: all(check(m.get(name, _MISSING)) for check in checks)


def _compare(op: str, value: Any) -> Callable[[Any], bool]:
    def test(field: Any) -> bool:
        if field is _MISSING:
            return False
        try:
            if op == "$gt":
                return bool(field > value)
            if op == "$gte":
                return bool(field >= value)
            if op == "$lt":
                return bool(field < value)
            return bool(field <= value)
        except TypeError:
            return False
    return test


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


def _equals(value: Any) -> Callable[[Any], bool]:
    """field == value, True kept apart from 1 (JSON keeps them apart too); a missing field never equals."""
    if isinstance(value, bool):
        return lambda field: field is value
    if isinstance(value, int | float):
        return lambda field: field == value and not isinstance(field, bool)
    return lambda field: field is not _MISSING and field == value


def _check(op: str, value: Any) -> Callable[[Any], bool]:  # noqa: C901 - one branch per operator
    if op == "$eq":
        return _equals(value)
    if op == "$ne":
        equal = _equals(value)
        return lambda field: not equal(field)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return _compare(op, value)
    if op == "$exists":
        return lambda field: (field is not _MISSING) == value
    if op == "$empty":
        return lambda field: (field is _MISSING or field is None or field == "" or field == []) == value
    if op in ("$in", "$nin"):
        tests = [_equals(v) for v in value]
        if op == "$in":
            return lambda field: any(test(field) for test in tests)
        return lambda field: not any(test(field) for test in tests)
    if op == "$contains":
        equal = _equals(value)
        return lambda field: (any(equal(item) for item in field) if isinstance(field, list)
                              else isinstance(field, str) and isinstance(value, str) and value in field)
    if op in ("$any", "$all"):
        wanted = [_equals(v) for v in value]
        combine = any if op == "$any" else all

        def holds(field: Any) -> bool:
            if field is _MISSING:
                return False
            items = field if isinstance(field, list) else [field]
            return combine(any(test(item) for item in items) for test in wanted)
        return holds
    if op == "$text":
        return lambda field: isinstance(field, str) and value in field
    lowered = value.lower()
    return lambda field: isinstance(field, str) and lowered in field.lower()


__all__ = ["FIELD_OPERATORS", "Test", "compile_filter"]
