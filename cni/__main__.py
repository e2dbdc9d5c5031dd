import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO


def main() -> int:
    env = os.environ
    stdin: "BinaryIO"
    if env.get("CNI_COMMAND") in ("ADD", "DEL"):
        # the warm path first (cni.warm): the same answer from a process that has the
        # plugin imported already; None: do it here, from the same input
        from flatnet.cni import warm
        data = sys.stdin.buffer.read(warm.MAX_REQUEST + 1)
        answer = warm.call(env, data)
        if answer is not None:
            status, out, err = answer
            sys.stdout.buffer.write(out)
            sys.stderr.buffer.write(err)
            return status
        import io
        from flatnet.cni.jsonlite import MAX_INPUT
        stdin = io.BytesIO(data + sys.stdin.buffer.read(max(0, MAX_INPUT + 1 - len(data))))
    else:
        stdin = sys.stdin.buffer
    from flatnet.cni.skel import dispatch
    return dispatch(env, stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
