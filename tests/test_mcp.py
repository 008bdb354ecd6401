"""`knowledge mcp` through the MCP SDK's own client, over stdio and streamable HTTP, against a data
directory and against a running `knowledge serve`: the tools, their schemas, text with provenance, the
bound principal's view (nothing hidden is returned or named), read-only by default."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest

mcp = pytest.importorskip("mcp", reason="the mcp extra (MCP SDK 2.x) is not installed")

import knowledge  # noqa: E402
from knowledge.embed import HashingEmbedder  # noqa: E402
from knowledge.graphrag import Document, ingest  # noqa: E402

DIMENSION = 64
PUBLIC = [Document("pub-1", "Ada Lovelace wrote the first program for the Analytical Engine.", title="Ada",
                   labels=["public"]),
          Document("pub-2", "Charles Babbage designed the Analytical Engine in London.", title="Babbage",
                   labels=["public"])]
SECRET = [Document("sec-1", "Zanzibar Protocol: the launch codes are kept by Quillfeather.", title="Zanzibar",
                   labels=["secret"])]
READ_TOOLS = {"retrieve", "search", "keyword_search", "get", "neighbors", "schema", "stats"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A store with public and secret documents; alice may read public only. Returns (path, token)."""
    path = str(tmp_path_factory.mktemp("mcp") / "kb.store")
    with knowledge.open(path) as store:
        ingest(store.session(), PUBLIC + SECRET, embedder=HashingEmbedder(DIMENSION), progress=False)
        store.create_principal("alice", read=["public"], write=["public"])
        token = store.issue_token("alice")
    return path, token


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "knowledge.cli", "mcp", *args]


def _text(result) -> str:
    return "\n".join(part.text for part in result.content if getattr(part, "text", None))


async def _exercise(client) -> dict[str, str]:
    """Call every read tool; return the texts (errors as 'ERROR: ...')."""
    listed = await client.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert READ_TOOLS <= set(tools), tools.keys()
    assert not {"upsert_nodes", "upsert_edges"} & set(tools)  # read-only by default
    assert tools["retrieve"].input_schema["properties"]["question"]["type"] == "string"
    assert "k" in tools["keyword_search"].input_schema["properties"]
    out = {}
    calls = {
        "retrieve": {"question": "Who wrote the first program for the Analytical Engine?", "k": 3, "mode": "hybrid"},
        "retrieve_secret": {"question": "Zanzibar Protocol launch codes Quillfeather", "k": 5, "mode": "hybrid"},
        "keyword_secret": {"query": "Zanzibar Quillfeather", "k": 5},
        "keyword": {"query": "Analytical Engine", "k": 5},
        "search": {"query": "Analytical Engine", "k": 2},
        "schema": {},
        "stats": {},
        "get_secret": {"type": "Document", "key": "sec-1"},
        "get_absent": {"type": "Document", "key": "sec-9"},
        "get_public": {"type": "Document", "key": "pub-1"},
    }
    names = {"retrieve_secret": "retrieve", "keyword_secret": "keyword_search", "keyword": "keyword_search",
             "get_secret": "get", "get_absent": "get", "get_public": "get"}
    for label, arguments in calls.items():
        result = await client.call_tool(names.get(label, label), arguments)
        text = _text(result)
        out[label] = ("ERROR: " + text) if result.is_error else text
    return out


def _check_view(out: dict[str, str]) -> None:
    assert "document=pub-1" in out["retrieve"] and "score=" in out["retrieve"] and "chunk=" in out["retrieve"]
    assert "Lovelace" in out["retrieve"]
    for label in ("retrieve", "retrieve_secret", "keyword_secret", "keyword", "search", "schema", "stats"):
        text = out[label].replace("Zanzibar Protocol launch codes Quillfeather", "").replace(
            "Zanzibar Quillfeather", "")  # the question itself is echoed back
        assert "Zanzibar" not in text and "Quillfeather" not in text and "sec-1" not in text, label
    assert "no results" in out["keyword_secret"]
    assert out["get_secret"].startswith("ERROR")  # and it reads exactly as for a key that does not exist
    assert out["get_secret"].replace("sec-1", "KEY") == out["get_absent"].replace("sec-9", "KEY")
    assert "Document" in out["get_public"] and "Ada" in out["get_public"]
    assert "pub-2" in out["keyword"] or "pub-1" in out["keyword"]


def test_stdio_against_a_data_directory(data):
    path, token = data
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    async def main():
        params = StdioServerParameters(command=sys.executable,
                                       args=_command("--data", path, "--token", token,
                                                     "--embedder", f"hashing:{DIMENSION}")[1:])
        async with Client(params, read_timeout_seconds=120) as client:
            return await _exercise(client)

    _check_view(asyncio.run(main()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listened on {port} within {timeout_s} s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_streamable_http_against_a_running_server(data, tmp_path):
    """The MCP server in front of `knowledge serve` (the token's principal applied by the gRPC server)."""
    path, token = data
    grpc_port, http_port = _free_port(), _free_port()
    serve = subprocess.Popen([sys.executable, "-m", "knowledge.cli", "serve", "--data", path,
                              "--listen", f"127.0.0.1:{grpc_port}", "--no-audit"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mcp_server = None
    try:
        _wait_port(grpc_port, serve)
        mcp_server = subprocess.Popen(_command("--server", f"127.0.0.1:{grpc_port}", "--token", token,
                                               "--transport", "http", "--listen", f"127.0.0.1:{http_port}",
                                               "--embedder", f"hashing:{DIMENSION}"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_port(http_port, mcp_server)
        from mcp import Client

        async def main():
            async with Client(f"http://127.0.0.1:{http_port}/mcp", read_timeout_seconds=120) as client:
                return await _exercise(client)

        _check_view(asyncio.run(main()))
    finally:
        if mcp_server is not None:
            _stop(mcp_server)
        _stop(serve)


def test_writes_need_the_flag_and_the_grant(tmp_path):
    from mcp import Client

    from knowledge.server.mcp_server import McpTarget, build_mcp_server

    path = str(tmp_path / "w.store")
    store = knowledge.open(path)
    try:
        store.define_node_type("Note", key="name", properties={"body": "text"})
        store.create_principal("bob", read=["team"], write=["team"])
        target = McpTarget(lambda: store.session("bob"), "test")

        async def main():
            async with Client(build_mcp_server(target)) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert "upsert_nodes" not in names
            async with Client(build_mcp_server(target, allow_writes=True)) as client:
                ok = await client.call_tool("upsert_nodes", {"type": "Note", "rows": [
                    {"name": "n1", "body": "hello team", "_labels": ["team"]}]})
                denied = await client.call_tool("upsert_nodes", {"type": "Note", "rows": [
                    {"name": "n2", "body": "not mine", "_labels": ["board"]}]})
                found = await client.call_tool("keyword_search", {"query": "hello", "k": 3})
                return ok, denied, found

        ok, denied, found = asyncio.run(main())
        assert not ok.is_error and "upserted 1" in _text(ok)
        assert denied.is_error and "board" in _text(denied)
        assert "n1" in _text(found)
        assert store.session().count("Note") == 1
    finally:
        store.close()


def test_a_bad_token_is_refused_before_serving(data):
    path, _ = data
    done = subprocess.run(_command("--data", path, "--token", "kn_not-a-token"), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ})
    assert done.returncode == 1
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr
