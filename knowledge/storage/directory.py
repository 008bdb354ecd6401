"""The node directory: key -> id per type, id -> (type, key), liveness and labels, as dense arrays.

Two views live here. *Applied* state (`type_of`, label bitmaps) changes only when a durable
record is applied, and is what reads see. *Staged* state (`ids` per type, `pending_deletes`) is
ahead of it by the transactions between WAL append and apply, and is what validation of the
next transaction sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knowledge.index.arrays import grown

ABSENT = -1
SMALL_BATCH = 64  # below this, plain Python beats an Arrow kernel call
_MISSING = object()


class StageUndo:
    """What staging changed in a directory, newest last, for `NodeDirectory.unstage`."""

    __slots__ = ("deletes", "former", "keys", "next_id")

    def __init__(self, next_id: int) -> None:
        self.keys: list[tuple[str, Any, Any, bool]] = []  # (type, key, its staged id before or _MISSING,
        # whether that id's delete was pending then)
        self.former: list[tuple[str, Any]] = []  # former-id lists appended to
        self.deletes: list[int] = []  # ids made pending deletes
        self.next_id = next_id


class NodeDirectory:
    """Dense-id bookkeeping for every node in the store."""

    def __init__(self) -> None:
        self.type_names: list[str] = []
        self.type_codes: dict[str, int] = {}
        self.ids: dict[str, dict[Any, int]] = {}
        self.pending_deletes: set[int] = set()
        self.type_of = np.full(1024, ABSENT, dtype=np.int16)
        self.key_of = np.empty(1024, dtype=object)
        self.labels: dict[str, np.ndarray] = {}
        self.next_id = 0
        self.version = 0  # bumped by every change of liveness or labels
        self.former: dict[str, dict[Any, list[int]]] = {}  # type -> deleted key -> the ids it had (read views)
        self.expired: np.ndarray | None = None  # nodes past their TTL deadline, not yet deleted (storage/ttl.py)

    # -- types --------------------------------------------------------------------------------
    def ensure_type(self, name: str) -> int:
        code = self.type_codes.get(name)
        if code is None:
            code = len(self.type_names)
            self.type_names.append(name)
            self.type_codes[name] = code
            self.ids[name] = {}
        return code

    @property
    def capacity(self) -> int:
        return len(self.type_of)

    @property
    def alive(self) -> np.ndarray:
        return self.type_of >= 0

    def count(self, type_name: str | None = None) -> int:
        if type_name is None:
            return int(np.count_nonzero(self.type_of >= 0))
        code = self.type_codes.get(type_name)
        return 0 if code is None else int(np.count_nonzero(self.type_of == code))

    # -- staged view (validation) -------------------------------------------------------------
    def staged_id(self, type_name: str, key: Any) -> int | None:
        """The id `key` has once every appended transaction is applied, or None."""
        node = self.ids.get(type_name, {}).get(key)
        if node is None or node in self.pending_deletes:
            return None
        return node

    def allocate(self, count: int) -> np.ndarray:
        first = self.next_id
        self.next_id += count
        return np.arange(first, first + count, dtype=np.int64)

    def stage_upsert(self, type_name: str, keys: list[Any], ids: np.ndarray | list[int],
                     undo: StageUndo | None = None) -> None:
        """Stage `keys` at `ids`; with `undo`, note what it takes to take the staging back."""
        mapping = self.ids[type_name]
        ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
        if self.pending_deletes:  # a key re-created while its delete is in flight: its old id stays findable
            former = self.former.setdefault(type_name, {})
            for key, node in zip(keys, ids, strict=True):
                old = mapping.get(key)
                if old is not None and old != node:
                    former.setdefault(key, []).append(old)
                    if undo is not None:
                        undo.former.append((type_name, key))
        if undo is not None:
            pending = self.pending_deletes
            for key in keys:
                old = mapping.get(key, _MISSING)
                undo.keys.append((type_name, key, old, old is not _MISSING and old in pending))
        mapping.update(zip(keys, ids, strict=True))

    def stage_delete(self, ids: list[int], undo: StageUndo | None = None) -> None:
        """Stage the delete of `ids`; with `undo`, note which of them were not pending already."""
        if undo is not None:
            undo.deletes.extend(node for node in ids if node not in self.pending_deletes)
        self.pending_deletes.update(ids)

    def unstage(self, undo: StageUndo) -> None:
        """Take back the staging `undo` noted (newest first): a group commit whose WAL write failed. The
        key maps, former ids and pending deletes are shared with read views' forks, so this undoes it for
        them too; only the engine's next_id is reset."""
        for type_name, key, old, was_pending in reversed(undo.keys):
            mapping = self.ids[type_name]
            if old is _MISSING or (was_pending and old not in self.pending_deletes):
                mapping.pop(key, None)  # absent before, or its delete was applied meanwhile: gone now
            else:
                mapping[key] = old
        for type_name, key in reversed(undo.former):
            former = self.former[type_name]
            former[key].pop()
            if not former[key]:
                del former[key]
        self.pending_deletes.difference_update(undo.deletes)
        self.next_id = undo.next_id

    # -- applied view (reads) -----------------------------------------------------------------
    def id_of(self, type_name: str, key: Any) -> int | None:
        """The applied id of (type, key), or None when no such live node."""
        node = self.ids.get(type_name, {}).get(key)
        code = self.type_codes.get(type_name)
        if node is not None and node < len(self.type_of) and self.type_of[node] == code:
            return node
        former = self.former.get(type_name)  # a read view older than the key's delete (storage/versions.py)
        for old in former.get(key, ()) if former else ():
            if old < len(self.type_of) and self.type_of[old] == code:
                return old
        return None

    def apply_upsert(self, type_name: str, ids: np.ndarray, keys: list[Any], labels: pa.Array) -> None:
        code = self.ensure_type(type_name)
        top = int(ids.max()) + 1 if len(ids) else 0
        self.next_id = max(self.next_id, top)
        self.type_of = grown(self.type_of, top, ABSENT)
        self.key_of = grown(self.key_of, top, None)
        self.type_of[ids] = code
        self.key_of[ids] = np.array(keys, dtype=object) if keys else []
        mapping = self.ids[type_name]
        for key, node in zip(keys, ids.tolist(), strict=True):
            mapping.setdefault(key, node)
        self._set_labels(ids, labels)

    def apply_upsert_rows(self, type_name: str, ids: list[int], keys: list[Any], labels: list[list[str]]) -> None:
        """apply_upsert for a few rows given as Python lists."""
        code = self.ensure_type(type_name)
        top = max(ids) + 1 if ids else 0
        self.next_id = max(self.next_id, top)
        self.type_of = grown(self.type_of, top, ABSENT)
        self.key_of = grown(self.key_of, top, None)
        mapping = self.ids[type_name]
        type_of, key_of = self.type_of, self.key_of
        replaced = False
        for node, key in zip(ids, keys, strict=True):
            replaced = replaced or bool(type_of[node] != ABSENT)
            type_of[node] = code
            key_of[node] = key
            mapping.setdefault(key, node)
        if replaced:
            self._set_labels(np.array(ids, dtype=np.int64), labels)
            return
        for node, node_labels in zip(ids, labels, strict=True):  # fresh ids: no old labels to clear
            for label in node_labels:
                self._label_bitmap_for_write(label)[node] = True
        self.version += 1

    def _label_bitmap_for_write(self, label: str) -> np.ndarray:
        bitmap = self.labels.get(label)
        if bitmap is None or len(bitmap) < len(self.type_of):
            bitmap = self.labels[label] = grown(bitmap if bitmap is not None else np.zeros(0, dtype=bool),
                                                len(self.type_of), False)
        return bitmap

    def _set_labels(self, ids: np.ndarray, labels: pa.Array | list[list[str]] | None) -> None:
        """Replace the labels of `ids` (a list<string> array aligned with ids; None clears them)."""
        for bitmap in self.labels.values():
            inside = ids[ids < len(bitmap)]
            bitmap[inside] = False
        if labels is not None and 0 < len(ids) <= SMALL_BATCH:
            rows_labels = labels if isinstance(labels, list) else labels.to_pylist()
            for node, node_labels in zip(ids.tolist(), rows_labels, strict=True):
                for label in node_labels or ():
                    self._label_bitmap_for_write(label)[node] = True
        elif labels is not None and len(ids):
            if isinstance(labels, list):
                labels = pa.array(labels, type=pa.list_(pa.string()))
            labels = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
            flat = pc.list_flatten(labels)
            if len(flat):
                owners = ids[pc.list_parent_indices(labels).to_numpy()]
                encoded = pc.dictionary_encode(flat)
                codes = encoded.indices.to_numpy()
                for code, label in enumerate(encoded.dictionary.to_pylist()):
                    bitmap = grown(self.labels.get(label, np.zeros(0, dtype=bool)), len(self.type_of), False)
                    bitmap[owners[codes == code]] = True
                    self.labels[label] = bitmap
        self.version += 1

    def apply_delete(self, type_name: str, ids: np.ndarray) -> None:
        code = self.type_codes[type_name]
        self.pending_deletes.difference_update(ids.tolist())
        ids = ids[(ids < len(self.type_of))]
        ids = ids[self.type_of[ids] == code]
        mapping = self.ids[type_name]
        former = self.former.setdefault(type_name, {})
        for node in ids.tolist():
            key = self.key_of[node]
            if mapping.get(key) == node:
                former.setdefault(key, []).append(node)  # before the key goes: a read view may still see it
                del mapping[key]
        self.type_of[ids] = ABSENT  # key_of keeps the keys of dead ids (never reused): read views share it
        self._set_labels(ids, None)

    def labels_of(self, node: int) -> list[str]:
        return sorted(label for label, bitmap in self.labels.items() if node < len(bitmap) and bitmap[node])

    def label_bitmap(self, label: str) -> np.ndarray | None:
        bitmap = self.labels.get(label)
        if bitmap is None:
            return None
        return grown(bitmap, len(self.type_of), False)[:len(self.type_of)]
