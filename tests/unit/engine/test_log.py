"""One event is one line, whatever a remote put into a value (a certificate's name, a
reason): no forged lines, no forged fields."""
from __future__ import annotations

import io
import json
import shlex

import pytest

from flatnet.engine.log import Logger, quote


def _line(fmt: str, **fields: object) -> str:
    out = io.StringIO()
    Logger("t", stream=out, format=fmt).info("handshake_failed", **fields)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    return text


def test_newline_in_a_value_cannot_forge_a_second_event() -> None:
    text = _line("text", peer="b\nts=x level=error event=owned", reason="x")
    assert "event=owned" not in text.replace('\\nts=x level=error event=owned', "")
    fields = dict(part.split("=", 1) for part in shlex.split(text))
    assert fields["peer"] == "b\\nts=x level=error event=owned"
    assert fields["event"] == "handshake_failed" and fields["reason"] == "x"


@pytest.mark.parametrize("value", ['a b', 'k=v', 'say "hi"', 'back\\slash', 'tab\there', '\x00\x1b[31m', 'café', ''])
def test_values_quoted_and_escaped(value: str) -> None:
    text = _line("text", peer=value)
    peer = quote(value)
    assert f" peer={peer}" in text
    assert "\x00" not in text and "\x1b" not in text and "\t" not in text


def test_plain_values_stay_bare() -> None:
    assert quote("host-b") == "host-b" and quote(4787) == "4787" and quote("10.87.1.0/24") == "10.87.1.0/24"


def test_json_format_is_one_object_per_line() -> None:
    text = _line("json", peer="b\n{\"forged\": 1}", port=4787)
    record = json.loads(text)
    assert record["event"] == "handshake_failed" and record["peer"] == 'b\n{"forged": 1}' and record["port"] == 4787
    assert record["component"] == "t" and record["level"] == "info"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="expected text or json"):
        Logger("t", format="yaml")
