"""The one rule for service names and hosts: the Python side against the shared
vectors (the Lua side runs the same file in gateway-lua/spec/names_spec.lua)."""
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from flatnet.engine.proto import names

VECTORS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "gateway-lua", "spec", "names_vectors.json")
DOC = json.load(open(VECTORS, encoding="utf-8"))


@pytest.mark.parametrize("v", DOC["canonical"], ids=lambda v: f"{v['kind']}:{v['input'][:20]!r}")
def test_canonical_vectors(v):
    problem = (names.name_problem if v["kind"] == "name" else names.host_problem)(v["input"])
    if "ok" in v:
        assert problem is None
        assert (names.check_name if v["kind"] == "name" else names.check_host)(v["input"]) == v["ok"]
    else:
        assert problem == v["reason"]


@pytest.mark.parametrize("v", DOC["operator"], ids=lambda v: f"{v['kind']}:{v['input']!r}")
def test_operator_vectors(v):
    fn = names.operator_name if v["kind"] == "name" else names.operator_host
    if "ok" in v:
        assert fn(v["input"]) == v["ok"]
    else:
        with pytest.raises(names.BadName) as exc:
            fn(v["input"])
        assert str(exc.value) == v["reason"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_accepted_canonical_or_refused_with_a_reason(text):
    for problem, check in ((names.name_problem, names.check_name), (names.host_problem, names.check_host)):
        reason = problem(text)
        if reason is None:
            out = check(text)
            assert out.isascii() and out == out.lower() and problem(out) is None
        else:
            assert isinstance(reason, str) and reason
    try:
        out = names.operator_host(text)
    except names.BadName:
        return
    assert names.host_problem(out) is None
