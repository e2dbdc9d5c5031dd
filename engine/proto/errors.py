"""Two kinds of failure (as h11 separates them): what a peer sent is wrong (count, drop,
log) or our own code misused an object (a bug: raise)."""


class RemoteProtocolError(Exception):
    """The other side sent something invalid; the packet is dropped and counted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason  # a short metric label: "bad_cert", "replayed_initiation", ...


class LocalProtocolError(Exception):
    """We called a state machine in a way its rules forbid."""
