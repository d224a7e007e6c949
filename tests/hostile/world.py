"""The world a hostile-peer module attacks: an ncd backend in dom0, a good guest (dom1,
``ncd frontend``, vif 1/0, 198.18.1.0/24) and a hostile guest (dom2, vif 2/0, no ncd:
:class:`tests.hostile.peer.HostileFrontend` is its frontend); and the checks every attack
ends with (:meth:`Arena.check_survived`)."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.domproc import DomProc
from tests.e2e.harness import Daemon, Net, proc_usage

GOOD_BE, GOOD_FE = "198.18.1.1", "198.18.1.2"
HOSTILE_MAC = "00:16:3e:00:02:00"
TICKS = os.sysconf("SC_CLK_TCK")
RSS_BOUND_KB = 64 * 1024  # growth over the module's baseline that counts as unbounded
IDLE_CPU = 0.05  # of one core, once the attack stopped, over IDLE_WINDOW seconds
IDLE_WINDOW = 1.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_share(pid: int, window: float) -> float:
    """The share of one core ``pid`` used over ``window`` seconds."""
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(window)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def daemon_env() -> dict[str, str]:
    """The attacked daemon's environment: with ``NCD_HOSTILE_SANITIZE=1``, the
    ``-fsanitize=address,undefined`` build of the hot path (tests/vchan/sanitize.py;
    any out-of-bounds access or undefined behaviour aborts the daemon, which the
    cases' survival checks then report, and :func:`sanitizer_report` finds)."""
    if os.environ.get("NCD_HOSTILE_SANITIZE") != "1":
        return {}
    from tests.vchan.sanitize import sanitized_env

    return sanitized_env()


def sanitizer_report(log: str) -> str | None:
    """The first sanitizer line in a daemon's log, if any."""
    m = re.search(r"^.*(AddressSanitizer|runtime error:).*$", log, re.M)
    return m.group(0) if m else None


class Arena:
    """One world, one good vif, one hostile guest process; shared by a module's cases."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.backend: Daemon = net.start(0, "backend", env=daemon_env())
        net.start(1, "frontend")
        net.attach(1, 0, "00:16:3e:00:01:00")
        net.attach(2, 0, HOSTILE_MAC)
        net.wait_connected(1, 0)
        net.addr(0, "ncvif1.0", f"{GOOD_BE}/24")
        net.addr(1, "nc0", f"{GOOD_FE}/24")
        assert net.ping_ok(1, GOOD_BE, count=2)
        self.peer = self.hostile(2)
        self.dom0_base = self.dom0_resources()  # the good vif's mappings and ports alone
        self.baseline_rss = proc_usage(self.backend.pid)["rss_kb"]
        self._port = 5400

    def hostile(self, domid: int, devid: int = 0) -> DomProc:
        p = DomProc.python(
            self.net.sim,
            domid,
            "tests.hostile.peer:HostileFrontend",
            str(devid),
            errlog=self.net.logdir / f"hostile-dom{domid}.log",
        )
        self.net._helpers.append(p)
        return p

    # ---- what the backend says ----------------------------------------------------------
    def vif(self, guest: int = 2, devid: int = 0) -> dict[str, Any] | None:
        return self.net.vif(0, guest, devid)

    def stats(self) -> dict[str, Any]:
        return self.net.stats(0)

    def failures(self) -> int:
        return sum(self.stats()["handshake_failures"].values())

    def vif_stats(self, guest: int = 2, devid: int = 0) -> dict[str, Any]:
        for v in self.stats()["vifs"]:
            if v["domid"] == guest and v["devid"] == devid:
                return dict(v)
        raise AssertionError(f"no vif {guest}/{devid} in the backend's stats")

    def dom0_resources(self) -> dict[str, int]:
        """dom0's mappings, mapped pages and event channel ports (the broker's count)."""
        s = self.net.broker_stats()[0]
        return {k: s[k] for k in ("mappings", "mapped_pages", "ports")}

    def log_mark(self) -> int:
        return len(self.backend.log_text())

    def log_since(self, mark: int) -> str:
        return self.backend.log_text()[mark:]

    def wait_log(self, mark: int, pattern: str, timeout: float = 10) -> str:
        rx = re.compile(pattern)

        def found() -> str | None:
            m = rx.search(self.log_since(mark))
            return m.group(0) if m else None

        return str(
            self.net.wait(found, timeout, f"a backend log line matching {pattern!r}", self.backend)
        )

    # ---- a fresh start for the hostile vif ------------------------------------------------
    def reset(self, peer: DomProc | None = None, fresh: bool = True) -> None:
        """Hostile vif back to InitWait with nothing shared (a good frontend's start).
        ``fresh``: the toolstack detaches and re-attaches it first, so that each case
        starts with a new vif (and its own budget of peer-caused log lines, ncd/ratelog.py)."""
        p = peer or self.peer
        p.call("reset")
        if fresh:
            p.call("state 6")  # Closed, as a frontend answers the toolstack's close
            r = self.net.ncctl("detach", "2", "0", check=False)
            assert r.returncode == 0, f"ncctl detach 2 0: {r.stdout}{r.stderr}"
            self.net.wait(lambda: self.vif() is None, 15, "vif 2/0 released", self.backend)
            self.net.attach(2, 0, HOSTILE_MAC)
            self.net.wait_state(0, 2, 0, "InitWait")
            p.call("reset")
        self.net.wait_state(0, 2, 0, "InitWait")
        self.net.wait(
            lambda: self.dom0_resources() == self.dom0_base,
            10,
            f"dom0 back to the good vif's mappings and ports {self.dom0_base}",
            self.backend,
        )

    def wait_connected(self) -> None:
        self.net.wait_state(0, 2, 0, "Connected")

    def wait_down(self, timeout: float = 10) -> dict[str, Any]:
        """The hostile vif ends not Connected (the backend closed it)."""
        return dict(
            self.net.wait(
                lambda: (
                    (v := self.vif()) is not None and v["state"] in ("Closed", "InitWait") and v
                ),
                timeout,
                "the hostile vif closed",
                self.backend,
            )
        )

    def recover(self) -> None:
        """The attack stops (the guest starts over: state 1, nothing shared), the backend
        passes :meth:`check_survived`, and the vif is re-attachable: a good offer
        connects and carries frames."""
        self.reset(fresh=False)
        self.check_survived()
        self.peer.call("offer 12 12")
        self.wait_connected()
        before = self.vif_stats()["frames_rx"]
        self.peer.call("frames 5")
        self.net.wait(
            lambda: self.vif_stats()["frames_rx"] >= before + 5,
            10,
            "frames from the re-attached vif",
            self.backend,
        )

    def expect_failure(self, mark: int, before: int, kind: str, rule: str) -> str:
        """After an attack: one log line ``failed (KIND): ...RULE...``, the handshake
        failure counter moved, the vif not Connected. Returns the line."""
        line = self.wait_log(mark, rf"vif 2/0: failed \({kind}\): [^\n]*{rule}[^\n]*")
        self.net.wait(lambda: self.failures() > before, 5, "the failure counted")
        self.wait_down()
        return line

    # ---- the good guest, during and after the attack ---------------------------------------
    @contextlib.contextmanager
    def good_traffic(self, nbytes: int = 1 << 20) -> Iterator[None]:
        """A TCP transfer dom1 -> dom0 over the good vif, running while the body attacks;
        afterwards the bytes must have arrived intact and ping must answer."""
        self._port += 1
        recv = self.net.receiver(0, GOOD_BE, self._port)
        send = self.net.sender(1, GOOD_BE, self._port, nbytes, mbps=2)
        yield
        sent, got = Net.result(send), Net.result(recv)
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"]), (sent, got)
        assert self.net.ping_ok(1, GOOD_BE, count=2), "the good vif stopped answering ping"
        assert self.net.vif(0, 1, 0)["state"] == "Connected"

    def check_survived(self) -> None:
        """The backend is up, bounded in memory, and idle once the attack stopped."""
        assert self.backend.alive(), f"the backend died:\n{self.backend.log_text()[-3000:]}"
        assert sanitizer_report(self.backend.log_text()) is None
        rss = proc_usage(self.backend.pid)["rss_kb"]
        assert rss < self.baseline_rss + RSS_BOUND_KB, (rss, self.baseline_rss)
        share = cpu_share(self.backend.pid, IDLE_WINDOW)
        assert share < IDLE_CPU, f"the backend spins after the attack: {share:.0%} of a core"
