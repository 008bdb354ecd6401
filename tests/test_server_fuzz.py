"""Malformed, oversized and out-of-range requests straight at the gRPC stub (no client-side checks): the
server never crashes, answers INVALID_ARGUMENT (NOT_FOUND for a well-formed miss, RESOURCE_EXHAUSTED for a
message over the size cap), and the store stays consistent: after the run it reopens with exactly the
base rows plus the rows of the writes that were acknowledged."""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import knowledge
from knowledge.server import KnowledgeServer, ServerConfig
from knowledge.server.v1 import knowledge_pb2 as pb
from knowledge.server.v1 import knowledge_pb2_grpc as pb_grpc

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
MESSAGE_BYTES_MAX = 1 << 20
TYPES = st.sampled_from(["Doc", "", "Nope", "doc", "Doc\x00", "ü" * 3, "x" * 5000])
TEXT = st.text(max_size=40) | st.sampled_from(["", "\x00", "{", "[", "null", "NaN", '{"n": [">"]}', "x" * 100_000])
INTS = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1) | st.sampled_from([0, -1, 1, 10_001, 1 << 40])
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
KEYS = st.builds(lambda t: pb.Key(text=t), TEXT) | st.builds(lambda i: pb.Key(integer=i), INTS) | st.just(pb.Key())
OPERATORS = st.sampled_from(["=", "!=", "<", ">", "like", "in", "contains", "", "~", "DROP TABLE", "in"])
LEAF_CONDITIONS = st.builds(pb.Condition, property=st.sampled_from(["n", "body", "emb", "nope", "_id", "", "$or"]),
                            operator=OPERATORS | st.just("between"), as_tuple=st.booleans(),
                            value_json=TEXT | st.sampled_from(["1", "[1, 2]", '"a"', "{}", "null", "[null, 3]"]))
CONDITIONS = st.recursive(LEAF_CONDITIONS, lambda inner: st.builds(  # "$or" of filters, nested
    lambda branches: pb.Condition(property="$or", operator="or", any_of=branches),
    st.lists(st.builds(pb.Filter, all=st.lists(inner, max_size=3), other_json=st.sampled_from(["", "3", "{"])),
             max_size=3)), max_leaves=8)
CURSORS = st.none() | TEXT | st.sampled_from(["kc1.WyJEb2MiLDNd", "kc1.WyJEb2MiLC01XQ", "kc1.WyJOb3BlIiwxXQ",
                                              "kc1.", "kc1.WyJEb2MiLDkyMjMzNzIwMzY4NTQ3NzU4MDdd"])
COLUMNS = st.builds(pb.Columns, all=st.booleans(), names=st.lists(st.sampled_from(["n", "body", "nope", "", "_id"]),
                                                                   max_size=3))
VECTORS = st.lists(FLOATS, max_size=6) | st.just([0.0] * 70_000) | st.just([0.5] * 300_000)  # the last: > 1 MiB
ROWS = st.one_of(st.builds(pb.Rows, json=TEXT | st.sampled_from(['[{"name": 1}]', '[{"name": "f", "n": "x"}]',
                                                                 '[{"name": "f", "emb": [1]}]', '[{"nope": 1}]',
                                                                 '[{"name": "ok1", "n": 3}]', "[1, 2]", '{"a": 1}'])),
                 st.builds(pb.Rows, arrow_ipc=st.binary(max_size=64)), st.just(pb.Rows()))

