"""The C learning switch on in-memory vchan pairs (every end in this process).

Each port's vchan is one end of a local pair; the test plays the guest on the other
end, writing and reading records (length + virtio_net_hdr + frame) directly.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import select
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncd.features import Features, Negotiated
from ncd.switch import PortKind, PortState, parse_mac
from tests import framecodec as fr

from .helpers import BCAST, Guest, eth, mac, wait_for


def test_learning_flood_and_no_hairpin(switch, guests) -> None:
    sw = switch()
    a, b, c = (guests(sw, d) for d in (1, 2, 3))
    assert sw.port_kind(a.port) == PortKind.GRANTED  # a local pair: our own memory

    # b's MAC is unknown: flooded to every other port, never back to a
    f1 = eth(b.mac, a.mac, b"hello b")
    a.send(f1)
    assert b.expect(1) == [f1] and c.expect(1) == [f1]
    assert a.quiet()
    # a was learned: b's reply goes to a only
    f2 = eth(a.mac, b.mac, b"hello a")
    b.send(f2)
    assert a.expect(1) == [f2]
    assert c.quiet()
    # both learned now: unicast a -> b reaches b only
    f3 = eth(b.mac, a.mac, b"again")
    a.send(f3)
    assert b.expect(1) == [f3]
    assert c.quiet() and a.quiet()
    table = sw.fdb()
    assert table[a.mac][0] == a.port and table[b.mac][0] == b.port and c.mac not in table
    # a frame for a MAC that lives on its own source port is not sent back out
    a.send(eth(a.mac, a.mac, b"to myself"))
    wait_for(lambda: sw.port_stats(a.port).filtered_same_port == 1, what="hairpin filter")
    assert a.quiet() and b.quiet() and c.quiet()
    # broadcast and multicast: everyone but the sender
    for dst in (BCAST, "01:00:5e:00:00:fb", "33:33:00:00:00:01"):
        f = eth(dst, c.mac, b"group " + dst.encode())
        c.send(f)
        assert a.expect(1) == [f] and b.expect(1) == [f]
        assert c.quiet(0.02)
    sa, sb, sc = (sw.port_stats(g.port) for g in (a, b, c))
    assert (sa.rx_frames, sa.flooded, sa.tx_frames) == (3, 1, 4)
    assert (sb.rx_frames, sb.flooded, sb.tx_frames) == (1, 0, 5)
    assert (sc.rx_frames, sc.flooded, sc.tx_frames) == (3, 3, 1)
    assert sa.tx_bytes == len(f2) + 3 * (len(eth(BCAST, c.mac, b"group ")) + 17)


def test_mac_ageing_with_a_driven_clock(switch, guests) -> None:
    sw = switch(manual_clock=True)
    sw.set_time(1000.0)
    a, b, c = (guests(sw, d) for d in (1, 2, 3))
    a.send(eth(BCAST, a.mac, b"i am a"))
    b.expect(1), c.expect(1)
    assert sw.fdb()[a.mac] == (a.port, 0.0)

    sw.set_time(1000.0 + 299.9)  # default ageing: 300 s
    assert sw.fdb()[a.mac][1] == pytest.approx(299.9)
    f = eth(a.mac, b.mac, b"still there")
    b.send(f)
    assert a.expect(1) == [f] and c.quiet()

    sw.set_time(1000.0 + 299.9 + 300.0)  # a aged out (b, learned at 1299.9, too)
    assert a.mac not in sw.fdb() and b.mac not in sw.fdb()
    g = eth(a.mac, b.mac, b"flooded again")
    b.send(g)
    assert a.expect(1) == [g] and c.expect(1) == [g]
    assert sw.port_stats(b.port).flooded == 1


def test_a_mac_that_moves_is_relearned(switch, guests) -> None:
    sw = switch()
    a, b, c = guests(sw, 1, trunk=True), guests(sw, 2), guests(sw, 3, trunk=True)
    roamer = mac(0x77)
    a.send(eth(BCAST, roamer, b"here"))
    b.expect(1), c.expect(1)
    assert sw.fdb()[roamer][0] == a.port
    c.send(eth(BCAST, roamer, b"moved"))
    a.expect(1), b.expect(1)
    assert sw.fdb()[roamer][0] == c.port
    f = eth(roamer, b.mac, b"where are you")
    b.send(f)
    assert c.expect(1) == [f] and a.quiet()
    assert sw.port_stats(c.port).mac_moves == 1 and sw.port_stats(a.port).mac_moves == 0


def test_full_destination_ring_drops_for_that_destination_only(switch, guests) -> None:
    sw = switch()
    a = guests(sw, 1, ring=256 * 1024)
    slow = guests(sw, 2, ring=8192)  # never reads: its ring fills
    fast = guests(sw, 3, ring=256 * 1024)
    n, payload = 600, bytes(range(256)) * 2
    for i in range(n):
        # the fast guest keeps up (at most 100 frames, 55 KB, in flight): no drop for it
        wait_for(lambda i=i: (fast.poll(), len(fast.got) >= i - 100)[1], what="fast guest")
        a.send(eth(BCAST, a.mac, struct.pack(">I", i) + payload))
    wait_for(lambda: (fast.poll(), len(fast.got) >= n)[1], what="fast guest to get every frame")
    assert [struct.unpack(">I", f[14:18])[0] for f in fast.got] == list(range(n))
    slow.poll()
    ss, sf = sw.port_stats(slow.port), sw.port_stats(fast.port)
    assert sf.tx_frames == n and sf.drop_ring_full == 0
    assert ss.drop_ring_full > 0
    assert ss.tx_frames == len(slow.got) and ss.tx_frames + ss.drop_ring_full == n
    assert ss.tx_frames <= 8192 // (4 + 10 + 14 + 4 + len(payload))
    # the slow guest catches up: the switch delivers to it again
    slow.got.clear()
    a.send(eth(slow.mac, a.mac, b"now you read"))
    assert slow.expect(1)[0][14:] == b"now you read"


WINDOW = 96 * 1024  # bytes in flight: less than the destination ring, so none is dropped


def _stream(src: Guest, dst: Guest, frames: list[bytes], sent: list[int]) -> None:
    """Send with a window (the switch drops for a full destination, like a NIC)."""
    total = 0
    for f in frames:
        wait_for(lambda t=total: t - dst.nbytes < WINDOW, what="the window to open")
        src.send(f)
        total += len(f)
    sent.append(total)


@pytest.mark.parametrize("switch_is_server", [True, False], ids=["switch-grants", "switch-maps"])
def test_sha256_of_bytes_crossing_two_vchan_pairs(switch, guests, switch_is_server) -> None:
    sw = switch()
    ring = 256 * 1024
    a = guests(sw, 1, ring=ring, switch_is_server=switch_is_server)
    b = guests(sw, 2, ring=ring, switch_is_server=switch_is_server)
    # learn both, so that the stream is unicast
    a.send(eth(BCAST, a.mac, b"a"))
    b.send(eth(BCAST, b.mac, b"b"))
    a.expect(1), b.expect(1)
    a.digest, b.digest, a.nbytes, b.nbytes = hashlib.sha256(), hashlib.sha256(), 0, 0
    rng = random.Random(7)
    sizes = [60, 64, 1514, 4000, 9018, 32768, fr.ETH_MAX - 14] + [
        rng.randrange(18, 9100) for _ in range(1500)]

    def frames(src: Guest, dst: Guest, seed: int) -> list[bytes]:
        r = random.Random(seed)
        return [eth(dst.mac, src.mac, r.randbytes(s - 14 if s > 14 else 4)) for s in sizes]

    fa, fb = frames(a, b, 1), frames(b, a, 2)
    sent: list[int] = []
    ta = threading.Thread(target=_stream, args=(a, b, fa, sent))
    tb = threading.Thread(target=_stream, args=(b, a, fb, sent))
    ta.start(), tb.start()
    want = sum(map(len, fa))
    try:
        wait_for(lambda: (a.poll(keep=False), b.poll(keep=False), b.nbytes >= want
                          and a.nbytes >= sum(map(len, fb)))[-1], timeout=60,
                 what="both streams to arrive")
    finally:
        ta.join(), tb.join()
    assert b.digest.hexdigest() == hashlib.sha256(b"".join(fa)).hexdigest()
    assert a.digest.hexdigest() == hashlib.sha256(b"".join(fb)).hexdigest()
    sa, sb = sw.port_stats(a.port), sw.port_stats(b.port)
    assert sb.tx_frames == sa.rx_frames == len(fa) + 1 - 1 + 1  # + the learning broadcast
    assert sb.tx_bytes == want + len(eth(BCAST, a.mac, b"a"))
    assert sa.drop_ring_full == sb.drop_ring_full == 0
    acct = sw.accounting()
    assert acct[(1, 2)] == (sb.tx_frames, sb.tx_bytes)
    assert acct[(2, 1)] == (sa.tx_frames, sa.tx_bytes)
    assert set(acct) == {(1, 2), (2, 1)}


def test_accounting_by_origin_and_destination(switch, guests) -> None:
    sw = switch()
    a, b, c = (guests(sw, d) for d in (4, 5, 6))
    f = eth(BCAST, a.mac, b"x" * 100)
    a.send(f)
    b.expect(1), c.expect(1)
    g = eth(a.mac, c.mac, b"y" * 200)
    c.send(g)
    a.expect(1)
    acct = sw.accounting()
    assert acct == {(4, 5): (1, len(f)), (4, 6): (1, len(f)), (6, 4): (1, len(g))}


def test_accounting_forgets_a_domain_with_its_last_port(switch, guests) -> None:
    """A long-lived switch whose guests come and go must not fill its table (1024
    pairs) with gone domains: a domain's pairs go with its last port, the others stay."""
    sw = switch()
    a, b = guests(sw, 4), guests(sw, 5)
    c1, c2 = guests(sw, 6), guests(sw, 6)  # domain 6 has two vifs here
    f = eth(BCAST, a.mac, b"x" * 100)
    a.send(f)
    b.expect(1), c1.expect(1), c2.expect(1)
    g = eth(a.mac, c1.mac, b"y" * 200)
    c1.send(g)
    a.expect(1)
    assert sw.accounting() == {(4, 5): (1, len(f)), (4, 6): (2, 2 * len(f)),
                               (6, 4): (1, len(g))}
    c1.remove()  # domain 6 still has c2: nothing forgotten
    assert sw.accounting() == {(4, 5): (1, len(f)), (4, 6): (2, 2 * len(f)),
                               (6, 4): (1, len(g))}
    c2.remove()
    assert sw.accounting() == {(4, 5): (1, len(f))}
    # hundreds of domains coming and going (each frame flooded to a and b: 2600
    # pairs in all, the table holds 1024): it keeps accounting new pairs
    for d in range(100, 1400):
        x = guests(sw, d)
        x.send(eth(b.mac, x.mac, b"z"))
        a.expect(1), b.expect(1)
        x.remove()
    x = guests(sw, 2000)
    x.send(eth(b.mac, x.mac, b"z" * 10))
    a.expect(1), b.expect(1)
    acct = sw.accounting()
    assert acct[(2000, 5)] == (1, len(eth(b.mac, x.mac, b"z" * 10)))
    assert set(acct) == {(4, 5), (2000, 4), (2000, 5)}


