"""A multi-queue :class:`ncd.daemon.datapath.Datapath` on in-memory vchans: each queue
pumps its own fd, one queue whose peer goes away ends the whole channel (one reason,
naming the queue; the one done fd readable), close() takes every queue down once, and a
queue that cannot be set up unwinds the queues before it.

The vif's TAP is a stand-in with SOCK_SEQPACKET sockets (packet fds like a TAP's, as in
test_pump_local.py); the real multi-queue TAP is in tests/e2e/test_multiqueue.py."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from ncd.daemon.datapath import Datapath
from ncd.features import ETH_MAX, Features, Negotiated
from ncd.vchan.channel import VchanClient, VchanServer, local_pair
from ncd.vchan.pump import FramePump, PumpState
from tests import framecodec as fr

NEG = Negotiated(Features.ALL, Features.ALL, ETH_MAX)
TIMEOUT = 10.0


class SockTap:
    """What Datapath uses of a multi-queue :class:`ncd.tap.Tap`: a packet fd per queue."""

    def __init__(self, made: list[SockTap]) -> None:
        self.app, self.dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.app.settimeout(TIMEOUT)
        self.offloads: int | None = None
        self.closed = False
        self._made = made
        made.append(self)

    def set_offloads(self, flags: int) -> None:
        self.offloads = flags

    def open_queue(self) -> SockTap:
        return SockTap(self._made)

    def fileno(self) -> int:
        return self.dev.fileno()

    def close(self) -> None:
        self.closed = True
        self.dev.close()
        self.app.close()


class Peer:
    """The other domain's end of one queue: the client vchan with a pump on a socket."""

    def __init__(self, client: VchanClient) -> None:
        self.vchan = client
        self.app, sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.app.settimeout(TIMEOUT)
        self._sock = sock
        self.pump: FramePump | None = FramePump.start(client, sock.fileno(), NEG)

    def close(self) -> None:
        if self.pump is not None:
            self.pump.close()
            self.pump = None
        self.vchan.close()

    def free(self) -> None:
        self.close()
        self.app.close()
        self._sock.close()


@pytest.fixture
def world() -> Iterator[tuple[list[SockTap], list[VchanServer], list[Peer]]]:
    taps: list[SockTap] = []
    servers: list[VchanServer] = []
    peers: list[Peer] = []
    yield taps, servers, peers
    for p in peers:
        p.free()
    for t in taps:
        if not t.closed:
            t.close()
    for s in servers:
        s.close()


def open_dp(world, n: int, fail_at: int | None = None, at_least: int | None = None) -> Datapath:
    taps, servers, peers = world

    def vchan_for(i: int) -> VchanServer:
        if i == fail_at:
            raise OSError(5, f"queue {i} refused")
        srv, cli = local_pair(64 * 1024, 64 * 1024)
        servers.append(srv)
        peers.append(Peer(cli))
        return srv

    return Datapath._open(n, SockTap(taps), NEG, vchan_for, at_least=at_least)


def frame(tag: int) -> bytes:
    return fr.VnetHdr().pack() + bytes(12) + b"\x08\x00" + bytes([tag]) * 50


def test_each_queue_pumps_its_own_fd_and_counts_apart(world) -> None:
    taps, _, peers = world
    dp = open_dp(world, 2)
    try:
        assert len(dp.queues) == 2 and taps[0].offloads is not None
        taps[1].app.send(frame(1))  # queue 1's TAP fd -> queue 1's vchan
        assert peers[1].app.recv(70000) == frame(1)
        for _ in range(3):
            peers[0].app.send(frame(0))  # the peer's queue 0 -> the vif's own TAP fd
            assert taps[0].app.recv(70000) == frame(0)
        deadline = time.monotonic() + TIMEOUT
        while dp.counters().frames_rx < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        c = dp.counters()
        assert (c.frames_tx, c.frames_rx) == (1, 3)
        assert [(q.frames_tx, q.frames_rx) for q in c.queues] == [(0, 3), (1, 0)]
        assert dp.ended() is None
    finally:
        dp.close()


def test_one_queue_ending_ends_the_channel_naming_it(world) -> None:
    taps, servers, peers = world
    dp = open_dp(world, 3)
    try:
        assert not select.select([dp.done_fd()], [], [], 0)[0]
        peers[2].close()  # queue 2's peer goes away
        assert select.select([dp.done_fd()], [], [], TIMEOUT)[0], "done fd never readable"
        why = dp.ended()
        assert why is not None and why.startswith("queue 2: peer_closed"), why
        assert dp.queues[0].pump.state == PumpState.RUNNING  # the others ran on until...
    finally:
        first = dp.close()  # ...the one teardown: every queue
    assert len(first) == 3 and dp.close() is first  # idempotent
    assert dp.ended() is None and dp.tracked_pages == 0
    assert all(s.closed for s in servers)
    assert [t.closed for t in taps] == [False, True, True]  # queue fds went, the vif's TAP stays


def test_a_queue_that_cannot_be_set_up_unwinds_the_ones_before(world) -> None:
    taps, servers, _ = world
    with pytest.raises(OSError, match="queue 2 refused"):
        open_dp(world, 3, fail_at=2)
    assert len(servers) == 2 and all(s.closed for s in servers)
    assert [t.closed for t in taps] == [False, True, True]


def test_a_single_queue_channel_is_todays(world) -> None:
    taps, _, peers = world
    dp = open_dp(world, 1)
    try:
        assert dp.done_fd() == dp.queues[0].pump.done_fd()  # no epoll in between
        peers[0].close()
        assert select.select([dp.done_fd()], [], [], TIMEOUT)[0]
        assert (dp.ended() or "").startswith("peer_closed")  # no queue prefix
    finally:
        dp.close()
    assert len(taps) == 1


def test_a_frontend_goes_on_with_the_queues_it_could_make(world) -> None:
    """As netfront: queue 2 cannot be had (grants or event channels exhausted), so the
    channel has queues 0 and 1, and says why; queue 2's TAP fd is not kept."""
    taps, servers, _ = world
    dp = open_dp(world, 3, fail_at=2, at_least=1)
    try:
        assert len(dp.queues) == 2 and "queue 2 refused" in (dp.short_of or "")
        assert [t.closed for t in taps] == [False, False, True]
        assert dp.ended() is None
    finally:
        dp.close()
    with pytest.raises(OSError, match="queue 0 refused"):  # not even one: the setup fails
        open_dp(world, 3, fail_at=0, at_least=1)
