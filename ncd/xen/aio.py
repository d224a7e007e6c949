"""asyncio integration: xenstore watches without blocking the loop.

* ``async for ev in watcher(xs, path)`` / ``async with Watch(xs, path) as w``: watch events
  from ``xs_fileno`` via ``loop.add_reader`` and the non-blocking ``xs_check_watch``;
* ``await wait_until(xs, paths, predicate, timeout)``: re-evaluate ``predicate`` on every
  watch event under ``paths`` until it returns something truthy (mirage-net-xen style);
* ``await run_in_transaction(xs, fn)``: a transaction retried on conflict, the loop running
  other tasks between attempts.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from .errors import XenError
from .xenstore import Transaction, TransactionRetry, WatchEvent, XenStore

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


async def run_in_transaction(
    xs: XenStore, fn: Callable[[Transaction], R], attempts: int = 16, backoff: float = 0.001
) -> R:
    """:meth:`XenStore.run_in_transaction` for the event loop: run ``fn(t)`` in a
    transaction and commit; after a conflict (EAGAIN), await the backoff (other tasks
    run meanwhile) and try again, up to ``attempts`` in all."""
    retry = TransactionRetry(attempts, backoff)
    while True:
        try:
            with xs.transaction() as t:
                return fn(t)
        except XenError as exc:
            await asyncio.sleep(retry.pause(exc))
