"""systemd/ncd-backend.service and ncd-frontend.service under a real systemd, on xensim.

This machine runs no systemd (PID 1 is the sandbox's own init), so the test boots one per
domain, as each Xen domain has its own: Debian's /lib/systemd/systemd as PID 1 of new
PID, mount, cgroup and network namespaces (``unshare``), in a cgroup2 subtree of its own,
with a private /run and a unit path (``$SYSTEMD_UNIT_PATH``) holding only Debian's basic
targets and the unit as shipped, plus a drop-in for what differs on xensim: none of
the units' conditions on Xen (ConditionVirtualization=, ConditionPathExists=,
ExecCondition=), ExecStart runs a copy of this checkout's ncd with Debian's python3
(what /usr/bin/ncd runs), the domain's environment (xenstored socket, shim libraries),
NetworkNamespacePath= the domain's namespace, WatchdogSec=4s (30s as shipped) and the log
in a file. The units' sandboxing stays as shipped.

Through systemctl in each manager: READY and STATUS arrive (ActiveState, StatusText), the
sandbox holds (capabilities, no_new_privs, seccomp), the watchdog is pinged
(WatchdogTimestamp advances; the daemons outlive several periods), a ``kill -9`` is
restarted by Restart= (new MainPID, the vif back to Connected), and ``systemctl stop``
closes the vif (state Closed or removed, TAP gone). Where Open vSwitch is installed the
backend's vif is in an OVS bridge (a private one, tests/ovsdaemons.py), so ovs-vsctl
runs inside the unit's sandbox too."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ncd.control import ControlClient, ControlError
from tests.needs import require_root
from tests.ovsdaemons import Ovs, have_ovs
from tests.simworld import SimWorld
from xensim import paths

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = Path("/lib/systemd/systemd")
# Debian's targets a service's default dependencies reach (sysinit, basic, shutdown...);
# copied without their .wants directories, so nothing else starts
TARGETS = (
    "sysinit basic sockets timers paths slices local-fs local-fs-pre network-pre network "
    "multi-user shutdown"
).split()
WATCHDOG_S = 4  # pinged every 2 s: slack for a loaded machine (30 s as shipped)
MAC = "00:16:3e:5d:00:01"

BOOT = """#!/bin/sh
# PID 1 to be: the domain's netns kept reachable, a private /run and cgroup2 view
set -eu
touch "$1/domain.netns"
mount --bind "/run/netns/$2" "$1/domain.netns"
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec env -i container=ncd-test SYSTEMD_UNIT_PATH="$1/units" \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin "$3" --unit=ncd-test.target
"""

TARGET = """[Unit]
Description=ncd test: the basic targets and {unit}
Requires=basic.target
Wants={unit}
After=basic.target
"""

DROPIN = """[Unit]
ConditionVirtualization=
ConditionPathExists=

[Service]
ExecCondition=
ExecStart=
ExecStart=/usr/bin/python3 -m ncd.daemon.main {role} --config {d}/ncd.toml
{env}
NetworkNamespacePath={d}/domain.netns
WatchdogSec={watchdog}s
StandardOutput=append:{d}/daemon.log
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

    def __init__(self, d: Path, role: str, netns: str, env: dict[str, str], config: str) -> None:
        d.mkdir()
        self.dir = d
        self.unit = unit = f"ncd-{role}.service"
        units = d / "units"
        (units / f"{unit}.d").mkdir(parents=True)
        for t in TARGETS:
            shutil.copy(f"/lib/systemd/system/{t}.target", units)
        shutil.copy(ROOT / "systemd" / unit, units)
        (units / "ncd-test.target").write_text(TARGET.format(unit=unit))
        (d / "ncd.toml").write_text(config)
        lines = "\n".join(f'Environment="{k}={v}"' for k, v in sorted(env.items()))
        (units / f"{unit}.d" / "xensim.conf").write_text(
            DROPIN.format(role=role, env=lines, d=d, watchdog=WATCHDOG_S)
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
        out = self.systemctl("show", self.unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def control(self) -> ControlClient:
        """The daemon's control socket, in the manager's /run (RuntimeDirectory=ncd)."""
        return ControlClient(Path(f"/proc/{self.pid1}/root/run/ncd/ncd.sock"), timeout=5)

    def log(self) -> str:
        p = self.dir / "daemon.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def proc_status(self, pid: str) -> str:
        """/proc/PID/status of a process of this manager (PID as systemd reports it)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-p", "cat", f"/proc/{pid}/status"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def kill9(self, pid: str) -> None:
        subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "-p", "kill", "-9", pid], check=True)

    def vif_state(self) -> str | None:
        """The state of the daemon's one vif (None: no answer or no vif)."""
        try:
            with self.control() as c:
                vifs = c.call("list")["vifs"]
        except (ControlError, OSError):
            return None
        return vifs[0]["state"] if vifs else None

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            r = pred()
            if r:
                return r
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.unit}: timed out waiting for {what}\n{self.log()[-3000:]}\n"
                    f"{self.systemctl('status', self.unit, check=False)}"
                )
            time.sleep(0.1)

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


