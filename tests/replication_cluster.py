"""Real replicated clusters for tests and benchmarks: `knowledge serve --role ...` processes on loopback,
every replication link through an in-process TCP proxy (cut, heal, delay), a load writer."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import knowledge
from knowledge.errors import KnowledgeError
from knowledge.replication.transport import control

READY_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def knowledge_command() -> list[str]:
    script = shutil.which("knowledge")
    return [script] if script else [sys.executable, "-c", "import sys; from knowledge.cli import main; "
                                                          "sys.exit(main())"]


class Proxy:
    """A TCP forwarder 127.0.0.1:port -> target; `cut()` drops every connection and refuses new ones
    until `heal()`; `delay_s` holds each chunk that long (latency injection)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.cut_now = False
        self.delay_s = 0.0
        self.closed = False
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_now:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data or self.cut_now:
                    break
                if self.delay_s:
                    time.sleep(self.delay_s)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(source)
                self._conns.discard(sink)

    def cut(self) -> None:
        self.cut_now = True
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def heal(self) -> None:
        self.cut_now = False

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


class Cluster:
    """Members `zones` (id -> zone), each a `knowledge serve --role` process over a copy of one seed store;
    peer links go through `proxies[(sender, receiver)]` (a Python TCP forwarder in this process, for cuts and
    delays), or straight to the peer's port with `direct=True` (benchmarks: no forwarder's hops in the figures)."""

    def __init__(self, root: str, zones: dict[str, str], policy: str, seed: Callable[[str], str],
                 direct: bool = False) -> None:
        self.root = root
        self.direct = direct
        self.zones = dict(zones)
        self.policy = policy
        os.makedirs(root, exist_ok=True)
        self.token = seed(os.path.join(root, "seed"))
        self.ports = {n: free_port() for n in zones}
        self.proxies = {(a, b): Proxy(self.ports[b]) for a in zones for b in zones if a != b}
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.extra_args: list[str] = []  # added to every node's command line (e.g. --etcd ADDR)
        self.link_tls: Any = None  # a transport.LinkTLS when the nodes serve TLS (status calls use it)
        self.client_tls: Any = None  # a knowledge.TLS for client() then
        for n in zones:
            shutil.copytree(os.path.join(root, "seed"), self.data(n))

    def data(self, n: str) -> str:
        return os.path.join(self.root, n)

    def address(self, n: str) -> str:
        return f"127.0.0.1:{self.ports[n]}"

    def link(self, n: str, m: str) -> str:
        """The address node n reaches peer m at: through the proxy n -> m, or m's own with `direct`."""
        return self.address(m) if m == n or self.direct else self.proxies[(n, m)].address

    def members(self, n: str) -> str:
        """Node n's view: itself at its real address, every peer through the proxy n -> peer (or direct)."""
        return ",".join(f"{m}={z}@{self.link(n, m)}" for m, z in self.zones.items())

    def start(self, n: str, role: str, primary: str | None = None, policy: str | None = None) -> None:
        argv = [*knowledge_command(), "serve", "--data", self.data(n), "--listen", self.address(n), "--no-audit",
                "--role", role, "--zone", self.zones[n], "--members", self.members(n),
                "--commit-policy", policy or self.policy, *self.extra_args]
        if primary is not None:
            argv += ["--primary", self.link(n, primary)]
        log = open(os.path.join(self.root, f"{n}.log"), "a")  # noqa: SIM115 - the process owns it
        self.procs[n] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()

    def wait_ready(self, *names: str) -> None:
        deadline = time.monotonic() + READY_S
        for n in names or tuple(self.procs):
            while True:
                try:
                    control(self.address(n), "status", timeout_s=5, tls=self.link_tls)
                    break
                except KnowledgeError:
                    if self.procs[n].poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"{n} did not start:\n{self.log(n)}") from None
                    time.sleep(0.3)

    def log(self, n: str) -> str:
        with open(os.path.join(self.root, f"{n}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]

    def status(self, n: str) -> dict[str, Any]:
        return control(self.address(n), "status", timeout_s=10, tls=self.link_tls)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except KnowledgeError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what} ({timeout_s:g} s): " + "; ".join(
            f"{n}: {self._safe_status(n)}" for n in self.procs) + "".join(
            f"\n--- {n}.log (tail) ---\n{self._safe_log(n)[-1500:]}" for n in self.procs))

    def _safe_log(self, n: str) -> str:
        try:
            return self.log(n)
        except OSError as exc:  # the timeout's own message must not be lost to a missing log
            return f"(no log: {exc})"

    def _safe_status(self, n: str) -> Any:
        try:
            st = self.status(n)
            return {k: st[k] for k in ("role", "writable", "epoch", "last", "applied_lsn", "commit_lsn", "failure")}
        except KnowledgeError as exc:
            return str(exc)[:80]

    def writable(self, n: str) -> bool:
        return bool(self.status(n)["writable"])

    def kill(self, n: str) -> None:
        proc = self.procs[n]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def isolate(self, n: str) -> None:
        for (a, b), proxy in self.proxies.items():
            if n in (a, b):
                proxy.cut()

    def heal(self, n: str) -> None:
        for (a, b), proxy in self.proxies.items():
            if n in (a, b):
                proxy.heal()

    def client(self, n: str, timeout_s: float = 60.0) -> Any:
        return knowledge.connect(self.address(n), token=self.token, timeout_s=timeout_s, tls=self.client_tls)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
        for proxy in self.proxies.values():
            proxy.close()


