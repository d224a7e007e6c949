"""The frontend role (a guest): one TAP (``nc<devid>`` by default) per device.

Watches ``device/ncvif`` under its home; each device gets a :class:`FrontendVif`
that serves the vchan (grants, publishes ``queue-0``) once the backend is in
InitWait, as netfront does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from ncd import features, layout, parse
from ncd import tap as tapmod
from ncd.xen.aio import Watch
from ncd.xenbus import Action, Role

from . import netlink
from .datapath import Datapath
from .service import VifTable
from .vif import Vif, VifContext, open_persistent_tap

log = logging.getLogger("ncd.frontend")


class FrontendVif(Vif):
    role = Role.FRONTEND

    def __init__(self, ctx: VifContext, devid: int) -> None:
        super().__init__(ctx, ctx.domid, devid)
        self.view: layout.FrontendView | None = None
        self._backend = -1
        self._backend_dir = ""
        self._read_backend_ref()

    def _read_backend_ref(self) -> None:
        """Where the backend is, as early as possible (the peer watch needs it)."""
        base = self.own_dir
        try:
            raw = layout.read_optional(self.xs, f"{base}/backend-id")
            be = parse.domid("backend-id", raw)
            self._backend_dir = parse.exact(
                "backend",
                layout.read_optional(self.xs, f"{base}/backend"),
                layout.backend_dir(be, self.guest, self.devid),
            )
            self._backend = be
        except (parse.BadEntry, OSError):
            self._backend_dir = f"{base}/backend-unknown"

    @property
    def peer(self) -> int:
        return self._backend

    @property
    def own_dir(self) -> str:
        return layout.frontend_dir(self.guest, self.devid)

    @property
    def peer_dir(self) -> str:
        return self._backend_dir

    @property
    def ifname(self) -> str:
        return self.ctx.config.frontend_ifname(self.devid)

    def _load(self) -> None:
        self.view = layout.read_frontend(self.xs, self.guest, self.devid)
        if self.view.backend_path != self._backend_dir:
            raise parse.BadEntry(f"{self.own_dir}/backend changed under us")

    def _open_tap(self) -> tapmod.Tap:
        assert self.view is not None
        tap = open_persistent_tap(self.ifname)
        try:
            netlink.configure(self.ifname, mac=self.view.mac, mtu=self.view.mtu)
        except BaseException:
            tap.close()
            netlink.delete(self.ifname)
            raise
        return tap

    def _setup(self, tap: tapmod.Tap) -> Datapath:
        neg = features.negotiate_with(self.xs, self.peer_dir, self.features)
        ring = self.ctx.config.channel.ring_bytes
        path = layout.queue_dir(self.guest, self.devid, 0)
        return Datapath.serve(self.xs, self._backend, path, ring, tap, neg)

    def _observe(self) -> list[Action]:
        if layout.read_optional(self.xs, self.own_dir) is None:
            return self.machine.device_removed()
        return []

    def describe(self) -> dict[str, Any]:
        v = self.view
        return {"mac": v.mac if v else None, "mtu": v.mtu if v else None, "bridge": None}


class Frontend:
    """Discovers devices under ``device/ncvif`` and keeps one FrontendVif per device."""

    role = "frontend"

    def __init__(self, ctx: VifContext, table: VifTable) -> None:
        self.ctx = ctx
        self.table = table
        self.root = layout.frontend_root(ctx.domid)
        self._events: asyncio.Queue[object] = asyncio.Queue()
        table.on_vif_gone = lambda vif: self._events.put_nowait("vif-gone")

    async def run(self) -> None:
        live = {
            self.ctx.config.frontend_ifname(d)
            for d in layout.list_frontend_devices(self.ctx.xs, self.ctx.domid)
        }
        pattern = template_regex(self.ctx.config.frontend.ifname)
        for name in netlink.remove_stale_taps(pattern, live):
            log.info("removed stale %s (its device is gone)", name)
        watch = Watch(self.ctx.xs, self.root, self._events)  # type: ignore[arg-type]
        try:
            watch.start()
            while True:
                await self._events.get()
                while not self._events.empty():
                    self._events.get_nowait()
                self._scan()
        finally:
            watch.close()

    def _scan(self) -> None:
        xs = self.ctx.xs
        for devid in layout.list_frontend_devices(xs, self.ctx.domid):
            if (self.ctx.domid, devid) in self.table:
                continue
            base = layout.frontend_dir(self.ctx.domid, devid)
            if layout.read_optional(xs, f"{base}/backend-id") is None:
                continue  # not (yet) a complete device
            log.info("new device: devid %d", devid)
            self.table.spawn(FrontendVif(self.ctx, devid))


def template_regex(template: str) -> re.Pattern[str]:
    """The TAP names a template such as ``nc{devid}`` produces."""
    head, _, tail = template.partition("{devid}")
    return re.compile(re.escape(head) + r"\d+" + re.escape(tail))
