"""Errors raised by the Xen bindings: every failed call names itself and its errno."""

from __future__ import annotations

import errno as _errno
import os


class XenError(OSError):
    """A Xen library call failed.

    ``errno`` is the C errno, ``call`` the call with its arguments, e.g.
    ``xs_read('/local/domain/1/name')``; ``str()`` shows both.
    """

    def __init__(self, err: int, call: str, detail: str | None = None) -> None:
        reason = os.strerror(err) if err else "failed without setting errno"
        if detail:
            reason = f"{reason} ({detail})"
        super().__init__(err, f"{call}: {reason}")
        self.call = call


class TransactionConflict(XenError):
    """A xenstore transaction could not commit (EAGAIN): restart it."""


def check_errno(err: int) -> int:
    """errno to report: libraries that fail without setting errno get EIO."""
    return err if err else _errno.EIO
