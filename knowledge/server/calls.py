"""What every call goes through before and after its handler: the deadline check, authentication
(bearer token, or an mTLS certificate's name) to a session, the per-principal in-flight cap, the role
check of writes, and the mapping of exceptions to status codes."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from knowledge.errors import (
    DeadlineExceeded,
    InvalidArgument,
    KnowledgeError,
    NotPrimary,
    PermissionDenied,
    ResourceExhausted,
    SnapshotMoved,
    Unauthenticated,
    Unavailable,
)
from knowledge.server import status
from knowledge.server.pool import Slots, blocking

log = logging.getLogger("knowledge.server")
AUTH_KEY = "authorization"
AS_KEY = "knowledge-as"  # an admin acts as this catalog principal
AS_PRINCIPAL_KEY = "knowledge-as-principal"  # an admin acts as this ad-hoc principal (JSON)
MIN_LSN_KEY = "knowledge-min-lsn"  # a read waits (bounded) until this LSN or "epoch/lsn" token is applied here
MIN_LSN_TIMEOUT_KEY = "knowledge-min-lsn-timeout-ms"  # how long it may wait (default MIN_LSN_TIMEOUT_MS)
MIN_LSN_TIMEOUT_MS = 5000
LSN_KEY = "knowledge-lsn"  # a read must be answered as of exactly this LSN (a remote snapshot() block)
TOKENS_CACHED_MAX = 4096  # bearer tokens whose principal a server remembers (Calls._tokens)
TOKEN_HINT = "issue one with `knowledge principal token DIR NAME` and send 'authorization: Bearer <token>'"


class Role(Protocol):
    """Whether this server takes writes; replication installs its own (a replica names its primary)."""

    def primary_address(self) -> str | None:
        """None when this server is the primary, else the primary's address ("" when unknown)."""


class PrimaryRole:
    """The default role: a lone server is its own primary."""

    def primary_address(self) -> str | None:
        return None


class ReplicaRole:
    """A server that refuses writes with NotPrimary naming `primary`."""

    def __init__(self, primary: str) -> None:
        self.primary = primary

    def primary_address(self) -> str | None:
        return self.primary


class Limiter:
    """At most `calls_max` calls in flight per principal name; past it a call fails at once."""

    def __init__(self, calls_max: int) -> None:
        self.calls_max = calls_max
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str) -> None:
        with self._lock:
            count = self._counts.get(name, 0)
            if count >= self.calls_max:
                raise ResourceExhausted(f"principal {name!r} already has {count} calls in flight (the server's "
                                        f"--principal-calls-max); wait for some to finish or retry with backoff")
            self._counts[name] = count + 1

    def release(self, name: str) -> None:
        with self._lock:
            count = self._counts[name] - 1
            if count:
                self._counts[name] = count
            else:
                del self._counts[name]


