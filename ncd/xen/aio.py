"""asyncio integration: xenstore watches and event channels without blocking the loop.

* ``async for ev in watcher(xs, path)`` / ``async with Watch(xs, path) as w``: watch events
  from ``xs_fileno`` via ``loop.add_reader`` and the non-blocking ``xs_check_watch``;
* ``await wait_until(xs, paths, predicate, timeout)``: re-evaluate ``predicate`` on every
  watch event under ``paths`` until it returns something truthy (mirage-net-xen style);
* :class:`AsyncEvtchn`: ``await ev.wait(port)`` for the next event on a port.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from .errors import XenError
from .evtchn import Evtchn
from .xenstore import WatchEvent, XenStore

R = TypeVar("R")
log = logging.getLogger(__name__)


class _WatchHub:
    """One reader on a XenStore's watch fd, dispatching events to queues by token."""

    def __init__(self, xs: XenStore, loop: asyncio.AbstractEventLoop) -> None:
        self.xs = xs
        self.loop = loop
        self.queues: dict[str, asyncio.Queue[WatchEvent]] = {}
        self.fd = xs.fileno()
        loop.add_reader(self.fd, self._drain)

    def _drain(self) -> None:
        while True:
            try:
                ev = self.xs.check_watch()
            except XenError:
                return  # connection gone; waiters time out or are closed by their owners
            if ev is None:
                return
            q = self.queues.get(ev.token)
            if q is not None:  # stale events of a removed watch are dropped
                q.put_nowait(ev)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)


_hubs: weakref.WeakKeyDictionary[XenStore, _WatchHub] = weakref.WeakKeyDictionary()


def _hub(xs: XenStore) -> _WatchHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(xs)
    if hub is None or hub.loop is not loop:
        if hub is not None:
            hub.close()
        hub = _hubs[xs] = _WatchHub(xs, loop)
    return hub


class Watch:
    """A xenstore watch delivering :class:`WatchEvent` s to the running event loop.

    xenstored fires every new watch once straight away, so the first event arrives at once.
    Use as ``async with Watch(xs, path) as w: async for ev in w: ...``.
    """

    def __init__(
        self, xs: XenStore, path: str, queue: asyncio.Queue[WatchEvent] | None = None
    ) -> None:
        self.xs = xs
        self.path = path
        self.token = xs.new_token("aio")
        self.queue: asyncio.Queue[WatchEvent] = queue if queue is not None else asyncio.Queue()
        self._hub: _WatchHub | None = None

    def start(self) -> None:
        if self._hub is not None:
            return
        hub = _hub(self.xs)
        hub.queues[self.token] = self.queue
        try:
            self.xs.watch(self.path, self.token)
        except BaseException:
            self._forget(hub)
            raise
        self._hub = hub

    def _forget(self, hub: _WatchHub) -> None:
        hub.queues.pop(self.token, None)
        if not hub.queues and _hubs.get(self.xs) is hub:
            hub.close()
            del _hubs[self.xs]

    def close(self) -> None:
        hub, self._hub = self._hub, None
        if hub is None:
            return
        try:
            if not self.xs.closed:
                self.xs.unwatch(self.path, self.token)
        except XenError as exc:  # the store went away: nothing left to unwatch
            log.debug("unwatch of %s failed: %s", self.path, exc)
        finally:
            self._forget(hub)

    async def get(self) -> WatchEvent:
        self.start()
        return await self.queue.get()

    async def __aenter__(self) -> Watch:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        return await self.get()


async def watcher(xs: XenStore, path: str) -> AsyncIterator[WatchEvent]:
    """``async for ev in watcher(xs, path)``; the watch is removed when the loop ends.

    (Wrap in ``contextlib.aclosing`` to remove it at once when breaking out.)
    """
    w = Watch(xs, path)
    w.start()
    try:
        while True:
            yield await w.queue.get()
    finally:
        w.close()


async def wait_until(
    xs: XenStore,
    paths: str | Sequence[str],
    predicate: Callable[[], R],
    timeout: float,
    what: str | None = None,
) -> R:
    """Wait until ``predicate()`` returns something truthy, and return it.

    ``predicate`` (which typically reads xenstore) is evaluated now and again after every
    watch event under ``paths``. Raises ``TimeoutError`` naming ``what`` (or the predicate)
    and the paths if it does not hold within ``timeout`` seconds.
    """
    path_list = [paths] if isinstance(paths, str) else list(paths)
    if not path_list:
        raise ValueError("wait_until needs at least one path to watch")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
    watches = [Watch(xs, p, queue) for p in path_list]
    try:
        for w in watches:
            w.start()
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                result = predicate()  # one last look: the write may have raced the deadline
                if result:
                    return result
                break
            while not queue.empty():  # coalesce a burst of events into one evaluation
                queue.get_nowait()
    finally:
        for w in watches:
            w.close()
    name = what or getattr(predicate, "__qualname__", repr(predicate))
    raise TimeoutError(
        f"wait_until: {name} did not hold within {timeout:g}s "
        f"(watching {', '.join(path_list)}; last result {result!r})"
    )


class AsyncEvtchn:
    """Awaitable event-channel events: one reader on the handle's fd, per-port counters.

    ``await aev.wait(port)`` returns the number of notifications that arrived since the last
    wait (at least 1), then unmasks the port (Xen delivers a masked port once).
    """

    def __init__(self, evtchn: Evtchn) -> None:
        self.evtchn = evtchn
        self.loop = asyncio.get_running_loop()
        self._counts: dict[int, int] = {}
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._fd = evtchn.fileno()
        self.loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            port = self.evtchn.pending()
        except XenError as exc:
            for futs in self._waiters.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(exc)
            self._waiters.clear()
            self.loop.remove_reader(self._fd)
            return
        self._counts[port] = self._counts.get(port, 0) + 1
        for f in self._waiters.pop(port, []):
            if not f.done():
                f.set_result(None)

    async def wait(self, port: int, timeout: float | None = None, unmask: bool = True) -> int:
        """Wait for the next event on ``port`` (one waiter per port at a time)."""
        if not self._counts.get(port):
            fut: asyncio.Future[None] = self.loop.create_future()
            self._waiters.setdefault(port, []).append(fut)
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise TimeoutError(f"no event on port {port} within {timeout:g}s") from None
        count = self._counts.pop(port, 0)
        if unmask:
            self.evtchn.unmask(port)
        return count

    def close(self) -> None:
        self.loop.remove_reader(self._fd)
        for futs in self._waiters.values():
            for f in futs:
                f.cancel()
        self._waiters.clear()

    async def __aenter__(self) -> AsyncEvtchn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
