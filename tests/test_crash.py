"""Crash tests with real processes: a writer killed with SIGKILL, the directory lock, WAL corruption on open.

The crash test keeps one store directory across all trials. Each trial starts a writer process that
commits transactions in a loop and reports, on stdout, each transaction's content before it commits
("intent") and its LSN once commit() returned ("ack"). The parent kills it at a random moment,
reopens the store and compares everything visible with a model of the committed transactions:
every acknowledged transaction is there, and the one transaction that was in flight is either
there in full or not at all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

import knowledge
from knowledge.errors import CorruptionError, NotFound, StoreLocked
from knowledge.storage.wal.log import list_segments, scan_segment
from knowledge.storage.wal.record import HEADER_BYTES

KEYS = [f"r{i}" for i in range(24)]
TIMEOUT_S = 60.0

# The writer: a real process, started by fork from a small launcher process that has already imported
# knowledge (numpy, pyarrow, duckdb, pandas), so a trial costs no interpreter start-up. The launcher
# reads "path seed first_tx out err" lines; for each it forks a writer whose stdout and stderr are those
# files, answers "pid <pid>", waits for it and answers "exit <pid> <wait status>".
WRITER = r"""
import json, os, random, sys, traceback

import pandas  # noqa: F401 - warm every lazy import before forking
import pyarrow.compute  # noqa: F401
import pyarrow.ipc  # noqa: F401

import knowledge

KEYS = [f"r{i}" for i in range(24)]


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def write(path, seed, first_tx):
    emit({"opening": 1})
    store = knowledge.open(path, config=knowledge.StoreConfig(segment_bytes_max=16 << 10))
    store.define_node_type("Marker", key="k", properties={"tx": "int"})
    store.define_node_type("Row", key="k", properties={"tx": "int", "pad": "str"})
    store.define_edge_type("Link", source="Row", target="Row", properties={"tx": "int"})
    session = store.session()
    rng = random.Random(seed)
    emit({"ready": store.stats()["lsn"]})
    n = first_tx
    while True:
        n += 1
        up = rng.sample(KEYS, 1 if rng.random() < 0.4 else rng.randint(2, 8))
        rest = [k for k in KEYS if k not in up]
        dels = rng.sample(rest, rng.randint(1, 2)) if rng.random() < 0.3 else []
        links = []
        if len(up) >= 2 and rng.random() < 0.5:
            links = [rng.sample(up, 2) for _ in range(rng.randint(1, 3))]
        unlinks = [rng.sample(KEYS, 2) for _ in range(rng.randint(1, 2))] if rng.random() < 0.2 else []
        emit({"intent": {"n": n, "up": up, "del": dels, "link": links, "unlink": unlinks}})
        with session.transaction() as tx:
            tx.upsert_nodes("Marker", [{"k": f"tx-{n}", "tx": n}])
            if dels:
                tx.delete_nodes("Row", dels)
            tx.upsert_nodes("Row", [{"k": k, "tx": n, "pad": "x" * rng.randint(0, 300)} for k in up])
            if unlinks:
                tx.delete_edges("Link", [{"src": a, "dst": b} for a, b in unlinks])
            if links:
                tx.upsert_edges("Link", [{"src": a, "dst": b, "tx": n} for a, b in links])
        emit({"ack": n, "lsn": tx.lsn})
        if rng.random() < 0.04:
            emit({"checkpoint": store.checkpoint()})


def reply(text):
    os.write(1, (text + "\n").encode())


reply("launcher ready")
for line in sys.stdin:
    path, seed, first_tx, out, err = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            for fd, name in ((1, out), (2, err)):
                target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            write(path, int(seed), int(first_tx))
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(1)
    reply(f"pid {pid}")
    _, status = os.waitpid(pid, 0)
    reply(f"exit {pid} {status}")
