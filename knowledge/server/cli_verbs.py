"""The CLI verbs of the server and of reading (hooked into knowledge.cli): `serve`, `search`, `retrieve`,
`scan`, `export`, and the `--server ADDR --token T` options every read verb takes, so the CLI reads a
store another process holds, through its server. Each verb is a thin shell over the API method of the
same name (Session.search / keyword_search / retrieve / scan)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from knowledge.errors import InvalidArgument

EXPORT_FORMATS = ("parquet", "jsonl", "csv")


# -- where a read verb reads: a store directory, or a server --------------------------------------------
def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--server/--token (and client TLS) on a read verb; PATH becomes optional with --server."""
    group = parser.add_argument_group("reading through a server (instead of PATH)")
    group.add_argument("--server", metavar="HOST:PORT", help="read through a running `knowledge serve`")
    group.add_argument("--token", metavar="T", help="bearer token (default: $KNOWLEDGE_TOKEN)")
    group.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    group.add_argument("--tls-ca", metavar="PEM", help="CA certificate of the server (implies --tls)")
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mTLS")
    group.add_argument("--tls-key", metavar="PEM", help="client key, for mTLS")
    group.add_argument("--timeout", type=float, default=60.0, metavar="S", help="deadline per call (default 60 s)")


@contextlib.contextmanager
def open_target(args: argparse.Namespace, *, write: bool = False) -> Iterator[Any]:
    """The store a verb works on: `knowledge.connect(--server)` or the directory PATH (opened, closed after)."""
    import knowledge

    server = getattr(args, "server", None)
    path = getattr(args, "path", None)
    if server:
        if path:
            raise InvalidArgument(f"give either PATH ({path!r}) or --server ({server!r}), not both")
        from knowledge.remote import TLS
        tls: Any = None
        if args.tls or args.tls_ca or args.tls_cert:
            tls = TLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
        client = knowledge.connect(server, token=args.token, tls=tls, timeout_s=args.timeout)
        try:
            yield client
        finally:
            client.close()
        return
    if not path:
        raise InvalidArgument("give the store directory PATH, or --server HOST:PORT to read through a server")
    with knowledge.open(path, create=False) as store:
        yield store


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON ({exc}): {text[:80]!r}") from None


WHERE_OPERATORS = ("=", "==", "!=", "<", "<=", ">", ">=", "like", "in", "contains", "between")


