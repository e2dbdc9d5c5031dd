"""Flatnet: the `flatnet` import namespace, and the operator's command `flatnet`
(flatnet.main).

Installed (a wheel), flatnet.engine, flatnet.cni and flatnet.lighthouse sit inside this
package. In a source checkout they stay at the repository's top level (engine/, cni/,
lighthouse/): the checkout's root is added to this package's search path, so the same
imports work from a checkout without installing it, and without any import hook (the
CNI plugin, started for every container, pays two stat calls for it).
"""
# `posix`, not `os`: posix is built in and loaded already, os is not under `python3 -IS`
# and costs the CNI plugin 1-2 ms of its warm ADD (docs/performance.md, "CNI start-up")
import posix as _posix

# The one version source: pyproject.toml reads it (tool.setuptools.dynamic), `flatnet
# --version` prints it. Bump it with a CHANGELOG.md entry.
__version__ = "0.2.0"


def _is_file(path: str) -> bool:
    try:
        return _posix.stat(path).st_mode & 0o170000 == 0o100000  # S_ISREG
    except (OSError, ValueError):
        return False


# __file__ is absolute (the import system joins a relative sys.path entry to the cwd)
_checkout = __file__.rpartition("/")[0].rpartition("/")[0]
if _is_file(_checkout + "/pyproject.toml") and _is_file(_checkout + "/engine/__init__.py"):
    __path__.append(_checkout)  # type: ignore[name-defined]  # noqa: F821