"""


class Launcher:
    """The launcher process and its line protocol."""

    def __init__(self, script: str, log_path: str) -> None:
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=log, text=True, bufsize=1)
        assert self.read() == "launcher ready"

    def read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"launcher died: {open(self.log_path).read()}"
        return line.strip()

    def start(self, path: str, seed: int, first_tx: int, out: str, err: str) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{path} {seed} {first_tx} {out} {err}\n")
        self.process.stdin.flush()
        word, pid = self.read().split()
        assert word == "pid"
        return int(pid)

    def wait(self, pid: int) -> int:
        word, child, status = self.read().split()
        assert word == "exit" and int(child) == pid
        return int(status)

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self.process.wait(timeout=TIMEOUT_S)


@dataclass
class Model:
    rows: dict[str, int] = field(default_factory=dict)
    edges: dict[tuple[str, str], int] = field(default_factory=dict)
    markers: set[int] = field(default_factory=set)
    last_acked_lsn: int = 0
    next_tx: int = 0

    def apply(self, intent: dict) -> None:
        n = intent["n"]
        self.markers.add(n)
        for key in intent["del"]:
            self.rows.pop(key, None)
            self.edges = {pair: t for pair, t in self.edges.items() if key not in pair}
        for key in intent["up"]:
            self.rows[key] = n
        for a, b in intent["unlink"]:
            self.edges.pop((a, b), None)
        for a, b in intent["link"]:
            self.edges[(a, b)] = n


@dataclass
class Trial:
    intents: list[dict]
    acked: dict[int, int]  # tx number -> LSN
    checkpoints: int
    killed: bool
    stderr: str


def _wait_for(path: str, marker: str, pid: int) -> bool:
    """Poll the writer's stdout file until a line starts with `marker`; False if the writer ended first."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        with open(path) as f:
            if any(line.startswith(marker) for line in f):
                return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # pragma: no cover - the launcher reaped it: it died by itself
            return False
        time.sleep(0.003)
    raise AssertionError(f"writer never printed {marker}")


def _run_writer(launcher: Launcher, path: str, seed: int, first_tx: int, rng: random.Random,
                log_dir: str) -> Trial:
    out, err = os.path.join(log_dir, "writer.out"), os.path.join(log_dir, "writer.err")
    open(out, "w").close()
    pid = launcher.start(path, seed, first_tx, out, err)
    if rng.random() < 0.15:  # kill during open (WAL recovery, replay into DuckDB) or the first commits
        _wait_for(out, '{"opening"', pid)
        time.sleep(rng.uniform(0.0, 0.3))
    else:  # kill while committing
        _wait_for(out, '{"ready"', pid)
        time.sleep(rng.uniform(0.02, 0.35))
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # pragma: no cover - it died by itself; the status says how
        pass
    status = launcher.wait(pid)
    stderr = open(err).read()

    intents, acked, checkpoints = [], {}, 0
    with open(out) as f:
        lines = f.readlines()
    for line in lines:
        if not line.endswith("\n"):
            continue  # cut short by the kill: as if never written
        message = json.loads(line)
        if "intent" in message:
            intents.append(message["intent"])
        elif "ack" in message:
            acked[message["ack"]] = message["lsn"]
        elif "checkpoint" in message:
            checkpoints += 1
        else:
            assert "opening" in message or "ready" in message, message
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return Trial(intents, acked, checkpoints, killed, stderr)


def _define_schema(store) -> None:
    store.define_node_type("Marker", key="k", properties={"tx": "int"})
    store.define_node_type("Row", key="k", properties={"tx": "int", "pad": "str"})
    store.define_edge_type("Link", source="Row", target="Row", properties={"tx": "int"})


def _check_store(path: str, model: Model, pending: dict | None, where: str) -> bool:
    """Reopen the store and compare everything visible with the model.

    `pending` is the transaction in flight at the kill: it may have become durable. Its marker says
    whether it did; the model takes it in that case and the full comparison then proves that all of
    it, or none of it, is there. Returns whether it was durable.
    """
    with knowledge.open(path) as store:
        s = store.session()
        durable = False
        if pending is not None:
            try:
                s.get("Marker", f"tx-{pending['n']}")
                durable = True
            except NotFound:
                pass
            if durable:
                model.apply(pending)
        lsn = store.stats()["lsn"]
        assert lsn >= model.last_acked_lsn, f"{where}: store LSN {lsn} below acknowledged {model.last_acked_lsn}"

        markers = {row["k"]: row["tx"] for row in s.scan("Marker").to_pylist()}
        assert markers == {f"tx-{n}": n for n in model.markers}, f"{where}: markers differ"
        assert s.count("Marker") == len(model.markers), where

        rows = {row["k"]: row["tx"] for row in s.scan("Row").to_pylist()}
        assert rows == model.rows, f"{where}: rows differ"
        assert s.count("Row") == len(model.rows), where
        # point reads go through the in-memory directory (scan above reads DuckDB only)
        got = {row["k"]: row["tx"] for row in s.get_many("Row", KEYS, columns=["k", "tx"]).to_pylist()}
        assert got == model.rows, f"{where}: get_many differs"
        for key in KEYS:
            if key in model.rows:
                out = {r.key for r in s.neighbors("Row", key, "Link", direction="out")}
                assert out == {b for a, b in model.edges if a == key}, (where, key)
            else:
                with pytest.raises(NotFound):
                    s.get("Row", key)
        if model.rows:
            key = max(model.rows)
            assert s.get("Row", key)["tx"] == model.rows[key], (where, key)

        ids = {row["_id"]: row["k"] for row in s.scan("Row", columns=["k"]).to_pylist()}
        edges = {(ids[e["_src"]], ids[e["_dst"]]): e["tx"] for e in s.edges("Link").to_pylist()}
        assert edges == model.edges, f"{where}: edges differ"
        assert s.stats()["edges"] == {"Link": len(model.edges)}, where
        return durable


