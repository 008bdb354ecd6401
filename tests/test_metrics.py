"""knowledge.metrics: scraped over real HTTP and parsed with prometheus_client's own parser; JSON logs with
request ids; the online recall sampler against a real store."""

from __future__ import annotations

import io
import json
import logging
import random
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import knowledge
from knowledge.errors import InvalidArgument, NotFound, Unavailable
from knowledge.metrics import (
    Metrics,
    RecallSampler,
    current_request_id,
    exact_search,
    json_logging,
    parse_listen,
    request_scope,
    start_http,
    status_code,
)


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


@pytest.fixture
def served():
    metrics = Metrics()
    server = start_http(metrics, "127.0.0.1:0")
    yield metrics, server
    server.close()


def test_scrape_over_http_parses_every_family(served):
    metrics, server = served
    with metrics.rpc("Search") as call:
        call.code = None
    with pytest.raises(NotFound), metrics.rpc("Get"):
        raise NotFound("Person", "zed")
    metrics.observe_rpc("Retrieve", 0.030)
    metrics.observe_rpc("Retrieve", 0.400, "UNAVAILABLE")
    metrics.observe_timings({"embed": 0.001, "vector": 0.002, "keyword": 0.003, "ppr": 0.004, "seeds": 0.001,
                             "fetch": 0.002, "context": 0.001, "total": 0.02})
    metrics.set_replication_lag("replica-b", 12, 0.25)
    metrics.observe_fsync(0.0004)
    metrics.observe_plan("gather")
    metrics.observe_cache("row", 3, 1)
    metrics.observe_recall(0.9)
    metrics.observe_recall(1.0)
    samples = scrape(server.url)
    assert value(samples, "knowledge_rpc_requests_total", rpc="Search", code="OK") == 1
    assert value(samples, "knowledge_rpc_requests_total", rpc="Get", code="NOT_FOUND") == 1
    assert value(samples, "knowledge_rpc_errors_total", rpc="Get", code="NOT_FOUND") == 1
    assert value(samples, "knowledge_rpc_errors_total", rpc="Retrieve", code="UNAVAILABLE") == 1
    assert value(samples, "knowledge_rpc_latency_seconds_count", rpc="Retrieve") == 2
    assert value(samples, "knowledge_rpc_latency_seconds_bucket", rpc="Retrieve", le="0.05") == 1
    assert value(samples, "knowledge_rpc_latency_seconds_bucket", rpc="Retrieve", le="+Inf") == 2
    for stage in ("embed", "vector", "keyword", "graph", "fetch"):
        assert value(samples, "knowledge_stage_latency_seconds_count", stage=stage) == 1, stage
    assert value(samples, "knowledge_stage_latency_seconds_sum", stage="graph") == pytest.approx(0.005)
    assert value(samples, "knowledge_stage_latency_seconds_sum", stage="fetch") == pytest.approx(0.003)
    assert value(samples, "knowledge_replication_lag_lsn", replica="replica-b") == 12
    assert value(samples, "knowledge_replication_lag_seconds", replica="replica-b") == 0.25
    assert value(samples, "knowledge_replication_lag_observed_seconds_count", replica="replica-b") == 1
    assert value(samples, "knowledge_wal_fsync_seconds_count") == 1
    assert value(samples, "knowledge_search_plans_total", plan="gather") == 1
    assert value(samples, "knowledge_cache_requests_total", cache="row", result="hit") == 3
    assert value(samples, "knowledge_cache_hit_ratio", cache="row") == 0.75
    assert value(samples, "knowledge_search_recall_count") == 2
    assert value(samples, "knowledge_search_recall_sampled") == pytest.approx(0.95)


def test_store_figures_and_plans_reach_the_endpoint(tmp_path):
    store = knowledge.open(str(tmp_path / "s"))
    store.define_node_type("Doc", key="id", properties={"emb": "vector[4]"})
    store.define_node_type("Note", key="id", properties={"text": "str"})  # point reads of it use the row cache
    session = store.session()
    session.transaction().upsert_nodes("Doc", [{"id": f"d{i}", "emb": [1.0, i, 0.0, 1.0]} for i in range(20)]) \
        .upsert_nodes("Note", [{"id": "n1", "text": "x"}]).commit()
    metrics = Metrics()
    server = start_http(metrics, "127.0.0.1:0", before_scrape=lambda: metrics.update_from_store(store))
    try:
        with metrics.rpc("Search") as call:
            call.plan(session.search([1.0, 2.0, 0.0, 1.0], k=3))
        session.get("Note", "n1")
        session.get("Note", "n1")
        samples = scrape(server.url)
        assert value(samples, "knowledge_index_rows", index="Doc.emb") == 20
        assert value(samples, "knowledge_index_live_rows", index="Doc.emb") == 20
        assert value(samples, "knowledge_search_plans_total") == 1
        assert value(samples, "knowledge_cache_requests_total", cache="row", result="hit") == 1
        assert value(samples, "knowledge_cache_requests_total", cache="row", result="miss") == 1
        assert value(samples, "knowledge_cache_hit_ratio", cache="row") == 0.5
        again = scrape(server.url)  # cumulative store counters are not added twice
        assert value(again, "knowledge_cache_requests_total", cache="row") == value(samples, "knowledge_cache_requests_total", cache="row")
    finally:
        server.close()
        store.close()


