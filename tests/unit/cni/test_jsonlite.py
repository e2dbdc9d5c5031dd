import json

import pytest
from hypothesis import given, settings, strategies as st

from flatnet.cni import jsonlite

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


@pytest.mark.parametrize("bad", [b"[" * 100000, b"[" * 100000 + b"]" * 100000,
                                 b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                 b"[" * (jsonlite.MAX_DEPTH + 1) + b"]" * (jsonlite.MAX_DEPTH + 1)],
                         ids=["open", "closed", "objects", "one-past-the-limit"])
def test_deep_nesting_is_a_value_error_not_a_recursion_error(bad):
    with pytest.raises(ValueError, match=f"nested deeper than {jsonlite.MAX_DEPTH} levels"):
        jsonlite.loads(bad)


def test_nesting_up_to_the_limit_parses():
    depth = jsonlite.MAX_DEPTH
    assert jsonlite.loads("[" * depth + "]" * depth) == json.loads("[" * depth + "]" * depth)


def test_oversized_input_is_refused_before_parsing():
    with pytest.raises(ValueError, match="larger than"):
        jsonlite.loads(b" " * jsonlite.MAX_INPUT + b"{}")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["[", "]", "{", "}", '"a":', ",", "1", '"x"', " ", "null", "\\", '"']),
                max_size=400))
def test_any_bracket_soup_parses_or_is_a_value_error(parts):
    text = "".join(parts)
    try:
        jsonlite.loads(text)
    except ValueError:
        pass


def test_a_byte_order_mark_is_allowed_and_bad_utf8_is_a_value_error():
    # as json.loads on bytes; without loading the utf-8-sig codec when there is no BOM
    assert jsonlite.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert jsonlite.loads('{"a": "\u00e9"}'.encode()) == {"a": "\u00e9"}
    with pytest.raises(ValueError):
        jsonlite.loads(b'{"a": "\xff"}')
