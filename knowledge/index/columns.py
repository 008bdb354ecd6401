"""In-memory column indexes over a node type's filterable scalar properties (str, int, float, bool,
timestamp), so a where-filter becomes a row mask without a table query.

`TypeColumns` holds one `ColumnIndex` per property of one node type, plus the bitmap of the type's
live rows, all dense over node ids. A `ColumnIndex` is either numeric (int, float, timestamp as int64
microseconds; a float NaN is stored as +inf, which compares like DuckDB's NaN against every finite
value) or dictionary-encoded (str, bool: an int32 code per row, -1 for NULL, with one bitmap per
value while the column has few distinct values). Ranges on a numeric column use a sorted (value, id)
array, rebuilt lazily after changes, when they select few rows (or leave out few: those are cleared
from the valid rows), else a dense comparison.

Predicates are the normalised trees of `knowledge.session_where`: ("and", children), ("or", children)
or a leaf (operator, property, property type, value). `TypeColumns.mask` answers them with NULL
semantics of SQL (a comparison with NULL is false), or returns None when a leaf is not answerable
here (like, contains, other property types, a non-finite float value); callers then fall back to SQL.
Maintained under the store's state lock by the WAL applier, so a mask is as of the vectors' LSN.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np

from knowledge.index.arrays import grown

MEMORY_TYPES = ("str", "int", "float", "bool", "timestamp")  # property types indexed here
MEMORY_OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "between", "is_null", "not_null")
BITMAP_VALUES_MAX = 64  # a dictionary column keeps per-value bitmaps up to this many distinct values
SORTED_FRACTION = 1 / 8  # a range selecting (or leaving out) fewer rows than this share of them scatters from the
# sorted array (100k rows: scattering 10k ids took 9 µs, a dense comparison and its AND 14 µs)
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)




def _fit(mask: np.ndarray, size: int) -> np.ndarray:
    """`mask` cut or padded (False) to `size`."""
    if len(mask) >= size:
        return mask[:size]
    out = np.zeros(size, dtype=bool)
    out[:len(mask)] = mask
    return out


def timestamp_micros(value: dt.datetime) -> int:
    """A timezone-aware datetime as microseconds since the epoch (naive ones are UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class ColumnIndex:
    """One property's values over node ids, numeric or dictionary-encoded (see the module)."""

    def __init__(self, prop_type: str) -> None:
        self.prop_type = prop_type
        self.numeric = prop_type in ("int", "float", "timestamp")
        self.valid = np.zeros(0, dtype=bool)  # the row holds a non-NULL value
        if self.numeric:
            self.values = np.zeros(0, dtype=np.float64 if prop_type == "float" else np.int64)
            self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (values, ids) ascending
            self._range_asked = -1  # the version at which a range was last asked
        else:
            self.codes = np.full(0, -1, dtype=np.int32)
            self.dictionary: dict[Any, int] = {}
            self.decoded: list[Any] = []
            self.bitmaps: dict[int, np.ndarray] | None = {}  # None once there are too many values
        self.version = 0

    # -- maintenance ------------------------------------------------------------------------
    def _encode(self, value: Any) -> Any:
        if self.prop_type == "timestamp":  # validated rows carry int microseconds, Arrow rows datetimes
            return value if isinstance(value, int) else timestamp_micros(value)
        if self.prop_type == "float":
            return math.inf if math.isnan(value) else float(value)
        return value

    def set(self, ids: np.ndarray, values: list[Any]) -> None:
        """Row `ids[i]` now holds `values[i]` (None: NULL)."""
        if not len(ids):
            return
        top = int(ids.max()) + 1
        self.valid = grown(self.valid, top, False)
        present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        self.valid[ids] = present
        self.version += 1
        if self.numeric:
            self.values = grown(self.values, top, 0)
            self._sorted = None
            encoded = [self._encode(v) for v in values if v is not None]
            if encoded:
                self.values[ids[present]] = np.array(encoded, dtype=self.values.dtype)
            return
        self.codes = grown(self.codes, top, -1)
        new = np.fromiter((self._code(v) for v in values), dtype=np.int32, count=len(values))
        if self.bitmaps is not None:
            old = self.codes[ids]
            for code in np.unique(old[old >= 0]).tolist():
                self.bitmaps[code][ids[old == code]] = False
        self.codes[ids] = new
        if self.bitmaps is not None:
            for code in np.unique(new[new >= 0]).tolist():
                bitmap = self.bitmaps[code] = grown(self.bitmaps.get(code, np.zeros(0, dtype=bool)), top, False)
                bitmap[ids[new == code]] = True

    def _code(self, value: Any) -> int:
        if value is None:
            return -1
        code = self.dictionary.get(value)
        if code is None:
            code = self.dictionary[value] = len(self.decoded)
            self.decoded.append(value)
            if self.bitmaps is not None and len(self.decoded) > BITMAP_VALUES_MAX:
                self.bitmaps = None
        return code

    def clear(self, ids: np.ndarray) -> None:
        """Rows `ids` hold nothing (deleted)."""
        ids = ids[ids < len(self.valid)]
        self.set(ids, [None] * len(ids))

    # -- answering ----------------------------------------------------------------------------
    def _sorted_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            ids = np.flatnonzero(self.valid)
            values = self.values[ids]
            order = np.argsort(values, kind="stable")
            self._sorted = (values[order], ids[order])
        return self._sorted

    def _range(self, low: Any, low_open: bool, high: Any, high_open: bool, size: int) -> np.ndarray:
        """Rows whose value lies between `low` and `high` (None: unbounded), as a bool mask of `size`."""
        values, ids = self._sorted_pairs()
        start = 0 if low is None else int(np.searchsorted(values, low, "right" if low_open else "left"))
        stop = len(values) if high is None else int(np.searchsorted(values, high, "left" if high_open else "right"))
        out = np.zeros(max(size, len(self.valid)), dtype=bool)
        if stop > start:
            out[ids[start:stop]] = True
        return out

    def _codes_mask(self, codes: list[int]) -> np.ndarray:
        if not codes:
            return np.zeros(len(self.codes), dtype=bool)
        if self.bitmaps is not None:
            if len(codes) == 1:
                return self.bitmaps[codes[0]]
            return np.logical_or.reduce([_fit(self.bitmaps[c], len(self.codes)) for c in codes])
        if len(codes) == 1:
            return self.codes == codes[0]
        return np.isin(self.codes, np.array(codes, dtype=np.int32))

    def leaf(self, operator: str, value: Any, size: int) -> np.ndarray:
        """The rows matching (operator, value); may be longer or shorter than `size` (callers fit it)."""
        if operator == "is_null":
            return ~self.valid  # the caller ANDs the type's live rows
        if operator == "not_null":
            return self.valid
        if self.numeric:
            return self._numeric_leaf(operator, value, size)
        if operator == "in":
            codes = [self.dictionary[v] for v in set(value) if v is not None and v in self.dictionary]
            return self._codes_mask(codes)
        if operator in ("=", "!="):
            code = self.dictionary.get(value)
            matched = self._codes_mask([] if code is None else [code])
            return matched if operator == "=" else self.valid & ~_fit(matched, len(self.valid))
        if operator == "between":
            low, high = value
            return self._codes_mask([code for code, item in enumerate(self.decoded) if low <= item <= high])
        test = _COMPARE[operator]
        return self._codes_mask([code for code, item in enumerate(self.decoded) if test(item, value)])

    def _numeric_leaf(self, operator: str, value: Any, size: int) -> np.ndarray:
        valid, values = self.valid, self.values
        if operator == "in":
            items = [self._encode(v) for v in value if v is not None]
            return valid & np.isin(values, np.array(items, dtype=values.dtype)) if items else np.zeros(0, bool)
        if operator == "between":
            low, high = (self._encode(v) for v in value)
            return self._ranged(low, False, high, False, size)
        encoded = self._encode(value)
        if operator == "=":
            return valid & (values == encoded)
        if operator == "!=":
            return valid & (values != encoded)
        low_open = operator == ">"
        if operator in (">", ">="):
            return self._ranged(encoded, low_open, None, False, size)
        return self._ranged(None, False, encoded, operator == "<", size)

    def _ranged(self, low: Any, low_open: bool, high: Any, high_open: bool, size: int) -> np.ndarray:
        """A range by the sorted array when it is built and selects few rows, else by comparison."""
        if self._sorted is None and self._range_asked == self.version:  # asked again, unchanged: worth sorting
            self._sorted_pairs()
        self._range_asked = self.version
        if self._sorted is not None:
            values, _ = self._sorted
            start = 0 if low is None else int(np.searchsorted(values, low, "right" if low_open else "left"))
            stop = len(values) if high is None else int(np.searchsorted(values, high,
                                                                         "left" if high_open else "right"))
            few = max(len(self.valid), 1) * SORTED_FRACTION
            if stop - start < few:
                return self._range(low, low_open, high, high_open, size)
            if len(values) - (stop - start) < few:  # nearly every valid row: clear the few outside the range
                _, ids = self._sorted
                out = self.valid.copy()
                out[ids[:start]] = False
                out[ids[stop:]] = False
                return out
        out = self.valid.copy()
        if low is not None:
            out &= (self.values > low) if low_open else (self.values >= low)
        if high is not None:
            out &= (self.values < high) if high_open else (self.values <= high)
        return out


_COMPARE = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


class TypeColumns:
    """The column indexes of one node type and the bitmap of its live rows."""

    def __init__(self, properties: dict[str, str]) -> None:
        self.live = np.zeros(0, dtype=bool)
        self.columns: dict[str, ColumnIndex] = {}
        self._masks: dict[tuple[Any, ...], np.ndarray] = {}  # (predicate, size) -> read-only mask, until a write
        self.ensure(properties)

    def ensure(self, properties: dict[str, str]) -> None:
        """Index these (name -> type) properties too (a property added by a schema change: all NULL)."""
        for name, prop_type in properties.items():
            if prop_type in MEMORY_TYPES and name not in self.columns:
                self.columns[name] = ColumnIndex(prop_type)
                self._masks.clear()

    def upsert(self, ids: np.ndarray, columns: dict[str, list[Any]]) -> None:
        """Rows `ids` are replaced by these values (a property missing from `columns` is NULL)."""
        if not len(ids):
            return
        self._masks.clear()
        self.live = grown(self.live, int(ids.max()) + 1, False)
        self.live[ids] = True
        for name, index in self.columns.items():
            values = columns.get(name)
            index.set(ids, values if values is not None else [None] * len(ids))

    def delete(self, ids: np.ndarray) -> None:
        self._masks.clear()
        ids = ids[ids < len(self.live)]
        self.live[ids] = False
        for index in self.columns.values():
            index.clear(ids)

    def answerable(self, predicate: tuple[Any, ...]) -> bool:
        """Whether `mask` can answer `predicate` (from the predicate and the schema alone, never the rows)."""
        kind = predicate[0]
        if kind in ("and", "or"):
            return all(self.answerable(child) for child in predicate[1])
        operator, name, _, value = predicate
        index = self.columns.get(name)
        if index is None or operator not in MEMORY_OPERATORS:
            return False
        items = value if operator in ("in", "between") else () if value is None else (value,)
        if index.prop_type == "float":
            return all(item is None or math.isfinite(item) for item in items)
        if index.prop_type == "int":
            return all(item is None or _INT64_MIN <= item <= _INT64_MAX for item in items)
        return True

    def mask(self, predicate: tuple[Any, ...], size: int) -> np.ndarray | None:
        """The live rows of this type matching `predicate`, as a bool array of `size`; None when a leaf
        is not answerable here."""
        if not self.answerable(predicate):
            return None
        return _fit(self._eval(predicate, size), size) & _fit(self.live, size)

    def cached_mask(self, predicate: tuple[Any, ...], size: int, cached_max: int) -> np.ndarray | None:
        """`mask`, read-only, kept (up to `cached_max` of them) until this type's next write: a repeated
        predicate at the same LSN is answered without recomputing."""
        key = (predicate, size)
        mask = self._masks.get(key)
        if mask is None:
            mask = self.mask(predicate, size)
            if mask is None:
                return None
            mask.flags.writeable = False
            if len(self._masks) >= cached_max:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = mask
        return mask

    def _eval(self, predicate: tuple[Any, ...], size: int) -> np.ndarray:
        kind = predicate[0]
        if kind in ("and", "or"):
            parts = [_fit(self._eval(child, size), size) for child in predicate[1]]
            if not parts:
                return np.full(size, kind == "and", dtype=bool)
            return np.logical_and.reduce(parts) if kind == "and" else np.logical_or.reduce(parts)
        operator, name, _, value = predicate
        return self.columns[name].leaf(operator, value, size)
