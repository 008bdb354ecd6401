"""PrimaryRole: what a node does while primary of its epoch (progress per replica, shipping, commit).

Per replica it keeps the verified match point and the next LSN to send (etcd raft's Progress).
A Subscribe resets them from the replica's epoch history: the divergence point is where the
stream resumes, unless the replica applied records the primary never had (degraded commits of an
older epoch) or needs records the WAL no longer holds, when it is sent a snapshot instead.
Heartbeats are empty Appends after the replica's match point (they always match) carrying the
commit LSN, or after next_lsn - 1 until the replica was heard from in this epoch (a replica that
does not hold it re-subscribes). An Append or ack lost on the way shows as a stall, after which an
empty Append after next_lsn - 1 asks the replica whether it holds it (if not, it re-subscribes).
A Subscribe of an older epoch only earns such a probe: an older primary may have rewritten the
replica's tail since it was sent, and match_lsn never goes back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from knowledge.errors import ResourceExhausted, invariant
from knowledge.replication.lsn import EpochHistory, Position
from knowledge.replication.messages import Append, AppendAck, Entry, InstallSnapshot, Subscribe
from knowledge.replication.ready import COMMITTED, OUTCOME_UNKNOWN, CommitOutcome

if TYPE_CHECKING:
    from knowledge.replication.node import ReplicationNode

_NEVER = -(1 << 62)


@dataclass
class Progress:
    """The primary's view of one replica."""

    match_lsn: int = 0  # durable there and equal to ours
    next_lsn: int = 1  # the next LSN to send
    applied_lsn: int = 0
    snapshot: Position | None = None  # an offered snapshot not yet acknowledged
    snapshot_tick: int = _NEVER
    last_sent_tick: int = _NEVER
    progress_tick: int = 0  # when match_lsn last grew (or the stream was reset)
    commit_sent: int = 0
    probe: bool = False  # ask whether the replica holds next_lsn - 1 (after a stall)
    heard: bool = False  # an ack or Subscribe came in this epoch (until then heartbeats probe)
    incarnation: int = -1  # of the latest Subscribe handled, with its sequence
    sequence: int = 0
    cut_by_retention: bool = False  # the retention limit dropped records it still needs (told once)


