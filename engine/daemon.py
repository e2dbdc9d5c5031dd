"""The start of a Flatnet daemon (engine, lighthouse): read the config, set the log
level, run the asyncio driver under uvloop; a config or key problem exits 2 with a
sentence, a start-up failure (a port taken, no TUN) exits 1."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from flatnet.engine.config import ConfigError
from flatnet.engine.log import Logger
from flatnet.engine.pki import PkiError


def main(prog: str, description: str, default_config: str, load: Callable, driver: Callable,
         argv: list[str] | None = None) -> int:
    """load(path) -> config; driver(config, log) -> object with an async run()."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=default_config)
    a = p.parse_args(argv)
    log = Logger(prog.removeprefix("flatnet-"))
    try:
        config = load(a.config)
        log.set_level(config.log_level)
        log.set_format(config.log_format)
        import uvloop
        uvloop.run(driver(config, log).run())
    except (ConfigError, PkiError, ValueError) as exc:
        log.error("config_error", error=str(exc))
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("start_failed", error=str(exc))
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
