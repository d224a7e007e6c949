"""systemd/ncd-backend.service under a real systemd, on xensim.

This machine runs no systemd (PID 1 is the sandbox's own init), so the test boots one:
Debian's /lib/systemd/systemd as PID 1 of new PID, mount, cgroup and network namespaces
(``unshare``), in a cgroup2 subtree of its own, with a private /run and a unit path
(``$SYSTEMD_UNIT_PATH``) holding only Debian's basic targets and the unit as shipped, plus
a drop-in for what differs on xensim: no ConditionVirtualization=xen, ExecStart runs this
checkout's ncd with Debian's python3 (what /usr/bin/ncd runs), the world's environment
(xenstored socket, shim libraries), NetworkNamespacePath= dom0's namespace, WatchdogSec=2s
(30s as shipped) and the log in a file. The unit's sandboxing stays as shipped.

Through systemctl in that manager: READY and STATUS arrive (ActiveState, StatusText), the
watchdog is pinged (WatchdogTimestamp advances; the daemon outlives several periods), a
``kill -9`` is restarted by Restart= (new MainPID, vif back to Connected), and ``systemctl
stop`` closes the vif (backend state Closed, TAP gone)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ncd.control import ControlClient, ControlError
from tests.e2e.harness import Net
from tests.needs import require_root
from tests.ovsdaemons import Ovs, have_ovs
from tests.simworld import SimWorld
from xensim import paths

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = Path("/lib/systemd/systemd")
UNIT = "ncd-backend.service"
# Debian's targets a service's default dependencies reach (sysinit, basic, shutdown...);
# copied without their .wants directories, so nothing else starts
TARGETS = (
    "sysinit",
    "basic",
    "sockets",
    "timers",
    "paths",
    "slices",
    "local-fs",
    "local-fs-pre",
    "network-pre",
    "network",
    "multi-user",
    "shutdown",
)
WATCHDOG_S = 2
MAC = "00:16:3e:5d:00:01"

BOOT = """#!/bin/sh
# PID 1 to be: dom0's namespace kept reachable, a private /run and cgroup2 view
set -eu
touch "$1/dom0.netns"
mount --bind "/run/netns/$2" "$1/dom0.netns"
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec env -i container=ncd-test SYSTEMD_UNIT_PATH="$1/units" \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin "$3" --unit=ncd-test.target
"""

TARGET = """[Unit]
Description=ncd test: the basic targets and the backend unit
Requires=basic.target
Wants={unit}
After=basic.target
"""

DROPIN = """[Unit]
ConditionVirtualization=

