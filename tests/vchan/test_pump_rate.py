"""The pump's rate limit (cext/forward/credit.h) on frames from the peer (ring -> fd,
what a guest transmits), on an in-memory vchan pair: frames wait in the ring, none is
lost, the counters say they waited; a live change applies to the running thread. Only
lower bounds on time are asserted (a limit can only make things slower; a loaded
machine too)."""

from __future__ import annotations

import hashlib
import threading
import time

from ncd.vchan.pump import FramePump
from tests import framecodec as fr
from tests.vchan.test_pump_local import TIMEOUT, End, _blast, _collect, frame, make_pair, vnet

__all__ = ["make_pair"]  # the fixture, shared with test_pump_local


def _digest(frames: list[bytes]) -> str:
    h = hashlib.sha256()
    for i, f in enumerate(frames):
        h.update(vnet(i) + f)
    return h.hexdigest()


def _through(a: End, b: End, frames: list[bytes]) -> tuple[list[bytes], float]:
    """Send ``frames`` a -> b, return what b received and how long it took."""
    errors: list[BaseException] = []
    got: list[bytes] = []
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=_blast, args=(a.app, frames, errors)),
        threading.Thread(target=_collect, args=(b.app, len(frames), got, errors)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    assert not errors, errors
    return got, time.monotonic() - t0


def test_limited_frames_wait_and_all_arrive(make_pair) -> None:
    a, b = make_pair(start=False)
    a.start()
    rate = (20_000, 10_000)  # 20 kB per 10 ms = 2 MB/s
    pump: FramePump = b.start(rate=rate)
    frames = [frame(1000, i) for i in range(300)]  # 300 kB
    got, took = _through(a, b, frames)
    digest = _digest(frames)
    assert hashlib.sha256(b"".join(got)).hexdigest() == digest
    # at most one interval's credit plus the rate: >= (300 - 20) kB / 2 MB/s = 140 ms
    assert took >= 0.8 * (300_000 - 20_000) / 2_000_000
    st = pump.stats()
    assert st.rx_frames == 300 and st.rx_bytes == 300_000
    assert st.rate_limited > 0
    assert st.rate_delay_usec > 0
    assert sum(st.drops().values()) == 0
    # the other direction (b's fd -> ring: what we send the guest) is not limited
    assert st.tx_frames == 0 and a.stats().rate_limited == 0


def test_unlimited_by_default_and_with_zero(make_pair) -> None:
    a, b = make_pair(start=False)
    a.start()
    pump = b.start(rate=(0, 50_000))  # bytes 0: unlimited, as with no rate key
    got, _ = _through(a, b, [frame(1514, i) for i in range(500)])
    assert len(got) == 500
    assert pump.stats().rate_limited == 0 and pump.stats().rate_delay_usec == 0


def test_live_change_releases_a_slow_limit(make_pair) -> None:
    a, b = make_pair(start=False)
    a.start()
    pump = b.start(rate=(1000, 10_000_000))  # 1 kB per 10 s: 200 frames take 2000 s
    frames = [frame(1000, i) for i in range(200)]
    errors: list[BaseException] = []
    got: list[bytes] = []
    sender = threading.Thread(target=_blast, args=(a.app, frames, errors))
    sender.start()
    first = b.app.recv(fr.ETH_MAX + 100)  # the first interval's credit
    deadline = time.monotonic() + TIMEOUT
    while pump.stats().rate_limited == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pump.stats().rate_limited == 1  # the second frame waits for a refill 10 s away
    pump.set_rate(0, 0)  # unlimited, live: the waiting thread is woken for it
    _collect(b.app, len(frames) - 1, got, errors)
    sender.join(TIMEOUT)
    assert not errors, errors
    assert hashlib.sha256(first + b"".join(got)).hexdigest() == _digest(frames)


def test_live_change_limits_a_running_pump(make_pair) -> None:
    a, b = make_pair(start=False)
    a.start()
    pump = b.start()
    got, _ = _through(a, b, [frame(1000, i) for i in range(100)])
    assert len(got) == 100 and pump.stats().rate_limited == 0
    pump.set_rate(10_000, 10_000)  # 1 MB/s from now on
    frames = [frame(1000, i) for i in range(200)]
    got, took = _through(a, b, frames)
    assert hashlib.sha256(b"".join(got)).hexdigest() == _digest(frames)
    assert took >= 0.8 * (200_000 - 10_000) / 1_000_000
    assert pump.stats().rate_limited > 0
