"""Mapping lifetime rules on real pages (libc mmap/munmap), no simulator needed."""

from __future__ import annotations

import ctypes
import gc
import mmap

import pytest

from tests.xenbind.mapping import PAGE_SIZE, Mapping, MappingReleasedError

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def real_pages(npages: int, readonly: bool) -> tuple[Mapping, list[int]]:
    prot = mmap.PROT_READ | (0 if readonly else mmap.PROT_WRITE)
    size = npages * PAGE_SIZE
    addr = libc.mmap(None, size, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    unmapped: list[int] = []

    def release() -> None:
        assert libc.munmap(addr, size) == 0
        unmapped.append(addr)

    return Mapping(addr, npages, readonly, release, "test pages"), unmapped


def test_views_read_write_and_unmap():
    m, unmapped = real_pages(2, readonly=False)
    with m.view() as v:
        assert len(v) == 2 * PAGE_SIZE and not v.readonly
        v[0:5] = b"hello"
        v[PAGE_SIZE : PAGE_SIZE + 3] = b"abc"
    assert m.read(0, 5) == b"hello"
    m.write(10, b"xyz")
    assert m.read(PAGE_SIZE, 3) == b"abc" and m.read(10, 3) == b"xyz"
    assert m.live_views() == 0
    m.unmap()
    assert unmapped and m.released


def test_unmap_refused_while_views_alive_including_slices():
    m, unmapped = real_pages(1, readonly=False)
    v = m.view()
    s = memoryview(v)[100:200]  # derived views keep the pages pinned too
    del v
    assert m.live_views() == 1
    with pytest.raises(BufferError, match="still alive"):
        m.unmap()
    assert not unmapped
    s[0] = 7  # still mapped, still usable
    assert s.obj is None  # nothing writable to escape through
    s.release()
    m.unmap()
    assert unmapped


def test_use_after_unmap_raises():
    m, _ = real_pages(1, readonly=False)
    m.unmap()
    with pytest.raises(MappingReleasedError, match="unmapped"):
        m.view()
    with pytest.raises(MappingReleasedError):
        m.read(0, 1)
    with pytest.raises(MappingReleasedError):
        m.write(0, b"x")
    with pytest.raises(MappingReleasedError):
        _ = m.address
    m.unmap()  # idempotent


def test_readonly_mapping_cannot_be_written():
    m, unmapped = real_pages(1, readonly=True)
    with m.view() as v:
        assert v.readonly
        with pytest.raises(TypeError):
            v[0] = 1
        with pytest.raises(TypeError):
            memoryview(v)[0:4] = b"abcd"
        assert v.obj is None
        assert bytes(v[:4]) == b"\0\0\0\0"
    with pytest.raises(TypeError):
        m.write(0, b"x")
    m.unmap()
    assert unmapped


def test_cycle_held_view_is_collected_before_refusing():
    m, unmapped = real_pages(1, readonly=False)

    class Holder:
        pass

    a, b = Holder(), Holder()
    a.peer, b.peer = b, a  # a reference cycle keeps the view until gc runs
    a.view = m.view()
    del a, b
    m.unmap()  # gc.collect() inside frees the cycle, then unmap succeeds
    assert unmapped


def test_garbage_collected_mapping_with_live_view_is_leaked_not_unmapped():
    m, unmapped = real_pages(1, readonly=False)
    v = m.view()
    with pytest.warns(ResourceWarning, match="leaked"):
        del m
        gc.collect()
    assert not unmapped
    v[0] = 42  # the pages are still there
    assert v[0] == 42
