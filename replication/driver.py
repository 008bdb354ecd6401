"""Replicator: drives one ReplicationNode over a store's engine and WAL on one thread.

The store's commit path calls it (Engine.replicator): `writable_epoch()` under the stage lock before
the WAL append (NotPrimary unless this node is the primary and its barrier is written), `proposed()`
after it, and `wait_committed()` after the local fsync, which returns once the commit policy holds
and the record is applied, or raises CommitOutcomeUnknown. Records are applied to the store only once
committed (on the primary too), so a deposed primary truncates its unacknowledged tail without undoing
anything. Messages arrive through `deliver()` (the transport's receive side) and leave through
`send` callables per peer (transport.Links).

One loop iteration, per README.md: with the engine's stage lock held, drain the proposals, feed
messages, ticks and commands, take the Ready, persist the hard state, truncate and append the WAL;
release the lock; send a primary's Appends (while its fsync runs); fsync; send the rest; apply committed
records; resolve waiting commits; advance.

Snapshots (snapshot.py): a primary takes the backup for each InstallSnapshot it sends just before
sending it (its tables then stand exactly at the offered position) and serves it to the replica's fetch.
A replica with a snapshot in its Ready fetches it (`fetch`, the transport's), closes its engine,
installs the files and opens a new engine (`reopen` points the Store at it). A failed fetch leaves the
store untouched and restarts the state machine from disk, as a crash would. `wal_retention_bytes_max`
caps the WAL kept for lagging replicas (node.limit_retention); past it they are sent a snapshot.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from knowledge.errors import (
    CommitOutcomeUnknown,
    InvalidArgument,
    NotPrimary,
    StorePoisoned,
    Unavailable,
)
from knowledge.replication.catchup import CatchUp
from knowledge.replication.config import NodeConfig
from knowledge.replication.durable import HardStateFile, WalLog, restore
from knowledge.replication.election import Elector
from knowledge.replication.lsn import Position
from knowledge.replication.messages import Append, AppendAck, InstallSnapshot, Message
from knowledge.replication.node import ReplicationNode, Role
from knowledge.replication.ready import COMMITTED, CommitOutcome, Ready
from knowledge.replication.snapshot import SnapshotSource
from knowledge.storage.ops import decode_ops

log = logging.getLogger("knowledge.replication")
CYCLE_S = 0.25  # the Elector's period (its lease TTL is in whole seconds)
WAIT_MARGIN_S = 30.0  # a commit waits at most its policy's deadline plus this (the loop resolves it first)
HOUSEKEEPING_S = 1.0  # how often the WAL byte limit is measured and unoffered snapshots removed
ROUNDS_MAX = 8  # iterations a receiving or committing thread runs in one turn before it lets the loop thread in


class _Done:
    """A one-shot flag a single committer waits on: a lock held until set (cheaper than an Event, which
    builds a Condition and a waiter lock per wait). set() is idempotent and may come from any thread."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._lock = threading.Lock()
        self._lock.acquire()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        try:
            self._lock.release()
        except RuntimeError:  # set already (and not yet taken by the waiter)
            pass

    def wait(self, timeout: float) -> bool:
        return self._set or self._lock.acquire(timeout=timeout) or self._set


class _Waiter:
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = _Done()
        self.outcome: CommitOutcome | None = None