def _where_json(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, condition in value.items():
        if name == "$or" and isinstance(condition, list):
            out[name] = [_where_json(b) if isinstance(b, dict) else b for b in condition]
        elif isinstance(condition, list) and len(condition) == 2 and isinstance(condition[0], str) \
                and condition[0] in WHERE_OPERATORS:
            out[name] = (condition[0], condition[1])
        else:
            out[name] = condition
    return out


def where_arg(text: str | None) -> dict[str, Any] | None:
    """--where JSON: {"age": [">", 30], "name": "ada"}: a two-item [operator, value] list is a comparison
    (["between", [1, 9]] a range); null is IS NULL; "$or" takes a list of such objects."""
    value = _json_arg(text, "--where")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument('--where must be a JSON object, e.g. {"age": [">", 30]}')
    return _where_json(value)


def _columns(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def _embedder(spec: str | None) -> Any:
    if spec is None or spec == "none":
        return None
    from knowledge import embed
    if spec == "default":
        return embed.default_embedder()
    if spec.startswith("hashing"):
        _, _, dimension = spec.partition(":")
        return embed.HashingEmbedder(int(dimension) if dimension else 256)
    raise InvalidArgument(f"--embedder must be none, default or hashing[:DIM], got {spec!r}")


# -- verbs ---------------------------------------------------------------------------------------------
def read_processes_arg(text: str) -> int:
    """--read-processes: a count, or "auto" (one per core, at least 2)."""
    if text == "auto":
        return max(2, os.cpu_count() or 1)
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number or auto, got {text!r}") from None


def read_nice_arg(text: str) -> int | str:
    """--read-processes-nice: "idle", or a nice step count."""
    if text == "idle":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be idle or a whole number 0-19, got {text!r}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from knowledge.server import ServerConfig, serve
    from knowledge.server.config import heavy_reads_default, read_workers_default
    config = ServerConfig(listen=args.listen, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          client_ca=args.client_ca, insecure=args.insecure, cert_principals=args.cert_principals,
                          message_bytes_max=args.message_bytes_max, workers_max=args.workers,
                          read_workers=read_workers_default() if args.read_workers is None else args.read_workers,
                          principal_calls_max=args.principal_calls_max,
                          heavy_reads_max=args.heavy_reads_max or heavy_reads_default(),
                          faiss_threads=args.faiss_threads, audit_flush_ms=args.audit_flush_ms,
                          drain_s=args.drain_s, metrics_listen=args.metrics,
                          recall_sample_fraction=args.recall_sample, log_json=args.log_json,
                          gil_switch_ms=args.gil_switch_ms, read_processes=args.read_processes,
                          read_processes_nice=args.read_processes_nice)
    if getattr(args, "role", None):
        if args.read_processes:
            raise InvalidArgument("--read-processes is for a lone server; a replicated one (--role) scales reads "
                                  "with replicas")
        from knowledge.server.replication_serve import serve_replicated
        return serve_replicated(args, config)
    return serve(args.data, config, audit=not args.no_audit)


def cmd_search(args: argparse.Namespace, print_json: Callable[[Any], None]) -> int:
    vector = _json_arg(args.vector, "--vector")
    if (vector is None) == (args.query is None):
        raise InvalidArgument("give --vector JSON (vector search) or --query TEXT (keyword search), one of them")
    with open_target(args) as store:
        session = store.session()
        where, columns = where_arg(args.where), _columns(args.columns)
        if vector is not None:
            table = session.search(vector, k=args.k, type=args.type, property=args.property, where=where,
                                   columns=columns)
        else:
            table = session.keyword_search(args.query, k=args.k, type=args.type, property=args.property,
                                           where=where, columns=columns)
        print_json(table.to_pylist())
    return 0


def cmd_retrieve(args: argparse.Namespace, print_json: Callable[[Any], None]) -> int:
    import dataclasses
    with open_target(args) as store:
        result = store.session().retrieve(args.question, k=args.k, mode=args.mode, embedder=_embedder(args.embedder),
                                          token_budget=args.token_budget)
    if args.context:
        print(result.context)
    else:
        print_json(dataclasses.asdict(result))
    return 0


def cmd_scan(args: argparse.Namespace, print_json: Callable[[Any], None]) -> int:
    """The rows as a JSON array; a paged scan (--limit, --offset, --cursor) also prints, on stderr, the
    cursor of the next page and whether more rows follow."""
    with open_target(args) as store:
        table = store.session().scan(args.type, where=where_arg(args.where), columns=_columns(args.columns),
                                     limit=args.limit, offset=args.offset, cursor=args.cursor)
        print_json(table.to_pylist())
    metadata = table.schema.metadata or {}
    if b"next_cursor" in metadata:
        more = metadata.get(b"has_more") == b"true"
        print(f"next page: --cursor {metadata[b'next_cursor'].decode()} "
              f"({'more rows follow' if more else 'no more rows yet'})", file=sys.stderr)
    return 0


def export_format(path: str, given: str | None) -> str:
    if given:
        return given
    name = path.lower()
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    raise InvalidArgument(f"cannot tell the format of {path!r} from its name: use --format {'/'.join(EXPORT_FORMATS)}")


def write_table(table: Any, path: str, fmt: str, jsonable: Callable[[Any], Any]) -> None:
    """Write `table` to `path` as Parquet, JSONL (one object per row) or CSV (nested values as JSON text);
    written to a temporary name and renamed, so a failed export leaves no partial file."""
    import pyarrow as pa
    temporary = f"{path}.partial"
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            pq.write_table(table, temporary)
        elif fmt == "jsonl":
            with open(temporary, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False, default=jsonable) + "\n")
        else:
            import pyarrow.csv as pcsv
            columns = {}
            for name, column in zip(table.column_names, table.columns, strict=True):
                if pa.types.is_nested(column.type):
                    column = pa.array([None if v is None else json.dumps(v, default=jsonable) for v in column.to_pylist()],
                                      type=pa.string())
                columns[name] = column
            pcsv.write_csv(pa.table(columns) if columns else table, temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


EXPORT_PAGE_ROWS = 10_000  # rows per scan page of an export (halved while a page is over a message cap)


def export_rows(session: Any, type_name: str, where: Any, columns: Any, limit: int | None) -> Any:
    """The rows an export writes, fetched page by page through scan cursors (so an export through a server
    is not bound by its message cap); each row comes once; rows written meanwhile may or may not come."""
    import pyarrow as pa

    from knowledge.errors import MessageTooLarge
    pages, cursor, rows, page_rows = [], None, 0, EXPORT_PAGE_ROWS
    while limit is None or rows < limit:
        want = page_rows if limit is None else min(page_rows, limit - rows)
        try:
            page = session.scan(type_name, where=where, columns=columns, limit=want, cursor=cursor)
        except MessageTooLarge:
            if page_rows == 1:
                raise
            page_rows = max(1, page_rows // 2)
            continue
        pages.append(page.replace_schema_metadata(None))
        rows += page.num_rows
        cursor = page.schema.metadata[b"next_cursor"].decode()
        if page.schema.metadata[b"has_more"] != b"true":
            break
    return pa.concat_tables(pages, promote_options="permissive")


def cmd_export(args: argparse.Namespace, print_json: Callable[[Any], None], jsonable: Callable[[Any], Any]) -> int:
    fmt = export_format(args.out, args.format)
    with open_target(args) as store:
        table = export_rows(store.session(), args.type, where_arg(args.where), _columns(args.columns), args.limit)
    write_table(table, args.out, fmt, jsonable)
    print_json({"type": args.type, "rows": table.num_rows, "file": args.out, "format": fmt})
    return 0


# -- parsers -----------------------------------------------------------------------------------------------
def add_commands(sub: Any, command: Callable[..., argparse.ArgumentParser], print_json: Callable[[Any], None],
                 jsonable: Callable[[Any], Any], positive_int: Callable[[str], int]) -> None:
    """Add serve, search, retrieve, scan and export to the `knowledge` parser's subcommands."""
    p = command(sub, "serve", cmd_serve,
                "Serve a store over gRPC (TLS, health checks, reflection) until SIGTERM, which drains.",
                ["knowledge serve --data people.store --listen 127.0.0.1:50051",
                 "knowledge serve --data people.store --listen 0.0.0.0:50051 --tls-cert srv.pem --tls-key srv.key"])
    p.add_argument("--data", required=True, metavar="DIR", help="store directory (the server owns it)")
    p.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT", help="default 127.0.0.1:50051")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--client-ca", metavar="PEM", help="require client certificates signed by this CA (mTLS)")
    p.add_argument("--cert-principals", action="store_true",
                   help="with --client-ca: a call without a token acts as its certificate's common name")
    p.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback address (loud warning)")
    p.add_argument("--message-bytes-max", type=positive_int, default=64 << 20, metavar="N",
                   help="largest request or reply in bytes (default 64 MiB)")
    p.add_argument("--workers", type=positive_int, default=96, metavar="N",
                   help="handler threads for writes, admin calls and streams (default 96)")
    p.add_argument("--read-workers", type=int, default=None, metavar="N",
                   help="threads for reads, per lane (light reads, heavy reads); 0: reads share --workers "
                        "(default twice the cores, at least 4)")
    p.add_argument("--principal-calls-max", type=positive_int, default=64, metavar="N",
                   help="calls in flight per principal before RESOURCE_EXHAUSTED (default 64)")
    p.add_argument("--heavy-reads-max", type=positive_int, default=None, metavar="N",
                   help="searches/retrievals/scans running at once; more wait (default 1 on 2 cores or fewer, else 2)")
    p.add_argument("--read-processes", type=read_processes_arg, default=0, metavar="N|auto",
                   help="N processes serve reads on the address, each from its own copy of the store that "
                        "follows this one's WAL; reads stay as of one LSN and see every acknowledged commit; this "
                        "process takes writes and admin calls, on a port of its own that clients are told "
                        "(default 0: this process serves everything; auto: one per core, at least 2)")
    p.add_argument("--read-processes-nice", type=read_nice_arg, default="idle", metavar="idle|N",
                   help="the read processes' OS priority below this process's: idle (SCHED_IDLE, the default: a "
                        "commit's threads take a core from them at once, but reads only get what other work "
                        "leaves) or N steps of nice, 0-19 (reads keep a share whatever else runs)")
    p.add_argument("--gil-switch-ms", type=float, default=1.0, metavar="MS",
                   help="the interpreter's switch interval while serving: how long a commit's thread may wait for "
                        "the lock reader threads hold (default 1; Python's own is 5)")
    p.add_argument("--faiss-threads", type=positive_int, default=1, metavar="N",
                   help="OpenMP threads per faiss call (default 1: calls run side by side instead)")
    p.add_argument("--drain-s", type=float, default=30.0, metavar="S", help="SIGTERM: time for calls in flight (30)")
    p.add_argument("--no-audit", action="store_true", help="do not keep the audit log (on by default when serving)")
    p.add_argument("--audit-flush-ms", type=float, default=10.0, metavar="MS",
                   help="audit entries reach DATA/audit/ within MS (batched by a writer thread; 0: written by each "
                        "read itself, so a crash of the server loses none) (10)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--recall-sample", type=float, default=0.0, metavar="F",
                   help="re-run this share of searches exactly in the background; export their recall (0)")
    p.add_argument("--log-json", action="store_true", help="one JSON log line per call, with its request id")
    from knowledge.server.replication_serve import add_replication_options, cmd_promote
    add_replication_options(p)
    p = command(sub, "promote", lambda a: cmd_promote(a, print_json),
                "Manual failover: make the replicated node at --server campaign to become the primary.",
                ["knowledge promote --server 127.0.0.1:50052"])
    p.add_argument("--server", required=True, metavar="ADDR", help="the node to promote (its serve --listen)")
    p.add_argument("--epoch", type=positive_int, metavar="N", help="the epoch to campaign for (default: the next)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA of the node's certificate: call it over TLS")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mTLS")
    p.add_argument("--tls-key", metavar="PEM", help="client key, for mTLS")

    def read_verb(name: str, handler: Callable[..., int], summary: str, examples: list[str]) -> argparse.ArgumentParser:
        parser = command(sub, name, handler, summary, examples)
        parser.add_argument("path", metavar="PATH", nargs="?", help="store directory (or use --server)")
        add_server_options(parser)
        return parser

    p = read_verb("search", lambda a: cmd_search(a, print_json),
                  "Vector search (--vector) or BM25 keyword search (--query); print the ranked rows as JSON.",
                  ["knowledge search people.store --vector '[0.1, 0.2, 0.3]' -k 5 --type Person",
                   "knowledge search --server 127.0.0.1:50051 --token kn_... --query 'analytical engine'"])
    p.add_argument("--vector", metavar="JSON", help="query vector as a JSON array (or @file.json)")
    p.add_argument("--query", metavar="TEXT", help="keyword query (BM25 over text properties)")
    p.add_argument("-k", type=positive_int, default=10, help="how many (default 10)")
    p.add_argument("--type", metavar="TYPE", help="node type (when several have vectors/text)")
    p.add_argument("--property", metavar="NAME", help="vector or text property")
    p.add_argument("--where", metavar="JSON", help='filter, e.g. {"age": [">", 30]}')
    p.add_argument("--columns", metavar="A,B", help="properties to add to each row")

    p = read_verb("retrieve", lambda a: cmd_retrieve(a, print_json),
                  "GraphRAG retrieval: ranked chunks, entities, edges and a prompt-ready context, as JSON.",
                  ["knowledge retrieve kb.store 'Who wrote the first program?' -k 5 --embedder default",
                   "knowledge retrieve --server 127.0.0.1:50051 --token kn_... 'honey bees' --mode keyword --context"])
    p.add_argument("question", metavar="QUESTION")
    p.add_argument("-k", type=positive_int, default=10, help="chunks (default 10)")
    p.add_argument("--mode", default="auto", choices=("auto", "vector", "keyword", "hybrid", "graph"))
    p.add_argument("--embedder", metavar="SPEC", help="none (default), default (MiniLM, embed extra) or hashing[:DIM]")
    p.add_argument("--token-budget", type=positive_int, default=2000, metavar="N", help="context size (default 2000)")
    p.add_argument("--context", action="store_true", help="print only the context text")

    for name, summary, examples in (
            ("scan", "Print the visible rows of one node type matching --where as JSON (in id order, paged).",
             ["knowledge scan people.store Person --where '{\"age\": [\">\", 30]}' --columns age",
              "knowledge scan people.store Person --where '{\"$or\": [{\"age\": [\"between\", [30, 40]]}, "
              "{\"age\": null}]}'",
              "knowledge scan --server 127.0.0.1:50051 --token kn_... Person --limit 10 --cursor kc1..."]),
            ("export", "Write the visible rows of one node type to Parquet, JSONL or CSV.",
             ["knowledge export people.store Person people.parquet",
              "knowledge export --server 127.0.0.1:50051 --token kn_... Person adults.csv --where '{\"age\": [\">=\", 18]}'"])):
        handler = (lambda a: cmd_scan(a, print_json)) if name == "scan" else (
            lambda a: cmd_export(a, print_json, jsonable))
        p = read_verb(name, handler, summary, examples)
        p.add_argument("type", metavar="TYPE", help="node type")
        if name == "export":
            p.add_argument("out", metavar="FILE", help="output file (.parquet, .jsonl, .csv)")
            p.add_argument("--format", choices=EXPORT_FORMATS, help="default: from FILE's name")
        p.add_argument("--where", metavar="JSON", help='filter, e.g. {"age": [">", 30]}')
        p.add_argument("--columns", metavar="A,B", help="properties to include (default all)")
        p.add_argument("--limit", type=positive_int, metavar="N", help="at most N rows")
        if name == "scan":
            p.add_argument("--offset", type=int, default=0, metavar="N", help="skip N matching rows (default 0)")
            p.add_argument("--cursor", metavar="C", help="resume after the page that printed `next page: --cursor C`")


def main_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
