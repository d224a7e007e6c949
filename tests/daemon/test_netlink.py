"""ncd.daemon.netlink: link operations run on their own thread while the event loop runs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ncd.daemon import netlink


def test_call_runs_on_the_netlink_thread_and_the_loop_keeps_ticking():
    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)

        def slow() -> str:  # a link operation that takes a while
            time.sleep(0.2)
            return threading.current_thread().name

        try:
            name = await netlink.call(slow)
        finally:
            tick.cancel()
        return name, ticks

    name, ticks = asyncio.run(main())
    assert name.startswith("ncd-netlink")
    assert ticks > 20  # ~200 without blocking; 1 if call() waited on the loop's thread


def test_call_propagates_the_operation_error():
    def fail() -> None:
        raise OSError(19, "No such device")

    with pytest.raises(OSError, match="No such device"):
        asyncio.run(netlink.call(fail))
