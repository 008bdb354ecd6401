"""Dict rows, Arrow tables and pandas DataFrames are validated alike (issue 11, point 7).

For every input the three forms either all raise the same `TypeMismatch` (same type, row and field)
or all store the same values. Nothing is coerced on one path that another rejects: an int column
into a `str` key does not become '100', a float 1.0 into `bool` does not become True.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import knowledge
from knowledge.errors import TypeMismatch, ValidationError

PROPERTIES = {"s": "str", "t": "text", "i": "int", "f": "float", "b": "bool", "ts": "timestamp",
              "ls": "list[str]", "v": "vector[2]"}
SMALL_ROWS_MAX = 64  # dict batches up to this size take the store's Python path; pad past it for the other
FILLER_ROWS = SMALL_ROWS_MAX + 1
FORMS = ("dicts", "dicts_large", "arrow", "pandas")
_counter = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = knowledge.open(str(tmp_path_factory.mktemp("coercion") / "s.store"))
    store.define_node_type("T", key="k", properties=PROPERTIES)
    store.define_node_type("N", key="n", properties={"n": "int", "s": "str"})
    yield store
    store.close()


# -- how each form is built from the same Python values ------------------------------------------------
def _frame_column(values: list) -> pd.Series:
    """The pandas column a user would have for `values`: its natural dtype, or object when it holds None
    (pandas would otherwise turn ints with None into floats with NaN: different data, not the same input)."""
    if any(v is None for v in values) or any(isinstance(v, list) for v in values):
        return pd.Series(values, dtype=object)
    return pd.Series(values)


def build(form: str, rows: list[dict], names: list[str]):
    if form == "dicts":
        return rows
    if form == "dicts_large":
        return rows + [{"k": f"filler-{next(_counter)}"} for _ in range(FILLER_ROWS)]
    columns = {name: [row.get(name) for row in rows] for name in names}
    if form == "arrow":
        return pa.table({name: pa.array(values) for name, values in columns.items()})
    return pd.DataFrame({name: _frame_column(values) for name, values in columns.items()})


def outcome(store, type_name: str, rows_of, names: list[str], form: str, key: str):
    """("error", class, type, row, field) or ("ok", stored rows without _id and key)."""
    rows = rows_of(form)
    session = store.session()
    tx = session.transaction()
    try:
        tx.upsert_nodes(type_name, build(form, rows, names))
        tx.commit()
    except ValidationError as exc:
        return ("error", type(exc).__name__, exc.type_name, exc.row, exc.field)
    keys = [row[key] for row in rows]
    table = session.get_many(type_name, keys)
    by_key = {row[key]: row for row in table.to_pylist()}
    with session.transaction() as cleanup:
        cleanup.delete_nodes(type_name, keys)
    stored = []
    for k in keys:
        row = dict(by_key[k])
        row.pop("_id")
        row.pop(key)
        stored.append(row)
    return ("ok", stored)


# -- value strategies: one Python kind per column, None sprinkled in --------------------------------------
UTC = dt.UTC
_datetimes_naive = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1))
_iso = _datetimes_naive.map(lambda d: d.isoformat())
KINDS = {
    "int": st.integers(-(2 ** 40), 2 ** 40) | st.sampled_from([0, 1, 100]),
    "float": st.sampled_from([0.0, 1.0, -2.0, 100.0]) | st.floats(-1e9, 1e9, allow_nan=False),
    "bool": st.booleans(),
    "str": st.sampled_from(["100", "1.5", "true", "x", "", "2024-01-02T03:04:05"]) | _iso | st.text(max_size=6),
    "datetime": _datetimes_naive,
    "datetime_utc": _datetimes_naive.map(lambda d: d.replace(tzinfo=UTC)),
    "list_str": st.lists(st.sampled_from(["a", "b", "1"]), max_size=3),
    "list_float": st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=3),
}
# which value kinds each property type takes (the dict path's rules: no coercion between kinds)
ACCEPTS = {"str": {"str"}, "text": {"str"}, "int": {"int"}, "float": {"int", "float"}, "bool": {"bool"},
           "timestamp": {"datetime", "datetime_utc", "str"}, "list[str]": {"list_str"},
           "vector[2]": {"list_float"}}


@st.composite
def column_values(draw, rows: int):
    kind = draw(st.sampled_from(sorted(KINDS)))
    values = [draw(st.none() | KINDS[kind]) if draw(st.booleans()) else draw(KINDS[kind]) for _ in range(rows)]
    return kind, values


@st.composite
def batches(draw):
    rows = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from(sorted(PROPERTIES)), min_size=1, max_size=3, unique=True))
    columns = {name: draw(column_values(rows)) for name in names}
    return rows, columns


def _accepted_kind(prop_type: str, kind: str, values: list) -> bool:
    if all(v is None for v in values):
        return True
    if kind not in ACCEPTS[prop_type]:
        return False
    if prop_type == "vector[2]":
        return all(v is None or len(v) == 2 for v in values)
    if prop_type == "timestamp" and kind == "str":
        return all(v is None or _parses(v) for v in values)
    return True


def _parses(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(batch=batches())
def test_three_forms_agree(store, batch):
    rows_count, columns = batch
    names = ["k", *columns]
    example = next(_counter)

    def rows_of(form: str) -> list[dict]:
        return [{"k": f"{form}-{example}-{r}", **{name: values[r] for name, (_, values) in columns.items()}}
                for r in range(rows_count)]

    results = {form: outcome(store, "T", rows_of, names, form, "k") for form in FORMS}
    assert len({repr(r) for r in results.values()}) == 1, results
    expected_ok = all(_accepted_kind(PROPERTIES[name], kind, values) for name, (kind, values) in columns.items())
    if expected_ok:
        assert results["dicts"][0] == "ok", (columns, results["dicts"])
    else:
        assert results["dicts"][:2] == ("error", "TypeMismatch"), (columns, results["dicts"])
        wrong = next(name for name in PROPERTIES if name in columns
                     and not _accepted_kind(PROPERTIES[name], *columns[name]))
        kind, values = columns[wrong]
        assert results["dicts"][2:] == ("T", _first_rejected_row(PROPERTIES[wrong], kind, values), wrong)


def _first_rejected_row(prop_type: str, kind: str, values: list) -> int:
    for row, value in enumerate(values):
        if value is not None and not _accepted_kind(prop_type, kind, [value]):
            return row
    raise AssertionError("no rejected row")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind_values=column_values(rows=3), key_kind=st.sampled_from(["int", "str", "float", "bool"]))
def test_keys_agree(store, kind_values, key_kind):
    """Keys follow the same rules: an int key type takes ints only, a str key strs only."""
    kind, values = kind_values
    example = next(_counter)
    base = {"int": lambda r: example * 10 + r, "str": lambda r: f"key-{example}-{r}",
            "float": lambda r: float(example * 10 + r), "bool": lambda r: bool(r % 2)}[key_kind]

    def rows_of(form: str) -> list[dict]:
        return [{"n": base(r), "s": values[r] if kind == "str" else None} for r in range(3)]

    results = {form: outcome(store, "N", rows_of, ["n", "s"], form, "n")
               for form in ("dicts", "arrow", "pandas")}
    assert len({repr(r) for r in results.values()}) == 1, results
    if key_kind == "int":
        assert results["dicts"][0] == "ok"
    else:
        assert results["dicts"] == ("error", "TypeMismatch", "N", 0, "n")


@st.composite
def mixed_column(draw):
    """A column mixing Python kinds (only dicts and object-dtype pandas can hold it; Arrow cannot)."""
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=2, max_size=4))
    return [draw(KINDS[kind]) for kind in kinds]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(PROPERTIES)), values=mixed_column())
def test_mixed_object_columns_agree(store, name, values):
    """A pandas object column of mixed kinds is judged value by value, like dict rows, never a raw Arrow error."""
    example = next(_counter)

    def rows_of(form: str) -> list[dict]:
        return [{"k": f"{form}-{example}-{r}", name: value} for r, value in enumerate(values)]

    def pandas_outcome():
        rows = rows_of("pandas")
        frame = pd.DataFrame({"k": [r["k"] for r in rows], name: pd.Series(values, dtype=object)})
        try:
            store.session().transaction().upsert_nodes("T", frame)
        except ValidationError as exc:
            return ("error", type(exc).__name__, exc.type_name, exc.row, exc.field)
        return None

    dicts = outcome(store, "T", rows_of, ["k", name], "dicts", "k")
    got = pandas_outcome()
    if dicts[0] == "error":
        assert got == dicts
    else:
        assert got is None


# -- the cases the issue names ----------------------------------------------------------------------------
def _mismatch(store, type_name: str, rows) -> TypeMismatch:
    with pytest.raises(TypeMismatch) as info:
        store.session().transaction().upsert_nodes(type_name, rows)
    return info.value


@pytest.mark.parametrize("form", ["dicts", "arrow", "pandas"])
def test_int_column_into_str_key_is_rejected(store, form):
    rows = {"dicts": [{"k": "a"}, {"k": 100}], "arrow": pa.table({"k": pa.array([None, 100])}),
            "pandas": pd.DataFrame({"k": [5, 100]})}[form]
    error = _mismatch(store, "T", rows)
    assert (error.type_name, error.field) == ("T", "k")
    assert error.row == (0 if form == "pandas" else 1)
    assert "expected str, got int" in str(error)
    assert store.session().get_many("T", ["100", "5"]).num_rows == 0


@pytest.mark.parametrize("form", ["dicts", "arrow", "pandas"])
@pytest.mark.parametrize(("prop", "value"), [("b", 1.0), ("b", 1), ("i", 1.0), ("i", True), ("f", True),
                                             ("s", 1.5), ("s", True), ("ts", 5), ("ls", "ab")])
def test_no_cross_kind_coercion(store, form, prop, value):
    rows = [{"k": "coerce-0", prop: None}, {"k": "coerce-1", prop: value}]
    built = {"dicts": rows, "arrow": pa.table({"k": ["coerce-0", "coerce-1"], prop: pa.array([None, value])}),
             "pandas": pd.DataFrame({"k": ["coerce-0", "coerce-1"], prop: pd.Series([None, value], dtype=object)})}
    error = _mismatch(store, "T", built[form])
    assert (type(error), error.type_name, error.row, error.field) == (TypeMismatch, "T", 1, prop)
    assert store.session().get_many("T", ["coerce-0", "coerce-1"]).num_rows == 0


def test_pandas_float_into_bool_natural_dtype(store):
    error = _mismatch(store, "T", pd.DataFrame({"k": ["a", "b"], "b": [0.0, 1.0]}))
    assert (error.type_name, error.row, error.field) == ("T", 0, "b")


def test_arrow_labels_of_ints_are_rejected(store):
    dicts = _mismatch(store, "T", [{"k": "a", "_labels": [1]}])
    arrow = _mismatch(store, "T", pa.table({"k": ["a"], "_labels": pa.array([[1]])}))
    assert (arrow.type_name, arrow.row, arrow.field) == (dicts.type_name, dicts.row, dicts.field) == ("T", 0, "_labels")


def test_arrow_vector_of_wrong_length_names_the_row(store):
    rows = [{"k": "a", "v": [1.0, 2.0]}, {"k": "b", "v": [1.0, 2.0, 3.0]}]
    dicts = _mismatch(store, "T", rows)
    arrow = _mismatch(store, "T", pa.table({"k": ["a", "b"], "v": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]])}))
    assert (arrow.type_name, arrow.row, arrow.field) == (dicts.type_name, dicts.row, dicts.field) == ("T", 1, "v")


def test_vector_of_numeric_strings_is_rejected(store):
    for rows in ([{"k": "a", "v": ["1.5", "2"]}],
                 pa.table({"k": ["a"], "v": pa.array([["1.5", "2"]])})):
        error = _mismatch(store, "T", rows)
        assert (error.row, error.field) == (0, "v")


@pytest.mark.parametrize(("prop", "values", "row"), [("f", [0.0, False], 1), ("i", [1, 2.5], 1), ("s", ["a", 1], 1)])
def test_pandas_object_column_mixing_kinds_is_judged_per_value(store, prop, values, row):
    """Arrow's pandas conversion would make [0.0, False] two doubles; such a column is judged value by value."""
    frame = pd.DataFrame({"k": [f"mixed-{i}" for i in range(len(values))], prop: pd.Series(values, dtype=object)})
    error = _mismatch(store, "T", frame)
    assert (error.type_name, error.row, error.field) == ("T", row, prop)