def test_listen_addresses_are_checked():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9464", "host:", ":80", "host:99999", "host:http"):
        with pytest.raises(InvalidArgument, match="HOST:PORT"):
            parse_listen(bad)


def test_a_taken_port_is_unavailable(served):
    _, server = served
    with pytest.raises(Unavailable, match="cannot serve metrics"):
        start_http(Metrics(), f"127.0.0.1:{server.port}")


def test_status_codes_of_errors():
    assert status_code(None) == "OK"
    assert status_code(NotFound("Person", "x")) == "NOT_FOUND"
    assert status_code(knowledge.errors.Unauthenticated("x")) == "UNAUTHENTICATED"
    assert status_code(knowledge.errors.UnknownType("x")) == "INVALID_ARGUMENT"  # a SchemaError, as the client gets it
    assert status_code(RuntimeError("boom")) == "INTERNAL"
    assert status_code(knowledge.errors.EncryptionKeyWrong("x", path="p")) == "FAILED_PRECONDITION"


def test_metrics_count_errors_under_the_code_the_client_gets():
    """One table (knowledge.errors.STATUS_CODES) for the status a server answers and the one metrics count."""
    from knowledge.server.status import status_code as grpc_code

    for cls in (knowledge.errors.SchemaError, knowledge.errors.InvalidArgument, knowledge.errors.StoreClosed,
                knowledge.errors.CorruptionError, knowledge.errors.EmbedderUnavailable, knowledge.errors.KnowledgeError):
        error = cls.__new__(cls)
        assert status_code(error) == grpc_code(error).name, cls.__name__


def test_json_logs_carry_the_request_id():
    logger = logging.getLogger("knowledge.test-metrics")
    stream = io.StringIO()
    handler = json_logging(logger, stream)
    try:
        metrics = Metrics()
        with metrics.rpc("Search", request_id="req-42", logger=logger, principal="alice"):
            assert current_request_id() == "req-42"
        with request_scope() as rid:
            logger.info("inside", extra={"lsn": 7})
        assert current_request_id() is None
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "req-42" and first["rpc"] == "Search" and first["code"] == "OK"
    assert first["principal"] == "alice" and first["duration_ms"] >= 0
    assert second["request_id"] == rid and len(rid) == 16 and second["lsn"] == 7 and second["msg"] == "inside"


def make_store(tmp_path, rows: int = 300, dim: int = 8):
    store = knowledge.open(str(tmp_path / "s"))
    store.define_node_type("Doc", key="id", properties={"emb": f"vector[{dim}]", "group": "int"})
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    session = store.session()
    session.transaction().upsert_nodes("Doc", [
        {"id": f"d{i}", "emb": vectors[i].tolist(), "group": i % 3, "_labels": ["even" if i % 2 == 0 else "odd"]}
        for i in range(rows)]).commit()
    return store, vectors


def test_exact_search_matches_brute_force_under_visibility_and_where(tmp_path):
    store, vectors = make_store(tmp_path)
    try:
        reader = store.session(knowledge.Principal("r", read=frozenset({"even"})))
        q = vectors[5] + 0.1
        got = exact_search(reader, q, 10, where={"group": 1})
        allowed = [i for i in range(len(vectors)) if i % 2 == 0 and i % 3 == 1]
        unit = vectors[allowed] / np.linalg.norm(vectors[allowed], axis=1, keepdims=True)
        best = [allowed[j] for j in np.argsort(-(unit @ q))[:10]]
        keys = [reader.ref(node).key for node in got]
        assert keys == [f"d{i}" for i in best]
        assert got == reader.search(q, k=10, where={"group": 1}).column("_id").to_pylist()
    finally:
        store.close()


