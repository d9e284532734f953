#!/usr/bin/env python3
"""Writes the packet_path and ring_wire seed inputs (committed; rerun after
changing the seed config). Frames are built here from the RFCs, not by the
code under test. packet_path input: records of [control byte, length, frame]."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
PORT = bytes([2, 0, 0, 0, 0, 1])
ROUTER = bytes([2, 0, 0, 0, 0, 0xFE])
NAT1 = bytes([2, 0, 0, 0, 2, 1])


def ip(s):
    return bytes(int(x) for x in s.split("."))


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, frag=0, ttl=64):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, frag, ttl, proto, 0, src, dst)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def eth(dst, src, payload, ethertype=0x0800):
    f = dst + src + struct.pack("!H", ethertype) + payload
    return f + b"\0" * max(0, 60 - len(f))


def tcp(src, dst, sport, dport, flags, data=b"", seq=1000, ack=0):
    h = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(h) + len(data))
    c = csum(pseudo + h + data)
    return h[:16] + struct.pack("!H", c) + h[18:] + data


def udp(src, dst, sport, dport, data):
    h = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(h) + len(data))
    c = csum(pseudo + h + data) or 0xFFFF
    return h[:6] + struct.pack("!H", c) + data


def tcp_frame(smac, dmac, src, dst, sport, dport, flags, data=b""):
    s, d = ip(src), ip(dst)
    return eth(dmac, smac, ipv4(s, d, 6, tcp(s, d, sport, dport, flags, data)))


def arp(op, smac, sip, tmac, tip, dmac):
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + smac + ip(sip) + tmac + ip(tip)
    return eth(dmac, smac, body, 0x0806)


def icmp_error(router, vip, quoted):
    m = bytes([3, 4, 0, 0, 0, 0, 5, 0xDC]) + quoted
    m = m[:2] + struct.pack("!H", csum(m)) + m[4:]
    return eth(PORT, ROUTER, ipv4(ip(router), ip(vip), 1, m))


def record(frame, port=0, advance=0, handed=False, fix=True):
    """advance: in 100 ms steps (0-31); fix: the harness sets checksums."""
    ctl = (min(advance, 31) << 3) | (4 if fix else 0) | (2 if handed else 0) | port
    assert len(frame) <= 255
    return bytes([ctl, len(frame)]) + frame


SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
C = "203.0.113.7"
seeds = {
    "dsr_flow": [
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.1", 40000, 80, SYN)),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.1", 40000, 80, ACK), advance=1),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.1", 40000, 80, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n")),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.1", 40000, 80, RST), advance=2),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.1", 40000, 80, SYN)),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.1", 40000, 80, FIN | ACK), advance=31, fix=False),
    ],
    "nat_flow": [
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.2", 40001, 80, SYN)),
        record(tcp_frame(NAT1, PORT, "198.18.0.21", C, 8080, 40001, SYN | ACK)),
        record(tcp_frame(bytes([2, 0, 0, 0, 2, 2]), PORT, "198.18.0.22", C, 8080, 40001, SYN | ACK)),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.2", 40001, 80, ACK)),
        record(tcp_frame(NAT1, PORT, "198.18.0.21", C, 8080, 40001, ACK | PSH, b"HTTP/1.1 200 OK\r\n\r\n")),
        record(tcp_frame(NAT1, PORT, "198.18.0.21", C, 8080, 40001, FIN | ACK), port=1),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.2", 40001, 80, FIN | ACK)),
    ],
    "udp_arp": [
        record(eth(PORT, ROUTER, ipv4(ip(C), ip("198.18.100.2"), 17, udp(ip(C), ip("198.18.100.2"), 5000, 53, b"q")))),
        record(arp(2, bytes([2, 0, 0, 0, 3, 1]), "198.18.0.31", PORT, "198.18.0.1", PORT)),
        record(arp(1, bytes([2, 0, 0, 0, 9, 9]), "198.18.0.50", bytes(6), "198.18.100.1", b"\xff" * 6)),
        record(arp(2, b"\xff" * 6, "198.18.0.31", PORT, "198.18.0.1", PORT)),
        record(eth(PORT, ROUTER, ipv4(ip(C), ip("198.18.100.2"), 17, udp(ip(C), ip("198.18.100.2"), 5000, 53, b"q"))),
               advance=20),
    ],
    "icmp": [
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.2", 40002, 80, SYN)),
        record(icmp_error("192.0.2.1", "198.18.100.2",
                          ipv4(ip("198.18.100.2"), ip(C), 6, tcp(ip("198.18.100.2"), ip(C), 80, 40002, ACK))[:40])),
        record(icmp_error("192.0.2.1", "198.18.100.1",
                          ipv4(ip("198.18.100.1"), ip(C), 6, tcp(ip("198.18.100.1"), ip(C), 80, 40000, ACK))[:28])),
        record(eth(PORT, ROUTER, ipv4(ip(C), ip("198.18.100.1"), 1, bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0])))),
    ],
    "fragments": [
        record(eth(PORT, ROUTER, ipv4(ip(C), ip("198.18.100.5"), 17, b"\x13\x88\x13\x8c" + b"\0" * 60, frag=0x2000))),
        record(eth(PORT, ROUTER, ipv4(ip(C), ip("198.18.100.5"), 17, b"\x09" * 64, frag=8))),
        record(eth(PORT, ROUTER, ipv4(ip(C), ip("198.18.100.1"), 6, b"\x09" * 64, frag=0x2000))),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.6", 40003, 443, SYN)),
        record(tcp_frame(ROUTER, PORT, C, "198.18.100.6", 40003, 443, ACK | PSH, b"x"), handed=True),
    ],
}
for name, records in seeds.items():
    with open(os.path.join(HERE, "seeds", "packet_path", name), "wb") as f:
        f.write(b"".join(records))

# ring_wire: byte 0 picks the protocol (even: ring, odd: sync), then the
# body after magic and version: a ring packet of no messages and one with an
# unknown message; a sync data batch with two records and an ack.
addr = ip("10.255.0.2") + struct.pack("!H", 7400)
ring_empty = b"\0" + b"\0" + addr + struct.pack("!QQH", 1, 1, 0)
ring_one = b"\0" + b"\0" + addr + struct.pack("!QQH", 1, 2, 1) + b"\x05" + struct.pack("!H", 3) + b"abc"
hdr = addr + struct.pack("!QQQ", 1, 1, 0)
sync_data = b"\x01" + b"\x01" + hdr + struct.pack("!IQQH", 1, 0, 0, 2) + b"\x03abc\x02de"
sync_ack = b"\x01" + b"\x02" + hdr + struct.pack("!IQH", 1, 1, 1) + struct.pack("!Q", 3)
for name, body in [("ring_empty", ring_empty), ("ring_one", ring_one), ("sync_data", sync_data), ("sync_ack", sync_ack)]:
    with open(os.path.join(HERE, "seeds", "ring_wire", name), "wb") as f:
        f.write(body)
