"""Open vSwitch ports for the backend's TAPs, the way Xen's ``vif-openvswitch`` makes them.

A vif whose ``bridge`` names an Open vSwitch bridge (``NAME``, ``NAME.TAG`` for an
access port of VLAN TAG, ``NAME[.TAG]:TRUNK[:TRUNK...]`` for trunk VLANs) has its TAP
added as a port of that bridge, with the external-ids OVS integrations read
(``attached-mac``, ``xen-vm-name``, ``xen-vm-uuid``, ``iface-id`` where known); the port
is removed before its TAP. On OVS's userspace datapath (``datapath_type=netdev``) the
TAP offers no offloads: that datapath reads the TAP through a packet socket, which hands
it frames with their checksum not yet filled in (and GSO frames whole), and forwards
them so; the guest's kernel then computes checksums and segments itself.

Everything goes through ``ovs-vsctl`` (Open vSwitch's supported interface to its
database), run as a subprocess under a timeout so the event loop never waits on it;
``db`` is the database to use (``[backend] ovs_db``; empty: ovs-vsctl's default,
``unix:$OVS_RUNDIR/db.sock``, i.e. the system's ``/var/run/openvswitch/db.sock``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import parse

VSCTL = "ovs-vsctl"
TIMEOUT = 10.0  # seconds: ovs-vsctl's own --timeout (ours, around it, is longer)


class OvsError(OSError):
    """An ovs-vsctl call that failed; the message names the command and what it said."""


@dataclass(frozen=True)
class PortSpec:
    """Where a vif's TAP goes: bridge, VLAN tag (None: untagged), trunk VLANs, and
    whether the bridge's datapath is OVS's userspace one (``datapath_type=netdev``)."""

    bridge: str
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    userspace: bool = False

    def columns(self) -> list[str]:
        """The Port columns ``add-port`` sets (as vif-openvswitch passes them)."""
        cols = [] if self.tag is None else [f"tag={self.tag}"]
        if self.trunks:
            cols.append("trunks=" + ",".join(map(str, self.trunks)))
        return cols


def installed() -> bool:
    return shutil.which(VSCTL) is not None


def _quoted(value: str) -> str:
    """An ovsdb string atom: JSON-quoted, so ``,``, ``=``, ``:`` and spaces stay literal."""
    return json.dumps(value)


@dataclass(frozen=True)
class Vsctl:
    """``ovs-vsctl`` against one database."""

    db: str = ""  # "" = ovs-vsctl's default
    timeout: float = TIMEOUT

    def argv(self, *args: str) -> list[str]:
        opts = [f"--db={self.db}"] if self.db else []
        return [VSCTL, *opts, f"--timeout={self.timeout:g}", *args]

    async def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
        """(exit status, stdout) of ``ovs-vsctl ARGS``; OvsError if it cannot run, times
        out, or exits with a status not in ``ok`` (br-exists says "no" with 2)."""
        argv = self.argv(*args)
        cmd = " ".join(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise OvsError(exc.errno, f"{cmd}: {exc.strerror}") from None
        limit = self.timeout * 1.5 + 1  # ovs-vsctl's own --timeout should end it first
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise OvsError(errno.ETIMEDOUT, f"{cmd}: no answer in {limit:g}s (killed)") from None
        except BaseException:  # cancelled: never leave the child behind
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        assert proc.returncode is not None
        if proc.returncode not in ok:
            said = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            raise OvsError(errno.EIO, f"{cmd}: {said}")
        return proc.returncode, out.decode(errors="replace")

    async def bridge_exists(self, name: str) -> bool:
        rc, _ = await self.run("br-exists", name, ok=(0, 2))
        return rc == 0

    async def datapath_type(self, bridge: str) -> str:
        """The bridge's ``datapath_type`` ("" for the default, the kernel's; also "" for
        a fake VLAN bridge, which has no Bridge row)."""
        _, out = await self.run("--if-exists", "get", "Bridge", bridge, "datapath_type")
        return out.strip().strip('"')

    async def add_port(self, spec: PortSpec, port: str, external_ids: Mapping[str, str]) -> None:
        """Make ``port`` a port of ``spec.bridge`` with its VLANs and external-ids, in one
        transaction that first drops any port of that name (idempotent: a restarted
        daemon re-adds the TAP it left)."""
        ids = [f"external-ids:{_quoted(k)}={_quoted(v)}" for k, v in sorted(external_ids.items())]
        args = ["--", "--if-exists", "del-port", port, "--", "add-port", spec.bridge, port]
        args += spec.columns()
        if ids:
            args += ["--", "set", "Interface", port, *ids]
        await self.run(*args)

    async def del_ports(self, ports: Sequence[str], *, wait: bool = True) -> None:
        """Remove these ports from whatever bridge has them; absent ones are fine.
        ``wait`` False: once the database has it, not waiting for ovs-vswitchd."""
        if not ports:
            return
        args: list[str] = [] if wait else ["--no-wait"]
        for port in ports:
            args += ["--", "--if-exists", "del-port", port]
        await self.run(*args)


async def port_for(bridge: str, kernel_kind: str | None, vsctl: Vsctl) -> PortSpec | None:
    """The Open vSwitch port a vif's ``bridge`` asks for, or None where it is a job for
    the Linux bridge code (pyroute2).

    ``kernel_kind`` is the rtnetlink kind of a link named exactly ``bridge`` (None: no
    such link; "" a link of no kind). A Linux bridge of that name always wins; where
    ovs-vsctl is not installed, or the name is not in vif-openvswitch's syntax, the
    Linux path says what is wrong. Otherwise Open vSwitch is asked (``br-exists``)."""
    if kernel_kind == "bridge" or not installed():
        return None
    try:
        name, tag, trunks = parse.ovs_bridge("bridge", bridge)
    except parse.BadEntry:
        return None
    try:
        exists = await vsctl.bridge_exists(name)
        userspace = exists and await vsctl.datapath_type(name) == "netdev"
    except OvsError as exc:
        raise OvsError(
            exc.errno,
            f"bridge {bridge}: no Linux bridge, and asking Open vSwitch failed: {exc.strerror}",
        ) from None
    if exists:
        return PortSpec(name, tag, trunks, userspace)
    if kernel_kind is not None and tag is None and not trunks:
        return None  # some other kernel link: the Linux path names the problem
    raise OvsError(
        errno.ENODEV,
        f"bridge {bridge}: neither a Linux bridge nor an Open vSwitch bridge "
        f"({' '.join(vsctl.argv('br-exists', name))}: no)",
    )
