"""Memory mapped from or shared with another domain, exposed as memoryviews that are safe.

A :class:`Mapping` hands out ``memoryview`` objects over the mapped pages. It refuses to
unmap while any of them (or any slice or buffer derived from them) is still alive, and
after unmapping it hands out nothing more: Python code can never touch unmapped memory.
Read-only mappings give read-only views, so writes raise ``TypeError`` instead of
faulting. The views carry no reference to any writable object (``view.obj`` is None).

How liveness is known: every view is a slice of one private base memoryview (created with
``PyMemoryView_FromMemory``), so they all share its managed buffer, whose reference count
counts the live views; the base is released only when that count is back to its baseline.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import warnings
from collections.abc import Callable

PAGE_SIZE = 4096


class MappingReleasedError(ValueError):
    """The grant mapping or shared area was already unmapped: its memory is gone."""

_PyBUF_READ = 0x100
_PyBUF_WRITE = 0x200

_from_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_from_memory.restype = ctypes.py_object
_from_memory.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]


def _managed_buffer(base: memoryview) -> object:
    referents = [r for r in gc.get_referents(base) if type(r).__name__ == "managedbuffer"]
    if len(referents) != 1:  # pragma: no cover - CPython internals changed
        raise RuntimeError("cannot track memoryview exports on this Python")
    return referents[0]


def _released(view: memoryview) -> bool:
    try:
        view.nbytes  # noqa: B018 - raises ValueError once released
    except ValueError:
        return True
    return False


class Mapping:
    """``npages`` pages at ``address``, released by ``release`` (unmap or unshare) once."""

    def __init__(
        self, address: int, npages: int, readonly: bool, release: Callable[[], None], what: str
    ) -> None:
        if address == 0 or npages <= 0:
            raise ValueError(f"{what}: bad mapping ({address:#x}, {npages} pages)")
        self._address = address
        self._npages = npages
        self._readonly = readonly
        self._release = release
        self._what = what
        self._lock = threading.Lock()
        flags = _PyBUF_READ if readonly else _PyBUF_WRITE
        self._base: memoryview | None = _from_memory(address, self.size, flags)
        self._mbuf = _managed_buffer(self._base)
        self._baseline = sys.getrefcount(self._mbuf)

    # -- properties -------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._npages * PAGE_SIZE

    @property
    def npages(self) -> int:
        return self._npages

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def released(self) -> bool:
        return self._base is None

    @property
    def address(self) -> int:
        """Start address, for C code (the hot path). Valid only until :meth:`unmap`."""
        self._live()
        return self._address

    def __repr__(self) -> str:
        state = "released" if self.released else f"at {self._address:#x}"
        mode = "ro" if self._readonly else "rw"
        return f"<{type(self).__name__} {self._what} {self._npages}p {mode} {state}>"

    # -- access -----------------------------------------------------------------------
    def _live(self) -> memoryview:
        base = self._base
        if base is None:
            raise MappingReleasedError(f"{self._what} has been unmapped")
        return base

    def view(self) -> memoryview:
        """A memoryview of the pages; ``with m.view() as v:`` releases it on exit."""
        with self._lock:
            return self._live()[:]

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Copy ``length`` bytes out from ``offset``."""
        with self.view() as v:
            end = len(v) if length is None else offset + length
            if not 0 <= offset <= end <= len(v):
                raise IndexError(f"{self._what}: [{offset}:{end}] outside {len(v)} bytes")
            return bytes(v[offset:end])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in at ``offset``; a read-only mapping raises ``TypeError``."""
        with self.view() as v:
            if self._readonly:
                raise TypeError(f"{self._what} is mapped read-only")
            end = offset + len(data)
            if not 0 <= offset <= end <= len(v):
                raise IndexError(f"{self._what}: [{offset}:{end}] outside {len(v)} bytes")
            v[offset:end] = data

    def live_views(self) -> int:
        """How many views (including slices and buffers derived from them) are alive."""
        base, mbuf = self._base, self._mbuf
        if base is None or sys.getrefcount(mbuf) <= self._baseline:
            return 0
        # Someone else holds the managed buffer: count the unreleased views on it
        # (a released view still references it until it is garbage).
        return sum(
            1
            for r in gc.get_referrers(mbuf)
            if isinstance(r, memoryview) and r is not base and not _released(r)
        )

    # -- release ----------------------------------------------------------------------
    def unmap(self) -> None:
        """Unmap (or unshare). Raises ``BufferError`` while views are alive; idempotent."""
        with self._lock:
            if self._base is None:
                return
            alive = self.live_views()
            if alive:
                gc.collect()
                alive = self.live_views()
            if alive:
                raise BufferError(
                    f"{self._what}: {alive} memoryview(s) of the mapping are still alive; "
                    "release them (leave their `with` block) before unmapping"
                )
            self._release()  # raises XenError and keeps the mapping if that fails
            self._base.release()
            self._base = None
            self._mbuf = None

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmap()

    def __del__(self) -> None:
        if getattr(self, "_base", None) is None:
            return
        if self.live_views():
            # Views outlive us: keep the pages mapped (leak) rather than let them dangle.
            warnings.warn(
                f"{self._what} leaked: views still alive at garbage collection",
                ResourceWarning,
                stacklevel=1,
            )
            return
        try:
            self.unmap()
        except Exception as exc:  # noqa: BLE001 - nothing to raise to in a finalizer
            warnings.warn(
                f"{self._what}: unmap at garbage collection failed: {exc}",
                ResourceWarning,
                stacklevel=1,
            )
