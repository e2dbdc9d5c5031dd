"""Podman for end-to-end tests: a busybox image built locally, a flatnet network of the
test's own, and cleanup of every container the test started."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

IMAGE = "localhost/flatnet-busybox:v1"  # bump when the rootfs changes
LABEL = "flatnet-test"


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ensure_image() -> str:
    """A rootfs of busybox-static with its applets linked, imported (no registry here)."""
    if podman("image", "exists", IMAGE, check=False).returncode == 0:
        return IMAGE
    busybox = shutil.which("busybox") or "/bin/busybox"
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        for d in ("bin", "www", "tmp", "etc"):
            os.makedirs(os.path.join(root, d))
        shutil.copy2(busybox, os.path.join(root, "bin", "busybox"))
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                os.symlink("busybox", os.path.join(root, "bin", applet))
        with open(os.path.join(root, "www", "index.html"), "w") as f:
            f.write("hello from a flatnet container\n")
        with open(os.path.join(root, "etc", "passwd"), "w") as f:
            f.write("root:x:0:0:root:/:/bin/sh\n")
        tar = os.path.join(tmp, "rootfs.tar")
        subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
        podman("import", "--quiet", "--change", "ENV PATH=/bin", tar, IMAGE)
    return IMAGE


class Network:
    def __init__(self, name: str, bridge: str, subnet: str, data_dir: str,
                 net_dir: str = "/etc/cni/net.d") -> None:
        self.name, self.bridge, self.subnet, self.data_dir = name, bridge, subnet, data_dir
        self.path = os.path.join(net_dir, f"{name}.conflist")
        conf = {"cniVersion": "1.0.0", "name": name,
                "plugins": [{"type": "flatnet", "bridge": bridge, "subnet": subnet, "dataDir": data_dir}]}
        with open(self.path, "w") as f:
            json.dump(conf, f)

    def ipam_entries(self) -> list[str]:
        d = os.path.join(self.data_dir, self.name)
        return sorted(n for n in os.listdir(d) if n[0].isdigit()) if os.path.isdir(d) else []

    def remove(self) -> None:
        ids = podman("ps", "-aq", "--filter", f"label={LABEL}={self.name}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "-t", "0", *ids, check=False, timeout=120)
        os.unlink(self.path)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def run(self, *args: str, detach: bool = False, name: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        argv = ["run", "--pull", "never", "--network", self.name, "--label", f"{LABEL}={self.name}"]
        if detach:
            argv.append("-d")
        else:
            argv.append("--rm")
        if name:
            argv += ["--name", name]
        return podman(*argv, *args, check=check, timeout=timeout)


def container_ip(name: str) -> str:
    out = podman("exec", name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
    return out.split("inet ")[1].split("/")[0]


HTTPD = ["sh", "-c", 'trap "exit 0" TERM; httpd -f -p 80 -h /www & wait']
