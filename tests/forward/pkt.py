"""Packet builders and checkers for the forwarding tests (Ethernet, ARP, IPv4/IPv6,
TCP/UDP with real checksums), independent of the C code they test."""

from __future__ import annotations

import ipaddress
import struct

from ncd.switch import parse_mac

TCP, UDP = 6, 17
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128


def csum(data: bytes, start: int = 0) -> int:
    """RFC 1071 ones' complement sum, folded, not complemented."""
    if len(data) % 2:
        data += b"\0"
    s = start + sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ether(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return parse_mac(dst) + parse_mac(src) + struct.pack(">H", ethertype) + payload


def arp(sha: str, spa: str, tpa: str, op: int = 1) -> bytes:
    return (struct.pack(">HHBBH", 1, 0x0800, 6, 4, op) + parse_mac(sha) +
            ipaddress.IPv4Address(spa).packed + b"\0" * 6 + ipaddress.IPv4Address(tpa).packed)


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0x1234,
         ihl: int = 5, tot_len: int | None = None) -> bytes:
    hdr = bytearray(struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, tot_len if tot_len is not None
                                else 20 + len(payload), ident, 0x4000, 64, proto, 0,
                                ipaddress.IPv4Address(src).packed,
                                ipaddress.IPv4Address(dst).packed))
    hdr[10:12] = struct.pack(">H", 0xFFFF ^ csum(bytes(hdr)))
    return bytes(hdr) + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
    return (struct.pack(">IHBB", 0x60000000, len(payload), nh, 64) +
            ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack(">BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack(">IxxxB", length, proto)


def tcp(sport: int, dport: int, seq: int, flags: int, payload: bytes, ack: int = 0,
        win: int = 65535, opts: bytes = b"") -> bytes:
    doff = (20 + len(opts)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, win, 0,
                       0) + opts + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def with_l4_csum(seg: bytes, src: str, dst: str, proto: int, partial: bool = False) -> bytes:
    """Fill the L4 checksum: full, or (partial) only the pseudo-header sum as a sender
    with checksum offload leaves it (virtio NEEDS_CSUM)."""
    off = 16 if proto == TCP else 6
    ph = csum(pseudo(src, dst, proto, len(seg)))
    if partial:
        value = ph
    else:
        value = 0xFFFF ^ csum(seg[:off] + b"\0\0" + seg[off + 2:], ph)
        if proto == UDP and value == 0:
            value = 0xFFFF
    return seg[:off] + struct.pack(">H", value) + seg[off + 2:]


def parse(frame: bytes) -> dict:
    """Ethernet/VLAN/IPv4|IPv6/TCP|UDP of one frame, with checksum verdicts."""
    l3, et = 14, struct.unpack(">H", frame[12:14])[0]
    if et in (0x8100, 0x88A8):
        et, l3 = struct.unpack(">H", frame[16:18])[0], 18
    out: dict = {"ethertype": et}
    if et == 0x0800:
        ihl = (frame[l3] & 15) * 4
        ip = frame[l3:l3 + ihl]
        tot = struct.unpack(">H", ip[2:4])[0]
        out.update(v=4, ip_ok=csum(ip) == 0xFFFF, ip_len=tot, ident=struct.unpack(">H", ip[4:6])[0],
                   proto=ip[9], src=str(ipaddress.IPv4Address(ip[12:16])),
                   dst=str(ipaddress.IPv4Address(ip[16:20])))
        l4, end = l3 + ihl, l3 + tot
    else:
        plen, nh = struct.unpack(">HB", frame[l3 + 4:l3 + 7])
        out.update(v=6, ip_ok=True, ip_len=plen, proto=nh,
                   src=str(ipaddress.IPv6Address(frame[l3 + 8:l3 + 24])),
                   dst=str(ipaddress.IPv6Address(frame[l3 + 24:l3 + 40])))
        l4, end = l3 + 40, l3 + 40 + plen
    seg = frame[l4:end]
    out["l4_ok"] = csum(seg, csum(pseudo(out["src"], out["dst"], out["proto"], len(seg)))) == 0xFFFF
    out["frame_end_ok"] = end == len(frame)
    if out["proto"] == TCP:
        doff = (seg[12] >> 4) * 4
        out.update(seq=struct.unpack(">I", seg[4:8])[0], flags=seg[13], payload=seg[doff:])
    else:
        out.update(udp_len=struct.unpack(">H", seg[4:6])[0], payload=seg[8:])
    return out
