"""libxengnttab: map other domains' grants, unmap, grant copy.

Mappings are :class:`~tests.xenbind.mapping.Mapping` objects (memoryviews with checked lifetime).
"""

from __future__ import annotations

import errno
import mmap
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ncd.xen.errors import XenError

from ._lib import address, fail, ffi, lib
from .mapping import PAGE_SIZE, Mapping

_NO_NOTIFY = 0xFFFFFFFF
_U32 = 1 << 32


class GrantStatus(IntEnum):
    """Per-segment status of a grant copy (``GNTST_*`` in xen/grant_table.h)."""

    okay = 0
    general_error = -1
    bad_domain = -2
    bad_gntref = -3
    bad_handle = -4
    bad_virt_addr = -5
    bad_dev_addr = -6
    no_device_space = -7
    permission_denied = -8
    bad_page = -9
    bad_copy_arg = -10
    address_too_big = -11
    eagain = -12
    no_space = -13


@dataclass(frozen=True)
class GrantRef:
    """A byte offset in a page granted by ``domid`` under ``ref`` (one side of a copy)."""

    domid: int
    ref: int
    offset: int = 0


Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class CopySegment:
    """Copy ``length`` bytes from ``source`` to ``dest``; each is a grant or a local buffer.

    A local source may be any bytes-like object; a local destination must be writable.
    """

    source: GrantRef | Buffer
    dest: GrantRef | Buffer
    length: int


def _status(code: int) -> GrantStatus | int:
    try:
        return GrantStatus(code)
    except ValueError:
        return code


def _u32(value: int, what: str) -> int:
    if not 0 <= value < _U32:
        raise ValueError(f"{what} {value} out of range")
    return value


def _prot(writable: bool) -> int:
    return mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)


