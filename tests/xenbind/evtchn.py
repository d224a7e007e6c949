"""libxenevtchn: event channels (bind, notify, pending, unmask, unbind); for asyncio,
:class:`AsyncEvtchn`."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from ncd.xen.errors import XenError

from ._lib import fail, ffi, lib

_PORT_MAX = 1 << 31


def _port(port: int) -> int:
    if not 0 < port < _PORT_MAX:
        raise ValueError(f"event channel port {port} out of range")
    return port


def _domid(domid: int) -> int:
    if not 0 <= domid < 0x10000:
        raise ValueError(f"domid {domid} out of range")
    return domid


class Evtchn:
    """An open event-channel handle (``xenevtchn_open``); its fd becomes readable on events."""

    def __init__(self) -> None:
        h = lib.xenevtchn_open(ffi.NULL, 0)
        if h == ffi.NULL:
            fail("xenevtchn_open()")
        self._h: Any = h
        self._ports: set[int] = set()

    def _handle(self, call: str) -> Any:
        if self._h is None:
            raise XenError(errno.EBADF, call, "event channel handle is closed")
        return self._h

    @property
    def ports(self) -> frozenset[int]:
        """Local ports bound through this handle."""
        return frozenset(self._ports)

    def fileno(self) -> int:
        call = "xenevtchn_fd()"
        fd = lib.xenevtchn_fd(self._handle(call))
        if fd < 0:
            fail(call)
        return int(fd)

    def bind_unbound_port(self, domid: int) -> int:
        """New local port that ``domid`` may bind to; returns the port."""
        call = f"xenevtchn_bind_unbound_port(domid={domid})"
        port = lib.xenevtchn_bind_unbound_port(self._handle(call), _domid(domid))
        if port < 0:
            fail(call)
        self._ports.add(port)
        return int(port)

    def bind_interdomain(self, domid: int, remote_port: int) -> int:
        """Connect to ``remote_port`` of ``domid`` (an unbound port it offered to us)."""
        call = f"xenevtchn_bind_interdomain(domid={domid}, remote_port={remote_port})"
        port = lib.xenevtchn_bind_interdomain(self._handle(call), _domid(domid), _port(remote_port))
        if port < 0:
            fail(call)
        self._ports.add(port)
        return int(port)

    def notify(self, port: int) -> None:
        call = f"xenevtchn_notify(port={port})"
        if lib.xenevtchn_notify(self._handle(call), _port(port)) < 0:
            fail(call)

    def pending(self) -> int:
        """Next port with an event; it stays masked until :meth:`unmask`.

        Blocks if nothing is pending: call it only once the fd is readable.
        """
        call = "xenevtchn_pending()"
        port = lib.xenevtchn_pending(self._handle(call))
        if port < 0:
            fail(call)
        return int(port)

    def unmask(self, port: int) -> None:
        call = f"xenevtchn_unmask(port={port})"
        if lib.xenevtchn_unmask(self._handle(call), _port(port)) < 0:
            fail(call)

    def unbind(self, port: int) -> None:
        call = f"xenevtchn_unbind(port={port})"
        if lib.xenevtchn_unbind(self._handle(call), _port(port)) < 0:
            fail(call)
        self._ports.discard(port)

    def close(self) -> None:
        """Close the handle (which unbinds its ports)."""
        h, self._h = self._h, None
        if h is not None:
            self._ports.clear()
            lib.xenevtchn_close(h)

    def __enter__(self) -> Evtchn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_h", None) is not None:
            self.close()


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