ARP, IP4, IP6 = 0x0806, 0x0800, 0x86DD
ME4, ME6 = "198.18.0.1", "2001:db8::1"


def _ip4(src: str, proto: int = 17, l4: bytes = b"\0" * 8) -> bytes:
    return (bytes([0x45, 0]) + struct.pack(">H", 20 + len(l4)) + b"\0" * 4 + bytes([64, proto])
            + b"\0\0" + ipaddress.ip_address(src).packed + bytes([198, 18, 0, 2]) + l4)


def _arp(sha: str, spa: str) -> bytes:
    return (struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + parse_mac(sha)
            + ipaddress.ip_address(spa).packed + b"\0" * 6 + bytes([198, 18, 0, 2]))


def _ip6(src: str, nh: int, payload: bytes) -> bytes:
    return (struct.pack(">IHBB", 0x60000000, len(payload), nh, 255)
            + ipaddress.ip_address(src).packed + ipaddress.ip_address("ff02::1").packed
            + payload)


def _na(target: str, lla: str | None) -> bytes:
    opt = bytes([2, 1]) + parse_mac(lla) if lla else b""
    return bytes([136, 0, 0, 0, 0x20, 0, 0, 0]) + ipaddress.ip_address(target).packed + opt


def test_anti_spoofing_drops_and_counts(switch, guests) -> None:
    sw = switch()
    a = guests(sw, 1, ips=(ME4, ME6))
    b = guests(sw, 2)
    t = guests(sw, 3, trunk=True)
    other = mac(0x55)
    dhcp = struct.pack(">HHHH", 68, 67, 8, 0)
    cases = [  # (frame, passes)
        (eth(BCAST, other, b"not my mac"), False),
        (eth(BCAST, a.mac, _ip4(ME4), IP4), True),
        (eth(BCAST, a.mac, _ip4("198.18.0.9"), IP4), False),
        (eth(BCAST, a.mac, _ip4("0.0.0.0", l4=dhcp), IP4), True),       # DHCP discover
        (eth(BCAST, a.mac, _ip4("0.0.0.0"), IP4), False),               # other 0.0.0.0
        (eth(BCAST, a.mac, _arp(a.mac, ME4), ARP), True),
        (eth(BCAST, a.mac, _arp(other, ME4), ARP), False),              # ARP sender MAC
        (eth(BCAST, a.mac, _arp(a.mac, "198.18.0.7"), ARP), False),     # ARP sender IP
        (eth(BCAST, a.mac, _arp(a.mac, "0.0.0.0"), ARP), True),         # ARP probe
        (eth(BCAST, a.mac, _arp(a.mac, ME4)[:20], ARP), False),         # truncated ARP
        (eth(BCAST, a.mac, _ip6(ME6, 17, b"\0" * 8), IP6), True),
        (eth(BCAST, a.mac, _ip6("2001:db8::66", 17, b"\0" * 8), IP6), False),
        (eth(BCAST, a.mac, _ip6(ME6, 58, _na(ME6, a.mac)), IP6), True),
        (eth(BCAST, a.mac, _ip6(ME6, 58, _na("2001:db8::66", None)), IP6), False),  # ND target
        (eth(BCAST, a.mac, _ip6(ME6, 58, _na(ME6, other)), IP6), False),  # ND target LLA
        (eth(BCAST, a.mac, _ip6("::", 58, bytes([135]) + b"\0" * 23), IP6), True),  # DAD
        (eth(BCAST, a.mac, _ip6("::", 17, b"\0" * 8), IP6), False),
        (eth(BCAST, a.mac, b"\x00\x05\x08\x00" + _ip4("198.18.0.9"), 0x8100), False),  # VLAN
        (eth(BCAST, a.mac, b"\x00\x05\x08\x00" + _ip4(ME4), 0x8100), True),
    ]
    passed = [f for f, ok in cases if ok]
    for f, _ok in cases:
        a.send(f)
    got = b.expect(len(passed))
    assert got == passed
    assert b.quiet(), [cases.index((f, False)) for f in b.got if (f, False) in cases]
    st = sw.port_stats(a.port)
    assert st.spoofed_source == len(cases) - len(passed) and st.rx_frames == len(cases)
    # a trunk sends with any source, but never with a group address as source
    t.send(eth(BCAST, other, b"for someone downstream"))
    t.send(eth(BCAST, "03:00:00:00:00:01", b"group source"))
    assert len(b.expect(1)) == 1 and b.quiet()
    assert sw.port_stats(t.port).spoofed_source == 1


