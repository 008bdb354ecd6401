"""The state machine's read-only view of the durable log, and an in-memory log for the simulator.

`LogReader` is all the protocol needs from storage: durable records by LSN. The WAL implements
it for the transport (`WriteAheadLog.read_from`, turning each Record into an Entry). `MemoryLog`
is the in-memory version: it carries out a Ready's persistence the way a store would and keeps the
whole history (compacted records too, so the simulator can compare logs in O(1) by prefix hash).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol

from knowledge.errors import invariant
from knowledge.replication.lsn import EpochHistory, EpochStart
from knowledge.replication.messages import Entry
from knowledge.replication.ready import DurableState, HardState, Ready


class LogReader(Protocol):
    """Durable records by LSN."""

    def entries(self, first_lsn: int, last_lsn: int, bytes_max: int) -> Sequence[Entry]:
        """Records first_lsn..last_lsn in order, stopping once `bytes_max` payload bytes are passed
        (at least one record). Every LSN asked for is durable and retained."""
        ...


def _entry_hash(previous: int, entry: Entry) -> int:
    return zlib.crc32(entry.payload, zlib.crc32(b"%d/%d" % (entry.epoch, entry.lsn), previous))


class MemoryLog:
    """A node's durable state held in memory: hard state, log, applied LSN, retained range."""

    def __init__(self) -> None:
        self.hard_state = HardState(0, None)
        self.records: list[Entry] = []  # LSN i is records[i - 1], compacted ones included
        self.hashes: list[int] = [0]  # hashes[i] covers LSNs 1..i
        self.applied_lsn = 0
        self.first_lsn = 1

    @property
    def last_lsn(self) -> int:
        return len(self.records)

    def entries(self, first_lsn: int, last_lsn: int, bytes_max: int) -> list[Entry]:
        invariant(self.first_lsn <= first_lsn <= last_lsn <= self.last_lsn,
                  f"read {first_lsn}..{last_lsn} outside the retained {self.first_lsn}..{self.last_lsn}")
        out: list[Entry] = []
        total = 0
        for entry in self.records[first_lsn - 1:last_lsn]:
            if out and total + len(entry.payload) > bytes_max:
                break
            out.append(entry)
            total += len(entry.payload)
        return out

    def prefix_hash(self, lsn: int) -> int:
        """A hash of LSNs 1..lsn (equal hashes: equal prefixes)."""
        return self.hashes[lsn]

    def durable_state(self) -> DurableState:
        """What a restarted node starts from."""
        history = EpochHistory()
        for entry in self.records:
            history.append(entry.lsn, entry.epoch)
        return DurableState(self.hard_state, history.starts, self.last_lsn, self.applied_lsn, self.first_lsn)

    def persist(self, ready: Ready) -> None:
        """Steps 1 and 2 of a Ready: hard state, snapshot, truncation, appends (all durable at once)."""
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state
        if ready.snapshot is not None:
            data = ready.snapshot.data
            invariant(isinstance(data, tuple) and len(data) == ready.snapshot.position.lsn,
                      "a memory snapshot carries every record up to its position")
            self.records = []
            self.hashes = [0]
            for entry in data:  # type: ignore[union-attr]
                self._append(entry)
            self.applied_lsn = ready.snapshot.position.lsn
            self.first_lsn = self.applied_lsn + 1
        if ready.truncate_after_lsn is not None:
            invariant(ready.truncate_after_lsn >= self.applied_lsn, "truncation below the applied LSN")
            del self.records[ready.truncate_after_lsn:]
            del self.hashes[ready.truncate_after_lsn + 1:]
        for entry in ready.entries:
            self._append(entry)

    def apply(self, ready: Ready) -> None:
        """Steps 4 and 6: records up to apply_through_lsn are applied; older ones may be dropped."""
        invariant(ready.apply_through_lsn <= self.last_lsn, "apply past the durable log")
        self.applied_lsn = max(self.applied_lsn, ready.apply_through_lsn)
        self.first_lsn = max(self.first_lsn, min(ready.retain_from_lsn, self.last_lsn + 1))

    def epoch_starts(self) -> tuple[EpochStart, ...]:
        return self.durable_state().epochs

    def _append(self, entry: Entry) -> None:
        invariant(entry.lsn == self.last_lsn + 1, f"append of LSN {entry.lsn} after {self.last_lsn}")
        self.records.append(entry)
        self.hashes.append(_entry_hash(self.hashes[-1], entry))
