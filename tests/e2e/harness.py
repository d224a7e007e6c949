"""End-to-end harness: ncd daemons in xensim domains, ncctl, addresses, traffic, leaks."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ncd.control import ControlClient, ControlError
from tests.domproc import DomProc
from tests.simworld import SimWorld
from xensim import paths

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Daemon:
    domid: int
    role: str
    proc: subprocess.Popen[bytes]
    log: Path
    extra: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The daemon's own pid (``ip netns exec`` execs it, so the same process)."""
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Net:
    """Daemons and helpers for one xensim world; close() kills whatever is left."""

    def __init__(self, sim: SimWorld, logdir: Path, metrics_port: int = 9477) -> None:
        self.sim = sim
        self.logdir = logdir
        self.metrics_port = metrics_port
        self.daemons: list[Daemon] = []
        self._helpers: list[DomProc] = []
        for d in self.domids():
            self.quiet_ipv6(d)

    def domids(self) -> list[int]:
        return self.sim.world.domids()

    def quiet_ipv6(self, domid: int) -> None:
        """No IPv6 on new links: keeps frame counters to the traffic the test sends."""
        self.sim.run(domid, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1",
                             "net.ipv6.conf.all.disable_ipv6=1"])

    # ---- daemons ---------------------------------------------------------------------
    def start(self, domid: int, role: str, *extra: str,
              env: dict[str, str] | None = None) -> Daemon:
        n = sum(1 for d in self.daemons if d.domid == domid and d.role == role)
        log = self.logdir / f"ncd-{role}-dom{domid}-{n}.log"
        cmd = [PY, "-m", "ncd.daemon.main", role, "--metrics-port", str(self.metrics_port),
               *extra]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(self.sim.argv(domid, cmd),
                                    env={**self.sim.env(domid), **(env or {})}, stdout=fh,
                                    stderr=fh, stdin=subprocess.DEVNULL, cwd=str(ROOT))
        d = Daemon(domid, role, proc, log, list(extra))
        self.daemons.append(d)
        self.wait(lambda: self._pingable(domid), 10, f"{role} in dom{domid} answering", d)
        return d

    def _pingable(self, domid: int) -> bool:
        try:
            with self.control(domid) as c:
                c.call("ping")
            return True
        except (ControlError, OSError):
            return False

    def stop(self, d: Daemon, timeout: float = 15) -> int:
        if d.alive():
            d.proc.send_signal(signal.SIGTERM)
        try:
            return d.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
            raise AssertionError(
                f"{d.role} in dom{d.domid} ignored SIGTERM:\n{d.log_text()}"
            ) from None

    def kill9(self, d: Daemon) -> None:
        d.proc.kill()
        d.proc.wait()

    def restart(self, d: Daemon) -> Daemon:
        return self.start(d.domid, d.role, *d.extra)

    def close(self) -> None:
        for p in self._helpers:
            p.kill()
            p.close()
        for d in self.daemons:
            if d.alive():
                d.proc.send_signal(signal.SIGTERM)
        for d in self.daemons:
            try:
                d.proc.wait(15)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()

    # ---- control socket / ncctl -----------------------------------------------------------
    def control(self, domid: int) -> ControlClient:
        return ControlClient(paths.runtime_dir(self.sim.dir, domid) / "ncd.sock", timeout=5)

    def vifs(self, domid: int) -> list[dict[str, Any]]:
        with self.control(domid) as c:
            return list(c.call("list")["vifs"])

    def vif(self, domid: int, guest: int, devid: int) -> dict[str, Any] | None:
        try:
            vifs = self.vifs(domid)
        except (ControlError, OSError):
            return None
        for v in vifs:
            if v["domid"] == guest and v["devid"] == devid:
                return v
        return None

    def stats(self, domid: int) -> dict[str, Any]:
        with self.control(domid) as c:
            return dict(c.call("stats"))

    def ncctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sim.run(0, [PY, "-m", "ncd.ncctl", *args], check=check)

    def toolstack(self) -> Any:
        """A xenstore connection as dom0 in this process (for fast in-process ncctl)."""
        from ncd.xen.xenstore import XenStore

        old = os.environ.get(paths.ENV_XENSTORED)
        os.environ[paths.ENV_XENSTORED] = str(paths.xenstored_socket(self.sim.dir, 0))
        try:
            return XenStore()
        finally:
            if old is None:
                del os.environ[paths.ENV_XENSTORED]
            else:
                os.environ[paths.ENV_XENSTORED] = old

    def ncctl_inproc(self, store: Any, *args: str) -> str:
        """ncctl's own code path, run in this process against ``store``."""
        from ncd import ncctl

        out, err = io.StringIO(), io.StringIO()
        sock = str(paths.runtime_dir(self.sim.dir, 0) / "ncd.sock")
        rc = ncctl.main(["--socket", sock, *args], store_factory=lambda: store, out=out, err=err)
        assert rc == 0, f"ncctl {' '.join(args)}: {err.getvalue()}"
        return out.getvalue()

    def attach(self, guest: int, devid: int, mac: str, bridge: str | None = None) -> None:
        args = ["attach", str(guest), "--devid", str(devid), "--mac", mac]
        if bridge:
            args += ["--bridge", bridge]
        self.ncctl(*args)

    def wait_state(self, domid: int, guest: int, devid: int, state: str = "Connected",
                   timeout: float = 10) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            v = self.vif(domid, guest, devid)
            return v if v is not None and v["state"] == state else None

        return self.wait(ok, timeout, f"vif {guest}/{devid} {state} in dom{domid}")

    def wait_connected(self, guest: int, devid: int, timeout: float = 10) -> None:
        self.wait_state(0, guest, devid, timeout=timeout)
        self.wait_state(guest, guest, devid, timeout=timeout)

    def wait(self, pred: Any, timeout: float, what: str, d: Daemon | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            r = pred()
            if r:
                return r
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {x.log.name}\n{x.log_text()[-3000:]}"
                                 for x in ([d] if d else self.daemons))
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
            time.sleep(0.05)

    # ---- links, addresses, traffic ----------------------------------------------------------
    def ip(self, domid: int, *args: str) -> str:
        return self.sim.run(domid, ["ip", *args]).stdout

    def links(self, domid: int) -> set[str]:
        out = self.sim.run(domid, ["ip", "-o", "link", "show"]).stdout
        return {m.group(1).split("@")[0] for m in re.finditer(r"^\d+: ([^:]+):", out, re.M)}

    def addr(self, domid: int, ifname: str, cidr: str) -> None:
        self.ip(domid, "addr", "replace", cidr, "dev", ifname)

    def ping(self, src: int, dst_ip: str, count: int = 3, wait: float = 2,
             interval: float = 0.05, size: int = 56) -> subprocess.CompletedProcess[str]:
        return self.sim.run(src, ["ping", "-q", "-c", str(count), "-i", str(interval),
                                  "-W", str(wait), "-s", str(size), dst_ip], check=False)

    def ping_ok(self, src: int, dst_ip: str, count: int = 3) -> bool:
        return self.ping(src, dst_ip, count).returncode == 0

    def _xfer(self, domid: int) -> DomProc:
        p = DomProc.python(self.sim, domid, "tests.e2e.xfer:Xfer")
        self._helpers.append(p)
        return p

    def receiver(self, domid: int, host: str, port: int) -> DomProc:
        """A receiver listening in ``domid``, reading one connection (see :meth:`result`)."""
        p = self._xfer(domid)
        p.call(f"listen {host} {port}")
        p.send("recv")
        return p

    def sender(self, domid: int, host: str, port: int, nbytes: int, mbps: float = 0) -> DomProc:
        p = self._xfer(domid)
        p.send(f"send {host} {port} {nbytes} {mbps}")
        return p

    @staticmethod
    def result(p: DomProc, timeout: float = 120) -> dict[str, Any]:
        r = p.reply(timeout, "the transfer")
        assert r["ok"], f"transfer helper failed: {r}"
        return dict(r)

    def transfer(self, src: int, dst: int, dst_ip: str, nbytes: int, port: int = 5301,
                 timeout: float = 120) -> tuple[dict[str, Any], dict[str, Any]]:
        recv = self.receiver(dst, dst_ip, port)
        send = self.sender(src, dst_ip, port, nbytes)
        sent = self.result(send, timeout)
        got = self.result(recv, timeout)
        return sent, got

    # ---- resources ---------------------------------------------------------------------------
    def broker_stats(self) -> dict[int, dict[str, int]]:
        with self.sim.world.broker() as b:
            return b.stats()


def proc_usage(pid: int) -> dict[str, int]:
    """fds, threads and RSS (kB) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads, "rss_kb": rss}


MACS = {1: "00:16:3e:00:01:00", 2: "00:16:3e:00:02:00"}


def dom0_ip(g: int) -> str:
    """dom0's end of guest g's vif (its own /24)."""
    return f"198.18.{g}.1"


def guest_ip(g: int) -> str:
    return f"198.18.{g}.2"


@contextmanager
def two_guests(sim: SimWorld, logdir: Path) -> Iterator[Net]:
    """dom0 ``ncd backend``, guests 1 and 2 ``ncd frontend``, each with a TAP vif
    (MACS) Connected and addressed: dom0_ip(g) on ncvif<g>.0, guest_ip(g) on nc0."""
    n = Net(sim, logdir)
    try:
        n.start(0, "backend")
        for g in (1, 2):
            n.start(g, "frontend")
            n.attach(g, 0, MACS[g])
        for g in (1, 2):
            n.wait_connected(g, 0)
            n.addr(0, f"ncvif{g}.0", f"{dom0_ip(g)}/24")
            n.addr(g, "nc0", f"{guest_ip(g)}/24")
        yield n
    finally:
        n.close()
