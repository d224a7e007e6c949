"""Transactions through Debian's libxenstore (ctypes), against xensim's xenstored."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Iterator

import pytest

from tests.sim.xs_fixtures import XenstoredProcess, xenstored_fixture  # noqa: F401
from xensim.xenstored.wire import XsError

XBT_NULL = 0


class LibXs:
    """Debian's libxenstore.so.4 in ABI mode: just what the tests need."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libxenstore.so.4", use_errno=True)
        lib.xs_open.restype = ctypes.c_void_p
        lib.xs_open.argtypes = [ctypes.c_ulong]
        lib.xs_close.argtypes = [ctypes.c_void_p]
        lib.xs_transaction_start.restype = ctypes.c_uint32
        lib.xs_transaction_start.argtypes = [ctypes.c_void_p]
        lib.xs_transaction_end.restype = ctypes.c_bool
        lib.xs_transaction_end.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_bool]
        lib.xs_write.restype = ctypes.c_bool
        lib.xs_write.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_uint,
        ]
        lib.xs_read.restype = ctypes.c_void_p
        lib.xs_read.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_uint),
        ]
        self.lib = lib
        self.libc = ctypes.CDLL(None)
        self.libc.free.argtypes = [ctypes.c_void_p]


class Handle:
    def __init__(self, libxs: LibXs, socket_path: str) -> None:
        self.x = libxs
        old = os.environ.get("XENSTORED_PATH")
        os.environ["XENSTORED_PATH"] = socket_path  # libxenstore reads it in xs_open
        try:
            self.h = libxs.lib.xs_open(0)
        finally:
            if old is None:
                del os.environ["XENSTORED_PATH"]
            else:
                os.environ["XENSTORED_PATH"] = old
        assert self.h, "xs_open failed"

    def close(self) -> None:
        self.x.lib.xs_close(self.h)

    def start(self) -> int:
        t = self.x.lib.xs_transaction_start(self.h)
        assert t != XBT_NULL, os.strerror(ctypes.get_errno())
        return t

    def end(self, t: int, abort: bool = False) -> int:
        """0 on success, else errno."""
        ctypes.set_errno(0)
        ok = self.x.lib.xs_transaction_end(self.h, t, abort)
        return 0 if ok else ctypes.get_errno()

    def write(self, t: int, path: str, value: bytes) -> None:
        assert self.x.lib.xs_write(self.h, t, path.encode(), value, len(value)), os.strerror(
            ctypes.get_errno()
        )

    def read(self, t: int, path: str) -> bytes | None:
        n = ctypes.c_uint(0)
        p = self.x.lib.xs_read(self.h, t, path.encode(), ctypes.byref(n))
        if not p:
            return None
        try:
            return ctypes.string_at(p, n.value)
        finally:
            self.x.libc.free(p)


@pytest.fixture
def libxs() -> LibXs:
    return LibXs()


@pytest.fixture
def handles(xenstored: XenstoredProcess, libxs: LibXs) -> Iterator[tuple[Handle, Handle]]:
    a = Handle(libxs, str(xenstored.socket(0)))
    b = Handle(libxs, str(xenstored.socket(0)))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_conflict_gives_eagain_and_nothing_applied(handles: tuple[Handle, Handle]) -> None:
    a, b = handles
    a.write(XBT_NULL, "/t/x", b"0")
    t = a.start()
    assert a.read(t, "/t/x") == b"0"
    b.write(XBT_NULL, "/t/x", b"other")
    assert a.read(t, "/t/x") == b"0"  # the transaction keeps what it saw
    a.write(t, "/t/x", b"mine")
    a.write(t, "/t/y", b"new")
    assert a.read(t, "/t/x") == b"mine"
    assert b.read(XBT_NULL, "/t/y") is None  # not visible outside before commit
    assert a.end(t) == errno.EAGAIN
    assert b.read(XBT_NULL, "/t/x") == b"other"
    assert b.read(XBT_NULL, "/t/y") is None


def test_commit_without_conflict_and_abort(handles: tuple[Handle, Handle]) -> None:
    a, b = handles
    a.write(XBT_NULL, "/t/x", b"0")
    t = a.start()
    assert a.read(t, "/t/x") == b"0"
    b.write(XBT_NULL, "/t/unrelated", b"1")  # does not touch what the transaction read
    a.write(t, "/t/x", b"1")
    assert a.end(t) == 0
    assert b.read(XBT_NULL, "/t/x") == b"1"
    t = a.start()
    a.write(t, "/t/x", b"2")
    assert a.end(t, abort=True) == 0
    assert b.read(XBT_NULL, "/t/x") == b"1"


def increment(h: Handle, path: str) -> int:
    """Read-modify-write in a transaction, retried on EAGAIN as libxenstore's callers do."""
    retries = 0
    while True:
        t = h.start()
        value = int(h.read(t, path) or b"0")
        h.write(t, path, str(value + 1).encode())
        err = h.end(t)
        if err == 0:
            return retries
        assert err == errno.EAGAIN
        retries += 1


def test_retry_loop_makes_concurrent_increments_exact(handles: tuple[Handle, Handle]) -> None:
    a, b = handles
    a.write(XBT_NULL, "/t/counter", b"0")
    # a deterministic conflict first
    t = a.start()
    v = int(a.read(t, "/t/counter") or b"0")
    assert increment(b, "/t/counter") == 0
    a.write(t, "/t/counter", str(v + 1).encode())
    assert a.end(t) == errno.EAGAIN
    assert increment(a, "/t/counter") == 0
    assert b.read(XBT_NULL, "/t/counter") == b"2"
    # then two threads racing
    retries: list[int] = []
    n = 100

    def run(h: Handle) -> None:
        retries.append(sum(increment(h, "/t/counter") for _ in range(n)))

    threads = [threading.Thread(target=run, args=(h,)) for h in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert a.read(XBT_NULL, "/t/counter") == str(2 + 2 * n).encode()


def test_transaction_ids_belong_to_their_connection(xenstored: XenstoredProcess) -> None:
    with xenstored.client(0) as a, xenstored.client(0) as b:
        t = a.transaction_start()
        with pytest.raises(XsError) as ei:
            b.write("/t/z", "x", tx=t)
        assert ei.value.name == "ENOENT"
        with pytest.raises(XsError) as ei:
            b.transaction_end(t)
        assert ei.value.name == "ENOENT"
        a.write("/t/z", "x", tx=t)
        a.transaction_end(t)
        assert b.read("/t/z") == b"x"
        with pytest.raises(XsError) as ei:
            a.transaction_end(t)  # gone after its end
        assert ei.value.name == "ENOENT"


def test_watch_fires_on_commit_only(xenstored: XenstoredProcess) -> None:
    with xenstored.client(0) as a, xenstored.client(0) as w:
        w.watch("/t", "tok")
        assert w.read_watch(5) == ("/t", "tok")
        t = a.transaction_start()
        a.write("/t/q", "1", tx=t)
        with pytest.raises(TimeoutError):
            w.read_watch(0.3)
        a.transaction_end(t)
        assert w.read_watch(5) == ("/t/q", "tok")
        t = a.transaction_start()
        a.write("/t/r", "1", tx=t)
        a.transaction_end(t, commit=False)
        with pytest.raises(TimeoutError):
            w.read_watch(0.3)
