"""The serving process's /metrics counts the calls its read processes serve (`knowledge serve --read-processes N
--metrics ADDR`): one scrape, the read processes' call families added up, the store's own figures once."""

from __future__ import annotations

import os
import signal

import pytest
from test_metrics import scrape, value
from test_read_processes import eventually, prepare, reader_pids, wait_restarted
from test_server_cli import Serve

import knowledge
from knowledge.errors import NotFound
from knowledge.metrics import Metrics, merge_expositions


def test_merge_adds_call_families_and_keeps_the_store_figures_of_the_first():
    own, first, second = Metrics(), Metrics(), Metrics()
    own.observe_rpc("Commit", 0.004)
    first.observe_rpc("Search", 0.002)
    second.observe_rpc("Search", 0.003)
    second.observe_rpc("Get", 0.0002, "NOT_FOUND")
    own.observe_cache("row", 3, 1)
    first.observe_cache("row", 1, 3)
    first.observe_recall(0.8)
    second.observe_recall(1.0)
    own.observe_fsync(0.001)
    first.observe_fsync(0.5)  # a read process's own WAL: not the serving process's commits
    own.index_rows.labels("Doc.emb").set(30)
    first.index_rows.labels("Doc.emb").set(29)
    first.observe_fallback("graph", "no_entities")
    second.observe_fallback("graph", "no_entities")
    second.observe_fallback("auto", "no_entities")
    text = merge_expositions(own.exposition(), [first.exposition(), second.exposition()])
    from prometheus_client.parser import text_string_to_metric_families
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    assert value(samples, "knowledge_rpc_requests_total", rpc="Search", code="OK") == 2
    assert value(samples, "knowledge_rpc_requests_total", rpc="Commit") == 1
    assert value(samples, "knowledge_rpc_errors_total", rpc="Get", code="NOT_FOUND") == 1
    assert value(samples, "knowledge_rpc_latency_seconds_count", rpc="Search") == 2
    assert value(samples, "knowledge_rpc_latency_seconds_sum", rpc="Search") == pytest.approx(0.005)
    assert value(samples, "knowledge_rpc_latency_seconds_bucket", rpc="Search", le="0.0025") == 1
    assert value(samples, "knowledge_rpc_latency_seconds_bucket", rpc="Search", le="+Inf") == 2
    assert value(samples, "knowledge_cache_requests_total", cache="row", result="hit") == 4
    assert value(samples, "knowledge_cache_hit_ratio", cache="row") == pytest.approx(0.5)  # 4 of 8, not 0.75
    assert value(samples, "knowledge_search_recall_count") == 2
    assert value(samples, "knowledge_search_recall_sampled") == pytest.approx(0.9)  # own sampled none
    assert value(samples, "knowledge_wal_fsync_seconds_count") == 1
    assert value(samples, "knowledge_index_rows", index="Doc.emb") == 30
    assert value(samples, "knowledge_retrieve_fallbacks_total", mode="graph", reason="no_entities") == 2
    assert value(samples, "knowledge_retrieve_fallbacks_total", mode="auto", reason="no_entities") == 1
    assert merge_expositions(own.exposition(), []).decode().count("knowledge_rpc_requests_total{") == 1


def test_serving_process_scrape_counts_the_reads_of_its_read_processes(tmp_path):
    path = str(tmp_path / "store")
    admin, reader = prepare(path)
    server = Serve(path, "--read-processes", "2", "--metrics", "127.0.0.1:0")
    try:
        line = server.process.stdout.readline()
        assert line.startswith("metrics on http://127.0.0.1:"), line
        url = line.split()[2]
        assert len(reader_pids(server)) == 2
        conns = [knowledge.connect(server.address, token=reader, timeout_s=30) for _ in range(12)]
        try:
            for conn in conns:  # connections spread over both read processes; only they accept on the address
                session = conn.session()
                for i in range(3):
                    session.search([float(i), 1.0], k=2)
                with pytest.raises(NotFound):
                    session.get("Doc", "d0")  # a secret one: as absent as a missing one
        finally:
            for conn in conns:
                conn.close()
        samples = scrape(url)
        assert value(samples, "knowledge_rpc_requests_total", rpc="Search", code="OK") == 36
        assert value(samples, "knowledge_rpc_latency_seconds_count", rpc="Search") == 36
        assert value(samples, "knowledge_rpc_errors_total", rpc="Get", code="NOT_FOUND") == 12
        assert value(samples, "knowledge_search_plans_total") == 36
        assert value(samples, "knowledge_index_rows", index="Doc.emb") == 9  # the store's figure, once
        # a read process killed and started again: what it had served stays counted (its last scrape)
        before = reader_pids(server)
        os.kill(before[0], signal.SIGKILL)
        wait_restarted(server, before)
        assert value(scrape(url), "knowledge_rpc_requests_total", rpc="Search", code="OK") == 36
        conns = [knowledge.connect(server.address, token=reader, timeout_s=30) for _ in range(12)]
        try:
            for conn in conns:
                eventually(lambda conn=conn: conn.session().search([1.0, 1.0], k=2))
        finally:
            for conn in conns:
                conn.close()
        samples = scrape(url)
        assert value(samples, "knowledge_rpc_requests_total", rpc="Search", code="OK") == 48
        assert value(samples, "knowledge_rpc_latency_seconds_count", rpc="Search") >= 48  # and any UNAVAILABLE retried
    finally:
        server.stop()
