"""Link operations for the daemon, off the event loop's thread.

MAC, MTU, up and delete are ioctls and one rtnetlink request (:mod:`ncd.tap`); a
bridge port and a link's kind (the backend's) go through pyroute2: a backend opens it
at start (:func:`open_iproute`), a frontend never loads it. The namespace is the
process's: the daemon runs inside its domain's namespace.

pyroute2's synchronous ``IPRoute`` drives an asyncio loop of its own, which
cannot run on a thread whose loop is already running, and every new ``IPRoute``
costs a few KB of native memory that is never returned. So the daemon keeps one
``IPRoute`` on one dedicated worker thread and runs every link operation there;
the coroutines here await the result, so the event loop keeps serving other vifs
meanwhile.

pyroute2 (0.9) files every reply whose sequence number no request is waiting
for (a late ACK: one per TAP configured) in its socket's root queue, which
nobody reads: one reply per attach, each pinning part of a 64 KB receive
buffer, so RSS grew ~1.8 KB per TAP set up and removed, without end.
:func:`_ipr` empties that queue after every operation (nothing is ever waiting
on it between operations: this IPRoute joins no multicast group).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from ncd import tap as tapmod

if TYPE_CHECKING:
    from pyroute2 import IPRoute

R = TypeVar("R")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncd-netlink")
_local = threading.local()


@contextmanager
def _ipr() -> Iterator[IPRoute]:
    """The netlink thread's long-lived IPRoute, its stray replies dropped after use."""
    ipr = getattr(_local, "ipr", None)
    if ipr is None:
        from pyroute2 import IPRoute

        ipr = _local.ipr = IPRoute()
    try:
        yield ipr
    finally:
        drop_stray_replies(ipr)


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


async def open_iproute() -> None:
    """Open the netlink thread's IPRoute now (a backend, at start): one opened at the first
    bridge port would hold its sockets as if that vif had leaked them."""

    def work() -> None:
        with _ipr():
            pass

    await call(work)


async def call(fn: Callable[[], R]) -> R:
    """``fn()`` on the netlink thread; exceptions propagate.

    Operations run one at a time in submission order (one worker thread)."""
    return await asyncio.get_running_loop().run_in_executor(_executor, fn)


async def configure(
    name: str, *, mac: str | None = None, mtu: int | None = None, bridge: str | None = None
) -> None:
    """MAC / MTU / bridge, and up (see :func:`ncd.tap.configure`)."""

    def work() -> None:
        if bridge is None:
            tapmod.configure(name, mac=mac, mtu=mtu, up=True)
            return
        with _ipr() as ipr:
            tapmod.configure(name, mac=mac, mtu=mtu, bridge=bridge, up=True, ipr=ipr)

    await call(work)


async def delete(name: str) -> bool:
    return await call(lambda: tapmod.delete(name))


async def remove_stale_taps(pattern: re.Pattern[str], live: set[str]) -> list[str]:
    """Delete TAPs named like ``pattern`` that are not in ``live``: persistent TAPs left by
    a crashed daemon whose device is gone. Returns the names removed."""

    def work() -> list[str]:
        stale = [n for n in tapmod.tun_names() if pattern.fullmatch(n) and n not in live]
        for name in stale:
            tapmod.delete(name)
        return stale

    return await call(work)


async def link_kind(name: str) -> str | None:
    """The rtnetlink kind (``IFLA_INFO_KIND``: "bridge", "tun", "openvswitch"...) of the
    link ``name``; "" for a link of no kind (a NIC), None when there is no such link."""

    def work() -> str | None:
        with _ipr() as ipr:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                return None
            info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            return kind or ""

    return await call(work)
