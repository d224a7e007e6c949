"""Command sets (tests/domproc.py) for vchan ends run as xensim domains.

:class:`Driver`: one ncd vchan end (``server``/``connect``, ``write``/``read``, ``poke``
the shared page...). :class:`PumpDriver` adds a frame pump between the vchan and a
SOCK_SEQPACKET socket the test connects to (``listen``, ``pump``, ``pump_stats``,
``pump_stop``), so the test injects and collects frames from outside the domain.
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import asdict
from typing import Any

from ncd.vchan.channel import Vchan, VchanClient, VchanError, VchanServer
from ncd.xen.xenstore import XenStore


class Driver:
    def __init__(self) -> None:
        self.xs = XenStore()
        self.v: Vchan | None = None
        self.servers: list[VchanServer] = []

    def _v(self) -> Vchan:
        assert self.v is not None, "no vchan"
        return self.v

    def _pump_events(self, timeout: float) -> None:
        v = self._v()
        if select.select([v.fileno()], [], [], timeout)[0]:
            try:
                v.wait()
            except OSError:
                pass

    def cmd_server(self, peer: str, path: str, rd: str, wr: str) -> dict[str, Any]:
        srv = VchanServer.create(self.xs, int(peer), path, int(rd), int(wr))
        self.cmd_close()  # the driver owns its vchan: the one it replaces is closed
        self.v = srv
        return {"gref": srv.gref, "port": srv.port, "rd": srv.read_size, "wr": srv.write_size}

    def cmd_server_extra(self, peer: str, path: str, rd: str, wr: str) -> dict[str, Any]:
        """Another server kept alongside (for the grant-limit test)."""
        srv = VchanServer.create(self.xs, int(peer), path, int(rd), int(wr))
        self.servers.append(srv)
        return {"count": len(self.servers)}

    def cmd_close_extra(self) -> dict[str, Any]:
        for s in self.servers:
            s.close()
        n, self.servers = len(self.servers), []
        return {"closed": n}

    def cmd_connect(self, peer: str, path: str) -> dict[str, Any]:
        cli = VchanClient.connect(self.xs, int(peer), path)
        self.cmd_close()
        self.v = cli
        return {"rd": self.v.read_size, "wr": self.v.write_size}

    def cmd_wait_open(self, timeout: str = "10") -> dict[str, Any]:
        deadline = time.monotonic() + float(timeout)
        while self._v().is_open() == 2 and time.monotonic() < deadline:
            self._pump_events(0.05)
        return {"open": self._v().is_open()}

    def cmd_write(self, n: str, timeout: str = "10") -> dict[str, Any]:
        data = memoryview(bytes(range(256)) * (int(n) // 256 + 1))[: int(n)]
        deadline = time.monotonic() + float(timeout)
        while data and time.monotonic() < deadline:
            data = data[self._v().write(data):]
            if data:
                self._pump_events(0.05)
        return {"left": len(data)}

    def cmd_read(self, n: str, timeout: str = "10") -> dict[str, Any]:
        want, got = int(n), bytearray()
        deadline = time.monotonic() + float(timeout)
        while len(got) < want and time.monotonic() < deadline:
            got += self._v().read(want - len(got))
            if len(got) < want:
                self._pump_events(0.05)
        return {"got": len(got), "ok_data": bytes(got) == (bytes(range(256)) * (want // 256 + 1))[
            : len(got)]}

    def cmd_poke(self, off: str, hexdata: str) -> dict[str, Any]:
        data = bytes.fromhex(hexdata)
        page = self._v().shared_page()
        o = int(off)
        page[o : o + len(data)] = data
        return {}

    def cmd_peek(self) -> dict[str, Any]:
        return {"page": bytes(self._v().shared_page()[:64]).hex()}

    def cmd_exercise(self, seconds: str) -> dict[str, Any]:
        """Keep using the channel; report what happened (the point: no crash, no hang)."""
        v = self._v()
        errors: set[int] = set()
        end = time.monotonic() + float(seconds)
        calls = 0
        while time.monotonic() < end:
            for fn in (lambda: v.write(b"q" * 5000), lambda: v.read(70000), v.data_ready,
                       v.buffer_space, v.is_open):
                calls += 1
                try:
                    fn()
                except VchanError as exc:
                    errors.add(exc.errno or 0)
            self._pump_events(0.001)
        return {"calls": calls, "errnos": sorted(errors), "open": v.is_open(),
                "reason": v.close_reason, "stats": v.stats()}

    def cmd_status(self) -> dict[str, Any]:
        v = self._v()
        return {"open": v.is_open(), "reason": v.close_reason, "stats": v.stats()}

    def cmd_wait_closed(self, timeout: str = "10") -> dict[str, Any]:
        deadline = time.monotonic() + float(timeout)
        while self._v().is_open() and time.monotonic() < deadline:
            self._pump_events(0.05)
        return {"open": self._v().is_open()}

    def cmd_close(self) -> dict[str, Any]:
        if self.v is not None:
            self.v.close()
            self.v = None
        return {}

    def cmd_break_evtchn(self) -> dict[str, Any]:
        """Close the event channel under the vchan: every eventfd of this process (xensim's
        notify is one write() on one) becomes /dev/null opened read-only, so the next
        notify fails (EBADF)."""
        broken = 0
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            for name in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{name}")
                except OSError:
                    continue
                if target == "anon_inode:[eventfd]":
                    os.dup2(null, int(name))
                    broken += 1
        finally:
            os.close(null)
        return {"broken": broken}

    def cmd_exists(self, path: str) -> dict[str, Any]:
        return {"exists": self.xs.exists(path)}

    def close(self) -> None:
        self.cmd_close()
        self.cmd_close_extra()
        self.xs.close()


class PumpDriver(Driver):
    """A :class:`Driver` whose vchan is pumped to and from a socket the test connects to."""

    BUF = 4 << 20

    def __init__(self) -> None:
        super().__init__()
        self.lsock: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.pump: Any = None

    def cmd_listen(self, sockpath: str) -> dict[str, Any]:
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.lsock.bind(sockpath)
        self.lsock.listen(1)
        return {"listening": sockpath}

    def cmd_pump(self, timeout: str = "20") -> dict[str, Any]:
        """Accept the test's connection, wait for the peer, pump between the two."""
        from ncd.vchan.pump import FramePump

        assert self.lsock is not None, "listen first"
        self.lsock.settimeout(float(timeout))
        self.conn, _ = self.lsock.accept()
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            self.conn.setsockopt(socket.SOL_SOCKET, opt, self.BUF)
        self.cmd_wait_open(timeout)
        self.pump = FramePump.start(self._v(), self.conn.fileno())
        return {"pumping": True, "open": self._v().is_open()}

    def cmd_pump_stats(self) -> dict[str, Any]:
        return {**asdict(self.pump.stats()), "state": self.pump.state.name}

    def cmd_pump_stop(self) -> dict[str, Any]:
        """Stop the pump; its final counters, state and reason."""
        self.pump.stop()
        final = {**asdict(self.pump.stats()), "state": self.pump.state.name,
                 "reason": self.pump.reason}
        self._close_pump()
        return final

    def _close_pump(self) -> None:
        if self.pump is not None:
            self.pump.close()
            self.pump = None
        for s in (self.conn, self.lsock):
            if s is not None:
                s.close()
        self.conn = self.lsock = None

    def close(self) -> None:
        if self.pump is not None:
            self.pump.stop()
        self._close_pump()
        super().close()
