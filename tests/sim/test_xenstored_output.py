"""xenstored writes a connection's output once per loop iteration, and a peer that went
away while output was queued for it is closed quietly (uvloop's transports raise there)."""

from __future__ import annotations

import asyncio

from xensim.xenstored.connection import Connection


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 0


class _Writer:
    def __init__(self, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.fail = fail
        self.closed = False
        self.transport = _Transport()

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True


def test_what_one_iteration_queues_goes_in_one_write() -> None:
    async def main() -> list[bytes]:
        w = _Writer()
        conn = Connection(1, w)  # type: ignore[arg-type]
        for part in (b"reply", b"event1", b"event2"):
            conn.send(part)
        assert w.writes == []
        await asyncio.sleep(0)
        conn.send(b"event3")
        conn.flush()  # what serve_connection does after each request
        await asyncio.sleep(0)
        return w.writes

    assert asyncio.run(main()) == [b"replyevent1event2", b"event3"]


def test_a_peer_gone_with_output_queued_is_closed_quietly() -> None:
    async def main() -> tuple[bool, bool]:
        w = _Writer(fail=True)
        conn = Connection(1, w)  # type: ignore[arg-type]
        conn.send(b"event")
        conn.close()  # flushes first: the write fails, nothing escapes
        conn.send(b"more")  # closed: dropped
        await asyncio.sleep(0)
        return conn.closed, w.closed

    assert asyncio.run(main()) == (True, True)
