"""TRex STL profile: data packets on established TCP flows to the ringlb VIP.

Measures the forwarding rate on the fast path: every packet is a PSH/ACK
data segment (no SYN) of a flow whose session already exists, spread over
`flows` client (IP, port) tuples so the session table is large and the
lookups miss the CPU caches the way they do in production.

Open the sessions first: run syn_flood.py with mode=inc and the same flows,
client and port tunables, then start this profile before the appliance's
`timeouts.syn` runs out. Packets of flows without a session are dropped by
ringlb (`no_session`).

Tunables (-t flows=1000000,size=64 on any TRex; newer ones also take -t --flows 1000000 --size 64):
  flows        distinct client tuples                      1000000
  size         frame size on the wire incl. FCS, 64..1518  64
  vip, vport   destination                                 198.18.100.1, 80
  client_min, client_max   client address range            198.18.0.16 .. 198.18.0.254
  port_min, port_max       client port range               1025 .. 65535
  hw_cs        1: NIC fixes IPv4+TCP checksums, 0: IPv4 only  1

Load it on the client-side port only: start -f .../established_flows.py -p 0 -m 10mpps -t ...
"""

from trex_stl_lib.api import *  # noqa: F401,F403
from ringlb_stl import COMMON, client_vm, parse_tunables, tcp_frame


class EstablishedFlows(object):
    def get_streams(self, direction=0, **kwargs):
        c = parse_tunables(dict(COMMON, size=64), kwargs)
        pkt = STLPktBuilder(pkt=tcp_frame(c, "PA", c.size), vm=client_vm(c, "inc"))
        return [STLStream(name="established", packet=pkt, mode=STLTXCont(pps=1))]


def register():
    return EstablishedFlows()
