"""The benchmark suite (`python -m bench`, `knowledge bench`): a smoke-sized run of every suite writes a
results document that passes the SLO file's schema, a Markdown report and PNG plots; the data sets and
measures it relies on are checked against brute force and a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import knowledge
from knowledge.slo import load_slo, validate_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import datasets, measure, peers, report, runner  # noqa: E402

SUITES = ("ingest", "vectors", "acl", "retrieval", "server", "replication", "lifecycle")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-smoke")
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    return done, out


def test_smoke_run_passes_the_slo_schema(smoke_run):
    done, out = smoke_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    validate_results(results, load_slo(os.path.join(REPO, "bench", "slo.toml")))
    assert set(results["suites"]) == set(SUITES)
    machine = results["machine"]
    assert machine["cpu_model"] and machine["cores"] >= 1 and isinstance(machine["load_after"], list)
    for name, suite in results["suites"].items():
        if name in ("server", "replication"):
            assert suite["status"] in ("ok", "not available"), suite
        else:
            assert suite["status"] == "ok", (name, suite.get("reason"), suite.get("traceback"))
            assert suite["ratios"] and suite["baseline"]["name"]
        assert isinstance(suite["load_before"], list) and isinstance(suite["load_after"], list)


def test_smoke_vectors_cover_every_selectivity_and_both_filters(smoke_run):
    _, out = smoke_run
    vectors = json.loads((out / "results.json").read_text())["suites"]["vectors"]
    for data in vectors["sets"].values():
        for kind in ("principal", "where"):
            assert set(data[kind]) == {"1", "0.1", "0.01", "0.001"}
            for cell in data[kind].values():
                assert 0.0 <= cell["recall"] <= 1.0 and cell["latency"]["count"] > 0 and cell["plans"]
    assert vectors["recall"]["min"] >= 0.9  # exact plans on the small sets, HNSW on the synthetic one
    synthetic = vectors["sets"]["synthetic"]
    if synthetic.get("peers"):
        assert "raw faiss HNSW" in synthetic["peers"]["results"]
        assert set(synthetic["peers"]["acl"]) >= {"raw faiss HNSW", "hnswlib", "chromadb", "lancedb", "LadybugDB"}


def test_smoke_report_and_plots(smoke_run):
    _, out = smoke_run
    text = (out / "report.md").read_text()
    for name in SUITES:
        assert f"## {name}" in text
    assert "Machine:" in text and "Status: **ok**" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "Plots skipped" in text
        return
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert {"latency_cdf_vectors.png", "recall_qps_synthetic.png", "commit_latency_by_policy.png"} <= set(plots)
    for name in plots:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}" in text


def test_slo_check_reads_the_smoke_run(smoke_run):
    _, out = smoke_run
    done = subprocess.run([sys.executable, "-m", "knowledge.cli", "slo", "check", str(out), "--slo",
                           os.path.join(REPO, "bench", "slo.toml")], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr  # met or violated on this VM; never a malformed document
    for objective in load_slo(os.path.join(REPO, "bench", "slo.toml")).objectives:
        assert objective.name in done.stdout


def test_unknown_suite_is_a_usage_error():
    with pytest.raises(SystemExit) as raised:
        runner.parse(["vectorz"])
    assert raised.value.code == 2


def test_clustered_set_is_skewed_normalised_and_seeded():
    a = datasets.clustered(4000, 50, dimension=32, clusters=40, seed=3)
    b = datasets.clustered(4000, 50, dimension=32, clusters=40, seed=3)
    assert a.base.shape == (4000, 32) and a.queries.shape == (50, 32) and a.base.dtype == np.float32
    assert np.allclose(np.linalg.norm(a.base, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a.base, b.base)
    nearest = (a.base @ a.base[:40].T).argmax(axis=1)  # not the clusters themselves, but their skew shows
    counts = np.sort(np.bincount(nearest, minlength=40))[::-1]
    assert counts[0] > 3 * np.median(counts)


def test_minilm_set_is_the_bundled_embeddings():
    real = datasets.minilm()
    assert real.base.shape[1] == 384 and len(real.base) >= 1890 and len(real.queries) >= 100
    assert np.allclose(np.linalg.norm(real.base, axis=1), 1.0, atol=1e-3)


def test_principal_and_where_filters_select_the_same_rows(tmp_path):
    rows = 2000
    data = datasets.clustered(rows, 5, dimension=16, clusters=20)
    labels, bucket, masks = datasets.selectivity_columns(rows)
    for small, large in zip(datasets.SELECTIVITIES[1:], datasets.SELECTIVITIES[:-1], strict=True):
        assert not (masks[small] & ~masks[large]).any()  # nested
    assert abs(masks[0.1].mean() - 0.1) < 0.03
    from bench.suites import vectors_suite
    store = vectors_suite.build_store(str(tmp_path / "s"), data, "flat", labels, bucket)
    try:
        for s in (0.1, 0.01):
            reader = store.session(knowledge.Principal("r", read=frozenset({datasets.label(s)})))
            by_label = reader.search(data.queries[0], k=10).column("_key").to_pylist()
            by_where = store.session().search(data.queries[0], k=10, where=datasets.where(s)).column("_key").to_pylist()
            assert by_label == by_where
            want = measure.exact_topk(data.base, data.queries[:1], 10, masks[s])[0]
            assert [int(k[1:]) for k in by_label] == want
    finally:
        store.close()


def test_exact_topk_and_recall():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 8)).astype(np.float32)
    queries = rng.normal(size=(7, 8)).astype(np.float32)
    mask = rng.random(500) < 0.2
    got = measure.exact_topk(base, queries, 5, mask)
    for q, found in zip(queries, got, strict=True):
        scores = np.where(mask, base @ q, -np.inf)
        assert found == list(np.argsort(-scores)[:5])
    assert measure.recall_at_k(got, got, 5) == 1.0
    assert measure.recall_at_k([f[:3] + [10_000, 10_001] for f in got], got, 5) == pytest.approx(0.6)
    series = measure.series_ms(list(range(1, 3001)))
    assert series["count"] == 3000 and len(series["cdf_ms"]) == measure.CDF_POINTS_MAX
    assert series["p50_ms"] == pytest.approx(1500.5) and series["max_ms"] == 3000


def test_raw_faiss_peer_recall_against_exact(tmp_path):
    data = datasets.clustered(3000, 10, dimension=32, clusters=30)
    _, bucket, masks = datasets.selectivity_columns(3000)
    found = peers.compare(data, bucket, masks, 10, str(tmp_path), quick=True, queries_max=10)
    faiss_runs = found["results"]["raw faiss HNSW"]
    for s in ("1", "0.1"):  # ef=512 over 3,000 rows finds (nearly) everything, filtered or not
        best = max(faiss_runs[s], key=lambda p: p["param"])
        assert best["recall"] >= 0.9 and best["qps"] > 0, (s, best)
    for name, runs in found["results"].items():
        if name in ("lancedb", "LadybugDB"):  # exact scans with the filter applied first
            assert all(p["recall"] == 1.0 for s in runs for p in runs[s]), name
    assert all(name in found["results"] or name in found["unavailable"] for name in found["acl"])
    text = peers.render(found, {"rows": 3000, "principal": {s: {"recall": 1.0, "qps": 1000.0}
                                                          for s in faiss_runs}})
    assert "cannot" in text and "raw faiss HNSW" in text


def test_publish_keeps_the_other_sections(tmp_path, monkeypatch):
    from bench import common
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\n## Vector search (bench/vectors.py)\n\nkept\n")
    monkeypatch.setattr(common, "HERE", str(tmp_path))
    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path / "results"))
    out = tmp_path / "out"
    document = {"command": "python -m bench --smoke", "quick": True, "started_at": "t", "duration_s": 1.0,
                "machine": {"cpu_model": "cpu", "cores": 2, "memory_gib": 1, "python": "3.11", "load": [0.1],
                            "load_after": [0.2]},
                "suites": {"server": {"status": "not available", "reason": "no server yet", "duration_s": 0.0,
                                      "load_before": [], "load_after": []}}}
    report.write(document, str(out))
    report.publish_results(document, str(out))
    report.publish_results(document, str(out))  # twice: the section is replaced, not appended again
    text = results_md.read_text()
    assert "## Vector search (bench/vectors.py)\n\nkept" in text
    assert text.count(f"## {report.SECTION}") == 1 and "no server yet" in text
    assert (tmp_path / "results" / "suite.json").exists()


def test_knowledge_bench_runs_from_any_directory(tmp_path):
    """The installed command finds the checkout's bench/ (it is not installed) and writes where it is told."""
    import shutil
    command = shutil.which("knowledge") or os.path.join(os.path.dirname(sys.executable), "knowledge")
    if not os.path.isfile(command):
        command = None
    argv = [command] if command else [sys.executable, "-m", "knowledge.cli"]
    done = subprocess.run([*argv, "bench", "acl", "server", "--smoke", "--no-peers", "--out", "here"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "here" / "results.json").read_text())
    assert set(results["suites"]) == {"acl", "server"} and results["smoke"] is True
    assert results["suites"]["acl"]["status"] == "ok"


