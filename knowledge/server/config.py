"""Server settings, each cap with its unit in its name, validated once."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from knowledge.errors import InvalidArgument

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def heavy_reads_default(cpus: int | None = None) -> int:
    """Heavy reads one server runs at once by default: 1 on a machine of 2 cores or fewer, else 2.

    The reads of one server share one interpreter lock, and a retrieval is mostly Python holding it: a second
    one beside it on 2 cores mostly trades the lock back and forth with the first, and every commit then waits
    behind both (bench/server.py, 2 cores: with 1 slot instead of 2, commit p50 while 8 clients retrieve 6.9
    ms vs 13.3, p99 27 vs 69, retrievals 134/s vs 102/s, search throughput with 8 clients no lower)."""
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    return 1 if cpus <= 2 else 2


def read_workers_default(cpus: int | None = None) -> int:
    """Threads per read lane (knowledge.server.pool) by default: twice the cores, at least 4.

    bench/server.py on 2 cores, 8 clients searching, interleaved runs against the same store: 1,266 searches/s
    on 4 threads against 922/s with every read on the big pool (0.74 against 0.90 ms of server CPU a
    search); 3 to 8 threads gave 1,120-1,270/s."""
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    return max(4, 2 * cpus)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How `knowledge serve` listens, authenticates and bounds its work.

    TLS: `tls_cert` and `tls_key` (PEM files) together; `client_ca` (PEM) additionally requires every
    client to present a certificate it signed (mTLS). Without TLS the server listens on loopback only,
    unless `insecure` is set. `cert_principals`: with mTLS, a call without a bearer token acts as the
    principal named by its client certificate's common name.
    """

    listen: str = "127.0.0.1:50051"
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    insecure: bool = False
    cert_principals: bool = False
    message_bytes_max: int = 64 << 20
    workers_max: int = 96  # threads for writes, admin calls and streams
    read_workers: int = field(default_factory=read_workers_default)  # threads per read lane (light, heavy);
    # 0: reads run on the workers_max pool too
    calls_max: int = 512  # calls the server holds at once (running or queued); more get RESOURCE_EXHAUSTED
    principal_calls_max: int = 64  # calls one principal has in flight; more get RESOURCE_EXHAUSTED
    heavy_reads_max: int = field(default_factory=heavy_reads_default)  # searches, retrievals, scans
    # running at once; more wait (within their deadline)
    drain_s: float = 30.0  # on SIGTERM: how long in-flight calls may take to finish
    audit_file_bytes_max: int = 64 << 20
    audit_files_max: int = 16
    audit_flush_ms: float = 10.0  # audit entries reach the files within this long (a writer thread batches them);
    # 0: each in the reading call (see knowledge/server/audit_files.py for what a crash may lose)
    changes_poll_ms: int = 50
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus exporter (knowledge.metrics); None: off
    recall_sample_fraction: float = 0.0  # share of searches re-run exactly in the background (sampled recall)
    log_json: bool = False  # one JSON log line per call, with its request id  # a following change feed looks for new commits this often
    faiss_threads: int = 1  # `knowledge serve` runs faiss on this many OpenMP threads per call: the server's
    # parallelism is its concurrent calls (several calls each on a multi-thread team oversubscribe the cores)
    read_processes: int = 0  # processes that serve reads on `listen` (read_processes.py); this one then takes
    # only writes and admin calls, on a port of its own
    read_processes_nice: int | str = "idle"  # the read processes' OS priority below this process's: "idle"
    # (SCHED_IDLE: any other thread that wakes takes the core at once, so a commit's threads never wait behind
    # reads) or 0-19 steps of nice (reads keep a share of the cores whatever else runs)
    gil_switch_ms: float = 1.0  # `knowledge serve` sets sys.setswitchinterval to this: a commit's thread gets
    # the interpreter back sooner while reader threads compute (Python's default is 5 ms)

    def __post_init__(self) -> None:
        for name in ("message_bytes_max", "workers_max", "calls_max", "principal_calls_max", "heavy_reads_max", "faiss_threads",
                     "audit_file_bytes_max", "audit_files_max", "changes_poll_ms"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"server config {name} must be positive, got {getattr(self, name)}")
        if self.read_workers < 0:
            raise InvalidArgument(f"server config read_workers must be 0 (reads on the main pool) or positive, "
                                  f"got {self.read_workers}")
        if not 0 <= self.read_processes <= 64:
            raise InvalidArgument(f"server config read_processes must be in [0, 64], got {self.read_processes}")
        nice = self.read_processes_nice
        if nice != "idle" and (isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19):
            raise InvalidArgument(f"server config read_processes_nice must be 'idle' or an int in [0, 19], got "
                                  f"{nice!r}")
        if not 0 < self.gil_switch_ms <= 100:
            raise InvalidArgument(f"server config gil_switch_ms must be in (0, 100], got {self.gil_switch_ms}")
        if not 0.0 <= self.recall_sample_fraction <= 1.0:
            raise InvalidArgument(f"--recall-sample must be in [0, 1], got {self.recall_sample_fraction}")
        if self.metrics_listen is not None:
            from knowledge.metrics import parse_listen
            parse_listen(self.metrics_listen)
        if not 0 <= self.audit_flush_ms <= 60_000:
            raise InvalidArgument(f"server config audit_flush_ms must be in [0, 60000], got {self.audit_flush_ms}")
        if self.drain_s < 0:
            raise InvalidArgument(f"server config drain_s must be >= 0, got {self.drain_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
        if self.client_ca is not None and self.tls_cert is None:
            raise InvalidArgument("--client-ca (mTLS) needs --tls-cert and --tls-key")
        if self.cert_principals and self.client_ca is None:
            raise InvalidArgument("--cert-principals needs --client-ca (client certificates)")
        host, _ = split_address(self.listen)
        if self.tls_cert is None and not self.insecure and not is_loopback(host):
            raise InvalidArgument(f"refusing to serve plaintext on {self.listen!r}, which is not a loopback "
                                  f"address: give --tls-cert and --tls-key, listen on 127.0.0.1, or force "
                                  f"plaintext with --insecure")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of "host:port" or "[v6]:port"; InvalidArgument when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"listen address {address!r} must be HOST:PORT (e.g. 127.0.0.1:50051)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
