"""Offloads across ports: a frame whose offloads (GSO, partial checksum) or size the
destination did not negotiate is made acceptable by the switch (checksum completed,
GSO segmented in software), never silently dropped; a frame that cannot be fixed is
dropped and counted with a reason, and its port keeps working. Checked in Python,
independently of the C code: IP and TCP/UDP checksums, lengths, sequence numbers,
flags, byte-exact payload."""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncd.features import Features, Negotiated
from ncd.switch import PortState
from ncd.vchan.channel import local_pair
from tests import framecodec as fr

from . import pkt
from .helpers import TIMEOUT, Guest, mac, wait_for

MTU_FRAME = 1514
PLAIN = Negotiated(Features.ALL, Features.NONE, MTU_FRAME)  # accepts no offloads
CSUM_ONLY = Negotiated(Features.ALL, Features.CSUM, MTU_FRAME)
SRC4, DST4 = "198.18.0.1", "198.18.0.2"
SRC6, DST6 = "2001:db8::1", "2001:db8::2"
RING = 1 << 20


def collect(g: Guest, count: int, timeout: float = TIMEOUT) -> list[tuple[fr.VnetHdr, bytes]]:
    """(vnet header, frame) pairs arriving at g (g.poll() is not used on g)."""
    out: list[tuple[fr.VnetHdr, bytes]] = []
    dec = getattr(g, "_dec2", None) or fr.Decoder()
    g._dec2 = dec  # type: ignore[attr-defined]

    def more() -> bool:
        data = g.far.read(1 << 20)
        if data:
            out.extend(dec.feed(data))
        return len(out) >= count

    wait_for(more, timeout, f"dom{g.domid} to receive {count} frames (has {len(out)})")
    return out


def tso_frame(v6: bool, src: Guest, dst: Guest, payload: bytes, seq: int = 1000,
              flags: int = pkt.ACK | pkt.PSH | pkt.FIN | pkt.CWR, mss: int = 1448,
              vlan: bool = False) -> tuple[bytes, fr.VnetHdr]:
    s, d = (SRC6, DST6) if v6 else (SRC4, DST4)
    seg = pkt.with_l4_csum(pkt.tcp(40000, 5201, seq, flags, payload, ack=77,
                                   opts=b"\x01\x01\x08\x0a" + b"\0" * 8),
                           s, d, pkt.TCP, partial=True)
    ip = pkt.ipv6(s, d, pkt.TCP, seg) if v6 else pkt.ipv4(s, d, pkt.TCP, seg, ident=0xFFF0)
    et = 0x86DD if v6 else 0x0800
    if vlan:
        ip = struct.pack(">HH", 5, et) + ip
        et = 0x8100
    frame = pkt.ether(dst.mac, src.mac, et, ip)
    l3 = 18 if vlan else 14
    l4 = l3 + (40 if v6 else 20)
    h = fr.VnetHdr(flags=fr.F_NEEDS_CSUM, gso_type=fr.GSO_TCPV6 if v6 else fr.GSO_TCPV4,
                   hdr_len=l4 + 32, gso_size=mss, csum_start=l4, csum_offset=16)
    return frame, h


def ports(switch, guests, plain: Negotiated = PLAIN) -> tuple[Guest, Guest, Guest]:
    """tso (sender, negotiated everything), slow (no offloads, MTU frames), full (a
    second TSO port); slow and full are learned."""
    sw = switch()
    tso = guests(sw, 1, ring=RING)
    slow = guests(sw, 2, ring=RING, negotiated=plain)
    full = guests(sw, 3, ring=RING)
    for g in (slow, full):
        g.send(pkt.ether("ff:ff:ff:ff:ff:ff", g.mac, 0x88B5, b"hello"))
    collect(tso, 2)
    collect(slow, 1)
    collect(full, 1)
    return tso, slow, full