class Replicator(CatchUp):
    """One node of a replicated store: its state machine, its durable state and its loop thread."""

    def __init__(self, engine: Any, config: NodeConfig, addresses: dict[str, str],
                 send: Callable[[str, Message], None], *, kv: Any = None, ttl_s: int = 2,
                 prefix: str = "/knowledge", fetch: Callable[[str, Position, str], int] | None = None,
                 reopen: Callable[[Any], None] | None = None, wal_retention_bytes_max: int = 0) -> None:
        if not isinstance(wal_retention_bytes_max, int) or wal_retention_bytes_max < 0:
            raise InvalidArgument(f"wal_retention_bytes_max must be an int >= 0 (0: no limit), got "
                                  f"{wal_retention_bytes_max!r}")
        self.engine = engine
        self.config = config
        self.addresses = dict(addresses)
        self.send = send
        self.fetch = fetch
        self.reopen = reopen
        self.wal_retention_bytes_max = wal_retention_bytes_max
        self.snapshots = SnapshotSource(engine.path)
        self.snapshot_rates: collections.deque[dict[str, float]] = collections.deque(maxlen=16)
        self._next_housekeeping = 0.0
        self._sent: dict[str, collections.OrderedDict[int, float]] = {}  # per replica: last LSN sent -> when
        # profile (status()["profile"]): per ack, send -> processed and send -> arrived (ms); on a replica,
        # an Append's arrival -> its ack sent (ms)
        self.ack_rtt_ms: collections.deque[float] = collections.deque(maxlen=1024)
        self.ack_wire_ms: collections.deque[float] = collections.deque(maxlen=1024)
        self.replica_ms: collections.deque[float] = collections.deque(maxlen=1024)
        self._arrived: collections.OrderedDict[tuple[str, int], float] = collections.OrderedDict()
        # per peer: write messages back on the call it streams to us (transport.handler's reply), so an ack
        # leaves on the thread that made it, with no hop to a link thread
        self._replies: dict[str, Callable[[list[Message]], bool]] = {}
        self.hard = HardStateFile(engine.path, fsync=engine.config.fsync)
        restored = restore(engine.wal, self.hard.load(), engine.memory_lsn)
        self.log = WalLog(engine.wal)
        self.node = ReplicationNode(config, self.log, restored)
        guard = threading.Lock()
        self.lock = threading.Condition(guard)  # guards the queues below and `node` reads; readers wait on it
        # the loop thread waits on its own condition, woken only for what no other thread carries out (commands,
        # stop): a thread that queues messages or a proposal runs the iteration itself, or the one running
        # it takes them on before it lets go (_iterate_here); every wake-up of an idle thread costs a GIL hand-off
        self._wake = threading.Condition(guard)
        # one iteration at a time: the loop thread's, or one that a receiving thread runs itself (deliver)
        self._turn = threading.Lock()
        self._inbox: collections.deque[tuple[Message, float]] = collections.deque()  # with its arrival
        self._proposals: collections.deque[tuple[int, int, list[Any], set[str]]] = collections.deque()
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._pending: dict[int, tuple[list[Any], set[str]]] = {}  # own records not yet applied
        self._waiters: dict[int, _Waiter] = {}
        self._woken = 0  # committers answered so far
        self._payloads: dict[int, bytes] = {}
        self._later: list[Message] = []  # empty Appends an inline iteration left to the loop thread's next tick
        self._writable = False
        self._retain_lsn = 1  # the node's last retain_from_lsn: WAL records below it are not needed by replicas
        self._barrier: Position | None = None  # this primary's first record (its epoch's barrier)
        self._want_primary = False  # --role primary: campaign until this node is primary once
        self._stop = threading.Event()
        self.failure: BaseException | None = None
        self.events: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=256)
        self.counters: dict[str, int] = collections.Counter()
        # automatic failover: the Elector over a ConsensusKV (etcd), cycled from the loop every CYCLE_S
        self.elector = Elector(self.node, kv, ttl=ttl_s, prefix=prefix) if kv is not None else None
        self._next_cycle = 0.0
        self._thread = threading.Thread(target=self._run, name=f"replication-{config.node_id}", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, *, primary: str | None = None, campaign: bool = False) -> Replicator:
        """Start the loop; follow `primary` (a member id) or campaign to become primary."""
        if primary is not None:
            self.command(lambda: self.node.follow(primary))
        self._want_primary = campaign and self.elector is None
        self.engine.replicator = self
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            self.lock.notify_all()
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._turn.acquire(timeout=10):  # an iteration a receiving thread runs ends first
            self._turn.release()
        self.engine.replicator = None
        for waiter in list(self._waiters.values()):
            waiter.done.set()

    # -- the store's commit path ------------------------------------------------------------------
    def writable_epoch(self) -> int:
        """The epoch to write in; NotPrimary (naming the primary's address) unless this node takes writes."""
        if self.failure is not None:
            raise StorePoisoned(f"replication failed: {self.failure}") from self.failure
        if not self._writable:
            raise NotPrimary(f"node {self.config.node_id} is not the primary (a {self.node.role.value} in epoch "
                             f"{self.node.epoch})", primary=self.primary_address() or "")
        return self.node.epoch

    def proposed(self, lsn: int, epoch: int, timestamp_ns: int, payload: bytes, ops: list[Any],
                 edge_types: set[str]) -> None:
        """Under the stage lock, right after the WAL append of record `lsn`."""
        with self.lock:  # ship() carries it out (the loop thread takes it on its next tick otherwise)
            self._waiters[lsn] = _Waiter()
            self._proposals.append((lsn, timestamp_ns, ops, edge_types))
            self._payloads[lsn] = payload

    def wait_committed(self, lsn: int) -> int:
        """Block until record `lsn` is committed by the policy and applied; its LSN. CommitOutcomeUnknown
        when the deadline passed or the primary stepped down first."""
        waiter = self._waiters.get(lsn)
        if waiter is None:
            raise CommitOutcomeUnknown(f"commit {lsn}: not tracked by replication", lsn=lsn)
        waiter.done.wait(self.config.policy.deadline_ms / 1000 + WAIT_MARGIN_S)
        with self.lock:
            self._waiters.pop(lsn, None)
        outcome = waiter.outcome
        if outcome is None:
            raise CommitOutcomeUnknown(f"commit {lsn} outcome unknown: replication stopped or stalled", lsn=lsn)
        return outcome.result().lsn

    def retain_from(self, lsn: int) -> int:
        """The oldest LSN a checkpoint may keep the WAL from: `lsn`, or older while replicas still need it."""
        return min(lsn, self._retain_lsn)

    # -- reads ------------------------------------------------------------------------------------
    def wait_readable(self, min_lsn: int | Position, timeout_s: float) -> bool:
        """Wait (at most timeout_s) until a read that must see `min_lsn` may be served here."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not self.node.can_read(min_lsn):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self.lock.wait(min(remaining, 0.1))
        return True

    # -- inputs from the transport and the operator ----------------------------------------------
    def deliver(self, messages: list[Message], reply: Callable[[list[Message]], bool] | None = None) -> None:
        """Queue messages from the transport, then carry them through an iteration on this thread unless
        one runs already (the loop thread takes them then): a commit's critical path (the replica's append,
        fsync and ack; the primary's handling of the ack) then skips the hop to the loop thread. `reply`
        writes messages back to their sender at once on the call they came by (False once it ended): the
        AppendAcks to that sender go that way from then on, whichever thread makes them."""
        if self.enqueue(messages, reply):
            self.iterate_inbox()

    def enqueue(self, messages: list[Message], reply: Callable[[list[Message]], bool] | None = None) -> bool:
        """deliver's first half: queue `messages` (in the order of the calls) and note `reply`. False when
        they can wait for the next iteration (the loop's next tick at most): AppendAcks of this primary's
        epoch from a replica that holds every record, all of them committed already (under sync(1) the
        second replica's ack), which neither commit nor send anything; an iteration for them now would
        compete for the GIL with the committer the first ack just answered."""
        now = time.perf_counter()
        urgent = False
        with self.lock:
            node = self.node
            settled = node.commit_lsn if node.role is Role.PRIMARY and node.commit_lsn == node.history.last_lsn else -1
            for message in messages:
                if message.to == self.config.node_id:
                    self._inbox.append((message, now))
                    if reply is not None:
                        self._replies[message.sender] = reply
                    if not (isinstance(message, AppendAck) and message.epoch == node.epoch
                            and message.match_lsn == settled):
                        urgent = True
        return urgent

    def iterate_inbox(self) -> None:
        """deliver's second half: iterate on this thread unless another thread does (it takes the queue then)."""
        woken = self._woken
        self._iterate_here()
        if self._woken != woken:
            # it answered committers: let one of them take the GIL now, rather than when this thread next blocks
            # (after the next frame, e.g. a second replica's ack, which no committer waits for)
            time.sleep(0)

    def ship(self, lsn: int) -> None:
        """The committer of record `lsn`, before its own fsync (Engine.finish): run an iteration on this
        thread unless one runs already, so the record's Appends leave at once, before the fsync, with no
        hop to the loop thread (which takes the record otherwise). Never raises: a failure poisons
        replication, and wait_committed reports it."""
        self._iterate_here()

    def _iterate_here(self) -> None:
        """Iterate on the calling thread when no other thread does; else the one that does takes what this
        thread queued before it lets go: it iterates again while inputs wait or the node has work (the
        outcomes its own fsync decided), and looks once more after letting go. Nobody wakes the loop thread
        for it, unless ROUNDS_MAX iterations leave work behind."""
        rounds = 0
        while True:
            if self.failure is not None or self._stop.is_set() or not self._thread.is_alive():
                return
            if not self._turn.acquire(blocking=False):
                return  # the thread that holds the turn looks at the queues after it lets go
            more = False
            try:
                while rounds < ROUNDS_MAX and self.failure is None and not self._stop.is_set():
                    rounds += 1
                    self._iterate(0, inline=True)
                    more = bool(self._inbox or self._proposals or self._commands or self.node.has_ready())
                    if not more:
                        break
            except BaseException as exc:  # noqa: BLE001 - as the loop's: poison, never leave commits waiting
                self._fail(exc)
            finally:
                self._turn.release()
            if rounds >= ROUNDS_MAX:
                if more or self._inbox or self._proposals or self._commands:
                    with self.lock:  # enough for this thread (a committer, a stream's reader): the loop's turn
                        self._wake.notify_all()
                return
            if not (self._inbox or self._proposals or self._commands):
                return  # anything queued after this look finds the turn free, or its holder looks again

    def command(self, action: Callable[[], None]) -> None:
        with self.lock:
            self._commands.append(action)
            self._wake.notify_all()

    def promote(self, epoch: int | None = None) -> int:
        """Manual failover: campaign for `epoch` (default: one past every epoch this node knows)."""
        if self.elector is not None:  # through the consensus store: take the key and the next epoch there
            done = threading.Event()
            result: list[int | None] = []

            def take() -> None:
                result.append(self.elector.promote())  # type: ignore[union-attr]
                done.set()
            self.command(take)
            if not done.wait(30) or result[0] is None:
                raise Unavailable("promote: the consensus store refused the leader key or the next epoch")
            return int(result[0])  # type: ignore[arg-type]
        chosen = epoch if epoch is not None else max(self.node.epoch, self.engine.wal.last_epoch) + 1
        if chosen <= self.node.epoch:
            raise InvalidArgument(f"promote needs an epoch above {self.node.epoch}, got {chosen}")

        def act() -> None:
            if self.node.role is not Role.REPLICA:
                self.node.step_down("promote")
            self.node.campaign(max(chosen, self.node.epoch + 1))
        self.command(act)
        return chosen

    def primary_address(self) -> str | None:
        """None when this node takes writes; else the primary's address ("" when unknown)."""
        if self._writable:
            return None
        primary = self.node.primary_id
        return self.addresses.get(primary, "") if primary else ""

    def _profile(self) -> dict[str, float]:
        """Where commit time goes: the WAL fsync (mean ms, records per fsync), the ack round trip (p50 ms: to
        the ack's handling, and to its arrival), a replica's Append arrival -> ack sent (p50 ms)."""
        fsyncs = self.counters["fsyncs"]

        def p50(values: collections.deque[float]) -> float:
            for _ in range(10):  # the loop thread appends meanwhile: a copy may need a retry
                try:
                    ordered = sorted(values)
                    break
                except RuntimeError:
                    continue
            else:
                return 0.0
            return ordered[len(ordered) // 2] if ordered else 0.0
        return {"fsync_ms_mean": self.counters["fsync_us"] / 1000 / fsyncs if fsyncs else 0.0,
                "records_per_fsync": self.counters["records_synced"] / fsyncs if fsyncs else 0.0,
                "ack_rtt_ms_p50": p50(self.ack_rtt_ms), "ack_rtt_samples": len(self.ack_rtt_ms),
                "ack_arrival_ms_p50": p50(self.ack_wire_ms), "replica_ack_ms_p50": p50(self.replica_ms)}

    def status(self) -> dict[str, Any]:
        node = self.node
        with self.lock:
            return {"node": node.id, "zone": self.config.zones[node.id], "role": node.role.value,
                    "writable": self._writable, "epoch": node.epoch, "primary": node.primary_id,
                    "last": str(node.last), "durable_lsn": node.durable_lsn,
                    "applied_lsn": min(node.applied_lsn, self.engine.memory_lsn),  # in the store reads see
                    "commit_lsn": node.commit_lsn, "policy": str(self.config.policy), "stats": dict(node.stats),
                    "counters": dict(self.counters), "events": [list(e) for e in self.events],
                    "failure": None if self.failure is None else str(self.failure),
                    "retention_floor": node.retention_floor, "snapshots": list(self.snapshot_rates),
                    "profile": self._profile(),
                    "elector": None if self.elector is None else self.elector.log[-10:]}

    # -- the loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        tick_s = self.config.tick_ms / 1000
        next_tick = time.monotonic() + tick_s
        try:
            while not self._stop.is_set() and self.failure is None:
                with self._turn:  # the node changes only within a turn: has_ready() is safe to ask here
                    busy = self.node.has_ready()
                with self.lock:
                    while (not self._stop.is_set() and not self._inbox and not self._proposals
                           and not self._commands and not busy and time.monotonic() < next_tick):
                        self._wake.wait(max(0.0, next_tick - time.monotonic()))
                ticks = 0
                now = time.monotonic()
                if now >= next_tick:
                    ticks = min(10, int((now - next_tick) / tick_s) + 1)
                    next_tick = max(next_tick + ticks * tick_s, now)
                with self._turn:
                    if self.failure is None:
                        self._iterate(ticks)
        except BaseException as exc:  # noqa: BLE001 - a failed loop must not leave commits waiting silently
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """An iteration failed: the node stops taking writes and every waiting commit ends (outcome unknown)."""
        self.failure = exc
        self._writable = False
        log.error("replication loop of %s failed", self.config.node_id, exc_info=exc)
        with self.lock:
            for waiter in self._waiters.values():
                waiter.done.set()
            self.lock.notify_all()
            self._wake.notify_all()

    def _iterate(self, ticks: int, inline: bool = False) -> None:
        """One turn of the loop (README.md); `inline` on a committing or receiving thread (_iterate_here)."""
        engine, node = self.engine, self.node
        if not inline and self._later:
            later, self._later = tuple(self._later), []
            self._send_all(later)
        with engine.stage_lock:
            with self.lock:
                proposals = list(self._proposals)
                self._proposals.clear()
                inbox = list(self._inbox)
                self._inbox.clear()
                commands = list(self._commands)
                self._commands.clear()
            for lsn, timestamp_ns, ops, edge_types in proposals:
                self._propose(lsn, timestamp_ns, ops, edge_types)
            for message, arrived in inbox:
                if isinstance(message, AppendAck):
                    self._note_ack(message, arrived)
                elif isinstance(message, Append) and message.entries:
                    self._arrived[(message.sender, message.entries[-1].lsn)] = arrived
                    while len(self._arrived) > 256:
                        self._arrived.popitem(last=False)
                node.step(message)
            for action in commands:
                action()
            if time.monotonic() >= self._next_housekeeping:
                self._next_housekeeping = time.monotonic() + HOUSEKEEPING_S
                self._housekeep()
            for _ in range(ticks):
                node.tick()
            if self.elector is not None and time.monotonic() >= self._next_cycle:
                self._next_cycle = time.monotonic() + CYCLE_S
                self.elector.cycle(int(time.monotonic()))
            if self._want_primary and node.role is Role.PRIMARY:
                self._want_primary = False
            elif self._want_primary and node.role is Role.REPLICA and node.primary_id is None:
                node.campaign(max(node.epoch, engine.wal.last_epoch) + 1)
            if node.role is not Role.PRIMARY:
                self._writable = False  # under the stage lock: no store append after this
                self._barrier = None
            if not node.has_ready():
                return
            ready = node.ready()
            if ready.hard_state is not None:
                self.hard.save(ready.hard_state)
            if ready.snapshot is None:
                self._persist(ready)
        if ready.snapshot is not None:
            if not self._install_snapshot(ready.snapshot):
                return
            engine = self.engine
            with engine.stage_lock:
                self._persist(ready)
        early = ready.messages[:ready.early_messages]  # a primary's Appends: sent while its fsync runs (ready.py)
        self._send_all(tuple(m for m in early if m.entries))  # type: ignore[attr-defined]
        last = ready.entries[-1].lsn if ready.entries else 0
        if last:
            started = time.perf_counter()
            engine.wal.sync_to(last)
            self.counters["fsyncs"] += 1
            self.counters["fsync_us"] += int((time.perf_counter() - started) * 1e6)
            self.counters["records_synced"] += len(ready.entries)
        self._send_all(ready.messages[ready.early_messages:])
        self._apply(ready)
        # empty Appends (heartbeats, probes, commit notices) are on no commit's path: a committing or receiving
        # thread leaves them to the loop thread's next tick (tick_ms at most; under load the next Append
        # carries the commit LSN first), so that the committers answered below are the next to run
        empty = tuple(m for m in early if not m.entries)  # type: ignore[attr-defined]
        if inline:
            self._later.extend(empty)
        else:
            self._send_all(empty)
        self._retain_lsn = ready.retain_from_lsn
        with self.lock:
            node.advance(ready)
            # writes (and reads that must see every acknowledged write) only once the barrier committed:
            # the inherited tail is then applied here
            self._writable = (node.role is Role.PRIMARY and self._barrier is not None
                              and self._barrier.epoch == node.epoch and node.applied_lsn >= self._barrier.lsn)
            self.lock.notify_all()
        self._resolve(ready)  # last: a woken committer then finds this thread about to let go

    def _send_all(self, messages: tuple[Message, ...]) -> None:
        now = time.perf_counter()
        acks: dict[str, list[Message]] = {}
        for message in messages:
            if isinstance(message, AppendAck) and message.to in self._replies:
                acks.setdefault(message.to, []).append(message)
        for peer, replies in acks.items():  # first: a commit on the primary waits for them
            self._reply(peer, replies, now)
        for message in messages:
            if isinstance(message, InstallSnapshot) and not self._offer(message):
                continue
            if isinstance(message, AppendAck) and message.to in acks:
                continue
            if isinstance(message, Append) and message.entries:
                sent = self._sent.setdefault(message.to, collections.OrderedDict())
                sent[message.entries[-1].lsn] = now
                while len(sent) > 256:
                    sent.popitem(last=False)
            elif isinstance(message, AppendAck) and self._arrived:
                arrived = self._arrived.pop((message.to, message.match_lsn), None)
                if arrived is not None:
                    self.replica_ms.append((now - arrived) * 1000)
            self.send(message.to, message)

    def _reply(self, peer: str, messages: list[Message], now: float) -> None:
        """Write `messages` (AppendAcks) back on the call `peer` streams to us; over the link when it ended."""
        reply = self._replies.get(peer)
        for message in messages:
            arrived = self._arrived.pop((peer, message.match_lsn), None)  # type: ignore[attr-defined]
            if arrived is not None:
                self.replica_ms.append((now - arrived) * 1000)
        try:
            sent = reply is not None and reply(messages)
        except Exception as exc:  # noqa: BLE001 - a transport failure: the link carries them instead
            log.debug("replication reply to %s failed: %s", peer, exc)
            sent = False
        if not sent:
            if self._replies.get(peer) is reply:
                self._replies.pop(peer, None)
            for message in messages:
                self.send(peer, message)

    def _note_ack(self, message: AppendAck, arrived: float) -> None:
        """Profile: the round trip from sending records to the ack that covers them (replica fsync included),
        to its arrival and to its handling here."""
        sent = self._sent.get(message.sender)
        while sent:
            lsn, at = next(iter(sent.items()))
            if lsn > message.match_lsn:
                break
            sent.popitem(last=False)
            if lsn == message.match_lsn:
                self.ack_rtt_ms.append((time.perf_counter() - at) * 1000)
                self.ack_wire_ms.append((arrived - at) * 1000)

    def _propose(self, lsn: int, timestamp_ns: int, ops: list[Any], edge_types: set[str]) -> None:
        payload = self._payloads.pop(lsn)
        try:
            position = self.node.propose(payload, timestamp_ns)
        except (NotPrimary, InvalidArgument) as exc:
            log.warning("record %d not replicated (%s); cut from the WAL", lsn, exc)
            self._cut_unknown(lsn, str(exc))
            return
        if position.lsn != lsn:
            raise StorePoisoned(f"replication assigned LSN {position.lsn} to the WAL's record {lsn}")
        self._pending[lsn] = (ops, edge_types)

    def _cut_unknown(self, lsn: int, reason: str) -> None:
        """A record the WAL took but the node did not (it stepped down meanwhile): drop it, outcome unknown."""
        last = self.node.history.last_lsn
        if self.engine.wal.last_lsn > last:
            self.engine.wal.truncate_after(last)
        self._finish(lsn, CommitOutcome(Position(0, lsn), "unknown", reason=reason))

    def _persist(self, ready: Ready) -> None:
        """Truncate and append the WAL (the hard state and any snapshot are already in place)."""
        wal = self.engine.wal
        if ready.truncate_after_lsn is not None and wal.last_lsn > ready.truncate_after_lsn:
            wal.truncate_after(ready.truncate_after_lsn)
            self.log.forget_after(ready.truncate_after_lsn)
            for lsn in [lsn for lsn in self._pending if lsn > ready.truncate_after_lsn]:
                del self._pending[lsn]
            self.counters["truncations"] += 1
        for entry in ready.entries:
            if entry.lsn > wal.last_lsn:  # else the store's own commit: already in the WAL
                wal.append_record(entry.lsn, entry.epoch, entry.timestamp_ns, entry.payload)
                if not entry.payload and self.node.role is Role.PRIMARY and entry.epoch == self.node.epoch:
                    self._barrier = entry.position
            self.log.remember(entry)

    def _apply(self, ready: Ready) -> None:
        engine = self.engine
        first, through = engine.memory_lsn + 1, ready.apply_through_lsn
        if through < first:
            return
        decoded: dict[int, tuple[int, list[Any]]] = {}
        for lsn in range(first, through + 1):
            entry = None if lsn in self._pending else self.log.get(lsn)
            if entry is not None:
                decoded[lsn] = (entry.epoch, decode_ops(entry.payload, lsn))
        missing = [lsn for lsn in range(first, through + 1) if lsn not in self._pending and lsn not in decoded]
        if missing:
            for record in engine.wal.read_from(missing[0], until_lsn=through):
                if record.lsn not in self._pending and record.lsn not in decoded:
                    decoded[record.lsn] = (record.epoch, decode_ops(record.payload, record.lsn))
        epoch_of = self.node.history.epoch_at
        records: list[tuple[int, int, list[Any], set[str] | None]] = []
        for lsn in range(first, through + 1):
            if lsn in self._pending:
                ops, edge_types = self._pending.pop(lsn)
                records.append((lsn, epoch_of(lsn), ops, edge_types))
            else:
                epoch, ops = decoded[lsn]
                records.append((lsn, epoch, ops, None))
        engine.apply_replicated_many(records)  # one state-lock hold; a run of single-row inserts as one upsert

    def _resolve(self, ready: Ready) -> None:
        for outcome in ready.outcomes:
            self._finish(outcome.token.lsn, outcome)
        for event in ready.events:
            self.counters[event.kind] += 1
            self.events.append((time.time(), event.kind, event.detail))
            level = logging.WARNING if event.kind in ("degraded", "stepped_down", "snapshot_needed",
                                                                "retention_limit") else logging.INFO
            log.log(level, "replication %s: %s (epoch %d): %s", self.config.node_id, event.kind, event.epoch,
                    event.detail)
        if self.node.role is not Role.PRIMARY:  # commits the node no longer tracks end as unknown
            for lsn, waiter in list(self._waiters.items()):
                if not waiter.done.is_set():
                    self._finish(lsn, CommitOutcome(Position(0, lsn), "unknown", reason="no longer primary"))

    def _finish(self, lsn: int, outcome: CommitOutcome) -> None:
        with self.lock:  # the committer removes it (it may not be waiting yet)
            waiter = self._waiters.get(lsn)
        if waiter is not None and not waiter.done.is_set():
            waiter.outcome = outcome
            if outcome.status == COMMITTED and outcome.degraded:
                self.counters["commits_degraded"] += 1
            waiter.done.set()
            self._woken += 1
