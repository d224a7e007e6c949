"""Device discovery, one loop for both roles: one vif per device the role finds.

At start, TAPs named like the role's whose device is gone are removed (persistent
TAPs a crashed daemon left). Then each burst of watch events (and each vif that
ended) leads to one scan: the role's sweep (the backend removes the entries of
dead domains), then a vif for every listed device that is complete enough and has
none yet. What differs between the roles is a :class:`Devices` value, built by
:func:`.backend.devices` and :func:`.frontend.devices`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ncd.xen.aio import Watch

from . import netlink
from .service import VifTable
from .undo import UndoStack
from .vif import Vif, VifContext

DeviceKey = tuple[int, int]  # (frontend domid, devid)


def _no_sweep(table: VifTable) -> None:
    del table


@dataclass(frozen=True)
class Devices:
    """One role's answers to discovery's questions."""

    role: str  # "backend" / "frontend": names the logger
    watch: tuple[str, ...]  # xenstore paths whose changes mean "scan again"
    tap_pattern: re.Pattern[str]  # the names of the TAPs this role creates
    live_ifnames: Callable[[], set[str]]  # TAP names of the devices that still exist
    listed: Callable[[], Iterable[DeviceKey]]  # the devices in the role's directory
    ready: Callable[[DeviceKey], bool]  # complete enough to pick up
    make_vif: Callable[[DeviceKey], Vif]
    sweep: Callable[[VifTable], None] = _no_sweep  # before every scan
    # after stale TAPs were removed, what else they held (the backend: OVS ports)
    forget_stale: Callable[[list[str]], Awaitable[None]] | None = None


class Discovery:
    """Keeps one vif per device of ``devices`` in ``table``."""

    def __init__(self, ctx: VifContext, table: VifTable, devices: Devices) -> None:
        self.ctx = ctx
        self.table = table
        self.devices = devices
        self.log = logging.getLogger(f"ncd.{devices.role}")
        self._events: asyncio.Queue[object] = asyncio.Queue()
        table.on_vif_gone(lambda vif: self._events.put_nowait("vif-gone"))

    async def run(self) -> None:
        d = self.devices
        stale = await netlink.remove_stale_taps(d.tap_pattern, d.live_ifnames())
        for name in stale:
            self.log.info("removed stale %s (its device is gone)", name)
        if stale and d.forget_stale is not None:
            await d.forget_stale(stale)
        watches = UndoStack(f"{d.role} discovery")
        try:
            for path in d.watch:
                w = Watch(self.ctx.xs, path, self._events)  # type: ignore[arg-type]
                w.start()
                watches.push(f"watch on {path}", w.close)
            while True:
                await self._events.get()
                while not self._events.empty():
                    self._events.get_nowait()
                d.sweep(self.table)
                self._scan()
        finally:
            await watches.close()

    def _scan(self) -> None:
        d = self.devices
        for key in d.listed():
            if key in self.table or not d.ready(key):
                continue
            self.log.info("new device: domain %d devid %d", *key)
            self.table.spawn(d.make_vif(key))
