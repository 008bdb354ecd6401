"""knowledge.slo: SLO files, their evaluation against bench results and a live Prometheus endpoint (real
HTTP), burn rates, and `knowledge slo check` exiting 1 on a violated objective and 0 on a met one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from knowledge.errors import SloError, Unavailable
from knowledge.metrics import Metrics, start_http
from knowledge.slo import (
    check,
    evaluate_metrics,
    evaluate_results,
    load_slo,
    parse_slo,
    parse_window,
    resolve,
    validate_results,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLO = """
name = "test"

[[objectives]]
name = "retrieve-p99"
kind = "latency"
threshold_ms = 50
target = 0.99
window = "28d"
results = "suites.retrieval.latency.graph"
prometheus = { metric = "knowledge_rpc_latency_seconds", labels = { rpc = "Retrieve" } }

[[objectives]]
name = "recall"
kind = "recall"
target = 0.95
window = "7d"
results = "suites.vectors.recall.min"
prometheus = { metric = "knowledge_search_recall" }

[[objectives]]
name = "availability"
kind = "availability"
target = 0.999
window = "30d"
results = "suites.retrieval.requests"
prometheus = { metric = "knowledge_rpc_requests_total" }

[[objectives]]
name = "lag"
kind = "lag"
threshold_ms = 1000
target = 0.99
window = "1d"
results = "suites.replication.lag.series"
prometheus = { metric = "knowledge_replication_lag_observed_seconds" }
"""


def series(values_ms: list[float]) -> dict:
    ordered = sorted(values_ms)
    return {"count": len(ordered), "p99_ms": ordered[int(0.99 * (len(ordered) - 1))], "cdf_ms": ordered}


def results(slow: int, recall: float, errors: int) -> dict:
    """A results document: 1000 retrieves of which `slow` took 80 ms (the rest 5 ms)."""
    suite = {"status": "ok", "duration_s": 1.0, "load_before": [0.1], "load_after": [0.2],
             "baseline": {"name": "b", "description": "a baseline"}, "ratios": {"x": 1.1}}
    return {"schema": "knowledge-bench/1", "machine": {"cpu_model": "cpu", "cores": 2, "load": [0.1], "load_after": [0.2]},
            "suites": {"retrieval": {**suite, "latency": {"graph": series([5.0] * (1000 - slow) + [80.0] * slow)},
                                     "requests": {"requests": 1000, "errors": errors}},
                       "vectors": {**suite, "recall": {"min": recall}},
                       "replication": {"status": "not available", "reason": "no replication yet", "duration_s": 0.0,
                                       "load_before": [], "load_after": []}}}


def by_name(evaluations) -> dict:
    return {e.objective.name: e for e in evaluations}


def test_met_and_violated_with_burn_rates():
    slo = parse_slo(SLO)
    met = by_name(evaluate_results(slo, results(slow=5, recall=0.97, errors=0)))
    assert met["retrieve-p99"].status == "met" and met["retrieve-p99"].burn_rate == pytest.approx(0.5)
    assert met["recall"].status == "met" and met["recall"].burn_rate == pytest.approx(0.6)
    assert met["availability"].status == "met" and met["availability"].burn_rate == 0.0
    assert met["lag"].status == "no data"
    bad = by_name(evaluate_results(slo, results(slow=30, recall=0.90, errors=3)))
    assert bad["retrieve-p99"].status == "violated" and bad["retrieve-p99"].burn_rate == pytest.approx(3.0)
    assert bad["recall"].status == "violated" and bad["recall"].burn_rate == pytest.approx(2.0)
    assert bad["availability"].status == "violated" and bad["availability"].burn_rate == pytest.approx(3.0)


def test_exactly_on_budget_is_met():
    exact = by_name(evaluate_results(parse_slo(SLO), results(slow=10, recall=0.95, errors=1)))
    assert exact["retrieve-p99"].status == "met" and exact["retrieve-p99"].burn_rate == pytest.approx(1.0)
    assert exact["availability"].status == "met"


@pytest.mark.parametrize("edit, field", [
    (("kind = \"recall\"", "kind = \"speed\""), "kind"),
    (("target = 0.95", "target = 1.5"), "target"),
    (("target = 0.999", "target = 1"), "target"),
    (("threshold_ms = 50\n", ""), "threshold_ms"),
    (("window = \"28d\"", "window = \"28 days\""), "window"),
    (("window = \"7d\"", "window = \"7d\"\nthreshold_ms = 5"), "threshold_ms"),
    (("name = \"lag\"", "name = \"recall\""), "name"),
    (("window = \"1d\"", "window = \"1d\"\nthreshhold = 3"), "threshhold"),
])
def test_bad_slo_files_name_the_field(edit, field):
    with pytest.raises(SloError) as raised:
        parse_slo(SLO.replace(*edit), "slo.toml")
    assert raised.value.field == field and "slo.toml" in str(raised.value)


def test_bad_toml_and_missing_files():
    with pytest.raises(SloError, match="not valid TOML"):
        parse_slo("[[objectives]\nname=", "x.toml")
    with pytest.raises(SloError, match="no \\[\\[objectives\\]\\]"):
        parse_slo("name = 'x'")
    with pytest.raises(SloError, match="cannot read SLO file"):
        load_slo("/nonexistent/slo.toml")


def test_windows():
    assert parse_window("30s") == 30 and parse_window("5m") == 300 and parse_window("1.5h") == 5400
    assert parse_window("28d") == 28 * 86400 and parse_window("1w") == 7 * 86400
    for bad in ("0d", "d", "5", "-1h", "3y"):
        with pytest.raises(SloError):
            parse_window(bad)


def test_resolve_finds_keys_with_dots():
    doc = {"suites": {"vectors": {"latency": {"real/where/0.01": 1, "0.1": {"x": 2}}}}}
    assert resolve(doc, "suites.vectors.latency.real/where/0.01") == 1
    assert resolve(doc, "suites.vectors.latency.0.1.x") == 2
    with pytest.raises(KeyError):
        resolve(doc, "suites.vectors.nothing")


def test_results_schema_checks():
    slo = parse_slo(SLO)
    validate_results(results(5, 0.97, 0), slo)
    broken = results(5, 0.97, 0)
    del broken["machine"]["cpu_model"]
    with pytest.raises(SloError, match="cpu_model"):
        validate_results(broken, slo)
    broken = results(5, 0.97, 0)
    del broken["suites"]["vectors"]["baseline"]
    with pytest.raises(SloError, match="baseline"):
        validate_results(broken, slo)
    broken = results(5, 0.97, 0)
    broken["suites"]["vectors"]["recall"]["min"] = 3.0
    with pytest.raises(SloError, match="recall in"):
        validate_results(broken, slo)
    broken = results(5, 0.97, 0)
    del broken["suites"]["retrieval"]["latency"]
    with pytest.raises(SloError, match="nothing at suites.retrieval.latency.graph"):
        validate_results(broken, slo)
    with pytest.raises(SloError, match="schema"):
        validate_results({"suites": {}}, slo)


def served_metrics(slow: int, errors: int, recall: float) -> tuple[Metrics, object]:
    metrics = Metrics()
    for i in range(1000):
        metrics.observe_rpc("Retrieve", 0.080 if i < slow else 0.004, "UNAVAILABLE" if i < errors else "OK")
    for _ in range(10):
        metrics.observe_rpc("Get", 0.001, "NOT_FOUND")  # the caller's mistake: spends no availability budget
        metrics.observe_recall(recall)
    metrics.set_replication_lag("r1", 3, 0.02)
    return metrics, start_http(metrics, "127.0.0.1:0")


def test_live_endpoint_met_and_violated():
    slo = parse_slo(SLO)
    for slow, errors, recall, expect in ((5, 0, 0.99, "met"), (40, 5, 0.5, "violated")):
        _, server = served_metrics(slow, errors, recall)
        try:
            report = check(server.url, os.path.join(REPO, "bench", "slo.toml"))  # the shipped file parses too
            assert {e.objective.name for e in report.evaluations} >= {"retrieve-latency", "availability"}
            from knowledge.slo import scrape
            found = by_name(evaluate_metrics(slo, scrape(server.url)))
        finally:
            server.close()
        assert found["retrieve-p99"].status == expect
        assert found["recall"].status == expect
        assert found["availability"].status == expect
        assert found["lag"].status == "met"
    assert found["retrieve-p99"].burn_rate == pytest.approx(40 / 1000 / 0.01)  # labels: Retrieve only
    assert found["availability"].burn_rate == pytest.approx(5 / 1010 / 0.001)  # every RPC; NOT_FOUND is good


def test_two_scrapes_evaluate_the_difference():
    metrics, server = served_metrics(slow=0, errors=0, recall=1.0)
    try:
        from knowledge.slo import scrape
        first = scrape(server.url)
        for _ in range(100):
            metrics.observe_rpc("Retrieve", 0.2)
        later = by_name(evaluate_metrics(parse_slo(SLO), scrape(server.url), first))
    finally:
        server.close()
    assert later["retrieve-p99"].events == 100 and later["retrieve-p99"].bad_fraction == 1.0
    assert later["recall"].status == "no data"  # no new samples in between


def test_off_bucket_thresholds_err_on_the_strict_side():
    text = SLO.replace("threshold_ms = 50", "threshold_ms = 60")
    metrics, server = served_metrics(slow=0, errors=0, recall=1.0)
    try:
        metrics.observe_rpc("Retrieve", 0.055)  # under 60 ms, over the 50 ms bucket bound
        from knowledge.slo import scrape
        found = by_name(evaluate_metrics(parse_slo(text), scrape(server.url)))
    finally:
        server.close()
    assert found["retrieve-p99"].bad_fraction == pytest.approx(1 / 1001)
    assert "bucket bound 50 ms" in found["retrieve-p99"].note


def test_unreachable_endpoint_is_unavailable(tmp_path):
    path = tmp_path / "slo.toml"
    path.write_text(SLO)
    with pytest.raises(Unavailable, match="cannot scrape"):
        check("http://127.0.0.1:9/metrics", str(path))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "knowledge.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.mark.parametrize("slow, recall, errors, code", [(5, 0.97, 0, 0), (30, 0.97, 0, 1), (5, 0.90, 0, 1),
                                                        (5, 0.97, 2, 1)])
def test_cli_exit_status_gates_a_deployment(tmp_path, slow, recall, errors, code):
    slo = tmp_path / "slo.toml"
    slo.write_text(SLO)
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results(slow, recall, errors)))
    done = run_cli("slo", "check", str(out), "--slo", str(slo))
    assert done.returncode == code, done.stdout + done.stderr
    assert "burn rate" in done.stdout and ("VIOLATED" in done.stdout) == bool(code)
    strict = run_cli("slo", "check", str(out / "results.json"), "--slo", str(slo), "--strict")
    assert strict.returncode == 1  # the replication objective has no data


def test_cli_against_a_live_endpoint(tmp_path):
    slo = tmp_path / "slo.toml"
    slo.write_text(SLO)
    for slow, code in ((0, 0), (100, 1)):
        _, server = served_metrics(slow=slow, errors=0, recall=1.0)
        try:
            done = run_cli("slo", "check", server.url, "--slo", str(slo))
        finally:
            server.close()
        assert done.returncode == code, done.stdout + done.stderr


def test_cli_bad_slo_file_is_a_clear_error(tmp_path):
    slo = tmp_path / "slo.toml"
    slo.write_text(SLO.replace("target = 0.95", "target = 95"))
    (tmp_path / "results.json").write_text(json.dumps(results(5, 0.97, 0)))
    done = run_cli("slo", "check", str(tmp_path / "results.json"), "--slo", str(slo))
    assert done.returncode not in (0, 1) or "target" in done.stderr
    assert "target must be a fraction" in done.stderr


def test_cli_over_judges_only_what_happened_in_between(tmp_path):
    """Slow calls before the first scrape do not count with --over; nothing in between is no data."""
    slo = tmp_path / "slo.toml"
    slo.write_text(SLO)
    _, server = served_metrics(slow=900, errors=0, recall=1.0)
    try:
        once = run_cli("slo", "check", server.url, "--slo", str(slo))
        over = run_cli("slo", "check", server.url, "--slo", str(slo), "--over", "0.2")
    finally:
        server.close()
    assert once.returncode == 1 and "VIOLATED  retrieve-p99" in once.stdout
    assert over.returncode == 0 and "NO DATA   retrieve-p99" in over.stdout, over.stdout
