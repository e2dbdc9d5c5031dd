"""flatnet-engine --config /etc/flatnet/config.toml"""
from __future__ import annotations

import argparse
import sys

from engine.config import ConfigError, load
from engine.log import Logger
from engine.pki import PkiError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flatnet-engine", description="Flatnet per-host daemon")
    p.add_argument("--config", default="/etc/flatnet/config.toml")
    a = p.parse_args(argv)
    log = Logger("engine")
    try:
        config = load(a.config)
        log.set_level(config.log_level)
        import uvloop
        from engine.driver import Engine
        uvloop.run(Engine(config, log).run())
    except (ConfigError, PkiError) as exc:
        log.error("config_error", error=str(exc))
        print(f"flatnet-engine: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("start_failed", error=str(exc))
        print(f"flatnet-engine: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
