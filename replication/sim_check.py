"""The simulator's safety invariants, checked after every step of a run.

- no acknowledged write lost: every live primary's log holds, unchanged and with the same history
  before it, every write acknowledged under its policy in its epoch or earlier;
- in any epoch at most one node ever accepts writes;
- every replica's log is a prefix of the current primary's history (the primary of the newest
  epoch that had one, while it still is): the part it verified against that primary, and the part it applied (unless that holds a degraded/async commit,
  which the policy allowed to be lost);
- a read with min_lsn never sees less: a read served at a node that applied min_lsn sees the
  acknowledged write there with the same history before it.
Logs are compared by prefix hashes (MemoryLog.prefix_hash), so each check is O(1) per node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from knowledge.replication.lsn import Position
from knowledge.replication.node import ReplicationNode, Role
from knowledge.replication.storage import MemoryLog


class SafetyViolation(Exception):
    """An invariant failed; `invariant` names it."""

    def __init__(self, invariant: str, detail: str) -> None:
        self.invariant = invariant
        self.detail = detail
        super().__init__(f"{invariant}: {detail}")


@dataclass(frozen=True, slots=True)
class AckedWrite:
    """A write acknowledged under its policy: its token and the acking primary's prefix hash at it."""

    token: Position
    prefix_hash: int


@dataclass
class Checker:
    """Everything the invariants remember across steps."""

    acked: list[AckedWrite] = field(default_factory=list)
    unsafe_epochs: set[int] = field(default_factory=set)  # epochs that committed degraded: may be lost
    all_unsafe: bool = False  # the policy is async: any commit may be lost
    writers: dict[int, set[str]] = field(default_factory=dict)  # epoch -> nodes that were primary
    checks: int = 0

    def record_ack(self, token: Position, primary_log: MemoryLog) -> AckedWrite:
        write = AckedWrite(token, primary_log.prefix_hash(token.lsn))
        self.acked.append(write)
        return write

    def note_roles(self, nodes: dict[str, ReplicationNode | None]) -> None:
        """At most one node accepts writes in any epoch (called after every state change)."""
        for node_id, node in nodes.items():
            if node is not None and node.role is Role.PRIMARY:
                writers = self.writers.setdefault(node.epoch, set())
                writers.add(node_id)
                if len(writers) > 1:
                    raise SafetyViolation("one writer per epoch",
                                          f"epoch {node.epoch} had primaries {sorted(writers)}")

    def check(self, nodes: dict[str, ReplicationNode | None], logs: dict[str, MemoryLog]) -> None:
        """All per-step invariants over the live nodes and every node's durable log."""
        self.checks += 1
        self.note_roles(nodes)
        primaries = [(node.epoch, node_id) for node_id, node in nodes.items()
                     if node is not None and node.role is Role.PRIMARY]
        for epoch, node_id in primaries:
            self._check_no_loss(node_id, epoch, logs[node_id])
        if not primaries:
            return
        epoch, current = max(primaries)
        if epoch != max(self.writers):
            return  # the newest epoch's primary is down or stepped down: no current primary now
        primary_node = nodes[current]
        primary_log = logs[current]
        for node_id, node in nodes.items():
            if node_id == current:
                continue
            log = logs[node_id]
            if node is not None and node.epoch == primary_node.epoch and node.primary_id == current:  # type: ignore[union-attr]
                self._check_prefix(node_id, log, primary_log, node.synced_lsn, "verified")
            self._check_applied(node_id, log, primary_log)

    def check_read(self, node_id: str, log: MemoryLog, write: AckedWrite) -> None:
        """A read with min_lsn = write.token.lsn, served at `node_id`, sees the write."""
        lsn = write.token.lsn
        if log.applied_lsn < lsn or log.prefix_hash(lsn) != write.prefix_hash:
            raise SafetyViolation("read with min_lsn never sees less",
                                  f"read at {node_id} with min_lsn {lsn} (write {write.token}) saw "
                                  f"applied={log.applied_lsn} without that write's history")

    def _check_no_loss(self, node_id: str, epoch: int, log: MemoryLog) -> None:
        for write in self.acked:
            if write.token.epoch > epoch:
                continue
            lsn = write.token.lsn
            if log.last_lsn < lsn or log.prefix_hash(lsn) != write.prefix_hash:
                raise SafetyViolation("no acknowledged write lost",
                                      f"primary {node_id} of epoch {epoch} (log to {log.last_lsn}) lacks "
                                      f"acknowledged write {write.token} or its history")

    def _check_prefix(self, node_id: str, log: MemoryLog, primary_log: MemoryLog, lsn: int, what: str) -> None:
        if lsn > log.last_lsn or lsn > primary_log.last_lsn or log.prefix_hash(lsn) != primary_log.prefix_hash(lsn):
            raise SafetyViolation("replica log is a prefix of the primary's history",
                                  f"{node_id}'s {what} log to {lsn} differs from the primary's "
                                  f"(replica last {log.last_lsn}, primary last {primary_log.last_lsn})")

    def _check_applied(self, node_id: str, log: MemoryLog, primary_log: MemoryLog) -> None:
        applied = log.applied_lsn
        if applied <= primary_log.last_lsn and log.prefix_hash(applied) == primary_log.prefix_hash(applied):
            return
        first_difference = _first_difference(log, primary_log, applied)
        for lsn in range(first_difference, applied + 1):
            if self.all_unsafe or log.records[lsn - 1].epoch in self.unsafe_epochs:
                return  # committed by a degraded (or async) primary, which the policy allows to lose
        self._check_prefix(node_id, log, primary_log, applied, "applied")


def _first_difference(log: MemoryLog, primary_log: MemoryLog, upto: int) -> int:
    """The first LSN <= upto where the two logs differ (prefix agreement is monotone)."""
    low, high = 0, min(upto, primary_log.last_lsn)  # agree through `low`
    while low < high:
        middle = (low + high + 1) // 2
        if log.prefix_hash(middle) == primary_log.prefix_hash(middle):
            low = middle
        else:
            high = middle - 1
    return low + 1
