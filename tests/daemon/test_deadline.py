"""The loop timer a vif keeps at its xenbus machine's deadline."""

from __future__ import annotations

import asyncio

from ncd.daemon.deadline import DeadlineTimer


def test_fires_once_and_hands_back_its_deadline_once():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes: list[float] = []
        timer = DeadlineTimer(lambda: wakes.append(loop.time()))
        at = loop.time() + 0.02
        timer.set(at)
        assert timer.expired() is None  # armed, not fired
        timer.set(at)  # the same deadline again: not re-armed
        await asyncio.sleep(0.08)
        assert len(wakes) == 1
        assert timer.expired() == at
        assert timer.expired() is None
        timer.set(None)
        await asyncio.sleep(0.03)
        assert len(wakes) == 1

    asyncio.run(main())


def test_a_new_deadline_replaces_the_old_and_cancel_disarms():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakes: list[str] = []
        timer = DeadlineTimer(lambda: wakes.append("wake"))
        timer.set(loop.time() + 0.01)
        later = loop.time() + 0.05
        timer.set(later)
        await asyncio.sleep(0.03)
        assert wakes == [] and timer.expired() is None
        await asyncio.sleep(0.05)
        assert wakes == ["wake"] and timer.expired() == later
        timer.set(loop.time() + 0.01)
        timer.cancel()
        await asyncio.sleep(0.03)
        assert wakes == ["wake"] and timer.expired() is None

    asyncio.run(main())
