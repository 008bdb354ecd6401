"""The node's configuration: membership, policy, timing in ticks and a named cap for every queue.

Validated once here; the state machine trusts it afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from knowledge.errors import InvalidArgument
from knowledge.replication.policy import CommitPolicy, parse_policy


@dataclass(frozen=True)
class NodeConfig:
    """One node's view of the cluster. `zones` maps every member (this node included) to its zone;
    membership is static. Durations are in ticks of `tick_ms` (the driver calls tick() that often)."""

    node_id: str
    zones: Mapping[str, str]
    policy: CommitPolicy = field(default_factory=lambda: parse_policy("async"))
    tick_ms: int = 10
    heartbeat_ticks: int = 5  # a primary sends an empty Append this often to each replica
    primary_timeout_ticks: int = 30  # a replica re-subscribes after this long without its primary
    campaign_ticks: int = 50  # a candidate gives up after this long without an election quorum
    snapshot_resend_ticks: int = 60  # a primary re-offers a snapshot not acknowledged this long
    batch_records_max: int = 256
    batch_bytes_max: int = 4 << 20
    inflight_records_max: int = 4096  # records sent to a replica beyond what it acknowledged
    retention_records_max: int = 1 << 20  # records kept for lagging replicas; past it: re-snapshot
    pending_commits_max: int = 65_536  # commits waiting for their policy
    recover_lag_records: int = 64  # a degraded primary returns to its policy when replicas lag less

    def __post_init__(self) -> None:
        object.__setattr__(self, "zones", dict(self.zones))
        if self.node_id not in self.zones:
            raise InvalidArgument(f"node {self.node_id!r} is not among the members {sorted(self.zones)}")
        for name in ("tick_ms", "heartbeat_ticks", "primary_timeout_ticks", "campaign_ticks",
                     "snapshot_resend_ticks", "batch_records_max", "batch_bytes_max",
                     "inflight_records_max", "retention_records_max", "pending_commits_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"replication config {name} must be a positive int, got {value!r}")
        if self.recover_lag_records < 0:
            raise InvalidArgument(f"recover_lag_records must be >= 0, got {self.recover_lag_records}")
        if self.inflight_records_max < self.batch_records_max:
            raise InvalidArgument("inflight_records_max must be at least batch_records_max")
        self.policy.check_members(self.zones)

    @property
    def replicas(self) -> tuple[str, ...]:
        """Every member but this node, in a fixed order."""
        return tuple(sorted(node for node in self.zones if node != self.node_id))

    @property
    def deadline_ticks(self) -> int:
        """The policy's deadline in ticks (at least one)."""
        return max(1, math.ceil(self.policy.deadline_ms / self.tick_ms))
