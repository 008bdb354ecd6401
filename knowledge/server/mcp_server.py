"""`knowledge mcp`: a Model Context Protocol server that gives an agent the store's retrieval tools,
bound to one principal by its bearer token (the MCP SDK 2.x, optional extra `mcp`).

Tools (each with a JSON schema from its signature, each answering text an LLM can read, with the
provenance of everything it returns: document, chunk, score, path): `retrieve`, `search`,
`keyword_search`, `get`, `neighbors`, `schema`, `stats`; with `allow_writes`, also `upsert_nodes` and
`upsert_edges`. The target is a data directory (embedded) or a running `knowledge serve` (through
`knowledge.connect`); either way every call goes through a session of the token's principal, so the
agent sees what that principal may see and nothing else. Transports: stdio and streamable HTTP.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from knowledge.errors import InvalidArgument, KnowledgeError, PermissionDenied

TEXT_CHARS_MAX = 1200  # characters of a chunk's text shown per hit
ROWS_MAX = 50  # rows (hits, neighbours) any one tool answers with


@dataclass
class McpTarget:
    """What the MCP tools read: `open_session()` yields a session of the bound principal per call."""

    open_session: Callable[[], Any]
    describe: str
    embedder: Any = None
    close: Callable[[], None] = lambda: None


def target_from_data(path: str, token: str, *, embedder: Any = None) -> McpTarget:
    """Open the store at `path` (this process then owns it) and bind the token's principal."""
    import knowledge

    store = knowledge.open(path, create=False)
    try:
        principal = store.authenticate(token)
    except KnowledgeError:
        store.close()
        raise
    return McpTarget(lambda: store.session(principal.name), f"{path} as {principal.name}", embedder, store.close)


def target_from_server(address: str, token: str, *, tls: Any = None, embedder: Any = None) -> McpTarget:
    """Reach a running `knowledge serve` at `address` with the token (its principal is the server's call)."""
    import knowledge

    remote: Any = knowledge.connect(address, token=token, tls=tls)
    return McpTarget(remote.session, f"{address}", embedder, remote.close)


def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= TEXT_CHARS_MAX else text[:TEXT_CHARS_MAX] + " ..."


