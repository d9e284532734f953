"""TRex STL profile: TCP SYNs to the ringlb VIP, one per client tuple.

Measures the new-connection rate (ringlb's `new_per_s` and `created`) and
what the session table does when it fills up: once `active` reaches
`sessions.capacity` ringlb reclaims idle entries once, then drops new flows
(`table_full` in the summary printed at SIGINT).

Also the warm-up for established_flows.py and imix.py: with mode=inc and
the same flows/client/port tunables it opens exactly their sessions. Send
each tuple at least once, e.g. -m 1mpps -d 2 for flows=1000000, and check
that ringlb's `active` reached `flows` before the measurement.

mode=inc cycles through `flows` tuples, so after the first pass the SYNs
hit sessions that exist already: for a sustained new-connection rate make
flows >= rate x seconds (up to the client range x port range), or use
mode=random, which draws address and port independently on every packet
(repeats possible, `flows` ignored).

Frames are 78 bytes on the wire: a Linux-style SYN with MSS, SACK-permitted,
timestamps and window scale options, no payload.

Tunables (-t flows=1000000,mode=inc on any TRex; newer ones also take -t --flows 1000000 --mode inc):
  mode         inc | random                                inc
  flows        distinct client tuples (mode=inc)           1000000
  vip, vport   destination                                 198.18.100.1, 80
  client_min, client_max   client address range            198.18.0.16 .. 198.18.0.254
  port_min, port_max       client port range               1025 .. 65535
  hw_cs        1: NIC fixes IPv4+TCP checksums, 0: IPv4 only  1

Load it on the client-side port only: start -f .../syn_flood.py -p 0 -m 1mpps -d 2 -t ...
"""

from trex_stl_lib.api import *  # noqa: F401,F403
from ringlb_stl import COMMON, client_vm, parse_tunables, tcp_frame

SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]


class SynFlood(object):
    def get_streams(self, direction=0, **kwargs):
        c = parse_tunables(dict(COMMON, mode="inc"), kwargs)
        pkt = STLPktBuilder(pkt=tcp_frame(c, "S", options=SYN_OPTIONS), vm=client_vm(c, c.mode))
        return [STLStream(name="syn", packet=pkt, mode=STLTXCont(pps=1))]


def register():
    return SynFlood()
