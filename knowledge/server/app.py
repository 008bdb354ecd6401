"""KnowledgeServer: the gRPC server around one open store, and `serve()`, which runs it until SIGTERM.

Listens with TLS (optionally mTLS) or, on loopback only unless forced, in plaintext; serves the
knowledge.v1 service, standard health checking and server reflection (so grpcurl works). Shutdown
drains: health turns NOT_SERVING, new calls get UNAVAILABLE, calls in flight (commits included) run to
their end within `drain_s` and are answered, change feeds end, and only then does the store close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from knowledge.errors import KnowledgeError, Unavailable
from knowledge.server import status
from knowledge.server.audit_files import PersistentAudit
from knowledge.server.calls import Calls, PrimaryRole, Role
from knowledge.server.changes import stream
from knowledge.server.config import ServerConfig, split_address
from knowledge.server.lifecycle import Lifecycle
from knowledge.server.message_cap import MessageCap, transport_limit
from knowledge.server.pool import HandlerPool
from knowledge.server.reads import Reads
from knowledge.server.v1 import knowledge_pb2 as pb
from knowledge.server.v1 import knowledge_pb2_grpc as pb_grpc
from knowledge.server.writes import Writes

log = logging.getLogger("knowledge.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Knowledge"].full_name
INSECURE_WARNING = ("WARNING: serving PLAINTEXT gRPC on a non-loopback address (--insecure): bearer tokens and "
                    "data cross the network unencrypted. Use --tls-cert/--tls-key.")


class Servicer(Reads, Writes, Lifecycle, pb_grpc.KnowledgeServicer):
    """The knowledge.v1.Knowledge service: every handler a thin shell over a Store/Session method."""

    def __init__(self, calls: Calls, config: ServerConfig, stop: threading.Event) -> None:
        self.calls = calls
        self.config = config
        self.stop = stop

    def Changes(self, request: pb.ChangesRequest, context: grpc.ServicerContext) -> Any:
        """A stream counts as a call in flight (gate and per-principal cap) until it ends; a drain ends it."""
        calls = self.calls
        try:
            calls.gate.enter()
        except KnowledgeError as exc:
            status.abort(context, exc)
        try:
            name, principal = calls.principal_name(context)
            calls.limiter.acquire(name)
            try:
                session = calls.session(context, name, principal)
                yield from stream(session, request.after_lsn, request.follow, self.stop,
                                  self.config.changes_poll_ms / 1000, context.is_active)
            finally:
                calls.limiter.release(name)
        except KnowledgeError as exc:
            status.abort(context, exc)
        finally:
            calls.gate.leave()


class KnowledgeServer:
    """A gRPC server over `store` (which it closes on stop when `owns_store`)."""

    def __init__(self, store: Any, config: ServerConfig | None = None, *, role: Role | None = None,
                 owns_store: bool = False, reuse_port: bool = False, interceptors: tuple[Any, ...] = (),
                 audit_dir: str | None = None) -> None:
        self.store = store
        self.config = config or ServerConfig()
        self.owns_store = owns_store
        self.calls = Calls(store, role or PrimaryRole(), self.config.principal_calls_max, self.config.cert_principals,
                           self.config.heavy_reads_max)
        from knowledge.metrics import ServerMetrics, json_logging
        if self.config.log_json and not any(getattr(h, "knowledge_json", False) for h in log.handlers):
            json_logging(log).knowledge_json = True  # type: ignore[attr-defined]
        self.metrics = ServerMetrics(self.config.metrics_listen, self.config.recall_sample_fraction,
                                     logger=log if self.config.log_json else None)
        self.calls.metrics = self.metrics
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.audit: PersistentAudit | None = None
        if getattr(store, "audit", None) is not None:
            self.audit = PersistentAudit(store.audit, audit_dir or os.path.join(store.path, "audit"),
                                         file_bytes_max=self.config.audit_file_bytes_max,
                                         files_max=self.config.audit_files_max,
                                         flush_ms=self.config.audit_flush_ms)
            store.audit = self.audit
        limit = self.config.message_bytes_max
        self.executor = HandlerPool(max_workers=self.config.workers_max, thread_name_prefix="knowledge-rpc",
                                    initializer=_set_faiss_threads, initargs=(self.config.faiss_threads,))
        self.lanes = {lane: HandlerPool(max_workers=self.config.read_workers, thread_name_prefix=f"knowledge-{lane}",
                                        initializer=_set_faiss_threads, initargs=(self.config.faiss_threads,))
                      for lane in ("light", "heavy")} if self.config.read_workers else {}
        self.server = grpc.server(
            self.executor,
            maximum_concurrent_rpcs=self.config.calls_max, interceptors=[*interceptors, MessageCap(limit, self.lanes)],
            options=[("grpc.max_receive_message_length", transport_limit(limit)),
                     ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 1 if reuse_port else 0)])  # this server is a read process: it
        # shares the port with the others (and the serving process, which holds it: _reserve)
        pb_grpc.add_KnowledgeServicer_to_server(Servicer(self.calls, self.config, self._stop), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        self._reserved: socket.socket | None = None  # with read processes: the address's port, held (below)
        try:
            self.port = self._reserve() if self.config.read_processes else self._bind()
        except RuntimeError as exc:  # grpc's "Failed to bind"
            self._release()
            raise Unavailable(f"cannot listen on {self.config.listen!r} ({exc}): is the port in use?") from None
        if not self.port:
            self._release()
            raise Unavailable(f"cannot listen on {self.config.listen!r}: is the port in use?")
        host = self.config.listen.rpartition(":")[0]
        self.address = f"{host}:{self.port}"
        self.readers: Any = None  # knowledge.server.read_processes.ReadProcesses, with config.read_processes
        if self.config.read_processes:
            self._add_readers(role)

    def _add_readers(self, role: Role | None) -> None:
        from knowledge.errors import InvalidArgument
        from knowledge.server.read_processes import ReadProcesses
        if role is not None and not isinstance(role, PrimaryRole):
            self._release()
            raise InvalidArgument("read_processes is for a lone server (a replica or a replicated primary has "
                                  "replicas to read from)")
        try:
            readers = ReadProcesses(self.store, self.config, self.config.read_processes,
                                    audit=self.audit is not None)
        except BaseException:
            self._release()
            raise
        self.server.add_insecure_port(readers.private_address)  # forwarded calls (a 0700 directory)
        readers.direct_port = self.bind_direct()  # where clients of read processes send writes
        readers.attach()
        if self.audit is not None:
            self.audit.read_processes = True  # audit_log() answers with the read processes' entries too
        self.readers = readers

    def _reserve(self) -> int:
        """Hold the port of `config.listen` without accepting on it (bound, not listening, SO_REUSEPORT), so
        that the read processes alone accept there and this process's interpreter is left to writes; return
        the port. RuntimeError (as grpc's bind) when it is taken."""
        host, port = split_address(self.config.listen)
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise RuntimeError(str(exc)) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise RuntimeError(str(exc)) from None
        self._reserved = sock
        return int(sock.getsockname()[1])

    def bind_direct(self) -> int:
        """Also listen on a port of its own on the same host (TLS as configured), for clients that a read
        process told to send writes straight here (knowledge.server.read_processes); return the port."""
        host = self.config.listen.rpartition(":")[0]
        port = self._bind(f"{host}:0")
        if not port:
            raise Unavailable(f"cannot listen on a second port on {host!r} for writes")
        return port

    def _bind(self, address: str | None = None) -> int:
        config = self.config
        address = address or config.listen
        if not config.tls:
            return self.server.add_insecure_port(address)
        with open(config.tls_key, "rb") as f:  # type: ignore[arg-type]
            key = f.read()
        with open(config.tls_cert, "rb") as f:  # type: ignore[arg-type]
            cert = f.read()
        client_ca = None
        if config.client_ca:
            with open(config.client_ca, "rb") as f:
                client_ca = f.read()
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                  require_client_auth=client_ca is not None)
        return self.server.add_secure_port(address, credentials)

    def _release(self) -> None:
        """What a server that failed to start, or has stopped, gives back: the held port and the audit files."""
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        self._unwrap_audit()

    def _unwrap_audit(self) -> None:
        """Close the audit files and give the store back its own audit ring."""
        if self.audit is not None:
            self.audit.close()
            if self.store.audit is self.audit:
                self.store.audit = self.audit.ring

    def start(self) -> KnowledgeServer:
        self.server.start()
        if self.readers is not None:
            try:
                self.readers.start(self.address)
            except BaseException:
                self.stop(0)
                raise
        if self.readers is not None:
            self.metrics.peers = self.readers.scrape  # the read processes serve the reads: their calls count
        self.metrics.start(self.store)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, drain_s: float | None = None) -> None:
        """Drain and stop (idempotent): calls in flight finish within `drain_s` (default config.drain_s)."""
        if self._stopped.is_set():
            return
        grace = self.config.drain_s if drain_s is None else drain_s
        if self.readers is not None:
            self.readers.stop(grace + 5)  # first: their forwarded calls still reach this server
        self.health.enter_graceful_shutdown()
        self.calls.gate.close()
        self._stop.set()
        self.server.stop(grace).wait()
        if not self.calls.gate.wait_idle(grace + 5):
            log.warning("%d calls still running after the drain; closing anyway", self.calls.gate.inflight)
        for pool in (self.executor, *self.lanes.values()):
            pool.shutdown(wait=False)  # their idle handler threads end
        self.metrics.close()
        self._release()
        if self.owns_store:
            self.store.close()
        self._stopped.set()

    def __enter__(self) -> KnowledgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(data: str, config: ServerConfig, *, role: Role | None = None, audit: bool = True,
          out: TextIO = sys.stdout) -> int:
    """Open the store at `data` (auditing on by default), serve it until SIGTERM or SIGINT, then drain
    and close it. Prints one `listening on ADDRESS` line when ready. Returns the exit code (0)."""
    import dataclasses

    import knowledge

    store_config = dataclasses.replace(knowledge.StoreConfig(), audit=audit)
    store = knowledge.open(data, create=False, config=store_config)
    try:
        server = KnowledgeServer(store, config, role=role, owns_store=True)
    except BaseException:
        store.close()
        raise
    if config.insecure and not config.tls:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        log.warning(INSECURE_WARNING)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    with serving_process(config):
        try:
            server.start()
            mode = "mTLS" if config.client_ca else "TLS" if config.tls else "plaintext"
            extra = f", {config.read_processes} read processes" if server.readers is not None else ""
            print(f"listening on {server.address} ({mode}, store {store.path}, audit "
                  f"{'on' if audit else 'off'}{extra})", file=out, flush=True)
            if server.metrics.exporter is not None:
                print(f"metrics on {server.metrics.exporter.url}", file=out, flush=True)
            while not stop.wait(0.5):
                pass
            print("draining: finishing calls in flight", file=out, flush=True)
        finally:
            server.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("stopped", file=out, flush=True)
    return 0


@contextlib.contextmanager
def serving_process(config: ServerConfig) -> Iterator[None]:
    """The interpreter settings of a `knowledge serve` process (plain or replicated) while it serves: the
    switch interval `config.gil_switch_ms` (restored after) and faiss's team size for this thread."""
    switch_s = sys.getswitchinterval()
    sys.setswitchinterval(config.gil_switch_ms / 1000)
    _set_faiss_threads(config.faiss_threads)
    try:
        yield
    finally:
        sys.setswitchinterval(switch_s)


def _set_faiss_threads(threads: int) -> None:
    """faiss's OpenMP team size for calls made by this thread. OpenMP keeps it per thread (a thread that never
    set it uses the default, one per core), so each handler thread sets its own as it starts: set only in the
    main thread, as before, it left the handlers' parallel faiss calls (several query vectors) on a team of
    one thread per core beside the other calls in flight."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a core dependency
        return
    faiss.omp_set_num_threads(threads)
