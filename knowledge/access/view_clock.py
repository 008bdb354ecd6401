"""The LSN a non-admin may be told: that of the last write it could see.

The store's LSN counts every commit, so a reader watching it would learn that writes it cannot see happen
(how many, when). A session of a non-admin reports instead the LSN of the last change to what it sees
(`Session.stats()["lsn"]`, `Session.snapshot()`): its reads are still made at one store LSN, and nothing it
can see changed between the two.

Kept principal-agnostic, per label: a node write is seen by a principal iff the node carried, before or after
it, a label the principal reads (`labels[label]`: the last such write); an edge write iff both endpoints carry
a label it reads (`pairs[(source label, target label)]`); a schema change by everyone; a change to a catalog
principal by that principal. Judging old writes by the principal's grants of now is right: a write that was
seen then but is not now (or the reverse) is followed by a later seen write (the relabel, delete, grant or
revoke that changed it), whose LSN is larger.

Lost on restart are the writes that left no row behind (deletes, relabels away, edge deletes, schema and
grant changes) unless the store was closed cleanly (`save` / `load`); the rest is recovered from the
tables' `_lsn` columns (`seed_nodes` / `seed_edges`). So after a crash the value may go back, never forward.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from knowledge.access.principal import Principal

FILE = "view_lsn.json"


class ViewClock:
    """Per-label LSNs of the last writes, and the LSN a principal may be told (see the module docstring)."""

    def __init__(self) -> None:
        self.labels: dict[str, int] = {}
        self.pairs: dict[tuple[str, str], int] = {}
        self.principals: dict[str, int] = {}
        self.schema = 0

    # -- recording (under the store's state lock, in LSN order) ---------------------------------
    def node_labels(self, lsn: int, labels: Iterable[str]) -> None:
        """Nodes carrying `labels` (before or after the write) were written at `lsn`."""
        table = self.labels
        for label in labels:
            if table.get(label, 0) < lsn:
                table[label] = lsn

    def edge_labels(self, lsn: int, pairs: Iterable[tuple[str, str]]) -> None:
        """Edges whose endpoints carry these (source label, target label) pairs were written at `lsn`."""
        table = self.pairs
        for pair in pairs:
            if table.get(pair, 0) < lsn:
                table[pair] = lsn

    def principal(self, lsn: int, name: str) -> None:
        if self.principals.get(name, 0) < lsn:
            self.principals[name] = lsn

    def schema_change(self, lsn: int) -> None:
        self.schema = max(self.schema, lsn)

    # -- reading ------------------------------------------------------------------------------
    def lsn_for(self, principal: Principal, named: bool) -> int:
        """The LSN of the last write `principal` could see (`named`: a catalog principal, whose own grant
        changes count)."""
        best = self.schema
        if named:
            best = max(best, self.principals.get(principal.name, 0))
        grants = sorted(principal.read)
        labels = self.labels
        for label in grants:
            best = max(best, labels.get(label, 0))
        pairs = self.pairs
        if len(grants) ** 2 <= len(pairs):
            for source in grants:
                for target in grants:
                    best = max(best, pairs.get((source, target), 0))
        else:
            read = principal.read
            for (source, target), lsn in pairs.items():
                if lsn > best and source in read and target in read:
                    best = lsn
        return best

    # -- persistence ----------------------------------------------------------------------------
    def merge(self, other: ViewClock) -> None:
        self.node_labels_from(other.labels)
        self.edge_labels_from(other.pairs)
        for name, lsn in other.principals.items():
            self.principal(lsn, name)
        self.schema_change(other.schema)

    def node_labels_from(self, labels: dict[str, int]) -> None:
        for label, lsn in labels.items():
            self.node_labels(lsn, (label,))

    def edge_labels_from(self, pairs: dict[tuple[str, str], int]) -> None:
        for pair, lsn in pairs.items():
            self.edge_labels(lsn, (pair,))

    def save(self, directory: str, lsn: int) -> None:
        """Write the clock as of store LSN `lsn` (every record up to it applied), atomically."""
        document = {"lsn": lsn, "schema": self.schema, "labels": self.labels, "principals": self.principals,
                    "pairs": [[s, t, v] for (s, t), v in self.pairs.items()]}
        path = os.path.join(directory, FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(document, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, directory: str, lsn: int) -> ViewClock | None:
        """The clock saved at store LSN `lsn`, or None (none saved, another LSN, unreadable)."""
        path = os.path.join(directory, FILE)
        try:
            with open(path) as f:
                document: dict[str, Any] = json.load(f)
            if document.get("lsn") != lsn:
                return None
            clock = cls()
            clock.schema = int(document["schema"])
            clock.labels = {str(k): int(v) for k, v in document["labels"].items()}
            clock.principals = {str(k): int(v) for k, v in document["principals"].items()}
            clock.pairs = {(str(s), str(t)): int(v) for s, t, v in document["pairs"]}
            return clock
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def discard(directory: str) -> None:
        """Remove a saved clock (it describes the store as of a clean close only)."""
        try:
            os.remove(os.path.join(directory, FILE))
        except FileNotFoundError:
            pass


SMALL_BATCH = 32  # up to this many ids (or edges), labels are looked up one node at a time


def _labels_of(label_bitmaps: dict[str, np.ndarray], node: int) -> list[str]:
    return [label for label, bitmap in label_bitmaps.items() if node < len(bitmap) and bitmap[node]]


def labels_of_ids(label_bitmaps: dict[str, np.ndarray], ids: np.ndarray) -> set[str]:
    """Every label that some node of `ids` carries."""
    if len(ids) <= SMALL_BATCH:
        return {label for node in ids.tolist() for label in _labels_of(label_bitmaps, node)}
    found = set()
    for label, bitmap in label_bitmaps.items():
        inside = ids[ids < len(bitmap)]
        if len(inside) and bitmap[inside].any():
            found.add(label)
    return found


def label_pairs(label_bitmaps: dict[str, np.ndarray], src: np.ndarray, dst: np.ndarray,
                lsns: np.ndarray | None = None) -> Any:
    """Every (source label, target label) pair of the edges (src[i], dst[i]), by their endpoints' labels now:
    a set, or with `lsns` (one per edge) a dict of each pair's largest LSN."""
    if not len(src):
        return {} if lsns is not None else set()
    if len(src) <= SMALL_BATCH:
        found: dict[tuple[str, str], int] = {}
        for position, (source, target) in enumerate(zip(src.tolist(), dst.tolist(), strict=True)):
            lsn = 0 if lsns is None else int(lsns[position])
            for pair in itertools.product(_labels_of(label_bitmaps, source), _labels_of(label_bitmaps, target)):
                found[pair] = max(found.get(pair, 0), lsn)
        return found if lsns is not None else set(found)
    names = list(label_bitmaps)
    words = max((len(names) + 62) // 63, 1)
    codes = np.zeros((len(src), 2 * words), dtype=np.int64)  # source label bits, then target label bits
    for position, label in enumerate(names):
        bitmap = label_bitmaps[label]
        word, bit = divmod(position, 63)
        for end, ids in enumerate((src, dst)):
            inside = ids < len(bitmap)
            hit = np.zeros(len(ids), dtype=bool)
            hit[inside] = bitmap[ids[inside]]
            codes[hit, end * words + word] |= np.int64(1) << np.int64(bit)
    if len(names) <= 31:  # both codes fit one int64: a 1-d unique
        combined, inverse = np.unique(codes[:, 0] << np.int64(31) | codes[:, 1], return_inverse=True)
        rows = np.stack([combined >> np.int64(31), combined & np.int64((1 << 31) - 1)], axis=1)
    else:
        rows, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    top = None
    if lsns is not None:
        top = np.zeros(len(rows), dtype=np.int64)
        np.maximum.at(top, inverse, np.asarray(lsns, dtype=np.int64))
    found = {}
    for position, row in enumerate(rows):
        lsn = 0 if top is None else int(top[position])
        for source in _decode(row[:words], names):
            for target in _decode(row[words:], names):
                found[(source, target)] = max(found.get((source, target), 0), lsn)
    return found if lsns is not None else set(found)


def _decode(words: np.ndarray, names: list[str]) -> list[str]:
    out = []
    for word_index, word in enumerate(words.tolist()):
        bit = 0
        while word:
            if word & 1:
                out.append(names[word_index * 63 + bit])
            word >>= 1
            bit += 1
    return out


__all__ = ["ViewClock", "label_pairs", "labels_of_ids"]
