"""Real TAPs inside a network namespace the test creates (and removes)."""

from __future__ import annotations

import os
import select
import struct
import subprocess
import time
from contextlib import nullcontext

import pytest
from pyroute2 import IPRoute

from ncd import tap
from ncd.features import (
    TUN_F_CSUM,
    TUN_F_USO4,
    TUN_F_USO6,
    Features,
    tun_offload_flags,
    usable,
)
from ncd.tap import TapError
from tests.netns import in_netns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun"
)

FEATS = ("tx-checksum-ip-generic", "tx-tcp-segmentation", "tx-tcp6-segmentation")
TSO = tun_offload_flags(Features.CSUM | Features.GSO_TCPV4 | Features.GSO_TCPV6)


@pytest.fixture
def netns():
    name = f"ncdtap{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert name not in [line.split()[0] for line in listed.splitlines() if line.strip()]


def links(netns):
    with in_netns(netns) if netns else nullcontext(), IPRoute() as ipr:
        return {m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}


def test_tap_lives_in_the_namespace_and_goes_with_its_fd(netns):
    host_before = links(None)
    with in_netns(netns):
        t = tap.open_tap("nctest0")
    try:
        assert "nctest0" in links(netns)
        assert "nctest0" not in links(None)
        assert links(None) == host_before
    finally:
        t.close()
    assert "nctest0" not in links(netns)


def test_offloads_set_explicitly_every_open(netns):
    with in_netns(netns):
        t = tap.open_tap("nctest0", offloads=TSO)
        t.set_persist(True)
        feats = tap.active_features("nctest0")
        assert all(feats[f] for f in FEATS), feats
        t.close()
        assert "nctest0" in links(netns)  # persistent: survives its fd, offloads too
        assert all(tap.active_features("nctest0")[f] for f in FEATS)
        # re-open asking for none: what the earlier owner left must not stick
        t = tap.open_tap("nctest0")  # default: none
        feats = tap.active_features("nctest0")
        assert not any(feats[f] for f in FEATS), feats
        t.close()
        t = tap.open_tap("nctest0", offloads=tun_offload_flags(Features.CSUM | Features.GSO_TCPV4))
        feats = tap.active_features("nctest0")
        assert feats["tx-checksum-ip-generic"] and feats["tx-tcp-segmentation"]
        assert not feats["tx-tcp6-segmentation"]
        t.close()
        assert tap.delete("nctest0") is True
        assert "nctest0" not in links(netns)
        assert tap.delete("nctest0") is False
        with pytest.raises(TapError, match="nctest0: no such interface"):
            tap.delete("nctest0", missing_ok=False)


def test_tap_probe_refuses_unknown_offloads_and_restores(netns) -> None:
    # the probe behind ncd.features.usable: EINVAL for flags this kernel does not know
    with in_netns(netns), tap.open_tap("ncprobe0") as t:
        t.set_offloads(TUN_F_CSUM)
        assert not t.accepts_offloads(TUN_F_CSUM | 1 << 20)  # no such TUN_F_ bit
        assert t.offloads == TUN_F_CSUM
        feats = tap.active_features("ncprobe0")
        assert feats["tx-checksum-ip-generic"] and not feats["tx-tcp-segmentation"]
        uso = t.accepts_offloads(TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6)
        assert tap.active_features("ncprobe0") == feats  # restored
        got = usable(Features.ALL, t.accepts_offloads)
        assert got == (Features.ALL if uso else Features.ALL & ~Features.GSO_UDP_L4)
        if uso:  # Linux >= 6.2: what is negotiated is what the TAP is set to
            t.set_offloads(tun_offload_flags(got))
            assert tap.active_features("ncprobe0")["tx-udp-segmentation"]


def test_mac_mtu_up_bridge(netns):
    with in_netns(netns), IPRoute() as ipr:
        ipr.link("add", ifname="ncbr0", kind="bridge")
    with in_netns(netns), tap.open_tap("ncvif1.0"):
        tap.configure("ncvif1.0", mac="00:16:3e:0a:0b:0c", mtu=9000, bridge="ncbr0")
        info = tap.link_info("ncvif1.0")
        assert (info.mac, info.mtu, info.up, info.master) == (
            "00:16:3e:0a:0b:0c",
            9000,
            True,
            "ncbr0",
        )
        tap.configure("ncvif1.0", up=False)
        assert tap.link_info("ncvif1.0").up is False
        with pytest.raises(TapError, match="bridge nobr does not exist"):
            tap.configure("ncvif1.0", bridge="nobr")
        with pytest.raises(TapError, match="ncvif1.0: set mac/mtu"):
            tap.configure("ncvif1.0", mtu=20)


