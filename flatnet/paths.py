"""Where the product's non-Python files are: in a checkout, the repository's folders
(gateway-lua/, deploy/); in an installed wheel, the same files as package data under
flatnet/ (pyproject.toml maps them there)."""

from __future__ import annotations

import os

PKG = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(PKG)


def data_dir(name: str) -> str:
    """The folder `name` ("gateway-lua" or "deploy"), installed copy first."""
    installed = os.path.join(PKG, name.replace("-", "_"))
    if os.path.isdir(installed):
        return installed
    return os.path.join(REPO, name)


def code_root() -> str:
    """The folder from which this interpreter imports the `flatnet` package: the venv's
    site-packages, or the checkout for a development (editable) install. Child
    processes started with it as cwd or PYTHONPATH run this same code."""
    import flatnet

    return os.path.dirname(os.path.dirname(os.path.abspath(flatnet.__file__)))


def docs_dir() -> str | None:
    """The docs/ folder of a checkout; None for an installed wheel (no docs inside)."""
    path = os.path.join(REPO, "docs")
    return path if os.path.isdir(path) else None
