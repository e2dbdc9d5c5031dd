"""Thin shim: the metadata is in pyproject.toml. setup.py stays for what pyproject.toml
cannot say: the cffi build of the data path (cffi_modules) and the package map.

Everything installs under one import namespace, `flatnet`: the repository's top-level
folders engine/, cni/ and lighthouse/ become flatnet.engine, flatnet.cni and
flatnet.lighthouse; flatnet/ is the namespace's root (the `flatnet` command);
gateway-lua/ and deploy/ ship as package data (flatnet/paths.py finds them)."""
from setuptools import find_packages, setup

TOP = ("engine", "cni", "lighthouse")
PACKAGE_DIR = {f"flatnet.{top}": top for top in TOP}
PACKAGE_DIR.update({"flatnet.gateway_lua": "gateway-lua", "flatnet.deploy": "deploy"})
PACKAGES = ["flatnet", "flatnet.gateway_lua", "flatnet.deploy"] + [
    f"flatnet.{p}" for p in find_packages(include=[f"{t}" for t in TOP] + [f"{t}.*" for t in TOP])]

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    cffi_modules=["engine/crypto/_build.py:ffibuilder"],
)
