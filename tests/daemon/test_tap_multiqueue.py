"""Multi-queue TAPs (``IFF_MULTI_QUEUE``) in a namespace the test creates: each
open_queue() is one more kernel queue and closing it detaches it; a persistent TAP made
single-queue (an older daemon's) is picked up as it is, with one queue."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from ncd import tap
from ncd.daemon.vif import open_persistent_tap
from tests.netns import in_netns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun"
)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"ncdmq{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def numqueues(netns: str, name: str) -> int:
    out = subprocess.run(
        ["ip", "-n", netns, "-d", "link", "show", name], check=True, capture_output=True, text=True
    ).stdout
    m = re.search(r"numqueues (\d+)", out)
    assert m, out
    return int(m.group(1))


def test_each_queue_is_a_fd_of_its_own(netns: str) -> None:
    with in_netns(netns):
        t = tap.open_tap("ncmq0", multi_queue=True)
    try:
        assert t.multi_queue and numqueues(netns, "ncmq0") == 1
        with pytest.raises(tap.TapError) as exc:  # not in this namespace: never a new device
            t.open_queue()
        assert exc.value.errno == errno.ENODEV
        with in_netns(netns):
            q1 = t.open_queue()
            q2 = t.open_queue()
        assert len({t.fileno(), q1.fileno(), q2.fileno()}) == 3
        assert numqueues(netns, "ncmq0") == 3
        assert (q1.vnet_hdr_size, q1.offloads, q1.name) == (t.vnet_hdr_size, t.offloads, "ncmq0")
        q1.close()
        assert numqueues(netns, "ncmq0") == 2  # closing a queue's fd detaches that queue
        q2.close()
    finally:
        t.close()


def test_a_single_queue_tap_has_no_more_queues(netns: str) -> None:
    with in_netns(netns):
        t = tap.open_tap("ncsq0")
    try:
        with pytest.raises(tap.TapError) as exc:
            t.open_queue()
        assert exc.value.errno == errno.EINVAL and "ncsq0" in str(exc.value)
    finally:
        t.close()


def test_a_persistent_single_queue_tap_is_taken_as_it_is(netns: str) -> None:
    with in_netns(netns):
        old = tap.open_tap("ncold0")  # as a daemon before multi-queue made it
        old.set_persist(True)
        old.close()
        t = open_persistent_tap("ncold0")
    try:
        assert not t.multi_queue  # the vif then takes one queue
    finally:
        t.set_persist(False)
        t.close()
    with in_netns(netns):
        fresh = open_persistent_tap("ncnew0")
    try:
        assert fresh.multi_queue
    finally:
        fresh.set_persist(False)
        fresh.close()
