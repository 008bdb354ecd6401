"""The protocol's messages: frozen values a transport carries between nodes unchanged.

Every message names its `sender`, its addressee `to` and the sender's `epoch`. A node that receives
a higher epoch adopts it first (a primary or candidate steps down); a message of a lower epoch is
answered with the receiver's epoch (so a stale primary learns it is deposed) and otherwise ignored.

    replica -> primary   Subscribe    open or re-open a stream: the replica's log as an epoch history
                         AppendAck    records up to match_lsn are durable here and match the primary
    primary -> replica   Append       records after `prev` (empty: a heartbeat), the commit point
                         InstallSnapshot   replace your state with a backup taken at `position`
    candidate -> all     Prepare      fence epoch `epoch` and tell me your last position
    member -> candidate  Promise      fenced (or not: `granted`), here is my last position
"""

from __future__ import annotations

from dataclasses import dataclass

from knowledge.replication.lsn import EpochStart, Position


@dataclass(frozen=True, slots=True)
class Entry:
    """One WAL record in transit: opaque `payload` bytes at (lsn, epoch); `timestamp_ns` rides along
    so a replica writes the same frame as the primary. An empty payload is an epoch's first record
    (the new primary's barrier), which the apply layer skips."""

    lsn: int
    epoch: int
    payload: bytes
    timestamp_ns: int = 0

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.lsn)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """A replica's state: its log's epochs up to last_lsn (all durable) and its applied LSN.

    `incarnation` is drawn anew each time the replica process starts and `sequence` counts its
    Subscribes, so the primary can tell a delayed duplicate from a newer state.
    """

    sender: str
    to: str
    epoch: int
    zone: str
    last_lsn: int
    epochs: tuple[EpochStart, ...]
    applied_lsn: int
    incarnation: int = 0
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Append:
    """Records following `prev` (which the replica must hold), and the primary's commit LSN."""

    sender: str
    to: str
    epoch: int
    prev: Position
    entries: tuple[Entry, ...]
    commit_lsn: int


@dataclass(frozen=True, slots=True)
class AppendAck:
    """Records 1..match_lsn are durable on the sender and equal the primary's; applied up to applied_lsn.

    Sent with a higher epoch than the primary's, it tells a stale primary that it was deposed.
    """

    sender: str
    to: str
    epoch: int
    match_lsn: int
    applied_lsn: int


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """A consistent backup of the primary at `position` (committed), with its epoch history.

    `data` is opaque to the protocol: the simulator carries records in it; a transport streams the
    backup's bytes beside the message and leaves it None.
    """

    sender: str
    to: str
    epoch: int
    position: Position
    epochs: tuple[EpochStart, ...]
    commit_lsn: int
    data: object = None


@dataclass(frozen=True, slots=True)
class Prepare:
    """A candidate asks the members to fence `epoch` for it; `last` is the candidate's last record."""

    sender: str
    to: str
    epoch: int
    last: Position


@dataclass(frozen=True, slots=True)
class Promise:
    """The answer to Prepare: `granted` when the sender now rejects older epochs for this candidate
    and the candidate's log is at least as advanced as its own `last`."""

    sender: str
    to: str
    epoch: int
    granted: bool
    last: Position


Message = Subscribe | Append | AppendAck | InstallSnapshot | Prepare | Promise
