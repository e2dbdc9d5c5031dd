"""flatnet-lighthouse --config /etc/flatnet/lighthouse.toml"""
from __future__ import annotations

import argparse
import sys

from engine.config import ConfigError
from engine.log import Logger
from engine.pki import PkiError
from lighthouse.config import load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flatnet-lighthouse", description="Flatnet lighthouse")
    p.add_argument("--config", default="/etc/flatnet/lighthouse.toml")
    a = p.parse_args(argv)
    log = Logger("lighthouse")
    try:
        config = load(a.config)
        log.set_level(config.log_level)
        import uvloop
        from lighthouse.server import Lighthouse
        uvloop.run(Lighthouse(config, log).run())
    except (ConfigError, PkiError, ValueError) as exc:
        print(f"flatnet-lighthouse: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"flatnet-lighthouse: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
