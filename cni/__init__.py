"""The `flatnet` CNI plugin: veth, bridge, IPAM and routes for Podman containers.

Rules: this package is imported on every container start, so it imports only the
standard library modules it needs (no pyroute2, no msgpack): see docs/cni.md.
"""
