"""flatnet-lighthouse --config /etc/flatnet/lighthouse.toml"""
import sys

from flatnet.engine.daemon import main as run_daemon
from flatnet.lighthouse.config import load


def _lighthouse(config, log):  # noqa: ANN001, ANN202
    from flatnet.lighthouse.server import Lighthouse
    return Lighthouse(config, log)


def main(argv: list[str] | None = None) -> int:
    return run_daemon("flatnet-lighthouse", "Flatnet lighthouse", "/etc/flatnet/lighthouse.toml", load, _lighthouse,
                      argv)


if __name__ == "__main__":
    sys.exit(main())