class PrimaryRole:
    """Primary duties for `node` in its current epoch; dropped (abandon) when the node steps down."""

    def __init__(self, node: ReplicationNode) -> None:
        self.node = node
        self.policy = node.config.policy
        self.barrier_lsn = node.history.last_lsn + 1
        node.stage(Entry(self.barrier_lsn, node.epoch, b""))
        self.progress = {r: Progress(next_lsn=self.barrier_lsn, progress_tick=node.now)
                         for r in node.config.replicas}
        self.pending: deque[tuple[int, int]] = deque()  # (lsn, deadline tick), in LSN order
        self.degraded = False
        self.degraded_at_lsn = 0  # the primary's durable LSN when it last fell back to async
        self.policy_commit_lsn = node.commit_lsn
        self.dirty: set[str] = set(self.progress)
        self.resend_ticks = 3 * node.config.heartbeat_ticks

    # -- commits ------------------------------------------------------------------------------
    def propose(self, payload: bytes, timestamp_ns: int) -> Position:
        node = self.node
        if len(self.pending) >= node.config.pending_commits_max:
            raise ResourceExhausted(f"{len(self.pending)} commits already wait for policy {self.policy}")
        entry = Entry(node.history.last_lsn + 1, node.epoch, payload, timestamp_ns)
        node.stage(entry)
        self.pending.append((entry.lsn, node.now + node.config.deadline_ticks))
        self.dirty.update(self.progress)
        return entry.position

    def on_durable(self) -> None:
        """The node's own log became durable up to node.durable_lsn."""
        self._advance_commit()

    def _advance_commit(self) -> None:
        node = self.node
        matches = {r: p.match_lsn for r, p in self.progress.items()}
        matches[node.id] = node.durable_lsn
        for value in sorted(set(matches.values()), reverse=True):
            if value <= self.policy_commit_lsn:
                break
            holders = [member for member, lsn in matches.items() if lsn >= value]
            if self.policy.satisfied(holders, node.id, node.config.zones):
                if node.history.epoch_at(value) == node.epoch:  # never commit by counting old epochs
                    self.policy_commit_lsn = value
                break
        target = self.policy_commit_lsn
        if self.degraded and node.history.epoch_at(node.durable_lsn) == node.epoch:
            target = max(target, node.durable_lsn)
        if target > node.commit_lsn:
            node.commit_lsn = target
            self.dirty.update(self.progress)
        while self.pending and self.pending[0][0] <= node.commit_lsn:
            lsn, _ = self.pending.popleft()
            degraded = lsn > self.policy_commit_lsn
            node.stats["commits_degraded" if degraded else "commits"] += 1
            node.deliver(CommitOutcome(Position(node.epoch, lsn), COMMITTED, degraded,
                                       f"{self.policy} not met: committed async" if degraded else ""))

    def tick(self) -> None:
        node = self.node
        while self.pending and self.pending[0][1] <= node.now:
            lsn = self.pending[0][0]
            if self.policy.degrade:
                if not self.degraded:
                    self.degraded = True
                    self.degraded_at_lsn = node.durable_lsn
                    node.stats["degrade_events"] += 1
                    node.emit("degraded", f"LSN {lsn} missed {self.policy}; committing async "
                                          f"(replicas at {self._matches_text()})")
                break
            self.pending.popleft()
            node.stats["outcome_unknown"] += 1
            node.deliver(CommitOutcome(Position(node.epoch, lsn), OUTCOME_UNKNOWN, False,
                                       f"{self.policy} not met within {self.policy.deadline_ms} ms"))
        if self.degraded:
            self._advance_commit()
            caught_up = self.policy_commit_lsn >= self.degraded_at_lsn  # not merely the degrade moment
            if caught_up and self.policy_commit_lsn + node.config.recover_lag_records >= node.commit_lsn:
                self.degraded = False
                node.emit("recovered", f"{self.policy} holds again at LSN {self.policy_commit_lsn}")
        for replica, progress in self.progress.items():
            if progress.next_lsn - 1 > progress.match_lsn and node.now - progress.progress_tick >= self.resend_ticks:
                progress.probe = True  # an Append or its ack was lost: ask (a Subscribe resyncs)
                progress.progress_tick = node.now
                self.dirty.add(replica)
            if (node.now - progress.last_sent_tick >= node.config.heartbeat_ticks
                    or progress.commit_sent < node.commit_lsn):  # a commit notice held back (_send_to)
                self.dirty.add(replica)

    def abandon(self, reason: str) -> None:
        """The node stops being primary: every pending commit's outcome is unknown."""
        node = self.node
        while self.pending:
            lsn, _ = self.pending.popleft()
            node.stats["outcome_unknown"] += 1
            node.deliver(CommitOutcome(Position(node.epoch, lsn), OUTCOME_UNKNOWN, False,
                                       f"primary {node.id} stepped down: {reason}"))

    # -- replicas -----------------------------------------------------------------------------
    def on_subscribe(self, message: Subscribe) -> None:
        node = self.node
        progress = self.progress.get(message.sender)
        if progress is None:
            return
        if message.epoch < node.epoch:
            # sent before the replica learned of this epoch: an older primary may have rewritten its
            # tail since, so it proves nothing about the log now (trusted, it set match_lsn past the
            # replica's log for good: resume-from-match, probe, Subscribe, forever). Ask instead;
            # the reply carries this epoch and a replica that does not hold its prev re-subscribes.
            progress.probe = True
            self.dirty.add(message.sender)
            return
        if message.incarnation == progress.incarnation and message.sequence <= progress.sequence:
            progress.probe = True  # a delayed duplicate: ask where it stands instead
            self.dirty.add(message.sender)
            return
        restarted = message.incarnation != progress.incarnation
        progress.incarnation, progress.sequence = message.incarnation, message.sequence
        theirs = EpochHistory(message.epochs, message.last_lsn)
        resume = node.history.divergence(theirs)
        if restarted:
            progress.match_lsn = min(progress.match_lsn, resume)  # a new process: trust its report
        else:
            resume = max(resume, progress.match_lsn)  # it acknowledged more since it sent this
        progress.applied_lsn = message.applied_lsn
        progress.heard = True
        if resume < message.applied_lsn:
            self._offer_snapshot(message.sender, progress, f"applied {message.applied_lsn} past the "
                                                           f"common history ({resume})")
        elif resume + 1 < node.first_lsn:
            self._offer_snapshot(message.sender, progress, f"needs LSN {resume + 1}, the WAL starts at "
                                                           f"{node.first_lsn}")
        else:
            progress.snapshot = None
            progress.match_lsn = max(progress.match_lsn, resume)
            progress.next_lsn = resume + 1
            progress.progress_tick = node.now
            progress.last_sent_tick = _NEVER
            self._advance_commit()
        self.dirty.add(message.sender)

    def on_ack(self, message: AppendAck) -> None:
        node = self.node
        progress = self.progress.get(message.sender)
        if progress is None or message.epoch != node.epoch:
            return
        invariant(message.match_lsn <= node.history.last_lsn, f"{message.sender} acked LSN "
                                                              f"{message.match_lsn} past our log")
        progress.heard = True
        if progress.snapshot is not None and message.match_lsn == progress.snapshot.lsn:
            progress.match_lsn = message.match_lsn  # installed: its log is now exactly ours up to there
        if message.match_lsn > progress.match_lsn:
            progress.match_lsn = message.match_lsn
            progress.progress_tick = node.now
        progress.next_lsn = max(progress.next_lsn, progress.match_lsn + 1)
        progress.applied_lsn = max(progress.applied_lsn, message.applied_lsn)
        if progress.snapshot is not None and progress.match_lsn >= progress.snapshot.lsn:
            progress.snapshot = None
            progress.cut_by_retention = False
        self._advance_commit()
        self.dirty.add(message.sender)

    def retain_needed(self) -> int:
        """The oldest LSN some replica still needs from the WAL."""
        # a replica being sent a snapshot needs the tail after it, or it would need another one
        needed = [p.snapshot.lsn + 1 if p.snapshot is not None else p.match_lsn + 1
                  for p in self.progress.values()]
        return min(needed, default=self.node.history.last_lsn + 1)

    def note_retention(self, floor_lsn: int) -> None:
        """The WAL keeps nothing below `floor_lsn` from now on: tell (once) of every replica cut off."""
        node = self.node
        for replica, progress in sorted(self.progress.items()):
            needed = progress.snapshot.lsn + 1 if progress.snapshot is not None else progress.match_lsn + 1
            if needed < floor_lsn and not progress.cut_by_retention:
                progress.cut_by_retention = True
                node.stats["retention_limits"] += 1
                node.emit("retention_limit", f"{replica} needs LSN {needed} but the WAL retention limit keeps "
                                             f"LSNs from {floor_lsn}: it will be sent a snapshot")
                self.dirty.add(replica)

    def flush(self) -> None:
        """Build the messages for every replica that has something due (called by ready())."""
        for replica in sorted(self.dirty):
            self._send_to(replica, self.progress[replica])
        self.dirty.clear()

    def _send_to(self, replica: str, progress: Progress) -> None:
        node, config = self.node, self.node.config
        if progress.snapshot is not None:
            if node.now - progress.snapshot_tick >= config.snapshot_resend_ticks:
                self._offer_snapshot(replica, progress, "re-offer")
            return
        if progress.next_lsn < node.first_lsn:
            self._offer_snapshot(replica, progress, f"needs LSN {progress.next_lsn} past the retained WAL "
                                                    f"(from {node.first_lsn})")
            return
        if progress.probe:
            previous = progress.next_lsn - 1
            node.send(Append(node.id, replica, node.epoch, Position(node.history.epoch_at(previous), previous),
                             (), node.commit_lsn))
            progress.probe = False
            progress.last_sent_tick = node.now
            return
        sent = False
        for _ in range(config.inflight_records_max // config.batch_records_max + 1):
            window_end = min(node.history.last_lsn, progress.match_lsn + config.inflight_records_max)
            if progress.next_lsn > window_end:
                break
            entries = node.read_entries(progress.next_lsn, window_end)
            invariant(bool(entries) and entries[0].lsn == progress.next_lsn, "read of the WAL came back short")
            previous = progress.next_lsn - 1
            node.send(Append(node.id, replica, node.epoch, Position(node.history.epoch_at(previous), previous),
                             tuple(entries), node.commit_lsn))
            progress.next_lsn = entries[-1].lsn + 1
            sent = True
        due = node.now - progress.last_sent_tick >= config.heartbeat_ticks
        # a new commit LSN alone earns an empty Append once per tick at most: under load the next Append
        # carries it, and each notice would cost a frame and an ack each way per commit
        notice = progress.commit_sent < node.commit_lsn and progress.last_sent_tick < node.now
        if not sent and (due or notice):
            after = progress.match_lsn if progress.heard else progress.next_lsn - 1
            node.send(Append(node.id, replica, node.epoch, Position(node.history.epoch_at(after), after),
                             (), node.commit_lsn))
            sent = True
        if sent:
            progress.last_sent_tick = node.now
            progress.commit_sent = node.commit_lsn

    def _offer_snapshot(self, replica: str, progress: Progress, reason: str) -> None:
        node = self.node
        if progress.snapshot is not None and progress.snapshot.lsn + 1 >= node.first_lsn:
            position = progress.snapshot  # a re-offer names the same snapshot (a transfer may be under way)
        else:
            at = node.applied_lsn
            position = Position(node.history.epoch_at(at), at)
        if progress.snapshot is None:
            node.emit("snapshot_needed", f"{replica}: {reason}; snapshot at {position}")
        progress.snapshot = position
        progress.snapshot_tick = node.now
        progress.last_sent_tick = node.now
        node.stats["snapshots_sent"] += 1
        node.send(InstallSnapshot(node.id, replica, node.epoch, position, node.history.prefix(position.lsn),
                                  node.commit_lsn))

    def _matches_text(self) -> str:
        return ", ".join(f"{r}={p.match_lsn}" for r, p in sorted(self.progress.items()))
