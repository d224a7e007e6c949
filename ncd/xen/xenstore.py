"""libxenstore: read, write, mkdir, rm, directory, permissions, transactions, watches.

Values read from the store may come from another domain: callers validate them.
Every failure raises :class:`~ncd.xen.errors.XenError` naming the call and errno.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from ncd.perms import Perm

from ._lib import fail, ffi, lib
from .errors import TransactionConflict, XenError

R = TypeVar("R")

XBT_NULL = 0

_PERM_BITS = {
    "n": lib.XS_PERM_NONE,
    "r": lib.XS_PERM_READ,
    "w": lib.XS_PERM_WRITE,
    "b": lib.XS_PERM_READ | lib.XS_PERM_WRITE,
}
_BITS_PERM = {bits: name for name, bits in _PERM_BITS.items()}
_PERM_MASK = lib.XS_PERM_READ | lib.XS_PERM_WRITE


class WatchEvent(NamedTuple):
    """A fired watch: the path that changed (or the watched path itself) and the token."""

    path: str
    token: str


def _cpath(path: str) -> bytes:
    if not isinstance(path, str) or not path or "\0" in path:
        raise ValueError(f"bad xenstore path {path!r}")
    return path.encode()


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: value is not UTF-8: {raw[:64]!r}") from exc


class _Ops:
    """The store operations, run either outside (tx 0) or inside a transaction."""

    _store: XenStore

    def _t(self) -> int:
        raise NotImplementedError

    def _handle(self, call: str) -> Any:
        return self._store._live_handle(call)

    def read_bytes(self, path: str) -> bytes:
        call = f"xs_read({path!r})"
        length = ffi.new("unsigned int *")
        raw = lib.xs_read(self._handle(call), self._t(), _cpath(path), length)
        if raw == ffi.NULL:
            fail(call)
        try:
            return bytes(ffi.buffer(raw, length[0]))
        finally:
            lib.free(raw)

    def read(self, path: str) -> str:
        """The value at ``path`` as text (ENOENT raises :class:`XenError`)."""
        return _decode(self.read_bytes(path), f"xs_read({path!r})")

    def read_or_none(self, path: str) -> str | None:
        """Like :meth:`read`, but a missing node gives ``None``."""
        try:
            return self.read(path)
        except XenError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def exists(self, path: str) -> bool:
        try:
            self.read_bytes(path)
        except XenError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def write(self, path: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        call = f"xs_write({path!r}, {len(data)} bytes)"
        if not lib.xs_write(self._handle(call), self._t(), _cpath(path), data, len(data)):
            fail(call)

    def mkdir(self, path: str) -> None:
        call = f"xs_mkdir({path!r})"
        if not lib.xs_mkdir(self._handle(call), self._t(), _cpath(path)):
            fail(call)

    def rm(self, path: str, missing_ok: bool = False) -> None:
        """Remove ``path`` and everything under it."""
        call = f"xs_rm({path!r})"
        if not lib.xs_rm(self._handle(call), self._t(), _cpath(path)):
            if missing_ok and ffi.errno == errno.ENOENT:
                return
            fail(call)

    def directory(self, path: str) -> list[str]:
        """Names of the children of ``path``."""
        call = f"xs_directory({path!r})"
        num = ffi.new("unsigned int *")
        names = lib.xs_directory(self._handle(call), self._t(), _cpath(path), num)
        if names == ffi.NULL:
            fail(call)
        try:
            return [_decode(ffi.string(names[i]), call) for i in range(num[0])]
        finally:
            lib.free(names)

    def get_perms(self, path: str) -> list[Perm]:
        call = f"xs_get_permissions({path!r})"
        num = ffi.new("unsigned int *")
        perms = lib.xs_get_permissions(self._handle(call), self._t(), _cpath(path), num)
        if perms == ffi.NULL:
            fail(call)
        try:
            return [
                Perm(perms[i].id, _BITS_PERM[perms[i].perms & _PERM_MASK]) for i in range(num[0])
            ]
        finally:
            lib.free(perms)

    def set_perms(self, path: str, perms: Sequence[Perm | tuple[int, str]]) -> None:
        """Set the permission list of ``path``; the first entry is the owner."""
        entries = [Perm(*p) for p in perms]
        if not entries:
            raise ValueError("a permission list needs at least the owner entry")
        for p in entries:
            if p.perm not in _PERM_BITS or not 0 <= p.domid < 0x10000:
                raise ValueError(f"bad permission {p!r} (perm is one of n/r/w/b)")
        call = f"xs_set_permissions({path!r}, [{', '.join(map(str, entries))}])"
        arr = ffi.new("struct xs_permissions[]", len(entries))
        for i, p in enumerate(entries):
            arr[i].id = p.domid
            arr[i].perms = _PERM_BITS[p.perm]
        if not lib.xs_set_permissions(
            self._handle(call), self._t(), _cpath(path), arr, len(entries)
        ):
            fail(call)


class TransactionRetry:
    """When to try a conflicting transaction again: after ``backoff`` times the number
    of conflicts so far, at most ``attempts`` attempts in all. Shared by the blocking
    :meth:`XenStore.run_in_transaction` and :func:`ncd.xen.aio.run_in_transaction`."""

    def __init__(self, attempts: int, backoff: float) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.attempts = attempts
        self.backoff = backoff
        self.conflicts = 0

    def pause(self, exc: XenError) -> float:
        """Seconds to wait after ``exc`` before the next attempt. Re-raises an error that
        is not a conflict; raises :class:`TransactionConflict` after the last attempt."""
        if exc.errno != errno.EAGAIN:
            raise exc
        self.conflicts += 1
        if self.conflicts >= self.attempts:
            raise TransactionConflict(
                errno.EAGAIN,
                "xs_transaction_end",
                f"gave up after {self.attempts} attempts; last: {exc}",
            )
        return self.backoff * self.conflicts


class Transaction(_Ops):
    """An open xenstore transaction: the store operations, isolated until :meth:`commit`."""

    def __init__(self, store: XenStore, tid: int) -> None:
        self._store = store
        self._tid: int | None = tid

    @property
    def id(self) -> int:
        return self._t()

    def _t(self) -> int:
        if self._tid is None:
            raise XenError(errno.EINVAL, "xenstore transaction", "already ended")
        return self._tid

    def _end(self, abort: bool) -> None:
        tid = self._t()
        call = f"xs_transaction_end(t={tid}, abort={abort})"
        handle = self._handle(call)
        self._tid = None
        if not lib.xs_transaction_end(handle, tid, abort):
            err = ffi.errno
            fail(call, err, TransactionConflict if err == errno.EAGAIN else XenError)

    def commit(self) -> None:
        """Commit; raises :class:`TransactionConflict` if another writer got in first."""
        self._end(False)

    def abort(self) -> None:
        self._end(True)

    @property
    def active(self) -> bool:
        return self._tid is not None


class XenStore(_Ops):
    """A connection to xenstored (``xs_open``); as the calling domain, with its permissions.

    On xensim the connection goes to the domain's socket named by ``XENSTORED_PATH``.
    """

    def __init__(self) -> None:
        self._store = self
        handle = lib.xs_open(0)
        if handle == ffi.NULL:
            fail("xs_open(0)")
        self._h: Any = handle
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            lib.xs_close(h)

    @property
    def closed(self) -> bool:
        return self._h is None

    def __enter__(self) -> XenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_h", None) is not None:
            self.close()

    def _live_handle(self, call: str) -> Any:
        if self._h is None:
            raise XenError(errno.EBADF, call, "XenStore connection is closed")
        return self._h

    def _t(self) -> int:
        return XBT_NULL

    # -- domains ----------------------------------------------------------------------
    def get_domain_path(self, domid: int) -> str:
        """``/local/domain/<domid>`` as xenstored reports it."""
        call = f"xs_get_domain_path({domid})"
        raw = lib.xs_get_domain_path(self._live_handle(call), domid)
        if raw == ffi.NULL:
            fail(call)
        try:
            return _decode(ffi.string(raw), call)
        finally:
            lib.free(raw)

    def is_domain_introduced(self, domid: int) -> bool:
        """Whether xenstored knows ``domid`` as a live domain (``XS_IS_DOMAIN_INTRODUCED``,
        a privileged question: EACCES elsewhere). False from the moment xenstored released
        a dead domain (``@releaseDomain``), which is before the toolstack removes
        ``/local/domain/<domid>``."""
        call = f"xs_is_domain_introduced({domid})"
        ffi.errno = 0  # libxenstore answers false on an error too; errno tells them apart
        if lib.xs_is_domain_introduced(self._live_handle(call), domid):
            return True
        if ffi.errno:
            fail(call)
        return False

    # -- transactions -----------------------------------------------------------------
    def transaction_start(self) -> Transaction:
        call = "xs_transaction_start()"
        tid = lib.xs_transaction_start(self._live_handle(call))
        if tid == XBT_NULL:
            fail(call)
        return Transaction(self, tid)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``with xs.transaction() as t:`` commits on success, aborts on an exception.

        A conflict at commit raises :class:`TransactionConflict`; use
        :meth:`run_in_transaction` to retry automatically.
        """
        t = self.transaction_start()
        try:
            yield t
        except BaseException:
            if t.active:
                t.abort()
            raise
        if t.active:
            t.commit()

    def run_in_transaction(
        self, fn: Callable[[Transaction], R], attempts: int = 16, backoff: float = 0.001
    ) -> R:
        """Run ``fn(t)`` in a transaction and commit, retrying on EAGAIN up to ``attempts``.

        Sleeps between attempts: for code without an event loop (ncctl, tools). On an
        event loop use :func:`ncd.xen.aio.run_in_transaction`, which awaits instead;
        called on a loop's thread anyway (a vchan server publishing its entry), this
        retries at once rather than stall every task, as Linux's xenbus drivers do.
        """
        retry = TransactionRetry(attempts, backoff)
        while True:
            try:
                with self.transaction() as t:
                    return fn(t)
            except XenError as exc:
                pause = retry.pause(exc)
                if not _on_event_loop():
                    time.sleep(pause)

    # -- watches ----------------------------------------------------------------------
    def new_token(self, prefix: str = "ncd") -> str:
        with self._lock:
            return f"{prefix}-{next(self._tokens)}"

    def watch(self, path: str, token: str) -> None:
        """Watch ``path`` and its subtree; xenstored fires the watch once right away."""
        call = f"xs_watch({path!r}, {token!r})"
        if not lib.xs_watch(self._live_handle(call), _cpath(path), _cpath(token)):
            fail(call)

    def unwatch(self, path: str, token: str) -> None:
        call = f"xs_unwatch({path!r}, {token!r})"
        if not lib.xs_unwatch(self._live_handle(call), _cpath(path), _cpath(token)):
            fail(call)

    def fileno(self) -> int:
        """Fd that becomes readable when watch events are queued (``xs_fileno``)."""
        call = "xs_fileno()"
        fd = lib.xs_fileno(self._live_handle(call))
        if fd < 0:
            fail(call)
        return int(fd)

    def check_watch(self) -> WatchEvent | None:
        """Next queued watch event, or ``None`` if none is queued. Never blocks."""
        call = "xs_check_watch()"
        ev = lib.xs_check_watch(self._live_handle(call))
        if ev == ffi.NULL:
            if ffi.errno == errno.EAGAIN:
                return None
            fail(call)
        return _watch_event(ev, call)

    def read_watch(self) -> WatchEvent:
        """Next watch event, blocking until one arrives. Not for event-loop threads."""
        call = "xs_read_watch()"
        num = ffi.new("unsigned int *")
        ev = lib.xs_read_watch(self._live_handle(call), num)
        if ev == ffi.NULL:
            fail(call)
        return _watch_event(ev, call)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _watch_event(ev: Any, call: str) -> WatchEvent:
    try:
        return WatchEvent(
            _decode(ffi.string(ev[lib.XS_WATCH_PATH]), call),
            _decode(ffi.string(ev[lib.XS_WATCH_TOKEN]), call),
        )
    finally:
        lib.free(ev)
