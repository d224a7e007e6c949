"""The C frame pump on an in-memory vchan pair (both ends in this process).

Each end: a SOCK_SEQPACKET socketpair, the pump on one socket, the test on the other.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncd.features import Features, Negotiated
from ncd.vchan.channel import Vchan, local_pair
from ncd.vchan.pump import FramePump, PumpState, PumpStats
from tests import framecodec as fr

TIMEOUT = 10.0
SNDBUF = 4 << 20


def seqpacket() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SNDBUF)
        s.settimeout(TIMEOUT)
    return a, b


class End:
    """One end of the channel: its vchan, its pump (maybe), the test's socket."""

    def __init__(self, vchan: Vchan) -> None:
        self.vchan = vchan
        self.app, self.pump_sock = seqpacket()
        self.pump: FramePump | None = None

    def start(self, negotiated: Negotiated | None = None, **kw: int) -> FramePump:
        self.pump = FramePump.start(self.vchan, self.pump_sock.fileno(), negotiated, **kw)
        return self.pump

    def stats(self) -> PumpStats:
        assert self.pump is not None
        return self.pump.stats()

    def close(self) -> None:
        if self.pump is not None:
            self.pump.close()
        self.vchan.close()
        self.app.close()
        self.pump_sock.close()


@pytest.fixture
def make_pair() -> Iterator:
    made: list[End] = []

    def make(ring: int = 256 * 1024, start: bool = True) -> tuple[End, End]:
        srv, cli = local_pair(ring, ring)
        a, b = End(srv), End(cli)
        made.extend([a, b])
        if start:
            a.start()
            b.start()
        return a, b

    yield make
    for e in made:
        e.close()


def vnet(i: int = 0) -> bytes:
    return fr.VnetHdr(flags=fr.F_DATA_VALID if i % 2 else 0).pack()


