"""The CNI_* environment of one plugin call, checked before anything else: which verb,
which container, which interface. Shared by the dispatcher (cni.skel) and the commands
(cni.commands), so neither imports the other's module for it."""
from __future__ import annotations

from flatnet.cni.errors import CniError, INVALID_ENV

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Mapping

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# which variables each verb needs (CNI spec, "Parameters")
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}


class CmdArgs:
    def __init__(self, env: "Mapping[str, str]") -> None:
        self.command = env.get("CNI_COMMAND", "")
        self.container_id = env.get("CNI_CONTAINERID", "")
        self.netns = env.get("CNI_NETNS", "")
        self.ifname = env.get("CNI_IFNAME", "")
        self.args = env.get("CNI_ARGS", "")
        self.path = env.get("CNI_PATH", "")


def valid_container_id(cid: str) -> bool:
    return cid[:1].isalnum() and cid.isascii() and all(c in _ID_CHARS for c in cid)


def validate_env(env: "Mapping[str, str]") -> CmdArgs:
    args = CmdArgs(env)
    if args.command not in REQUIRED:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {args.command!r}; expected one of "
                       + ", ".join(REQUIRED))
    missing = [name for name in REQUIRED[args.command] if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENV, f"{args.command} needs environment variable(s) {', '.join(missing)}")
    if args.container_id and not valid_container_id(args.container_id):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {args.container_id!r} must start with a letter or "
                       "digit and hold only letters, digits, '_', '.' and '-'")
    if args.ifname and (len(args.ifname) > 15 or args.ifname in (".", "..")
                        or any(c in args.ifname for c in "/: \t\n")):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {args.ifname!r} is not a valid interface name")
    return args
