import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO


def main() -> int:
    import posix  # built in and loaded already; `os` would cost 1-2 ms here (docs/cni.md)
    stdin: "BinaryIO"
    if posix.environ.get(b"CNI_COMMAND") in (b"ADD", b"DEL"):
        # the warm path first (cni.warm): the same answer from a process that has the
        # plugin imported already; None: do it here, from the same input
        from flatnet.cni import warm
        data = sys.stdin.buffer.read(warm.MAX_REQUEST + 1)
        answer = warm.call(warm.environ(posix.environ), data)
        if answer is not None:
            status, out, err = answer
            sys.stdout.buffer.write(out)
            sys.stderr.buffer.write(err)
            sys.stdout.flush()
            sys.stderr.flush()
            posix._exit(status)  # nothing left to clean up: skip the interpreter's teardown
        import io
        from flatnet.cni.jsonlite import MAX_INPUT
        stdin = io.BytesIO(data + sys.stdin.buffer.read(max(0, MAX_INPUT + 1 - len(data))))
    else:
        stdin = sys.stdin.buffer
    import os
    from flatnet.cni.skel import dispatch
    return dispatch(os.environ, stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
