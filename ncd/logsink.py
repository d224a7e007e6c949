"""The daemon's log sink: stderr (journald under systemd) that survives its own failure.

A daemon that cannot write its log (the journal's or a redirected file's filesystem
full: ENOSPC; /dev/full; a closed pipe: EPIPE) must keep forwarding, neither crash nor
spin, and not lose track. :class:`LogSink` writes each record with one ``os.write``
of the descriptor (no userspace buffer that would keep a failed line to retry, or
tear it, later). A record it cannot write is counted (``lost``, exported as
``ncd_log_records_lost_total``) and dropped: one failed write per record, no retry
loop, no traceback on stderr (what :meth:`logging.Handler.handleError` would print,
itself failing). The first record written after a loss is preceded by one line saying
how many records were lost and why (the errno of the last failure).
"""

from __future__ import annotations

import errno
import logging
import os
import sys

log = logging.getLogger("ncd.logsink")


class LogSink(logging.Handler):
    """A logging handler writing formatted records to file descriptor ``fd``."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self._lost = 0  # since the start (the counter)
        self._unreported = 0  # since the last "lost N log records" line
        self._errno = 0  # of the last failed write
        self._torn = False  # a failed write left part of a line: start the next anew

    @property
    def lost(self) -> int:
        """Records dropped because the write failed, since the start (any thread)."""
        return self._lost

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a formatting bug in the caller: logging's own report
            self.handleError(record)
            return
        # emit() runs under the handler's lock (logging.Handler.handle)
        if self._unreported and not self._write(self._loss_line()):
            self._drop()
            return
        self._unreported = 0
        if not self._write(line):
            self._drop()

    def _loss_line(self) -> str:
        name = errno.errorcode.get(self._errno, str(self._errno))
        plural = "record" if self._unreported == 1 else "records"
        note = logging.LogRecord(
            log.name,
            logging.WARNING,
            __file__,
            0,
            "lost %d log %s: writing the log failed with %s (%s)",
            (self._unreported, plural, name, os.strerror(self._errno)),
            None,
        )
        return self.format(note)

    def _drop(self) -> None:
        self._lost += 1
        self._unreported += 1

    def _write(self, line: str) -> bool:
        data = (("\n" if self._torn else "") + line + "\n").encode("utf-8", "backslashreplace")
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except OSError as exc:  # EINTR is retried by os.write itself (PEP 475)
                self._errno = exc.errno or errno.EIO
                self._torn = len(view) < len(data)
                return False
            view = view[n:]
        self._torn = False
        return True


_sink: LogSink | None = None


def install(level: str, fmt: str) -> LogSink:
    """Log records of ``level`` and above go to stderr through a :class:`LogSink`
    (instead of :func:`logging.basicConfig`'s StreamHandler)."""
    global _sink
    sys.stderr.flush()  # what Python itself wrote before goes first
    sink = LogSink(sys.stderr.fileno())
    sink.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.addHandler(sink)
    root.setLevel(level)
    _sink = sink
    return sink


def records_lost() -> int:
    """Records the installed sink could not write (0 before :func:`install`)."""
    return _sink.lost if _sink is not None else 0