def test_recall_sampler_measures_and_exports(tmp_path, served):
    metrics, server = served
    store, vectors = make_store(tmp_path)
    try:
        session = store.session()
        sampler = RecallSampler(metrics, fraction=0.5, rng=random.Random(1))
        offered = 0
        for i in range(40):
            table = session.search(vectors[i], k=5)
            offered += sampler.offer(session, vectors[i], 5, table)
        wrong = session.search(vectors[0], k=5).column("_id").to_pylist()[:2] + [10_000, 10_001, 10_002]
        sampler.fraction = 1.0
        assert sampler.offer(session, vectors[0], 5, wrong)
        sampler.drain()
        assert 5 < offered < 35 and sampler.done == offered + 1 and sampler.failed == 0
        samples = scrape(server.url)
        assert value(samples, "knowledge_search_recall_count") == offered + 1
        # every exact search here equals the flat index's answer, except the deliberately wrong one (2 of 5)
        assert value(samples, "knowledge_search_recall_sum") == pytest.approx(offered + 0.4)
        assert value(samples, "knowledge_search_recall_bucket", le="0.5") == 1
    finally:
        store.close()


def test_recall_sampler_drops_when_full_and_rejects_bad_fractions():
    metrics = Metrics()
    blocked = []

    def slow(*args, **kwargs):
        blocked.append(1)
        import time
        time.sleep(0.2)
        return [1]

    sampler = RecallSampler(metrics, fraction=1.0, queue_max=1, exact=slow)
    results = [sampler.offer(None, [1.0], 1, [1]) for _ in range(5)]
    assert results[0] and not all(results)
    assert metrics.recall_dropped._value.get() >= 1
    sampler.drain()
    for bad in (-0.1, 1.5, True):
        with pytest.raises(InvalidArgument, match="fraction"):
            RecallSampler(metrics, fraction=bad)


def test_server_metrics_wraps_calls_searches_and_retrieves(tmp_path):
    from knowledge.metrics import ServerMetrics

    store, vectors = make_store(tmp_path)
    server_metrics = ServerMetrics("127.0.0.1:0", recall_sample_fraction=1.0)
    try:
        exporter = server_metrics.start(store)
        session = store.session()
        for i in range(5):
            with server_metrics.call("Search"):
                table = session.search(vectors[i], k=5, where={"group": 1})
                server_metrics.searched(session, vectors[i], 5, table, where={"group": 1})
        with pytest.raises(InvalidArgument), server_metrics.call("Search"):
            session.search(vectors[0], k=0)
        server_metrics.retrieved(type("Result", (), {"timings": {"embed": 0.001, "ppr": 0.002, "total": 0.01}})())
        server_metrics.sampler.drain()
        samples = scrape(exporter.url)
        assert value(samples, "knowledge_rpc_requests_total", rpc="Search", code="OK") == 5
        assert value(samples, "knowledge_rpc_errors_total", rpc="Search", code="INVALID_ARGUMENT") == 1
        assert value(samples, "knowledge_search_plans_total") == 5
        assert value(samples, "knowledge_search_recall_count") == 5
        assert value(samples, "knowledge_search_recall_sum") == pytest.approx(5.0)  # flat search is exact
        assert value(samples, "knowledge_stage_latency_seconds_count", stage="graph") == 1
        assert value(samples, "knowledge_index_rows", index="Doc.emb") == 300
    finally:
        server_metrics.close()
        store.close()
    with pytest.raises(InvalidArgument):
        ServerMetrics("nowhere")


def test_a_served_store_exports_metrics_and_request_ids(tmp_path):
    """A real KnowledgeServer with --metrics: calls through knowledge.connect, counted by RPC and status code,
    sampled recall, and the persisted audit log naming each read's request id."""
    from remote_fixture import ServedStore

    from knowledge.server import ServerConfig
    from knowledge.server.audit_files import read_audit
    from knowledge.slo import check

    config = ServerConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", recall_sample_fraction=1.0)
    served = ServedStore(str(tmp_path / "s"), config, store_config=knowledge.StoreConfig(audit=True))
    try:
        served.store.define_node_type("Doc", key="id", properties={"emb": "vector[4]"})
        served.store.session().transaction().upsert_nodes(
            "Doc", [{"id": f"d{i}", "emb": [1.0, float(i), 0.5, 0.0], "_labels": ["public"]} for i in range(30)]).commit()
        with served.client() as client:
            session = client.session()
            for i in range(6):
                session.search([1.0, float(i), 0.5, 0.0], k=3)
            with pytest.raises(NotFound):
                session.get("Doc", "nobody")
        served.server.metrics.sampler.drain()
        url = served.server.metrics.exporter.url
        samples = scrape(url)
        assert value(samples, "knowledge_rpc_requests_total", rpc="Search", code="OK") == 6
        assert value(samples, "knowledge_rpc_latency_seconds_count", rpc="Search") == 6
        assert value(samples, "knowledge_rpc_errors_total", rpc="Get", code="NOT_FOUND") == 1
        assert value(samples, "knowledge_search_plans_total") == 6
        assert value(samples, "knowledge_search_recall_count") == 6
        assert value(samples, "knowledge_search_recall_sum") == pytest.approx(6.0)
        assert value(samples, "knowledge_index_rows", index="Doc.emb") == 30
        assert value(samples, "knowledge_wal_fsync_seconds_count") >= 2  # the schema change and the rows
        slo = tmp_path / "slo.toml"
        slo.write_text('[[objectives]]\nname = "search"\nkind = "latency"\nthreshold_ms = 10000\ntarget = 0.9\n'
                       'prometheus = { metric = "knowledge_rpc_latency_seconds", labels = { rpc = "Search" } }\n'
                       '[[objectives]]\nname = "recall"\nkind = "recall"\ntarget = 0.9\n'
                       'prometheus = { metric = "knowledge_search_recall" }\n')
        report = check(url, str(slo))
        assert [e.status for e in report.evaluations] == ["met", "met"]
    finally:
        served.close()
    entries = [e for e in read_audit(str(tmp_path / "s" / "audit")) if e["api"] == "search"]
    assert len(entries) == 6
    ids = [e["request_id"] for e in entries]
    assert all(isinstance(i, str) and len(i) == 16 for i in ids) and len(set(ids)) == 6


