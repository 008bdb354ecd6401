"""The gRPC transport: log shipping as one bidirectional stream per directed link, plus a control call.

Service `knowledge.replication.v1.Replication` (raw bytes, no generated code):
- `Push` (bidirectional streaming): the sender streams frames (wire.py: a batch of messages each, Appends
  carrying up to batch_records_max records) to the receiver, which hands them to its Replicator. Each
  node keeps one outbound stream per peer (`Links`); every message queued while a frame was on the
  wire goes into the next frame, so batching follows load. The receiver's handler thread runs the
  replication iteration for the frame itself when none is under way (Replicator.deliver), and the
  AppendAcks that iteration addresses to the sender go back on the same call's response stream,
  written by that thread right after its fsync (`reply`): no hand-off to the link thread, which
  would wait for the GIL while the same iteration applies records. The sender's link thread reads
  the responses and delivers them. Everything else travels on the sender's own link; acks are the only
  messages sent both ways, and they tolerate reordering (a primary keeps the highest match). A broken
  stream is reopened after a short pause; what was queued for it is dropped (the protocol resends on
  its ticks).
- `Control` (unary, JSON): `status`, `promote` (manual failover), `wait` (a read-your-writes wait
  for `min_lsn`, bounded by `timeout_s`).
- `Snapshot` (server streaming): a replica told to install a snapshot at (epoch, lsn) fetches the
  primary's consistent backup at that position, in checksummed chunks (snapshot.py).

Links, snapshot fetches and `control` use TLS when given a `LinkTLS` (the peers' CA, and this node's
certificate and key for mTLS); the server side is the knowledge server's own port and credentials.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from knowledge.errors import InvalidArgument, KnowledgeError, SnapshotTransferFailed, Unavailable
from knowledge.replication import wire
from knowledge.replication.lsn import Position
from knowledge.replication.messages import Message

log = logging.getLogger("knowledge.replication")
SERVICE = "knowledge.replication.v1.Replication"
PUSH = f"/{SERVICE}/Push"
CONTROL = f"/{SERVICE}/Control"
SNAPSHOT = f"/{SERVICE}/Snapshot"
SNAPSHOT_TIMEOUT_S = 3600.0  # one whole snapshot transfer
SNAPSHOT_STALL_S = 30.0  # a snapshot stream with no message for this long is cancelled (a vanished primary)
LINK_QUEUE_MAX = 4096  # messages waiting for one peer; past it the oldest are dropped (they are resent)
RECONNECT_S = 0.2
FRAME_MESSAGES_MAX = 64
MESSAGE_BYTES_MAX = 64 << 20
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
                   ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]


@dataclass(frozen=True)
class LinkTLS:
    """TLS for the links to peers: the CA that signed their certificates (PEM bytes) and, for mTLS,
    this node's certificate chain and key."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def load(cls, ca: str, cert: str | None = None, key: str | None = None) -> LinkTLS:
        """From PEM files; InvalidArgument naming a file that cannot be read."""
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise InvalidArgument(f"cannot read TLS file {path!r}: {exc.strerror}") from None
        if (cert is None) != (key is None):
            raise InvalidArgument("a replication client certificate needs both its certificate and its key")
        return cls(read(ca), read(cert), read(key))  # type: ignore[arg-type]

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def open_channel(address: str, tls: LinkTLS | None = None) -> grpc.Channel:
    """A channel to a peer's replication service: TLS when `tls` is given, else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, tls.credentials(), options=CHANNEL_OPTIONS)


class _Link:
    """The outbound stream to one peer, on its own thread."""

    def __init__(self, peer: str, address: str, tls: LinkTLS | None = None,
                 receive: Callable[[list[Message]], None] | None = None) -> None:
        self.peer = peer
        self.address = address
        self.tls = tls
        self.receive = receive  # the messages the peer replies with on the call's response stream
        self.queue: queue.Queue[Message | None] = queue.Queue()
        self.stop = threading.Event()
        self.sent_frames = 0
        self.thread = threading.Thread(target=self._run, name=f"replication-link-{peer}", daemon=True)
        self.thread.start()

    def send(self, message: Message) -> None:
        if self.queue.qsize() >= LINK_QUEUE_MAX:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                pass
        self.queue.put(message)

    def _frames(self) -> Iterator[bytes]:
        while not self.stop.is_set():
            try:
                first = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if first is None:
                return
            batch = [first]
            while len(batch) < FRAME_MESSAGES_MAX:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.stop.set()
                    break
                batch.append(item)
            self.sent_frames += 1
            yield wire.encode(batch)

    def _run(self) -> None:
        while not self.stop.is_set():
            channel = open_channel(self.address, self.tls)
            try:
                call = channel.stream_stream(PUSH)(self._frames())
                for frame in call:
                    if self.receive is not None:
                        self.receive(wire.decode(frame))
            except grpc.RpcError as exc:
                log.debug("replication link to %s (%s) broke: %s", self.peer, self.address, exc)
            except InvalidArgument as exc:  # a reply frame that does not parse: reconnect
                log.warning("replication link to %s (%s): %s", self.peer, self.address, exc)
            finally:
                channel.close()
            while not self.queue.empty():  # stale by now: the protocol resends what still matters
                try:
                    if self.queue.get_nowait() is None:
                        return
                except queue.Empty:
                    break
            self.stop.wait(RECONNECT_S)

    def close(self) -> None:
        self.stop.set()
        self.queue.put(None)


class Links:
    """Outbound streams to every peer: `send(peer, message)` never blocks. What peers reply on them goes
    to the `receive` callable (`bind`: the Replicator's deliver)."""

    def __init__(self, addresses: dict[str, str], me: str, tls: LinkTLS | None = None,
                 receive: Callable[[list[Message]], None] | None = None) -> None:
        self.addresses = dict(addresses)
        self.tls = tls
        self._links = {peer: _Link(peer, address, tls, receive) for peer, address in addresses.items()
                       if peer != me}

    def bind(self, receive: Callable[[list[Message]], None]) -> None:
        """Hand the messages peers reply with on the links to `receive` (Replicator.deliver)."""
        for link in self._links.values():
            link.receive = receive

    def fetch_snapshot(self, peer: str, position: Position, store_path: str) -> int:
        """Stream the snapshot at `position` from `peer` into the store's incoming folder (snapshot.receive);
        the bytes received. SnapshotTransferFailed when the stream breaks or does not verify."""
        from knowledge.replication.snapshot import receive
        with open_channel(self.addresses[peer], self.tls) as channel:
            request = json.dumps({"epoch": position.epoch, "lsn": position.lsn}).encode()
            stream = channel.unary_stream(SNAPSHOT)(request, timeout=SNAPSHOT_TIMEOUT_S)
            heard = [time.monotonic()]
            done = threading.Event()

            def watch() -> None:  # the replica's loop waits on this call: never for a primary that vanished
                while not done.wait(1.0):
                    if time.monotonic() - heard[0] > SNAPSHOT_STALL_S:
                        stream.cancel()
                        return

            def messages() -> Iterator[bytes]:
                for message in stream:
                    heard[0] = time.monotonic()
                    yield message
            threading.Thread(target=watch, name=f"snapshot-watch-{peer}", daemon=True).start()
            try:
                _, received = receive(messages(), store_path, position)
            except grpc.RpcError as exc:
                code = exc.code()
                raise SnapshotTransferFailed(f"snapshot at {position} from {peer}: "
                                             f"{code.name if code else 'error'}: {exc.details()}") from None
            finally:
                done.set()
        return received

    def send(self, peer: str, message: Message) -> None:
        link = self._links.get(peer)
        if link is not None:
            link.send(message)

    def close(self) -> None:
        for link in self._links.values():
            link.close()


def _reply(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def peer_name(context: grpc.ServicerContext) -> str | None:
    """The common name of the caller's verified client certificate (mTLS), None without one."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode() if names else None


def handler(replicator: Any, peers: frozenset[str] | None = None) -> grpc.GenericRpcHandler:
    """The Replication service over `replicator`, to add to a grpc.Server before it starts. With `peers`
    (certificate common names), only callers presenting one of them (mTLS) are served."""

    def admit(context: grpc.ServicerContext) -> None:
        if peers is not None and peer_name(context) not in peers:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"replication is served to the certificates "
                                                             f"{sorted(peers)} only, not {peer_name(context)!r}")

    def push(frames: Iterator[bytes], context: grpc.ServicerContext,
             respond: Callable[[bytes | None], None]) -> None:
        """A non-blocking handler (grpc's experimental_non_blocking): `respond(frame)` writes a response
        on this thread, at once, whenever the iteration has one; respond(None) ends the call.

        Two threads take turns reading the call's frames (this one and a helper): the one that read a frame
        queues its messages and runs the replication iteration (append, fsync, ack) itself, while the other
        reads on. Frames that arrive during an iteration's fsync are then queued at once and the next
        iteration takes them all (one fsync), instead of one frame per iteration and fsync."""
        admit(context)
        lock = threading.Lock()
        reading = threading.Lock()  # one reader of `frames` at a time; it queues what it read before letting go
        ended = threading.Event()
        malformed: list[str] = []
        enqueue = getattr(replicator, "enqueue", None)

        def reply(messages: list[Message]) -> bool:
            """Write `messages` back to the caller now (any thread); False once the call has ended."""
            with lock:  # one send at a time per call (grpc allows one outstanding)
                if not context.is_active():
                    return False
                respond(wire.encode(messages))
                return context.is_active()

        def serve() -> None:
            while True:
                with reading:
                    if ended.is_set():
                        return
                    try:
                        frame = next(frames)
                        messages = wire.decode(frame)
                    except StopIteration:
                        ended.set()
                        return
                    except InvalidArgument as exc:
                        malformed.append(str(exc))
                        ended.set()
                        return
                    except BaseException:
                        ended.set()
                        raise
                    if enqueue is None:
                        replicator.deliver(messages, reply)
                        continue
                    urgent = enqueue(messages, reply)  # in frame order, before the other thread reads the next
                if urgent:
                    replicator.iterate_inbox()

        def helper() -> None:
            try:
                serve()
            except Exception as exc:  # noqa: BLE001 - the call broke: the handler thread ends it
                log.debug("replication push reader: %s", exc)
        threading.Thread(target=helper, name="replication-push-reader", daemon=True).start()
        serve()
        if malformed:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed[0])
        with lock:
            respond(None)

    push.experimental_non_blocking = True  # type: ignore[attr-defined]

    def control(request: bytes, context: grpc.ServicerContext) -> bytes:
        admit(context)
        try:
            doc = json.loads(request or b"{}")
            op = doc.get("op")
            if op == "status":
                return _reply(replicator.status())
            if op == "promote":
                return _reply({"epoch": replicator.promote(doc.get("epoch"))})
            if op == "wait":
                text = str(doc["min_lsn"])
                token: int | Position = Position.parse(text) if "/" in text else int(text)
                return _reply({"readable": replicator.wait_readable(token, float(doc.get("timeout_s", 5.0)))})
            raise InvalidArgument(f"unknown replication control op {op!r} (status, promote, wait)")
        except KnowledgeError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{type(exc).__name__}: {exc}")
        except (ValueError, KeyError, TypeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad control request: {exc}")
        return b""  # pragma: no cover - abort raises

    def snapshot(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        admit(context)
        try:
            doc = json.loads(request or b"{}")
            position = Position(int(doc["epoch"]), int(doc["lsn"]))
        except (ValueError, KeyError, TypeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad snapshot request: {exc}")
        try:
            yield from replicator.snapshot_chunks(position)
        except SnapshotTransferFailed as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Push": grpc.stream_stream_rpc_method_handler(push),
        "Control": grpc.unary_unary_rpc_method_handler(control),
        "Snapshot": grpc.unary_stream_rpc_method_handler(snapshot),
    })


def control(address: str, op: str, timeout_s: float = 10.0, tls: LinkTLS | None = None,
            **fields: Any) -> dict[str, Any]:
    """Call Control on the node at `address` (the `knowledge promote` client); the reply as a dict."""
    with open_channel(address, tls) as channel:
        call = channel.unary_unary(CONTROL)
        try:
            return json.loads(call(json.dumps({"op": op, **fields}).encode(), timeout=timeout_s) or b"{}")
        except grpc.RpcError as exc:
            code = exc.code()
            raise Unavailable(f"replication control {op} at {address} failed: "
                                 f"{code.name if code else 'error'}: {exc.details()}") from None
