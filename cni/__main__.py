"""The plugins' entry points, kept lean: the CNI plugin (`main`) and the netavark plugin
(`netavark`). Both try the warm daemon first (cni.warm) and import the rest of the plugin
only when they do the work themselves (the cold path). Under `python3 -IS` the warm path
loads no module but the package, cni.warm and `_socket` (docs/cni.md, "Warm path")."""
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO, NoReturn


def main() -> int:
    import posix  # built in and loaded already; `os` would cost 1-2 ms here (docs/performance.md)
    stdin: "BinaryIO" = sys.stdin.buffer
    if posix.environ.get(b"CNI_COMMAND") in (b"ADD", b"DEL"):
        # the warm path first: the same answer from a process that has the plugin
        # imported already; None: do it here, from the same input
        from flatnet.cni import warm
        data = stdin.read(warm.MAX_REQUEST + 1)
        answer = warm.call(warm.environ(posix.environ), data)
        if answer is not None:
            _answer(*answer)
        stdin = _rest(data)
    import os
    from flatnet.cni.skel import dispatch
    return dispatch(os.environ, stdin, sys.stdout, sys.stderr)


def netavark() -> int:
    """`flatnet setup NETNS` and `flatnet teardown NETNS` (netavark's calls on every
    container start and stop) try the warm daemon first; create and info do not."""
    argv = sys.argv
    stdin: "BinaryIO" = sys.stdin.buffer
    if len(argv) == 3:
        from flatnet.cni import warm
        if argv[1] in warm.NV_VERBS:
            data = stdin.read(warm.MAX_REQUEST + 1)
            answer = warm.call_netavark(argv[1], argv[2], data)
            if answer is not None:
                _answer(*answer)
            stdin = _rest(data)
    from flatnet.cni.netavark import dispatch
    return dispatch(argv, stdin, sys.stdout, sys.stderr)


def _answer(status: int, out: bytes, err: bytes) -> "NoReturn":
    import posix
    sys.stdout.buffer.write(out)
    sys.stderr.buffer.write(err)
    sys.stdout.flush()
    sys.stderr.flush()
    posix._exit(status)  # nothing left to clean up: skip the interpreter's teardown (~2-3 ms)


def _rest(data: bytes) -> "BinaryIO":
    """The cold path's stdin: what the warm path read, then the rest up to the limit."""
    import io
    from flatnet.cni.jsonlite import MAX_INPUT
    return io.BytesIO(data + sys.stdin.buffer.read(max(0, MAX_INPUT + 1 - len(data))))


if __name__ == "__main__":
    sys.exit(main())
