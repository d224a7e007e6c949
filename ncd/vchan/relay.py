"""Relay a file-descriptor pair to a vchan and back (what ``ncd-vchan`` runs).

stdin -> vchan and vchan -> stdout, both at once, with poll(). When the input ends,
wait until the peer has consumed everything we wrote, then return. When the peer
closes, first copy what is left in the ring to the output, then return.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select

from .channel import Vchan, VchanError

CHUNK = 256 * 1024


def _set_nonblocking(fd: int) -> int:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return flags


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            select.select([], [fd], [])


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


def _drain_to(v: Vchan, outfd: int, pending: memoryview) -> None:
    _write_all(outfd, pending)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = v.readinto(buf)
        if not n:
            return
        _write_all(outfd, view[:n])


def _relay(v: Vchan, infd: int, outfd: int) -> None:
    inbuf, outbuf = bytearray(CHUNK), bytearray(CHUNK)
    inview, outview = memoryview(inbuf), memoryview(outbuf)
    in_off = in_len = out_off = out_len = 0
    in_eof, in_ready = False, True
    vfd = v.fileno()
    poller = select.poll()
    while True:
        progress = True
        while progress:
            progress = False
            if out_len == 0:
                out_len, out_off = v.readinto(outbuf), 0
            if out_len:
                try:
                    w = os.write(outfd, outview[out_off:out_off + out_len])
                except BlockingIOError:
                    w = 0
                out_off, out_len = out_off + w, out_len - w
                progress = progress or w > 0
            if in_len == 0 and not in_eof and in_ready:
                try:
                    n = os.readv(infd, [inbuf])
                except BlockingIOError:
                    in_ready = False
                else:
                    in_off, in_len, in_eof = 0, n, n == 0
                    progress = True
            if in_len:
                try:
                    w = v.write(inview[in_off:in_off + in_len])
                except VchanError as exc:
                    if exc.errno != errno.EPIPE:
                        raise
                    w, in_len = 0, 0  # the peer is gone: handled below
                in_off, in_len = in_off + w, in_len - w
                progress = progress or w > 0
        if not v.is_open():
            _drain_to(v, outfd, outview[out_off:out_off + out_len])
            if v.close_reason:
                raise VchanError(errno.EPROTO, "ncd_vchan", v.close_reason)
            return
        if in_eof and not in_len and not out_len:
            v.buffer_space()  # asks the peer to notify us when it consumes
            if v.unconsumed() == 0:
                return
        for fd in (vfd, infd, outfd):
            try:
                poller.unregister(fd)
            except KeyError:
                pass
        poller.register(vfd, select.POLLIN)
        if in_len == 0 and not in_eof:
            poller.register(infd, select.POLLIN)
        if out_len:
            poller.register(outfd, select.POLLOUT | (select.POLLIN if outfd == infd else 0))
        for fd, _ev in poller.poll():
            if fd == vfd:
                try:
                    v.wait()
                except OSError as exc:
                    if exc.errno != errno.EAGAIN:
                        raise
            if fd == infd:
                in_ready = True