def test_errors_are_named(netns):
    with pytest.raises(OSError, match="netns nonexistent-ns"), in_netns("nonexistent-ns"):
        tap.open_tap("nctest0")
    with in_netns(netns):
        with pytest.raises(ValueError, match="bad interface name"):
            tap.open_tap("x" * 16)
        with pytest.raises(TapError, match="nothere: no such interface"):
            tap.configure("nothere")
        # an existing non-TAP device of that name cannot be opened as a TAP
        with IPRoute() as ipr:
            ipr.link("add", ifname="ncnottap", kind="bridge")
        with pytest.raises(TapError, match="TUNSETIFF ncnottap: Invalid argument"):
            tap.open_tap("ncnottap")


# ------------------------------------------------------------ traffic


def ip_checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth_ipv4_tcp(payload: bytes, src_mac: bytes, dst_mac: bytes) -> bytes:
    # a valid IPv4 header: a bridge with br_netfilter drops bad ones
    fields = [
        0x45,
        0,
        40 + len(payload),
        1,
        0x4000,
        64,
        6,
        0,
        bytes([198, 18, 0, 1]),
        bytes([198, 18, 0, 2]),
    ]
    fields[7] = ip_checksum(struct.pack("!BBHHHBBH4s4s", *fields))
    ip = struct.pack("!BBHHHBBH4s4s", *fields)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5001, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp + payload


def read_until(fd: int, want, timeout: float = 3.0) -> list[bytes]:
    """Read frames from a non-blocking TAP fd until want(frames) or timeout."""
    got: list[bytes] = []
    end = time.monotonic() + timeout
    while not want(got):
        left = end - time.monotonic()
        assert left > 0, f"timed out; got {len(got)} frames"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            data = os.read(fd, 70000)
            # skip the kernel's own chatter (IPv6 RS/MLD from the bridge ports)
            if data[10 + 12 : 10 + 14] == b"\x08\x00" and data[10 + 23] == 6:
                got.append(data)
    return got


def test_frames_cross_a_bridge_between_two_taps_with_gso(netns):
    with in_netns(netns), IPRoute() as ipr:
        ipr.link("add", ifname="ncbr0", kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname="ncbr0")[0], state="up")
    with in_netns(netns):
        a = tap.open_tap("nca", offloads=TSO)
        b = tap.open_tap("ncb", offloads=TSO)  # accepts GSO
        c = tap.open_tap("ncc")  # no offloads: the kernel must segment
    try:
        for t, mac in (
            (a, "00:16:3e:00:00:0a"),
            (b, "00:16:3e:00:00:0b"),
            (c, "00:16:3e:00:00:0c"),
        ):
            with in_netns(netns):
                tap.configure(t.name, mac=mac, bridge="ncbr0")
        src, dst = bytes.fromhex("00163e0000aa"), bytes.fromhex("00163e0000bb")  # unknown: flood
        # 1. a small frame, no offload: arrives byte for byte on both other ports
        small = eth_ipv4_tcp(b"hello ncd " * 10, src, dst)
        os.write(a.fileno(), bytes(10) + small)
        for t in (b, c):
            (frame,) = read_until(t.fileno(), lambda g: len(g) >= 1)
            assert frame[:10] == bytes(10)
            assert frame[10:] == small
        # 2. a 4000-byte TSO frame: b (TSO on) gets it whole with its GSO header,
        #    c (offloads off) gets MSS-sized segments carrying the same bytes
        payload = bytes(range(256)) * 15 + bytes(160)
        big = eth_ipv4_tcp(payload, src, dst)
        hdr = struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16)  # NEEDS_CSUM, GSO_TCPV4
        os.write(a.fileno(), hdr + big)
        (whole,) = read_until(b.fileno(), lambda g: len(g) >= 1)
        flags, gso_type, _, gso_size, _, _ = struct.unpack_from("<BBHHHH", whole)
        assert (gso_type, gso_size) == (1, 1448)
        assert whole[10 + 54 :] == payload
        segs = read_until(c.fileno(), lambda g: sum(len(s) - 64 for s in g) >= len(payload))
        assert len(segs) == 3
        assert all(s[1] == 0 for s in segs)  # no GSO towards a non-TSO reader
        assert b"".join(s[64:] for s in segs) == payload
    finally:
        for t in (a, b, c):
            t.close()
    assert not {"nca", "ncb", "ncc"} & links(netns)
