from setuptools import find_packages, setup

setup(
    name="flatnet",
    version="0.1.0",
    description="Flat, routable, encrypted IP addresses for Podman containers across hosts",
    python_requires=">=3.11",
    packages=find_packages(include=["engine*", "cni*", "lighthouse*", "flatnet_cli*"]),
    package_data={"engine.crypto": ["csrc/*.h", "csrc/*.c"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["engine/crypto/_build.py:ffibuilder"],
    install_requires=["cffi>=1.15", "pynacl", "uvloop", "pyroute2", "msgpack", "dnspython>=2.3"],
    entry_points={
        "console_scripts": [
            "flatnet=flatnet_cli.main:main",
            "flatnet-engine=engine.__main__:main",
            "flatnet-lighthouse=lighthouse.__main__:main",
            "flatnet-cni=cni.__main__:main",
        ]
    },
)
