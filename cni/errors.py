"""CNI error codes and the one exception type the plugin raises to its caller.

Codes 1-11 and 50-51 are the CNI spec's; 100 and up are Flatnet's own and are
listed in docs/troubleshooting.md with their fixes.
"""
from __future__ import annotations

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50

NOT_ROOT = 100
SUBNET_EXHAUSTED = 101
BRIDGE_CONFLICT = 102
VETH_FAILURE = 103
NO_LEASE = 104
NETLINK_FAILURE = 105
CHECK_FAILED = 106
IP_CONFLICT = 107


class CniError(Exception):
    """An error reported to the runtime as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
