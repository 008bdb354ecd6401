"""A seeded, deterministic simulator of a replicated cluster driving the real state machine.

One seed fixes everything: the cluster (3-5 nodes in 2-3 zones), the commit policy (unless given)
and every fault: message delays (so reorders), drops, duplicates, crashes (some between a Ready's
fsync and its sends, some between a primary's early Appends and its own fsync), restarts from the
durable log, partitions (some bridged by one node), stop-the-world pauses longer than a lease, nodes
cut off from the consensus store and early lease expiry. Clients write to whichever nodes are
primary and read on any node with min_lsn. The invariants of sim_check.py are checked after every tick; a calm phase at the end
(faults healed) checks that the cluster converges. A failure raises SimulationFailure whose text
holds the replay line and the trace; `replay(text)` reruns it.

    python -m knowledge.replication.sim --seeds 0:1000 [--policy "zones(2)"]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from knowledge.errors import InvariantViolation, NotPrimary
from knowledge.replication.config import NodeConfig
from knowledge.replication.election import Elector, MemoryKV
from knowledge.replication.lsn import Position
from knowledge.replication.messages import InstallSnapshot, Message
from knowledge.replication.node import ReplicationNode, Role
from knowledge.replication.policy import parse_policy
from knowledge.replication.ready import COMMITTED
from knowledge.replication.sim_check import AckedWrite, Checker, SafetyViolation
from knowledge.replication.storage import MemoryLog

POLICIES = ("async", "sync(1)", "sync(2)", "zones(2)", "zones(2),degrade", "sync(1),degrade", "all")
TRACE_LINES_SHOWN = 400
READY_ROUNDS_MAX = 8  # Readies one input may lead to (each advance can free commit outcomes once)
PROFILES: tuple[dict[str, float], ...] = (  # harsher runs in one dimension each, or the defaults
    {}, {}, {"drop": 0.15, "delay_ticks_max": 8}, {"duplicate": 0.2, "delay_ticks_max": 6},
    {"crash": 0.01, "crash_mid_ready": 0.05}, {"pause": 0.02, "partition": 0.03, "heal": 0.02},
    {"lease_expiry": 0.02, "kv_cut": 0.02}, {"retention_records_max": 8},
)
# drawn from a second generator (so adding them left every other seed's run as it was): a WAL byte
# limit that cuts lagging replicas off (they re-snapshot), and crashes while a snapshot is in transfer
STORAGE_PROFILES: tuple[dict[str, float], ...] = (
    {}, {}, {}, {"retention_bytes_max": 48, "crash_mid_snapshot": 0.3}, {"retention_bytes_max": 120},
)
RECORD_OVERHEAD_BYTES = 4  # the simulated WAL frame around each payload
NodeFactory = Callable[[NodeConfig, MemoryLog, random.Random], ReplicationNode]
VARIANTS: dict[str, NodeFactory] = {
    "correct": lambda config, log, rng: ReplicationNode(config, log, log.durable_state(), rng),
}


@dataclass(frozen=True)
class SimConfig:
    """One run. `policy` "" and `nodes` 0 mean: chosen by the seed."""

    seed: int
    policy: str = ""
    nodes: int = 0
    ticks: int = 300
    calm_ticks: int = 160
    delay_ticks_max: int = 3
    drop: float = 0.04
    duplicate: float = 0.03
    crash: float = 0.003
    crash_mid_ready: float = 0.01
    partition: float = 0.01
    heal: float = 0.03
    kv_cut: float = 0.004
    lease_expiry: float = 0.003
    pause: float = 0.003
    write: float = 0.5
    read: float = 0.2
    ha_ticks: int = 3
    lease_ttl_ticks: int = 18
    retention_records_max: int = 40
    retention_bytes_max: int = 0  # the WAL byte limit (0: none), enforced through node.limit_retention
    crash_mid_snapshot: float = 0.0  # a replica dies while the snapshot streams in; its log is untouched
    deadline_ms: int = 300
    variant: str = "correct"
    vary: bool = True  # the seed also picks a fault profile (PROFILES) over these rates
    storage: bool = True  # ... and, with vary, a storage profile (STORAGE_PROFILES)

    def header(self) -> str:
        return "replay: " + json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_header(cls, line: str) -> SimConfig:
        return cls(**json.loads(line.split("replay: ", 1)[1]))


class SimulationFailure(AssertionError):
    """A run broke an invariant (or the state machine's own invariant()); the text is replayable."""

    def __init__(self, config: SimConfig, reason: str, trace: list[str]) -> None:
        self.config = config
        self.reason = reason
        self.trace = trace
        shown = trace[-TRACE_LINES_SHOWN:]
        super().__init__("\n".join([f"seed {config.seed} failed: {reason}", config.header(),
                                    f"trace (last {len(shown)} of {len(trace)} lines):", *shown]))


@dataclass
class RunResult:
    config: SimConfig
    policy: str
    nodes: int
    acked: int
    reads_checked: int
    failovers: int
    snapshots: int
    outcome_unknown: int
    degraded: int
    trace: list[str]


class _Member:
    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.log = MemoryLog()
        self.node: ReplicationNode | None = None
        self.elector: Elector | None = None
        self.restart_tick = 0


class Simulator:
    """The cluster, its network and its clients under one seeded random.Random."""

    def __init__(self, config: SimConfig) -> None:
        self.requested = config  # what a replay line reproduces
        self.rng = random.Random(config.seed)
        self.early_rng = random.Random(f"early {config.seed}")  # crashes between early sends and the fsync
        profile = self.rng.choice(PROFILES) if config.vary else {}
        if config.vary and config.storage:
            profile = {**profile, **random.Random(f"storage {config.seed}").choice(STORAGE_PROFILES)}
        self.config = replace(config, **profile)  # type: ignore[arg-type]
        self.profile = profile
        count = config.nodes or self.rng.choice((3, 3, 4, 5))
        zone_count = self.rng.choice((2, 3)) if count > 3 else 3
        self.zones = {f"n{i}": "abc"[i % zone_count] for i in range(count)}
        self.policy_text = config.policy or self.rng.choice(POLICIES)
        policy = parse_policy(self.policy_text + (f",deadline={config.deadline_ms}ms"
                                                  if "deadline" not in self.policy_text else ""))
        try:
            policy.check_members(self.zones)
        except Exception:
            policy = parse_policy(f"sync(1),deadline={config.deadline_ms}ms")
        self.policy = policy
        self.factory = VARIANTS[config.variant]
        self.kv = MemoryKV()
        self.members = {node_id: _Member(node_id) for node_id in self.zones}
        self.now = 0
        self.network: list[tuple[int, int, Message]] = []
        self.sequence = 0
        self.cut: set[frozenset[str]] = set()
        self.checker = Checker(all_unsafe=self.policy.kind == "async")
        self.trace: list[tuple[int, str | Message]] = []
        self.proposed: dict[Position, bytes] = {}
        self.reads: list[tuple[str, AckedWrite, int]] = []
        self.writes = self.reads_checked = self.failovers = 0
        self.faults = True
        self.paused: dict[str, int] = {}  # node -> tick it resumes (a stop-the-world pause)
        self._note(f"cluster {self.zones} policy {self.policy} faults {self.profile or 'default'}")
        for member in self.members.values():
            self._start(member)

    # -- running ------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run the faulty phase, then the calm one; raise SimulationFailure on any violation."""
        try:
            for _ in range(self.config.ticks):
                self._tick()
            self._calm()
            for _ in range(self.config.calm_ticks):
                self._tick()
            self._check_converged()
        except (SafetyViolation, InvariantViolation) as exc:
            self._note(f"FAIL {type(exc).__name__}: {exc}")
            raise SimulationFailure(self.requested, f"{type(exc).__name__}: {exc}", self.formatted_trace()) from exc
        stats = [m.node.stats for m in self.members.values() if m.node is not None]
        return RunResult(self.requested, str(self.policy), len(self.members), len(self.checker.acked),
                         self.reads_checked, self.failovers, sum(s["snapshots_installed"] for s in stats),
                         sum(s["outcome_unknown"] for s in stats), sum(s["commits_degraded"] for s in stats),
                         self.formatted_trace())

    def _tick(self) -> None:
        self.now += 1
        self.kv.now = self.now
        if self.faults:
            self._inject_faults()
        self._deliver()
        for member in self._live():
            self._limit_retention(member)
            member.node.tick()  # type: ignore[union-attr]
            self._drive(member)
        if self.now % self.config.ha_ticks == 0:
            for member in self.rng.sample(self._live(), len(self._live())):
                member.elector.cycle(self.now)  # type: ignore[union-attr]
                self._drive(member)
        self._clients()
        self.checker.check({m.id: m.node for m in self.members.values()},
                           {m.id: m.log for m in self.members.values()})

    def _live(self) -> list[_Member]:
        """Nodes that are up and not paused."""
        return [m for m in self.members.values() if m.node is not None and m.id not in self.paused]

    def _note(self, line: str) -> None:
        self.trace.append((self.now, line))

    def formatted_trace(self) -> list[str]:
        """The trace as text lines (messages are formatted only here, to keep runs fast)."""
        return [f"t={now} {item if isinstance(item, str) else 'deliver ' + _describe(item)}"
                for now, item in self.trace]

    # -- nodes --------------------------------------------------------------------------------
    def _start(self, member: _Member) -> None:
        node_config = NodeConfig(member.id, self.zones, self.policy, heartbeat_ticks=3,
                                 primary_timeout_ticks=15, campaign_ticks=20, snapshot_resend_ticks=25,
                                 batch_records_max=8, inflight_records_max=32,
                                 retention_records_max=self.config.retention_records_max,
                                 recover_lag_records=4, tick_ms=10)
        member.node = self.factory(node_config, member.log, random.Random(self.rng.random()))
        member.elector = Elector(member.node, self.kv.for_node(member.id), ttl=self.config.lease_ttl_ticks)
        self._note(f"start {member.id} at {member.node.last} epoch {member.node.epoch} "
                   f"applied {member.log.applied_lsn}")

    def _limit_retention(self, member: _Member) -> None:
        """The WAL byte limit: the oldest LSN whose records, to the end of the log, fit in it."""
        limit = self.config.retention_bytes_max
        if not limit or member.node is None:
            return
        log, total, floor = member.log, 0, member.log.last_lsn + 1
        while floor > log.first_lsn:
            total += len(log.records[floor - 2].payload) + RECORD_OVERHEAD_BYTES
            if total > limit:
                break
            floor -= 1
        member.node.limit_retention(floor)

    def _crash(self, member: _Member, why: str) -> None:
        member.node = member.elector = None
        self.paused.pop(member.id, None)
        member.restart_tick = self.now + self.rng.randint(5, 60)
        self._note(f"crash {member.id} ({why})")

    def _drive(self, member: _Member) -> None:
        """Carry out the node's Readies: persist, (maybe crash), send, apply, outcomes, advance."""
        for _ in range(READY_ROUNDS_MAX):
            node = member.node
            if node is None or not node.has_ready():
                return
            ready = node.ready()
            if (ready.snapshot is not None and self.config.crash_mid_snapshot and self.faults
                    and self.rng.random() < self.config.crash_mid_snapshot):
                # the transfer goes to a temporary copy, renamed into place only once complete: a crash
                # before that leaves the log and the hard state as they were (this Ready is lost whole)
                self._crash(member, f"mid snapshot transfer at {ready.snapshot.position}")
                return
            early = ready.early_messages
            for message in ready.messages[:early]:  # a primary's Appends go out before its own fsync
                self._send(member, message)
            if early and ready.entries and self.faults and self.early_rng.random() < self.config.crash_mid_ready:
                # the replicas may get records this node never made durable: they were not acknowledged
                self._crash(member, f"after sending {early} Appends, before their fsync")
                return
            member.log.persist(ready)
            if self.faults and self.rng.random() < self.config.crash_mid_ready:
                self._crash(member, "after fsync, before sending")
                return
            for message in ready.messages[early:]:
                self._send(member, message)
            member.log.apply(ready)
            for event in ready.events:
                self._note(f"{member.id} {event.kind} e{event.epoch}: {event.detail}")
                self.failovers += event.kind == "became_primary"
                if event.kind == "degraded":
                    self.checker.unsafe_epochs.add(event.epoch)
            for outcome in ready.outcomes:
                self._outcome(member, outcome.token, outcome.status, outcome.degraded)
            node.advance(ready)
            if ready.events:  # every role change comes with an event
                self.checker.note_roles({m.id: m.node for m in self.members.values()})
        if member.node is not None and member.node.has_ready():
            raise SafetyViolation("liveness", f"{member.id} still has work after {READY_ROUNDS_MAX} Readies")

    def _outcome(self, member: _Member, token: Position, status: str, degraded: bool) -> None:
        if status != COMMITTED:
            self._note(f"{member.id} outcome unknown {token}")
            return
        record = member.log.records[token.lsn - 1]
        if record.position != token or record.payload != self.proposed.get(token):
            raise SafetyViolation("no acknowledged write lost", f"{member.id} acknowledged {token} but its "
                                                                f"log holds {record.position} there")
        if degraded or self.policy.kind == "async":
            self._note(f"{member.id} ack {token} ({'degraded' if degraded else 'async'})")
        else:
            self.checker.record_ack(token, member.log)
            self._note(f"{member.id} ack {token}")

    # -- network ------------------------------------------------------------------------------
    def _send(self, member: _Member, message: Message) -> None:
        if isinstance(message, InstallSnapshot):
            message = replace(message, data=tuple(member.log.records[:message.position.lsn]))
        if self.faults and self.rng.random() < self.config.drop:
            self._note("drop " + _describe(message))
            return
        copies = 2 if self.faults and self.rng.random() < self.config.duplicate else 1
        for _ in range(copies):
            self.sequence += 1
            at = self.now + self.rng.randint(1, self.config.delay_ticks_max)
            heapq.heappush(self.network, (at, self.sequence, message))

    def _deliver(self) -> None:
        due = []
        while self.network and self.network[0][0] <= self.now:
            due.append(heapq.heappop(self.network)[2])
        self.rng.shuffle(due)
        for message in due:
            member = self.members[message.to]
            if member.node is None or frozenset((message.sender, message.to)) in self.cut:
                continue
            if member.id in self.paused:  # it waits in the socket buffer until the pause ends
                self.sequence += 1
                heapq.heappush(self.network, (self.paused[member.id], self.sequence, message))
                continue
            self.trace.append((self.now, message))
            member.node.step(message)
            self._drive(member)

    # -- faults and clients -------------------------------------------------------------------
    def _inject_faults(self) -> None:
        rng, config = self.rng, self.config
        for member in self.members.values():
            if member.node is None and self.now >= member.restart_tick:
                self._start(member)
            elif member.node is not None and rng.random() < config.crash:
                self._crash(member, "killed")
        if rng.random() < config.partition:
            primaries = [m.id for m in self._live() if m.node.role is Role.PRIMARY]  # type: ignore[union-attr]
            if primaries and rng.random() < 0.5:
                island = {rng.choice(sorted(primaries))}  # cut the primary off: the failover case
            else:
                island = set(rng.sample(sorted(self.members), rng.randint(1, len(self.members) // 2)))
            rest = sorted(set(self.members) - island)
            bridge = rng.choice(rest) if len(rest) > 1 and rng.random() < 0.4 else None  # Jepsen's bridge
            self.cut = {frozenset((a, b)) for a in island for b in rest if b != bridge}
            if rng.random() < 0.5:
                self.kv.unreachable = set(island)
            self._note(f"partition {sorted(island)} | {rest} bridged by {bridge} "
                       f"(consensus store cut: {sorted(self.kv.unreachable)})")
        elif self.cut and rng.random() < config.heal:
            self.cut = set()
            self.kv.unreachable = set()
            self._note("heal partition")
        if rng.random() < config.kv_cut:
            node_id = rng.choice(sorted(self.members))
            self.kv.unreachable ^= {node_id}
            self._note(f"consensus store {'cut from' if node_id in self.kv.unreachable else 'back for'} {node_id}")
        for node_id, until in list(self.paused.items()):
            if self.now >= until:
                del self.paused[node_id]
                self._note(f"resume {node_id}")
        if rng.random() < config.pause:
            primaries = [m.id for m in self._live() if m.node.role is Role.PRIMARY]  # type: ignore[union-attr]
            node_id = rng.choice(primaries if primaries and rng.random() < 0.7 else sorted(self.members))
            if self.members[node_id].node is not None and node_id not in self.paused:
                self.paused[node_id] = self.now + rng.randint(10, 3 * config.lease_ttl_ticks)
                self._note(f"pause {node_id} until t={self.paused[node_id]}")
        if rng.random() < config.lease_expiry:
            member = rng.choice([m for m in self.members.values()])
            if member.elector is not None and member.elector.lease is not None:
                self.kv.expire(member.elector.lease)
                self._note(f"lease of {member.id} expires early")

    def _clients(self) -> None:
        rng = self.rng
        if rng.random() < self.config.write:
            primaries = [m for m in self._live() if m.node.role is Role.PRIMARY]  # type: ignore[union-attr]
            member = rng.choice(primaries if primaries and rng.random() < 0.8
                                else self._live() or list(self.members.values()))
            if member.node is not None and member.id not in self.paused:
                self.writes += 1
                payload = f"w{self.writes}".encode()
                try:
                    token = member.node.propose(payload)
                except NotPrimary:
                    pass
                else:
                    self.proposed[token] = payload
                    self._note(f"{member.id} propose {token}")
                    self._drive(member)
        if rng.random() < self.config.read and self.checker.acked:
            write = rng.choice(self.checker.acked[-20:])
            self.reads.append((rng.choice(sorted(self.members)), write, self.now + 40))
        waiting = []
        for node_id, write, deadline in self.reads:
            node = self.members[node_id].node
            if node is not None and node.can_read(write.token):
                self.checker.check_read(node_id, self.members[node_id].log, write)
                self.reads_checked += 1
            elif self.now < deadline:
                waiting.append((node_id, write, deadline))  # bounded wait; a timeout is no violation
        self.reads = waiting

    def _calm(self) -> None:
        self.faults = False
        self.paused = {}
        self.cut = set()
        self.kv.unreachable = set()
        self._note("calm: faults off, partitions healed")
        for member in self.members.values():
            if member.node is None:
                self._start(member)

    def _check_converged(self) -> None:
        """After the calm phase: one primary, every log equal to its log, everything applied."""
        for _ in range(60):  # let the last writes settle with no new ones
            self.now += 1
            self.kv.now = self.now
            self._deliver()
            for member in self._live():
                member.node.tick()  # type: ignore[union-attr]
                self._drive(member)
            if self.now % self.config.ha_ticks == 0:
                for member in self._live():
                    member.elector.cycle(self.now)  # type: ignore[union-attr]
                    self._drive(member)
        primaries = [m for m in self.members.values() if m.node is not None and m.node.role is Role.PRIMARY]
        if len(primaries) != 1:
            raise SafetyViolation("liveness", f"{len(primaries)} primaries after the calm phase")
        primary = primaries[0]
        self.checker.check({m.id: m.node for m in self.members.values()},
                           {m.id: m.log for m in self.members.values()})
        for member in self.members.values():
            log = member.log
            if log.last_lsn != primary.log.last_lsn or log.prefix_hash(log.last_lsn) != primary.log.prefix_hash(log.last_lsn):
                raise SafetyViolation("liveness", f"{member.id} log to {log.last_lsn} did not converge on "
                                                  f"the primary {primary.id}'s (to {primary.log.last_lsn})")
            if log.applied_lsn != primary.node.commit_lsn:  # type: ignore[union-attr]
                raise SafetyViolation("liveness", f"{member.id} applied {log.applied_lsn}, primary "
                                                  f"committed {primary.node.commit_lsn}")  # type: ignore[union-attr]


def _describe(message: Message) -> str:
    fields = [f"{field}={getattr(message, field)}" for field in message.__slots__  # type: ignore[union-attr]
              if field not in ("sender", "to", "epoch", "entries", "epochs", "data")]
    entries = getattr(message, "entries", None)
    if entries is not None:
        fields.append(f"entries={entries[0].lsn}..{entries[-1].lsn}" if entries else "entries=-")
    return f"{type(message).__name__} {message.sender}->{message.to} e{message.epoch} {' '.join(fields)}"


def run_seed(seed: int, **overrides: object) -> RunResult:
    """Run one seed (SimConfig fields as overrides); raise SimulationFailure on a violation."""
    return Simulator(SimConfig(seed=seed, **overrides)).run()  # type: ignore[arg-type]


def replay(text: str) -> RunResult:
    """Rerun the run a SimulationFailure's text (or its replay line) describes."""
    line = next(line for line in text.splitlines() if line.startswith("replay: "))
    return Simulator(SimConfig.from_header(line)).run()


def main(argv: list[str] | None = None) -> int:
    """Run a range of seeds and print a summary (exit 1 on the first failure, with its trace)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0:200", help="first:end (end exclusive)")
    parser.add_argument("--policy", default="")
    args = parser.parse_args(argv)
    first, end = (int(part) for part in args.seeds.split(":"))
    started = time.perf_counter()
    totals = {"acked": 0, "reads": 0, "failovers": 0, "snapshots": 0}
    for seed in range(first, end):
        try:
            result = run_seed(seed, policy=args.policy)
        except SimulationFailure as failure:
            print(failure, file=sys.stderr)
            return 1
        totals["acked"] += result.acked
        totals["reads"] += result.reads_checked
        totals["failovers"] += result.failovers
        totals["snapshots"] += result.snapshots
    print(f"{end - first} seeds passed in {time.perf_counter() - started:.1f} s: {totals}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
