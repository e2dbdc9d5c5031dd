"""The operator's command `flatnet` (see flatnet_cli.main)."""

# The one version source: pyproject.toml reads it (tool.setuptools.dynamic), `flatnet
# --version` prints it. Bump it with a CHANGELOG.md entry.
__version__ = "0.2.0"
