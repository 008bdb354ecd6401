"""ingest_file: formats, batching, type conversion, and errors that name the file and the row in it."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import knowledge
from knowledge.errors import InvalidArgument, MissingEndpoint, TypeMismatch, UnknownType, ValidationError
from knowledge.ingest import IngestReport, UnreadableFile, detect_format, ingest_file

SCHEMA = {
    "nodes": {
        "Person": {"key": "name", "properties": {"age": "int", "score": "float", "tags": "list[str]",
                                                 "born": "timestamp", "emb": "vector[2]", "meta": "json"}},
        "Code": {"key": "code", "properties": {"code": "str", "n": "int"}},
        "Num": {"key": "n", "properties": {"n": "int"}},
        "Simple": {"key": "name", "properties": {"age": "int"}},  # no json property: Arrow's JSON reader
    },
    "edges": {"KNOWS": {"source": "Person", "target": "Person", "properties": {"since": "int"}}},
}


@pytest.fixture
def store(tmp_path: Path):
    with knowledge.open(str(tmp_path / "s.store")) as opened:
        opened.apply_schema(SCHEMA)
        yield opened


@pytest.fixture
def session(store):
    return store.session()


def write_jsonl(path: Path, rows: list[dict], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- formats ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fmt"), [("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"), ("a.json", "jsonl"),
                                           ("a.JSONL.gz", "jsonl"), ("a.parquet", "parquet"), ("a.pq", "parquet"),
                                           ("a.csv", "csv"), ("a.tsv", "csv"), ("a.csv.bz2", "csv")])
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt


def test_unknown_extension_names_the_file(session, tmp_path):
    path = tmp_path / "people.dat"
    path.write_text("x")
    with pytest.raises(UnreadableFile, match="people.dat") as info:
        ingest_file(session, "Person", path)
    assert isinstance(info.value, InvalidArgument) and info.value.path == str(path)


def test_missing_file(session, tmp_path):
    with pytest.raises(UnreadableFile, match="nope.csv"):
        ingest_file(session, "Person", tmp_path / "nope.csv")


@pytest.mark.parametrize("name", ["bad.parquet", "bad.csv", "bad.jsonl"])
def test_file_not_in_its_format_names_the_file(session, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'{"name": "a"}\n' if name == "bad.parquet" else b"\x00\xff\xfe garbage \"\n a,b,c\n1\n")
    with pytest.raises(KnowledgeErrorWithFile, match=name):
        ingest_file(session, "Person", path)
    assert session.count("Person") == 0


KnowledgeErrorWithFile = (UnreadableFile, ValidationError)


def test_parquet_content_given_as_jsonl_format(session, tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"name": ["a"]}), path)
    with pytest.raises(KnowledgeErrorWithFile, match="data.parquet"):
        ingest_file(session, "Person", path, fmt="jsonl")


def test_bad_format_argument(session, tmp_path):
    with pytest.raises(InvalidArgument, match="format"):
        ingest_file(session, "Person", tmp_path / "a.csv", fmt="xml")


@pytest.mark.parametrize("batch_rows", [0, -1, 1.5, True])
def test_bad_batch_rows(session, tmp_path, batch_rows):
    path = write_csv(tmp_path / "a.csv", ["name", "a"])
    with pytest.raises(InvalidArgument, match="batch_rows"):
        ingest_file(session, "Person", path, batch_rows=batch_rows)


def test_jsonl_all_property_types(session, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"name": "ada", "age": 36, "score": 1, "tags": ["x", "y"], "born": "1815-12-10T00:00:00",
         "emb": [0.5, 1.5], "meta": {"k": [1, 2]}, "_labels": ["public"]},
        {"name": "bob"},
    ])
    report = ingest_file(session, "Person", path)
    assert (report.rows, report.batches) == (2, 1) and report.last_lsn is not None
    ada = session.get("Person", "ada")
    assert ada["age"] == 36 and ada["score"] == 1.0 and ada["tags"] == ["x", "y"]
    assert ada["born"].year == 1815 and ada["born"].utcoffset().total_seconds() == 0
    assert ada["emb"] == [0.5, 1.5] and ada["meta"] == {"k": [1, 2]} and ada["_labels"] == ["public"]
    assert session.get("Person", "bob")["age"] is None


def test_gzipped_jsonl(session, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl.gz", [{"name": f"p{i}"} for i in range(10)], opener=gzip.open)
    assert ingest_file(session, "Person", path).rows == 10
    assert session.count("Person") == 10


def test_csv_numeric_looking_str_keys_stay_str(session, tmp_path):
    path = write_csv(tmp_path / "codes.csv", ["code,n", "007,1", "42,2", "x9,"])
    ingest_file(session, "Code", path)
    assert session.get("Code", "007")["n"] == 1
    assert session.get("Code", "42")["n"] == 2
    assert session.get("Code", "x9")["n"] is None


def test_csv_int_keys(session, tmp_path):
    path = write_csv(tmp_path / "nums.csv", ["n", "1", "2", "30"])
    ingest_file(session, "Num", path)
    assert session.get("Num", 30)["n"] == 30


def test_csv_lists_labels_and_default_labels(session, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["name,tags,_labels", "ada,x; y,team;public", "bob,,", "cy,z,"])
    ingest_file(session, "Person", path, labels=["public"])
    assert session.get("Person", "ada")["tags"] == ["x", "y"]
    assert session.get("Person", "ada")["_labels"] == ["public", "team"]
    assert session.get("Person", "bob")["_labels"] == ["public"]
    assert session.get("Person", "bob")["tags"] is None
    reader = session.store.session(knowledge.Principal("r", read=frozenset({"public"})))
    assert reader.count("Person") == 3


def test_default_labels_when_column_absent(session, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["name", "a", "b"])
    ingest_file(session, "Person", path, labels=["public", "public"])
    assert session.get("Person", "a")["_labels"] == ["public"]


def test_tsv(session, tmp_path):
    path = write_csv(tmp_path / "p.tsv", ["name\tage", "a\t1"])
    ingest_file(session, "Person", path)
    assert session.get("Person", "a")["age"] == 1


def test_parquet_casts_to_schema_types(session, tmp_path):
    path = tmp_path / "codes.parquet"
    pq.write_table(pa.table({"code": pa.array([7, 8], type=pa.int32()), "n": pa.array([1, 2], type=pa.int8())}),
                   path)
    ingest_file(session, "Code", path)
    assert session.get("Code", "7")["n"] == 1


def test_header_only_csv_commits_nothing(session, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["name,age"])
    report = ingest_file(session, "Person", path)
    assert report == IngestReport(0, report.seconds, 0, None)
    assert session.count("Person") == 0


# -- batching --------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_rows", [1, 3, 7, 10, 11, 1000])
@pytest.mark.parametrize(("fmt", "type_name"), [("csv", "Simple"), ("jsonl", "Simple"), ("jsonl", "Person"),
                                                ("parquet", "Simple")])
def test_batches_cover_every_row_in_order(session, tmp_path, batch_rows, fmt, type_name):
    rows = [{"name": f"p{i:02d}", "age": i} for i in range(10)]
    rows.append({"name": "p03", "age": 99})  # a later row replaces an earlier one, across batches too
    path = tmp_path / f"p.{fmt}"
    if fmt == "csv":
        write_csv(path, ["name,age", *(f"{r['name']},{r['age']}" for r in rows)])
    elif fmt == "jsonl":
        write_jsonl(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    report = ingest_file(session, type_name, path, batch_rows=batch_rows)
    assert report.rows == 11 and report.batches == math.ceil(11 / batch_rows)
    assert report.last_lsn == session.store.memory_lsn
    assert session.count(type_name) == 10
    assert session.get(type_name, "p03")["age"] == 99
    assert report.rows_per_second > 0 and "11 rows" in report.summary()


# -- bad rows --------------------------------------------------------------------------------------
def test_csv_wrong_type_names_row_in_file_and_commits_nothing_of_its_batch(session, tmp_path):
    lines = ["n", *(str(i) for i in range(10))]
    lines[1 + 7] = "seven"  # data row 7 (header excluded)
    path = write_csv(tmp_path / "nums.csv", lines)
    with pytest.raises(TypeMismatch) as info:
        ingest_file(session, "Num", path, batch_rows=3)
    error = info.value
    assert error.row == 7 and error.field == "n" and error.value == "seven"
    assert "row 7" in str(error) and "nums.csv" in str(error) and "'seven'" in str(error)
    # batches [0..2] and [3..5] committed; [6..8] holds the bad row: none of it
    assert session.count("Num") == 6
    assert error.committed_rows == 6 and error.committed_lsn == session.store.memory_lsn
    with pytest.raises(knowledge.errors.NotFound):
        session.get("Num", 6)


def test_parquet_wrong_type_names_row_in_file(session, tmp_path):
    path = tmp_path / "p.parquet"
    ages = [str(i) for i in range(20)]
    ages[13] = "thirteen"
    pq.write_table(pa.table({"name": [f"p{i}" for i in range(20)], "age": ages}), path)
    with pytest.raises(TypeMismatch, match=r"row 13") as info:
        ingest_file(session, "Person", path, batch_rows=5)
    assert info.value.row == 13 and info.value.field == "age"
    assert session.count("Person") == 10


JSONL_PATHS = pytest.mark.parametrize("type_name", ["Simple", "Person"])  # Arrow reader, Python reader


@JSONL_PATHS
def test_jsonl_wrong_type_names_row_in_file(session, tmp_path, type_name):
    rows = [{"name": f"p{i}", "age": i} for i in range(8)]
    rows[5]["age"] = "five"
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(TypeMismatch, match="p.jsonl") as info:
        ingest_file(session, type_name, path, batch_rows=2)
    assert info.value.row == 5 and info.value.field == "age" and info.value.value == "five"
    assert session.count(type_name) < 5  # nothing of the batch holding row 5


@JSONL_PATHS
def test_jsonl_blank_lines_are_not_rows(session, tmp_path, type_name):
    path = tmp_path / "p.jsonl"
    path.write_text('{"name": "a"}\n\n{"name": "b", "age": "x"}\n')
    with pytest.raises(TypeMismatch) as info:
        ingest_file(session, type_name, path)
    assert info.value.row == 1


@JSONL_PATHS
@pytest.mark.parametrize(("line", "message"), [('{"name": oops}', "not valid JSON"), ("[1, 2]", "JSON object"),
                                               (b'{"name": "\xff"}', "UTF-8")])
def test_jsonl_malformed_line_names_row(session, tmp_path, type_name, line, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"name": "a"}\n{"name": "b"}\n' + (line if isinstance(line, bytes) else line.encode()))
    with pytest.raises(ValidationError, match="p.jsonl") as info:
        ingest_file(session, type_name, path)
    assert info.value.row == 2 and message in str(info.value)
    assert session.count(type_name) == 0


def test_jsonl_json_property_values_are_kept_exactly(session, tmp_path):
    metas = [{"a": 1}, "text", [1, {"b": None}], {"c": 2}, 3.5, None, True]
    path = write_jsonl(tmp_path / "p.jsonl", [{"name": f"p{i}", "meta": m} for i, m in enumerate(metas)])
    ingest_file(session, "Person", path)
    assert [session.get("Person", f"p{i}")["meta"] for i in range(len(metas))] == metas


def test_jsonl_unknown_field_of_mixed_kinds_is_reported(session, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"name": "a", "extra": 1}, {"name": "b", "extra": "x"}])
    with pytest.raises(KnowledgeErrorWithFile, match="p.jsonl"):
        ingest_file(session, "Simple", path)
    assert session.count("Simple") == 0


def test_vector_of_wrong_dimension_names_row(session, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"name": "a", "emb": [1, 2]}, {"name": "b", "emb": [1, 2, 3]}])
    with pytest.raises(TypeMismatch) as info:
        ingest_file(session, "Person", path)
    assert (info.value.row, info.value.field) == (1, "emb")


def test_store_side_error_row_is_offset_by_batch_start(session, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["name,age", "a,1", "b,2", "c,3", ",4", "e,5"])
    with pytest.raises(knowledge.errors.MissingKey) as info:
        ingest_file(session, "Person", path, batch_rows=2)
    assert info.value.row == 3 and info.value.field == "name" and "p.csv" in str(info.value)
    assert session.count("Person") == 2


def test_unknown_column_names_field_and_file(session, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["name,height", "a,3"])
    with pytest.raises(ValidationError, match="height") as info:
        ingest_file(session, "Person", path)
    assert "p.csv" in str(info.value)


def test_unknown_type(session, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["name", "a"])
    with pytest.raises(UnknownType, match="Robot"):
        ingest_file(session, "Robot", path)
    with pytest.raises(UnknownType, match="with --edges"):
        ingest_file(session, "KNOWS", path)
    with pytest.raises(UnknownType, match="without --edges"):
        ingest_file(session, "Person", path, edges=True)


# -- edges -----------------------------------------------------------------------------------------
def test_edges_csv(session, tmp_path):
    ingest_file(session, "Person", write_csv(tmp_path / "p.csv", ["name", "a", "b", "c"]))
    report = ingest_file(session, "KNOWS", write_csv(tmp_path / "k.csv", ["src,dst,since", "a,b,2001", "b,c,"]),
                         edges=True)
    assert report.rows == 2
    assert [n.key for n in session.neighbors("Person", "a", "KNOWS")] == ["b"]
    assert session.stats()["edges"]["KNOWS"] == 2
    since = session.edges("KNOWS").column("since").to_pylist()
    assert sorted(since, key=lambda v: (v is None, v)) == [2001, None]


def test_edge_missing_endpoint_names_row_in_file(session, tmp_path):
    ingest_file(session, "Person", write_csv(tmp_path / "p.csv", ["name", "a", "b"]))
    path = write_jsonl(tmp_path / "k.jsonl", [{"src": "a", "dst": "b"}, {"src": "b", "dst": "a"},
                                              {"src": "a", "dst": "zed"}])
    with pytest.raises(MissingEndpoint, match="zed") as info:
        ingest_file(session, "KNOWS", path, edges=True, batch_rows=2)
    assert info.value.row == 2 and info.value.field == "dst"
    assert session.stats()["edges"]["KNOWS"] == 2


def test_no_progress_output_when_stderr_is_not_a_tty(session, tmp_path, capsys):
    ingest_file(session, "Person", write_csv(tmp_path / "p.csv", ["name", "a"]), progress=True)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_invalid_utf8_in_labels_names_row(session, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"name": "a", "_labels": ["ok"]}\n{"name": "b", "_labels": ["\xff"]}\n')
    with pytest.raises(TypeMismatch, match="UTF-8") as info:
        ingest_file(session, "Simple", path)
    assert (info.value.row, info.value.field) == (1, "_labels")