def _code_outside_tmp(d: Path) -> Path:
    """This checkout's ncd and xensim's shim libraries, copied beside the world: a
    checkout under /tmp (CI's, a fresh clone's) is hidden from the unit by PrivateTmp=."""
    code = d / "code"
    shutil.copytree(ROOT / "ncd", code / "ncd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(paths.domain_env(d, 0)["LD_LIBRARY_PATH"]), code / "xensim-lib")
    return code


def _xs_state(world: SimWorld, path: str) -> str:
    r = world.run(0, ["xenstore-read", f"{path}/state"], check=False)
    return r.stdout.strip() if r.returncode == 0 else "removed"


BE = "/local/domain/0/backend/ncvif/1/0"
FE = "/local/domain/1/device/ncvif/0"


def test_units_under_systemd(world: SimWorld) -> None:
    d = world.dir.parent
    o = Ovs(d / "ovs", world.world.netns(0)) if have_ovs() else None
    sds: dict[int, Systemd] = {}
    try:
        if o:
            o.vsctl("add-br", "ovsbr0", "--", "set", "Bridge", "ovsbr0", "datapath_type=netdev")
        code = _code_outside_tmp(d)
        for domid, role in ((0, "backend"), (1, "frontend")):
            env = paths.domain_env(world.dir, domid)
            del env[paths.ENV_RUNTIME]  # the unit's own: RuntimeDirectory=ncd
            env["PYTHONPATH"] = str(code)
            env["LD_LIBRARY_PATH"] = str(code / "xensim-lib")
            config = f'[backend]\novs_db = "{o.db}"\n' if o and role == "backend" else ""
            sds[domid] = Systemd(d / f"sd{domid}", role, world.world.netns(domid), env, config)
        be, fe = sds[0], sds[1]
        world.run(
            0,
            [
                sys.executable,
                "-m",
                "ncd.ncctl",
                "attach",
                "1",
                "--mac",
                MAC,
                *(["--bridge", "ovsbr0"] if o else []),
            ],
        )
        pids, pinged = {}, {}
        for sd in sds.values():
            sd.wait(lambda sd=sd: sd.vif_state() == "Connected", 30, "the vif Connected")
            sd.wait(
                lambda sd=sd: sd.show("StatusText")["StatusText"] == "1 of 1 vifs connected",
                10,
                "STATUS with the vif connected",
            )
            p = sd.show(
                "ActiveState",
                "SubState",
                "Type",
                "MainPID",
                "WatchdogUSec",
                "NRestarts",
                "WatchdogTimestampMonotonic",
            )
            assert (p["ActiveState"], p["SubState"], p["Type"]) == (
                "active",
                "running",
                "notify",
            ), p
            assert p["WatchdogUSec"] == f"{WATCHDOG_S}s" and p["NRestarts"] == "0", p
            pids[sd], pinged[sd] = p["MainPID"], int(p["WatchdogTimestampMonotonic"])
            status = sd.proc_status(p["MainPID"])
            # the unit's least privilege held: CAP_NET_ADMIN only, no_new_privs, seccomp
            assert "\nCapBnd:\t0000000000001000\n" in status, status
            assert "\nNoNewPrivs:\t1\n" in status and "\nSeccomp:\t2\n" in status, status
        assert "ncvif1.0" in _links(world, 0) and "nc0" in _links(world, 1)
        if o:
            assert o.vsctl("port-to-br", "ncvif1.0") == "ovsbr0"

        time.sleep(3 * WATCHDOG_S)  # several watchdog periods: pinged, so not killed
        for sd in sds.values():
            q = sd.show("ActiveState", "MainPID", "NRestarts", "WatchdogTimestampMonotonic")
            assert (q["ActiveState"], q["MainPID"], q["NRestarts"]) == ("active", pids[sd], "0"), q
            assert int(q["WatchdogTimestampMonotonic"]) > pinged[sd], q

        for sd in (be, fe):  # kill -9: Restart=on-failure brings it back, the vif with it
            sd.kill9(pids[sd])
            sd.wait(lambda sd=sd: sd.show("NRestarts")["NRestarts"] == "1", 30, "a restart")
            sd.wait(
                lambda: be.vif_state() == fe.vif_state() == "Connected",
                30,
                "the vif Connected again",
            )
            r = sd.show("ActiveState", "MainPID")
            assert r["ActiveState"] == "active" and r["MainPID"] not in (pids[sd], "0"), r
        if o:
            assert "ncvif1.0" in o.ports()

        for sd, path, tap, domid in ((fe, FE, "nc0", 1), (be, BE, "ncvif1.0", 0)):
            sd.systemctl("stop", sd.unit)
            s = sd.show("ActiveState", "Result", "ExecMainStatus")
            assert (s["ActiveState"], s["Result"], s["ExecMainStatus"]) == (
                "inactive",
                "success",
                "0",
            ), s
            assert _xs_state(world, path) in ("6", "removed"), (path, _xs_state(world, path))
            assert tap not in _links(world, domid)
            log = sd.log()
            assert "stopping: closing 1 vifs" in log and "Traceback" not in log, log
        if o:
            assert o.ports() == {"ovsbr0"}, o.ports()
            assert "ncvif1.0 is a port of Open vSwitch bridge ovsbr0" in be.log(), be.log()
    finally:
        try:
            for sd in sds.values():
                sd.close()
        finally:
            if o:
                o.close()


def _links(world: SimWorld, domid: int) -> set[str]:
    out = world.run(domid, ["ip", "-o", "link", "show"]).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}
