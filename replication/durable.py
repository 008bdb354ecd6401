"""A node's durable replication state on disk: the hard state file and the WAL as the protocol's log.

`HardStateFile` keeps (epoch, promised_to) in one small JSON file, replaced atomically and fsynced
before any message that depends on it is sent. `WalLog` is the `LogReader` over the store's
`WriteAheadLog`; `restore` builds the `DurableState` a restarted node starts from.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from knowledge.errors import CorruptionError, InvariantViolation
from knowledge.replication.lsn import EpochHistory, EpochStart
from knowledge.replication.messages import Entry
from knowledge.replication.ready import DurableState, HardState

HARD_STATE_FILE = "REPLICATION"


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HardStateFile:
    """(epoch, promised_to) in `directory`/REPLICATION: read once at start, saved on every change."""

    def __init__(self, directory: str, *, fsync: bool = True) -> None:
        self.directory = directory
        self.path = os.path.join(directory, HARD_STATE_FILE)
        self.fsync = fsync

    def load(self) -> HardState:
        """The saved hard state; epoch 0 and no promise when none was saved. CorruptionError when the
        file is unreadable (never guessed: a forgotten promise could elect two primaries)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return HardState(0, None)
        try:
            doc = json.loads(text)
            epoch, promised = doc["epoch"], doc["promised_to"]
            if not isinstance(epoch, int) or epoch < 0 or not (promised is None or isinstance(promised, str)):
                raise ValueError("bad field types")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(f"replication hard state {self.path} is damaged ({exc}); restore the node "
                                  f"from a backup", segment=HARD_STATE_FILE) from None
        return HardState(epoch, promised)

    def save(self, state: HardState) -> None:
        """Replace the file with `state`, durably (write, fsync, rename, fsync the directory)."""
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"epoch": state.epoch, "promised_to": state.promised_to}, f)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(temporary, self.path)
        if self.fsync:
            _fsync_directory(self.directory)


class WalLog:
    """The protocol's `LogReader` over a store's `WriteAheadLog` (durable records only).

    The newest records are also kept in memory (`remember`, up to RECENT_RECORDS_MAX records or
    RECENT_BYTES_MAX payload bytes): shipping and applying the tail then never rescans a segment file.
    """

    RECENT_RECORDS_MAX = 65_536
    RECENT_BYTES_MAX = 64 << 20

    def __init__(self, wal: Any) -> None:
        self.wal = wal
        self._recent: collections.OrderedDict[int, Entry] = collections.OrderedDict()
        self._recent_bytes = 0

    def remember(self, entry: Entry) -> None:
        """Keep `entry` (the log's next record) in memory, dropping the oldest past the caps."""
        if self._recent and next(reversed(self._recent)) != entry.lsn - 1:
            self._recent.clear()
            self._recent_bytes = 0
        self._recent[entry.lsn] = entry
        self._recent_bytes += len(entry.payload)
        while len(self._recent) > self.RECENT_RECORDS_MAX or self._recent_bytes > self.RECENT_BYTES_MAX:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old.payload)

    def forget_after(self, lsn: int) -> None:
        """A truncation: the remembered records past `lsn` are gone."""
        while self._recent and next(reversed(self._recent)) > lsn:
            _, old = self._recent.popitem()
            self._recent_bytes -= len(old.payload)

    def get(self, lsn: int) -> Entry | None:
        """Record `lsn` if it is remembered."""
        return self._recent.get(lsn)

    def entries(self, first_lsn: int, last_lsn: int, bytes_max: int) -> list[Entry]:
        out: list[Entry] = []
        total = 0
        if first_lsn in self._recent and last_lsn in self._recent:
            for lsn in range(first_lsn, last_lsn + 1):
                entry = self._recent[lsn]
                if out and total + len(entry.payload) > bytes_max:
                    break
                out.append(entry)
                total += len(entry.payload)
            return out
        if first_lsn < self.wal.first_lsn:
            raise InvariantViolation(f"WAL records from LSN {first_lsn} asked for, but the log starts at "
                                     f"{self.wal.first_lsn}")
        for record in self.wal.read_from(first_lsn, until_lsn=last_lsn):
            if out and total + len(record.payload) > bytes_max:
                break
            out.append(Entry(record.lsn, record.epoch, bytes(record.payload), record.timestamp_ns))
            total += len(record.payload)
        return out

    def history(self) -> EpochHistory:
        """Which epoch wrote each LSN of the retained log (one scan)."""
        first = self.wal.first_lsn
        history = EpochHistory()
        for record in self.wal.read_from(first, until_lsn=self.wal.last_lsn):
            if history.last_lsn == 0 and record.lsn > 1:
                # the log starts after a snapshot or a retention cut: the records before it are taken to
                # be of its first record's epoch (a wrong guess only makes the primary send a snapshot)
                history = EpochHistory((EpochStart(record.epoch, 1),), record.lsn - 1)
            history.append(record.lsn, record.epoch)
        if history.last_lsn == 0 and self.wal.last_lsn > 0:  # an empty log continuing after start_at
            history = EpochHistory((EpochStart(self.wal.last_epoch, 1),) if self.wal.last_epoch else (),
                                   self.wal.last_lsn)
        return history


def restore(wal: Any, hard: HardState, applied_lsn: int) -> DurableState:
    """The DurableState of a node whose WAL is `wal`, hard state `hard`, store applied to `applied_lsn`."""
    history = WalLog(wal).history()
    epoch = max(hard.epoch, wal.last_epoch)
    return DurableState(HardState(epoch, hard.promised_to), history.starts, wal.last_lsn,
                        min(applied_lsn, wal.last_lsn), wal.first_lsn)
