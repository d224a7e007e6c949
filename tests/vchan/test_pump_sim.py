"""Frame pumps on both ends of one vchan between two xensim domains.

dom1 runs the vchan server, dom2 the client (each a ``tests.vchan.simdriver.PumpDriver``
command set). Each listens on a filesystem SOCK_SEQPACKET socket and runs its pump on
the connection the test makes, so the test injects and collects frames on both sides
from outside the domains.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.domproc import DomProc

from .simhelp import peer

TIMEOUT = 20.0
BUF = 4 << 20
PUMP = "tests.vchan.simdriver:PumpDriver"


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, BUF)
    s.settimeout(TIMEOUT)
    s.connect(path)
    return s


@pytest.fixture
def pumped(sim, tmp_path: Path) -> Iterator:
    """(srv_helper, cli_helper, srv_sock, cli_sock) for rings of `ring` bytes."""
    made: list = []

    def make(ring: int) -> tuple[DomProc, DomProc, socket.socket, socket.socket]:
        xs_path = f"/local/domain/1/data/pump{ring}"
        s_path, c_path = str(tmp_path / f"s{ring}.sock"), str(tmp_path / f"c{ring}.sock")
        srv = peer(sim, 1, spec=PUMP)
        made.append(srv)
        hello = srv.call(f"server 2 {xs_path} {ring} {ring}")
        assert hello["rd"] >= ring and hello["wr"] >= ring
        srv.call(f"listen {s_path}")
        cli = peer(sim, 2, spec=PUMP)
        made.append(cli)
        cli.call(f"connect 1 {xs_path}")
        cli.call(f"listen {c_path}")
        ss, cs = connect(s_path), connect(c_path)
        made.extend([ss, cs])
        assert srv.call("pump")["pumping"] and cli.call("pump")["pumping"]
        return srv, cli, ss, cs

    yield make
    for m in reversed(made):
        m.close()


def frame(size: int, seq: int) -> bytes:
    body = struct.pack("<I", seq) + random.Random(seq).randbytes(60)
    return bytes(10) + (body * (size // len(body) + 1))[:size]


def quiesce(srv: DomProc, cli: DomProc, ab: int, ba: int) -> tuple[dict, dict]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        s, c = srv.call("pump_stats"), cli.call("pump_stats")
        if (c["rx_frames"], s["rx_frames"]) == (ab, ba) or time.monotonic() > deadline:
            return s, c
        time.sleep(0.02)


SIZES = [60, 64, 128, 1500, 1514, 4096, 9018, 32768, 65535, 65536, 65664]


@pytest.mark.parametrize("ring", [128 * 1024, 512 * 1024])
def test_frames_60_to_64k_both_ways_between_domains(pumped, ring: int) -> None:
    srv, cli, ss, cs = pumped(ring)
    for i, size in enumerate(SIZES):
        ss.send(frame(size, i))
        assert cs.recv(BUF) == frame(size, i)
        cs.send(frame(size, 100 + i))
        assert ss.recv(BUF) == frame(size, 100 + i)
    s, c = quiesce(srv, cli, len(SIZES), len(SIZES))
    total = sum(SIZES)
    assert s["tx_frames"] == c["rx_frames"] == c["tx_frames"] == s["rx_frames"] == len(SIZES)
    assert s["tx_bytes"] == c["rx_bytes"] == c["tx_bytes"] == s["rx_bytes"] == total
    assert s["bad_record"] == c["bad_record"] == 0
    assert s["notify_sent"] > 0 and c["notify_recv"] > 0
    fs, fc = srv.call("pump_stop"), cli.call("pump_stop")
    assert fs["state"] == "STOPPED" and fc["state"] in ("STOPPED", "PEER_CLOSED")


def test_sustained_mixed_frames_both_ways(pumped) -> None:
    srv, cli, ss, cs = pumped(256 * 1024)
    rnd = random.Random(7)
    n = 3000
    a = [frame(rnd.choice([60, 590, 1514, 9000, 65535]), i) for i in range(n)]
    b = [frame(rnd.choice([64, 1500, 65664]), 10**6 + i) for i in range(n)]
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    errors: list[BaseException] = []

    def run(fn, *args) -> threading.Thread:
        def body() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                errors.append(exc)
        t = threading.Thread(target=body)
        t.start()
        return t

    def send_all(sock: socket.socket, frames: list[bytes]) -> None:
        for f in frames:
            sock.send(f)

    def recv_n(sock: socket.socket, out: list[bytes], count: int) -> None:
        for _ in range(count):
            out.append(sock.recv(BUF))

    ts = [run(send_all, ss, a), run(send_all, cs, b), run(recv_n, cs, got_a, n),
          run(recv_n, ss, got_b, n)]
    for t in ts:
        t.join(120)
    assert not errors, errors
    assert got_a == a and got_b == b
    s, c = quiesce(srv, cli, n, n)
    assert s["tx_frames"] == c["rx_frames"] == n and c["tx_frames"] == s["rx_frames"] == n
    assert s["tx_bytes"] == c["rx_bytes"] == sum(len(f) - 10 for f in a)
    assert c["tx_bytes"] == s["rx_bytes"] == sum(len(f) - 10 for f in b)
    for st in (s, c):
        assert st["bad_record"] == 0 and st["drop_fd_write"] == 0 and st["drop_too_big"] == 0
        # batching + suppression: far fewer notifications than frames
        assert st["notify_sent"] < 2 * n


def test_peer_helper_killed_ends_pump_as_peer_closed(pumped) -> None:
    srv, cli, ss, cs = pumped(128 * 1024)
    ss.send(frame(1000, 1))
    assert cs.recv(BUF) == frame(1000, 1)
    cli.kill()
    deadline = time.monotonic() + TIMEOUT
    while srv.call("pump_stats")["state"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.call("pump_stats")["state"] == "PEER_CLOSED"