def test_bad_record_closes_that_port_only(switch, guests) -> None:
    sw = switch()
    a, b, c = (guests(sw, d) for d in (1, 2, 3))
    a.far.write(struct.pack("<I", 300000) + b"\0" * 30)
    r, _, _ = select.select([sw.events_fd()], [], [], 10)
    assert r, "no event for the failed port"
    wait_for(lambda: sw.port_state(a.port) == PortState.BAD_PEER, what="a BAD_PEER")
    [(port, state, reason)] = sw.stopped_ports()
    assert (port, state) == (a.port, PortState.BAD_PEER) and "length 300000" in reason
    assert sw.stopped_ports() == []  # reported once
    assert "longer than the negotiated maximum frame" in sw.port_reason(a.port)
    assert sw.port_stats(a.port).bad_record == 1
    f = eth(BCAST, c.mac, b"the others carry on")
    c.send(f)
    assert b.expect(1) == [f] and a.quiet()
    assert sw.port_stats(a.port).drop_ring_full == 0  # a down: not even tried
    assert sw.port_state(b.port) == PortState.UP and sw.port_reason(b.port) == ""


def test_offload_a_destination_did_not_negotiate_is_fixed_for_it(switch, guests) -> None:
    """A partial checksum goes to a port without feature-csum completed (RFC 1071 over
    csum_start..end; tests/forward/test_switch_offload.py has the IP/TCP/UDP cases and
    GSO); a frame larger than a port's max_frame without GSO cannot be fixed: dropped."""
    sw = switch()
    a = guests(sw, 1)
    plain = guests(sw, 2, negotiated=Negotiated(Features.ALL, Features.NONE, 1514))
    full = guests(sw, 3)
    body = b"\0\0" + b"z" * 98  # the checksum field (at 14 + 20 + 6) is in here
    f = eth(BCAST, a.mac, b"\0" * 20 + b"\0" * 6 + body[:94])
    a.send(f, fr.VnetHdr(flags=fr.F_NEEDS_CSUM, csum_start=34, csum_offset=6))
    assert full.expect(1) == [f]
    got = plain.expect(1)[0]
    assert got[:40] == f[:40] and got[42:] == f[42:]
    words = sum(struct.unpack(f">{(len(got) - 34) // 2}H", got[34:]))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    assert words == 0xFFFF  # ones' complement sum over csum_start..end checks
    assert sw.port_stats(plain.port).offload_fixed == 1
    assert sw.port_stats(plain.port).drop_offload == 0
    big = eth(BCAST, a.mac, b"q" * 3000)
    a.send(big)
    assert full.expect(1) == [big] and plain.quiet()
    assert sw.port_stats(plain.port).drop_too_big == 1


