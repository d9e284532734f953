"""TRex STL profile: IMIX TCP data on established flows to the ringlb VIP.

Measures forwarding with a realistic size mix: frames of 64, 594 and 1518
bytes (on the wire, incl. FCS) in a 7:4:1 packet ratio, 362 bytes on
average, all PSH/ACK data segments over `flows` client tuples. At 10 Gb/s
line rate this is about 3.3 Mpps; -m sets the total rate and TRex keeps the
ratio.

Each size is its own stream walking the same tuples, so open the sessions
first exactly as for established_flows.py: syn_flood.py with mode=inc and
the same flows/client/port tunables.

Tunables (-t flows=1000000 on any TRex; newer ones also take -t --flows 1000000):
  flows        distinct client tuples                      1000000
  vip, vport   destination                                 198.18.100.1, 80
  client_min, client_max   client address range            198.18.0.16 .. 198.18.0.254
  port_min, port_max       client port range               1025 .. 65535
  hw_cs        1: NIC fixes IPv4+TCP checksums, 0: IPv4 only  1

Load it on the client-side port only: start -f .../imix.py -p 0 -m 3mpps -t ...
"""

from trex_stl_lib.api import *  # noqa: F401,F403
from ringlb_stl import COMMON, client_vm, parse_tunables, tcp_frame

# (frame size incl. FCS, share of packets)
IMIX = [(64, 7), (594, 4), (1518, 1)]


class Imix(object):
    def get_streams(self, direction=0, **kwargs):
        c = parse_tunables(COMMON, kwargs)
        return [
            STLStream(name="imix_%d" % size,
                      packet=STLPktBuilder(pkt=tcp_frame(c, "PA", size), vm=client_vm(c, "inc")),
                      mode=STLTXCont(pps=share))
            for size, share in IMIX
        ]


def register():
    return Imix()
