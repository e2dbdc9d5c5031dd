"""A Debian 13 sandbox with Podman 5 and netavark, for the netavark plugin's e2e tests.

The host runs Podman 4.3 (Debian 12). Podman 5 is only in Debian 13, so the tests build
a Debian 13 root filesystem with debootstrap once, cache it under CACHE_DIR with a
version stamp, and run it in a private mount + network namespace: an overlay on the
cached root (so runs never change the cache), tmpfs for /run, /tmp and Podman's storage,
and the worktree at /opt/flatnet/src through an overlay too (the sandbox's Python 3.13
writes its bytecode there, never into the worktree). Nothing of the host's Podman,
its bridges or its firewall is touched (docs/podman5.md, ../shared/PODMAN-NOTES.md).

Needs on the host: debootstrap, unshare/nsenter (util-linux), and Debian's package
mirror during the first build only.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("podman", "netavark", "aardvark-dns", "runc", "conmon", "catatonit", "iptables",
            "nftables", "uidmap", "busybox-static", "python3", "python3-venv", "iproute2")
# bump when the build steps change: a cached root with another stamp is rebuilt
VERSION = "1"
STAMP = f"flatnet-sandbox {VERSION} {SUITE} {' '.join(PACKAGES)}"
CACHE_DIR = os.environ.get("FLATNET_SANDBOX_CACHE", "/var/cache/flatnet-test")
SRC = "/opt/flatnet/src"          # the worktree (through an overlay) inside the sandbox
VENV = "/opt/flatnet/venv"        # made at build time from the sandbox's own python3
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "PODMAN_IGNORE_CGROUPSV1_WARNING": "1", "HOME": "/root", "LANG": "C.UTF-8"}
CONTAINERS_CONF = """\
# flatnet test sandbox: crun fails on this host's hybrid cgroups; rlimits must stay
# within the host's hard limits (no CAP_SYS_RESOURCE)
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""


def root_dir() -> str:
    return os.path.join(CACHE_DIR, "debian13-podman5")


def _run(argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    return proc


def ensure_rootfs() -> str:
    """The cached root filesystem, built first if missing or of another stamp. Builds in a
    temporary directory and renames it into place, under a lock: an interrupted build never
    leaves a half root that looks finished."""
    root = root_dir()
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(os.path.join(root, "flatnet-stamp")) as f:
                if f.read().strip() == STAMP:
                    return root
        except OSError:
            pass
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is missing: apt-get install debootstrap")
        build = tempfile.mkdtemp(prefix="build-", dir=CACHE_DIR)
        try:
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, build,
                  MIRROR], timeout=1800)
            _run(["chroot", build, "python3", "-m", "venv", VENV], timeout=300, env=ENV)
            with open(os.path.join(build, "opt/flatnet/venv/lib", _pydir(build), "site-packages",
                                   "flatnet-src.pth"), "w") as f:
                f.write(SRC + "\n")
            os.makedirs(os.path.join(build, SRC.lstrip("/")), exist_ok=True)
            os.makedirs(os.path.join(build, "var/lib/containers"), exist_ok=True)
            conf_d = os.path.join(build, "etc/containers/containers.conf.d")
            os.makedirs(conf_d, exist_ok=True)
            with open(os.path.join(conf_d, "50-flatnet-test.conf"), "w") as f:
                f.write(CONTAINERS_CONF)
            _run(["chroot", build, "apt-get", "clean"], timeout=120, env=ENV)
            with open(os.path.join(build, "flatnet-stamp"), "w") as f:
                f.write(STAMP + "\n")
            if os.path.exists(root):
                shutil.rmtree(root)
            os.rename(build, root)
        finally:
            if os.path.exists(build):
                shutil.rmtree(build, ignore_errors=True)
    return root


def _pydir(root: str) -> str:
    names = [n for n in os.listdir(os.path.join(root, "opt/flatnet/venv/lib")) if n.startswith("python3")]
    return names[0]


