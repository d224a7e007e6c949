"""The world a hostile-backend module attacks: ``ncd frontend`` in guest 1 with devid 0
backed by ``ncd backend`` in dom0 (the good device, 198.18.1.0/24) and, one per case, a
device 1/N backed by domain 2, where :class:`tests.hostile.backend_peer.HostileBackend`
maps the frontend's vchan and then misbehaves; and the checks every attack ends with
(:meth:`Front.check_survived`, :meth:`Front.recover`)."""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator
from typing import Any

from tests.domproc import DomProc
from tests.e2e.harness import PY, Daemon, Net, proc_usage
from tests.hostile.world import (
    IDLE_CPU,
    IDLE_WINDOW,
    RSS_BOUND_KB,
    cpu_share,
    daemon_env,
    sanitizer_report,
)

BE, FE = "198.18.1.1", "198.18.1.2"
HOSTILE_BACKEND = 2
PORTS = itertools.count(5501)
# frames out of a TAP (the frontend then writes them into the backend's ring)
_SEND_FRAMES = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
    "s.bind((sys.argv[1],0))\n"
    "f=b'\\xff'*6+b'\\x02\\0\\0\\0\\0\\x07'+b'\\x88\\xb5'+bytes(46)\n"
    "[s.send(f) for _ in range(int(sys.argv[2]))]\n"
)


