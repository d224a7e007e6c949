"""The switch with real TAP ports (IFF_VNET_HDR): two network namespaces, a TAP each,
both ports of one switch, plus a vchan guest on a third port. Ping and a TCP transfer
(with TSO/checksum offload: 64 KiB GSO frames cross) go TAP -> switch -> TAP, checksums
compared; the guest sees the ARP broadcasts but none of the learned unicast traffic."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from ncd.switch import DOMID_SELF, Switch
from tests.vchan.test_pump_tap import (
    CLIENT,
    SERVER,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    Side,
    pytestmark,  # noqa: F401 - skipped without /dev/net/tun
)

from .helpers import Guest


@pytest.fixture
def world() -> Iterator[tuple[Switch, Side, Side, Guest, int, int]]:
    offload = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    made: list = []
    sw = Switch()
    try:
        a = Side("sa", "198.18.0.1", offload)
        made.append(a)
        b = Side("sb", "198.18.0.2", offload)
        made.append(b)
        pa = sw.add_tap(a.fd, trunk=True)
        pb = sw.add_tap(b.fd, trunk=True)
        g = Guest(sw, 7, ring=256 * 1024)
        yield sw, a, b, g, pa, pb
        g.close()
    finally:
        sw.close()
        for m in reversed(made):
            m.close()


def test_ping_and_tcp_cross_the_switch_between_taps(world) -> None:
    sw, a, b, g, pa, pb = world
    out = a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", b.addr)
    assert " 0% packet loss" in out
    g.poll()
    arps = [f for f in g.got if f[12:14] == b"\x08\x06"]
    assert arps and all(f[:6] == b"\xff" * 6 for f in arps)  # the flooded ARP request
    assert not any(f[12:14] == b"\x08\x00" for f in g.got)  # no unicast IPv4 leaked
    g.got.clear()

    server = b.popen(sys.executable, "-c", SERVER)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        total = 32 << 20
        t0 = time.monotonic()
        sent = a.run(sys.executable, "-c", CLIENT, str(total)).split()
        elapsed = time.monotonic() - t0
        got = server.communicate(timeout=60)[0].split()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert sent == got and int(got[0]) == total
    sa, sb = sw.port_stats(pa), sw.port_stats(pb)
    avg = sa.rx_bytes / max(sa.rx_frames, 1)
    print(f"TAP -> switch -> TAP: {total / elapsed / 1e6:.0f} MB/s, {sa.rx_frames} frames, "
          f"avg {avg:.0f} B")
    assert avg > 1514, "GSO super-frames should have crossed the switch"
    assert sa.bad_record == sb.bad_record == sb.drop_fd_write == sb.drop_offload == 0
    assert sb.tx_frames >= sa.rx_frames - sa.flooded - sa.filtered_same_port - 10
    g.poll()
    assert not any(f[12:14] == b"\x08\x00" for f in g.got)
    acct = sw.accounting()
    assert acct[(DOMID_SELF, DOMID_SELF)][1] > total