REQUESTS = st.one_of(
    st.builds(lambda t, k, c: ("Get", pb.GetRequest(type=t, key=k, columns=c)), TYPES, KEYS, COLUMNS),
    st.builds(lambda t, ks: ("GetMany", pb.GetManyRequest(type=t, keys=ks)), TYPES, st.lists(KEYS, max_size=4)),
    st.builds(lambda t, w, c, n, o, cursor: ("Scan", pb.ScanRequest(type=t, where=w, columns=c, limit=n, offset=o,
                                                                     cursor=cursor)),
              TYPES, st.lists(CONDITIONS, max_size=3), COLUMNS, INTS, INTS, CURSORS),
    st.builds(lambda t, k, d, n, e: ("Neighbors", pb.NeighborsRequest(type=t, key=k, direction=d, limit=n,
                                                                       edge_types=e)),
              TYPES, KEYS, st.sampled_from(["out", "in", "both", "up", ""]), INTS,
              st.lists(st.sampled_from(["LINK", "NOPE", ""]), max_size=2)),
    st.builds(lambda t, k, depth, n: ("Traverse", pb.TraverseRequest(type=t, key=k, depth=depth, limit=n)),
              TYPES, KEYS, INTS, INTS),
    st.builds(lambda ids: ("Refs", pb.RefsRequest(ids=ids)), st.lists(INTS, max_size=3)),
    st.builds(lambda v, k, t, w, c: ("Search", pb.SearchRequest(vector=v, k=k, type=t, where=w, columns=c)),
              VECTORS, INTS, TYPES, st.lists(CONDITIONS, max_size=2), COLUMNS),
    st.builds(lambda b, k: ("Search", pb.SearchRequest(vector_f32=b, k=k)), st.binary(max_size=20), INTS),
    st.builds(lambda q, k, t, w: ("KeywordSearch", pb.KeywordSearchRequest(query=q, k=k, type=t, where=w)),
              TEXT, INTS, TYPES, st.lists(CONDITIONS, max_size=2)),
    st.builds(lambda q, k, m, v, b, p: ("Retrieve", pb.RetrieveRequest(question=q, k=k, mode=m, query_vector=v,
                                                                        token_budget=b, params_json=p)),
              TEXT, INTS, st.sampled_from(["auto", "vector", "graph", "nope", ""]), VECTORS, INTS, TEXT),
    st.builds(lambda t: ("Count", pb.CountRequest(type=t)), TYPES),
    st.builds(lambda t, n: ("Edges", pb.EdgesRequest(edge_type=t, limit=n)), TYPES, INTS),
    st.builds(lambda items: ("Commit", pb.CommitRequest(items=items)), st.lists(st.builds(
        pb.WriteItem, action=st.sampled_from(["upsert_nodes", "delete_edges", "upsert_edges", "drop", ""]),
        type=TYPES, rows=ROWS), min_size=1, max_size=3)),
    st.builds(lambda c: ("ApplySchema", pb.ApplySchemaRequest(change_json=c)),
              TEXT | st.sampled_from(['{"nodes": {"Doc": {"key": "n"}}}', '{"nodes": 3}', "[]"])),
    st.builds(lambda a, f: ("Changes", pb.ChangesRequest(after_lsn=a, follow=f)), INTS, st.just(False)),
    st.builds(lambda d: ("Backup", pb.BackupRequest(destination=d)), st.sampled_from(["", "relative/dir", "\x00"])),
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "store")
    store = knowledge.open(path)
    store.define_node_type("Doc", key="name", properties={"n": "int", "body": "text",
                                                          "emb": {"type": "vector[3]", "metric": "cosine"}})
    store.define_edge_type("LINK", source="Doc", target="Doc")
    with store.session().transaction() as tx:
        tx.upsert_nodes("Doc", [{"name": f"d{i}", "n": i, "body": f"text {i}", "emb": [1.0, float(i), 0.5]}
                                for i in range(20)])
        tx.upsert_edges("LINK", [{"src": f"d{i}", "dst": f"d{i + 1}"} for i in range(19)])
    store.create_principal("root", admin=True)
    token = store.issue_token("root")
    server = KnowledgeServer(store, ServerConfig(listen="127.0.0.1:0", message_bytes_max=MESSAGE_BYTES_MAX)).start()
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)])
    state = {"stub": pb_grpc.KnowledgeStub(channel), "metadata": [("authorization", f"Bearer {token}")],
             "acknowledged": set(), "codes": {}, "channel": channel}
    yield state
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    server.stop(drain_s=5)
    before = store.session().scan("Doc").column("name").to_pylist()
    store.close()
    with knowledge.open(path, create=False) as reopened:  # consistent after the fuzz: base rows + acknowledged
        names = reopened.session().scan("Doc").column("name").to_pylist()
        assert sorted(names) == sorted(before)
        assert {f"d{i}" for i in range(20)} <= set(names)
        assert set(names) - {f"d{i}" for i in range(20)} <= state["acknowledged"] | {""}
        assert reopened.session().stats()["edges"]["LINK"] == 19
    print("status codes seen:", state["codes"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(REQUESTS)
def test_malformed_requests_get_invalid_argument(fuzzed, call):
    method, request = call
    stub = fuzzed["stub"]
    try:
        reply = getattr(stub, method)(request, metadata=fuzzed["metadata"], timeout=30)
        if method == "Changes":
            list(reply)
        if method == "Commit":
            for item in request.items:
                if item.rows.WhichOneof("payload") == "json" and item.rows.json.startswith("[{"):
                    import json
                    fuzzed["acknowledged"].update(str(r.get("name")) for r in json.loads(item.rows.json))
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
        size = request.ByteSize()
        if size > MESSAGE_BYTES_MAX:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, code, error.details())
        else:
            assert code in ALLOWED, (method, code, error.details(), request)
            assert error.details(), "an error says what to fix"
    fuzzed["codes"][code.name] = fuzzed["codes"].get(code.name, 0) + 1


def test_nan_and_huge_values(fuzzed):
    stub, metadata = fuzzed["stub"], fuzzed["metadata"]
    for request in (pb.SearchRequest(vector=[math.nan, 1.0, 1.0], k=3), pb.SearchRequest(vector=[1.0, 1.0, 1.0], k=1 << 40),
                    pb.TraverseRequest(type="Doc", key=pb.Key(text="d1"), depth=1 << 40),
                    pb.ScanRequest(type="Doc", limit=-5)):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, type(request).__name__.removesuffix("Request"))(request, metadata=metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, by hand (the stubs refuse to build what this test sends)."""
    size, varint = len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        varint += bytes([byte | 0x80 if size else byte])
        if not size:
            return bytes([(number << 3) | 2]) + varint + payload


def test_undecodable_requests_get_invalid_argument(fuzzed):
    """Bytes that are no request message (garbage, a where nested past protobuf's depth limit) are answered
    INVALID_ARGUMENT saying so, not gRPC's INTERNAL "Exception deserializing request!"."""
    stub = fuzzed["stub"]
    scan = fuzzed["channel"].unary_unary("/knowledge.v1.Knowledge/Scan", request_serializer=lambda raw: raw,
                               response_deserializer=pb.TableReply.FromString)
    condition = _field(1, b"n") + _field(2, b"=") + _field(3, b"1")
    for _ in range(200):
        condition = _field(1, b"$or") + _field(2, b"or") + _field(4, _field(1, condition))
    for raw in (b"\xff\xff\xff", _field(1, b"Doc") + _field(2, condition), b"\x0a\x05ab"):
        with pytest.raises(grpc.RpcError) as caught:
            scan(raw, metadata=fuzzed["metadata"], timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert "is not a valid knowledge.v1.Knowledge message" in caught.value.details()
    assert stub.Count(pb.CountRequest(type="Doc"), metadata=fuzzed["metadata"], timeout=30).count >= 20