def test_peer_close_is_reported(switch, guests) -> None:
    sw = switch()
    a, b = guests(sw, 1), guests(sw, 2)
    a.send(eth(BCAST, a.mac, b"last words"))
    a.far.close()
    wait_for(lambda: sw.port_state(a.port) == PortState.PEER_CLOSED, what="PEER_CLOSED")
    assert b.expect(1)[0].endswith(b"last words")
    assert sw.port_reason(a.port) == "peer closed the vchan"


def test_tap_port_over_a_seqpacket_socket(switch, guests) -> None:
    sw = switch()
    a = guests(sw, 1)
    app, sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        tp = sw.add_tap(sock.fileno(), mac=mac(0x99))
        assert sw.port_kind(tp) == PortKind.TAP
        vnet = fr.VnetHdr().pack()
        f = eth(a.mac, mac(0x99), b"from the kernel")
        app.send(vnet + f)
        assert a.expect(1) == [f]
        g = eth(mac(0x99), a.mac, b"to the kernel" * 100)
        a.send(g)
        app.settimeout(10)
        assert app.recv(70000) == vnet + g
        # the switch accounts a frame after its write to the TAP: the reader can be first
        wait_for(lambda: (1, 0x7FF0) in sw.accounting(), what="accounting of a -> TAP")
        acct = sw.accounting()
        assert acct[(0x7FF0, 1)] == (1, len(f)) and acct[(1, 0x7FF0)] == (1, len(g))
        sw.remove_port(tp)
    finally:
        app.close()
        sock.close()


