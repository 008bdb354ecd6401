"""Log positions and epoch histories, the vocabulary of the replication protocol.

A `Position` is one (epoch, lsn) pair: the LSN of a WAL record and the epoch of the primary that
wrote it. It has the same order and text form ("3/42") as `knowledge.position.Position` and the same
fields as a WAL record header, so a transport converts with `Position(record.epoch, record.lsn)`.
Positions order by epoch first: that is the "more advanced log" order an election compares.

An `EpochHistory` says which epoch wrote each LSN of a log as a short list of `EpochStart`s (one per
epoch that wrote anything). Two logs that agree on the epoch at an LSN hold the same records up to
it (only one primary ever writes in an epoch, and it ships records only after a matching
predecessor), so comparing histories finds where two logs diverge without reading records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from knowledge.errors import invariant


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A point in a log: `lsn` is dense from 1 (0 is "before any record"), `epoch` wrote it."""

    epoch: int
    lsn: int

    def __post_init__(self) -> None:
        invariant(self.epoch >= 0 and self.lsn >= 0, f"negative position {self.epoch}/{self.lsn}")

    def __str__(self) -> str:
        return f"{self.epoch}/{self.lsn}"

    def is_zero(self) -> bool:
        """True for the position before any record."""
        return self.lsn == 0

    @classmethod
    def parse(cls, text: str) -> Position:
        """The position written as "epoch/lsn" (the inverse of str)."""
        epoch, sep, lsn = text.partition("/")
        invariant(sep == "/" and epoch.isdigit() and lsn.isdigit(), f"not a position: {text!r}")
        return cls(int(epoch), int(lsn))


ZERO = Position(0, 0)


@dataclass(frozen=True, order=True, slots=True)
class EpochStart:
    """Epoch `epoch` wrote the records from `first_lsn` up to the next start (or the log's end)."""

    epoch: int
    first_lsn: int

    def __str__(self) -> str:
        return f"{self.epoch}@{self.first_lsn}"


class EpochHistory:
    """The epoch of every LSN of one log, from 1 to `last_lsn`. Mutable; snapshots via `starts`."""

    def __init__(self, starts: Iterable[EpochStart] = (), last_lsn: int = 0) -> None:
        self._starts: list[EpochStart] = list(starts)
        self.last_lsn = last_lsn
        for before, after in zip(self._starts, self._starts[1:], strict=False):
            invariant(before.epoch < after.epoch and before.first_lsn < after.first_lsn,
                      f"epoch history out of order: {before} then {after}")
        invariant(not self._starts or self._starts[-1].first_lsn <= last_lsn,
                  f"epoch history starts past its last LSN {last_lsn}")

    @property
    def starts(self) -> tuple[EpochStart, ...]:
        return tuple(self._starts)

    @property
    def last(self) -> Position:
        """The position of the last record (ZERO for an empty log)."""
        return Position(self.epoch_at(self.last_lsn), self.last_lsn)

    def epoch_at(self, lsn: int) -> int:
        """The epoch that wrote `lsn` (0 for lsn 0); `lsn` must be within the log."""
        invariant(0 <= lsn <= self.last_lsn, f"LSN {lsn} outside the log (last {self.last_lsn})")
        low, high = 0, len(self._starts)
        while low < high:  # the last start with first_lsn <= lsn
            middle = (low + high) // 2
            if self._starts[middle].first_lsn <= lsn:
                low = middle + 1
            else:
                high = middle
        return self._starts[low - 1].epoch if low else 0

    def matches(self, position: Position) -> bool:
        """Whether this log holds the record at `position` (same LSN written in the same epoch)."""
        return position.lsn <= self.last_lsn and self.epoch_at(position.lsn) == position.epoch

    def append(self, lsn: int, epoch: int) -> None:
        """Record that `lsn` (the next LSN) was written in `epoch` (never older than the last)."""
        invariant(lsn == self.last_lsn + 1, f"append of LSN {lsn} after {self.last_lsn}")
        current = self._starts[-1].epoch if self._starts else 0
        invariant(epoch >= current, f"epoch went back from {current} to {epoch} at LSN {lsn}")
        if epoch > current:
            self._starts.append(EpochStart(epoch, lsn))
        self.last_lsn = lsn

    def truncate_after(self, lsn: int) -> None:
        """Forget every record past `lsn`."""
        invariant(0 <= lsn <= self.last_lsn, f"truncate to {lsn} outside the log (last {self.last_lsn})")
        while self._starts and self._starts[-1].first_lsn > lsn:
            self._starts.pop()
        self.last_lsn = lsn

    def prefix(self, lsn: int) -> tuple[EpochStart, ...]:
        """The starts that describe LSNs 1..lsn."""
        invariant(0 <= lsn <= self.last_lsn, f"prefix {lsn} outside the log (last {self.last_lsn})")
        return tuple(start for start in self._starts if start.first_lsn <= lsn)

    def divergence(self, other: EpochHistory) -> int:
        """The last LSN up to which this log and `other` hold the same records.

        Agreement is a prefix (two logs that agree at an LSN agree before it), so a binary search
        over the LSNs both hold finds its end.
        """
        low, high = 0, min(self.last_lsn, other.last_lsn)
        while low < high:
            middle = (low + high + 1) // 2
            if self.epoch_at(middle) == other.epoch_at(middle):
                low = middle
            else:
                high = middle - 1
        return low

    def __repr__(self) -> str:
        return f"EpochHistory([{', '.join(map(str, self._starts))}], last_lsn={self.last_lsn})"
