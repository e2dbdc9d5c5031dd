"""One structured line per event: `ts=... level=info event=handshake_done peer=host-b ...`,
or one JSON object per line with `format="json"`.

Values can carry what a remote sent (a certificate's name, a reason, an address), so a
value never ends a line or fakes a field: in key=value form any value with a space, `=`,
a quote, a backslash or a control character is quoted, and those characters are escaped
(`\\n`, `\\"`, `\\\\`, `\\xNN`); JSON escapes them by itself. One event is always one line.

Never pass key material here: values are printed as they are (tests check that no
key appears in the log).
"""
from __future__ import annotations

import json
import sys
import time
from typing import TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
FORMATS = ("text", "json")
_SPECIAL = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(value: object) -> str:
    """A value as it stands after `key=` in a text line: bare when that is unambiguous."""
    text = str(value)
    if text and all(c.isprintable() and c not in ' ="\\' for c in text):
        return text
    out = []
    for c in text:
        if c in _SPECIAL:
            out.append(_SPECIAL[c])
        elif not c.isprintable():
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


class Logger:
    def __init__(self, component: str, level: str = "info", stream: TextIO | None = None,
                 format: str = "text") -> None:  # noqa: A002 - the config key's name
        self.component = component
        self.threshold = LEVELS[level]
        self.stream = stream or sys.stderr
        self.set_format(format)

    def set_level(self, level: str) -> None:
        self.threshold = LEVELS[level]

    def set_format(self, format: str) -> None:  # noqa: A002
        if format not in FORMATS:
            raise ValueError(f"log format {format!r}; expected text or json")
        self.json = format == "json"

    def log(self, level: str, event: str, **fields: object) -> None:
        if LEVELS[level] < self.threshold:
            return
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        if self.json:
            record = {"ts": ts, "level": level, "component": self.component, "event": event}
            record.update({k: v if isinstance(v, (int, float, bool)) or v is None else str(v)
                           for k, v in fields.items()})
            line = json.dumps(record, ensure_ascii=False)
        else:
            parts = [f"ts={ts}", f"level={level}", f"component={self.component}", f"event={quote(event)}"]
            parts += [f"{k}={quote(v)}" for k, v in fields.items()]
            line = " ".join(parts)
        self.stream.write(line + "\n")
        self.stream.flush()

    def debug(self, event: str, **f: object) -> None:
        self.log("debug", event, **f)

    def info(self, event: str, **f: object) -> None:
        self.log("info", event, **f)

    def warning(self, event: str, **f: object) -> None:
        self.log("warning", event, **f)

    def error(self, event: str, **f: object) -> None:
        self.log("error", event, **f)