class Front:
    """The frontend under attack, its good device, the hostile backend of the case."""

    def __init__(self, net: Net, *frontend_args: str) -> None:
        self.net = net
        net.start(0, "backend")
        self.frontend: Daemon = net.start(1, "frontend", *frontend_args, env=daemon_env())
        net.attach(1, 0, "00:16:3e:00:01:00")
        net.wait_connected(1, 0)
        net.addr(0, "ncvif1.0", f"{BE}/24")
        net.addr(1, "nc0", f"{FE}/24")
        assert net.ping_ok(1, BE, count=2)
        self.base = self.guest_resources()  # the good device's grants and ports alone
        self.toolstack = net.toolstack()  # dom0's xenstore, for ncctl in this process
        self.devid = 0
        self.peer: DomProc | None = None
        self._peer_dom = HOSTILE_BACKEND
        self.fresh_device()
        self.baseline_rss = proc_usage(self.frontend.pid)["rss_kb"]

    # ---- the hostile device --------------------------------------------------------------
    def fresh_device(self, connect: bool = True, backend: int = HOSTILE_BACKEND) -> None:
        """A new device 1/N backed by domain ``backend``, its hostile backend the one of
        the previous case when that one is in the same domain (the previous device is
        closed and detached first): each case starts with a new vif (and its own budget
        of peer-caused log lines, ncd/ratelog.py)."""
        if self.peer is not None:  # the previous device: closed, then detached
            self.peer.call("closed")
            self.net.ncctl_inproc(
                self.toolstack, "detach", "1", str(self.devid), "--backend", str(self._peer_dom)
            )
            if self._peer_dom != backend:
                self.peer.close()
                self.peer = None
        self.devid += 1
        n = self.devid
        mac = f"00:16:3e:00:01:{n:02x}"
        args = ("attach", "1", "--devid", str(n), "--backend", str(backend), "--mac", mac)
        self.net.ncctl_inproc(self.toolstack, *args)
        if self.peer is None:
            self.peer = DomProc.python(
                self.net.sim,
                backend,
                "tests.hostile.backend_peer:HostileBackend",
                "1",
                str(n),
                errlog=self.net.logdir / f"hostile-backend-dom{backend}-{n}.log",
            )
            self.net._helpers.append(self.peer)
            self._peer_dom = backend
        else:
            self.peer.call(f"device {n}")
        if connect:
            self.connect()

    def close(self) -> None:
        self.toolstack.close()

    @property
    def hostile(self) -> DomProc:
        assert self.peer is not None
        return self.peer

    def connect(self, *keys: str) -> None:
        """The backend starts over (InitWait with ``keys``) and maps the fresh vchan."""
        self.hostile.call(" ".join(("init_wait", *keys)))
        self.hostile.call("connect 15")
        self.net.wait_state(1, 1, self.devid, "Connected", timeout=15)

    @property
    def tap(self) -> str:
        return f"nc{self.devid}"

    def tap_frames(self, count: int) -> None:
        """``count`` frames out of the hostile device's TAP in guest 1: the frontend
        writes them into the ring the backend reads."""
        self.net.ip(1, "link", "set", self.tap, "up")
        self.net.sim.run(1, [PY, "-c", _SEND_FRAMES, self.tap, str(count)])

    # ---- what the frontend says -----------------------------------------------------------
    def vif(self) -> dict[str, Any] | None:
        return self.net.vif(1, 1, self.devid)

    def vif_stats(self) -> dict[str, Any]:
        return dict(next(v for v in self.net.stats(1)["vifs"] if v["devid"] == self.devid))

    def failures(self) -> int:
        return sum(self.net.stats(1)["handshake_failures"].values())

    def guest_resources(self) -> dict[str, int]:
        """Guest 1's grants and event channel ports (the broker's count)."""
        s = self.net.broker_stats()[1]
        return {k: s[k] for k in ("grants", "ports")}

    def log_mark(self) -> int:
        return len(self.frontend.log_text())

    def log_since(self, mark: int) -> str:
        return self.frontend.log_text()[mark:]

    def wait_log(self, mark: int, pattern: str, timeout: float = 10) -> str:
        rx = re.compile(pattern)

        def found() -> str | None:
            m = rx.search(self.log_since(mark))
            return m.group(0) if m else None

        what = f"a frontend log line matching {pattern!r}"
        return str(self.net.wait(found, timeout, what, self.frontend))

    def wait_down(self, timeout: float = 10) -> None:
        self.net.wait(
            lambda: (v := self.vif()) is not None and v["state"] != "Connected",
            timeout,
            "the hostile device not Connected",
            self.frontend,
        )

    def expect_failure(self, mark: int, before: int, kind: str, rule: str) -> str:
        """After an attack: one log line ``failed (KIND): ...RULE...``, the handshake
        failure counter moved, the device not Connected. Returns the line."""
        line = self.wait_log(mark, rf"vif 1/{self.devid}: failed \({kind}\): [^\n]*{rule}[^\n]*")
        self.net.wait(lambda: self.failures() > before, 5, "the failure counted")
        self.wait_down()
        return line

    # ---- the good device, during the attack -----------------------------------------------
    @contextlib.contextmanager
    def good_traffic(self, nbytes: int = 1 << 20) -> Iterator[None]:
        """A TCP transfer guest 1 -> dom0 over devid 0 while the body attacks; then the
        bytes must have arrived intact, ping must answer and devid 0 be Connected."""
        port = next(PORTS)
        recv = self.net.receiver(0, BE, port)
        send = self.net.sender(1, BE, port, nbytes, mbps=2)
        yield
        sent, got = Net.result(send), Net.result(recv)
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"]), (sent, got)
        assert self.net.ping_ok(1, BE, count=2), "the good device stopped answering ping"
        assert self.net.vif(1, 1, 0)["state"] == "Connected"

    def attack(self, kind: str, rule: str, *lines: str) -> str:
        """Run ``lines`` on the connected hostile backend during the good transfer;
        the device must fail with ``failed (KIND): ...RULE...``; then :meth:`recover`."""
        before, mark = self.failures(), self.log_mark()
        with self.good_traffic():
            for line in lines:
                self.hostile.call(line)
            found = self.expect_failure(mark, before, kind, rule)
        self.recover()
        return found

    # ---- after the attack ---------------------------------------------------------------------
    def recover(self) -> None:
        """The hostile backend closes (nothing mapped): the frontend passes
        :meth:`check_survived` and holds only the good device's grants and ports; the
        device is re-attachable: a backend that starts over gets a fresh vchan that
        carries frames."""
        self.hostile.call("closed")
        self.net.wait(
            lambda: self.guest_resources() == self.base,
            10,
            f"guest 1 back to the good device's grants and ports {self.base}",
            self.frontend,
        )
        self.check_survived()
        self.connect()
        before = self.vif_stats()["frames_rx"]
        self.hostile.call("frames 3")
        self.net.wait(
            lambda: self.vif_stats()["frames_rx"] >= before + 3,
            10,
            "frames over the reconnected device",
            self.frontend,
        )

    def check_survived(self) -> None:
        """Up, no traceback, no sanitizer report, bounded in memory, idle over
        IDLE_WINDOW (with the backend Closed the frontend's retry timer sets nothing up:
        51 cases on a machine at load 24 measured at most one 10 ms tick in 2 s)."""
        assert self.frontend.alive(), f"the frontend died:\n{self.frontend.log_text()[-3000:]}"
        assert sanitizer_report(self.frontend.log_text()) is None
        assert "Traceback" not in self.frontend.log_text()
        rss = proc_usage(self.frontend.pid)["rss_kb"]
        assert rss < self.baseline_rss + RSS_BOUND_KB, (rss, self.baseline_rss)
        share = cpu_share(self.frontend.pid, IDLE_WINDOW)
        assert share < IDLE_CPU, f"the frontend spins after the attack: {share:.0%} of a core"