def test_graph_mode_without_visible_entities_is_counted_as_a_fallback(tmp_path):
    """Retrieve through a real server with --metrics: graph and auto mode over a graph whose entities the
    caller cannot see rank as hybrid, say so in the result (notes, fallback) and are counted in
    knowledge_retrieve_fallbacks_total{mode, reason="no_entities"}; hybrid mode and a caller who sees the
    entities are not."""
    from remote_fixture import ServedStore

    from knowledge.graphrag import Document, NoExtractor, RuleExtractor, ingest
    from knowledge.graphrag.retrieve import NO_ENTITIES, NO_ENTITIES_NOTE
    from knowledge.server import ServerConfig

    class Embedder:
        name, dimension = "two-words", 4

        def embed(self, texts):
            out = np.array([[1.0, "rhine" in t.lower(), "river" in t.lower(), 0.1] for t in texts], np.float32)
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    config = ServerConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0")
    served = ServedStore(str(tmp_path / "s"), config)
    try:
        embedder = Embedder()
        ingest(served.store.session(), [Document("p", "Plain text about rivers.", title="Rivers", labels=["a"])],
               embedder=embedder, extractor=NoExtractor())
        ingest(served.store.session(), [Document("q", "The Rhine flows through Basel.", title="Rhine",
                                                 labels=["b"])], embedder=embedder, extractor=RuleExtractor())
        tokens = {}
        for who in ("a", "b"):
            served.store.create_principal(f"{who}_reader", read=[who])
            tokens[who] = served.store.issue_token(f"{who}_reader")
        vector = embedder.embed(["rivers"])[0].tolist()
        with served.client(token=tokens["a"]) as client:
            session = client.session()
            for mode in ("graph", "graph", "auto", "hybrid"):
                result = session.retrieve("rivers", k=1, mode=mode, query_vector=vector)
                assert result.keys == ["p#0"]
                assert (result.fallback, NO_ENTITIES_NOTE in result.notes) == (
                    (None, False) if mode == "hybrid" else (NO_ENTITIES, True))
        with served.client(token=tokens["b"]) as client:
            result = client.session().retrieve("Rhine", k=1, mode="graph", query_vector=vector)
            assert result.fallback is None and result.keys == ["q#0"]
        samples = scrape(served.server.metrics.exporter.url)
        name = "knowledge_retrieve_fallbacks_total"
        assert value(samples, name, mode="graph", reason=NO_ENTITIES) == 2
        assert value(samples, name, mode="auto", reason=NO_ENTITIES) == 1
        assert value(samples, name) == 3                       # nothing for hybrid, nor for b's graph retrieve
        assert value(samples, "knowledge_rpc_requests_total", rpc="Retrieve", code="OK") == 5
    finally:
        served.close()


def test_knowledge_serve_metrics_flag(tmp_path):
    """`knowledge serve --metrics 127.0.0.1:0 --recall-sample 0.5 --log-json` prints where the exporter is;
    a scrape answers; SIGTERM stops both."""
    import signal
    import subprocess
    import sys

    knowledge.open(str(tmp_path / "s")).close()
    process = subprocess.Popen([sys.executable, "-m", "knowledge.cli", "serve", "--data", str(tmp_path / "s"),
                                "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--recall-sample", "0.5",
                                "--log-json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = process.stdout.readline(), process.stdout.readline()
        assert first.startswith("listening on "), first + process.stderr.read()
        assert second.startswith("metrics on http://127.0.0.1:"), second
        samples = scrape(second.split()[2])
        assert "knowledge_wal_fsync_seconds_count" in samples and "knowledge_recall_samples_dropped_total" in samples
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0
    bad = subprocess.run([sys.executable, "-m", "knowledge.cli", "serve", "--data", str(tmp_path / "s"),
                          "--recall-sample", "2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "recall-sample" in bad.stderr
