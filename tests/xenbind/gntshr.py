"""libxengntshr: allocate pages and grant them to another domain."""

from __future__ import annotations

import errno
import weakref
from typing import Any

from ncd.xen.errors import XenError

from ._lib import address, fail, ffi, lib
from .mapping import PAGE_SIZE, Mapping

_NO_NOTIFY = 0xFFFFFFFF


class SharedPages(Mapping):
    """Pages this domain granted; ``refs`` are the grant references to publish."""

    def __init__(
        self, address: int, refs: list[int], readonly_for_peer: bool, release: Any, what: str
    ) -> None:
        super().__init__(address, len(refs), False, release, what)
        self.refs = refs
        self.readonly_for_peer = readonly_for_peer

    def unshare(self) -> None:
        """Stop sharing and free the pages (same as :meth:`unmap`)."""
        self.unmap()


class Gntshr:
    """An open grant-sharing handle (``xengntshr_open``)."""

    def __init__(self) -> None:
        h = lib.xengntshr_open(ffi.NULL, 0)
        if h == ffi.NULL:
            fail("xengntshr_open()")
        self._h: Any = h
        self._shares: weakref.WeakSet[SharedPages] = weakref.WeakSet()

    def _handle(self, call: str) -> Any:
        if self._h is None:
            raise XenError(errno.EBADF, call, "grant sharing handle is closed")
        return self._h

    def fileno(self) -> int:
        return int(lib.xengntshr_fd(self._handle("xengntshr_fd()")))

    def _wrap(self, ptr: Any, refs: list[int], writable: bool, call: str) -> SharedPages:
        if ptr == ffi.NULL:
            fail(call)
        n = len(refs)

        def release() -> None:
            what = f"xengntshr_unshare({call})"
            if lib.xengntshr_unshare(self._handle(what), ptr, n) < 0:
                fail(what)

        s = SharedPages(address(ptr), refs, not writable, release, call)
        self._shares.add(s)
        return s

    def share_pages(self, domid: int, count: int = 1, writable: bool = True) -> SharedPages:
        """Allocate ``count`` zeroed pages and grant them to ``domid``."""
        if not 0 < count < 1 << 20:
            raise ValueError(f"count {count} out of range")
        if not 0 <= domid < 0x10000:
            raise ValueError(f"domid {domid} out of range")
        call = f"xengntshr_share_pages(domid={domid}, count={count}, writable={writable})"
        refs = ffi.new("uint32_t[]", count)
        ptr = lib.xengntshr_share_pages(self._handle(call), domid, count, refs, int(writable))
        return self._wrap(ptr, list(refs), writable, call)

    def share_page_notify(
        self,
        domid: int,
        writable: bool = True,
        notify_offset: int | None = None,
        notify_port: int | None = None,
    ) -> SharedPages:
        """Share one page; on unshare, zero ``notify_offset`` and/or notify the port."""
        if notify_offset is not None and not 0 <= notify_offset < PAGE_SIZE:
            raise ValueError(f"notify_offset {notify_offset} outside the page")
        if not 0 <= domid < 0x10000:
            raise ValueError(f"domid {domid} out of range")
        call = (
            f"xengntshr_share_page_notify(domid={domid}, writable={writable}, "
            f"offset={notify_offset}, port={notify_port})"
        )
        ref = ffi.new("uint32_t *")
        ptr = lib.xengntshr_share_page_notify(
            self._handle(call),
            domid,
            ref,
            int(writable),
            _NO_NOTIFY if notify_offset is None else notify_offset,
            _NO_NOTIFY if notify_port is None else notify_port,
        )
        return self._wrap(ptr, [ref[0]], writable, call)

    def close(self) -> None:
        """Unshare everything (``BufferError`` if views are alive) and close."""
        if self._h is None:
            return
        for s in list(self._shares):
            s.unmap()
        h, self._h = self._h, None
        lib.xengntshr_close(h)

    def __del__(self) -> None:
        if getattr(self, "_h", None) is not None and not self._shares:
            self.close()

    def __enter__(self) -> Gntshr:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