def test_knowledge_bench_says_where_bench_must_be(tmp_path, monkeypatch):
    from knowledge import cli
    monkeypatch.setenv("KNOWLEDGE_BENCH_DIR", str(tmp_path))  # no runner.py there: falls through to the checkout
    assert cli.bench_directory() == os.path.join(REPO, "bench")
    monkeypatch.setattr(cli.knowledge, "__file__", str(tmp_path / "site" / "knowledge" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(knowledge.errors.InvalidArgument, match="KNOWLEDGE_BENCH_DIR"):
        cli.bench_directory()
    monkeypatch.setenv("KNOWLEDGE_BENCH_DIR", os.path.join(REPO, "bench"))
    assert cli.bench_directory() == os.path.join(REPO, "bench")


def test_regenerate_runs_each_sections_command(tmp_path, capsys):
    results_md = tmp_path / "RESULTS.md"
    marker = tmp_path / "ran.txt"
    results_md.write_text("# Benchmark results\n\n## A (a.py)\n\nCommand: `python -c \"open('" + str(marker)
                          + "', 'a').write('a')\"` (2 CPUs)\n\n| x |\n\n## Notes\n\nwritten by hand\n\n"
                          "## GPU path\n\nCommand: `python -c \"raise SystemExit(3)\"`\n\n## B\n\n"
                          "Command: `python -c \"raise SystemExit(4)\"`\n")
    assert report.section_commands(str(results_md))[1] == ("Notes", None)
    assert report.regenerate(str(results_md), str(tmp_path)) == 1  # B failed; the GPU one was not run
    out = capsys.readouterr().out
    assert marker.read_text() == "a" and "kept as written (no command): Notes" in out
    assert "skipped (needs a GPU" in out and "FAILED (4): B" in out