def seed_store(path: str) -> str:
    """A store with a Doc type and an admin principal; returns the admin token."""
    with knowledge.open(path) as store:
        store.define_node_type("Doc", key="name", properties={"n": "int"})
        store.create_principal("root", admin=True)
        return store.issue_token("root")


class Writer:
    """A load writer: commits Doc w<i> one at a time to `node`; `acked` holds every key whose commit returned."""

    def __init__(self, cluster: Cluster, node: str, prefix: str = "w") -> None:
        self.cluster = cluster
        self.node = node
        self.prefix = prefix
        self.acked: list[str] = []
        self.acked_at: list[float] = []  # time.monotonic() of each acknowledgement
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self.thread.start()
        return self

    def _run(self) -> None:
        i = 0
        try:
            client = self.cluster.client(self.node, timeout_s=30)
        except KnowledgeError as exc:
            self.errors.append(str(exc))
            return
        with client:
            session = client.session()
            while not self.stop.is_set():
                key = f"{self.prefix}{i}"
                i += 1
                try:
                    tx = session.transaction()
                    tx.upsert_nodes("Doc", [{"name": key, "n": i}])
                    tx.commit()
                    self.acked.append(key)
                    self.acked_at.append(time.monotonic())
                except KnowledgeError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    time.sleep(0.05)
                except Exception as exc:  # noqa: BLE001 - a killed server breaks the channel in many ways
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(90)


def missing_keys(cluster: Cluster, node: str, keys: list[str]) -> list[str]:
    """The keys of `keys` that node cannot read."""
    with cluster.client(node) as client:
        session = client.session()
        present = set()
        table = session.scan("Doc", columns=["name"])
        present = set(table.column("name").to_pylist())
    return [k for k in keys if k not in present]


class Etcd:
    """A real single-member etcd (Debian's etcd-server, /usr/bin/etcd) on free loopback ports."""

    BINARY = "/usr/bin/etcd"

    def __init__(self, root: str) -> None:
        self.client_port, peer_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.client_port}"
        os.makedirs(root, exist_ok=True)
        binary = self.BINARY if os.path.exists(self.BINARY) else shutil.which("etcd") or self.BINARY
        self.log_path = os.path.join(root, "etcd.log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary, "--name", "t", "--data-dir", os.path.join(root, "etcd-data"),
                 "--listen-client-urls", f"http://{self.address}", "--advertise-client-urls", f"http://{self.address}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                 "--initial-cluster", f"t=http://127.0.0.1:{peer_port}"],
                stdout=log, stderr=subprocess.STDOUT)
        from knowledge.replication.etcd_kv import EtcdKV
        kv = EtcdKV(self.address)
        deadline = time.monotonic() + READY_S
        while True:
            try:
                kv.get("/ready")
                return
            except KnowledgeError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"etcd did not start: {open(self.log_path).read()[-2000:]}") from None
                time.sleep(0.2)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def etcd_available() -> bool:
    return os.path.exists(Etcd.BINARY) or shutil.which("etcd") is not None


def primary_of(cluster: Cluster) -> str | None:
    """The member that takes writes now (None when none does)."""
    for n, proc in cluster.procs.items():
        if proc.poll() is None:
            try:
                if cluster.writable(n):
                    return n
            except KnowledgeError:
                continue
    return None


def wait_primary(cluster: Cluster, among: list[str] | None = None, timeout_s: float = 120.0) -> str:
    """Wait until one of `among` (default: any member) takes writes; its id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = primary_of(cluster)
        if found is not None and (among is None or found in among):
            return found
        time.sleep(0.1)
    raise AssertionError("no primary elected: " + "; ".join(f"{n}: {cluster._safe_status(n)}" for n in cluster.procs))
