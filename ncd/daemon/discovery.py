"""Device discovery, one loop for both roles: one vif per device the role finds.

At start, TAPs named like the role's whose device is gone are removed (persistent
TAPs a crashed daemon left). Then each burst of watch events (and each vif that
ended) leads to one look: when every event of the burst names a device
(:attr:`Devices.key_of`), at those devices only: a vif for each that is complete
enough and has none yet (events under a device that has its vif, such as the vif's
own writes, cost nothing); otherwise (start, a vif ended, ``@releaseDomain``) a full
scan: the role's sweep (the backend removes the entries of dead domains), then every
listed device. A backend's full scan reads every domain's directory, so scanning on
every event made 64 attaches cost ~3,000 xenstore round trips (docs/performance.md).
What differs between the roles is a :class:`Devices` value, built by
:func:`.backend.devices` and :func:`.frontend.devices`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ncd import parse
from ncd.parse import BadEntry
from ncd.xen.aio import Watch
from ncd.xen.xenstore import WatchEvent

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
    # the device a watch event's path is about, None when it is about none in particular
    key_of: Callable[[str], DeviceKey | None] = lambda path: None


def device_keys(root: str, domid: int | None = None) -> Callable[[str], DeviceKey | None]:
    """A ``key_of`` for devices at ``root/<domid>/<devid>`` (a backend's: keyed by
    frontend domain) or, given ``domid``, at ``root/<devid>`` (a frontend's own)."""
    prefix = root + "/"

    def key_of(path: str) -> DeviceKey | None:
        if not path.startswith(prefix):
            return None
        parts = path[len(prefix) :].split("/")
        try:
            if domid is not None:
                return domid, parse.devid(path, parts[0])
            if len(parts) < 2:
                return None  # a frontend domain's directory: maybe several devices
            return parse.domid(path, parts[0]), parse.devid(path, parts[1])
        except BadEntry:
            return None

    return key_of


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
                burst = [await self._events.get()]
                while not self._events.empty():
                    burst.append(self._events.get_nowait())
                keys = self._named(burst)
                if keys is None:
                    d.sweep(self.table)
                self._scan(d.listed() if keys is None else sorted(keys))
        finally:
            await watches.close()

    def _named(self, burst: list[object]) -> set[DeviceKey] | None:
        """The devices a burst of events is about; None when one is about no single device."""
        keys = set()
        for ev in burst:
            key = self.devices.key_of(ev.path) if isinstance(ev, WatchEvent) else None
            if key is None:
                return None
            keys.add(key)
        return keys

    def _scan(self, keys: Iterable[DeviceKey]) -> None:
        d = self.devices
        for key in keys:
            if key in self.table or not d.ready(key):
                continue
            self.log.info("new device: domain %d devid %d", *key)
            self.table.spawn(d.make_vif(key))
