"""Enter a named network namespace on the calling thread, for the length of a block.

Test-only: the daemon runs inside its domain's namespace and never switches. Tests
wrap plain :mod:`ncd.tap` calls in :func:`in_netns` to act on a namespace they made
(``ip netns add``) or a simulated domain's (``world.netns(domid)``): a TAP fd, netlink
or ioctl socket opened inside keeps that namespace after the block.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Run the block with the calling thread in network namespace ``netns`` (by name,
    as in ``/run/netns``), then switch it back."""
    if "/" in netns or netns in ("", ".", ".."):
        raise ValueError(f"bad netns name {netns!r}")
    old = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            new = os.open(f"{NETNS_RUN_DIR}/{netns}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, f"netns {netns}: {exc.strerror}") from None
        try:
            if _libc.setns(new, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({netns}): {os.strerror(err)}")
        finally:
            os.close(new)
        try:
            yield
        finally:
            if _libc.setns(old, CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail
                err = ctypes.get_errno()
                raise OSError(err, f"setns(back from {netns}): {os.strerror(err)}")
    finally:
        os.close(old)