def frame(size: int, seq: int) -> bytes:
    body = struct.pack("<I", seq) + random.Random(seq).randbytes(16)
    return (body * (size // len(body) + 1))[:size]


def settled(a: End, b: End, frames_ab: int, frames_ba: int) -> tuple[PumpStats, PumpStats]:
    """Counters once both pumps accounted the frames the test already received (a
    counter moves right after the send it counts)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        sa, sb = a.stats(), b.stats()
        if (sb.rx_frames, sa.rx_frames) == (frames_ab, frames_ba) or time.monotonic() > deadline:
            return sa, sb
        time.sleep(0.005)


def wait_state(pump: FramePump, timeout: float = TIMEOUT) -> PumpState:
    r, _, _ = select.select([pump.done_fd()], [], [], timeout)
    assert r, f"pump still {pump.state.name}"
    return pump.state


SIZES = [60, 64, 1500, 1514, 4000, 9018, 32768, 65535, fr.ETH_MAX]


def test_frames_cross_both_ways_with_matching_counters(make_pair) -> None:
    a, b = make_pair(start=False)
    # no spinning: every hand-over to a sleeping pump is then an event-channel
    # notification, which this test counts (tests/vchan/test_pump_spin.py: the spin)
    a.start(spin_usec=0)
    b.start(spin_usec=0)
    total = 0
    for i, size in enumerate(SIZES):
        f = frame(size, i)
        a.app.send(vnet(i) + f)
        assert b.app.recv(fr.ETH_MAX + 100) == vnet(i) + f
        g = frame(size, 1000 + i)
        b.app.send(vnet(i + 1) + g)
        assert a.app.recv(fr.ETH_MAX + 100) == vnet(i + 1) + g
        total += size
    sa, sb = settled(a, b, len(SIZES), len(SIZES))
    assert sa.tx_frames == sb.rx_frames == len(SIZES)
    assert sb.tx_frames == sa.rx_frames == len(SIZES)
    assert sa.tx_bytes == sb.rx_bytes == sb.tx_bytes == sa.rx_bytes == total
    for s in (sa, sb):
        assert sum(s.drops().values()) == 0
        assert s.notify_recv > 0 and s.notify_sent > 0
    assert a.pump is not None and a.pump.state == PumpState.RUNNING


def _blast(sock: socket.socket, frames: list[bytes], errors: list[BaseException]) -> None:
    try:
        for i, f in enumerate(frames):
            sock.send(vnet(i) + f)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def _collect(sock: socket.socket, n: int, out: list[bytes], errors: list[BaseException]) -> None:
    try:
        for _ in range(n):
            out.append(sock.recv(fr.ETH_MAX + 100))
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.parametrize("ring", [16 * 1024, 128 * 1024, 1024 * 1024])
def test_sustained_both_ways_in_order(make_pair, ring: int) -> None:
    a, b = make_pair(ring)
    rnd = random.Random(ring)
    big = fr.ETH_MAX if ring > 2 * fr.REC_LEN_MAX else ring // 2
    fa = [frame(rnd.choice([60, 300, 1514, 9000, big]), i) for i in range(600)]
    fb = [frame(rnd.choice([64, 1500, big]), i) for i in range(600)]
    errors: list[BaseException] = []
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    threads = [
        threading.Thread(target=_blast, args=(a.app, fa, errors)),
        threading.Thread(target=_blast, args=(b.app, fb, errors)),
        threading.Thread(target=_collect, args=(b.app, len(fa), got_b, errors)),
        threading.Thread(target=_collect, args=(a.app, len(fb), got_a, errors)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert got_b == [vnet(i) + f for i, f in enumerate(fa)]
    assert got_a == [vnet(i) + f for i, f in enumerate(fb)]
    sa, sb = settled(a, b, 600, 600)
    assert (sa.tx_frames, sb.rx_frames, sb.tx_frames, sa.rx_frames) == (600, 600, 600, 600)
    assert sa.tx_bytes == sb.rx_bytes == sum(map(len, fa))
    assert sb.tx_bytes == sa.rx_bytes == sum(map(len, fb))
    assert sum(sa.drops().values()) == sum(sb.drops().values()) == 0
    # batching: fewer commits than frames once the pumps were busy
    assert sa.tx_batches <= sa.tx_frames and sb.rx_batches <= sb.rx_frames


def _until(cond, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


@pytest.mark.parametrize("size,n,commits", [(64, 60, 1), (fr.ETH_MAX, 10, 10)])
def test_commit_granularity(make_pair, size: int, n: int, commits: int) -> None:
    """Small frames are committed once per batch; a record of 32 KiB or more at once, so
    that the peer can work on it while the next one is moved."""
    a, b = make_pair(1 << 20, start=False)
    frames = [frame(size, i) for i in range(n)]
    for i, f in enumerate(frames):  # all queued before the pump starts: one tx run
        a.app.send(vnet(i) + f)
    a.start()
    # frames are counted as they are moved, the commit follows: wait for both
    _until(lambda: a.stats().tx_frames == n and a.stats().tx_batches >= commits,
           "tx did not take and commit every frame")
    assert a.stats().tx_batches == commits
    assert b.vchan.data_ready() == n * (fr.REC_HDR_SIZE + size)
    b.start()  # every record is in its ring already: one rx run
    got = [b.app.recv(fr.ETH_MAX + 100) for _ in frames]
    assert got == [vnet(i) + f for i, f in enumerate(frames)]
    _until(lambda: b.stats().rx_frames == n and b.stats().rx_batches >= commits,
           "rx did not deliver and commit every frame")
    assert b.stats().rx_batches == commits


def test_ring_full_waits_and_fd_backpressure(make_pair) -> None:
    a, b = make_pair(64 * 1024)
    b.pump_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    frames = [frame(9000, i) for i in range(100)]
    for i, f in enumerate(frames):  # nobody reads b.app: b's pump waits, a's ring fills
        a.app.send(vnet(i) + f)
    got = [b.app.recv(fr.ETH_MAX) for _ in frames]
    assert got == [vnet(i) + f for i, f in enumerate(frames)]
    assert a.stats().ring_full_waits > 0
    assert b.stats().fd_full_waits > 0


def test_small_ring_bounce_path_and_too_big_drop(make_pair) -> None:
    a, b = make_pair(16 * 1024)  # smaller than a maximal record: frames go through a bounce
    a.app.send(vnet() + frame(20000, 1))  # cannot ever fit the 16 KiB ring
    a.app.send(vnet() + frame(1500, 2))
    a.app.send(vnet() + frame(16 * 1024 - fr.REC_HDR_SIZE, 3))  # exactly fills the ring
    assert b.app.recv(70000) == vnet() + frame(1500, 2)
    assert b.app.recv(70000) == vnet() + frame(16 * 1024 - fr.REC_HDR_SIZE, 3)
    s = settled(a, b, 2, 0)[0]
    assert s.drop_too_big == 1 and s.tx_frames == 2


def test_tx_drops_unnegotiated_offload_short_and_oversized(make_pair) -> None:
    a, b = make_pair(start=False)
    a.start(Negotiated(Features.ALL, Features.NONE, 1518))
    b.start(Negotiated(Features.NONE, Features.ALL, 1518))
    a.app.send(fr.VnetHdr(flags=fr.F_DATA_VALID).pack() + frame(100, 1))  # peer lacks csum
    a.app.send(bytes(10) + b"x" * 13)  # shorter than an Ethernet header
    a.app.send(bytes(10) + frame(1519, 2))  # over the negotiated max frame
    a.app.send(bytes(10) + frame(1518, 3))
    assert b.app.recv(70000) == bytes(10) + frame(1518, 3)
    s = settled(a, b, 1, 0)[0]
    assert (s.drop_tx_offload, s.drop_tx_short, s.drop_tx_truncated, s.tx_frames) == (1, 1, 1, 1)
    assert b.pump is not None and b.pump.state == PumpState.RUNNING


@pytest.mark.parametrize("bad,why", [
    (struct.pack("<I", 5) + bytes(40), "shorter"),
    (struct.pack("<I", fr.REC_LEN_MAX + 1) + bytes(40), "longer"),
    (struct.pack("<I", 300000) + bytes(40), "longer"),
    (fr.encode(b"x" * 60, fr.VnetHdr(flags=0x40)), "flags"),
    (fr.encode(b"x" * 60, fr.VnetHdr(gso_type=fr.GSO_TCPV4, gso_size=10, flags=1,
                                     csum_start=1, csum_offset=1, hdr_len=61)), "hdr_len"),
])
def test_bad_record_from_peer_closes_with_reason(make_pair, bad: bytes, why: str) -> None:
    a, b = make_pair(start=False)
    pump = a.start()
    good = fr.encode(frame(100, 7))
    assert b.vchan.write(good + bad) == len(good) + len(bad)
    assert a.app.recv(70000) == good[4:]  # what came before the bad record was delivered
    assert wait_state(pump) == PumpState.BAD_PEER
    assert why in pump.reason
    s = pump.stats()
    assert s.bad_record == 1 and s.rx_frames == 1
    pump.stop()
    assert pump.state == PumpState.BAD_PEER  # stop() keeps the first reason


def test_record_larger_than_ring_is_bad(make_pair) -> None:
    a, b = make_pair(16 * 1024, start=False)
    pump = a.start()
    b.vchan.write(struct.pack("<I", 20000) + bytes(100))
    assert wait_state(pump) == PumpState.BAD_PEER
    assert "larger than the ring" in pump.reason


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, f: struct.pack("<I", n) + f, st.integers(0, 3000),
              st.binary(min_size=0, max_size=200)),
    st.builds(lambda n: fr.encode(bytes([n]) * (14 + n)), st.integers(0, 255)),
), max_size=8))
def test_fuzz_hostile_stream_matches_reference(make_pair, garbage: list[bytes]) -> None:
    """Whatever the peer writes: the pump delivers exactly the records the reference
    parser accepts, then either keeps waiting (incomplete tail) or closes as BAD_PEER."""
    a, b = make_pair(8 * 1024, start=False)
    pump = a.start(Negotiated(Features.CSUM, Features.NONE, 1518))
    stream = b"".join(garbage)[: 8 * 1024]
    assert b.vchan.write(stream) == len(stream)
    err, recs, _ = fr.parse(stream, 1518, Features.CSUM, 8 * 1024)
    for h, body in recs:
        assert a.app.recv(70000) == h.pack() + body
    if err in (fr.Err.OK, fr.Err.INCOMPLETE):
        r, _, _ = select.select([pump.done_fd(), a.app], [], [], 0.05)
        assert not r and pump.state == PumpState.RUNNING
    else:
        assert wait_state(pump) == PumpState.BAD_PEER
        assert pump.stats().bad_record == 1
    deadline = time.monotonic() + TIMEOUT
    while pump.stats().rx_frames != len(recs) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pump.stats().rx_frames == len(recs)


def test_peer_close_delivers_then_ends(make_pair) -> None:
    a, b = make_pair(start=False)
    pump = a.start()
    frames = [frame(1000 + i, i) for i in range(5)]
    stream = b"".join(fr.encode(f) for f in frames)
    assert b.vchan.write(stream) == len(stream)
    b.vchan.close()
    assert wait_state(pump) == PumpState.PEER_CLOSED
    assert [a.app.recv(70000) for _ in frames] == [bytes(10) + f for f in frames]


def test_stop_is_clean_and_leaves_the_vchan_usable(make_pair) -> None:
    a, b = make_pair()
    a.app.send(vnet() + frame(500, 1))
    assert b.app.recv(70000) == vnet() + frame(500, 1)
    assert a.pump is not None and b.pump is not None
    a.pump.stop()
    a.pump.stop()
    b.pump.stop()
    assert a.pump.state == b.pump.state == PumpState.STOPPED
    assert a.pump.reason == "stopped"
    # the rings still work for plain stream I/O in both directions
    rec = fr.encode(frame(80, 2))
    assert a.vchan.write(rec) == len(rec)
    assert b.vchan.read(len(rec)) == rec
    assert b.vchan.write(b"hello") == 5 and a.vchan.read(5) == b"hello"


def test_fd_eof_ends_the_pump(make_pair) -> None:
    a, _ = make_pair()
    assert a.pump is not None
    a.app.close()
    assert wait_state(a.pump) == PumpState.FD_ERROR
    assert "end of file" in a.pump.reason or "hang-up" in a.pump.reason


def test_start_rejects_bad_config(make_pair) -> None:
    from ncd.vchan.pump import PumpError

    a, _ = make_pair(start=False)
    with pytest.raises(PumpError):
        FramePump.start(a.vchan, -1)
    with pytest.raises(PumpError):
        FramePump.start(a.vchan, a.pump_sock.fileno(), Negotiated(Features.ALL,
                                                                     Features.ALL, 10))


@pytest.mark.parametrize("ring", [4096, 2048])
def test_records_straddling_the_ring_end_at_every_offset(make_pair, ring: int) -> None:
    """Put the ring indices k bytes before the end, so that the length field, the vnet
    header and the frame of the next records are split across the wrap at every
    position; both the tx (readv into two iovecs) and rx (writev from two) sides."""
    neg = Negotiated(Features.ALL, Features.ALL, 1000 if ring == 2048 else 1518)
    for k in range(0, 40):
        a, b = make_pair(ring, start=False)
        filler = b"f" * (ring - k)
        for w, r in ((a.vchan, b.vchan), (b.vchan, a.vchan)):
            assert w.write(filler) == len(filler)
            assert r.read(len(filler)) == filler
        a.start(neg)
        b.start(neg)
        for i, size in enumerate((60, 200, 777)):
            f = fr.VnetHdr(flags=fr.F_DATA_VALID).pack() + frame(size, k * 10 + i)
            a.app.send(f)
            assert b.app.recv(70000) == f
            b.app.send(f)
            assert a.app.recv(70000) == f
        for e in (a, b):
            e.close()
