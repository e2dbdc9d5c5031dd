import json

import pytest
from hypothesis import given, strategies as st

from cni import jsonlite

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20)


@given(values)
def test_same_as_the_json_module(value):
    text = json.dumps(value)
    assert jsonlite.loads(text) == json.loads(text)
    assert jsonlite.loads(text.encode()) == json.loads(text)
    assert json.loads(jsonlite.dumps(value)) == value


@pytest.mark.parametrize("bad", [b"", b"{", b"{} x", b"\xff\xfe", b"[1,]"])
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        jsonlite.loads(bad)
