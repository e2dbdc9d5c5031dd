"""flatnet-engine: the per-host daemon (TUN, UDP, Noise sessions, C fast path)."""
