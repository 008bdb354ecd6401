"""WAL log shipping, replicas and failover (installed as ``knowledge.replication``).

The protocol is a pure state machine (`ReplicationNode`: messages and ticks in, `Ready` batches
out); `Elector` drives failover through a consensus store (`ConsensusKV`, etcd in production);
`sim` runs it under seeded faults with invariant checks. See README.md in this folder.
"""

from knowledge.replication.config import NodeConfig
from knowledge.replication.election import ConsensusKV, Elector, MemoryKV
from knowledge.replication.lsn import ZERO, EpochHistory, EpochStart, Position
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
from knowledge.replication.node import ReplicationNode, Role
from knowledge.replication.policy import CommitPolicy, parse_policy
from knowledge.replication.ready import (
    COMMITTED,
    OUTCOME_UNKNOWN,
    CommitOutcome,
    DurableState,
    Event,
    HardState,
    Ready,
)
from knowledge.replication.storage import LogReader, MemoryLog

__all__ = [
    "COMMITTED", "OUTCOME_UNKNOWN", "ZERO", "Append", "AppendAck", "CommitOutcome", "CommitPolicy",
    "ConsensusKV", "DurableState", "Elector", "Entry", "EpochHistory", "EpochStart", "Event", "HardState",
    "InstallSnapshot", "LogReader", "MemoryKV", "MemoryLog", "Message", "NodeConfig", "Position", "Prepare",
    "Promise", "Ready", "ReplicationNode", "Role", "Subscribe", "parse_policy",
]