def _limit(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= ROWS_MAX:
        raise InvalidArgument(f"{name} must be an integer from 1 to {ROWS_MAX}, got {k!r}")
    return k


def format_retrieval(result: Any) -> str:
    """A RetrievalResult as numbered hits with document, chunk, score, entities and supporting paths."""
    lines = [f"retrieval for {result.question!r} (mode {result.mode}, snapshot LSN {result.lsn}): "
             f"{len(result.chunks)} chunk(s)"]
    titles = {doc.doc_id: doc.title for doc in result.documents}
    for rank, chunk in enumerate(result.chunks, 1):
        title = titles.get(chunk.doc_id)
        lines.append(f"[{rank}] document={chunk.doc_id}" + (f" ({title})" if title else "")
                     + f" chunk={chunk.key} score={chunk.score:.4f}")
        if chunk.entities:
            lines.append(f"    entities: {', '.join(chunk.entities[:12])}")
        paths = [edge for edge in result.edges if edge.chunk_id in (None, chunk.key) and edge.type != "MENTIONS"]
        for edge in paths[:5]:
            relation = f" -{edge.relation}-> " if edge.relation else " -> "
            lines.append(f"    path: {edge.src}{relation}{edge.dst} ({edge.type}, {edge.score:.3f})")
        lines.append("    " + _clip(chunk.text).replace("\n", " "))
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _format_rows(title: str, table: Any) -> str:
    rows = table.to_pylist()[:ROWS_MAX]
    if not rows:
        return f"{title}: no results"
    lines = [f"{title}: {len(rows)} result(s)"]
    for rank, row in enumerate(rows, 1):
        score = row.pop("_score", None)
        key = row.pop("_key", None)
        row.pop("_id", None)
        head = f"[{rank}] key={key}" + (f" score={score:.4f}" if isinstance(score, float) else "")
        lines.append(head)
        for name, value in row.items():
            if isinstance(value, list) and value and isinstance(value[0], float):
                continue  # vectors mean nothing to a reader
            lines.append(f"    {name}: {_clip(value)}")
    return "\n".join(lines)


class KnowledgeTools:
    """The tools' logic, independent of the MCP SDK (so it is tested the same through every transport)."""

    def __init__(self, target: McpTarget, *, allow_writes: bool = False) -> None:
        self.target = target
        self.allow_writes = allow_writes

    @contextmanager
    def _session(self) -> Iterator[Any]:
        yield self.target.open_session()

    def retrieve(self, question: str, k: int = 5, mode: str = "auto", token_budget: int = 1500) -> str:
        with self._session() as session:
            result = session.retrieve(question, k=_limit(k), mode=mode, embedder=self.target.embedder,
                                      token_budget=token_budget)
        return format_retrieval(result)

    def search(self, query: str, k: int = 5, type: str | None = None, property: str | None = None) -> str:
        if self.target.embedder is None:
            raise InvalidArgument("search needs an embedder: start `knowledge mcp` with --embedder (or use "
                                  "keyword_search or retrieve)")
        vector = self.target.embedder.embed([query])[0]
        with self._session() as session:
            table = _chunks_by_default(lambda t, p: session.search(vector, k=_limit(k), type=t, property=p),
                                       type, property, "embedding")
        return _format_rows(f"vector search for {query!r}", table)

    def keyword_search(self, query: str, k: int = 5, type: str | None = None, property: str | None = None) -> str:
        with self._session() as session:
            table = _chunks_by_default(lambda t, p: session.keyword_search(query, k=_limit(k), type=t, property=p),
                                       type, property, "text")
        return _format_rows(f"keyword search (BM25) for {query!r}", table)

    def get(self, type: str, key: str | int) -> str:
        with self._session() as session:
            row = _by_key(lambda k: session.get(type, k), key)
        return f"{type} {key!r}:\n" + "\n".join(f"    {name}: {_clip(value)}" for name, value in row.items()
                                                   if not (isinstance(value, list) and value
                                                           and isinstance(value[0], float)))

    def neighbors(self, type: str, key: str | int, edge_type: str | None = None, direction: str = "out",
                  limit: int = 20) -> str:
        with self._session() as session:
            refs = _by_key(lambda k: session.neighbors(type, k, edge_type=edge_type, direction=direction,
                                                       limit=_limit(limit, "limit")), key)
        if not refs:
            return f"{type} {key!r} has no visible {direction} neighbours" + (f" over {edge_type}" if edge_type else "")
        lines = [f"{len(refs)} {direction} neighbour(s) of {type} {key!r}" + (f" over {edge_type}" if edge_type else "")]
        lines += [f"- {ref.type} {ref.key!r} (id {ref.id})" for ref in refs]
        return "\n".join(lines)

    def schema(self) -> str:
        with self._session() as session:
            stats = session.stats()
        return json.dumps({"nodes": stats.get("nodes"), "edges": stats.get("edges"),
                           "schema": _schema_of(session)}, indent=2, default=str)

    def stats(self) -> str:
        with self._session() as session:
            return json.dumps(session.stats(), indent=2, default=str)

    def upsert_nodes(self, type: str, rows: list[dict[str, Any]]) -> str:
        self._check_writes()
        with self._session() as session:
            with session.transaction() as tx:
                tx.upsert_nodes(type, rows)
        return f"upserted {len(rows)} {type} node(s)"

    def upsert_edges(self, type: str, rows: list[dict[str, Any]]) -> str:
        self._check_writes()
        with self._session() as session:
            with session.transaction() as tx:
                tx.upsert_edges(type, rows)
        return f"upserted {len(rows)} {type} edge(s)"

    def _check_writes(self) -> None:
        if not self.allow_writes:
            raise PermissionDenied("this MCP server is read-only (start it with --allow-writes to enable writes)")


def _chunks_by_default(call: Callable[[Any, Any], Any], type: str | None, property: str | None,
                       chunk_property: str) -> Any:
    """Search as asked; where no type was named and several properties match, a GraphRAG store's chunks
    (`Chunk.<chunk_property>`) are what an agent means."""
    try:
        return call(type, property)
    except InvalidArgument as exc:
        if type is None and property is None and "several" in str(exc):
            return call("Chunk", chunk_property)
        raise


def _by_key(call: Callable[[Any], Any], key: str | int) -> Any:
    """Call with the key as given; an LLM often writes an int key as a string, so "42" retries as 42."""
    from knowledge.errors import NotFound, TypeMismatch

    try:
        return call(key)
    except (NotFound, TypeMismatch):
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            return call(int(key))
        raise


def _schema_of(session: Any) -> Any:
    store = getattr(session, "store", None)
    schema = getattr(store, "schema", None)
    return schema.to_dict() if hasattr(schema, "to_dict") else None


READ_TOOLS = ("retrieve", "search", "keyword_search", "get", "neighbors", "schema", "stats")
WRITE_TOOLS = ("upsert_nodes", "upsert_edges")
DESCRIPTIONS = {
    "retrieve": "GraphRAG retrieval: the best chunks for a question (mode auto|graph|hybrid|vector|keyword), "
                "with their documents, scores, entities and the graph paths that support them.",
    "search": "Vector similarity search of nodes by a text query (embedded by the server's embedder).",
    "keyword_search": "BM25 keyword search over the text properties of nodes.",
    "get": "One node's properties by its type and key.",
    "neighbors": "The nodes linked to a node (direction out|in|both, optionally over one edge type).",
    "schema": "The node and edge types, their properties, and how many of each the caller can see.",
    "stats": "Figures of the store as the caller sees it (counts, LSN).",
    "upsert_nodes": "Insert or update nodes of one type (rows of properties with the key). Needs --allow-writes.",
    "upsert_edges": "Insert or update edges of one type (rows with src, dst, properties). Needs --allow-writes.",
}


def build_mcp_server(target: McpTarget, *, allow_writes: bool = False, name: str = "knowledge") -> Any:
    """An `mcp.server.mcpserver.MCPServer` exposing the tools over `target` (ImportError without `mcp`)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    tools = KnowledgeTools(target, allow_writes=allow_writes)

    def reported(method: Callable[..., str]) -> Callable[..., str]:
        """The tool, with a knowledge error shown to the agent as what was wrong (the SDK hides others)."""
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> str:
            try:
                return method(*args, **kwargs)
            except KnowledgeError as exc:
                raise ToolError(f"{type(exc).__name__}: {exc}") from exc
        return call

    server = MCPServer(name, instructions=f"Retrieval over the knowledge store {target.describe}. Every result "
                                          f"is limited to what the bound principal may see.")
    for tool_name in READ_TOOLS + (WRITE_TOOLS if allow_writes else ()):
        server.tool(name=tool_name, description=DESCRIPTIONS[tool_name], structured_output=False)(
            reported(getattr(tools, tool_name)))
    return server


def run_mcp(target: McpTarget, *, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765,
            allow_writes: bool = False) -> None:
    """Serve the tools until the client goes away (stdio) or the process is stopped (http)."""
    server = build_mcp_server(target, allow_writes=allow_writes)
    try:
        if transport == "stdio":
            server.run("stdio")
        elif transport == "http":
            server.run("streamable-http", host=host, port=port)
        else:
            raise InvalidArgument(f"unknown MCP transport {transport!r} (stdio or http)")
    finally:
        target.close()


def embedder_from_name(name: str | None) -> Any:
    """`--embedder`: none, `hashing` / `hashing:DIM` (no model), `default` (the packaged MiniLM, extra
    `embed`), or a sentence-transformers model name."""
    if not name or name == "none":
        return None
    from knowledge import embed

    if name == "default":
        return embed.default_embedder()
    if name.startswith("hashing"):
        _, _, dimension = name.partition(":")
        return embed.HashingEmbedder(int(dimension) if dimension else 256)
    return embed.SentenceTransformerEmbedder(name)


def cmd_mcp(args: Any) -> int:
    """`knowledge mcp`: serve the tools over stdio or streamable HTTP until stopped."""
    import os

    token = args.token or os.environ.get("KNOWLEDGE_TOKEN")
    if not token:
        raise InvalidArgument("knowledge mcp binds one principal: pass --token T (or set KNOWLEDGE_TOKEN)")
    if bool(args.data) == bool(args.server):
        raise InvalidArgument("pass exactly one of --data DIR (a store directory) or --server ADDR")
    embedder = embedder_from_name(args.embedder)
    if args.data:
        target = target_from_data(args.data, token, embedder=embedder)
    else:
        target = target_from_server(args.server, token, tls=args.tls_ca or None, embedder=embedder)
    host, _, port = args.listen.rpartition(":")
    run_mcp(target, transport=args.transport, host=host or "127.0.0.1", port=int(port), allow_writes=args.allow_writes)
    return 0


def add_mcp_command(sub: Any, command: Callable[..., Any]) -> None:
    """Add `mcp` to the `knowledge` parser's subcommands."""
    p = command(sub, "mcp", cmd_mcp,
                "Serve retrieval tools to agents over MCP (stdio or streamable HTTP), bound to one principal by "
                "token; read-only unless --allow-writes. Needs the `mcp` extra.",
                ["knowledge mcp --data people.store --token kn_...",
                 "knowledge mcp --server 127.0.0.1:50051 --token kn_... --transport http --listen 127.0.0.1:8765"])
    p.add_argument("--data", metavar="DIR", help="store directory (this process owns it)")
    p.add_argument("--server", metavar="ADDR", help="a running `knowledge serve` (HOST:PORT)")
    p.add_argument("--tls-ca", metavar="PEM", help="with --server: CA that signed the server's certificate")
    p.add_argument("--token", metavar="T", help="the principal's bearer token (default: $KNOWLEDGE_TOKEN)")
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="stdio (default) or http")
    p.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT", help="http: where (127.0.0.1:8765)")
    p.add_argument("--embedder", metavar="NAME", default="none",
                   help="query embedder for search/retrieve: none, hashing[:DIM], default (MiniLM) or a model name")
    p.add_argument("--allow-writes", action="store_true", help="also offer upsert_nodes and upsert_edges")