def check_segments(segs: list[tuple[fr.VnetHdr, bytes]], v6: bool, payload: bytes,
                   seq: int, flags: int, max_frame: int = MTU_FRAME) -> None:
    data = b""
    for i, (h, f) in enumerate(segs):
        assert h == fr.VnetHdr(), h  # no offloads left
        assert len(f) <= max_frame
        p = pkt.parse(f)
        assert p["v"] == (6 if v6 else 4) and p["proto"] == pkt.TCP
        assert p["ip_ok"], f"segment {i}: bad IPv4 header checksum"
        assert p["l4_ok"], f"segment {i}: bad TCP checksum"
        assert p["frame_end_ok"], f"segment {i}: IP length does not match the frame"
        assert p["seq"] == (seq + len(data)) & 0xFFFFFFFF, f"segment {i}: seq not contiguous"
        last = i == len(segs) - 1
        want = flags if last else flags & ~(pkt.FIN | pkt.PSH)
        if i:
            want &= ~pkt.CWR
        assert p["flags"] == want, (i, hex(p["flags"]), hex(want))
        if not v6:
            assert p["ident"] == (0xFFF0 + i) & 0xFFFF
        data += p["payload"]
    assert data == payload


@pytest.mark.parametrize("v6", [False, True], ids=["tcpv4", "tcpv6"])
def test_tso_frame_segmented_for_a_port_without_offloads(switch, guests, v6: bool) -> None:
    tso, slow, full = ports(switch, guests)
    payload = random.Random(7).randbytes(60_000)
    flags = pkt.ACK | pkt.PSH | pkt.FIN | pkt.CWR
    frame, h = tso_frame(v6, tso, slow, payload, seq=0xFFFFF000, flags=flags)  # seq wraps
    tso.send(frame, h)
    mss = min(1448, MTU_FRAME - (14 + (40 if v6 else 20) + 32))  # IPv6: 1428 fits 1514
    n = -(-len(payload) // mss)
    segs = collect(slow, n)
    assert len(segs) == n
    check_segments(segs, v6, payload, 0xFFFFF000, flags)
    st = slow.sw.port_stats(slow.port)
    assert st.gso_segments == n and st.offload_fixed == 1 and st.tx_frames == n + 1
    assert st.drop_offload == st.drop_too_big == 0
    # broadcast: the TSO port gets the frame as it was sent, the plain one segments
    bframe, bh = tso_frame(v6, tso, slow, payload[:5000])
    bframe = b"\xff" * 6 + bframe[6:]
    tso.send(bframe, bh)
    assert collect(full, 1) == [(bh, bframe)]
    check_segments(collect(slow, 4), v6, payload[:5000], 1000, flags)


def test_segments_follow_the_destination_max_frame_and_vlan(switch, guests) -> None:
    """gso_size larger than what fits the destination: segments shrink to its
    max_frame; a VLAN tag is carried in every segment."""
    tso, slow, _ = ports(switch, guests, Negotiated(Features.ALL, Features.NONE, 1000))
    payload = os.urandom(9000)
    frame, h = tso_frame(False, tso, slow, payload, mss=8000, vlan=True)
    tso.send(frame, h)
    hl = 18 + 20 + 32
    n = -(-len(payload) // (1000 - hl))
    segs = collect(slow, n)
    assert all(f[12:16] == b"\x81\x00\x00\x05" for _h, f in segs)
    check_segments(segs, False, payload, 1000, pkt.ACK | pkt.PSH | pkt.FIN | pkt.CWR,
                   max_frame=1000)


@pytest.mark.parametrize("v6", [False, True], ids=["udpv4", "udpv6"])
def test_uso_frame_split_into_datagrams(switch, guests, v6: bool) -> None:
    tso, slow, _ = ports(switch, guests)
    s, d = (SRC6, DST6) if v6 else (SRC4, DST4)
    payload = os.urandom(20_000)
    seg = pkt.with_l4_csum(pkt.udp(4000, 4001, payload), s, d, pkt.UDP, partial=True)
    ip = pkt.ipv6(s, d, pkt.UDP, seg) if v6 else pkt.ipv4(s, d, pkt.UDP, seg)
    frame = pkt.ether(slow.mac, tso.mac, 0x86DD if v6 else 0x0800, ip)
    l4 = 14 + (40 if v6 else 20)
    tso.send(frame, fr.VnetHdr(flags=fr.F_NEEDS_CSUM, gso_type=fr.GSO_UDP_L4, hdr_len=l4 + 8,
                               gso_size=1400, csum_start=l4, csum_offset=6))
    n = -(-len(payload) // 1400)
    got = collect(slow, n)
    data = b""
    for h, f in got:
        p = pkt.parse(f)
        assert h == fr.VnetHdr() and p["ip_ok"] and p["l4_ok"] and p["frame_end_ok"]
        assert p["udp_len"] == 8 + len(p["payload"]) and len(p["payload"]) <= 1400
        data += p["payload"]
    assert data == payload


@pytest.mark.parametrize("dest", [PLAIN, CSUM_ONLY], ids=["plain", "csum-only"])
def test_partial_checksum_completed(switch, guests, dest: Negotiated) -> None:
    """NEEDS_CSUM single frames (TCP, UDP over v4 and v6) arrive at a port without
    feature-csum with a correct checksum; with feature-csum they stay partial."""
    tso, slow, _ = ports(switch, guests, dest)
    cases = []
    for v6 in (False, True):
        s, d = (SRC6, DST6) if v6 else (SRC4, DST4)
        for proto in (pkt.TCP, pkt.UDP):
            body = os.urandom(777)
            l4 = pkt.tcp(1, 2, 5, pkt.ACK, body) if proto == pkt.TCP else pkt.udp(1, 2, body)
            l4 = pkt.with_l4_csum(l4, s, d, proto, partial=True)
            ip = pkt.ipv6(s, d, proto, l4) if v6 else pkt.ipv4(s, d, proto, l4)
            f = pkt.ether(slow.mac, tso.mac, 0x86DD if v6 else 0x0800, ip)
            start = 14 + (40 if v6 else 20)
            h = fr.VnetHdr(flags=fr.F_NEEDS_CSUM, csum_start=start,
                           csum_offset=16 if proto == pkt.TCP else 6)
            cases.append((f, h))
            tso.send(f, h)
    got = collect(slow, len(cases))
    for (f, h), (gh, gf) in zip(cases, got, strict=True):
        if dest is CSUM_ONLY:
            assert (gh, gf) == (h, f)  # negotiated: passed as it is
            continue
        p = pkt.parse(gf)
        assert gh == fr.VnetHdr() and p["ip_ok"] and p["l4_ok"]
        off = h.csum_start + h.csum_offset
        assert gf[:off] == f[:off] and gf[off + 2:] == f[off + 2:]  # only the checksum
    st = slow.sw.port_stats(slow.port)
    assert st.offload_fixed == (0 if dest is CSUM_ONLY else len(cases))
    # DATA_VALID alone: the flag is cleared, the frame is unchanged
    f = pkt.ether(slow.mac, tso.mac, 0x88B5, b"v" * 100)
    tso.send(f, fr.VnetHdr(flags=fr.F_DATA_VALID))
    want = fr.VnetHdr(flags=fr.F_DATA_VALID) if dest is CSUM_ONLY else fr.VnetHdr()
    assert collect(slow, 1) == [(want, f)]


def malformed_frames(tso: Guest, slow: Guest) -> list[tuple[str, bytes, fr.VnetHdr]]:
    frame, h = tso_frame(False, tso, slow, os.urandom(5000))
    f6, h6 = tso_frame(True, tso, slow, os.urandom(5000))
    b = bytearray(frame)
    out = []
    bad = bytearray(b)
    bad[14] = 0x43  # IHL 3
    out.append(("ihl<5", bytes(bad), h))
    bad = bytearray(b)
    bad[14] = 0x4F  # IHL 15 (60 bytes): past the TCP header, inconsistent
    bad[16:18] = struct.pack(">H", 30)  # and a total length shorter than the header
    out.append(("ihl>len", bytes(bad), h))
    bad = bytearray(b)
    bad[16:18] = struct.pack(">H", len(b))  # total length beyond the frame
    out.append(("tot_len", bytes(bad), h))
    bad = bytearray(b)
    bad[14] = 0x65  # IP version 6 in an IPv4 header
    out.append(("version", bytes(bad), h))
    bad = bytearray(b)
    bad[20:22] = b"\x20\x00"  # more fragments
    out.append(("fragment", bytes(bad), h))
    bad = bytearray(b)
    bad[34 + 12] = 0x30  # TCP data offset 3
    out.append(("doff<5", bytes(bad), h))
    bad = bytearray(b)
    bad[23] = pkt.UDP  # the IPv4 protocol is not TCP
    out.append(("proto", bytes(bad), h))
    out.append(("type-mismatch", bytes(b), fr.VnetHdr(
        flags=fr.F_NEEDS_CSUM, gso_type=fr.GSO_TCPV6, hdr_len=66, gso_size=1448,
        csum_start=34, csum_offset=16)))
    out.append(("short", bytes(b[:40]), fr.VnetHdr(
        flags=fr.F_NEEDS_CSUM, gso_type=fr.GSO_TCPV4, hdr_len=40, gso_size=1448,
        csum_start=34, csum_offset=4)))
    notip = pkt.ether(slow.mac, tso.mac, 0x88B5, b"x" * 3000)
    out.append(("not-ip", notip, h))
    bad6 = bytearray(f6)
    bad6[18:20] = struct.pack(">H", len(f6))  # payload length beyond the frame
    out.append(("v6-plen", bytes(bad6), h6))
    return out


def test_malformed_gso_dropped_counted_port_keeps_working(switch, guests) -> None:
    tso, slow, _ = ports(switch, guests)
    bad = malformed_frames(tso, slow)
    for _name, f, h in bad:
        tso.send(f, h)
    good, gh = tso_frame(False, tso, slow, b"after" * 600)
    tso.send(good, gh)
    segs = collect(slow, 3)
    check_segments(segs, False, b"after" * 600, 1000, pkt.ACK | pkt.PSH | pkt.FIN | pkt.CWR)
    sw = tso.sw
    assert sw.port_stats(tso.port).drop_bad_headers == len(bad)
    assert sw.port_state(tso.port) == PortState.UP
    st = sw.port_stats(slow.port)
    assert st.gso_segments == 3 and st.tx_frames == 1 + 3  # full's hello + the segments
    # IPv6 with an extension header: valid but not segmented here: dropped, counted
    f6, h6 = tso_frame(True, tso, slow, b"e" * 3000)
    f6 = f6[:20] + bytes([0]) + f6[21:]  # next header: hop-by-hop
    tso.send(f6, h6)
    wait_for(lambda: sw.port_stats(slow.port).drop_offload == 1, what="drop_offload")
    assert sw.port_stats(tso.port).drop_bad_headers == len(bad)


def test_hdr_len_beyond_frame(switch, guests) -> None:
    """A GSO hdr_len beyond the frame breaks the record rules (docs/protocol.md,
    BAD_HDR_LEN): from a vchan peer it closes that port with a reason (the others keep
    working); from a TAP port (the local kernel) it is dropped and counted, the port
    stays up."""
    sw = switch()
    tso = guests(sw, 1, ring=RING)
    slow = guests(sw, 2, ring=RING, negotiated=PLAIN)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap = sw.add_tap(b.fileno(), trunk=True)
    frame, h = tso_frame(False, tso, slow, os.urandom(3000))
    bad_h = fr.VnetHdr(**{**h.__dict__, "hdr_len": len(frame) + 1})
    a.send(bad_h.pack() + frame)
    wait_for(lambda: sw.port_stats(tap).bad_record == 1, what="TAP bad_record")
    a.send(h.pack() + frame)
    segs = collect(slow, 3)
    check_segments(segs, False, pkt.parse(frame)["payload"], 1000,
                   pkt.ACK | pkt.PSH | pkt.FIN | pkt.CWR)
    assert sw.port_state(tap) == PortState.UP
    tso.send(frame, bad_h)
    wait_for(lambda: sw.port_state(tso.port) == PortState.BAD_PEER, what="BAD_PEER")
    assert "hdr_len" in sw.port_reason(tso.port)
    assert sw.port_state(slow.port) == PortState.UP
    sw.remove_port(tap)
    a.close()
    b.close()


def test_software_gso_rate(switch, guests) -> None:
    """A quick measurement of the switch's own software GSO rate: a TSO port's ring
    is filled with 60 KB TSO frames while the port is out of the switch; the time from
    adding it until the switch has segmented them all into a port without offloads
    (whose ring holds them all), best of 5."""
    sw = switch()
    slow = guests(sw, 2, ring=RING, negotiated=PLAIN)
    payload = os.urandom(40 * 1448)  # 16 of them, segmented, fit the 1 MiB ring
    n = -(-len(payload) // 1448)
    best, total = float("inf"), 0
    for _ in range(5):
        srv, cli = local_pair(RING, RING)
        frame, h = tso_frame(False, SimpleNamespace(mac=mac(1)), slow, payload)  # type: ignore[arg-type]
        rec = fr.encode(frame, h)
        frames = 0
        while frames < 16:
            assert cli.write(rec) == len(rec)
            frames += 1
        before = sw.port_stats(slow.port).tx_frames
        t0 = time.perf_counter()
        port = sw.add_vchan(srv, domid=1, mac=mac(1))
        deadline = t0 + 30
        while sw.port_stats(slow.port).tx_frames < before + frames * n:
            assert time.perf_counter() < deadline, "segments did not all arrive"
        best = min(best, time.perf_counter() - t0)
        total += frames
        sw.remove_port(port)
        srv.close()
        cli.close()
        while slow.far.read(RING):
            pass
    st = sw.port_stats(slow.port)
    print(f"\nsoftware GSO (memcpy): {frames} x {len(payload)} B TSO frames -> "
          f"{frames * n} segments "
          f"in {best * 1000:.1f} ms: {frames * len(payload) / best / 1e6:.0f} MB/s payload, "
          f"{frames * n / best / 1e3:.0f} k segments/s")
    assert st.gso_segments == total * n and st.drop_ring_full == 0


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_hostile_gso_headers(switch, guests, data) -> None:
    """Random bytes over the headers of a GSO frame and random gso_type/gso_size: the
    switch never reads outside the frame (the sanitized run would abort), never stops
    the port, and whatever it sends the port without offloads is a frame within its
    max_frame without offloads."""
    tso, slow, full = ports(switch, guests)
    for _ in range(8):
        v6 = data.draw(st.booleans())
        size = data.draw(st.integers(0, 6000))
        frame, h = tso_frame(v6, tso, slow, os.urandom(size))
        b = bytearray(frame)
        # mostly valid frames with a few header bytes changed, sometimes cut short: most
        # examples reach the segmentation, the rest every kind of malformed header
        for _ in range(data.draw(st.integers(0, 3))):
            pos = data.draw(st.integers(14, min(len(b) - 1, 14 + 40 + 32)))
            b[pos] = data.draw(st.integers(0, 255))
        if data.draw(st.integers(0, 3)) == 0:
            b = b[:data.draw(st.integers(14, len(b)))]
        match = fr.GSO_TCPV6 if v6 else fr.GSO_TCPV4
        gso = data.draw(st.sampled_from([match, match, match, fr.GSO_TCPV4, fr.GSO_TCPV6,
                                         fr.GSO_UDP_L4]))
        hh = fr.VnetHdr(flags=fr.F_NEEDS_CSUM, gso_type=gso,
                        hdr_len=data.draw(st.integers(0, len(b))),
                        gso_size=data.draw(st.one_of(st.integers(1, 0xFFFF),
                                                     st.integers(500, 1500))),
                        csum_start=0, csum_offset=0)
        tso.send(bytes(b), hh)
    mark = pkt.ether(slow.mac, tso.mac, 0x88B5, b"sentinel" + os.urandom(8))
    tso.send(mark)
    seen: list[tuple[fr.VnetHdr, bytes]] = []
    wait_for(lambda: (seen.extend(collect(slow, 0, timeout=1)), (fr.VnetHdr(), mark) in seen)[1],
             what="the sentinel")
    for vh, f in seen:
        assert vh == fr.VnetHdr() and len(f) <= MTU_FRAME
    sw = tso.sw
    assert sw.port_state(tso.port) == PortState.UP and sw.port_state(slow.port) == PortState.UP
    for g in (tso, slow, full):
        g.close()
    sw.close()  # one switch per example
