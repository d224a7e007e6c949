"""The backend role (dom0 or a driver domain): one TAP ``ncvif<domid>.<devid>`` per device.

Watches ``backend/ncvif`` under its home and ``@releaseDomain``. A device is
picked up when its backend entries say ``online`` 1 and the frontend's
directory exists (so a device the toolstack is removing is not re-created). For
a frontend domain that is gone, the backend entries are removed (libxl's job on
a real host), which releases its vifs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from ncd import features, layout, parse
from ncd import tap as tapmod
from ncd.xen.aio import Watch
from ncd.xenbus import Action, Role, XenbusState

from . import netlink
from .datapath import Datapath
from .service import VifTable
from .vif import Vif, VifContext, open_persistent_tap

log = logging.getLogger("ncd.backend")

_TAP_RE = re.compile(r"ncvif(\d+)\.(\d+)")


class BackendVif(Vif):
    role = Role.BACKEND

    def __init__(self, ctx: VifContext, guest: int, devid: int) -> None:
        super().__init__(ctx, guest, devid)
        self.view: layout.BackendView | None = None
        # The frontend (re)published its vchan since we last set up. Needed because a
        # frontend reconnecting to a restarted backend writes Initialising then Connected
        # at once: reading the level, we may only ever see the stale "Connected".
        self._published = False
        self._ring_ref_path = f"{layout.queue_dir(guest, devid, 0)}/ring-ref"

    @property
    def peer(self) -> int:
        return self.guest

    @property
    def own_dir(self) -> str:
        return layout.backend_dir(self.ctx.domid, self.guest, self.devid)

    @property
    def peer_dir(self) -> str:
        return layout.frontend_dir(self.guest, self.devid)

    @property
    def ifname(self) -> str:
        return layout.backend_ifname(self.guest, self.devid)

    @property
    def bridge(self) -> str | None:
        if self.view is not None and self.view.bridge:
            return self.view.bridge
        return self.ctx.config.backend.bridge or None

    def _load(self) -> None:
        self.view = layout.read_backend(self.xs, self.ctx.domid, self.guest, self.devid)
        self.machine.online = self.view.online

    def _open_tap(self) -> tapmod.Tap:
        assert self.view is not None
        tap = open_persistent_tap(self.ifname)
        try:
            netlink.configure(self.ifname, mtu=self.view.mtu, bridge=self.bridge)
        except BaseException:
            tap.close()
            netlink.delete(self.ifname)
            raise
        return tap

    def _on_watch(self, path: str) -> None:
        if path == self._ring_ref_path:
            self._published = True

    def _setup(self, tap: tapmod.Tap) -> Datapath:
        self._published = False
        neg = features.negotiate_with(self.xs, self.peer_dir, self.features)
        return Datapath.connect(
            self.xs, self.guest, layout.queue_dir(self.guest, self.devid, 0), tap, neg
        )

    def _observe(self) -> list[Action]:
        base = self.own_dir
        own = layout.read_optional(self.xs, f"{base}/state")
        if own is None and layout.read_optional(self.xs, base) is None:
            return self.machine.device_removed()
        online = layout.read_online(self.xs, base)
        acts: list[Action] = []
        if online != self.machine.online:
            acts += self.machine.set_online(online)
        st = self.machine.state
        if layout.state_of(own) is XenbusState.CLOSING and not self.machine.released and (
            st not in (XenbusState.CLOSING, XenbusState.CLOSED)
            or (st == XenbusState.CLOSED and not online)
        ):
            log.info("%s: the toolstack closes the device", self.name)
            acts += self.machine.toolstack_close()
        elif st == XenbusState.INIT_WAIT and self._published:
            fe = layout.read_optional(self.xs, f"{self.peer_dir}/state")
            if layout.state_of(fe) is XenbusState.CONNECTED:  # with a fresh vchan: set up again
                self._published = False
                acts += self.machine.peer_changed(fe)
        return acts

    def describe(self) -> dict[str, Any]:
        v = self.view
        return {
            "mac": v.mac if v else None,
            "mtu": v.mtu if v else None,
            "bridge": self.bridge,
        }


class Backend:
    """Discovers devices under ``backend/ncvif`` and keeps one BackendVif per device."""

    role = "backend"

    def __init__(self, ctx: VifContext, table: VifTable) -> None:
        self.ctx = ctx
        self.table = table
        self.root = layout.backend_root(ctx.domid)
        self._events: asyncio.Queue[object] = asyncio.Queue()
        table.on_vif_gone = lambda vif: self._events.put_nowait("vif-gone")

    async def run(self) -> None:
        live = live_ifnames(self.ctx.xs, self.ctx.domid)
        for name in netlink.remove_stale_taps(_TAP_RE, live):
            log.info("removed stale %s (its device is gone)", name)
        watches = [Watch(self.ctx.xs, p, self._events) for p in (self.root, "@releaseDomain")]
        try:
            for w in watches:
                w.start()  # type: ignore[arg-type]
            while True:
                await self._events.get()
                while not self._events.empty():
                    self._events.get_nowait()
                self._reap_dead_domains()
                self._scan()
        finally:
            for w in watches:
                w.close()

    def _scan(self) -> None:
        xs = self.ctx.xs
        for fe, devid in layout.list_backend_devices(xs, self.ctx.domid):
            if (fe, devid) in self.table:
                continue
            base = layout.backend_dir(self.ctx.domid, fe, devid)
            if not layout.read_online(xs, base):
                continue
            if layout.read_optional(xs, layout.frontend_dir(fe, devid)) is None:
                continue
            log.info("new device: domain %d devid %d", fe, devid)
            self.table.spawn(BackendVif(self.ctx, fe, devid))

    def _reap_dead_domains(self) -> None:
        xs = self.ctx.xs
        for name in layout.list_optional(xs, self.root):
            try:
                fe = parse.domid(self.root, name)
            except parse.BadEntry:
                continue
            if layout.domain_exists(xs, fe):
                continue
            log.info("domain %d is gone: removing its ncvif backend entries", fe)
            try:
                xs.rm(f"{self.root}/{fe}", missing_ok=True)
            except OSError as exc:
                log.warning("removing %s/%d: %s", self.root, fe, exc)
            for vif in self.table.vifs():
                if vif.guest == fe:
                    vif.poke("domain gone")


def live_ifnames(xs: Any, be: int) -> set[str]:
    """TAP names of the devices that are online under ``be``'s backend directory."""
    return {
        layout.backend_ifname(fe, devid)
        for fe, devid in layout.list_backend_devices(xs, be)
        if layout.read_online(xs, layout.backend_dir(be, fe, devid))
    }
