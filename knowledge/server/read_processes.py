"""`knowledge serve --read-processes N`: N reader processes beside the serving one, on the same address.

One server process holds one interpreter lock, so on a machine of several cores its reads top out at about
one core of Python (bench/server.py: 8 clients reached 1.3-1.5x one client's search rate on 2 cores). A read
process holds its own copy of the store and follows the serving process's write-ahead log from the WAL files
(knowledge.storage.wal.tail), applying each record as a replica does. The read processes listen on the one
address with SO_REUSEPORT, so the kernel spreads client connections across them.

The serving process holds that address's port (bound, not listening: `KnowledgeServer._reserve`) and accepts
only on a port of its own, which read processes name to their clients for writes, and on the private socket
below. Its interpreter lock is left to commits: sharing it with reads had put a commit's p99 at 2.7-4.9x idle
while 8 clients retrieved (bench/RESULTS.md). The read processes also run at a lower OS priority
(`ServerConfig.read_processes_nice`), so a commit's threads get a core at once on a saturated machine. With one
read process the address has no listener while that process is being started again; `auto` starts at least 2.

Consistency is that of one server. The serving process (the primary) publishes each `memory_lsn` it applies in
a shared-memory cell before it answers the commits it holds (`Engine.on_memory`); a read in a read process
first waits until that process has applied the cell's value as the read arrived. So a read sees every commit
acknowledged before it started, by any process, and never a record the primary has not applied. Each answer is
still as of one LSN. Writes, administration, audit reads and change feeds arriving at a read process go on to
the primary over a private unix socket (knowledge.server.forward). The WAL segments a read process still needs
are kept at a checkpoint (`Engine.retain_floor`); one that dies or falls out of step is started again from a
fresh copy.

Layout of the shared cells (int64 each): [0] the primary's published LSN, [1] the primary's pid, [2 + k] read
process k's applied LSN.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from knowledge.errors import InvalidArgument, Unavailable

log = logging.getLogger("knowledge.server")
READ_PROCESSES_MAX = 64
CELLS_BYTES = 8 * (2 + READ_PROCESSES_MAX)
READY_TIMEOUT_S = 120.0  # a read process copies nothing itself; it opens its copy and binds
RESTARTS_MAX = 5  # a read process that keeps dying is left dead (and logged) after this many restarts
WATCH_S = 0.5
SCRAPE_TIMEOUT_S = 2.0
PREFIX = "knowledge-readers-"


class Cells:
    """The shared int64 cells (see the module) in a file mapped by every process of the group."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        self.path = path
        if create:
            with open(path, "wb") as f:
                f.write(b"\0" * CELLS_BYTES)
        self._file = open(path, "r+b")  # noqa: SIM115 - kept open for the mapping's life
        self._map = mmap.mmap(self._file.fileno(), CELLS_BYTES)
        self.values = np.frombuffer(self._map, dtype=np.int64)  # aligned 8-byte loads and stores

    @property
    def primary_lsn(self) -> int:
        return int(self.values[0])

    def publish(self, lsn: int) -> None:
        if lsn > self.values[0]:
            self.values[0] = lsn

    def reader_lsn(self, index: int) -> int:
        return int(self.values[2 + index])

    def set_reader_lsn(self, index: int, lsn: int) -> None:
        self.values[2 + index] = lsn

    def close(self) -> None:
        self.values = np.zeros(0, dtype=np.int64)  # drops this view of the mapping
        try:
            self._map.close()
        except BufferError:  # a view still exported (a reader thread mid-load): the mapping goes with the process
            pass
        self._file.close()


def remove_stale_copies() -> int:
    """Remove the copies that a serving process killed before its stop left behind (its pid, in cell 1, is
    gone); return how many went."""
    removed = 0
    for name in os.listdir(tempfile.gettempdir()):
        base = os.path.join(tempfile.gettempdir(), name)
        if not name.startswith(PREFIX) or not os.path.isdir(base):
            continue
        try:
            with open(os.path.join(base, "cells"), "rb") as f:
                pid = int(np.frombuffer(f.read(16), dtype=np.int64)[1])
        except (OSError, ValueError, IndexError):
            continue
        if pid > 0 and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(base, ignore_errors=True)
            removed += 1
    return removed


def check_count(count: int) -> int:
    if not 0 <= count <= READ_PROCESSES_MAX:
        raise InvalidArgument(f"--read-processes must be in [0, {READ_PROCESSES_MAX}], got {count}")
    return count


