"""One structured line per event: `ts=... level=info event=handshake_done peer=host-b ...`.

Never pass key material here: values are printed as they are (tests check that no
key appears in the log).
"""
from __future__ import annotations

import sys
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Logger:
    def __init__(self, component: str, level: str = "info", stream=None) -> None:  # noqa: ANN001
        self.component = component
        self.threshold = LEVELS[level]
        self.stream = stream or sys.stderr

    def set_level(self, level: str) -> None:
        self.threshold = LEVELS[level]

    def _fmt(self, value: object) -> str:
        text = str(value)
        return '"' + text.replace('"', '\\"') + '"' if (" " in text or "=" in text or not text) else text

    def log(self, level: str, event: str, **fields: object) -> None:
        if LEVELS[level] < self.threshold:
            return
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        parts = [f"ts={ts}", f"level={level}", f"component={self.component}", f"event={event}"]
        parts += [f"{k}={self._fmt(v)}" for k, v in fields.items()]
        self.stream.write(" ".join(parts) + "\n")
        self.stream.flush()

    def debug(self, event: str, **f: object) -> None:
        self.log("debug", event, **f)

    def info(self, event: str, **f: object) -> None:
        self.log("info", event, **f)

    def warning(self, event: str, **f: object) -> None:
        self.log("warning", event, **f)

    def error(self, event: str, **f: object) -> None:
        self.log("error", event, **f)
