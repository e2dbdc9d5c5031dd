"""JSON through the C accelerator `_json` directly.

Why: `import json` pulls in `re` (and `re` pulls in `enum`): ~9 ms of the plugin's
~25 ms start-up on this machine. `_json` holds the same C scanner and encoder that
the json module uses, so parsing and output are the json module's own.
"""
# Bounds on what the plugin parses: a runtime's config plus prevResult is a few KiB.
# Deeper or larger input is refused as a decoding failure, never a RecursionError.
MAX_INPUT = 1 << 20
MAX_DEPTH = 64

try:
    import _json
except ImportError:  # an interpreter without the accelerator: the plain module
    _json = None


class _Context:
    # the attributes json.decoder.JSONDecoder hands to the C scanner
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None
    memo: dict = {}

    def __init__(self) -> None:
        self.memo = {}
        self.parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                               "-Infinity": float("-inf")}.__getitem__


def loads(data: bytes | str) -> object:
    """Parse JSON of at most MAX_INPUT bytes and MAX_DEPTH levels; ValueError otherwise."""
    if len(data) > MAX_INPUT:
        raise ValueError(f"input of {len(data)} bytes is larger than the {MAX_INPUT} byte limit")
    if isinstance(data, (bytes, bytearray)):  # a BOM is allowed; "utf-8-sig" would load one more codec
        text = data[3:].decode() if data[:3] == b"\xef\xbb\xbf" else data.decode()
    else:
        text = data
    try:
        obj = _parse(text)
    except RecursionError:  # the parser stopped itself: deeper than the interpreter allows
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(obj)
    return obj


def _parse(text: str) -> object:
    if _json is None:
        import json
        return json.loads(text)
    scan = _json.make_scanner(_Context())
    idx = _skip_ws(text, 0)
    try:
        obj, end = scan(text, idx)
    except RecursionError:
        raise
    except Exception:  # noqa: BLE001 - bad input: let the json module word the error
        import json
        return json.loads(text)
    end = _skip_ws(text, end)
    if end != len(text):
        raise ValueError(f"Extra data at char {end}")
    return obj


def _check_depth(obj: object) -> None:
    """Walk the parsed value without recursion; refuse nesting beyond MAX_DEPTH."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _skip_ws(text: str, idx: int) -> int:
    while idx < len(text) and text[idx] in " \t\n\r":
        idx += 1
    return idx


def dumps(obj: object) -> str:
    if _json is None:
        import json
        return json.dumps(obj)
    encoder = _json.make_encoder(None, _unserializable, _json.encode_basestring_ascii, None,
                                 ": ", ", ", False, False, True)
    return "".join(encoder(obj, 0))


def _unserializable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
