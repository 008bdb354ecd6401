"""What the state machine hands its driver: a Ready batch, commit outcomes, events, persisted state.

A driver handles one Ready at a time, in this order, then calls `advance(ready)`:
    1. persist `hard_state` (epoch, promise) and fsync
    2. install `snapshot` (replace the store with the backup), then drop log records after
       `truncate_after_lsn`, then write `entries`; the first `early_messages` of `messages` may be
       sent now, before the fsync (a primary's Appends); then fsync: every other message may
       depend on them
    3. send the rest of `messages` (all of them when the early ones were not sent in step 2)
    4. apply durable records up to `apply_through_lsn` (skip empty payloads: epoch barriers)
    5. deliver `outcomes` to the waiting committers; log or count `events`
    6. WAL records below `retain_from_lsn` are no longer needed by replication
"""

from __future__ import annotations

from dataclasses import dataclass

from knowledge.errors import CommitOutcomeUnknown
from knowledge.replication.lsn import EpochStart, Position
from knowledge.replication.messages import Entry, InstallSnapshot, Message

COMMITTED = "committed"
OUTCOME_UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class HardState:
    """What a node must not forget across a crash: its epoch and whom it fenced that epoch for."""

    epoch: int
    promised_to: str | None


@dataclass(frozen=True, slots=True)
class DurableState:
    """A node's persisted state on (re)start: hard state, its log's epochs up to `last_lsn`, what it
    applied, and the oldest LSN its WAL still holds (`first_lsn`; last_lsn + 1 when it holds none)."""

    hard_state: HardState
    epochs: tuple[EpochStart, ...]
    last_lsn: int
    applied_lsn: int
    first_lsn: int

    @classmethod
    def empty(cls) -> DurableState:
        return cls(HardState(0, None), (), 0, 0, 1)


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """The fate of one proposed record: `committed` (with `degraded` when the policy was not met and
    the primary fell back to async) or `unknown` (deadline missed or the primary stepped down)."""

    token: Position
    status: str
    degraded: bool = False
    reason: str = ""

    def result(self) -> Position:
        """The commit's LSN token; raises CommitOutcomeUnknown when the outcome is unknown."""
        if self.status == COMMITTED:
            return self.token
        raise CommitOutcomeUnknown(f"commit {self.token} outcome unknown: {self.reason}",
                                   lsn=self.token.lsn, epoch=self.token.epoch, policy=self.reason)


@dataclass(frozen=True, slots=True)
class Event:
    """A notable change for logs and metrics: kind is one of became_primary, stepped_down,
    campaign_failed, degraded, recovered, snapshot_needed."""

    kind: str
    epoch: int
    detail: str


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver (see the module docstring for the order)."""

    hard_state: HardState | None
    snapshot: InstallSnapshot | None
    truncate_after_lsn: int | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    apply_through_lsn: int
    retain_from_lsn: int
    outcomes: tuple[CommitOutcome, ...]
    events: tuple[Event, ...]
    # the first early_messages of `messages` (a primary's Appends) need not wait for the fsync of
    # `entries`: they go out while it runs, so the replicas' fsyncs overlap the primary's. Safe because a
    # primary counts itself durable only from advance() on (Raft thesis 10.2.1); a driver may ignore it
    early_messages: int = 0
