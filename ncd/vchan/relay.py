"""Relay a file-descriptor pair to a vchan and back (what ``ncd-vchan`` runs).

stdin -> vchan and vchan -> stdout, both at once; the loop is ``ncd_vchan_relay`` in C
(zero-copy readv/writev into the rings, no GIL). When the input ends,
wait until the peer has consumed everything we wrote, then return. When the peer
closes, first copy what is left in the ring to the output, then return.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select

from ._lib import ffi, lib
from .channel import Vchan, VchanError


def _set_nonblocking(fd: int) -> int:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return flags


def wait_connected(v: Vchan) -> None:
    while v.is_open() == 2:
        select.select([v.fileno()], [], [])
        v.wait()


def relay(v: Vchan, infd: int = 0, outfd: int = 1) -> None:
    """Run until input EOF + peer consumed everything, or the peer closed."""
    saved = {fd: _set_nonblocking(fd) for fd in {infd, outfd}}
    try:
        _relay(v, infd, outfd)
    finally:
        for fd, flags in saved.items():
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _relay(v: Vchan, infd: int, outfd: int) -> None:
    err = ffi.new("char[]", 512)
    while True:
        if lib.ncd_vchan_relay(v._handle(), infd, outfd, err, 512) == 0:
            return
        code = ffi.errno
        if code == errno.EINTR:
            continue  # Python ran its signal handlers (SIGTERM raises SystemExit)
        raise VchanError(code, "ncd_vchan_relay", ffi.string(err).decode(errors="replace"))
