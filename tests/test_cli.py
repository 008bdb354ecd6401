"""The `knowledge` command: every verb in-process through main(), plus real runs of the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knowledge.cli import build_parser, main

SCHEMA = {
    "nodes": {"Person": {"key": "name", "properties": {"age": "int"}},
              "Ticket": {"key": "number", "properties": {"number": "int", "title": "text"}}},
    "edges": {"KNOWS": {"source": "Person", "target": "Person", "properties": {"since": "int"}}},
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


@pytest.fixture
def store_path(tmp_path: Path, capsys, schema_file: Path) -> Path:
    path = tmp_path / "people.store"
    assert run(capsys, "init", path)[0] == 0
    assert run(capsys, "schema", path, "--apply", schema_file)[0] == 0
    return path


@pytest.fixture
def people(store_path: Path, tmp_path: Path, capsys) -> Path:
    nodes = tmp_path / "people.jsonl"
    nodes.write_text("".join(json.dumps({"name": n, "age": a}) + "\n" for n, a in
                             [("ada", 36), ("bob", 40), ("cy", 7), ("dee", 51)]))
    edges = tmp_path / "knows.csv"
    edges.write_text("src,dst,since\nada,bob,1843\nada,cy,\nbob,cy,1900\ndee,ada,2000\n")
    assert run(capsys, "ingest", store_path, "Person", nodes, "--label", "public")[0] == 0
    assert run(capsys, "ingest", store_path, "KNOWS", edges, "--edges")[0] == 0
    return store_path


# -- init and schema -------------------------------------------------------------------------------
def test_init_creates_a_store_and_is_idempotent(tmp_path, capsys):
    path = tmp_path / "new.store"
    first = run_json(capsys, "init", path)
    assert first["path"] == str(path) and first["lsn"] == 0
    assert (path / "STORE").is_file()
    assert run_json(capsys, "init", path)["path"] == str(path)


def test_init_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    code, out, err = run(capsys, "init", tmp_path / "junk")
    assert code == 1 and out == "" and err.startswith("error: ") and "junk" in err


def test_schema_apply_and_print(store_path, capsys):
    schema = run_json(capsys, "schema", store_path)
    assert set(schema["nodes"]) == {"Person", "Ticket"} and schema["edges"]["KNOWS"]["source"] == ["Person"]
    assert schema["nodes"]["Person"]["properties"]["age"] == {"type": "int"}


def test_schema_apply_adds_a_property(store_path, tmp_path, capsys):
    change = tmp_path / "more.json"
    change.write_text(json.dumps({"nodes": {"Person": {"key": "name", "properties": {"bio": "text"}}}}))
    schema = run_json(capsys, "schema", store_path, "--apply", change)
    assert schema["nodes"]["Person"]["properties"]["bio"] == {"type": "text"}


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"nodes": {"Person": {"key": "age"}}}), "key"),
    (json.dumps({"vertices": {}}), "unknown section"),
])
def test_schema_apply_bad_file(store_path, tmp_path, capsys, content, message):
    change = tmp_path / "bad.json"
    change.write_text(content)
    code, out, err = run(capsys, "schema", store_path, "--apply", change)
    assert code == 1 and out == "" and err.startswith("error: ") and message in err


def test_schema_apply_missing_file(store_path, tmp_path, capsys):
    code, _, err = run(capsys, "schema", store_path, "--apply", tmp_path / "absent.json")
    assert code == 1 and "absent.json" in err and err.startswith("error: ")


def test_verbs_on_a_missing_store_do_not_create_it(tmp_path, capsys):
    path = tmp_path / "nothing"
    for argv in (["schema", path], ["stats", path], ["get", path, "Person", "ada"], ["checkpoint", path]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and "no store" in err
    assert not path.exists()


# -- ingest ----------------------------------------------------------------------------------------
def test_ingest_jsonl(store_path, tmp_path, capsys):
    path = tmp_path / "people.jsonl"
    path.write_text("".join(json.dumps({"name": f"p{i}", "age": i}) + "\n" for i in range(25)))
    code, out, err = run(capsys, "ingest", store_path, "Person", path, "--batch-rows", "10")
    assert code == 0 and err == ""
    assert "ingested 25 rows" in out and "3 batches" in out and "rows/s" in out
    assert run_json(capsys, "stats", store_path)["nodes"]["Person"] == 25
    assert run_json(capsys, "get", store_path, "Person", "p7")["age"] == 7


def test_ingest_csv_with_int_keys(store_path, tmp_path, capsys):
    path = tmp_path / "tickets.csv"
    path.write_text('number,title\n1,"first, with a comma"\n2,second\n0042,third\n')
    code, out, _ = run(capsys, "ingest", store_path, "Ticket", path, "--quiet")
    assert code == 0 and "ingested 3 rows" in out
    assert run_json(capsys, "get", store_path, "Ticket", "1")["title"] == "first, with a comma"
    assert run_json(capsys, "get", store_path, "Ticket", "42")["title"] == "third"
    code, _, err = run(capsys, "get", store_path, "Ticket", "one")
    assert code == 1 and "not an int" in err


def test_ingest_parquet(store_path, tmp_path, capsys):
    path = tmp_path / "people.parquet"
    pq.write_table(pa.table({"name": [f"q{i}" for i in range(50)], "age": pa.array(range(50), pa.int32()),
                             "_labels": [["public"]] * 50}), path)
    code, out, _ = run(capsys, "ingest", store_path, "Person", path, "--batch-rows", "20")
    assert code == 0 and "ingested 50 rows" in out and "3 batches" in out
    assert run_json(capsys, "get", store_path, "Person", "q49") == {
        "_id": 49, "_labels": ["public"], "name": "q49", "age": 49}


def test_ingest_with_explicit_format(store_path, tmp_path, capsys):
    path = tmp_path / "people.txt"
    path.write_text("name,age\nzed,3\n")
    assert run(capsys, "ingest", store_path, "Person", path)[0] == 1
    assert run(capsys, "ingest", store_path, "Person", path, "--format", "csv")[0] == 0
    assert run_json(capsys, "get", store_path, "Person", "zed")["age"] == 3


def test_ingest_bad_row_reports_row_and_file(store_path, tmp_path, capsys):
    path = tmp_path / "people.csv"
    path.write_text("name,age\na,1\nb,two\n")
    code, out, err = run(capsys, "ingest", store_path, "Person", path)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "row 1" in err and "people.csv" in err and "'two'" in err


def test_ingest_usage_errors_exit_2(store_path, tmp_path, capsys):
    path = tmp_path / "people.csv"
    path.write_text("name\na\n")
    assert run(capsys, "ingest", store_path, "Person", path, "--batch-rows", "0")[0] == 2
    assert run(capsys, "ingest", store_path, "Person", path, "--format", "xml")[0] == 2
    assert run(capsys, "ingest", store_path, "Person")[0] == 2


# -- reads -----------------------------------------------------------------------------------------
def test_get(people, capsys):
    assert run_json(capsys, "get", people, "Person", "ada") == {
        "_id": 0, "_labels": ["public"], "name": "ada", "age": 36}


def test_get_missing_key_exits_1_naming_the_key(people, capsys):
    code, out, err = run(capsys, "get", people, "Person", "zoe")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "'zoe'" in err and err.count("\n") == 1


def test_get_unknown_type(people, capsys):
    code, _, err = run(capsys, "get", people, "Robot", "r2")
    assert code == 1 and "Robot" in err


def test_neighbors(people, capsys):
    out = run_json(capsys, "neighbors", people, "Person", "ada")
    assert [n["key"] for n in out] == ["bob", "cy"] and all(n["type"] == "Person" for n in out)
    both = run_json(capsys, "neighbors", people, "Person", "ada", "--edge-type", "KNOWS",
                    "--direction", "both", "--limit", "2")
    assert [n["key"] for n in both] == ["bob", "cy"]
    incoming = run_json(capsys, "neighbors", people, "Person", "ada", "--direction", "in")
    assert [n["key"] for n in incoming] == ["dee"]
    assert run_json(capsys, "neighbors", people, "Person", "cy") == []


def test_neighbors_errors(people, capsys):
    assert run(capsys, "neighbors", people, "Person", "ada", "--direction", "up")[0] == 2
    code, _, err = run(capsys, "neighbors", people, "Person", "ada", "--edge-type", "LIKES")
    assert code == 1 and "LIKES" in err
    code, _, err = run(capsys, "neighbors", people, "Person", "nobody")
    assert code == 1 and "'nobody'" in err


def test_stats(people, capsys):
    stats = run_json(capsys, "stats", people)
    assert stats["nodes"] == {"Person": 4, "Ticket": 0} and stats["edges"] == {"KNOWS": 4}
    assert stats["lsn"] == 3 and stats["path"] == str(people)  # schema, nodes, edges: one record each


def test_checkpoint(people, capsys):
    before = run_json(capsys, "stats", people)
    out = run_json(capsys, "checkpoint", people)
    assert out["lsn"] == before["lsn"]
    after = run_json(capsys, "stats", people)
    assert after["nodes"] == before["nodes"] and after["edges"] == before["edges"]
    assert after["applied_lsn"] == before["lsn"]


def test_backup_and_restore_round_trip(people, tmp_path, capsys):
    original = run_json(capsys, "stats", people)
    backup = tmp_path / "backup"
    made = run_json(capsys, "backup", people, backup)
    assert made["lsn"] == original["lsn"]
    restored_path = tmp_path / "restored.store"
    restored = run_json(capsys, "restore", backup, restored_path)
    assert restored["lsn"] == original["lsn"]
    again = run_json(capsys, "stats", restored_path)
    assert (again["nodes"], again["edges"], again["lsn"]) == (original["nodes"], original["edges"], original["lsn"])
    assert run_json(capsys, "get", restored_path, "Person", "ada")["age"] == 36
    # a second backup into the same destination is refused
    code, _, err = run(capsys, "backup", people, backup)
    assert code == 1 and "backup" in err
    code, _, err = run(capsys, "restore", tmp_path / "not-a-backup", tmp_path / "r2")
    assert code == 1 and "no backup" in err


# -- help and usage --------------------------------------------------------------------------------
def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_subcommand_is_there():
    assert _subcommands() == sorted(["init", "schema", "ingest", "get", "neighbors", "stats", "checkpoint",
                                     "backup", "restore", "recover", "principal", "demo", "bench", "slo",
                                     "serve", "search", "retrieve", "scan", "export", "mcp", "promote", "ttl"])


@pytest.mark.parametrize("command", [None, *_subcommands()])
def test_help_shows_an_example(capsys, command):
    code, out, _ = run(capsys, *([command] if command else []), "--help")
    assert code == 0 and "Example:" in out and "knowledge" in out


def test_usage_errors_exit_2(capsys):
    code, out, err = run(capsys)
    assert code == 2 and "usage:" in err
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "get", "only-a-path")[0] == 2


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("knowledge ")


# -- the console script ----------------------------------------------------------------------------
def _console_script() -> list[str]:
    script = shutil.which("knowledge") or os.path.join(os.path.dirname(sys.executable), "knowledge")
    if os.path.isfile(script):
        return [script]
    pytest.skip("the `knowledge` console script is not installed (pip install -e .)")
    return []


def test_console_script_end_to_end(tmp_path, schema_file, capsys):
    script = _console_script()
    path = tmp_path / "cli.store"
    data = tmp_path / "people.csv"
    data.write_text("name,age\nada,36\nbob,40\n")

    def call(*argv: object) -> subprocess.CompletedProcess:
        return subprocess.run([*script, *map(str, argv)], capture_output=True, text=True, timeout=60)

    assert call("init", path).returncode == 0
    assert run(capsys, "schema", path, "--apply", schema_file)[0] == 0
    ingest = call("ingest", path, "Person", data)
    assert ingest.returncode == 0 and "ingested 2 rows" in ingest.stdout
    assert ingest.stderr == ""  # no progress bar when stderr is not a terminal
    missing = call("get", path, "Person", "zoe")
    assert missing.returncode == 1 and missing.stdout == "" and missing.stderr.startswith("error: ")
    assert "'zoe'" in missing.stderr and "Traceback" not in missing.stderr
    assert run_json(capsys, "get", path, "Person", "bob")["age"] == 40


# -- demo ------------------------------------------------------------------------------------------
def test_demo_on_the_bundled_data(tmp_path, capsys):
    from knowledge.demo import run_demo

    path = tmp_path / "demo.store"
    code, out, err = run(capsys, "demo", "--path", path)
    assert code == 0, err
    assert "Document" in out and "MENTIONS" in out and "rows/s" in out
    assert "gold hit: yes" in out and "timings (ms):" in out and "path:" in out
    assert "recall@5 vector" in out
    assert f"store kept at {path}" in out and (path / "STORE").is_file()
    # the kept store answers like any other, and running the demo again on it changes nothing
    stats = run_json(capsys, "stats", path)
    assert stats["nodes"]["Document"] == 1890 and stats["nodes"]["Chunk"] == 1890
    assert stats["nodes"]["Entity"] > 10_000
    assert stats["edges"]["MENTIONS"] > 10_000 and stats["edges"]["RELATED"] > 10_000
    import io

    result = run_demo(str(path), out=io.StringIO())
    # the demo reports what its (non-admin) reader sees: RELATED is an admin-only edge type
    assert result["nodes"] == stats["nodes"]
    assert result["edges"] == {name: n for name, n in stats["edges"].items() if name != "RELATED"}
    assert result["ingest"].written == 0 and result["ingest"].lsns == []
    assert len(result["questions"]) == 3 and result["summary"]["with_gold_hit"] > 0
    assert any(q["gold_hits"] for q in result["questions"])
    assert result["summary"]["graph_recall@5"] > result["summary"]["vector_recall@5"]
