"""The pump's source lock (anti-spoofing on frames from the guest, ring -> fd): the one
check the switch applies to its ports (cext/forward/antispoof.c), on a pump."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ncd.vchan.channel import local_pair
from ncd.vchan.pump import FramePump
from tests import framecodec as fr
from tests.forward import pkt

from .test_pump_local import End, settled

GUEST = "00:16:3e:00:00:05"
OTHER = "00:16:3e:00:00:99"
BCAST = "ff:ff:ff:ff:ff:ff"
IP = "198.18.0.5"
IP6 = "2001:db8::5"
V0 = fr.VnetHdr().pack()


@pytest.fixture
def make_pair() -> Iterator:
    made: list[End] = []

    def make(ring: int = 256 * 1024, start: bool = True) -> tuple[End, End]:
        a, b = (End(v) for v in local_pair(ring, ring))
        made.extend([a, b])
        if start:
            a.start()
            b.start()
        return a, b

    yield make
    for e in made:
        e.close()


def locked(make_pair, **lock: object) -> tuple[End, End]:
    """a = the backend (its pump locked: frames from b, the guest, are checked)."""
    a, b = make_pair(start=False)
    a.pump = FramePump.start(a.vchan, a.pump_sock.fileno(), **lock)  # type: ignore[arg-type]
    b.start()
    return a, b


def v4(src_mac: str, src_ip: str, size: int = 0) -> bytes:
    body = pkt.udp(1000, 2000, b"u" * size)
    return pkt.ether(BCAST, src_mac, 0x0800, pkt.ipv4(src_ip, "198.18.0.1", pkt.UDP, body))


def arp(sha: str, spa: str, src_mac: str = GUEST) -> bytes:
    return pkt.ether(BCAST, src_mac, 0x0806, pkt.arp(sha, spa, "198.18.0.1"))


def v6(src_mac: str, src_ip: str) -> bytes:
    return pkt.ether(BCAST, src_mac, 0x86DD, pkt.ipv6(src_ip, "2001:db8::1", pkt.UDP,
                                                      pkt.udp(1, 2, b"six")))


def send_all(b: End, frames: list[bytes]) -> None:
    for f in frames:
        b.app.send(V0 + f)


def recv(a: End) -> bytes:
    return a.app.recv(fr.ETH_MAX + 100)


def quiet(a: End) -> bool:
    a.app.settimeout(0.2)
    try:
        a.app.recv(fr.ETH_MAX + 100)
        return False
    except TimeoutError:
        return True
    finally:
        a.app.settimeout(10.0)


def test_lock_drops_foreign_mac_ip_and_arp_and_passes_good_frames_byte_exact(make_pair) -> None:
    a, b = locked(make_pair, mac=GUEST, ips=[IP, IP6])
    good = [v4(GUEST, IP), arp(GUEST, IP), arp(GUEST, "0.0.0.0"), v6(GUEST, IP6),
            v4(GUEST, IP, 3000), v4(GUEST, IP, 60000),
            pkt.ether(BCAST, GUEST, 0x88B5, b"x" * 40)]
    bad = [v4(OTHER, IP),                       # foreign source MAC
           v4(GUEST, "198.18.0.6"),             # wrong IPv4 source
           arp(OTHER, IP),                      # wrong ARP sender hardware address
           arp(GUEST, "198.18.0.7"),            # wrong ARP sender protocol address
           v6(GUEST, "2001:db8::6"),            # wrong IPv6 source
           pkt.ether(BCAST, "01:00:5e:00:00:01", 0x88B5, b"g" * 40),  # group source
           v4(OTHER, IP, 60000)]                # foreign MAC, large frame
    # interleaved: each good frame must arrive, in order, and only those
    for i, g in enumerate(good):
        send_all(b, [bad[i % len(bad)], g])
    send_all(b, bad)
    for g in good:
        assert recv(a) == V0 + g
    assert quiet(a)
    sa, _ = settled(a, b, 0, len(good))
    assert sa.spoofed_source == len(good) + len(bad)
    assert sa.rx_frames == len(good)
    assert sa.drops()["spoofed_source"] == sa.spoofed_source
    # the tx direction (fd -> ring) is not locked: the backend sends what it likes
    a.app.send(V0 + v4(OTHER, "203.0.113.9"))
    assert b.app.recv(70000) == V0 + v4(OTHER, "203.0.113.9")


def test_trunk_passes_every_unicast_source(make_pair) -> None:
    a, b = locked(make_pair, mac=GUEST, trunk=True, ips=[IP])
    frames = [v4(OTHER, "203.0.113.9"), arp(OTHER, "203.0.113.9", OTHER), v6(OTHER, "::1"),
              v4(OTHER, IP, 20000)]
    send_all(b, frames)
    for f in frames:
        assert recv(a) == V0 + f
    send_all(b, [pkt.ether(BCAST, "03:00:00:00:00:01", 0x88B5, b"g" * 40)])
    assert quiet(a)
    assert settled(a, b, 0, len(frames))[0].spoofed_source == 1


def test_no_lock_by_default(make_pair) -> None:
    a, b = make_pair()
    frames = [v4(OTHER, "203.0.113.9"), pkt.ether(BCAST, "01:00:00:00:00:01", 0x88B5, b"g" * 40)]
    send_all(b, frames)
    for f in frames:
        assert recv(a) == V0 + f
    assert settled(a, b, 0, len(frames))[0].spoofed_source == 0


@pytest.mark.parametrize("ring", [4096])
def test_locked_records_straddling_the_ring_end(make_pair, ring: int) -> None:
    """The checked head (private copy) and the rest (from the ring) are cut at every
    position relative to the ring's end."""
    for k in range(0, 300, 7):
        a, b = make_pair(ring, start=False)
        filler = b"f" * (ring - k)
        assert b.vchan.write(filler) == len(filler) and a.vchan.read(len(filler)) == filler
        a.pump = FramePump.start(a.vchan, a.pump_sock.fileno(), mac=GUEST, ips=[IP])
        b.start()
        for size in (0, 50, 200, 700):
            g, x = v4(GUEST, IP, size), v4(GUEST, "198.18.0.8", size)
            send_all(b, [x, g])
            assert recv(a) == V0 + g
        for e in (a, b):
            e.close()


def test_lock_config_is_validated(make_pair) -> None:
    a, _ = make_pair(start=False)
    with pytest.raises(ValueError):
        FramePump.start(a.vchan, a.pump_sock.fileno(), mac="01:00:00:00:00:01")
    with pytest.raises(ValueError):
        FramePump.start(a.vchan, a.pump_sock.fileno(), mac=GUEST,
                        ips=[f"198.18.1.{i}" for i in range(17)])
    with pytest.raises(ValueError):
        FramePump.start(a.vchan, a.pump_sock.fileno(), ips=[IP])