def test_remove_port_under_load_while_frames_flow(switch, guests) -> None:
    """Ports come and go (removed, then their vchan memory freed at once) while every
    guest floods; under ASan (test_sanitized.py) a copy touching freed ring memory
    would abort the process."""
    sw = switch()
    stable = [guests(sw, d, ring=32 * 1024) for d in (1, 2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def flood(g: Guest) -> None:
        i = 0
        try:
            while not stop.is_set():
                if not g.try_send(eth(BCAST, g.mac, os.urandom(64) * (1 + i % 20))):
                    g.poll(keep=False)
                i += 1
                g.poll(keep=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flood, args=(g,)) for g in stable]
    for t in threads:
        t.start()
    removed, rounds = 0, int(os.environ.get("NCD_SWITCH_REMOVAL_ROUNDS", "40"))
    try:
        for rnd in range(rounds):
            g = Guest(sw, 10 + rnd % 5, ring=16 * 1024, switch_is_server=rnd % 2 == 0)
            for _ in range(20):
                g.try_send(eth(BCAST, g.mac, b"w" * 500))
                g.poll(keep=False)
            st = sw.remove_port(g.port)
            g.removed = True
            g.port_end.close()  # frees the ring memory right away
            g.far.close()
            assert st.rx_frames <= 20
            removed += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert removed == rounds
    for g in stable:
        assert sw.port_state(g.port) == PortState.UP
        assert sw.port_stats(g.port).rx_frames > 0
    assert sw.info().ports == 2


@pytest.mark.parametrize("where", ["read-ring-prod", "write-ring-cons"])
def test_hostile_ring_index_closes_that_port_only(switch, guests, where) -> None:
    """The peer owns half of every ring: a producer index beyond the ring (the ring the
    switch reads) or a consumer index beyond what was written (the ring it writes)
    stops that port with a reason; the switch and the other ports carry on."""
    sw = switch()
    a, b, c = (guests(sw, d) for d in (1, 2, 3))
    page = a.far.shared_page()  # the switch is a's server: it reads left, writes right
    if where == "read-ring-prod":
        struct.pack_into("<I", page, 4, 10 * 64 * 1024)  # left.prod (seen within 1 s)
    else:
        struct.pack_into("<I", page, 8, 1000)  # right.cons: consumed more than written
        c.send(eth(BCAST, c.mac, b"flood reaches a's ring"))
        b.expect(1)
    wait_for(lambda: sw.port_state(a.port) == PortState.BAD_PEER, what="a BAD_PEER")
    assert "index" in sw.port_reason(a.port), sw.port_reason(a.port)
    assert sw.port_stats(a.port).bad_ring == 1 and sw.port_stats(a.port).bad_record == 0
    f = eth(BCAST, b.mac, b"still switching")
    b.send(f)
    assert c.expect(1) == [f]
    assert sw.port_state(b.port) == sw.port_state(c.port) == PortState.UP


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(min_size=1, max_size=300),                                   # garbage
    st.builds(lambda n, b: struct.pack("<I", n) + b,                        # any length field
              st.integers(0, 2**32 - 1), st.binary(max_size=64)),
    st.builds(lambda p: fr.encode(eth(BCAST, mac(1), p)), st.binary(max_size=2000)),  # good
), min_size=1, max_size=12))
def test_random_bytes_from_a_peer_never_hurt_the_switch(switch, chunks) -> None:
    """Whatever a peer writes into its ring, the switch forwards exactly the valid records
    before the first bad one (as framecodec.parse reads the stream), then stops that port;
    another port keeps working."""
    sw = switch()
    a, b = Guest(sw, 1), Guest(sw, 2)
    try:
        stream = b"".join(chunks)[: 60 * 1024]
        err, recs, _used = fr.parse(stream, ring_size=a.port_end.read_size)
        a.send_raw(stream)
        # a record the switch forwards must also pass anti-spoofing (source = a's MAC)
        want = [f for _h, f in recs if f[6:12] == parse_mac(a.mac)]
        if err not in (fr.Err.OK, fr.Err.INCOMPLETE):
            wait_for(lambda: sw.port_state(a.port) == PortState.BAD_PEER, what="BAD_PEER")
        else:
            wait_for(lambda: sw.port_stats(a.port).rx_frames == len(recs), what="all records")
        assert b.expect(len(want)) == want if want else b.quiet(0.02)
        g = eth(BCAST, b.mac, b"b is fine")
        b.send(g)
        wait_for(lambda: sw.port_stats(b.port).rx_frames == 1, what="b's frame")
        assert sw.port_state(b.port) == PortState.UP
    finally:
        a.close()
        b.close()