class _Reader:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[str] | None = None
        self.notify_fd = -1
        self.restarts = 0
        self.retained = True  # its cell holds the WAL back (until it is given up for good)
        self.metrics_port = 0  # its own exporter on loopback, which the serving process's scrapes merge
        self.last_metrics = b""  # its latest scrape: stands in when it does not answer, carried once it dies


class ReadProcesses:
    """The read processes of one serving process (see the module): `attach` to its store's engine, `start`
    once its server listens, `stop` before the store closes."""

    def __init__(self, store: Any, config: Any, count: int, *, audit: bool) -> None:
        check_count(count)
        if not sys.platform.startswith("linux"):
            raise InvalidArgument(f"--read-processes needs Linux (SO_REUSEPORT spreading connections across "
                                  f"processes); this is {sys.platform}")
        if config.cert_principals:
            raise InvalidArgument("--read-processes cannot be combined with --cert-principals yet (a read process "
                                  "would have to vouch for the client certificate to the primary); use bearer tokens")
        if getattr(store.engine, "replicator", None) is not None:
            raise InvalidArgument("--read-processes is for a lone server; a replicated one (--role) has replicas")
        self.store, self.config, self.count, self.audit = store, config, count, audit
        remove_stale_copies()
        self.base = tempfile.mkdtemp(prefix=PREFIX)
        os.chmod(self.base, 0o700)  # the private socket lives here: only this user may reach the primary through it
        self.socket_path = os.path.join(self.base, "primary.sock")
        self.cells = Cells(os.path.join(self.base, "cells"), create=True)
        self.cells.values[1] = os.getpid()
        self.readers = [_Reader(index) for index in range(count)]
        self._lock = threading.Lock()
        self._fds = threading.Lock()  # a notify pipe is never written once closed (its number could be reused)
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._retired_metrics: list[bytes] = []  # the last scrapes of read processes that died (`scrape`)
        self._metrics_lock = threading.Lock()
        self.address = ""
        self.direct_port = 0  # the serving process's own port, which read processes name to their clients

    @property
    def private_address(self) -> str:
        """The primary's private listener, which read processes forward writes and admin calls to."""
        return f"unix:{self.socket_path}"

    def attach(self) -> None:
        """Publish the engine's LSN from now on, and keep the WAL the read processes still need."""
        engine = self.store.engine
        self.cells.publish(engine.memory_lsn)
        engine.on_memory = self._published
        engine.retain_floor = self._floor

    def start(self, address: str) -> None:
        """Start every read process on `address` (the port the primary bound); Unavailable when one fails."""
        self.address = address
        try:
            for reader in self.readers:
                self._spawn(reader)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="knowledge-read-processes", daemon=True)
        self._watcher.start()

    def scrape(self) -> list[bytes]:
        """The metrics of the read processes (their exporters on loopback), so that the serving process's
        counters stay monotonic: a process that does not answer within SCRAPE_TIMEOUT_S counts with its
        previous scrape, and one that died counts with its last scrape for good (what it served after that
        is lost)."""
        import urllib.request
        with self._metrics_lock:
            out = list(self._retired_metrics)
        for reader in self.readers:
            process = reader.process
            port = reader.metrics_port
            if port and process is not None and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                timeout=SCRAPE_TIMEOUT_S) as response:
                        text = response.read()
                    with self._metrics_lock:
                        if reader.process is process and reader.metrics_port == port:  # not retired meanwhile
                            reader.last_metrics = text
                except OSError as exc:
                    log.debug("read process %d: metrics not scraped: %s", reader.index, exc)
            with self._metrics_lock:
                if reader.last_metrics:
                    out.append(reader.last_metrics)
        return out

    def pids(self) -> list[int]:
        return [r.process.pid for r in self.readers if r.process is not None and r.process.poll() is None]

    # -- the engine's hooks (on the committing thread: nothing here may raise or block) -------------------
    def _published(self, lsn: int) -> None:
        self.cells.publish(lsn)
        with self._fds:
            for reader in self.readers:
                if reader.notify_fd >= 0:
                    try:
                        os.write(reader.notify_fd, b"\0")
                    except OSError:  # a full pipe has a wake-up in it already; a closed one, a dead reader
                        pass

    def _floor(self, keep_from: int) -> int:
        floor = keep_from
        for reader in self.readers:  # a dead one too, until it is started again (from a newer copy) or given up
            if reader.retained:
                floor = min(floor, self.cells.reader_lsn(reader.index) + 1)
        return floor

    # -- processes ----------------------------------------------------------------------------------------
    def _spawn(self, reader: _Reader) -> None:
        from knowledge.storage.backup import backup_store
        directory = os.path.join(self.base, f"r{reader.index}")
        shutil.rmtree(directory, ignore_errors=True)
        lsn = backup_store(self.store.engine, directory, view_clock=True)  # consistent; commits wait meanwhile
        self.cells.set_reader_lsn(reader.index, lsn)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        audit_dir = os.path.join(self.store.path, "audit", f"reader-{reader.index}")
        spec = {"data": directory, "wal": os.path.join(self.store.path, "wal"), "cells": self.cells.path,
                "index": reader.index, "notify_fd": read_fd, "forward": self.private_address,
                "direct_port": self.direct_port, "nice": self.config.read_processes_nice,
                "audit": self.audit, "audit_dir": audit_dir,
                "config": {**dataclasses.asdict(self.config), "listen": self.address, "read_processes": 0,
                           "metrics_listen": "127.0.0.1:0" if self.config.metrics_listen else None}}
        process = subprocess.Popen([sys.executable, "-m", "knowledge.server.reader", json.dumps(spec)],
                                   pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                   cwd=self.base, env=_child_environment())
        os.close(read_fd)
        with self._fds:
            reader.process, reader.notify_fd = process, write_fd
        line = _read_line(process, READY_TIMEOUT_S)
        if not line.startswith("ready"):
            process.kill()
            process.wait()
            raise Unavailable(f"read process {reader.index} did not start ({line.strip() or 'no answer'}); see "
                              f"its log on stderr")
        words = line.split()
        reader.metrics_port = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        self._published(self.store.engine.memory_lsn)

    def _watch(self) -> None:
        """Start again a read process that died (a fresh copy), up to RESTARTS_MAX times each."""
        while not self._stopping.wait(WATCH_S):
            for reader in self.readers:
                process = reader.process
                if process is None or process.poll() is None or self._stopping.is_set():
                    continue
                self._retire(reader)
                if reader.restarts >= RESTARTS_MAX:
                    if reader.retained:
                        reader.retained = False
                        log.error("read process %d exited with %s %d times; left stopped", reader.index,
                                  process.returncode, reader.restarts + 1)
                    continue
                reader.restarts += 1
                log.warning("read process %d exited with %s; starting it again (restart %d of %d)", reader.index,
                            process.returncode, reader.restarts, RESTARTS_MAX)
                try:
                    with self._lock:
                        if not self._stopping.is_set():
                            self._spawn(reader)
                except Exception:  # noqa: BLE001 - logged; the next round tries again
                    log.exception("read process %d could not be started again", reader.index)

    def _retire(self, reader: _Reader) -> None:
        with self._metrics_lock:
            if reader.last_metrics:
                self._retired_metrics.append(reader.last_metrics)
                reader.last_metrics = b""
            reader.metrics_port = 0
        with self._fds:
            if reader.notify_fd >= 0:
                os.close(reader.notify_fd)
                reader.notify_fd = -1
        if reader.process is not None and reader.process.stdout is not None:
            reader.process.stdout.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every read process (they drain their calls), then remove their copies (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            engine = self.store.engine
            if engine.on_memory == self._published:
                engine.on_memory = None
                engine.retain_floor = None
            for reader in self.readers:
                if reader.process is not None and reader.process.poll() is None:
                    reader.process.terminate()
            deadline = time.monotonic() + timeout_s
            for reader in self.readers:
                if reader.process is not None:
                    try:
                        reader.process.wait(max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        reader.process.kill()
                        reader.process.wait()
                self._retire(reader)
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(WATCH_S * 4)
        self.cells.close()
        shutil.rmtree(self.base, ignore_errors=True)


def _child_environment() -> dict[str, str]:
    """This environment, with this process's `knowledge` package first on the path, so that a read process runs
    the same code (started in the copies' directory, not in whatever directory this one was started from)."""
    import knowledge
    root = os.path.dirname(os.path.dirname(os.path.abspath(knowledge.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The first line `process` prints (within `timeout_s`), or "" when it exits or says nothing in time."""
    out: list[str] = []
    thread = threading.Thread(target=lambda: out.append(process.stdout.readline() if process.stdout else ""),
                              daemon=True)
    thread.start()
    thread.join(timeout_s)
    return out[0] if out else ""
