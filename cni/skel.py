"""CNI entry point: read CNI_* variables, dispatch a verb, print a result or error JSON.

Rules: parse and validate everything (environment, config) before any side effect;
every failure leaves as a CniError and becomes the spec's error JSON on stdout with
exit status 1. Anything else escaping a command is our bug: it is reported the same
way (code 999 would hide it; we use 5, I/O failure, and put the traceback in details).
"""
from __future__ import annotations

from flatnet.cni import jsonlite as json
import os

from flatnet.cni.conf import SUPPORTED_VERSIONS, load_netconf, parse_version
from flatnet.cni.args import validate_env
from flatnet.cni.errors import CniError, IO_FAILURE, NOT_ROOT
from flatnet.cni.result import version_result

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO, Callable, Mapping, TextIO

def _count(conf, command: str, result: str) -> None:  # noqa: ANN001
    if command in ("ADD", "DEL", "CHECK") and os.path.isdir(os.path.join(conf.data_dir, conf.name)):
        from flatnet.cni.store import record
        record(conf.data_dir, conf.name, command, result)


def dispatch(env: "Mapping[str, str]", stdin: "BinaryIO", stdout: "TextIO", stderr: "TextIO",
             commands: "Mapping[str, Callable] | None" = None) -> int:
    # one byte past the limit is enough to refuse the input (jsonlite.loads: code 6)
    data = stdin.read(json.MAX_INPUT + 1) if env.get("CNI_COMMAND") != "VERSION" or not stdin.isatty() else b""
    version = parse_version(data)
    try:
        args = validate_env(env)
        if args.command == "VERSION":
            stdout.write(json.dumps(version_result(version, SUPPORTED_VERSIONS)) + "\n")
            return 0
        conf = load_netconf(data)
        if os.geteuid() != 0:
            raise CniError(NOT_ROOT, "the flatnet CNI plugin must run as root (it needs CAP_NET_ADMIN)",
                           "run podman as root, or call the plugin with sudo")
        if commands is None:
            from flatnet.cni import commands as real
            commands = real.COMMANDS
        try:
            result = commands[args.command](args, conf)
        except CniError as err:
            _count(conf, args.command, f"error-{err.code}")
            raise
        _count(conf, args.command, "ok")
        if result is not None:
            stdout.write(json.dumps(result) + "\n")
        return 0
    except CniError as err:
        stdout.write(json.dumps(err.to_json(version)) + "\n")
        return 1
    except Exception as exc:  # our bug: still answer in the spec's format
        import traceback
        err = CniError(IO_FAILURE, f"internal error in the flatnet plugin: {exc!r}",
                       traceback.format_exc(limit=5))
        stdout.write(json.dumps(err.to_json(version)) + "\n")
        stderr.write(err.details)
        return 1
