"""The one typed look-up behind every config file: the engine's and the lighthouse's
TOML (engine/config.py, lighthouse/config.py) and the CNI plugin's network config
(cni/conf.py). It imports nothing: the CNI plugin runs it on every container start.

Each caller wraps the problem in its own error with the file and the key, so every
message reads "<file>: <table>.<key>: expected int, got str '60'".
"""
from __future__ import annotations


def type_problem(value: object, kind: type | tuple[type, ...]) -> str | None:
    """Why `value` is not a `kind` (a type, or a tuple of types), or None when it is.
    A boolean is no number here, though Python counts it as an int."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return None
    return f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__} {value!r}"
