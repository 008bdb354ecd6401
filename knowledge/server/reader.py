"""One read process of `knowledge serve --read-processes N` (knowledge.server.read_processes): serves reads
from its own copy of the store on the serving process's address, following that process's WAL files, and
passes every other call on to it (knowledge.server.forward).

    python -m knowledge.server.reader SPEC_JSON   (started by the serving process, never by hand)

It prints `ready` once it listens, and exits when the serving process goes (its wake-up pipe closes), on
SIGTERM (after a drain), or when it can no longer follow the log (the serving process starts a fresh one).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any

from knowledge.errors import Unavailable

log = logging.getLogger("knowledge.server")
CATCH_UP_S = 5.0  # a read waits at most this long for this process to reach the primary's LSN
RECORDS_PER_APPLY = 2000
WAKE_POLL_S = 0.25  # the follower looks at the cell this often even without a wake-up


class ReaderRole:
    """A read process's Role: every read first catches up with what the primary had applied as it arrived."""

    def __init__(self, engine: Any, cells: Any) -> None:
        self.engine, self.cells = engine, cells
        self.applied = threading.Condition(threading.Lock())
        self.failure: BaseException | None = None

    def primary_address(self) -> str | None:
        return None  # writes never reach this process's handlers: the Forwarder passes them on

    def read_barrier(self) -> None:
        target = self.cells.primary_lsn
        if self.engine.memory_lsn >= target:
            return
        from knowledge.server.pool import blocking
        with blocking():
            if not self.wait_readable(target, CATCH_UP_S):
                raise Unavailable(f"this read process is behind the primary (at LSN {self.engine.memory_lsn}, "
                                  f"needs {target}); retry: the next connection may reach another process")

    def wait_readable(self, token: int | tuple[int, int], timeout_s: float) -> bool:
        """Whether this process applied `token` (an LSN, or (epoch, lsn)) within `timeout_s`."""
        lsn = token[1] if isinstance(token, tuple) else token
        deadline = time.monotonic() + timeout_s
        with self.applied:
            while self.engine.memory_lsn < lsn:
                left = deadline - time.monotonic()
                if left <= 0 or self.failure is not None:
                    return False
                self.applied.wait(min(left, WAKE_POLL_S))
        return True


class Follower(threading.Thread):
    """Applies the primary's records from its WAL files up to the published LSN, on each wake-up."""

    def __init__(self, store: Any, role: ReaderRole, wal_directory: str, notify_fd: int, index: int,
                 on_end: Any) -> None:
        super().__init__(name="knowledge-follower", daemon=True)
        from knowledge.storage.wal.tail import WalTail
        self.store, self.role, self.fd, self.index, self.on_end = store, role, notify_fd, index, on_end
        engine = store.engine
        self.tail = WalTail(wal_directory, engine.memory_lsn, keyring=getattr(engine, "keyring", None))
        self.stopped = threading.Event()

    def run(self) -> None:
        from knowledge.storage.ops import decode_ops
        engine, cells, role = self.store.engine, self.role.cells, self.role
        reason = "stopped"
        try:
            while not self.stopped.is_set():
                ready, _, _ = select.select([self.fd], [], [], WAKE_POLL_S)
                if ready and not os.read(self.fd, 4096):
                    reason = "the serving process went away"
                    return
                target = cells.primary_lsn
                while engine.memory_lsn < target:
                    records = self.tail.read(target, RECORDS_PER_APPLY)
                    if not records:
                        break
                    engine.apply_replicated_many([(r.lsn, r.epoch, decode_ops(r.payload, r.lsn), None)
                                                  for r in records])
                    cells.set_reader_lsn(self.index, engine.memory_lsn)
                    with role.applied:
                        role.applied.notify_all()
        except BaseException as exc:  # noqa: BLE001 - this copy can no longer be brought up to date
            role.failure = exc
            reason = f"cannot follow the log: {type(exc).__name__}: {exc}"
            log.error("read process %d %s", self.index, reason)
        finally:
            with role.applied:
                role.applied.notify_all()
            if not self.stopped.is_set():
                self.on_end(reason)


def lower_priority(nice: int | str) -> None:
    """Run this process (and the threads it starts from now on) below the serving process: SCHED_IDLE for
    "idle", else `nice` steps lower."""
    if nice == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif nice:
        os.nice(int(nice))


def main(argv: list[str] | None = None) -> int:
    import knowledge
    from knowledge.server.app import KnowledgeServer, serving_process
    from knowledge.server.config import ServerConfig
    from knowledge.server.forward import Forwarder
    from knowledge.server.read_processes import Cells

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    lower_priority(spec.get("nice", 0))  # below the serving process: its commits get a core first
    config = ServerConfig(**spec["config"])
    store_config = dataclasses.replace(knowledge.StoreConfig(), audit=spec["audit"], ttl_sweep_rows_per_s=0.0)
    store = knowledge.open(spec["data"], create=False, config=store_config)  # the copy; only the follower writes it
    cells = Cells(spec["cells"])
    role = ReaderRole(store.engine, cells)
    forwarder = Forwarder(spec["forward"], config.message_bytes_max, spec.get("direct_port") or 0)
    server = KnowledgeServer(store, config, role=role, owns_store=True, reuse_port=True, interceptors=(forwarder,),
                             audit_dir=spec["audit_dir"])  # its audit files beside the primary's: DATA/audit/reader-K/
    stop = threading.Event()
    ended: list[str] = []

    def end(reason: str) -> None:
        ended.append(reason)
        stop.set()

    follower = Follower(store, role, spec["wal"], spec["notify_fd"], spec["index"], end)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with serving_process(config):
        try:
            server.start()
            follower.start()
            exporter = server.metrics.exporter
            print(f"ready {exporter.port if exporter is not None else 0}", flush=True)
            while not stop.wait(0.5):
                pass
        finally:
            follower.stopped.set()
            server.stop()
            forwarder.close()
            cells.close()
    if ended and ended[0] != "the serving process went away":
        print(f"read process {spec['index']}: {ended[0]}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
