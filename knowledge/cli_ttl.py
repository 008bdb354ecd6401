"""`knowledge ttl`: TTL policies and the sweeper from the command line (a thin shell over Store.set_ttl,
Store.ttl and Store.sweep_expired; README "TTL and retention")."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import knowledge
from knowledge.errors import InvalidArgument


def _store(args: argparse.Namespace) -> Any:
    """The store directory (PATH or --data), or a running server (--server ADDR --token T, an admin's)."""
    path = args.data or args.path
    if args.server:
        if path:
            raise InvalidArgument(f"give either a store directory ({path!r}) or --server ({args.server!r}), not both")
        from knowledge.server.cli_verbs import open_target
        return open_target(args)
    if not path:
        raise InvalidArgument("name the store: knowledge ttl ACTION PATH ..., --data DIR or --server HOST:PORT")
    if args.data and args.path and args.data != args.path:
        raise InvalidArgument(f"two stores named: {args.path!r} and --data {args.data!r}")
    return knowledge.open(path, create=False)


def _where(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {"server": args.server} if args.server else {"path": store.path}


def _show(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {**_where(store, args), "policies": store.ttl(),
            **{k: v for k, v in store.stats()["ttl"].items() if k != "policies"}}


def add_ttl_command(sub: Any, command: Callable[..., argparse.ArgumentParser],
                    print_json: Callable[[Any], None]) -> None:
    """Register `knowledge ttl set|drop|show|sweep` (each on a store directory or, with --server, a server)."""
    from knowledge.server.cli_verbs import add_server_options

    def cmd_set(args: argparse.Namespace) -> int:
        with _store(args) as store:
            lsn = store.set_ttl(args.type, args.expire_after, on=args.on)
            print_json({"lsn": lsn, **_show(store, args)})
        return 0

    def cmd_drop(args: argparse.Namespace) -> int:
        with _store(args) as store:
            lsn = store.set_ttl(args.type, None)
            print_json({"lsn": lsn, **_show(store, args)})
        return 0

    def cmd_show(args: argparse.Namespace) -> int:
        with _store(args) as store:
            print_json(_show(store, args))
        return 0

    def cmd_sweep(args: argparse.Namespace) -> int:
        with _store(args) as store:
            done = store.sweep_expired(rows_max=args.rows_max)
            if args.checkpoint:
                done["checkpoint_lsn"] = store.checkpoint()
            print_json({**_where(store, args), **done})
        return 0

    parent = sub.add_parser("ttl", help="TTL policies: expire the rows of a node or edge type after a duration.",
                            description="TTL policies (written through the WAL like a schema change) and the sweeper "
                                        "that deletes expired rows.",
                            epilog="Example:\n  knowledge ttl set --data logs.store AgentLog 7d --on created_at",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parent.add_subparsers(dest="action", required=True, metavar="ACTION")
    specs = [
        ("set", cmd_set, "Expire the rows of TYPE EXPIRE_AFTER (7d, 12h, 30m, 90s, seconds) after their last "
         "write, or after their --on property.",
         ["knowledge ttl set logs.store AgentLog 7d --on created_at", "knowledge ttl set --data logs.store Turn 12h"]),
        ("drop", cmd_drop, "Remove the TTL policy of TYPE.", ["knowledge ttl drop logs.store AgentLog"]),
        ("show", cmd_show, "Print the policies, expired rows pending and swept, and the sweeper's lag.",
         ["knowledge ttl show logs.store", "knowledge ttl show --server 127.0.0.1:50051 --token kn_..."]),
        ("sweep", cmd_sweep, "Delete every expired row now (WAL delete records, as the background sweeper does).",
         ["knowledge ttl sweep logs.store --checkpoint   # then reclaim the space"]),
    ]
    for name, handler, summary, examples in specs:
        p = command(actions, name, handler, summary, examples)
        p.add_argument("path", metavar="PATH", nargs="?", help="store directory (or --data DIR)")
        p.add_argument("--data", metavar="DIR", help="store directory")
        add_server_options(p)  # or a running server, with an admin's token
        if name in ("set", "drop"):
            p.add_argument("type", metavar="TYPE", help="node or edge type")
        if name == "set":
            p.add_argument("expire_after", metavar="EXPIRE_AFTER", help="duration: 7d, 12h, 30m, 90s or seconds")
            p.add_argument("--on", metavar="PROPERTY", help="count from this timestamp (or epoch seconds) property")
        if name == "sweep":
            p.add_argument("--rows-max", type=int, metavar="N", help="rows per delete record")
            p.add_argument("--checkpoint", action="store_true", help="checkpoint afterwards (reclaims the space)")


__all__ = ["add_ttl_command"]
