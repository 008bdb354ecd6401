"""The core (and the adapters package itself) imports without the langchain and llamaindex extras; each
adapter module, imported without its extra, says which extra to install. Also the filter language's
edge cases (knowledge.adapters.filters, shared by both adapters)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from knowledge.adapters.filters import compile_filter
from knowledge.errors import InvalidArgument

BLOCK = ("import sys\n"
         "for name in ('langchain_core', 'langchain', 'langchain_tests', 'llama_index', 'llama_index.core'):\n"
         "    sys.modules[name] = None   # import raises ImportError, as when not installed\n")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


def test_core_imports_without_either_extra():
    done = _run("import knowledge, knowledge.embed, knowledge.graphrag, knowledge.adapters, "
                "knowledge.adapters.filters\n"
                "assert not any(m.startswith(('langchain', 'llama_index')) and sys.modules[m] is not None "
                "for m in sys.modules)\nprint('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize(("module", "extra"), [("langchain", "langchain"), ("llamaindex", "llamaindex")])
def test_an_adapter_without_its_extra_names_the_extra(module, extra):
    done = _run(f"import knowledge.adapters.{module}")
    assert done.returncode != 0
    assert f"pip install 'knowledge[{extra}]'" in done.stderr


def test_filter_language_edge_cases():
    assert compile_filter(None) is None and compile_filter({}) is None
    test = compile_filter({"flag": True})
    assert test({"flag": True}) and not test({"flag": 1})          # JSON keeps true apart from 1
    test = compile_filter({"n": {"$gt": 3}})
    assert test({"n": 4}) and not test({"n": "4"}) and not test({})   # a string vs a number: false, no error
    test = compile_filter({"n": {"$ne": 3}, "m": {"$nin": [1]}})
    assert test({}) and not test({"n": 3})
    assert compile_filter({"x": {"$exists": False}})({}) and not compile_filter({"x": {"$exists": True}})({})
    assert compile_filter({"x": {"$empty": True}})({"x": []}) and not compile_filter({"x": {"$empty": True}})({"x": 0})
    assert compile_filter({"x": {"$contains": "ell"}})({"x": "hello"})
    assert compile_filter({"x": {"$eq": {"a": 1}}})({"x": {"a": 1}})            # a dict without $ keys: a value
    assert compile_filter({"x": {"a": 1}})({"x": {"a": 1}})
    for bad in ({"$nor": []}, {"x": {"$in": 3}}, {"$and": []}, {"x": {"$exists": "yes"}}, {"x": {"$text": 3}},
                {"$or": "x"}, {3: 1}, {"x": {"$regex": "a"}}, ["x"]):
        with pytest.raises(InvalidArgument):
            compile_filter(bad)
