"""What a reader sees of a node's labels: for a non-admin, only the labels within its read grants.

A label the reader does not hold would tell it that some document it cannot see shares the node (a GraphRAG
entity mentioned by a secret memo reads `['public', 'secret']`), so every read path that returns `_labels`
(get, get_many, scan, their Arrow tables) passes it through here. Admins see every label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowledge.access.principal import Principal

LABELS_TYPE = pa.list_(pa.string())


def readable_labels(labels: Any, principal: Principal) -> Any:
    """`labels` (a list<string> Arrow array or chunked array, or one Python list) cut to `principal`'s read
    grants, order kept; unchanged for admins. A null list reads as an empty one."""
    if principal.admin:
        return labels
    grants = principal.read
    if isinstance(labels, list) or labels is None:
        return [label for label in labels or () if label in grants]
    if isinstance(labels, pa.ChunkedArray):
        return pa.chunked_array([_cut(chunk, grants) for chunk in labels.chunks], type=labels.type)
    return _cut(labels, grants)


SMALL_LABELS = 512  # up to this many labels in an array, Python cuts them faster than several Arrow kernels


def _cut(array: pa.Array, grants: frozenset[str]) -> pa.Array:
    count = len(array)
    if count == 0:
        return array
    flat = pc.list_flatten(array)
    if len(flat) <= SMALL_LABELS:  # a search's or a retrieval's few rows
        values = flat.to_pylist()
        if array.null_count == 0 and all(label in grants for label in values):
            return array  # nothing to hide: the common case
        rows = array.to_pylist()
        return pa.array([[label for label in row if label in grants] if row else [] for row in rows],
                        type=array.type)
    if len(flat) == 0:
        return pa.ListArray.from_arrays(pa.array(np.zeros(count + 1, dtype=np.int32)), pa.array([], type=pa.string()))
    parents = pc.list_parent_indices(array).to_numpy()
    keep = pc.is_in(flat, value_set=pa.array(sorted(grants), type=pa.string())).to_numpy(zero_copy_only=False)
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents[keep], minlength=count), out=offsets[1:])
    out = pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)).cast(pa.string()))
    return out if out.type == array.type else out.cast(array.type)


def with_readable_labels(table: pa.Table, principal: Principal) -> pa.Table:
    """`table` with its `_labels` column (if any) cut to `principal`'s read grants."""
    if principal.admin or "_labels" not in table.column_names:
        return table
    position = table.column_names.index("_labels")
    column = readable_labels(table.column("_labels"), principal)
    return table.set_column(position, table.schema.field(position).with_type(column.type), column)


__all__ = ["readable_labels", "with_readable_labels"]
