"""VchanServer / VchanClient: libxenvchan-compatible channels over ``ncd._hotpath``.

Blocking-free by design: ``read``/``write`` move what they can and return; use
``fileno()`` with poll, or the asyncio helpers (``wait_event``, ``read_async``,
``write_all_async``, ``drain_async``). Failures raise :class:`VchanError` (an
``OSError`` with errno) naming the C call.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import warnings
from typing import Any

from ncd.parse import DOMID_MAX
from ncd.xen.errors import XenError

from . import xsentry
from ._lib import ffi, lib
from .aio import EventWaiter

DEFAULT_RING: int = lib.NCD_VCHAN_DEFAULT_RING
MAX_RING: int = lib.NCD_VCHAN_MAX_RING
GNTALLOC_LIMIT: int = lib.NCD_VCHAN_GNTALLOC_LIMIT
ERRLEN = 512


class VchanError(XenError):
    """A vchan call failed; ``errno`` is set, ``call`` names the C function."""


def grants_needed(read_min: int, write_min: int) -> int:
    """Grants one vchan with these ring sizes uses (control page + ring pages)."""
    return int(lib.ncd_vchan_grants_needed(read_min, write_min))


def _raise(call: str, err: Any = None) -> None:
    code = ffi.errno or errno_mod.EIO
    detail = ffi.string(err).decode(errors="replace") if err is not None else None
    raise VchanError(code, call, detail or None)


def _timeout_ms(timeout: float | None) -> int:
    return -1 if timeout is None else max(0, min(int(timeout * 1000), 2**31 - 1))


class Vchan:
    """One end of a vchan (common to server and client)."""

    def __init__(self, handle: Any, peer_domid: int) -> None:
        self._h: Any = handle
        self.peer_domid = peer_domid
        self._waiter: EventWaiter | None = None
        self._iov = ffi.new("struct iovec[2]")

    # -- plumbing ----------------------------------------------------------------
    def _handle(self) -> Any:
        if self._h is None:
            raise VchanError(errno_mod.EBADF, "ncd_vchan", "vchan is closed")
        return self._h

    @property
    def closed(self) -> bool:
        return self._h is None

    def fileno(self) -> int:
        return int(lib.ncd_vchan_fd(self._handle()))

    def wait(self) -> None:
        """Consume one pending event (call when fileno() is readable)."""
        if lib.ncd_vchan_wait(self._handle()) < 0:
            _raise("ncd_vchan_wait")

    def _raise_io(self, call: str) -> None:
        """Raise for a failed ring call; EPROTO carries the hostile value the C side
        recorded (``close_reason``), so the one log line of the caller names it."""
        code = ffi.errno or errno_mod.EIO  # before another C call replaces it
        reason = self.close_reason if code == errno_mod.EPROTO and self._h is not None else None
        raise VchanError(code, call, f"hostile peer: {reason}" if reason else None)

    def is_open(self) -> int:
        """0 closed, 1 open, 2 server still waiting for its client."""
        return int(lib.ncd_vchan_is_open(self._handle()))

    def data_ready(self) -> int:
        n = lib.ncd_vchan_data_ready(self._handle())
        if n < 0:
            self._raise_io("ncd_vchan_data_ready")
        return int(n)

    def buffer_space(self) -> int:
        n = lib.ncd_vchan_buffer_space(self._handle())
        if n < 0:
            self._raise_io("ncd_vchan_buffer_space")
        return int(n)

    def wait_data(self, n: int, *, spin_us: int = 0, timeout: float | None = None) -> int:
        """Block (GIL released) until ``n`` bytes are readable: spin ``spin_us`` on the
        peer's index, then sleep on the event channel. Returns the readable count, 0 on
        timeout; raises EPIPE once the peer closed with fewer than ``n`` bytes left."""
        r = lib.ncd_vchan_wait_data(self._handle(), n, spin_us, _timeout_ms(timeout))
        if r < 0:
            self._raise_io("ncd_vchan_wait_data")
        return int(r)

    def wait_space(self, n: int, *, spin_us: int = 0, timeout: float | None = None) -> int:
        """Block (GIL released) until ``n`` bytes are writable; like :meth:`wait_data`."""
        r = lib.ncd_vchan_wait_space(self._handle(), n, spin_us, _timeout_ms(timeout))
        if r < 0:
            self._raise_io("ncd_vchan_wait_space")
        return int(r)

    def unconsumed(self) -> int:
        """Bytes we wrote that the peer has not read yet."""
        return int(lib.ncd_vchan_unconsumed(self._handle()))

    @property
    def read_size(self) -> int:
        return int(lib.ncd_vchan_read_size(self._handle()))

    @property
    def write_size(self) -> int:
        return int(lib.ncd_vchan_write_size(self._handle()))

    @property
    def tracked_pages(self) -> int:
        """Pages of the peer this end mapped and registered in the process's foreign-page
        tracker (control page + separate ring pages; a client only; 0 once closed)."""
        h = self._h
        return 0 if h is None else int(lib.ncd_vchan_tracked_pages(h))

    @property
    def close_reason(self) -> str | None:
        r = lib.ncd_vchan_close_reason(self._handle())
        return None if r == ffi.NULL else ffi.string(r).decode()

    def stats(self) -> dict[str, int]:
        s = ffi.new("struct ncd_vchan_stats *")
        lib.ncd_vchan_get_stats(self._handle(), s)
        return {
            "notify_sent": s.notify_sent,
            "notify_recv": s.notify_recv,
            "ring_full_waits": s.ring_full_waits,
            "bad_peer": s.bad_peer,
            "notify_failed": s.notify_failed,
        }

    # -- data ----------------------------------------------------------------------
    def readinto(self, buf: bytearray | memoryview) -> int:
        """Copy up to len(buf) bytes; 0 when nothing is ready (see is_open for EOF)."""
        n = lib.ncd_vchan_read(self._handle(), ffi.from_buffer(buf), len(buf))
        if n < 0:
            self._raise_io("ncd_vchan_read")
        return int(n)

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Copy what fits; returns the count (0 when the ring is full)."""
        if not len(data):
            return 0
        n = lib.ncd_vchan_write(self._handle(), ffi.from_buffer(data), len(data))
        if n < 0:
            self._raise_io("ncd_vchan_write")
        return int(n)

    def shared_page(self) -> Any:
        """The 4096-byte control page as a writable cffi buffer (tests)."""
        return ffi.buffer(ffi.cast("char *", lib.ncd_vchan_shared_page(self._handle())), 4096)

    # -- asyncio -------------------------------------------------------------------
    async def wait_event(self) -> None:
        """Sleep until the peer notifies us (the event is consumed for us)."""
        loop = asyncio.get_running_loop()
        if self._waiter is not None and self._waiter.loop is not loop:
            self._waiter.close()
            self._waiter = None
        if self._waiter is None:
            self._waiter = EventWaiter(loop, self.fileno(), self._consume)
        await self._waiter.wait()

    def _consume(self) -> None:
        if self._h is not None:
            self.wait()

    async def wait_connected(self) -> None:
        while self.is_open() == 2:
            await self.wait_event()

    async def read_async(self, n: int) -> bytes:
        """Up to n bytes; b"" once the peer closed and the ring is empty."""
        buf = bytearray(n)
        while True:
            got = self.readinto(buf)
            if got:
                return bytes(buf[:got])
            if not self.is_open() and not self.data_ready():
                return b""
            await self.wait_event()

    async def write_all_async(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self.write(view)
            view = view[n:]
            if view:
                await self.wait_event()

    async def drain_async(self) -> None:
        """Until the peer consumed everything we wrote (or closed)."""
        while self.unconsumed() and self.is_open():
            lib.ncd_vchan_request_notify(self._handle(), 1, 0)
            if not self.unconsumed():
                break
            await self.wait_event()

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        h, self._h = self._h, None
        if h is not None:
            lib.ncd_vchan_close(h)

    def __enter__(self) -> Vchan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # No I/O from a finalizer: owners call close() (or use ``with``). A forgotten
        # vchan only gets its C handle freed here (memory, grants, port) and a
        # ResourceWarning; a server's xenstore entry is left alone.
        h = getattr(self, "_h", None)
        if h is not None:
            self._h = None
            warnings.warn(
                f"{type(self).__name__} to dom{self.peer_domid} was not closed",
                ResourceWarning,
                stacklevel=2,
            )
            lib.ncd_vchan_close(h)


class VchanServer(Vchan):
    """The granting side; publishes ring-ref / event-channel under ``xs_path``."""

    def __init__(self, handle: Any, peer_domid: int, xs: Any = None, xs_path: str | None = None,
                 gref: int = 0, port: int = 0) -> None:
        super().__init__(handle, peer_domid)
        self._xs = xs
        self.xs_path = xs_path
        self.gref = gref
        self.port = port

    @classmethod
    def create(cls, xs: Any, peer_domid: int, xs_path: str, read_min: int = DEFAULT_RING,
               write_min: int = DEFAULT_RING) -> VchanServer:
        """Grant, bind and publish; read_min is the ring we read, write_min the one we write."""
        if not 0 <= peer_domid <= DOMID_MAX:
            raise ValueError(f"bad peer domid {peer_domid}")
        out = ffi.new("struct ncd_vchan **")
        gref = ffi.new("uint32_t *")
        port = ffi.new("uint32_t *")
        err = ffi.new("char[]", ERRLEN)
        if lib.ncd_vchan_server_init(out, peer_domid, read_min, write_min, gref, port, err,
                                     ERRLEN) < 0:
            _raise(f"ncd_vchan_server_init(dom{peer_domid}, {read_min}, {write_min})", err)
        srv = cls(out[0], peer_domid, xs, xs_path, int(gref[0]), int(port[0]))
        try:
            xsentry.publish(xs, xs_path, xsentry.own_domid(xs), peer_domid, srv.gref, srv.port)
        except BaseException:
            srv._xs = None  # nothing to remove: the transaction did not commit
            srv.close()
            raise
        return srv

    def close(self) -> None:
        """Release the channel and remove its xenstore entry (the owner's explicit call)."""
        xs, self._xs = getattr(self, "_xs", None), None
        super().close()
        if xs is not None and self.xs_path:
            try:
                xsentry.remove(xs, self.xs_path)
            except OSError:
                pass  # the store went away first; nothing left to clean


class VchanClient(Vchan):
    """The mapping side."""

    @classmethod
    def connect(cls, xs: Any, peer_domid: int, xs_path: str) -> VchanClient:
        """Read and validate ring-ref / event-channel, map, bind, wake the server."""
        if not 0 <= peer_domid <= DOMID_MAX:
            raise ValueError(f"bad peer domid {peer_domid}")
        gref, port = xsentry.read_entry(xs, xs_path)
        return cls.attach(peer_domid, gref, port)

    @classmethod
    def attach(cls, peer_domid: int, gref: int, port: int) -> VchanClient:
        out = ffi.new("struct ncd_vchan **")
        err = ffi.new("char[]", ERRLEN)
        if lib.ncd_vchan_client_init(out, peer_domid, gref, port, err, ERRLEN) < 0:
            _raise(f"ncd_vchan_client_init(dom{peer_domid}, gref {gref}, port {port})", err)
        return cls(out[0], peer_domid)


def local_server(read_min: int = DEFAULT_RING, write_min: int = DEFAULT_RING) -> VchanServer:
    """An in-memory server (tests): its client comes from :func:`local_client`."""
    out = ffi.new("struct ncd_vchan **")
    err = ffi.new("char[]", ERRLEN)
    if lib.ncd_vchan_local_server(out, read_min, write_min, err, ERRLEN) < 0:
        _raise("ncd_vchan_local_server", err)
    return VchanServer(out[0], 0)


def local_client(server: VchanServer) -> VchanClient:
    out = ffi.new("struct ncd_vchan **")
    err = ffi.new("char[]", ERRLEN)
    if lib.ncd_vchan_local_client(out, server._handle(), err, ERRLEN) < 0:
        _raise("ncd_vchan_local_client", err)
    return VchanClient(out[0], 0)


def local_pair(read_min: int = DEFAULT_RING,
               write_min: int = DEFAULT_RING) -> tuple[VchanServer, VchanClient]:
    srv = local_server(read_min, write_min)
    return srv, local_client(srv)
