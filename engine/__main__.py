"""flatnet-engine --config /etc/flatnet/config.toml"""
import sys

from flatnet.engine.config import load
from flatnet.engine.daemon import main as run_daemon


def _engine(config, log):  # noqa: ANN001, ANN202 - the driver imports uvloop-side modules
    from flatnet.engine.driver import Engine
    return Engine(config, log)


def main(argv: list[str] | None = None) -> int:
    return run_daemon("flatnet-engine", "Flatnet per-host daemon", "/etc/flatnet/config.toml", load, _engine, argv)


if __name__ == "__main__":
    sys.exit(main())