class Gate:
    """Counts calls in flight so a drain can wait for them; refuses new ones once closed."""

    IDLE_POLL_S = 0.01  # how often wait_idle looks (only a drain waits; calls never do)

    def __init__(self) -> None:
        self._inflight = 0
        self._closed = False
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down; retry against another server or later")
            self._inflight += 1

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no call is in flight; False when `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while self._inflight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.IDLE_POLL_S, left))
        return True

    @property
    def inflight(self) -> int:
        return self._inflight


class Calls:
    """The per-server state the call wrapper needs: the store, the role, the limiter and the gate."""

    def __init__(self, store: Any, role: Role, principal_calls_max: int, cert_principals: bool,
                 heavy_reads_max: int = 2) -> None:
        self.store = store
        # Heavy reads (search, retrieve, scans) hold the store's state lock for much of their run and the GIL
        # for the rest: more of them at once than the machine has cores gains no throughput, and every one
        # queued on the state lock delays commits. Past the slots they wait here, releasing everything.
        self.heavy_reads = Slots(heavy_reads_max)
        self.role = role
        self._read_barrier = getattr(role, "read_barrier", None)  # a read process: catch up with the primary first
        self.limiter = Limiter(principal_calls_max)
        self.gate = Gate()
        self.cert_principals = cert_principals
        self.metrics: Any = None  # knowledge.metrics.ServerMetrics, set by KnowledgeServer
        self._local = threading.local()
        # bearer token -> the principal it authenticated as: valid while the store's catalog still holds that
        # very Principal object (the catalog replaces a principal's object on every change to it, its tokens
        # included, so a revoked token, a drop or a grant change misses here and is checked afresh)
        self._tokens: dict[str, Any] = {}

    def principal_name(self, context: grpc.ServicerContext, metadata: dict[str, Any] | None = None
                       ) -> tuple[str, Any]:
        """(name, principal) of the caller, from its bearer token (or its certificate's common name)."""
        if self._read_barrier is not None:  # a read process: tokens and grants as of the primary's LSN too
            self._read_barrier()
        metadata = call_metadata(context) if metadata is None else metadata
        header = metadata.get(AUTH_KEY)
        if header is None:
            if self.cert_principals:
                names = (context.auth_context() or {}).get("x509_common_name") or []
                if names:
                    name = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
                    principal = self.store.catalog.principals.get(name)
                    if principal is None:
                        raise Unauthenticated(f"the client certificate names {name!r}, which is no principal "
                                              f"here; create it with `knowledge principal create`")
                    return name, principal
            raise Unauthenticated(f"no bearer token: {TOKEN_HINT}")
        principal = self._tokens.get(header)
        if principal is not None:
            store = self.store
            store.engine.check_open()  # what store.authenticate checks first
            if store.catalog.principals.get(principal.name) is principal:
                return principal.name, principal
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(f"the authorization metadata must be 'Bearer <token>': {TOKEN_HINT}")
        try:
            principal = self.store.authenticate(token.strip())
        except PermissionDenied:
            self._tokens.pop(header, None)
            raise Unauthenticated(f"unknown or revoked token: {TOKEN_HINT}") from None
        if len(self._tokens) >= TOKENS_CACHED_MAX:
            self._tokens.clear()
        self._tokens[header] = principal
        return principal.name, principal

    def session(self, context: grpc.ServicerContext, name: str, principal: Any,
                metadata: dict[str, Any] | None = None) -> Any:
        """The session the call runs in: the caller's, or (admins) the principal it acts as."""
        metadata = call_metadata(context) if metadata is None else metadata
        if metadata.get(MIN_LSN_KEY):
            self.wait_min_lsn(str(metadata[MIN_LSN_KEY]), metadata.get(MIN_LSN_TIMEOUT_KEY))
        acting = metadata.get(AS_KEY)
        adhoc = metadata.get(AS_PRINCIPAL_KEY)
        if (acting or adhoc) and not principal.admin:
            raise PermissionDenied(f"only admins may act as another principal ({name!r} is not an admin)")
        if adhoc:
            return self.store.session(_adhoc_principal(adhoc))
        target = acting or name
        sessions = self._local.__dict__.setdefault("sessions", {})
        session = sessions.get(target)
        if session is None or session.store is not self.store:
            if target not in self.store.catalog.principals:
                raise InvalidArgument(f"no principal named {target!r} to act as")
            session = sessions[target] = self.store.session(target)
        return session

    def wait_min_lsn(self, text: str, timeout_ms: str | None) -> None:
        """Read-your-writes: wait until the commit token `text` ("lsn" or "epoch/lsn") may be read here;
        DeadlineExceeded past the bound, InvalidArgument for a malformed token."""
        epoch, sep, lsn = text.rpartition("/")
        if not lsn.isdigit() or (sep and not epoch.isdigit()) or not (timeout_ms or "0").isdigit():
            raise InvalidArgument(f"{MIN_LSN_KEY} must be an LSN or epoch/lsn and {MIN_LSN_TIMEOUT_KEY} whole "
                                  f"milliseconds, got {text!r} and {timeout_ms!r}")
        timeout_s = int(timeout_ms or MIN_LSN_TIMEOUT_MS) / 1000
        wait = getattr(self.role, "wait_readable", None)
        if wait is not None:
            with blocking():  # the read lane runs the reads queued behind this one meanwhile
                ready = wait(int(lsn) if not sep else (int(epoch), int(lsn)), timeout_s)
        else:  # a lone server applies every commit before acknowledging it
            ready = self.store.memory_lsn >= int(lsn)
        if not ready:
            raise DeadlineExceeded(f"this server has not applied {text} within {timeout_s:g} s (replica lag); "
                                   f"retry, or read from the primary")

    def check_writable(self) -> None:
        primary = self.role.primary_address()
        if primary is not None:
            raise NotPrimary(f"this server is not the primary; send writes to {primary or 'the primary'}",
                             primary=primary)


def call_metadata(context: grpc.ServicerContext) -> dict[str, Any]:
    """The call's metadata as a dict (the first value of each key)."""
    out: dict[str, Any] = {}
    for key, value in context.invocation_metadata() or ():
        out.setdefault(key, value)
    return out


def _adhoc_principal(text: str) -> Any:
    from knowledge import Principal
    try:
        doc = json.loads(text)
        return Principal(str(doc["name"]), frozenset(doc.get("read", ())), frozenset(doc.get("write", ())),
                         bool(doc.get("admin", False)))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"{AS_PRINCIPAL_KEY} must be JSON {{name, read, write, admin}}: {exc}") from None


def _pinned_lsn(metadata: dict[str, Any]) -> int | None:
    value = metadata.get(LSN_KEY)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{LSN_KEY} metadata must be an LSN (an int), got {value!r}") from None


def session_lsn(session: Any) -> int:
    """The LSN a session is told: the store's for admins; for others that of the last write they could see
    (Session's view LSN), so that invisible writes do not show through the wire either."""
    if session.principal.admin:
        return session.store.memory_lsn
    view_lsn = getattr(session, "_view_lsn", None)
    return view_lsn() if view_lsn is not None else session.stats()["lsn"]


def _check_pinned(session: Any, lsn: int) -> None:
    """SnapshotMoved unless the session's LSN is still `lsn`; a non-admin's error names only its view LSN,
    never the store's."""
    now = session_lsn(session)
    if now == lsn:
        return
    if session.principal.admin:
        raise SnapshotMoved(f"the store is at LSN {now}, not the snapshot's LSN {lsn} (a commit landed during the "
                            f"snapshot block); run the block again")
    raise SnapshotMoved(f"what this principal sees moved to LSN {now}, past the snapshot's LSN {lsn} (a commit it "
                        f"can see landed during the snapshot block); run the block again")


def _run(method: Callable[..., Any], servicer: Any, request: Any, session: Any, context: Any, write: bool,
         metadata: dict[str, Any]) -> Any:
    """The handler itself; a read pinned to an LSN is checked to have been answered as of that LSN (reads
    are each consistent at one LSN, and LSNs only grow: equal before and after means that one; for a
    non-admin, the view LSN: only writes it could see move it)."""
    pinned = None if write else _pinned_lsn(metadata)
    if pinned is None:
        return method(servicer, request, session, context)
    _check_pinned(session, pinned)
    reply = method(servicer, request, session, context)
    _check_pinned(session, pinned)
    return reply


def _check_deadline(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before the server started it; give it more time")


_ARGUMENT_ERRORS = (TypeError, ValueError, OverflowError, UnicodeError)


def _heavy_slot(calls: Calls, context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if not calls.heavy_reads.acquire(timeout=None if remaining is None else max(0.0, remaining)):
        raise DeadlineExceeded("the call's deadline passed while it waited for a read slot (the server's "
                               "--heavy-reads-max); give it more time or lower the load")


def handler(*, write: bool = False, admin: bool = False,
            heavy: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a servicer method `method(self, request, session, context)` with the checks every call needs."""
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            calls: Calls = self.calls
            name = None
            try:
                calls.gate.enter()
            except KnowledgeError as exc:
                status.abort(context, exc)
            try:
                _check_deadline(context)
                metadata = call_metadata(context)
                name, principal = calls.principal_name(context, metadata)
                calls.limiter.acquire(name)
                try:
                    session = calls.session(context, name, principal, metadata)
                    if admin and not session.principal.admin:
                        raise PermissionDenied(f"{method.__name__} needs an admin principal; "
                                               f"{session.principal.name!r} is not one")
                    if write:
                        calls.check_writable()
                    if not heavy:
                        return _run(method, self, request, session, context, write, metadata)
                    _heavy_slot(calls, context)
                    try:
                        return _run(method, self, request, session, context, write, metadata)
                    finally:
                        calls.heavy_reads.release()
                finally:
                    calls.limiter.release(name)
            except (KnowledgeError, *_ARGUMENT_ERRORS) as exc:
                if isinstance(exc, _ARGUMENT_ERRORS) and not isinstance(exc, KnowledgeError):
                    exc = InvalidArgument(f"{method.__name__}: {exc}")
                status.abort(context, exc)
            except Exception as exc:
                if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
                    raise
                if isinstance(exc, tuple(status.CLASSES.values())):  # EmbedderUnavailable and kin
                    status.abort(context, exc)
                log.exception("%s failed", method.__name__)
                status.abort(context, KnowledgeError(f"internal error in {method.__name__}: "
                                                     f"{type(exc).__name__}: {exc}"))
            finally:
                calls.gate.leave()
        observed = _observed(method.__name__, call)
        # the read lane it runs on (knowledge.server.pool; attached by MessageCap); writes and admin calls: none
        observed.knowledge_lane = None if write or admin else "heavy" if heavy else "light"  # type: ignore[attr-defined]
        return observed
    return wrap


def _observed(rpc: str, call: Callable[..., Any]) -> Callable[..., Any]:
    """`call` timed and counted by its status code in the server's metrics (knowledge.metrics), if any."""
    @functools.wraps(call)
    def observed(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        metrics = self.calls.metrics
        if metrics is None:
            return call(self, request, context)
        return metrics.run(rpc, context.code, call, self, request, context)  # code(): what it answered, if set
    return observed