def _crash_trials(tmp_path, trials: int, seed: int) -> None:
    script = str(tmp_path / "writer.py")
    with open(script, "w") as f:
        f.write(WRITER)
    launcher = Launcher(script, str(tmp_path / "launcher.err"))
    try:
        _trials(launcher, tmp_path, trials, seed)
    finally:
        launcher.close()


def _trials(launcher: Launcher, tmp_path, trials: int, seed: int) -> None:
    path = str(tmp_path / "store")
    with knowledge.open(path) as store:  # the same schema the writer declares (there a no-op), so that
        _define_schema(store)  # a writer killed before its first commit leaves a checkable store
    model = Model()
    rng = random.Random(seed)
    totals = {"acked": 0, "in_flight_durable": 0, "in_flight_lost": 0, "checkpoints": 0}
    for trial_no in range(trials):
        where = f"trial {trial_no} (seed {seed})"
        trial = _run_writer(launcher, path, seed * 100_003 + trial_no, model.next_tx, rng, str(tmp_path))
        assert trial.killed, f"{where}: writer died by itself:\n{trial.stderr}"

        # acknowledgements come in order, each for the latest intent, with increasing LSNs
        numbers = [intent["n"] for intent in trial.intents]
        assert numbers == list(range(model.next_tx + 1, model.next_tx + 1 + len(numbers))), where
        assert sorted(trial.acked) == numbers[:len(trial.acked)], f"{where}: an ack without its intent"
        lsns = [trial.acked[n] for n in sorted(trial.acked)]
        assert lsns == sorted(set(lsns)), f"{where}: acknowledged LSNs not increasing"
        assert not lsns or lsns[0] > model.last_acked_lsn, where

        for intent in trial.intents[:len(trial.acked)]:
            model.apply(intent)
        if lsns:
            model.last_acked_lsn = lsns[-1]
        totals["acked"] += len(trial.acked)
        totals["checkpoints"] += trial.checkpoints
        pending = trial.intents[len(trial.acked):]
        assert len(pending) <= 1, f"{where}: more than one unacknowledged transaction"
        model.next_tx += len(trial.intents)
        if _check_store(path, model, pending[0] if pending else None, where):
            totals["in_flight_durable"] += 1
        elif pending:
            totals["in_flight_lost"] += 1
    assert totals["acked"] > 0, totals
    print(f"crash trials: {trials}, totals: {totals}, WAL segments now: "
          f"{len(list_segments(os.path.join(path, 'wal')))}")


def test_sigkill_writer_loses_no_acknowledged_transaction(tmp_path):
    _crash_trials(tmp_path, trials=50, seed=20240601)


@pytest.mark.slow
def test_sigkill_writer_loses_no_acknowledged_transaction_long(tmp_path):
    _crash_trials(tmp_path, trials=500, seed=777)


# -- the directory lock -----------------------------------------------------------------------

HOLDER = r'''
import sys
import knowledge
store = knowledge.open(sys.argv[1])
store.define_node_type("Item", key="k", properties={"v": "int"})
with store.session().transaction() as tx:
    tx.upsert_nodes("Item", [{"k": "held", "v": 1}])
print("holding", flush=True)
sys.stdin.read()
store.close()
'''


def test_second_process_gets_store_locked_naming_the_holder(tmp_path):
    path = str(tmp_path / "store")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line == "holding\n", holder.stderr.read() if holder.stderr else line
        lock_before = open(os.path.join(path, "LOCK")).read()
        assert lock_before.strip() == str(holder.pid)

        for _ in range(2):
            with pytest.raises(StoreLocked) as info:
                knowledge.open(path)
            assert info.value.holder_pid == holder.pid
            assert str(holder.pid) in str(info.value)
            assert info.value.path == os.path.abspath(path)
        assert open(os.path.join(path, "LOCK")).read() == lock_before  # the loser wrote nothing
        assert holder.poll() is None  # and the holder is unharmed
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()

    # the kernel dropped the dead holder's lock: the store opens, with the holder's commit in it
    with knowledge.open(path) as store:
        assert store.session().get("Item", "held")["v"] == 1


