"""Frame pumps on both ends of one vchan between two xensim domains.

dom1 runs the vchan server, dom2 the client (``python -m tests.vchan.test_pump_sim``
is the per-domain helper, see ``main``). Each helper listens on a filesystem
SOCK_SEQPACKET socket and runs its pump on the connection the test makes, so the
test injects and collects frames on both sides from outside the domains.
"""

from __future__ import annotations

import contextlib
import json
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0
BUF = 4 << 20


# ---- the helper that runs inside a domain ------------------------------------------------------


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:  # pragma: no cover - runs in a subprocess
    from ncd.vchan.channel import Vchan, VchanClient, VchanServer
    from ncd.vchan.pump import FramePump
    from ncd.xen.xenstore import XenStore

    role, peer, path, ring, sockpath = argv[0], int(argv[1]), argv[2], int(argv[3]), argv[4]
    xs = XenStore()
    v: Vchan
    if role == "server":
        v = VchanServer.create(xs, peer, path, ring, ring)
    else:
        v = VchanClient.connect(xs, peer, path)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(sockpath)
    lsock.listen(1)
    _emit({"listening": sockpath, "rd": v.read_size, "wr": v.write_size})
    conn, _ = lsock.accept()
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        conn.setsockopt(socket.SOL_SOCKET, opt, BUF)
    deadline = time.monotonic() + TIMEOUT
    while v.is_open() == 2 and time.monotonic() < deadline:
        if select.select([v.fileno()], [], [], 0.1)[0]:
            v.wait()
    pump = FramePump.start(v, conn.fileno())
    _emit({"pumping": True, "open": v.is_open()})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            _emit({**asdict(pump.stats()), "state": pump.state.name})
        elif cmd == "quit":
            break
    pump.stop()
    final = {**asdict(pump.stats()), "state": pump.state.name, "reason": pump.reason}
    pump.close()
    v.close()
    conn.close()
    lsock.close()
    _emit(final)
    return 0


# ---- the test side -------------------------------------------------------------------------------


class Helper:
    def __init__(self, sim, domid: int, args: list[str]) -> None:
        self.domid = domid
        self.proc = subprocess.Popen(
            sim.argv(domid, [sys.executable, "-m", "tests.vchan.test_pump_sim", *args]),
            env=sim.env(domid), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)

    def line(self) -> dict:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        out = self.proc.stdout.readline() if r else ""
        if not out:
            raise AssertionError(f"dom{self.domid} helper gave no answer (rc {self.proc.poll()})")
        return json.loads(out)

    def send(self, cmd: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


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

    def make(ring: int) -> tuple[Helper, Helper, socket.socket, socket.socket]:
        xs_path = f"/local/domain/1/data/pump{ring}"
        s_path, c_path = str(tmp_path / f"s{ring}.sock"), str(tmp_path / f"c{ring}.sock")
        srv = Helper(sim, 1, ["server", "2", xs_path, str(ring), s_path])
        made.append(srv)
        hello = srv.line()
        assert hello["rd"] >= ring and hello["wr"] >= ring
        cli = Helper(sim, 2, ["client", "1", xs_path, str(ring), c_path])
        made.append(cli)
        cli.line()
        ss, cs = connect(s_path), connect(c_path)
        made.extend([ss, cs])
        assert srv.line()["pumping"] and cli.line()["pumping"]
        return srv, cli, ss, cs

    yield make
    for m in reversed(made):
        m.close()


def frame(size: int, seq: int) -> bytes:
    body = struct.pack("<I", seq) + random.Random(seq).randbytes(60)
    return bytes(10) + (body * (size // len(body) + 1))[:size]


def quiesce(srv: Helper, cli: Helper, ab: int, ba: int) -> tuple[dict, dict]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        s, c = srv.send("stats"), cli.send("stats")
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
    fs, fc = srv.send("quit"), cli.send("quit")
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
    cli.proc.kill()
    cli.proc.wait(timeout=10)
    deadline = time.monotonic() + TIMEOUT
    while srv.send("stats")["state"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.send("stats")["state"] == "PEER_CLOSED"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
