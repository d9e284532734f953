"""Shared pieces of the ringlb TRex STL profiles (not a profile itself).

TRex puts a profile's directory on sys.path before importing it, so the
profiles next to this file can import it; keep the directory together.

Client tuples: the client (IP, port) pairs are walked by a TRex tuple
generator: the address advances first, then the port, and after `flows`
pairs the walk starts again. Two profiles given the same `flows`,
`client_min`, `client_max`, `port_min` and `port_max` therefore send the
same set of tuples, which is what lets syn_flood.py open exactly the
sessions that established_flows.py and imix.py then use.
"""

import socket
import struct

from trex_stl_lib.api import *  # noqa: F401,F403  (STLVm*, scapy layers)

# The lab's addressing (deploy/lab/*.yaml): clients live in 198.18.0.0/24,
# .1 is the appliance and .11-.13 are servers in the one-port DSR lab, so the
# default client range starts above them.
COMMON = {
    "vip": "198.18.100.1",
    "vport": 80,
    "client_min": "198.18.0.16",
    "client_max": "198.18.0.254",
    "port_min": 1025,
    "port_max": 65535,
    "flows": 1000000,
    "hw_cs": 1,
}

# Keyword arguments TRex itself passes to get_streams; not tunables.
_FROM_TREX = ("port_id", "direction", "tunables")


class Conf(object):
    """Tunable values as attributes."""

    def __init__(self, values):
        self.__dict__.update(values)


def _ip(text):
    try:
        return struct.unpack("!I", socket.inet_pton(socket.AF_INET, text))[0]
    except (OSError, socket.error, ValueError):
        raise ValueError("%r is not an IPv4 address" % text)


def parse_tunables(defaults, kwargs):
    """Merges the user's tunables into `defaults` and checks them.

    Older TRex consoles (`-t flows=1000,size=64`) pass tunables as keyword
    arguments; newer ones (argparse-style tunables) pass the words after
    `-t` as a list in kwargs["tunables"], where both `--flows 1000` and
    `flows=1000[,size=64]` are accepted. Unknown names are an error, not
    silently ignored.
    """
    conf = dict(defaults)
    given = {}
    for key, value in kwargs.items():
        if key not in _FROM_TREX:
            given[key] = value
    words = list(kwargs.get("tunables") or [])
    while words:
        word = words.pop(0)
        if "=" in word:
            for pair in word.split(","):
                key, _, value = pair.partition("=")
                given[key.lstrip("-")] = value
        elif word.startswith("--") and words:
            given[word[2:]] = words.pop(0)
        else:
            raise ValueError("cannot read tunable %r (use name=value or --name value)" % word)
    for key, value in given.items():
        key = key.replace("-", "_")
        if key not in conf:
            raise ValueError("unknown tunable %r; this profile knows: %s" % (key, ", ".join(sorted(conf))))
        conf[key] = int(str(value).replace("_", "")) if isinstance(defaults[key], int) else str(value)

    c = Conf(conf)
    for name in ("vip", "client_min", "client_max"):
        _ip(getattr(c, name))  # raises on a malformed address
    if not 0 < c.vport < 65536 or not 0 < c.port_min <= c.port_max < 65536:
        raise ValueError("ports must satisfy 0 < port_min <= port_max < 65536 and 0 < vport < 65536")
    clients = _ip(c.client_max) - _ip(c.client_min) + 1
    if clients < 1:
        raise ValueError("client_max is below client_min")
    space = clients * (c.port_max - c.port_min + 1)
    if not 0 < c.flows <= space:
        raise ValueError("flows=%d does not fit %d addresses x %d ports = %d tuples"
                         % (c.flows, clients, c.port_max - c.port_min + 1, space))
    return c


def tcp_frame(c, flags, size=None, options=None):
    """Ether/IPv4/TCP from client_min:port_min to vip:vport.

    With `size` (bytes on the wire including the 4-byte FCS, which the NIC
    adds) the TCP payload is filled so the frame has exactly that size.
    The Ethernet addresses are left out on purpose: TRex fills them from its
    port configuration (trex_cfg.yaml dest_mac, or `l2`/`l3` in the console).
    """
    pkt = (Ether()
           / IP(src=c.client_min, dst=c.vip, ttl=64)
           / TCP(sport=c.port_min, dport=c.vport, flags=flags, seq=1000,
                 ack=(1 if "A" in flags else 0), window=65535, options=options or []))
    if size is None:
        return pkt
    if not 64 <= size <= 1518:
        raise ValueError("size=%d: frames must be 64..1518 bytes (ringlb takes single-segment frames)" % size)
    room = size - 4 - len(pkt)
    if room < 0:
        raise ValueError("size=%d is below the %d bytes of the headers" % (size, len(pkt) + 4))
    return pkt / Raw(b"x" * room) if room else pkt


def client_vm(c, mode="inc"):
    """Field engine writing a client (IP, port) into each packet.

    mode "inc": the first `flows` tuples of the tuple generator, in order, then
    again from the start. mode "random": independent uniform draws of address
    and port over the whole ranges (repeats are possible; `flows` is ignored).
    Checksums: hw_cs=1 lets the NIC recompute the IPv4 and TCP checksums
    (TRex's checksum offload, on by default); hw_cs=0 recomputes the IPv4
    header checksum only, leaving TCP checksums stale (ringlb does not verify
    them, but a real server would).
    """
    if mode == "inc":
        vm = [
            STLVmTupleGen(name="client", ip_min=c.client_min, ip_max=c.client_max,
                          port_min=c.port_min, port_max=c.port_max, limit_flows=c.flows),
            STLVmWrFlowVar(fv_name="client.ip", pkt_offset="IP.src"),
            STLVmWrFlowVar(fv_name="client.port", pkt_offset="TCP.sport"),
        ]
    elif mode == "random":
        vm = [
            STLVmFlowVar(name="client_ip", min_value=c.client_min, max_value=c.client_max,
                         size=4, op="random"),
            STLVmFlowVar(name="client_port", min_value=c.port_min, max_value=c.port_max,
                         size=2, op="random"),
            STLVmWrFlowVar(fv_name="client_ip", pkt_offset="IP.src"),
            STLVmWrFlowVar(fv_name="client_port", pkt_offset="TCP.sport"),
        ]
    else:
        raise ValueError("mode=%r: use inc or random" % mode)
    if c.hw_cs:
        vm.append(STLVmFixChecksumHw(l3_offset="IP", l4_offset="TCP",
                                     l4_type=CTRexVmInsFixHwCs.L4_TYPE_TCP))
    else:
        vm.append(STLVmFixIpv4(offset="IP"))
    return vm