# -- corruption before the tail ---------------------------------------------------------------


def _snapshot(root: str) -> dict[str, bytes]:
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name != "LOCK":  # holds the PID of the last opener by design
                full = os.path.join(folder, name)
                files[os.path.relpath(full, root)] = open(full, "rb").read()
    return files


def test_corruption_before_the_tail_refuses_to_open_and_changes_nothing(tmp_path):
    path = str(tmp_path / "store")
    with knowledge.open(path) as store:
        store.define_node_type("Item", key="k", properties={"v": "int", "note": "str"})
        s = store.session()
        for i in range(8):
            with s.transaction() as tx:
                tx.upsert_nodes("Item", [{"k": f"i{j}", "v": i, "note": "n" * 40} for j in range(i + 1)])
        last_lsn = store.stats()["lsn"]

    (segment,) = list_segments(os.path.join(path, "wal"))
    records, size = scan_segment(segment, is_last=True)
    assert size == os.path.getsize(segment.path) and len(records) == last_lsn
    offset, victim = records[2]  # LSN 3: an early data record, five more after it
    position = offset + HEADER_BYTES + len(victim.payload) // 2
    data = bytearray(open(segment.path, "rb").read())
    data[position] ^= 0xFF
    open(segment.path, "wb").write(bytes(data))
    before = _snapshot(path)

    name = os.path.basename(segment.path)
    for _ in range(2):  # and a second try finds the same
        with pytest.raises(CorruptionError) as info:
            knowledge.open(path)
        assert info.value.segment == name
        assert info.value.offset == offset
        assert name in str(info.value)
        assert f"offset {offset}" in str(info.value)
        assert _snapshot(path) == before, "a refused open modified the store's files"

    # repairing the byte makes the store open again with everything in it
    data[position] ^= 0xFF
    open(segment.path, "wb").write(bytes(data))
    with knowledge.open(path) as store:
        s = store.session()
        assert store.stats()["lsn"] == last_lsn
        assert s.count("Item") == 8
        assert s.get("Item", "i0")["v"] == 7
        assert s.get("Item", "i7")["v"] == 7


OPEN_AND_READ = r'''
import sys
import knowledge
with knowledge.open(sys.argv[1]) as store:
    print(store.session().get("Item", "i0")["v"])
'''


def test_refused_open_leaves_no_lock_behind_while_its_error_is_alive(tmp_path):
    """CORE BUG (knowledge/store.py, Store.__init__, the `except BaseException:` around self._open()):
    when _open() fails after Tables() connected to DuckDB (e.g. CorruptionError from the WAL scan), only
    the directory lock is released; the half-built Store keeps its DuckDB connection, and with it
    DuckDB's lock on state.duckdb, for as long as the exception's traceback lives (logged, stored,
    `sys.last_traceback`, ...). Meanwhile any other process, even after the WAL was repaired, fails to
    open the store with a raw duckdb.IOException ("Could not set lock on file"), not a KnowledgeError.
    Fix: in that except block also close what _open() created (self.tables / self.wal when set)."""
    path = str(tmp_path / "store")
    with knowledge.open(path) as store:
        store.define_node_type("Item", key="k", properties={"v": "int"})
        for i in range(3):
            with store.session().transaction() as tx:
                tx.upsert_nodes("Item", [{"k": "i0", "v": i}])
    (segment,) = list_segments(os.path.join(path, "wal"))
    records, _ = scan_segment(segment, is_last=True)
    position = records[1][0] + HEADER_BYTES + 1
    data = bytearray(open(segment.path, "rb").read())
    data[position] ^= 0xFF
    open(segment.path, "wb").write(bytes(data))

    with pytest.raises(CorruptionError) as info:
        knowledge.open(path)
    data[position] ^= 0xFF  # repaired, while this process still holds the error
    open(segment.path, "wb").write(bytes(data))
    other = subprocess.run([sys.executable, "-c", OPEN_AND_READ, path], capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    assert info.value.offset == records[1][0]
    assert other.returncode == 0 and other.stdout.strip() == "2", other.stderr[-600:]
