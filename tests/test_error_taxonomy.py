"""Every exception that leaves the public API or the CLI is a KnowledgeError subclass (issue 11, point 8).

Each public entry point (Store, Session and Transaction methods, knowledge.open, knowledge.restore,
GraphRAG ingest/retrieve and every CLI verb) is driven with bad input; the exception must be the named
subclass of KnowledgeError (never KnowledgeError itself, never a raw DuckDB, OS or Python error) and
its message must say what was wrong. The CLI prints one `error: ...` line and exits 1, no traceback.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import knowledge
import knowledge.errors as errors
from knowledge.cli import main
from knowledge.graphrag import Document, ingest, retrieve


class HashEmbedder:
    """A tiny deterministic embedder (bag of hashed words), so GraphRAG runs without torch."""

    name = "hash-8"
    dimension = 8

    def embed(self, texts):
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, hashlib.sha256(word.encode()).digest()[0] % 8] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)


class WrongDimensionEmbedder(HashEmbedder):
    def embed(self, texts):
        return np.ones((len(texts), 3), dtype=np.float32) / np.sqrt(3)


EMBED = HashEmbedder()
HAVE_MCP = importlib.util.find_spec("mcp") is not None


def _populate(store: knowledge.Store) -> None:
    store.define_node_type("Person", key="name", properties={
        "age": "int", "bio": "text", "emb": "vector[3]", "tags": "list[str]"})
    store.define_edge_type("KNOWS", source="Person", target="Person")
    with store.session().transaction() as tx:
        tx.upsert_nodes("Person", [{"name": "ada", "age": 36, "bio": "hello world", "emb": [1, 0, 0],
                                    "_labels": ["public"]}])
    store.create_principal("alice", read=["public"])
    ingest(store.session(), [Document("d1", "Bees make honey from nectar.", labels=["public"])], embedder=EMBED)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = knowledge.open(str(tmp_path_factory.mktemp("taxonomy") / "s.store"))
    _populate(store)
    yield store
    store.close()


@pytest.fixture(scope="module")
def closed(tmp_path_factory):
    """A session (and its store) after store.close()."""
    store = knowledge.open(str(tmp_path_factory.mktemp("closed") / "s.store"))
    _populate(store)
    session = store.session()
    store.close()
    return store, session


def check(call, expected: str | tuple[str, ...], *words: str) -> errors.KnowledgeError:
    """Run `call`; it must raise one of the `expected` KnowledgeError subclasses (by name, from
    knowledge.errors) with every one of `words` in its message."""
    names = (expected,) if isinstance(expected, str) else expected
    classes = tuple(getattr(errors, name, None) for name in names)
    try:
        result = call()
    except Exception as caught:  # noqa: BLE001 - the type is the assertion below
        exc = caught
    else:
        raise AssertionError(f"no exception (returned {str(result)[:80]!r})")
    assert isinstance(exc, errors.KnowledgeError), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert type(exc) is not errors.KnowledgeError, f"bare KnowledgeError: {exc}"
    assert all(c is not None for c in classes), f"knowledge.errors lacks one of {names}"
    assert isinstance(exc, classes), f"expected {names}, got {type(exc).__name__}: {exc}"
    for word in words:
        assert word.lower() in str(exc).lower(), f"{word!r} not in {str(exc)!r}"
    return exc


def check_all(cases: dict) -> None:
    """`check` every case ({name: (call, expected, words)}); report every case that fails at once."""
    failures = []
    for name, (call, expected, words) in sorted(cases.items()):
        try:
            check(call, expected, *words)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}".splitlines()[0])
    assert not failures, "\n".join(failures)


# -- queries: a where-filter that does not fit the schema is the caller's error, never DuckDB's ---------
WHERE_CASES = {
    "int compared with text": ({"age": (">", "abc")}, ["age", "abc"]),
    "where is not a dict": ("age > 3", ["where"]),
    "in without a list": ({"age": ("in", 5)}, ["age", "in"]),
    "in with a bad item": ({"age": ("in", [1, "x"])}, ["age", "x"]),
    "contains a non-str": ({"tags": ("contains", 5)}, ["tags"]),
    "list compared with int": ({"age": [1, 2]}, ["age"]),
    "three-part condition": ({"age": (">", 1, 2)}, ["age"]),
    "dict compared with int": ({"age": {"a": 1}}, ["age"]),
    "text compared with int": ({"bio": (">", 5)}, ["bio"]),
    "like on an int": ({"age": ("like", "a%")}, ["age", "like"]),
    "bool for an int": ({"age": True}, ["age"]),
}


def test_scan_with_a_bad_where(store):
    session = store.session()
    check_all({case: (lambda where=where: session.scan("Person", where=where), "InvalidQuery", words)
               for case, (where, words) in WHERE_CASES.items()})


@pytest.mark.parametrize("method", ["search", "keyword_search"])
def test_searches_with_a_bad_where(store, method):
    session = store.session()
    args = {"search": ([1.0, 0.0, 0.0],), "keyword_search": ("hello",)}[method]
    run = getattr(session, method)
    check(lambda: run(*args, type="Person", property="emb" if method == "search" else "bio",
                      where={"age": (">", "abc")}), "InvalidQuery", "age", "abc")


def test_invalid_query_is_an_invalid_argument():
    assert issubclass(errors.InvalidQuery, errors.InvalidArgument)


# -- other Session and Transaction arguments --------------------------------------------------------------
SESSION_CASES = {
    "scan columns not iterable": (lambda s: s.scan("Person", columns=5), "InvalidArgument", ["columns"]),
    "get with a list key": (lambda s: s.get("Person", ["a"]), "InvalidArgument", ["key"]),
    "get with a dict key": (lambda s: s.get("Person", {"a": 1}), "InvalidArgument", ["key"]),
    "get_many with an int": (lambda s: s.get_many("Person", 5), "InvalidArgument", ["keys"]),
    "get_many with a list key": (lambda s: s.get_many("Person", [["a"]]), "InvalidArgument", ["key"]),
    "neighbors edge type int": (lambda s: s.neighbors("Person", "ada", edge_type=5),
                                ("InvalidArgument", "UnknownType"), ["edge type"]),
    "traverse depth str": (lambda s: s.traverse("Person", "ada", depth="x"), "InvalidArgument", ["depth"]),
    "ref beyond the ids": (lambda s: s.ref(10 ** 9), ("NotFound", "InvalidArgument"), []),
    "ref negative": (lambda s: s.ref(-1), ("NotFound", "InvalidArgument"), []),
    "ref str": (lambda s: s.ref("a"), ("NotFound", "InvalidArgument"), []),
    "delete_nodes int": (lambda s: s.transaction().delete_nodes("Person", 5), "InvalidArgument", ["keys"]),
    "delete_nodes None": (lambda s: s.transaction().delete_nodes("Person", None), "InvalidArgument", ["keys"]),
    "delete_nodes list key": (lambda s: s.transaction().delete_nodes("Person", [["a"]]).commit(),
                              "InvalidArgument", ["key"]),
    "commit twice": (lambda s: [tx.commit() for tx in [s.transaction()] * 2], "TransactionClosed",
                     ["committed"]),
    "upsert after rollback": (lambda s: _rolled_back(s).upsert_nodes("Person", [{"name": "x"}]),
                              "TransactionClosed", ["rolled back"]),
    "retrieve vector mode without an embedder": (lambda s: s.retrieve("bees", mode="vector"),
                                                 "EmbedderUnavailable", ["embedder"]),
    "retrieve candidates str": (lambda s: retrieve(s, "bees", mode="keyword", candidates="x"),
                                "InvalidArgument", ["candidates"]),
    "retrieve params str": (lambda s: retrieve(s, "bees", mode="graph", embedder=EMBED, params="x"),
                            "InvalidArgument", ["params"]),
    "ingest without an embedder": (lambda s: ingest(s, [Document("d2", "t")], embedder=None),
                                   "InvalidArgument", ["embedder"]),
    "ingest batch_size str": (lambda s: ingest(s, [Document("d2", "t")], embedder=EMBED, batch_size="x"),
                              "InvalidArgument", ["batch_size"]),
    "ingest wrong dimension": (lambda s: ingest(s, [Document("d2", "t")], embedder=WrongDimensionEmbedder()),
                               ("TypeMismatch", "InvalidArgument", "SchemaError"), ["dimension"]),
    "ingest a str": (lambda s: ingest(s, "abc", embedder=EMBED), "InvalidArgument", ["Document"]),
    # already typed before issue 11: kept so that every entry point stays covered
    "get an absent key": (lambda s: s.get("Person", "nobody"), "NotFound", ["nobody"]),
    "get an unknown type": (lambda s: s.get("Nope", "x"), "UnknownType", ["Nope"]),
    "scan an unknown column": (lambda s: s.scan("Person", columns=["nope"]), "InvalidArgument", ["nope"]),
    "count an unknown type": (lambda s: s.count("Nope"), "UnknownType", ["Nope"]),
    "edges of an unknown type": (lambda s: s.edges("NOPE"), "UnknownType", ["NOPE"]),
    "edges limit": (lambda s: s.edges("KNOWS", limit=-1), "InvalidArgument", ["limit"]),
    "adjacency edge type int": (lambda s: s.adjacency(5), ("InvalidArgument", "UnknownType"), ["edge type"]),
    "search of the wrong dimension": (lambda s: s.search([1.0, 2.0], type="Person", property="emb"),
                                      "InvalidArgument", ["dimension"]),
    "search k 0": (lambda s: s.search([1.0, 0.0, 0.0], k=0, type="Person", property="emb"), "InvalidArgument",
                   ["k"]),
    "keyword_search of nothing": (lambda s: s.keyword_search(" "), "InvalidArgument", ["query"]),
    "neighbors direction": (lambda s: s.neighbors("Person", "ada", direction="up"), "InvalidArgument",
                            ["direction"]),
    "traverse depth 0": (lambda s: s.traverse("Person", "ada", depth=0), "InvalidArgument", ["depth"]),
    "retrieve k 0": (lambda s: s.retrieve("bees", k=0), "InvalidArgument", ["k"]),
    "upsert an unknown type": (lambda s: s.transaction().upsert_nodes("Nope", []), "UnknownType", ["Nope"]),
    "upsert a str": (lambda s: s.transaction().upsert_nodes("Person", "x"), "ValidationError", ["str"]),
    "upsert_edges to an absent node": (lambda s: s.transaction().upsert_edges(
        "KNOWS", [{"src": "ada", "dst": "zz"}]).commit(), "MissingEndpoint", ["zz"]),
    "delete_edges of a str": (lambda s: s.transaction().delete_edges("KNOWS", "x"), "ValidationError", ["str"]),
}


def _rolled_back(session):
    tx = session.transaction()
    tx.rollback()
    return tx


def test_session_and_transaction_arguments(store):
    check_all({case: (lambda call=call: call(store.session()), expected, words)
               for case, (call, expected, words) in SESSION_CASES.items()})


def test_embedder_unavailable_is_a_knowledge_error():
    from knowledge.embed import EmbedderUnavailable, NotPrecomputed
    assert issubclass(EmbedderUnavailable, errors.KnowledgeError)
    assert issubclass(NotPrecomputed, errors.KnowledgeError)
    assert issubclass(EmbedderUnavailable, RuntimeError)  # what callers caught before


# -- Store methods ------------------------------------------------------------------------------------------
STORE_CASES = {
    "properties as a list": (lambda s: s.define_node_type("X", key="k", properties=["a"]), "SchemaError",
                             ["properties"]),
    "nodes section not a dict": (lambda s: s.apply_schema({"nodes": 5}), "SchemaError", ["nodes"]),
    "schema change not a dict": (lambda s: s.apply_schema("x"), "SchemaError", []),
    "principal read grants not iterable": (lambda s: s.create_principal("bob", read=5), "InvalidArgument",
                                           ["read"]),
    "principal name not a str": (lambda s: s.create_principal(5), "InvalidArgument", ["name"]),
    "backup to an int": (lambda s: s.backup(5), ("InvalidArgument", "BackupError"), ["destination"]),
    "build_indexes timeout str": (lambda s: s.build_indexes(timeout_s="x"), "InvalidArgument", ["timeout_s"]),
    "session of an int": (lambda s: s.session(5), "InvalidArgument", ["principal"]),
    "commit as a str": (lambda s: s.commit("alice", []), "InvalidArgument", ["principal"]),
    "commit of other items": (lambda s: s.commit(knowledge.ADMIN, [("drop_table", "Person", None)]),
                              "InvalidArgument", ["items"]),
    "visibility of a str": (lambda s: s.visibility("alice"), "InvalidArgument", ["principal"]),
    "wait_applied for a str": (lambda s: s.wait_applied("x"), "InvalidArgument", ["lsn"]),
    # already typed before issue 11: kept so that every entry point stays covered
    "float key": (lambda s: s.define_node_type("X", key="k", properties={"k": "float"}), "SchemaError", ["key"]),
    "edge to an unknown type": (lambda s: s.define_edge_type("E", source="Nope", target="Person"), "SchemaError",
                                ["Nope"]),
    "add_property to an unknown type": (lambda s: s.add_property("Nope", "a", "int"), "SchemaError", ["Nope"]),
    "a second alice": (lambda s: s.create_principal("alice"), "InvalidArgument", ["alice"]),
    "grant nobody": (lambda s: s.grant("nobody", read=["x"]), "InvalidArgument", ["nobody"]),
    "revoke nobody": (lambda s: s.revoke("nobody", read=["x"]), "InvalidArgument", ["nobody"]),
    "drop nobody": (lambda s: s.drop_principal("nobody"), "InvalidArgument", ["nobody"]),
    "token of nobody": (lambda s: s.issue_token("nobody"), "InvalidArgument", ["nobody"]),
    "revoke_tokens of nobody": (lambda s: s.revoke_tokens("nobody"), "InvalidArgument", ["nobody"]),
    "authenticate an int": (lambda s: s.authenticate(5), "PermissionDenied", ["token"]),
    "audit_log as alice": (lambda s: s.session("alice").audit_log(), "PermissionDenied", ["admin"]),
    "set_ttl on an unknown type": (lambda s: s.set_ttl("Nope", "7d"), "UnknownType", ["Nope"]),
    "set_ttl of a bad duration": (lambda s: s.set_ttl("Person", "a while"), "InvalidArgument", ["expire_after"]),
    "set_ttl on a text property": (lambda s: s.set_ttl("Person", "7d", on="bio"), "SchemaError", ["bio"]),
    "sweep_expired of 0 rows": (lambda s: s.sweep_expired(rows_max=0), "InvalidArgument", ["rows_max"]),
}


def test_store_arguments(store):
    check_all({case: (lambda call=call: call(store), expected, words)
               for case, (call, expected, words) in STORE_CASES.items()})


NO_INPUT = {"Store.close": "takes nothing; closing twice is a no-op by design",
            "Transaction.rollback": "takes nothing; rolling back twice is a no-op by design"}


def test_every_public_method_is_driven():
    """Each public method of Store, Session and Transaction is called with bad input somewhere above (a new
    method fails this until it has a case)."""
    with open(__file__, encoding="utf-8") as f:
        called = set(re.findall(r"\.(\w+)\(", f.read()))
    missing = []
    for cls in (knowledge.Store, knowledge.Session, knowledge.Transaction):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            if name not in called and f"{cls.__name__}.{name}" not in NO_INPUT:
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, f"public methods without a bad-input case: {missing}"


CLOSED_SESSION_CALLS = {
    "get": lambda s: s.get("Person", "ada"),
    "get_many": lambda s: s.get_many("Person", ["ada"]),
    "scan": lambda s: s.scan("Person"),
    "search": lambda s: s.search([1.0, 0.0, 0.0], type="Person", property="emb"),
    "keyword_search": lambda s: s.keyword_search("hello", type="Person", property="bio"),
    "neighbors": lambda s: s.neighbors("Person", "ada"),
    "traverse": lambda s: s.traverse("Person", "ada"),
    "adjacency": lambda s: s.adjacency(),
    "edges": lambda s: s.edges("KNOWS"),
    "count": lambda s: s.count(),
    "stats": lambda s: s.stats(),
    "visible": lambda s: s.visible(),
    "ref": lambda s: s.ref(0),
    "audit_log": lambda s: s.audit_log(),
    "retrieve": lambda s: s.retrieve("bees", mode="keyword"),
    "snapshot": lambda s: s.snapshot().__enter__(),
    "commit": lambda s: s.transaction().upsert_nodes("Person", [{"name": "q"}]).commit(),
}


def test_a_session_after_close_raises_store_closed(closed):
    _, session = closed
    check_all({method: (lambda call=call: call(session), "StoreClosed", ["closed"])
               for method, call in CLOSED_SESSION_CALLS.items()})


CLOSED_STORE_CALLS = {
    "stats": lambda s: s.stats(), "principals": lambda s: s.principals(),
    "authenticate": lambda s: s.authenticate("token"), "session": lambda s: s.session(),
    "checkpoint": lambda s: s.checkpoint(), "define_node_type": lambda s: s.define_node_type("Q", key="k"),
    "build_indexes": lambda s: s.build_indexes(), "backup": lambda s: s.backup("elsewhere"),
    "create_principal": lambda s: s.create_principal("carol"),
    "ttl": lambda s: s.ttl(), "set_ttl": lambda s: s.set_ttl("Person", "7d"), "sweep_expired": lambda s: s.sweep_expired(),
}


def test_a_closed_store_raises_store_closed(closed):
    store, _ = closed
    check_all({method: (lambda call=call: call(store), "StoreClosed", ["closed"])
               for method, call in CLOSED_STORE_CALLS.items()})


# -- open and restore ---------------------------------------------------------------------------------------
def test_open_on_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    exc = check(lambda: knowledge.open(str(path)), "StoreNotFound", "not a directory")
    assert str(path) in str(exc)
    assert path.read_text() == "x"


@pytest.mark.parametrize("bad", [5, None])
def test_open_with_a_bad_path(bad):
    check(lambda: knowledge.open(bad), "InvalidArgument", "path")


def test_open_with_a_bad_config(tmp_path):
    check(lambda: knowledge.open(str(tmp_path / "s"), config="fast"), "InvalidArgument", "config")
    assert not (tmp_path / "s").exists()


def _corrupt_store(path) -> str:
    with knowledge.open(str(path)) as store:
        store.define_node_type("P", key="name")
    with open(os.path.join(path, "state.duckdb"), "r+b") as f:
        f.write(b"\xff" * 4096)
    return str(path)


def test_open_on_a_corrupt_state_file(tmp_path):
    path = _corrupt_store(tmp_path / "s.store")
    exc = check(lambda: knowledge.open(path), "CorruptionError", "state.duckdb")
    assert "backup" in str(exc).lower()  # says what to do
    check(lambda: knowledge.open(path), "CorruptionError")  # the refused open released the lock
    # restore refuses such a backup too, and from a file, leaving no destination
    check(lambda: knowledge.restore(path, str(tmp_path / "dest")), ("BackupError", "CorruptionError"),
          "state.duckdb")
    (tmp_path / "f").write_text("x")
    check(lambda: knowledge.restore(str(tmp_path / "f"), str(tmp_path / "dest")), "BackupError", "no backup")
    assert not (tmp_path / "dest").exists()


# -- the CLI: `error: <message>`, exit 1, no traceback, for every verb ---------------------------------------
def _verbs(store_path: str, tmp: str) -> dict[str, list[str]]:
    """One command line per CLI verb, each run against `store_path`."""
    return {
        "schema": ["schema", store_path],
        "ingest": ["ingest", store_path, "P", os.path.join(tmp, "rows.jsonl")],
        "get": ["get", store_path, "P", "ada"],
        "neighbors": ["neighbors", store_path, "P", "ada"],
        "stats": ["stats", store_path],
        "checkpoint": ["checkpoint", store_path],
        "backup": ["backup", store_path, os.path.join(tmp, "backup")],
        "restore": ["restore", store_path, os.path.join(tmp, "restored")],
        "principal create": ["principal", "create", store_path, "bob"],
        "principal grant": ["principal", "grant", store_path, "bob", "--read", "x"],
        "principal revoke": ["principal", "revoke", store_path, "bob", "--read", "x"],
        "principal drop": ["principal", "drop", store_path, "bob"],
        "principal list": ["principal", "list", store_path],
        "principal token": ["principal", "token", store_path, "bob"],
        "init": ["init", store_path],
        "search": ["search", store_path, "--query", "x"],
        "retrieve": ["retrieve", store_path, "bees", "--mode", "keyword"],
        "scan": ["scan", store_path, "P"],
        "export": ["export", store_path, "P", os.path.join(tmp, "out.parquet")],
        "serve": ["serve", "--data", store_path, "--listen", "127.0.0.1:0"],
        "recover": ["recover", store_path, os.path.join(tmp, "recovered")],
        "ttl set": ["ttl", "set", store_path, "P", "7d"],
        "ttl drop": ["ttl", "drop", "--data", store_path, "P"],
        "ttl show": ["ttl", "show", store_path],
        "ttl sweep": ["ttl", "sweep", "--data", store_path],
        **({"mcp": ["mcp", "--data", store_path, "--token", "x"]} if HAVE_MCP else {}),
    }


CLI_NO_STORE = {"demo": "its --path is driven in test_every_verb_on_a_file",
                "slo": "driven in test_slo_check_of_missing_files", "bench": "runs minutes; takes no store",
                "promote": "driven in test_promote_without_a_server",
                **({} if HAVE_MCP else {"mcp": "needs the mcp extra"})}


def test_every_cli_verb_is_driven():
    """Each subcommand of the parser has a bad-input case here (a new verb fails this until it has one)."""
    import argparse

    from knowledge.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    verbs = set(actions[0].choices)
    covered = {argv[0] for argv in _verbs("S", "T").values()} | set(CLI_NO_STORE)
    assert verbs <= covered, f"CLI verbs without a bad-input case: {sorted(verbs - covered)}"


def _cli_error(argv: list[str], capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1, (code, captured)
    lines = captured.err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[-1]


def _cli_errors(commands: dict[str, list[str]], capsys, *words: str) -> None:
    """Run each command line; every one must fail cleanly with all of `words` in its error line."""
    failures = []
    for verb, argv in sorted(commands.items()):
        try:
            line = _cli_error(argv, capsys)
            missing = [word for word in words if word not in line]
            assert not missing, f"{missing} not in {line!r}"
        except Exception as exc:  # noqa: BLE001 - an uncaught exception is the failure being reported
            failures.append(f"{verb}: {type(exc).__name__}: {exc}".splitlines()[0])
    assert not failures, "\n".join(failures)


def test_every_verb_on_a_corrupt_store(tmp_path, capsys):
    path = _corrupt_store(tmp_path / "s.store")
    (tmp_path / "rows.jsonl").write_text('{"name": "x"}\n')
    commands = _verbs(path, str(tmp_path))
    del commands["recover"]  # rebuilding a store whose state.duckdb is damaged is what recover is for
    _cli_errors(commands, capsys, "state.duckdb")


def test_promote_without_a_server(capsys):
    _cli_errors({"promote": ["promote", "--server", "127.0.0.1:1"]}, capsys, "127.0.0.1:1")


def test_slo_check_of_missing_files(tmp_path, capsys):
    _cli_errors({"slo check": ["slo", "check", str(tmp_path / "no-results"), "--slo", str(tmp_path / "no.toml")]},
                capsys, "no.toml")


def test_every_verb_on_a_file(tmp_path, capsys):
    path = tmp_path / "a_file"
    path.write_text("x")
    (tmp_path / "rows.jsonl").write_text('{"name": "x"}\n')
    commands = {**_verbs(str(path), str(tmp_path)), "demo": ["demo", "--path", str(path)]}
    _cli_errors(commands, capsys, str(path))
    _cli_errors({"init": commands["init"]}, capsys, "not a directory")
    assert path.read_text() == "x"


def test_schema_apply_with_a_bad_section(tmp_path, capsys):
    knowledge.open(str(tmp_path / "s.store")).close()
    change = tmp_path / "schema.json"
    change.write_text('{"nodes": 5}')
    line = _cli_error(["schema", str(tmp_path / "s.store"), "--apply", str(change)], capsys)
    assert "nodes" in line


def test_cli_process_on_a_corrupt_store_prints_no_traceback(tmp_path):
    path = _corrupt_store(tmp_path / "s.store")
    done = subprocess.run([sys.executable, "-m", "knowledge.cli", "stats", path], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "state.duckdb" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_invalid_query_crosses_the_server_with_its_fields(tmp_path):
    """Through a real server (loopback socket), the client raises the same InvalidQuery with its fields."""
    from remote_fixture import ServedStore

    served = ServedStore(str(tmp_path / "s.store"))
    try:
        served.store.define_node_type("Person", key="name", properties={"age": "int"})
        client = served.client()
        try:
            exc = check(lambda: client.session().scan("Person", where={"age": (">", "abc")}), "InvalidQuery",
                        "age", "abc")
            assert (exc.property, exc.operator, exc.value) == ("age", ">", "abc")
        finally:
            client.close()
    finally:
        served.close()
