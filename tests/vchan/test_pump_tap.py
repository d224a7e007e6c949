"""The pump with real TAP devices (IFF_VNET_HDR): two network namespaces, one TAP
each, a pump pair over an in-memory vchan between them; ping and a TCP transfer with
checksums cross, with TSO/checksum offload on so that 64 KiB GSO frames cross too."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ncd.features import ETH_MAX, Features, Negotiated
from ncd.vchan.channel import local_pair
from ncd.vchan.pump import FramePump, PumpState

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun"
)


def open_tap(name: str, offload: int) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
    except OSError:
        os.close(fd)
        raise
    return fd


def sh(*cmd: str, timeout: float = 30) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


class Side:
    def __init__(self, tag: str, addr: str, offload: int) -> None:
        self.ns = f"ncdpt{os.getpid()}{tag}"
        self.dev = f"ncdpt{tag}{os.getpid() % 100000}"
        self.addr = addr
        sh("ip", "netns", "add", self.ns)
        self.fd = -1
        try:
            self.fd = open_tap(self.dev, offload)
            sh("ip", "link", "set", self.dev, "netns", self.ns)
            sh("ip", "-n", self.ns, "addr", "add", f"{addr}/24", "dev", self.dev)
            sh("ip", "-n", self.ns, "link", "set", "lo", "up")
            sh("ip", "-n", self.ns, "link", "set", self.dev, "up")
        except BaseException:
            self.close()
            raise

    def run(self, *cmd: str, timeout: float = 60) -> str:
        return sh("ip", "netns", "exec", self.ns, *cmd, timeout=timeout)

    def popen(self, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # a non-persistent TAP disappears with its last fd
            self.fd = -1
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.fixture
def taps() -> Iterator:
    made: list = []

    def make(offload: int, ring: int = 512 * 1024) -> tuple[Side, Side, FramePump, FramePump]:
        a = Side("a", "198.18.0.1", offload)
        made.append(a)
        b = Side("b", "198.18.0.2", offload)
        made.append(b)
        srv, cli = local_pair(ring, ring)
        made.extend([srv, cli])
        pa = FramePump.start(srv, a.fd)
        made.append(pa)
        pb = FramePump.start(cli, b.fd)
        made.append(pb)
        return a, b, pa, pb

    yield make
    for m in reversed(made):  # pumps first, then vchans, then TAPs and namespaces
        m.close()


def test_ping_crosses_tap_pumps(taps) -> None:
    a, b, pa, pb = taps(0)
    out = a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", b.addr)
    assert " 0% packet loss" in out
    sa, sb = pa.stats(), pb.stats()
    assert sa.tx_frames >= 4 and sb.tx_frames >= 4  # ARP + echo requests / replies
    assert sa.bad_record == sb.bad_record == 0
    assert pa.state == pb.state == PumpState.RUNNING


SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.2", 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""

CLIENT = """
import hashlib, random, socket, sys
total = int(sys.argv[1]); data = random.Random(5).randbytes(1 << 20); h = hashlib.sha256()
c = socket.create_connection(("198.18.0.2", 5201), timeout=30); sent = 0
while sent < total:
    chunk = data[: min(len(data), total - sent)]
    c.sendall(chunk); h.update(chunk); sent += len(chunk)
c.close(); print(sent, h.hexdigest(), flush=True)
"""


@pytest.mark.parametrize("offload", [0, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN],
                         ids=["no-offload", "csum+tso"])
def test_tcp_transfer_with_checksum(taps, offload: int) -> None:
    a, b, pa, pb = taps(offload)
    a.run("ping", "-c", "1", "-W", "2", b.addr)  # neighbours resolved
    server = b.popen(sys.executable, "-c", SERVER)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        total = 64 << 20
        t0 = time.monotonic()
        sent = a.run(sys.executable, "-c", CLIENT, str(total)).split()
        elapsed = time.monotonic() - t0
        got = server.communicate(timeout=60)[0].split()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert sent == got and int(got[0]) == total
    sa = pa.stats()
    avg = sa.tx_bytes / max(sa.tx_frames, 1)
    print(f"{total / elapsed / 1e6:.0f} MB/s, {sa.tx_frames} frames, avg {avg:.0f} B")
    assert sa.drop_tx_offload == 0 and sa.drop_tx_truncated == 0
    assert pb.stats().bad_record == 0 and pb.stats().drop_fd_write == 0
    if offload:
        assert avg > 1514, "GSO super-frames should have crossed the pump"
    else:
        assert avg <= 1514


def test_gso_frames_rejected_when_peer_did_not_advertise(taps) -> None:
    """A pump told the peer takes no GSO drops the TAP's super-frames (counted), never
    sending a record the peer would refuse."""
    offload = TUN_F_CSUM | TUN_F_TSO4
    a = Side("c", "198.18.0.1", offload)
    b = Side("d", "198.18.0.2", 0)
    srv, cli = local_pair()
    neg = Negotiated(Features.ALL, Features.CSUM, ETH_MAX)
    pa = FramePump.start(srv, a.fd, neg)
    pb = FramePump.start(cli, b.fd, Negotiated(Features.CSUM, Features.ALL, ETH_MAX))
    try:
        a.run("ping", "-c", "1", "-W", "2", b.addr)
        server = b.popen(sys.executable, "-c", SERVER)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = a.popen(sys.executable, "-c", CLIENT, str(8 << 20))
        time.sleep(2)
        client.kill()
        server.kill()
        client.wait()
        server.wait()
        assert pa.stats().drop_tx_offload > 0
        assert pb.state == PumpState.RUNNING and pb.stats().bad_record == 0
    finally:
        for m in (pa, pb, srv, cli, a, b):
            m.close()


def test_tap_down_counts_tap_not_ready(taps) -> None:
    a, b, pa, pb = taps(0)
    b.run("ip", "link", "set", b.dev, "down")
    subprocess.run(["ip", "netns", "exec", a.ns, "ping", "-c", "2", "-i", "0.2", "-W", "1",
                    b.addr], capture_output=True, timeout=30)
    deadline = time.monotonic() + 5
    while pb.stats().drop_tap_not_ready == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pb.stats().drop_tap_not_ready > 0
    assert pb.state == PumpState.RUNNING  # a down TAP is not fatal: frames are dropped
    b.run("ip", "link", "set", b.dev, "up")
    out = a.run("ping", "-c", "2", "-i", "0.2", "-W", "2", b.addr)
    assert " 0% packet loss" in out
