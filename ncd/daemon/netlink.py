"""Run pyroute2 (rtnetlink) calls off the event loop's thread.

pyroute2's synchronous ``IPRoute`` drives an asyncio loop of its own, which
cannot run on a thread whose loop is already running. Link operations are
short (milliseconds), so the daemon runs them on one dedicated worker thread
and waits for the result; the network namespace is the process's (the daemon
runs inside its domain's namespace).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ncd-netlink")


def call(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` on the netlink thread; exceptions propagate."""
    return _executor.submit(fn, *args, **kwargs).result()
