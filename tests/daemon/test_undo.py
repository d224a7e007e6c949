"""The undo stack behind a vif's teardown: reverse order, once each, even when one raises."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ncd.daemon.undo import UndoStack


def run(coro):
    return asyncio.run(coro)


def test_undo_runs_newest_first_and_only_once():
    done: list[str] = []
    stack = UndoStack("vif 1/0")
    for name in ("watch", "metrics", "tap"):
        stack.push(name, lambda n=name: done.append(n))
    assert len(stack) == 3
    run(stack.close())
    assert done == ["tap", "metrics", "watch"]
    run(stack.close())  # idempotent: the teardown and the error unwind may both run
    assert done == ["tap", "metrics", "watch"] and len(stack) == 0


def test_one_failing_undo_does_not_stop_the_others(caplog):
    done: list[str] = []
    stack = UndoStack("vif 1/0")

    def boom() -> None:
        raise RuntimeError("bug in an undo")

    def gone() -> None:
        raise OSError(19, "No such device")

    stack.push("first", lambda: done.append("first"))
    stack.push("buggy", boom)
    stack.push("tap", gone)
    stack.push("last", lambda: done.append("last"))
    with caplog.at_level(logging.DEBUG, "ncd.undo"):
        run(stack.close())
    assert done == ["last", "first"]
    text = caplog.text
    assert "vif 1/0: undoing tap: [Errno 19] No such device" in text
    assert "vif 1/0: undoing buggy failed" in text and "RuntimeError" in text


def test_async_undo_is_awaited_and_nested_stacks_close_once():
    done: list[str] = []

    async def remove_tap() -> None:
        await asyncio.sleep(0)
        done.append("tap removed")

    async def main() -> None:
        life, device = UndoStack("life"), UndoStack("device")
        life.push("watch", lambda: done.append("watch"))
        life.push("device", device.close)
        device.push("tap", remove_tap)
        device.push("channel", lambda: done.append("channel"))
        await device.close()  # ReleaseDevice: the device goes first ...
        await life.close()  # ... and the task's end finds it closed already
        await life.close()

    run(main())
    assert done == ["channel", "tap removed", "watch"]


def test_cancellation_during_an_undo_finishes_the_unwind_then_propagates():
    done: list[str] = []

    async def main() -> None:
        stack = UndoStack("vif")
        started = asyncio.Event()

        async def slow() -> None:
            started.set()
            await asyncio.sleep(10)

        stack.push("first", lambda: done.append("first"))
        stack.push("slow", slow)
        stack.push("last", lambda: done.append("last"))
        task = asyncio.create_task(stack.close())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(stack) == 0

    run(main())
    assert done == ["last", "first"]
