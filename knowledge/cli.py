"""The `knowledge` command: a thin shell over the Python API, one subcommand per method.

Data verbs (schema, get, neighbors, stats, init, checkpoint, backup, restore) print JSON on
stdout; `ingest` prints one summary line; `demo` prints a report. Exit codes: 0 success, 1 a
KnowledgeError or file error (one `error: ...` line on stderr), 2 a usage error, 130 interrupted.

Over ~450 lines on purpose: one thin handler and one parser entry (with its example) per verb,
kept together so the verb list reads in one place; the server verbs live in server/cli_verbs.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import knowledge
from knowledge.errors import InvalidArgument, KnowledgeError, PermissionDenied
from knowledge.ingest import BATCH_ROWS_DEFAULT, FORMATS, ingest_file

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# -- output ----------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays
        return value.tolist()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_jsonable))


def _open(path: str) -> knowledge.Store:
    return knowledge.open(path, create=False)


def _target(args: argparse.Namespace) -> Any:
    """The store a read verb reads: the directory PATH, or a server (--server ADDR --token T)."""
    from knowledge.server.cli_verbs import open_target

    return open_target(args)


def _key(store: knowledge.Store, type_name: str, key: str) -> str | int:
    """The command-line KEY as the node type's key type (int keys are parsed)."""
    node_type = store.schema.nodes.get(type_name)
    if node_type is None or node_type.properties[node_type.key].type != "int":
        return key
    try:
        return int(key)
    except ValueError:
        raise InvalidArgument(f"{type_name} keys are int; {key!r} is not an int") from None


# -- commands --------------------------------------------------------------------------------------
def _cmd_init(args: argparse.Namespace) -> int:
    with knowledge.open(args.path, create=True) as store:
        _print_json({"path": store.path, "lsn": store.memory_lsn})
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    with _target(args) as store:
        if args.apply:
            with open(args.apply, encoding="utf-8") as f:
                try:
                    change = json.load(f)
                except ValueError as exc:
                    raise InvalidArgument(f"schema file {args.apply!r} is not valid JSON: {exc}") from None
            if not isinstance(change, dict):
                raise InvalidArgument(f"schema file {args.apply!r} must hold a JSON object with 'nodes' "
                                      f"and/or 'edges'")
            store.apply_schema(change)
        _print_json(store.schema.to_dict())
    return EXIT_OK


def _cmd_ingest(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        try:
            report = ingest_file(store.session(), args.type, args.file, edges=args.edges, fmt=args.format,
                                 batch_rows=args.batch_rows, progress=not args.quiet, labels=args.label)
        except KnowledgeError as exc:
            committed = getattr(exc, "committed_rows", 0)
            if committed:
                print(f"note: the {committed:,} rows before the failing batch are committed "
                      f"(last LSN {getattr(exc, 'committed_lsn', None)})", file=sys.stderr)
            raise
    print(report.summary())
    return EXIT_OK


def _cmd_get(args: argparse.Namespace) -> int:
    with _target(args) as store:
        _print_json(store.session().get(args.type, _key(store, args.type, args.key)))
    return EXIT_OK


def _cmd_neighbors(args: argparse.Namespace) -> int:
    with _target(args) as store:
        refs = store.session().neighbors(args.type, _key(store, args.type, args.key), edge_type=args.edge_type,
                                         direction=args.direction, limit=args.limit)
        _print_json([{"id": ref.id, "type": ref.type, "key": ref.key} for ref in refs])
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace) -> int:
    with _target(args) as store:
        visible = store.session().stats()
        try:
            figures = store.stats()
        except PermissionDenied:  # through a server with a non-admin token: the visible counts only
            figures = {"lsn": visible["lsn"]}
        _print_json({**figures, "nodes": visible["nodes"], "edges": visible["edges"]})
    return EXIT_OK


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        lsn = store.checkpoint()
        store.build_indexes()  # a one-shot process: finish the HNSW builds (saved as the store closes)
        _print_json({"path": store.path, "lsn": lsn})
    return EXIT_OK


def _cmd_backup(args: argparse.Namespace) -> int:
    with _open(args.src) as store:
        _print_json({"source": store.path, "backup": args.dest, "lsn": store.backup(args.dest)})
    return EXIT_OK


def _cmd_restore(args: argparse.Namespace) -> int:
    lsn = knowledge.restore(args.backup, args.dest)
    _print_json({"backup": args.backup, "store": args.dest, "lsn": lsn})
    return EXIT_OK


def _cmd_recover(args: argparse.Namespace) -> int:
    report = knowledge.recover(args.src, args.dest, backup=args.backup)
    _print_json({"source": args.src, "store": args.dest, **report})
    return EXIT_OK


