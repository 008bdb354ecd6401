"""The change feed: committed WAL records after an LSN, each cut down to what the caller may see.

Visibility of a record's rows is judged as of that record: an upserted node by the labels the record
gives it, a deleted node by the labels this feed last saw it upserted with (a node the feed never saw is
left out for non-admins, so a deletion reveals nothing), an edge by both endpoints (the labels the feed
saw, else the node's current visibility). Hidden properties are dropped for non-admins; principal
changes go to admins only, without token digests. Schema changes go to everyone (schemas are public). A
non-admin gets no record of which nothing is visible to it (an empty record would tell that a write
happened); admins get every record.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from knowledge.errors import InvalidArgument, Unavailable
from knowledge.server import wire
from knowledge.server.v1 import knowledge_pb2 as pb

META_KINDS = (("principal:", "principal"), ("ttl:", "ttl"))
"""The change-feed kind of a META record, by the prefix of its name (storage/catalog.py, storage/ttl.py)."""

KNOWN_NODES_MAX = 1_000_000  # labels remembered per feed (oldest forgotten first)


def _decode_ops(payload: bytes, lsn: int) -> list[Any]:
    try:
        from knowledge.storage.ops import decode_ops
    except ImportError:  # before the layout change
        from knowledge.ops import decode_ops  # type: ignore[no-redef]
    return decode_ops(payload, lsn)


class ChangeFeed:
    """Turns WAL records into ChangeRecords for one session's principal."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.store = session.store
        self.known: dict[int, bool] = {}  # node id -> visible to the principal when last upserted

    def _can_see(self, labels: list[str] | None, principal: Any) -> bool:
        return principal.admin or bool(principal.read.intersection(labels or ()))

    def _remember(self, ids: list[int], seen: list[bool]) -> None:
        for node, visible in zip(ids, seen, strict=True):
            self.known.pop(node, None)
            self.known[node] = visible
        while len(self.known) > KNOWN_NODES_MAX:
            self.known.pop(next(iter(self.known)))

    def _node_upserts(self, op: Any, principal: Any) -> pa.Table | None:
        table = op.arrow()
        labels = table.column("_labels").to_pylist()
        seen = [self._can_see(row, principal) for row in labels]
        self._remember(table.column("_id").to_pylist(), seen)
        table = table.filter(pa.array(seen, type=pa.bool_()))
        node_type = self.store.schema.nodes.get(op.name)
        if not principal.admin and node_type is not None:
            hidden = [n for n, p in node_type.properties.items() if p.hidden and n in table.column_names]
            table = table.drop(hidden)
        return table

    def _node_deletes(self, op: Any, principal: Any) -> pa.Table:
        ids = op.arrow().column("_id").to_pylist()
        keep = [principal.admin or self.known.get(node, False) for node in ids]
        for node in ids:
            self.known.pop(node, None)
        return pa.table({"_id": pa.array([n for n, k in zip(ids, keep, strict=True) if k], type=pa.int64())})

    def _edges(self, op: Any, principal: Any) -> pa.Table:
        table = op.arrow()
        if principal.admin:
            return table
        edge_type = self.store.schema.edges.get(op.name)
        if edge_type is None or edge_type.hidden:  # for a non-admin a hidden edge type does not exist
            return table.slice(0, 0)
        now = self.session.visible()

        def seen(column: str) -> np.ndarray:
            ids = table.column(column).to_numpy()
            out = np.array([self.known[n] if n in self.known else bool(n < len(now) and now[n])
                            for n in ids.tolist()], dtype=bool)
            return out

        return table.filter(pa.array(seen("_src") & seen("_dst"))) if table.num_rows else table

    def record(self, record: Any) -> pb.ChangeRecord:
        principal = self.session.principal
        out = pb.ChangeRecord(lsn=record.lsn, epoch=record.epoch, timestamp_ns=record.timestamp_ns)
        for op in _decode_ops(record.payload, record.lsn):
            kind = op.kind.name.lower()
            if kind == "schema":
                out.changes.add(kind="schema", type=op.name, document_json=json.dumps(op.document))
            elif kind == "meta":
                if principal.admin:  # principal: a grant change (tokens left out); ttl: a TTL policy; meta: other
                    document = {k: v for k, v in op.document.items() if k != "tokens"}
                    meta = next((name for prefix, name in META_KINDS if op.name.startswith(prefix)), "meta")
                    out.changes.add(kind=meta, type=op.name, document_json=json.dumps(document))
            else:
                table = {"upsert_nodes": self._node_upserts, "delete_nodes": self._node_deletes}.get(
                    kind, self._edges)(op, principal)
                if table is not None and table.num_rows:
                    out.changes.add(kind=kind, type=op.name, arrow_ipc=wire.table_to_ipc(table))
        return out


def stream(session: Any, after_lsn: int, follow: bool, stop: threading.Event, poll_s: float,
           active: Any) -> Iterator[pb.ChangeRecord]:
    """ChangeRecords after `after_lsn` up to the visible LSN; with `follow`, then each new commit until
    `stop` is set or `active()` turns false."""
    store = session.store
    if after_lsn < 0:
        raise InvalidArgument(f"after_lsn must be >= 0, got {after_lsn}")
    first = store.wal.first_lsn
    if after_lsn + 1 < first:
        raise InvalidArgument(f"records after LSN {after_lsn} are no longer in the WAL (a checkpoint dropped "
                              f"them; it begins at LSN {first}): start at after_lsn >= {first - 1}, or copy "
                              f"the store with backup and follow from its LSN")
    feed = ChangeFeed(session)
    lsn = after_lsn
    while not stop.is_set() and active():
        upto = store.memory_lsn
        if upto > lsn:
            try:
                records = list(store.wal.read_from(lsn + 1, until_lsn=upto))
            except OSError as exc:
                raise Unavailable(f"reading the WAL after LSN {lsn} failed ({exc}); resume from after_lsn={lsn}") \
                    from None
            if records and records[0].lsn != lsn + 1:
                raise InvalidArgument(f"records after LSN {lsn} were dropped by a checkpoint meanwhile; "
                                      f"resume from a later LSN")
            for record in records:
                change = feed.record(record)
                lsn = record.lsn
                if change.changes or session.principal.admin:  # a non-admin is not told of invisible writes
                    yield change
        if not follow:
            return
        stop.wait(poll_s)


__all__ = ["ChangeFeed", "stream"]
