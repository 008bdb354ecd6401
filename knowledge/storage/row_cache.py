"""A bounded LRU cache of node rows as DuckDB returned them, so repeated point reads skip DuckDB.

Rows are one-row Arrow tables (`_id`, `_labels` and every property but vectors), shared read-only;
each is a view of the fetch it came from, so only fetches of up to PUT_ROWS_MAX rows are cached. A write invalidates the
rows it touches when it is applied to memory, before it becomes visible, so a cached row is always
the row a read at the current LSN would fetch. A reader that fetched from DuckDB may cache what it
fetched only if no write was applied since it took its token: a row fetched just before a write
could otherwise come back after it. Visibility and column choice stay with the session.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

PUT_ROWS_MAX = 64  # larger fetches are not cached: a cached row is a view that keeps its whole fetch alive


class RowCache:
    """Up to `rows_max` rows keyed by (node type, node id); `rows_max` 0 turns it off."""

    def __init__(self, rows_max: int) -> None:
        self.rows_max = rows_max
        self._rows: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._lock = threading.Lock()
        self._writes = 0
        self.hits = 0
        self.misses = 0

    def token(self) -> int:
        """Take before reading DuckDB; hand back to `put`."""
        return self._writes

    def get_many(self, type_name: str, ids: Iterable[int]) -> dict[int, pa.Table]:
        """The cached rows among `ids`, by id."""
        found: dict[int, pa.Table] = {}
        if not self.rows_max:
            return found
        with self._lock:
            for node in ids:
                row = self._rows.get((type_name, node))
                if row is not None:
                    self._rows.move_to_end((type_name, node))
                    found[node] = row
            self.hits += len(found)
        return found

    def put(self, type_name: str, table: pa.Table, token: int) -> None:
        """Cache the rows of `table` (whole rows with `_id`) unless a write came after `token`."""
        if not self.rows_max or not table.num_rows or table.num_rows > PUT_ROWS_MAX:
            return
        ids = table.column("_id").to_pylist()
        with self._lock:
            self.misses += len(ids)
            if token != self._writes:
                return
            for index, node in enumerate(ids[-self.rows_max:], start=max(0, len(ids) - self.rows_max)):
                self._rows[(type_name, node)] = table.slice(index, 1)  # a view: no copy
                self._rows.move_to_end((type_name, node))
            while len(self._rows) > self.rows_max:
                self._rows.popitem(last=False)

    def invalidate(self, type_name: str, ids: np.ndarray | list[int]) -> None:
        """Forget the rows of `ids` (called as a write is applied, before it is visible)."""
        with self._lock:
            self._writes += 1
            if self._rows:
                for node in (ids.tolist() if isinstance(ids, np.ndarray) else ids):
                    self._rows.pop((type_name, node), None)

    def clear(self) -> None:
        """Forget everything (a schema change alters the columns)."""
        with self._lock:
            self._writes += 1
            self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)