def _principal_json(principal: knowledge.Principal) -> dict[str, Any]:
    return {"name": principal.name, "read": sorted(principal.read), "write": sorted(principal.write),
            "admin": principal.admin}


def _cmd_principal_create(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        _print_json(_principal_json(store.create_principal(args.name, read=args.read, write=args.write,
                                                           admin=args.admin)))
    return EXIT_OK


def _cmd_principal_grant(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        _print_json(_principal_json(store.grant(args.name, read=args.read, write=args.write,
                                                admin=True if args.admin else None)))
    return EXIT_OK


def _cmd_principal_revoke(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        _print_json(_principal_json(store.revoke(args.name, read=args.read, write=args.write)))
    return EXIT_OK


def _cmd_principal_drop(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        store.drop_principal(args.name)
        _print_json({"dropped": args.name})
    return EXIT_OK


def _cmd_principal_list(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        _print_json([_principal_json(p) for p in store.principals()])
    return EXIT_OK


def _cmd_principal_token(args: argparse.Namespace) -> int:
    with _open(args.path) as store:
        if args.revoke_all:
            store.revoke_tokens(args.name)
            _print_json({"name": args.name, "tokens": "revoked"})
        else:
            _print_json({"name": args.name, "token": store.issue_token(args.name),
                         "note": "shown once; only its SHA-256 digest is stored"})
    return EXIT_OK


def _add_principal_commands(sub: Any) -> None:
    parent = sub.add_parser("principal", help="Manage principals, their read/write label grants and tokens.",
                            description="Manage principals (written through the WAL like data).",
                            epilog="Example:\n  knowledge principal create people.store alice --read public",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parent.add_subparsers(dest="action", required=True, metavar="ACTION")
    specs = [
        ("create", _cmd_principal_create, "Create a principal with read/write grants.",
         ["knowledge principal create people.store alice --read public --write public"], True),
        ("grant", _cmd_principal_grant, "Add read/write grants (effective for open sessions at once).",
         ["knowledge principal grant people.store alice --read hr"], True),
        ("revoke", _cmd_principal_revoke, "Remove read/write grants.",
         ["knowledge principal revoke people.store alice --read hr"], True),
        ("drop", _cmd_principal_drop, "Delete a principal and its tokens.",
         ["knowledge principal drop people.store alice"], False),
        ("list", _cmd_principal_list, "List principals and their grants.",
         ["knowledge principal list people.store"], None),
        ("token", _cmd_principal_token, "Issue a bearer token (printed once; stored hashed).",
         ["knowledge principal token people.store alice", "knowledge principal token people.store alice --revoke-all"],
         False),
    ]
    for name, handler, summary, examples, grants in specs:
        p = _command(actions, name, handler, summary, examples)
        p.add_argument("path", metavar="PATH", help="store directory")
        if grants is None:
            continue
        p.add_argument("name", metavar="NAME", help="principal name")
        if grants:
            p.add_argument("--read", action="append", default=[], metavar="LABEL", help="read grant (repeatable)")
            p.add_argument("--write", action="append", default=[], metavar="LABEL", help="write grant (repeatable)")
            if name != "revoke":
                p.add_argument("--admin", action="store_true", help="make the principal an admin")
        if name == "token":
            p.add_argument("--revoke-all", action="store_true", help="revoke every token of the principal")


def _cmd_demo(args: argparse.Namespace) -> int:
    from knowledge.demo import run_demo

    run_demo(args.path, out=sys.stdout)
    return EXIT_OK


def bench_directory() -> str:
    """The repository's bench/ folder, which is not installed: $KNOWLEDGE_BENCH_DIR, else the checkout the
    package runs from (an editable install), else ./bench. Raises InvalidArgument when none holds it."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(knowledge.__file__)))
    for candidate in (os.environ.get("KNOWLEDGE_BENCH_DIR"), os.path.join(here, "bench"), os.path.abspath("bench")):
        if candidate and os.path.isfile(os.path.join(candidate, "runner.py")):
            return os.path.abspath(candidate)
    raise InvalidArgument("knowledge bench runs the repository's bench/ folder, which pip does not install: run it "
                          "from a checkout (pip install -e .), from the repository root, or set KNOWLEDGE_BENCH_DIR")


def _cmd_bench(args: argparse.Namespace) -> int:
    directory = bench_directory()
    sys.path.insert(0, os.path.dirname(directory))
    from bench.runner import main as bench_main

    argv = [*args.suites, "--out", args.out] + [flag for flag, on in (("--quick", args.quick), ("--smoke", args.smoke),
                                                                       ("--no-peers", args.no_peers),
                                                                       ("--publish", args.publish)) if on]
    return bench_main(argv)


def _cmd_slo_check(args: argparse.Namespace) -> int:
    from knowledge.slo import run_check

    return run_check(args.source, args.slo, over_s=args.over, strict=args.strict)


def _add_bench_commands(sub: Any) -> None:
    p = _command(sub, "bench", _cmd_bench,
                 "Run the benchmark suites (ingest, vectors, acl, retrieval, server, replication); write "
                 "results.json, report.md and plots to --out. Needs the repository's bench/ folder.",
                 ["knowledge bench --quick --out bench-out",
                  "knowledge bench vectors acl --no-peers --out bench-out"])
    p.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (default: all)")
    p.add_argument("--quick", action="store_true", help="CI sizes (under 5 minutes on a 2-core VM)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing only")
    p.add_argument("--out", default="bench-out", metavar="DIR", help="output directory (default ./bench-out)")
    p.add_argument("--no-peers", action="store_true", help="skip chromadb, lancedb, hnswlib, faiss, LadybugDB")
    p.add_argument("--publish", action="store_true", help="also rewrite bench/RESULTS.md's suite section")
    parent = sub.add_parser("slo", help="Service-level objectives: check a bench run or a live server.",
                            description="Service-level objectives (an SLO file in TOML, see knowledge/slo.py).",
                            epilog="Example:\n  knowledge slo check bench-out --slo bench/slo.toml",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parent.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(actions, "check", _cmd_slo_check,
                 "Evaluate an SLO file against a bench results.json (or its directory) or a metrics URL; print "
                 "each objective with its burn rate; exit 1 when one is violated, 0 when all are met.",
                 ["knowledge slo check bench-out --slo bench/slo.toml",
                  "knowledge slo check http://127.0.0.1:9464/metrics --slo bench/slo.toml --over 60"])
    p.add_argument("source", metavar="RESULTS_OR_URL", help="results.json, its directory, or http(s)://.../metrics")
    p.add_argument("--slo", required=True, metavar="FILE", help="the SLO file (TOML)")
    p.add_argument("--over", type=float, metavar="SECONDS", help="scrape twice, SECONDS apart, and judge the change")
    p.add_argument("--strict", action="store_true", help="an objective with no data fails too")


# -- parser ----------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _command(subparsers: Any, name: str, handler: Callable[[argparse.Namespace], int], summary: str,
             examples: Sequence[str]) -> argparse.ArgumentParser:
    epilog = "Example:\n" + "\n".join(f"  {line}" for line in examples)
    parser = subparsers.add_parser(name, help=summary, description=summary, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `knowledge` command (every subcommand's help shows an example)."""
    parser = argparse.ArgumentParser(
        prog="knowledge", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="An embedded typed property graph + document store. Each command is a thin shell "
                    "over the Python method of the same name.",
        epilog="Example:\n  knowledge init people.store && knowledge schema people.store --apply schema.json\n"
               "\nRun `knowledge COMMAND --help` for each command's options and example.")
    parser.add_argument("--version", action="version", version=f"knowledge {knowledge.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(sub, "init", _cmd_init, "Create a store directory (or open an existing store) and print it.",
                 ["knowledge init people.store"])
    p.add_argument("path", metavar="PATH", help="store directory (created if missing; must be empty if it exists)")

    from knowledge.server.cli_verbs import add_commands, add_server_options

    p = _command(sub, "schema", _cmd_schema, "Print the schema as JSON; with --apply, apply a schema change first.",
                 ["knowledge schema people.store --apply schema.json",
                  '  where schema.json holds {"nodes": {"Person": {"key": "name", "properties": {"age": "int"}}},',
                  '                           "edges": {"KNOWS": {"source": "Person", "target": "Person"}}}'])
    p.add_argument("path", metavar="PATH", nargs="?", help="store directory (or use --server)")
    add_server_options(p)
    p.add_argument("--apply", metavar="FILE.json", help="schema change file ({'nodes': {...}, 'edges': {...}})")

    p = _command(sub, "ingest", _cmd_ingest,
                 "Upsert the rows of a JSONL, Parquet or CSV file as nodes (or edges) of one type, one "
                 "transaction per batch.",
                 ["knowledge ingest people.store Person people.csv --label public",
                  "knowledge ingest people.store KNOWS knows.jsonl --edges   # rows carry src and dst keys"])
    p.add_argument("path", metavar="PATH", help="store directory")
    p.add_argument("type", metavar="TYPE", help="node type (or edge type with --edges)")
    p.add_argument("file", metavar="FILE", help="input file (.jsonl/.json, .parquet, .csv/.tsv; .gz etc. allowed)")
    p.add_argument("--edges", action="store_true", help="FILE holds edges: src and dst key columns")
    p.add_argument("--batch-rows", type=_positive_int, default=BATCH_ROWS_DEFAULT, metavar="N",
                   help=f"rows per transaction (default {BATCH_ROWS_DEFAULT:,})")
    p.add_argument("--format", choices=FORMATS, help="file format (default: from the file name)")
    p.add_argument("--label", action="append", metavar="LABEL",
                   help="access label for rows without _labels (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _command(sub, "get", _cmd_get, "Print one node's properties as JSON.",
                 ["knowledge get people.store Person ada",
                  "knowledge get --server 127.0.0.1:50051 --token kn_... Person ada"])
    p.add_argument("path", metavar="PATH", nargs="?", help="store directory (or use --server)")
    add_server_options(p)
    p.add_argument("type", metavar="TYPE", help="node type")
    p.add_argument("key", metavar="KEY", help="node key (parsed as int when the type's key is int)")

    p = _command(sub, "neighbors", _cmd_neighbors, "Print a node's neighbours as JSON [{id, type, key}].",
                 ["knowledge neighbors people.store Person ada --edge-type KNOWS --direction both"])
    p.add_argument("path", metavar="PATH", nargs="?", help="store directory (or use --server)")
    add_server_options(p)
    p.add_argument("type", metavar="TYPE", help="node type")
    p.add_argument("key", metavar="KEY", help="node key")
    p.add_argument("--edge-type", action="append", metavar="E", help="follow only this edge type (repeatable)")
    p.add_argument("--direction", choices=("out", "in", "both"), default="out", help="default: out")
    p.add_argument("--limit", type=_positive_int, default=1000, metavar="N", help="at most N (default 1000)")

    p = _command(sub, "stats", _cmd_stats, "Print store figures and node/edge counts per type as JSON.",
                 ["knowledge stats people.store",
                  "knowledge stats --server 127.0.0.1:50051 --token kn_...   # while a server holds the store"])
    p.add_argument("path", metavar="PATH", nargs="?", help="store directory (or use --server)")
    add_server_options(p)

    p = _command(sub, "checkpoint", _cmd_checkpoint,
                 "Fold the WAL into the tables, drop the WAL segments it covers and bring the vector indexes "
                 "up to date; print the LSN.",
                 ["knowledge checkpoint people.store"])
    p.add_argument("path", metavar="PATH", help="store directory")

    p = _command(sub, "backup", _cmd_backup, "Write a consistent copy of a store to DEST; print its LSN.",
                 ["knowledge backup people.store backups/people-2024-06-01"])
    p.add_argument("src", metavar="SRC", help="store directory")
    p.add_argument("dest", metavar="DEST", help="backup directory (must not exist or be empty)")

    p = _command(sub, "restore", _cmd_restore, "Restore a backup into a new store directory; print its LSN.",
                 ["knowledge restore backups/people-2024-06-01 people-restored.store"])
    p.add_argument("backup", metavar="BACKUP", help="backup directory")
    p.add_argument("dest", metavar="DEST", help="new store directory (must not exist or be empty)")

    p = _command(sub, "recover", _cmd_recover,
                 "Rebuild a store whose state.duckdb is damaged from its WAL (plus a backup where a checkpoint "
                 "dropped the WAL's start) into a new directory; print what was recovered, up to which LSN.",
                 ["knowledge recover people.store people-recovered.store",
                  "knowledge recover people.store people-recovered.store --backup backups/people-2024-06-01"])
    p.add_argument("src", metavar="SRC", help="the damaged store directory (only read)")
    p.add_argument("dest", metavar="DEST", help="new store directory (must not exist or be empty)")
    p.add_argument("--backup", metavar="DIR", help="a backup whose tables reach the WAL's first LSN")

    _add_principal_commands(sub)
    from knowledge.cli_ttl import add_ttl_command

    add_ttl_command(sub, _command, _print_json)  # ttl set | drop | show | sweep
    add_commands(sub, _command, _print_json, _jsonable, _positive_int)  # serve, search, retrieve, scan, export
    from knowledge.server.mcp_server import add_mcp_command

    add_mcp_command(sub, _command)
    _add_bench_commands(sub)

    p = _command(sub, "demo", _cmd_demo,
                 "Build a graph from the bundled MuSiQue passages and OpenIE triples and print what it finds.",
                 ["knowledge demo", "knowledge demo --path demo.store   # keep the store"])
    p.add_argument("--path", metavar="DIR", help="store directory to keep (default: a temporary one, removed)")
    return parser


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename!r}"
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `knowledge` command with `argv` (default sys.argv[1:]); return the exit code.

    Never raises for expected failures: usage errors return 2 (argparse prints the usage),
    KnowledgeError and OSError return 1 after one `error: ...` line on stderr.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except BrokenPipeError:  # stdout closed early (`knowledge stats S | head -1`): not an error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except (KnowledgeError, OSError) as exc:
        print(f"error: {_error_message(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
