"""The plugins' warm path, client side: hand the CNI plugin's ADD or DEL, or the netavark
plugin's setup or teardown, to the warm daemon (cni.warmd).

Why: a cold ADD imports a dozen modules (3-15 ms on a busy host) before its first
netlink call. The daemon has them imported already and runs the very same
`cni.skel.dispatch` (or `cni.netavark.dispatch`) on the request, so its answer is the answer the plugin would have
printed. The plugin stays correct without it: any failure to get an answer (no
socket, nobody listening, a daemon that will not act for this caller, no reply
within WARM_TIMEOUT) returns None and the caller does the work itself (cold path).

Imports: only `_socket` beyond what the interpreter has loaded (this runs before the
rest of the plugin is imported). The wire format is in docs/cni.md, "Warm path".
"""
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Mapping

DEFAULT_SOCKET = "/run/flatnet/cni.sock"
WARM_TIMEOUT = 2.0  # seconds for connect + request + answer; then the cold path
MAX_REQUEST = 1 << 16  # larger input goes the cold path (a runtime sends a few KiB)
MAX_REPLY = 1 << 16
MAGIC = b"FNW1"
KEYS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
COMMANDS = ("ADD", "DEL")  # the two on every container start and stop
NV_MAGIC = b"FNN1"  # a netavark plugin request
NV_VERBS = ("setup", "teardown")  # netavark's two on every container start and stop


def encode_request(env: "Mapping[str, str]", data: bytes) -> bytes:
    fields = [MAGIC] + [env.get(k, "").encode("utf-8", "surrogateescape") for k in KEYS]
    return b"\0".join(fields) + b"\0" + data


def encode_netavark_request(verb: str, netns: str, data: bytes) -> bytes:
    fields = [NV_MAGIC, verb.encode("utf-8", "surrogateescape"), netns.encode("utf-8", "surrogateescape")]
    return b"\0".join(fields) + b"\0" + data


def socket_path(data: bytes) -> str:
    """`warmSocket` of the network config ("" turns the warm path off), else the default.
    Bad JSON or a bad value: the cold path reports it in the spec's format. A config
    that cannot hold the key (no such bytes, no escapes) is not parsed here: that skips
    loading the `_json` extension (the daemon parses it anyway)."""
    if b"warmSocket" not in data and b"\\u" not in data:
        return DEFAULT_SOCKET
    raw = _loads(data)
    return _valid_path(raw.get("warmSocket", DEFAULT_SOCKET) if isinstance(raw, dict) else "")


def netavark_socket_path(data: bytes) -> str:
    """The same for the netavark plugin: the network's option `warm_socket` (netavark
    passes the network's JSON in the request: {"network": {"options": {...}}})."""
    if b"warm_socket" not in data and b"\\u" not in data:
        return DEFAULT_SOCKET
    raw = _loads(data)
    network = raw.get("network") if isinstance(raw, dict) else None
    options = network.get("options") if isinstance(network, dict) else None
    if options is None and isinstance(network, dict):
        return DEFAULT_SOCKET
    return _valid_path(options.get("warm_socket", DEFAULT_SOCKET) if isinstance(options, dict) else "")


def _loads(data: bytes) -> object:
    from flatnet.cni import jsonlite
    try:
        return jsonlite.loads(data)
    except ValueError:
        return None


def _valid_path(path: object) -> str:
    return path if isinstance(path, str) and 0 < len(path) < 108 and path.startswith("/") else ""


def environ(raw: "Mapping[bytes, bytes]") -> dict[str, str]:
    """The request's variables from posix.environ (bytes), decoded as os.environ does."""
    return {k: v.decode("utf-8", "surrogateescape") for k in KEYS if (v := raw.get(k.encode())) is not None}


def call(env: "Mapping[str, str]", data: bytes, timeout: float = WARM_TIMEOUT) -> "tuple[int, bytes, bytes] | None":
    """(exit status, stdout, stderr) from the daemon, or None: do the command here."""
    if env.get("CNI_COMMAND") not in COMMANDS or len(data) > MAX_REQUEST:
        return None
    path = socket_path(data)
    return _exchange(path, encode_request(env, data), timeout) if path else None


def call_netavark(verb: str, netns: str, data: bytes,
                  timeout: float = WARM_TIMEOUT) -> "tuple[int, bytes, bytes] | None":
    """The same for the netavark plugin's `setup NETNS` and `teardown NETNS`."""
    if verb not in NV_VERBS or not netns.startswith("/") or len(data) > MAX_REQUEST:
        return None
    path = netavark_socket_path(data)
    return _exchange(path, encode_netavark_request(verb, netns, data), timeout) if path else None


def _exchange(path: str, request: bytes, timeout: float) -> "tuple[int, bytes, bytes] | None":
    import _socket
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.send(request)
        reply = sock.recv(MAX_REPLY)
    except OSError:  # ENOENT, ECONNREFUSED, EMSGSIZE, timeout (socket.timeout is an OSError)
        return None
    finally:
        sock.close()
    return decode_reply(reply)


def decode_reply(reply: bytes) -> "tuple[int, bytes, bytes] | None":
    """b"R" + status byte + stdout + NUL + stderr; anything else (b"F": the daemon would
    not act for this caller) means the cold path."""
    if len(reply) < 2 or reply[:1] != b"R" or reply[1] > 1:
        return None
    out, sep, err = reply[2:].partition(b"\0")
    if not sep:
        return None
    return reply[1], out, err
