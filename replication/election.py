"""Automatic failover, Patroni-style: a leader key with a lease in a consensus store (etcd).

Every node runs `Elector.cycle()` on a timer. It keeps one lease alive, publishes its member key
(its last log position) under that lease and then, by role:
- primary: keeps the leader key; if the key is gone or names someone else, or the store has been
  unreachable for a lease's length, it steps down (stops accepting writes);
- replica: follows the node the leader key names; with no leader key, the most advanced member
  (by published position, ties by id; after two lease lengths without a leader, any member)
  creates the key, takes the next epoch from the store's
  counter by compare-and-swap (unique even if two nodes believe they hold the key) and campaigns;
- candidate that lost: deletes its own leader key so the next member may try.
The key only decides who tries. Safety comes from the epochs the state machine checks on every
record and ack (etcd's Jepsen analysis: its locks alone do not give mutual exclusion).

`ConsensusKV` is the small interface a real etcd client implements (aetcd or etcd3gw: a lease is a
lease, `create` is a transaction on create_revision == 0, `compare_and_swap` one on the value).
`MemoryKV` implements it with time as an input, for the simulator and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from knowledge.errors import Unavailable, invariant
from knowledge.replication.lsn import Position
from knowledge.replication.node import ReplicationNode, Role

CAS_TRIES_MAX = 16  # attempts to take the next epoch from the counter before giving up this round


class ConsensusKV(Protocol):
    """A linearizable key-value store with leases (etcd's v3 API, reduced). Every call may raise
    Unavailable when the store cannot be reached."""

    def lease_grant(self, ttl: int) -> int:
        """A new lease that lives `ttl` time units unless kept alive; its id."""
        ...

    def lease_keepalive(self, lease: int) -> bool:
        """Renew `lease`; False when it already expired (its keys are gone)."""
        ...

    def get(self, key: str) -> str | None:
        ...

    def get_prefix(self, prefix: str) -> dict[str, str]:
        ...

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        ...

    def create(self, key: str, value: str, lease: int | None = None) -> bool:
        """Put only if `key` does not exist; whether it did."""
        ...

    def compare_and_swap(self, key: str, expected: str | None, value: str) -> bool:
        """Put `value` only if the key holds `expected` (None: absent); whether it did."""
        ...

    def delete_if(self, key: str, expected: str) -> bool:
        """Delete `key` only if it holds `expected`; whether it did."""
        ...


@dataclass
class _Lease:
    ttl: int
    expires_at: int


class MemoryKV:
    """ConsensusKV in memory; `now` is set by the caller (the simulator's clock, in ticks)."""

    def __init__(self) -> None:
        self.now = 0
        self._data: dict[str, tuple[str, int | None]] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1
        self.unreachable: set[str] = set()  # callers cut off from the store (see `for_node`)

    def expire(self, lease: int) -> None:
        """Fault injection: `lease` expires now (a long pause or a clock jump)."""
        if lease in self._leases:
            self._leases[lease].expires_at = self.now - 1

    def for_node(self, node: str) -> ConsensusKV:
        """A view of this store that raises Unavailable while `node` is in `unreachable`."""
        return _NodeView(self, node)

    def _collect(self) -> None:
        for lease_id in [lease for lease, state in self._leases.items() if state.expires_at < self.now]:
            del self._leases[lease_id]
            for key in [key for key, (_, owner) in self._data.items() if owner == lease_id]:
                del self._data[key]

    def lease_grant(self, ttl: int) -> int:
        invariant(ttl >= 1, "lease ttl must be >= 1")
        self._collect()
        lease = self._next_lease
        self._next_lease += 1
        self._leases[lease] = _Lease(ttl, self.now + ttl)
        return lease

    def lease_keepalive(self, lease: int) -> bool:
        self._collect()
        state = self._leases.get(lease)
        if state is None:
            return False
        state.expires_at = self.now + state.ttl
        return True

    def get(self, key: str) -> str | None:
        self._collect()
        found = self._data.get(key)
        return found[0] if found else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        self._collect()
        return {key: value for key, (value, _) in sorted(self._data.items()) if key.startswith(prefix)}

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        self._collect()
        invariant(lease is None or lease in self._leases, f"put with unknown lease {lease}")
        self._data[key] = (value, lease)

    def create(self, key: str, value: str, lease: int | None = None) -> bool:
        self._collect()
        if key in self._data or (lease is not None and lease not in self._leases):
            return False
        self._data[key] = (value, lease)
        return True

    def compare_and_swap(self, key: str, expected: str | None, value: str) -> bool:
        self._collect()
        found = self._data.get(key)
        if (found[0] if found else None) != expected:
            return False
        self._data[key] = (value, found[1] if found else None)
        return True

    def delete_if(self, key: str, expected: str) -> bool:
        self._collect()
        found = self._data.get(key)
        if found is None or found[0] != expected:
            return False
        del self._data[key]
        return True


class _NodeView:
    """MemoryKV as seen by one node: every call fails while that node is cut off."""

    def __init__(self, kv: MemoryKV, node: str) -> None:
        self._kv = kv
        self._node = node

    def __getattr__(self, name: str):  # noqa: ANN204 - forwards ConsensusKV's methods
        method = getattr(self._kv, name)

        def call(*args, **kwargs):
            if self._node in self._kv.unreachable:
                raise Unavailable(f"consensus store unreachable from {self._node}")
            return method(*args, **kwargs)

        return call


def _parse_leader(value: str | None) -> tuple[str | None, int]:
    if not value:
        return None, 0
    node, _, epoch = value.rpartition(":")
    return (node, int(epoch)) if node and epoch.isdigit() else (value, 0)


class Elector:
    """Runs one node's side of the leader-key protocol against a ConsensusKV.

    `ttl` is in the store's time unit (ticks for MemoryKV, seconds for etcd); `cycle(now)` gets the
    caller's time in the same unit, which it only compares with the time of the last success.
    """

    def __init__(self, node: ReplicationNode, kv: ConsensusKV, *, ttl: int, prefix: str = "/knowledge") -> None:
        invariant(ttl >= 1, "lease ttl must be >= 1")
        self.node = node
        self.kv = kv
        self.ttl = ttl
        self.leader_key = f"{prefix}/leader"
        self.epoch_key = f"{prefix}/epoch"
        self.member_prefix = f"{prefix}/members/"
        self.lease: int | None = None
        self.last_ok: int | None = None
        self.leaderless_since: int | None = None  # when this node last saw the leader key present
        self.now = 0
        self.log: list[str] = []  # what it decided, for traces

    def cycle(self, now: int) -> None:
        """One round of the loop; never raises for an unreachable store (it steps down in time)."""
        self.now = now
        try:
            self._cycle()
            self.last_ok = now
        except Unavailable:
            if self.node.role is not Role.REPLICA and (self.last_ok is None or now - self.last_ok >= self.ttl):
                self.node.step_down("consensus store unreachable for a lease's length")
                self.log.append("step down: store unreachable")

    def _cycle(self) -> None:
        node = self.node
        if self.lease is None or not self.kv.lease_keepalive(self.lease):
            self.lease = self.kv.lease_grant(self.ttl)
        self.kv.put(self.member_prefix + node.id, str(node.last), self.lease)
        holder, epoch = _parse_leader(self.kv.get(self.leader_key))
        if node.role is Role.PRIMARY:
            if holder != node.id or epoch != node.epoch:
                node.step_down(f"leader key names {holder}:{epoch}")
                self.log.append(f"step down: key {holder}:{epoch}")
        elif node.role is Role.CANDIDATE:
            if holder != node.id or epoch != node.epoch:
                node.step_down("lost the leader key while campaigning")
        elif holder == node.id:
            self.kv.delete_if(self.leader_key, f"{holder}:{epoch}")  # a lost campaign or a restart
            self.log.append(f"release key {holder}:{epoch}")
        elif holder is not None:
            self.leaderless_since = None
            node.follow(holder)
        else:
            if self.leaderless_since is None:
                self.leaderless_since = self.now
            # The most advanced member goes first; if it cannot win (cut off from the others), after
            # two lease lengths anyone may try: a Promise is refused to a less advanced log anyway.
            if self._most_advanced() or self.now - self.leaderless_since >= 2 * self.ttl:
                self._campaign()

    def promote(self) -> int | None:
        """Manual failover (`knowledge promote`): take the leader key for this node with the next
        epoch and campaign; the returned epoch, or None when the store refused. The campaign still
        needs its election quorum and fails against a more advanced member, so no acknowledged
        write is lost by promoting the wrong node."""
        node = self.node
        if self.lease is None or not self.kv.lease_keepalive(self.lease):
            self.lease = self.kv.lease_grant(self.ttl)
        epoch = self._next_epoch()
        if epoch is None:
            return None
        current = self.kv.get(self.leader_key)
        if current is not None and not self.kv.delete_if(self.leader_key, current):
            return None
        if not self.kv.create(self.leader_key, f"{node.id}:{epoch}", self.lease):
            return None
        if node.role is not Role.REPLICA:
            node.step_down("promote")
        node.campaign(epoch)
        self.log.append(f"promote: campaign epoch {epoch}")
        return epoch

    def _next_epoch(self) -> int | None:
        """Take the next epoch from the counter by compare-and-swap (unique across nodes)."""
        for _ in range(CAS_TRIES_MAX):  # each failed swap is another campaigner's success
            current = self.kv.get(self.epoch_key)
            epoch = max(int(current or 0), self.node.epoch) + 1
            if self.kv.compare_and_swap(self.epoch_key, current, str(epoch)):
                return epoch
        return None

    def _most_advanced(self) -> bool:
        node = self.node
        mine = (node.last, node.id)
        for key, value in self.kv.get_prefix(self.member_prefix).items():
            other = key[len(self.member_prefix):]
            if other != node.id and (Position.parse(value), other) > mine:
                return False
        return True

    def _campaign(self) -> None:
        node = self.node
        if not self.kv.create(self.leader_key, f"{node.id}:0", self.lease):
            return
        epoch = self._next_epoch()
        if epoch is None:
            self.kv.delete_if(self.leader_key, f"{node.id}:0")
            return
        if not self.kv.compare_and_swap(self.leader_key, f"{node.id}:0", f"{node.id}:{epoch}"):
            return  # the lease expired meanwhile; the epoch is burnt, nobody uses it
        node.campaign(epoch)
        self.log.append(f"campaign epoch {epoch} at {node.last}")
