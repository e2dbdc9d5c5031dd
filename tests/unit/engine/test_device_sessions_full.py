"""A device that takes handshakes from any certified node (a lighthouse: accept_any)
with a full session table (lighthouse.config `sessions`, the C data path's max_peers).
The handshake that finds no free slot is a counted drop that leaves nothing behind:
the node is not half added (a peer whose slot the data path refused, which stayed in
the table and made every later handshake of that node fail, also after slots freed)."""
import io
import ipaddress

from flatnet.engine.datapath import DataPath
from flatnet.engine.datapath_port import CTRL_RAW, ControlItem
from flatnet.engine.device import Device
from flatnet.engine.log import Logger
from tests.harness.pki import TestCA

NET = ipaddress.IPv4Network("10.87.0.0/16")


def setup(max_peers):
    ca = TestCA()
    lh_id = ca.identity("lh")
    wire = []
    out = io.StringIO()
    lh = Device(lh_id, DataPath(NET, 1420, max_peers=max_peers), lambda pkt, addr: wire.append((pkt, addr)),
                lambda: ca.now * 10**9, Logger("t", stream=out), accept_any=True, judge_paths=False)
    nodes = {}
    for i in range(1, 4):
        name = f"node-{i}"
        nid = ca.identity(name)
        d = Device(nid, DataPath(NET, 1420, max_peers=4), lambda pkt, addr: wire.append((pkt, addr)),
                   lambda: ca.now * 10**9, Logger("t", stream=io.StringIO()))
        d.add_peer(lh_id.cert, None, [("192.0.2.100", 4787)])
        nodes[name] = d
    return ca, lh, nodes, wire


def handshake(ca, lh, node, wire, i, now):
    """node handshakes with lh (a fresh initiation); True if a response came back."""
    ca.now += 1  # a later TAI64N time: a new initiation, not a replay
    wire.clear()
    node.handshake_now(node.peers["lh"], now)
    init = next(pkt for pkt, _ in wire if pkt[0] == 1)
    wire.clear()
    lh.on_control([ControlItem(CTRL_RAW, -1, init, (f"192.0.2.{i}", 4787))], now)
    return any(pkt[0] == 2 for pkt, _ in wire)


def test_a_handshake_into_a_full_session_table_is_a_counted_drop_and_leaves_nothing_behind():
    ca, lh, nodes, wire = setup(max_peers=3)  # slots 1 and 2 (slot 0 is never a peer's)
    assert handshake(ca, lh, nodes["node-1"], wire, 1, 1.0)
    assert handshake(ca, lh, nodes["node-2"], wire, 2, 1.0)
    assert not handshake(ca, lh, nodes["node-3"], wire, 3, 1.0)  # no slot left: no traceback
    assert lh.errors["sessions_full"] == 1
    assert "node-3" not in lh.peers and len(lh.by_slot) == 2
    lh.remove_peer("node-1")  # e.g. it went offline (the lighthouse's registry expired it)
    assert handshake(ca, lh, nodes["node-3"], wire, 3, 2.0)  # now it gets in
    assert lh.peers["node-3"].slot == 1
