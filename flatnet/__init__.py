"""Flatnet: the `flatnet` import namespace, and the operator's command `flatnet`
(flatnet.main).

Installed (a wheel), flatnet.engine, flatnet.cni and flatnet.lighthouse sit inside this
package. In a source checkout they stay at the repository's top level (engine/, cni/,
lighthouse/): the checkout's root is added to this package's search path, so the same
imports work from a checkout without installing it, and without any import hook (the
CNI plugin, started for every container, pays two stat calls for it).
"""
import os as _os

# The one version source: pyproject.toml reads it (tool.setuptools.dynamic), `flatnet
# --version` prints it. Bump it with a CHANGELOG.md entry.
__version__ = "0.2.0"

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and \
        _os.path.isfile(_os.path.join(_checkout, "engine", "__init__.py")):
    __path__.append(_checkout)  # type: ignore[name-defined]  # noqa: F821