class Sandbox:
    """One running sandbox: a holder process owns the private mount + network namespaces;
    every command enters them with nsenter and chroots into the overlay."""

    def __init__(self, worktree: str, lifetime: float = 1800, netns: str | None = None,
                 binds: tuple[tuple[str, str], ...] = ()) -> None:
        """netns: run in that named network namespace (a lab host's: the sandbox is then
        that Flatnet host) instead of a new one; binds: (host dir, path inside) pairs."""
        self.root = ensure_rootfs()
        self.work = tempfile.mkdtemp(prefix="flatnet-sbx-", dir="/var/tmp")
        self.merged = os.path.join(self.work, "merged")
        for d in ("upper", "ovl-work", "merged", "src-upper", "src-work"):
            os.makedirs(os.path.join(self.work, d))
        # bounded lifetime: a crashed test run cannot leave the holder forever
        holder = ["unshare", "-m", "-n", "--propagation", "private", "sleep", str(int(lifetime))]
        if netns is not None:
            holder = ["nsenter", f"--net=/run/netns/{netns}"] + holder
            holder.remove("-n")
        self.holder = subprocess.Popen(holder)
        self.pid = self.holder.pid
        try:
            self._wait_for_namespaces()
            m = self.merged
            script = f"""set -e
mount -t overlay overlay -o lowerdir={self.root},upperdir={self.work}/upper,workdir={self.work}/ovl-work {m}
mount -t proc proc {m}/proc
mount -t sysfs sysfs {m}/sys
mount --rbind /sys/fs/cgroup {m}/sys/fs/cgroup
mount --rbind /dev {m}/dev
for d in run tmp var/lib/containers; do mount -t tmpfs tmpfs {m}/$d; done
mount -t overlay overlay -o lowerdir={worktree},upperdir={self.work}/src-upper,workdir={self.work}/src-work {m}{SRC}
ip link set lo up
""" + "".join(f"mkdir -p {m}{inside} && mount --bind {outside} {m}{inside}\n" for outside, inside in binds)
            self.host_sh(script)
        except BaseException:
            self.close()
            raise

    def _wait_for_namespaces(self) -> None:
        own = os.readlink("/proc/self/ns/mnt")
        for _ in range(200):
            try:
                if os.readlink(f"/proc/{self.pid}/ns/mnt") != own:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("the sandbox holder did not enter its namespaces")

    def host_sh(self, script: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """A shell of the host's binaries in the sandbox's namespaces (outside the chroot)."""
        proc = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"sandbox host command failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def argv(self, *cmd: str) -> list[str]:
        env = [f"{k}={v}" for k, v in ENV.items()]
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "chroot", self.merged, "/usr/bin/env", "-i",
                *env, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def podman(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run("podman", *args, check=check, timeout=timeout)

    def path(self, inside: str) -> str:
        """A path inside the sandbox as the host sees it (through the overlay's merged dir is
        only visible in the sandbox's mount namespace, so read files with `run cat`)."""
        return os.path.join(self.merged, inside.lstrip("/"))

    def read(self, inside: str) -> str:
        return self.run("cat", inside).stdout

    def write(self, inside: str, text: str) -> None:
        self.run("sh", "-c", f"mkdir -p \"$(dirname {inside})\" && cat > {inside}", input=text)

    def _processes(self) -> list[int]:
        """Processes in the sandbox's mount namespace (containers, conmon, the holder)."""
        try:
            ns = os.readlink(f"/proc/{self.pid}/ns/mnt")
        except OSError:
            return []
        pids = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != self.pid:
                try:
                    if os.readlink(f"/proc/{name}/ns/mnt") == ns:
                        pids.append(int(name))
                except OSError:
                    pass
        return pids

    def close(self) -> None:
        if self.holder.poll() is None:
            try:
                self.podman("rm", "-af", "-t", "0", check=False, timeout=120)
            except (subprocess.TimeoutExpired, OSError):
                pass
            for pid in self._processes():  # what podman rm left (conmon, stuck containers)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.holder.kill()
            self.holder.wait(timeout=10)
        # the mounts lived only in the holder's namespace: they are gone with it
        shutil.rmtree(self.work, ignore_errors=True)


# ---- Flatnet inside the sandbox
IMAGE = "localhost/flatnet-busybox:v1"
PYTHON = f"{VENV}/bin/python3"


def import_busybox(sb: Sandbox) -> str:
    """The busybox image of tests/harness/podman.py, built from the sandbox's busybox-static."""
    sb.run("sh", "-c", "set -e; r=/tmp/bbroot; mkdir -p $r/bin $r/www $r/etc; cp /bin/busybox $r/bin/; "
           "for a in $(/bin/busybox --list); do [ $a = busybox ] || ln -sf busybox $r/bin/$a; done; "
           "echo 'hello from a flatnet container' > $r/www/index.html; "
           "echo 'root:x:0:0:root:/:/bin/sh' > $r/etc/passwd; tar -C $r -cf /tmp/bb.tar .")
    sb.podman("import", "--quiet", "--change", "ENV PATH=/bin", "/tmp/bb.tar", IMAGE)
    return IMAGE


def lease_json(subnet: str, dns: bool = False) -> str:
    """A lease file as the engine writes it; dns: as while it serves names on the gateway."""
    gateway = subnet.rsplit(".", 1)[0] + ".1"
    lease: dict = {"subnet": subnet, "gateway": gateway}
    if dns:
        lease["dns"] = {"nameservers": [gateway], "search": ["flatnet"]}
    return json.dumps(lease)


def install_flatnet(sb: Sandbox, lease_subnet: str, dns: bool = False) -> str:
    """Stand in for the engine (its lease file; dns: as while it serves names), then run
    the installer as install.sh does."""
    sb.write("/run/flatnet/lease.json", lease_json(lease_subnet, dns))
    return sb.run(PYTHON, "-m", "flatnet.cni.install_netavark", "--root", "/", "--python", PYTHON,
                  "--repo", SRC).stdout


def resolv_conf(text: str) -> tuple[list[str], list[str]]:
    """(nameservers, search domains) of a resolv.conf, in order."""
    servers, search = [], []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words and words[0] == "search":
            search += words[1:]
    return servers, search
