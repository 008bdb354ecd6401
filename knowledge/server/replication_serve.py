"""`knowledge serve --role primary|replica`: a server whose store is replicated, and `knowledge promote`.

Every node is started with the whole membership (`--members id=zone@host:port,...`, the replication
addresses its peers reach it at; the node's own entry names its zone). The Replication service runs on
the same gRPC server as knowledge.v1 (one port per node). A replica refuses writes with NotPrimary
naming the primary's address; the primary's commits return once its commit policy holds.

The links to peers (log shipping, snapshot fetches) use TLS with `--replication-ca` (the CA that signed
the peers' certificates), presenting `--replication-cert/--replication-key` (default: this node's own
`--tls-cert/--tls-key`) for mTLS; without it every peer must be on loopback, unless `--insecure`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from knowledge.errors import InvalidArgument

if TYPE_CHECKING:
    from knowledge.replication.driver import Replicator
    from knowledge.server.config import ServerConfig


def parse_members(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """`id=zone@host:port,...` as (zones, addresses) by member id; InvalidArgument when malformed."""
    zones: dict[str, str] = {}
    addresses: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        name, eq, rest = item.partition("=")
        zone, at, address = rest.partition("@")
        if not (eq and at and name and zone and address) or ":" not in address:
            raise InvalidArgument(f"--members entry {item!r} must be ID=ZONE@HOST:PORT")
        if name in zones:
            raise InvalidArgument(f"--members names {name!r} twice")
        zones[name], addresses[name] = zone, address
    return zones, addresses


class ReplicationRole:
    """The server's Role (knowledge.server.calls): writes only where the Replicator takes them."""

    def __init__(self, replicator: Replicator) -> None:
        self.replicator = replicator

    def primary_address(self) -> str | None:
        return self.replicator.primary_address()

    def wait_readable(self, token: int | tuple[int, int], timeout_s: float) -> bool:
        """Read-your-writes on this node: wait until commit `token` (an LSN, or (epoch, lsn)) is applied here."""
        from knowledge.replication.lsn import Position
        return self.replicator.wait_readable(Position(*token) if isinstance(token, tuple) else token, timeout_s)


def add_replication_options(parser: argparse.ArgumentParser) -> None:
    """The serve verb's replication flags."""
    group = parser.add_argument_group("replication")
    group.add_argument("--role", choices=("primary", "replica"),
                       help="replicate this store: start as the primary (campaigns) or as a replica")
    group.add_argument("--zone", metavar="ZONE", help="this node's zone (must match its --members entry)")
    group.add_argument("--commit-policy", default="async", metavar="P",
                       help="async, sync(n), zones(k) or all, with ,degrade and ,deadline=500ms (default async)")
    group.add_argument("--primary", metavar="ADDR", help="replica: the primary's replication address")
    group.add_argument("--members", metavar="ID=ZONE@ADDR,...", help="every member, this node included")
    group.add_argument("--node-id", metavar="ID", help="this node's member id (default: the member at --listen)")
    group.add_argument("--tick-ms", type=int, default=10, metavar="MS", help="protocol tick (default 10)")
    group.add_argument("--etcd", metavar="HOST:PORT", help="automatic failover through this etcd (leader key, lease)")
    group.add_argument("--etcd-ttl", type=int, default=2, metavar="S", help="leader lease TTL in seconds (default 2)")
    group.add_argument("--etcd-prefix", default="/knowledge", metavar="KEY", help="etcd key prefix (default /knowledge)")
    group.add_argument("--wal-retention-max-bytes", type=int, default=0, metavar="N",
                       help="WAL kept for lagging replicas at most this large; past it they re-snapshot (0: no limit)")
    group.add_argument("--wal-segment-bytes", type=int, metavar="N", help="WAL segment size (default 64 MiB)")
    group.add_argument("--replication-ca", metavar="PEM",
                       help="CA of the peers' certificates: the links to peers use TLS")
    group.add_argument("--replication-cert", metavar="PEM", help="client certificate on the links (default --tls-cert)")
    group.add_argument("--replication-key", metavar="PEM", help="its key (default --tls-key)")
    group.add_argument("--replication-peers", metavar="CN,...",
                       help="with --client-ca: serve replication (and promote/status) only to these certificate names")


def _node_id(args: argparse.Namespace, addresses: dict[str, str]) -> str:
    if args.node_id:
        if args.node_id not in addresses:
            raise InvalidArgument(f"--node-id {args.node_id!r} is not among --members {sorted(addresses)}")
        return str(args.node_id)
    for name, address in addresses.items():
        if address == args.listen:
            return name
    raise InvalidArgument(f"no --members entry has the address {args.listen!r}: give --node-id")


