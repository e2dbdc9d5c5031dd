"""The one rule for service names and route hosts (docs/gateway.md, "Names").

Rules: a service name is one DNS label: 1-63 of a-z, 0-9 and '-', not starting or
ending with '-'. A host is 1-253 characters: such labels joined by '.'. Letters are
compared in lowercase, and the lowercase form is the canonical one. Names that are not
ASCII are written in punycode (xn--...), as browsers send them in the Host header.

The gateway's Lua twin is gateway-lua/lib/flatnet/names.lua; both must give exactly
the results (and reasons) of gateway-lua/spec/names_vectors.json. Remote input (the
lighthouse, the catalog, the route table) is checked with the strict functions
(name_problem, host_problem); only what an operator types goes through operator_name /
operator_host, which first convert Unicode to punycode.
"""
from __future__ import annotations

LABEL_MAX = 63
HOST_MAX = 253
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
NOT_ASCII = "not ASCII: write international names in punycode (xn--...)"
EMPTY_LABEL = "empty label (two dots, or a dot at the start or end)"


class BadName(ValueError):
    """A name or host that breaks the rule; str() is the reason."""


def _describe(c: str) -> str:
    return f"character '{c}'" if 32 < ord(c) < 127 else f"character 0x{ord(c):02x}"


def _bad_char(label: str) -> str | None:
    for c in label:
        if c not in _ALLOWED:
            return f"{_describe(c)} is not allowed (use a-z, 0-9 and '-')"
    return None


def name_problem(name: object) -> str | None:
    """None if `name` is a canonical service name, else the reason."""
    if not isinstance(name, str):
        return "not a string"
    if not name:
        return "empty"
    if not name.isascii():
        return NOT_ASCII
    name = name.lower()
    if len(name) > LABEL_MAX:
        return f"longer than {LABEL_MAX} characters"
    bad = _bad_char(name)
    if bad:
        return bad
    if name[0] == "-" or name[-1] == "-":
        return "starts or ends with '-'"
    return None


def host_problem(host: object) -> str | None:
    """None if `host` is a valid route host (any case), else the reason."""
    if not isinstance(host, str):
        return "not a string"
    if not host:
        return "empty"
    if not host.isascii():
        return NOT_ASCII
    host = host.lower()
    if len(host) > HOST_MAX:
        return f"longer than {HOST_MAX} characters"
    for label in host.split("."):
        if not label:
            return EMPTY_LABEL
        if len(label) > LABEL_MAX:
            return f"a label is longer than {LABEL_MAX} characters"
        bad = _bad_char(label)
        if bad:
            return bad
        if label[0] == "-" or label[-1] == "-":
            return "a label starts or ends with '-'"
    return None


def check_name(name: object) -> str:
    """The canonical (lowercase) name; BadName with the reason otherwise."""
    problem = name_problem(name)
    if problem:
        raise BadName(problem)
    return name.lower()  # type: ignore[union-attr]


def check_host(host: object) -> str:
    problem = host_problem(host)
    if problem:
        raise BadName(problem)
    return host.lower()  # type: ignore[union-attr]


def _punycode(text: str) -> str:
    """Unicode labels to punycode (IDNA, as browsers do); ASCII passes unchanged."""
    if text.isascii():
        return text
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        raise BadName(NOT_ASCII + f"; {text!r} cannot be converted") from None


def operator_name(raw: str) -> str:
    """A service name as an operator typed it (CLI, API, Podman label)."""
    return check_name(_punycode(raw) if raw else raw)


def operator_host(raw: str) -> str:
    if raw and all(raw.split(".")):  # the idna codec words empty labels its own way
        raw = _punycode(raw)
    return check_host(raw)
