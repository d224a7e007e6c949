"""Link operations (pyroute2 rtnetlink) for the daemon, off the event loop's thread.

pyroute2's synchronous ``IPRoute`` drives an asyncio loop of its own, which
cannot run on a thread whose loop is already running, and every new ``IPRoute``
costs a few KB of native memory that is never returned. So the daemon keeps one
``IPRoute`` on one dedicated worker thread and runs every link operation there;
the coroutines here await the result, so the event loop keeps serving other vifs
meanwhile. The namespace is the process's: the daemon runs inside its domain's
namespace.

pyroute2 (0.9) files every reply whose sequence number no request is waiting
for (a late ACK: one per TAP configured) in its socket's root queue, which
nobody reads: one reply per attach, each pinning part of a 64 KB receive
buffer, so RSS grew ~1.8 KB per TAP set up and removed, without end.
:func:`call` empties that queue after every operation (nothing is ever waiting
on it between operations: this IPRoute joins no multicast group).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyroute2 import IPRoute

from ncd import tap as tapmod

R = TypeVar("R")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncd-netlink")
_local = threading.local()


def _ipr() -> IPRoute:
    ipr = getattr(_local, "ipr", None)
    if ipr is None:
        ipr = _local.ipr = IPRoute()
    return ipr


def drop_stray_replies(ipr: IPRoute) -> int:
    """Discard replies queued for no request (see the module notes); returns how many."""
    queue = getattr(getattr(getattr(ipr, "asyncore", None), "msg_queue", None), "root", None)
    if not isinstance(queue, asyncio.Queue):
        return 0
    dropped = 0
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            return dropped
        queue.task_done()
        dropped += 1


def _run(fn: Callable[[IPRoute], R]) -> R:
    ipr = _ipr()
    try:
        return fn(ipr)
    finally:
        drop_stray_replies(ipr)


async def call(fn: Callable[[IPRoute], R]) -> R:
    """``fn(ipr)`` on the netlink thread with its long-lived IPRoute; exceptions propagate.

    Operations run one at a time in submission order (one worker thread)."""
    return await asyncio.get_running_loop().run_in_executor(_executor, _run, fn)


async def configure(name: str, *, mac: str | None = None, mtu: int | None = None,
                    bridge: str | None = None) -> None:
    """MAC / MTU / bridge, and up (see :func:`ncd.tap.configure`)."""
    await call(
        lambda ipr: tapmod.configure(name, mac=mac, mtu=mtu, bridge=bridge, up=True, ipr=ipr)
    )


async def delete(name: str) -> bool:
    return await call(lambda ipr: tapmod.delete(name, ipr=ipr))


async def remove_stale_taps(pattern: re.Pattern[str], live: set[str]) -> list[str]:
    """Delete TAPs named like ``pattern`` that are not in ``live``: persistent TAPs left by
    a crashed daemon whose device is gone. Returns the names removed."""

    def work(ipr: IPRoute) -> list[str]:
        stale = []
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if name and pattern.fullmatch(name) and kind == "tun" and name not in live:
                stale.append(name)
        for name in stale:
            tapmod.delete(name, ipr=ipr)
        return stale

    return await call(work)


async def link_kind(name: str) -> str | None:
    """The rtnetlink kind (``IFLA_INFO_KIND``: "bridge", "tun", "openvswitch"...) of the
    link ``name``; "" for a link of no kind (a NIC), None when there is no such link."""

    def work(ipr: IPRoute) -> str | None:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        return kind or ""

    return await call(work)
