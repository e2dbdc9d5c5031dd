import os
import sys

from cni.skel import dispatch


def main() -> int:
    return dispatch(os.environ, sys.stdin.buffer, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
