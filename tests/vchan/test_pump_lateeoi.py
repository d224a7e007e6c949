"""Late EOI of the pump's event channel (cext/vchan/vchan_eoi.c), on an in-memory pair.

The test plays the storming peer by notifying the pump's end directly (the pair's
event channel is an eventfd: writing it is what the peer's notify does). Events that
carry no work are counted and their re-arm deferred, so the pump's wakeups stay far
below the notifications; frames still cross both ways afterwards, and honest traffic
(each event carrying a record) is never counted spurious.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import pytest

from ncd.vchan.channel import local_pair
from tests import framecodec as fr
from tests.vchan.test_pump_local import End, frame, vnet

ONE = struct.pack("<Q", 1)
FIRST_DEFERRAL = 0.001  # EOI_FIRST_US: no deferred re-arm is shorter


@pytest.fixture
def pair() -> Iterator[tuple[End, End]]:
    srv, cli = local_pair(256 * 1024, 256 * 1024)
    a, b = End(srv), End(cli)
    a.start()
    b.start()
    yield a, b
    a.close()
    b.close()


def test_a_notification_storm_wakes_the_pump_rarely(pair) -> None:
    a, b = pair
    before = a.stats()
    fd, n = a.vchan.fileno(), 200_000
    t0 = time.monotonic()
    for _ in range(n):
        os.write(fd, ONE)
    elapsed = time.monotonic() - t0
    after = a.stats()
    wakeups = after.wakeups - before.wakeups
    spurious = after.notify_spurious - before.notify_spurious
    assert spurious > 0
    # after the first two, every wakeup by the storm waited >= 1 ms for its re-arm
    assert wakeups <= 10 + elapsed / FIRST_DEFERRAL, (wakeups, elapsed)
    assert wakeups < n / 10, (wakeups, n)
    # the channel still works, both ways, at once
    for i, size in enumerate((60, 1514, fr.ETH_MAX)):
        f = frame(size, i)
        b.app.send(vnet(i) + f)
        assert a.app.recv(fr.ETH_MAX + 100) == vnet(i) + f
        a.app.send(vnet(i) + f)
        assert b.app.recv(fr.ETH_MAX + 100) == vnet(i) + f


def test_events_carrying_records_are_not_spurious(pair) -> None:
    a, b = pair
    before = b.stats()
    for i in range(200):  # one at a time: each notification brings a record
        f = frame(100, i)
        a.app.send(vnet(i) + f)
        assert b.app.recv(fr.ETH_MAX + 100) == vnet(i) + f
    after = b.stats()
    received = after.notify_recv - before.notify_recv
    spurious = after.notify_spurious - before.notify_spurious
    assert received > 0
    # an event can find its record already read (the pump looked once more before it
    # slept), but not every one: the pump tells events that brought data
    assert spurious < received, (spurious, received)
