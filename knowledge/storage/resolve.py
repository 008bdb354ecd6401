"""Turn a transaction's validated batches into resolved ops: ids assigned, endpoints found, grants checked.

Pure with respect to the store: reads the staged directory, the schema and the edge indexes,
mutates nothing. Any failure raises a ValidationError (or PermissionDenied) and the transaction
is dropped whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from knowledge.access.principal import Principal
from knowledge.errors import MissingEndpoint, PermissionDenied, ValueTooLarge, WrongEndpointType
from knowledge.index.graph import EdgeIndex, unique_sorted
from knowledge.storage.directory import NodeDirectory
from knowledge.storage.ops import FLAG_MAY_REPLACE, Op, OpKind
from knowledge.storage.rows import NodeRows
from knowledge.storage.schema import Schema
from knowledge.storage.values import EdgeBatch


@dataclass
class Staged:
    """What a resolved transaction will change, for the directory's staged view."""

    upserts: list[tuple[str, list[Any], np.ndarray | list[int]]] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    next_id: int = 0


class Resolver:
    """Resolves one transaction against the staged state (call under the store's stage lock)."""

    def __init__(self, schema: Schema, directory: NodeDirectory, edges: dict[str, EdgeIndex],
                 principal: Principal, visible: np.ndarray | None, inflight_edge_types: set[str]) -> None:
        self.schema = schema
        self.directory = directory
        self.edges = edges
        self.principal = principal
        self.visible = visible
        self.inflight_edge_types = inflight_edge_types
        self.local: dict[str, dict[Any, int | None]] = {}
        self.touched_edge_types: set[str] = set()
        self.staged = Staged(next_id=directory.next_id)

    def lookup(self, type_name: str, key: Any) -> int | None:
        """The id (type, key) will have after the transaction so far, or None."""
        local = self.local.get(type_name)
        if local is not None and key in local:
            return local[key]
        node = self.directory.staged_id(type_name, key)
        if node is not None and self.visible is not None and not (node < len(self.visible) and self.visible[node]):
            return None  # invisible reads as absent, for writers too
        return node

    # -- nodes --------------------------------------------------------------------------------
    def upsert_nodes(self, type_name: str, table: pa.Table | NodeRows) -> Op:
        if isinstance(table, NodeRows):
            return self._upsert_rows(type_name, table)
        key = self.schema.nodes[type_name].key
        keys = table.column(key).to_pylist()
        last = {k: i for i, k in enumerate(keys)}
        if len(last) != len(keys):
            table = table.take(pa.array(sorted(last.values()), type=pa.int64()))
            keys = table.column(key).to_pylist()
        self._check_write_labels(type_name, table)
        existing = [self.lookup(type_name, k) for k in keys]
        if not self.principal.admin:
            self._check_overwrite(type_name, keys, existing)
        ids = np.empty(len(keys), dtype=np.int64)
        fresh = [i for i, node in enumerate(existing) if node is None]
        may_replace = len(fresh) < len(keys)
        if may_replace:
            ids[:] = [-1 if node is None else node for node in existing]
        ids[fresh] = np.arange(self.staged.next_id, self.staged.next_id + len(fresh), dtype=np.int64)
        self.staged.next_id += len(fresh)
        local = self.local.setdefault(type_name, {})
        local.update(zip(keys, ids.tolist(), strict=True))
        self.staged.upserts.append((type_name, keys, ids))
        # a short list converts faster than a numpy array (pyarrow's numpy path probes pandas types)
        id_array = pa.array(ids.tolist() if len(ids) <= 64 else ids, type=pa.int64())
        out = table.add_column(0, "_id", id_array)
        return Op(OpKind.UPSERT_NODES, type_name, table=out, flags=FLAG_MAY_REPLACE if may_replace else 0)

    def _upsert_rows(self, type_name: str, rows: NodeRows) -> Op:
        """upsert_nodes for small dict batches: the same checks and ids, without Arrow."""
        keys = rows.column(self.schema.nodes[type_name].key)
        last = {k: i for i, k in enumerate(keys)}
        if len(last) != len(keys):
            rows = rows.take(sorted(last.values()))
            keys = rows.column(self.schema.nodes[type_name].key)
        if not self.principal.admin:
            self._check_labels_writable(type_name, rows.labels)
        existing = [self.lookup(type_name, k) for k in keys]
        if not self.principal.admin:
            self._check_overwrite(type_name, keys, existing)
        ids = []
        for node in existing:
            if node is None:
                node = self.staged.next_id
                self.staged.next_id += 1
            ids.append(node)
        local = self.local.setdefault(type_name, {})
        local.update(zip(keys, ids, strict=True))
        self.staged.upserts.append((type_name, keys, ids))
        flags = FLAG_MAY_REPLACE if any(node is not None for node in existing) else 0
        return Op(OpKind.UPSERT_NODES, type_name, rows=rows.with_ids(ids), flags=flags)

    def _check_write_labels(self, type_name: str, table: pa.Table) -> None:
        if self.principal.admin:
            return
        self._check_labels_writable(type_name, table.column("_labels").to_pylist())

    def _check_labels_writable(self, type_name: str, rows_labels: list[list[str]]) -> None:
        for row, labels in enumerate(rows_labels):
            if not labels or not self.principal.can_write_labels(set(labels)):
                raise PermissionDenied(f"principal {self.principal.name!r} may not write {type_name} row {row} "
                                       f"with labels {labels} (needs a write grant on every label)")

    def _check_overwrite(self, type_name: str, keys: list[Any], existing: list[int | None]) -> None:
        """A non-admin may replace only nodes it sees whose current labels it may write.

        A key held by a node the writer cannot see is refused with the same message as one it may not
        write: keys are unique per type, so a write can learn that such a key is taken, nothing more.
        """
        local = self.local.get(type_name, {})
        for key, node in zip(keys, existing, strict=True):
            if node is None:
                hidden = key not in local and self.directory.staged_id(type_name, key) is not None
                if hidden:
                    raise PermissionDenied(f"principal {self.principal.name!r} may not write {type_name} {key!r}")
                continue
            if key not in local and not self.principal.can_write_labels(set(self.directory.labels_of(node))):
                raise PermissionDenied(f"principal {self.principal.name!r} may not write {type_name} {key!r}")

    def delete_nodes(self, type_name: str, keys: list[Any]) -> Op | None:
        ids = []
        local = self.local.setdefault(type_name, {})
        for key in keys:
            node = self.lookup(type_name, key)
            if node is None:
                continue
            if not self.principal.admin:
                labels = set(self.directory.labels_of(node))
                if not self.principal.can_write_labels(labels):
                    raise PermissionDenied(f"principal {self.principal.name!r} may not delete {type_name} {key!r}")
            ids.append(node)
            local[key] = None
        if not ids:
            return None
        self.staged.deletes.extend(ids)
        return Op(OpKind.DELETE_NODES, type_name, table=pa.table({"_id": pa.array(ids, type=pa.int64())}))

    # -- edges --------------------------------------------------------------------------------
    def _endpoints(self, type_name: str, batch: EdgeBatch, skip_missing: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = np.ones(len(batch), dtype=bool)
        out = []
        for end, keys, types in (("src", batch.src_keys, batch.src_types), ("dst", batch.dst_keys, batch.dst_types)):
            ids = self._lookup_many(keys, types)
            missing = [row for row, node in enumerate(ids) if node is None]
            if missing and not skip_missing:
                row = missing[0]
                self._missing(type_name, end, row, keys[row], types[row])
            keep[missing] = False
            out.append(np.array([-1 if node is None else node for node in ids] if missing else ids, dtype=np.int64))
        return out[0], out[1], keep

    def _lookup_many(self, keys: list[Any], types: list[str]) -> list[int | None]:
        """lookup() for many keys; a vectorisable fast path when every key has one type."""
        node_type = types[0] if types else None
        if (node_type is None or self.local.get(node_type) or self.visible is not None
                or self.directory.pending_deletes or types.count(node_type) != len(types)):
            return [self.lookup(t, k) for k, t in zip(keys, types, strict=True)]
        mapping = self.directory.ids.get(node_type, {})
        return [mapping.get(k) for k in keys]

    def _missing(self, type_name: str, end: str, row: int, key: Any, node_type: str) -> None:
        for other in self.schema.nodes:
            if other != node_type and self.lookup(other, key) is not None:
                raise WrongEndpointType(f"{end} {key!r} is a {other} node; the edge needs {node_type}",
                                        type_name=type_name, row=row, field=end, value=key)
        raise MissingEndpoint(f"{end} node {node_type} {key!r} does not exist", type_name=type_name,
                              row=row, field=end, value=key)

    def upsert_edges(self, type_name: str, batch: EdgeBatch) -> Op:
        src, dst, _ = self._endpoints(type_name, batch, skip_missing=False)
        table = batch.properties
        packed = src * np.int64(max(self.staged.next_id, 1)) + dst
        if len(unique_sorted(packed)) != len(packed):
            _, last_rev = np.unique(packed[::-1], return_index=True)
            rows = np.sort(len(packed) - 1 - last_rev)
            src, dst = src[rows], dst[rows]
            table = table.take(pa.array(rows)) if table.num_columns else table
        may_replace = (type_name in self.touched_edge_types or type_name in self.inflight_edge_types
                       or self._any_existing(type_name, src, dst))
        self.touched_edge_types.add(type_name)
        columns = {"_src": pa.array(src, type=pa.int64()), "_dst": pa.array(dst, type=pa.int64())}
        columns.update((name, table.column(name)) for name in table.column_names)
        out = pa.table(columns)
        return Op(OpKind.UPSERT_EDGES, type_name, table=out, flags=FLAG_MAY_REPLACE if may_replace else 0)

    def _any_existing(self, type_name: str, src: np.ndarray, dst: np.ndarray) -> bool:
        return self.edges[type_name].contains_any(src, dst)

    def delete_edges(self, type_name: str, batch: EdgeBatch) -> Op | None:
        src, dst, keep = self._endpoints(type_name, batch, skip_missing=True)
        src, dst = src[keep], dst[keep]
        if not len(src):
            return None
        self.touched_edge_types.add(type_name)
        return Op(OpKind.DELETE_EDGES, type_name, table=pa.table({"_src": src, "_dst": dst}))


def check_payload_size(payload: bytes, transaction_bytes_max: int) -> None:
    if len(payload) > transaction_bytes_max:
        raise ValueTooLarge(f"transaction of {len(payload)} bytes exceeds transaction_bytes_max="
                            f"{transaction_bytes_max}; split it into smaller batches")
