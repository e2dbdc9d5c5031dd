"""Thin shim: the metadata is in pyproject.toml. setup.py stays for two things that
pyproject.toml cannot say: the cffi build of the data path (cffi_modules) and the
package list, found at build time plus the two data folders mapped into flatnet_cli."""
from setuptools import find_packages, setup

# gateway-lua/ and deploy/ ship as package data of flatnet_cli (flatnet_cli/paths.py finds them)
DATA_PACKAGES = {"flatnet_cli.gateway_lua": "gateway-lua", "flatnet_cli.deploy": "deploy"}

setup(
    packages=find_packages(include=["engine", "engine.*", "cni", "lighthouse", "flatnet_cli"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    cffi_modules=["engine/crypto/_build.py:ffibuilder"],
)