class Gnttab:
    """An open grant-table handle (``xengnttab_open``)."""

    def __init__(self, max_grants: int | None = None) -> None:
        h = lib.xengnttab_open(ffi.NULL, 0)
        if h == ffi.NULL:
            fail("xengnttab_open()")
        self._h: Any = h
        self._maps: weakref.WeakSet[Mapping] = weakref.WeakSet()
        if max_grants is not None:
            self.set_max_grants(max_grants)

    def _handle(self, call: str) -> Any:
        if self._h is None:
            raise XenError(errno.EBADF, call, "grant table handle is closed")
        return self._h

    def fileno(self) -> int:
        return int(lib.xengnttab_fd(self._handle("xengnttab_fd()")))

    def set_max_grants(self, count: int) -> None:
        """Limit how many grants this handle may map (call right after opening)."""
        call = f"xengnttab_set_max_grants({count})"
        if lib.xengnttab_set_max_grants(self._handle(call), _u32(count, "count")) < 0:
            fail(call)

    # -- mapping ----------------------------------------------------------------------
    def _wrap(self, ptr: Any, npages: int, writable: bool, call: str) -> Mapping:
        if ptr == ffi.NULL:
            fail(call)

        def release() -> None:
            what = f"xengnttab_unmap({call})"
            if lib.xengnttab_unmap(self._handle(what), ptr, npages) < 0:
                fail(what)

        m = Mapping(address(ptr), npages, not writable, release, call)
        self._maps.add(m)
        return m

    def map_grant_ref(self, domid: int, ref: int, writable: bool = True) -> Mapping:
        """Map one page granted by ``domid``."""
        call = f"xengnttab_map_grant_ref(domid={domid}, ref={ref})"
        ptr = lib.xengnttab_map_grant_ref(
            self._handle(call), _u32(domid, "domid"), _u32(ref, "ref"), _prot(writable)
        )
        return self._wrap(ptr, 1, writable, call)

    def map_grant_refs(
        self, domids: Sequence[int], refs: Sequence[int], writable: bool = True
    ) -> Mapping:
        """Map ``refs[i]`` granted by ``domids[i]`` into one contiguous range."""
        if len(domids) != len(refs) or not refs:
            raise ValueError("map_grant_refs needs as many domids as refs, at least one")
        call = f"xengnttab_map_grant_refs(domids={list(domids)}, refs={list(refs)})"
        c_domids = ffi.new("uint32_t[]", [_u32(d, "domid") for d in domids])
        c_refs = ffi.new("uint32_t[]", [_u32(r, "ref") for r in refs])
        ptr = lib.xengnttab_map_grant_refs(
            self._handle(call), len(refs), c_domids, c_refs, _prot(writable)
        )
        return self._wrap(ptr, len(refs), writable, call)

    def map_domain_grant_refs(
        self, domid: int, refs: Sequence[int], writable: bool = True
    ) -> Mapping:
        """Map several pages granted by one domain into one contiguous range."""
        if not refs:
            raise ValueError("map_domain_grant_refs needs at least one ref")
        call = f"xengnttab_map_domain_grant_refs(domid={domid}, refs={list(refs)})"
        c_refs = ffi.new("uint32_t[]", [_u32(r, "ref") for r in refs])
        ptr = lib.xengnttab_map_domain_grant_refs(
            self._handle(call), len(refs), _u32(domid, "domid"), c_refs, _prot(writable)
        )
        return self._wrap(ptr, len(refs), writable, call)

    def map_grant_ref_notify(
        self,
        domid: int,
        ref: int,
        writable: bool = True,
        notify_offset: int | None = None,
        notify_port: int | None = None,
    ) -> Mapping:
        """Map one page; on unmap, zero the byte at ``notify_offset`` and/or notify the port.

        The peer uses this to learn that the mapping went away (also when we crash).
        """
        if notify_offset is not None and not 0 <= notify_offset < PAGE_SIZE:
            raise ValueError(f"notify_offset {notify_offset} outside the page")
        call = (
            f"xengnttab_map_grant_ref_notify(domid={domid}, ref={ref}, "
            f"offset={notify_offset}, port={notify_port})"
        )
        ptr = lib.xengnttab_map_grant_ref_notify(
            self._handle(call),
            _u32(domid, "domid"),
            _u32(ref, "ref"),
            _prot(writable),
            _NO_NOTIFY if notify_offset is None else notify_offset,
            _NO_NOTIFY if notify_port is None else _u32(notify_port, "port"),
        )
        return self._wrap(ptr, 1, writable, call)

    # -- grant copy -------------------------------------------------------------------
    def grant_copy(self, segments: Sequence[CopySegment]) -> list[GrantStatus | int]:
        """Copy between grants and local buffers; one status per segment, in order.

        The call itself failing raises :class:`XenError`; per-segment failures are
        reported in the statuses (``GrantStatus.okay`` on success).
        """
        if not segments:
            return []
        call = f"xengnttab_grant_copy({len(segments)} segments)"
        segs = ffi.new("xengnttab_grant_copy_segment_t[]", len(segments))
        keep: list[Any] = []
        for i, seg in enumerate(segments):
            if not 0 < seg.length <= PAGE_SIZE:
                raise ValueError(f"segment {i}: length {seg.length} not in 1..{PAGE_SIZE}")
            segs[i].len = seg.length
            flags = 0
            for side, end, writable in (("source", seg.source, False), ("dest", seg.dest, True)):
                ptr = getattr(segs[i], side)
                if isinstance(end, GrantRef):
                    if not 0 <= end.offset < 0x10000 or not 0 <= end.domid < 0x10000:
                        raise ValueError(f"segment {i}: bad {side} {end}")
                    ptr.foreign.ref = _u32(end.ref, "ref")
                    ptr.foreign.offset = end.offset
                    ptr.foreign.domid = end.domid
                    flags |= lib.GNTCOPY_source_gref if side == "source" else lib.GNTCOPY_dest_gref
                else:
                    buf = ffi.from_buffer(end, require_writable=writable)
                    if len(buf) < seg.length:
                        raise ValueError(
                            f"segment {i}: {side} buffer is {len(buf)} bytes, "
                            f"shorter than {seg.length}"
                        )
                    keep.append(buf)
                    ptr.virt = buf
            segs[i].flags = flags
        if lib.xengnttab_grant_copy(self._handle(call), len(segments), segs) < 0:
            fail(call)
        return [_status(segs[i].status) for i in range(len(segments))]

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every mapping (``BufferError`` if one still has views) and close."""
        if self._h is None:
            return
        for m in list(self._maps):
            m.unmap()
        h, self._h = self._h, None
        lib.xengnttab_close(h)

    def __del__(self) -> None:
        if getattr(self, "_h", None) is not None and not self._maps:
            self.close()

    def __enter__(self) -> Gnttab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
