"""ReplicationNode: the replication protocol as a pure state machine (no sockets, clocks or threads).

Inputs: `step(message)`, `tick()`, `propose(payload)`, `campaign(epoch)`, `step_down(reason)`,
`follow(primary)`. Output: `ready()` returns a Ready (what to persist, send, apply, deliver); the
driver carries it out in the order ready.py gives and calls `advance(ready)`. No input may arrive
between `ready()` and `advance()`. Durable records are read back through a `LogReader`.

Safety rests on epochs, not on whoever holds the etcd key: epochs are unique per candidate, every
message carries one, a node adopts any higher epoch it sees (a primary or candidate then steps
down), a member fences an epoch in its Promise before the candidate may win, and the winner must
have heard an election quorum (policy.py) whose members' logs are no more advanced than its own.
A primary counts a record as committed only once its policy holds and the record is of its own
epoch (the epoch's first record, an empty barrier, commits the inherited tail).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from knowledge.errors import InvalidArgument, NotPrimary, invariant
from knowledge.replication.config import NodeConfig
from knowledge.replication.lsn import EpochHistory, Position
from knowledge.replication.messages import (
    Append,
    AppendAck,
    Entry,
    InstallSnapshot,
    Message,
    Prepare,
    Promise,
    Subscribe,
)
from knowledge.replication.primary import PrimaryRole
from knowledge.replication.ready import CommitOutcome, DurableState, Event, HardState, Ready
from knowledge.replication.storage import LogReader


class Role(enum.Enum):
    REPLICA = "replica"
    CANDIDATE = "candidate"
    PRIMARY = "primary"


@dataclass
class _Campaign:
    started_tick: int
    granted: dict[str, Position] = field(default_factory=dict)
    denied: dict[str, Position] = field(default_factory=dict)
    last_prepare_tick: int = 0


class ReplicationNode:
    """One member of a replicated store: replica, candidate or primary of its current epoch."""

    def __init__(self, config: NodeConfig, storage: LogReader, restored: DurableState,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.id = config.node_id
        self.storage = storage
        # the only randomness: this process's incarnation (pass a seeded Random to be deterministic)
        self.rng = rng if rng is not None else random.Random()
        self.epoch = restored.hard_state.epoch
        self.promised_to = restored.hard_state.promised_to
        self.history = EpochHistory(restored.epochs, restored.last_lsn)
        self.durable_lsn = restored.last_lsn
        self.applied_lsn = restored.applied_lsn
        self.commit_lsn = restored.applied_lsn
        self.first_lsn = restored.first_lsn
        invariant(self.applied_lsn <= self.durable_lsn, "applied past the durable log")
        self.role = Role.REPLICA
        self.primary_id: str | None = None
        self.synced_lsn = 0  # verified equal to the current primary's log, in this epoch
        self.now = 0
        self._ticks_since_primary = 0
        self._primary: PrimaryRole | None = None
        self._campaign: _Campaign | None = None
        self._hard_dirty = False
        self._snapshot: InstallSnapshot | None = None
        self._installing = False  # a snapshot was accepted; reads wait until its Ready is carried out
        self._truncate: int | None = None
        self._staged: list[Entry] = []
        self._outbox: list[Message] = []
        self._outcomes: list[CommitOutcome] = []
        self._events: list[Event] = []
        self._outstanding: Ready | None = None
        self.incarnation = self.rng.getrandbits(48)  # tells this process's Subscribes from older ones
        self._subscribe_sequence = 0
        self.retention_floor = 0  # the driver's limit (limit_retention): the WAL keeps no LSN below it
        self.stats: dict[str, int] = {"commits": 0, "commits_degraded": 0, "outcome_unknown": 0,
                                      "degrade_events": 0, "snapshots_sent": 0, "snapshots_installed": 0,
                                      "elections_won": 0, "step_downs": 0, "retention_limits": 0}

    # -- inputs -------------------------------------------------------------------------------
    def step(self, message: Message) -> None:
        """Handle one message addressed to this node (a duplicate or a stale one is harmless)."""
        self._check_idle()
        invariant(message.to == self.id, f"message for {message.to} delivered to {self.id}")
        if message.sender not in self.config.zones or message.sender == self.id:
            return  # not a member: the transport should not have let it through
        if message.epoch > self.epoch:
            self._adopt_epoch(message.epoch, f"saw epoch {message.epoch} from {message.sender}")
        getattr(self, _HANDLERS[type(message)])(message)

    def tick(self) -> None:
        """Advance time by one tick: heartbeats, resends, deadlines, timeouts."""
        self._check_idle()
        self.now += 1
        if self.role is Role.PRIMARY:
            self.primary.tick()
        elif self.role is Role.CANDIDATE:
            self._tick_candidate()
        else:
            self._tick_replica()

    def propose(self, payload: bytes, timestamp_ns: int = 0) -> Position:
        """Append a record as primary; its outcome comes in a later Ready. Returns its LSN token.

        Raises NotPrimary (naming the primary when known) on any other role, InvalidArgument for an
        empty payload (reserved for barriers), ResourceExhausted past pending_commits_max.
        """
        self._check_idle()
        if self.role is not Role.PRIMARY:
            raise NotPrimary(f"node {self.id} is a {self.role.value} in epoch {self.epoch}",
                             primary=self.primary_id)
        if not isinstance(payload, bytes | bytearray) or not payload:
            raise InvalidArgument("a replicated record needs a non-empty bytes payload")
        return self.primary.propose(bytes(payload), timestamp_ns)

    def campaign(self, epoch: int) -> bool:
        """Try to become primary of `epoch` (unique, from the consensus store); False if it is not
        newer than this node's epoch. The outcome shows in `role` after the Promises arrive."""
        self._check_idle()
        if epoch <= self.epoch:
            return False
        self._adopt_epoch(epoch, "campaign")
        self.promised_to = self.id
        self.role = Role.CANDIDATE
        self._campaign = _Campaign(started_tick=self.now, last_prepare_tick=self.now)
        self._send_prepares()
        self._maybe_win()
        return True

    def step_down(self, reason: str) -> None:
        """Stop accepting writes (lease lost, operator); pending commits end as outcome unknown."""
        self._check_idle()
        self._leave_role(reason)

    def follow(self, primary: str) -> None:
        """Point a replica at `primary` (from the leader key or the command line) and subscribe."""
        self._check_idle()
        if self.role is Role.REPLICA and primary != self.id and primary in self.config.zones:
            if primary != self.primary_id:
                self.primary_id = primary
                self._send_subscribe()

    def limit_retention(self, floor_lsn: int) -> None:
        """The WAL may keep records only from `floor_lsn` on (the driver's byte limit): a replica that
        still needs older ones gets a `retention_limit` event now and a snapshot when next sent to."""
        self._check_idle()
        if floor_lsn <= self.retention_floor:
            return
        self.retention_floor = floor_lsn
        if self._primary is not None:
            self._primary.note_retention(floor_lsn)

    def forget_snapshot(self, replica: str) -> None:
        """The driver could not produce the snapshot offered to `replica`: the next offer takes a new one."""
        self._check_idle()
        if self._primary is not None and replica in self._primary.progress:
            self._primary.progress[replica].snapshot = None
            self._primary.dirty.add(replica)

    def can_read(self, min_lsn: int | Position) -> bool:
        """Whether a read that must see `min_lsn` may be served here now.

        With a commit's token (a Position) it must be applied here and be the very record the
        token names; with a bare LSN, applied that far. The two differ only after a degraded or
        async commit was lost in a failover, where a bare LSN can name a record that is gone.
        """
        applied = self.applied_lsn  # read before the flag (see _on_snapshot): a driver reads from other threads
        if self._installing:
            return False  # the store is replaced only when the Ready is carried out
        if isinstance(min_lsn, Position):
            return applied >= min_lsn.lsn and self.history.matches(min_lsn)
        return applied >= min_lsn

    # -- output -------------------------------------------------------------------------------
    def has_ready(self) -> bool:
        """Whether ready() would return work."""
        if self._primary is not None and self._primary.dirty:
            return True
        return bool(self._hard_dirty or self._snapshot or self._truncate is not None or self._staged
                    or self._outbox or self._outcomes or self._events
                    or self._apply_through() > self.applied_lsn or self._retain_from() > self.first_lsn)

    def ready(self) -> Ready:
        """Collect the pending work; hand it back with advance() before any other input."""
        self._check_idle()
        if self._primary is not None:
            self._primary.flush()
        messages, early = self._outbox, 0
        if self.role is Role.PRIMARY and not (self._hard_dirty or self._snapshot or self._truncate is not None):
            # a primary's Appends may leave before its own fsync (they are counted for commit only from
            # advance() on, when durable_lsn covers them): first, in their order; the rest after the fsync
            appends = [message for message in messages if isinstance(message, Append)]
            messages, early = appends + [m for m in messages if not isinstance(m, Append)], len(appends)
        ready = Ready(
            hard_state=HardState(self.epoch, self.promised_to) if self._hard_dirty else None,
            snapshot=self._snapshot, truncate_after_lsn=self._truncate, entries=tuple(self._staged),
            messages=tuple(messages), apply_through_lsn=self._apply_through(),
            retain_from_lsn=self._retain_from(), outcomes=tuple(self._outcomes), events=tuple(self._events),
            early_messages=early)
        self._hard_dirty, self._snapshot, self._truncate = False, None, None
        self._staged, self._outbox, self._outcomes, self._events = [], [], [], []
        self._outstanding = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """Acknowledge that `ready` was carried out: its records are durable and applied."""
        invariant(ready is self._outstanding, "advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        self._installing = False
        self.durable_lsn = self.history.last_lsn
        invariant(ready.apply_through_lsn >= self.applied_lsn, "applied LSN went back")
        self.applied_lsn = ready.apply_through_lsn
        self.first_lsn = max(self.first_lsn, ready.retain_from_lsn)
        if self._primary is not None:
            self._primary.on_durable()

    @property
    def primary(self) -> PrimaryRole:
        invariant(self._primary is not None, f"node {self.id} is not primary")
        return self._primary  # type: ignore[return-value]

    @property
    def last(self) -> Position:
        """This node's last record (persisted once the current Ready is)."""
        return self.history.last

    # -- shared helpers (also used by PrimaryRole) ---------------------------------------------
    def send(self, message: Message) -> None:
        self._outbox.append(message)

    def emit(self, kind: str, detail: str) -> None:
        self._events.append(Event(kind, self.epoch, detail))

    def deliver(self, outcome: CommitOutcome) -> None:
        self._outcomes.append(outcome)

    def stage(self, entry: Entry) -> None:
        """Queue `entry` for the next Ready's append (the next LSN of the log)."""
        self.history.append(entry.lsn, entry.epoch)
        self._staged.append(entry)

    def read_entries(self, first_lsn: int, last_lsn: int) -> list[Entry]:
        """Records first_lsn..last_lsn (within the caps), from storage or from the staged tail."""
        out: list[Entry] = []
        bytes_total = 0
        last_lsn = min(last_lsn, first_lsn + self.config.batch_records_max - 1)
        if first_lsn <= self.durable_lsn:
            invariant(first_lsn >= self.first_lsn, f"LSN {first_lsn} is below the retained WAL")
            out = list(self.storage.entries(first_lsn, min(last_lsn, self.durable_lsn),
                                            self.config.batch_bytes_max))
            bytes_total = sum(len(entry.payload) for entry in out)
            if out and out[-1].lsn < min(last_lsn, self.durable_lsn):
                return out  # the byte cap stopped the read
        for entry in self._staged:
            if entry.lsn < first_lsn + len(out) or entry.lsn > last_lsn:
                continue
            if out and bytes_total + len(entry.payload) > self.config.batch_bytes_max:
                break
            out.append(entry)
            bytes_total += len(entry.payload)
        return out

    # -- handlers ---------------------------------------------------------------------------------
    def _on_subscribe(self, message: Subscribe) -> None:
        if self._primary is not None:
            self._primary.on_subscribe(message)

    def _on_append_ack(self, message: AppendAck) -> None:
        if self._primary is not None:
            self._primary.on_ack(message)

    def _on_append(self, message: Append) -> None:
        if message.epoch < self.epoch:
            self.send(AppendAck(self.id, message.sender, self.epoch, 0, self.applied_lsn))
            return
        invariant(self.role is Role.REPLICA, f"two nodes act for epoch {self.epoch}: {self.id} "
                                             f"({self.role.value}) and {message.sender}")
        self.primary_id = message.sender
        self._ticks_since_primary = 0
        if not self.history.matches(message.prev):
            self._send_subscribe()
            return
        last_new = message.prev.lsn
        for entry in message.entries:
            invariant(entry.lsn == last_new + 1 and entry.epoch <= message.epoch, "malformed Append")
            if entry.lsn <= self.history.last_lsn:
                if self.history.epoch_at(entry.lsn) == entry.epoch:
                    last_new = entry.lsn
                    continue
                if entry.lsn - 1 < self.applied_lsn:
                    self._send_subscribe()  # applied records diverge: the primary sends a snapshot
                    return
                self._truncate_after(entry.lsn - 1)
            self.stage(entry)
            last_new = entry.lsn
        self.synced_lsn = max(self.synced_lsn, last_new)
        self.commit_lsn = max(self.commit_lsn, min(message.commit_lsn, last_new))
        self.send(AppendAck(self.id, message.sender, self.epoch, last_new, self.applied_lsn))

    def _on_snapshot(self, message: InstallSnapshot) -> None:
        if message.epoch < self.epoch:
            self.send(AppendAck(self.id, message.sender, self.epoch, 0, self.applied_lsn))
            return
        invariant(self.role is Role.REPLICA, f"{self.id} got a snapshot while {self.role.value}")
        self.primary_id = message.sender
        self._ticks_since_primary = 0
        position = message.position
        if self.history.matches(position) and (position.lsn >= self.applied_lsn
                                               or self.applied_lsn <= self.synced_lsn):
            self._send_subscribe()  # a stale or needless offer: resume from what we hold
            return
        self._installing = True  # first: a concurrent can_read sees it before the new applied LSN
        self._snapshot = message
        self._staged, self._truncate = [], None
        self.history = EpochHistory(message.epochs, position.lsn)
        self.durable_lsn = self.applied_lsn = self.commit_lsn = self.synced_lsn = position.lsn
        self.first_lsn = position.lsn + 1
        self.stats["snapshots_installed"] += 1
        self.send(AppendAck(self.id, message.sender, self.epoch, position.lsn, position.lsn))

    def _truncate_after(self, lsn: int) -> None:
        invariant(lsn >= self.applied_lsn, f"truncation to {lsn} below applied {self.applied_lsn}")
        invariant(self.role is not Role.PRIMARY, "a primary never truncates its own epoch")
        self.history.truncate_after(lsn)
        self._staged = [entry for entry in self._staged if entry.lsn <= lsn]
        if lsn < self.durable_lsn:
            self._truncate = lsn if self._truncate is None else min(self._truncate, lsn)
            self.durable_lsn = lsn
        self.commit_lsn = min(self.commit_lsn, lsn)  # only degraded (async) commits can be cut
        self.synced_lsn = min(self.synced_lsn, lsn)

    def _send_subscribe(self) -> None:
        if self.primary_id is None or self.primary_id == self.id:
            return
        self._subscribe_sequence += 1
        self.send(Subscribe(self.id, self.primary_id, self.epoch, self.config.zones[self.id],
                            self.history.last_lsn, self.history.starts, self.applied_lsn,
                            self.incarnation, self._subscribe_sequence))

    def _tick_replica(self) -> None:
        self._ticks_since_primary += 1
        if self._ticks_since_primary >= self.config.primary_timeout_ticks:
            self._ticks_since_primary = 0
            self._send_subscribe()

    # -- elections ----------------------------------------------------------------------------
    def _on_prepare(self, message: Prepare) -> None:
        granted = False
        if message.epoch == self.epoch:
            if self.promised_to is None and message.last >= self.history.last:
                self.promised_to = message.sender
                self._hard_dirty = True
            granted = self.promised_to == message.sender
        self.send(Promise(self.id, message.sender, self.epoch, granted, self.history.last))

    def _on_promise(self, message: Promise) -> None:
        if self.role is not Role.CANDIDATE or message.epoch != self.epoch or self._campaign is None:
            return
        if message.granted:
            self._campaign.granted[message.sender] = message.last
        else:
            self._campaign.denied[message.sender] = message.last
        self._maybe_win()

    def _send_prepares(self) -> None:
        invariant(self._campaign is not None, "prepares outside a campaign")
        for node in self.config.replicas:
            if node not in self._campaign.granted:  # type: ignore[union-attr]
                self.send(Prepare(self.id, node, self.epoch, self.history.last))

    def _maybe_win(self) -> None:
        campaign = self._campaign
        invariant(campaign is not None, "no campaign")
        heard = {self.id, *campaign.granted}  # type: ignore[union-attr]
        if not self.config.policy.election_quorum(heard, self.config.zones):
            return
        self._campaign = None
        self.role = Role.PRIMARY
        self.primary_id = self.id
        self.stats["elections_won"] += 1
        self._primary = PrimaryRole(self)
        self.emit("became_primary", f"{self.id} at {self.history.last} heard {sorted(heard)}")

    def _tick_candidate(self) -> None:
        campaign = self._campaign
        invariant(campaign is not None, "candidate without a campaign")
        if self.now - campaign.started_tick >= self.config.campaign_ticks:  # type: ignore[union-attr]
            ahead = sorted(node for node, last in campaign.denied.items()  # type: ignore[union-attr]
                           if last > self.history.last)
            self._leave_role(f"no election quorum in {self.config.campaign_ticks} ticks"
                             + (f"; more advanced: {ahead}" if ahead else ""), kind="campaign_failed")
        elif self.now - campaign.last_prepare_tick >= self.config.heartbeat_ticks:  # type: ignore[union-attr]
            campaign.last_prepare_tick = self.now  # type: ignore[union-attr]
            self._send_prepares()

    # -- role changes -------------------------------------------------------------------------
    def _adopt_epoch(self, epoch: int, reason: str) -> None:
        invariant(epoch > self.epoch, "epochs only grow")
        self._leave_role(reason)
        self.epoch = epoch
        self.promised_to = None
        self.primary_id = None
        self.synced_lsn = 0
        self._hard_dirty = True

    def _leave_role(self, reason: str, kind: str = "stepped_down") -> None:
        if self.role is Role.REPLICA:
            return
        if self._primary is not None:
            self._primary.abandon(reason)
            self._primary = None
        self._campaign = None
        self.role = Role.REPLICA
        self.primary_id = None
        self._ticks_since_primary = 0
        self.stats["step_downs"] += 1
        self.emit(kind, reason)

    def _apply_through(self) -> int:
        return max(self.applied_lsn, min(self.commit_lsn, self.history.last_lsn))

    def _retain_from(self) -> int:
        floor = self.history.last_lsn + 1 - self.config.retention_records_max
        needed = self._primary.retain_needed() if self._primary is not None else floor
        return max(self.first_lsn, min(self._apply_through() + 1, max(floor, self.retention_floor, needed)))

    def _check_idle(self) -> None:
        invariant(self._outstanding is None, "input between ready() and advance()")


_HANDLERS = {  # one handler per message type, looked up by name so a subclass may override one
    Append: "_on_append",
    InstallSnapshot: "_on_snapshot",
    Prepare: "_on_prepare",
    Promise: "_on_promise",
    Subscribe: "_on_subscribe",
    AppendAck: "_on_append_ack",
}