[Service]
ExecStart=
ExecStart=/usr/bin/python3 -m ncd.daemon.main backend --config {d}/ncd.toml
{env}
NetworkNamespacePath={d}/dom0.netns
WatchdogSec={watchdog}s
StandardOutput=append:{d}/backend.log
StandardError=inherit
"""


def cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    return None


class Systemd:
    """A systemd booted as PID 1 of its own namespaces; close() ends it and its cgroups."""

    def __init__(self, d: Path, netns: str, env: dict[str, str]) -> None:
        self.dir = d
        units = d / "units"
        (units / f"{UNIT}.d").mkdir(parents=True)
        for t in TARGETS:
            shutil.copy(f"/lib/systemd/system/{t}.target", units)
        shutil.copy(ROOT / "systemd" / UNIT, units)
        (units / "ncd-test.target").write_text(TARGET.format(unit=UNIT))
        lines = "\n".join(f'Environment="{k}={v}"' for k, v in sorted(env.items()))
        (units / f"{UNIT}.d" / "xensim.conf").write_text(
            DROPIN.format(env=lines, d=d, watchdog=WATCHDOG_S)
        )
        boot = d / "boot.sh"
        boot.write_text(BOOT)
        boot.chmod(0o755)
        cg2 = cgroup2_mount()
        assert cg2 is not None, "no cgroup2 hierarchy mounted"
        self.cgroup = Path(tempfile.mkdtemp(prefix="ncd-systemd-test.", dir=cg2))
        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                'echo $$ >"$0/cgroup.procs" && exec "$@"',
                str(self.cgroup),
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--cgroup",
                "--net",
                "--propagation",
                "private",
                "--mount-proc",
                str(boot),
                str(d),
                netns,
                str(SYSTEMD),
            ],
            stdin=subprocess.DEVNULL,
            stdout=open(d / "boot.out", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.pid1 = self._wait_pid1()
        except BaseException:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self._remove_cgroups()
            raise

    def _wait_pid1(self) -> int:
        """The host pid of the namespace's PID 1 (unshare's child), once it answers."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = kids.read_text().split() if kids.exists() else []
            if pids and self._answers(int(pids[0])):
                return int(pids[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"systemd did not come up: {(self.dir / 'boot.out').read_text()}")

    @staticmethod
    def _answers(pid: int) -> bool:
        r = subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "-p", "systemctl", "is-system-running"],
            capture_output=True,
            text=True,
            check=False,
        )
        return r.stdout.strip() in ("running", "degraded", "starting")

    def systemctl(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-p", "systemctl", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"systemctl {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout

    def show(self, *props: str) -> dict[str, str]:
        out = self.systemctl("show", UNIT, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def control(self) -> ControlClient:
        """The daemon's control socket, in the manager's /run (RuntimeDirectory=ncd)."""
        return ControlClient(Path(f"/proc/{self.pid1}/root/run/ncd/ncd.sock"), timeout=5)

    def log(self) -> str:
        p = self.dir / "backend.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def close(self) -> None:
        """SIGKILL to PID 1 ends its PID namespace (every process in it), and with the
        last of them the mount namespace (the bind of dom0's netns) and the cgroups."""
        try:
            os.kill(self.pid1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        for sub in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
            if sub.is_dir():
                _rmdir_when_empty(sub)
        _rmdir_when_empty(self.cgroup)


def _rmdir_when_empty(cg: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            cg.rmdir()
            return
        except OSError:  # EBUSY while the namespace's last processes exit
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def world() -> Iterator[SimWorld]:
    """A world outside /tmp: the unit's PrivateTmp= would hide it from the daemon."""
    require_root("systemd as PID 1 of its own namespaces, a xensim world")
    if not SYSTEMD.exists() or not shutil.which("nsenter") or cgroup2_mount() is None:
        pytest.skip("needs Debian's systemd, nsenter and a cgroup2 hierarchy")
    d = Path(tempfile.mkdtemp(prefix="ncd-sdtest.", dir="/var/lib"))
    w = SimWorld(d / "w", domains=1)
    try:
        yield w
    finally:
        w.down()
        shutil.rmtree(d)


def _wait(pred: Callable[[], Any], timeout: float, what: str, sd: Systemd) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}\n{sd.log()[-3000:]}\n"
                f"{sd.systemctl('status', UNIT, check=False)}"
            )
        time.sleep(0.1)


def test_backend_unit_under_systemd(world: SimWorld, tmp_path: Path) -> None:
    """Where Open vSwitch is installed the vif is in an OVS bridge (a private one, as in
    tests/e2e/test_ovs.py): ovs-vsctl then runs inside the unit's sandbox too."""
    env = {k: v for k, v in paths.domain_env(world.dir, 0).items() if k != paths.ENV_RUNTIME}
    env["PYTHONPATH"] = str(ROOT)
    d = world.dir.parent
    o = Ovs(d / "ovs", world.world.netns(0)) if have_ovs() else None
    (d / "ncd.toml").write_text(f'[backend]\novs_db = "{o.db}"\n' if o else "")
    net = Net(world, tmp_path)
    try:
        if o:
            o.vsctl("add-br", "ovsbr0", "--", "set", "Bridge", "ovsbr0", "datapath_type=netdev")
        sd = Systemd(d, world.world.netns(0), env)
    except BaseException:
        net.close()
        if o:
            o.close()
        raise
    try:
        net.start(1, "frontend")
        net.ncctl("attach", "1", "--mac", MAC, *(["--bridge", "ovsbr0"] if o else []))

        def vif_state() -> str | None:
            try:
                with sd.control() as c:
                    vifs = c.call("list")["vifs"]
            except (ControlError, OSError):
                return None
            return vifs[0]["state"] if vifs else None

        def be_state() -> str:
            r = world.run(
                0, ["xenstore-read", "/local/domain/0/backend/ncvif/1/0/state"], check=False
            )
            return r.stdout.strip() if r.returncode == 0 else "removed"

        _wait(lambda: vif_state() == "Connected", 30, "vif 1/0 Connected", sd)
        net.wait_state(1, 1, 0)
        p = _wait(
            lambda: (s := sd.show("StatusText"))["StatusText"] == "1 of 1 vifs connected" and s,
            10,
            "STATUS with the vif connected",
            sd,
        )
        p = sd.show(
            "ActiveState",
            "SubState",
            "MainPID",
            "WatchdogUSec",
            "NRestarts",
            "WatchdogTimestampMonotonic",
            "Type",
            "StatusText",
        )
        assert (p["ActiveState"], p["SubState"], p["Type"]) == ("active", "running", "notify"), p
        assert p["WatchdogUSec"] == f"{WATCHDOG_S}s" and p["NRestarts"] == "0", p
        pid, pinged = p["MainPID"], int(p["WatchdogTimestampMonotonic"])
        assert "ncvif1.0" in net.links(0)
        if o:
            assert o.vsctl("port-to-br", "ncvif1.0") == "ovsbr0"
        status = subprocess.run(
            ["nsenter", "-t", str(sd.pid1), "-m", "-p", "cat", f"/proc/{pid}/status"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # the unit's least privilege held: CAP_NET_ADMIN only, no new privileges, seccomp
        assert "\nCapBnd:\t0000000000001000\n" in status, status
        assert "\nNoNewPrivs:\t1\n" in status and "\nSeccomp:\t2\n" in status, status

        time.sleep(4 * WATCHDOG_S)  # several watchdog periods: pinged, so not killed
        q = sd.show("ActiveState", "MainPID", "NRestarts", "WatchdogTimestampMonotonic")
        assert (q["ActiveState"], q["MainPID"], q["NRestarts"]) == ("active", pid, "0"), q
        assert int(q["WatchdogTimestampMonotonic"]) > pinged, (p, q)

        subprocess.run(["nsenter", "-t", str(sd.pid1), "-p", "-m", "kill", "-9", pid], check=True)
        _wait(lambda: sd.show("NRestarts")["NRestarts"] == "1", 30, "a restart", sd)
        _wait(lambda: vif_state() == "Connected", 30, "vif 1/0 Connected again", sd)
        r = sd.show("ActiveState", "MainPID")
        assert r["ActiveState"] == "active" and r["MainPID"] not in (pid, "0"), r
        net.wait_state(1, 1, 0)
        if o:
            assert "ncvif1.0" in o.ports()

        sd.systemctl("stop", UNIT)
        s = sd.show("ActiveState", "Result", "ExecMainStatus")
        assert (s["ActiveState"], s["Result"], s["ExecMainStatus"]) == (
            "inactive",
            "success",
            "0",
        ), s
        assert be_state() in ("6", "removed"), be_state()
        assert "ncvif1.0" not in net.links(0)
        log = sd.log()
        assert "stopping: closing 1 vifs" in log and "Traceback" not in log, log
        if o:
            assert o.ports() == {"ovsbr0"}, o.ports()
            assert "ncvif1.0 is a port of Open vSwitch bridge ovsbr0" in log, log
    finally:
        try:
            sd.close()
        finally:
            net.close()
            if o:
                o.close()