def link_tls(args: argparse.Namespace, addresses: dict[str, str], me: str) -> Any:
    """The LinkTLS for the links to peers, or None for plaintext (loopback peers only, unless --insecure)."""
    from knowledge.replication.transport import LinkTLS
    from knowledge.server.config import is_loopback, split_address
    ca = getattr(args, "replication_ca", None)
    cert = getattr(args, "replication_cert", None) or (getattr(args, "tls_cert", None) if ca else None)
    key = getattr(args, "replication_key", None) or (getattr(args, "tls_key", None) if ca else None)
    if ca:
        return LinkTLS.load(ca, cert, key)
    if getattr(args, "replication_cert", None) or getattr(args, "replication_key", None):
        raise InvalidArgument("--replication-cert/--replication-key need --replication-ca")
    if getattr(args, "tls_cert", None):
        raise InvalidArgument("this node serves TLS (--tls-cert): give --replication-ca so its links to the "
                              "peers (which serve TLS too) can verify them")
    remote = [address for name, address in addresses.items()
              if name != me and not is_loopback(split_address(address)[0])]
    if remote and not getattr(args, "insecure", False):
        raise InvalidArgument(f"refusing plaintext replication links to {remote}, which are not loopback "
                              f"addresses: give --replication-ca (with --tls-cert/--tls-key), or force "
                              f"plaintext with --insecure")
    return None


def serve_replicated(args: argparse.Namespace, config: ServerConfig, *, out: TextIO = sys.stdout) -> int:
    """Run `knowledge serve` with --role: open (or create) the replicated store, serve it until SIGTERM."""
    import knowledge
    from knowledge.replication.config import NodeConfig
    from knowledge.replication.driver import Replicator
    from knowledge.replication.policy import parse_policy
    from knowledge.replication.snapshot import recover_incoming
    from knowledge.replication.transport import Links, handler
    from knowledge.server.app import KnowledgeServer, serving_process

    if not args.members:
        raise InvalidArgument("--role needs --members ID=ZONE@HOST:PORT,... (every member, this node included)")
    zones, addresses = parse_members(args.members)
    me = _node_id(args, addresses)
    if args.zone is not None and args.zone != zones[me]:
        raise InvalidArgument(f"--zone {args.zone!r} differs from {me}'s zone {zones[me]!r} in --members")
    primary = None
    if args.role == "replica" and args.primary:
        primary = next((name for name, address in addresses.items() if address == args.primary), None)
        if primary is None:
            raise InvalidArgument(f"--primary {args.primary!r} is not the address of any of --members")
    node_config = NodeConfig(me, zones, parse_policy(args.commit_policy), tick_ms=args.tick_ms)
    tls = link_tls(args, addresses, me)
    peers = None
    if getattr(args, "replication_peers", None):
        if not getattr(args, "client_ca", None):
            raise InvalidArgument("--replication-peers needs --client-ca (mTLS: callers must present certificates)")
        peers = frozenset(name.strip() for name in args.replication_peers.split(",") if name.strip())
    retention = getattr(args, "wal_retention_max_bytes", 0) or 0
    if retention < 0:
        raise InvalidArgument(f"--wal-retention-max-bytes must be >= 0, got {retention}")
    store_config = dataclasses.replace(knowledge.StoreConfig(), audit=not args.no_audit, replicated=True)
    if getattr(args, "wal_segment_bytes", None):
        store_config = dataclasses.replace(store_config, segment_bytes_max=args.wal_segment_bytes)
    installed = recover_incoming(args.data) if os.path.isdir(args.data) else False  # a crash mid-install
    store = knowledge.open(args.data, create=True, config=store_config)
    if installed and store.engine.wal.last_lsn > store.engine.memory_lsn:
        store.engine.wal.truncate_after(store.engine.memory_lsn)
    links = Links(addresses, me, tls)
    try:
        kv = None
        if args.etcd:
            from knowledge.replication.etcd_kv import EtcdKV
            kv = EtcdKV(args.etcd)
        replicator = Replicator(store.engine, node_config, addresses, links.send, kv=kv, ttl_s=args.etcd_ttl,
                                prefix=args.etcd_prefix, fetch=links.fetch_snapshot,
                                reopen=lambda engine: setattr(store, "engine", engine),
                                wal_retention_bytes_max=retention)
        links.bind(replicator.deliver)  # what peers reply on the links (their acks)
        server = KnowledgeServer(store, config, role=ReplicationRole(replicator), owns_store=True)
    except BaseException:
        links.close()
        store.close()
        raise
    server.server.add_generic_rpc_handlers((handler(replicator, peers),))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    with serving_process(config):  # --gil-switch-ms and --faiss-threads, as plain `knowledge serve` sets them
        try:
            server.start()
            replicator.start(primary=primary, campaign=args.role == "primary")
            print(f"listening on {server.address} (replication {me} in zone {zones[me]}, {args.role}, policy "
                  f"{node_config.policy}, store {store.path})", file=out, flush=True)
            while not stop.wait(0.5):
                pass
            print("draining: finishing calls in flight", file=out, flush=True)
        finally:
            replicator.close()
            links.close()
            server.stop()
            for sig, handler_ in previous.items():
                signal.signal(sig, handler_)
    print("stopped", file=out, flush=True)
    return 0


def cmd_promote(args: argparse.Namespace, print_json: Any) -> int:
    """`knowledge promote --server ADDR`: make that node campaign for the next epoch (manual failover)."""
    from knowledge.replication.transport import LinkTLS, control
    tls = None
    if getattr(args, "tls_ca", None):
        tls = LinkTLS.load(args.tls_ca, getattr(args, "tls_cert", None), getattr(args, "tls_key", None))
    reply = control(args.server, "promote", epoch=args.epoch, tls=tls)
    print_json(reply)
    return 0
