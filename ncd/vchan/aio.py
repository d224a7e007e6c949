"""asyncio glue: one reader callback per vchan fd wakes every task waiting on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class EventWaiter:
    """Consumes the vchan's events (``on_event``) and wakes all current waiters.

    Callers check the ring, then ``await wait()`` without yielding in between: an
    event that arrives in that window is delivered after they registered.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int,
                 on_event: Callable[[], None]) -> None:
        self.loop = loop
        self._fd = fd
        self._on_event = on_event
        self._waiters: list[asyncio.Future[None]] = []
        loop.add_reader(fd, self._ready)

    def _ready(self) -> None:
        try:
            self._on_event()
        except OSError:
            pass  # spurious wakeup (EAGAIN); waiters re-check the ring anyway
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self) -> None:
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(fut)
        await fut

    def close(self) -> None:
        self.loop.remove_reader(self._fd)
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
