"""A switch port's rate limit (the backend entry's ``rate`` on a vif that is a switch
port): what the guest sends waits in its ring for the credit (cext/forward/credit.h),
nothing is lost, other ports are not limited, a live change applies. Only lower
bounds on time are asserted (a limit, and a loaded machine, only make things slower)."""

from __future__ import annotations

import hashlib
import threading
import time

from ncd.switch import Switch

from .helpers import BCAST, TIMEOUT, Guest, eth, wait_for

# rings that hold every frame a test sends: the switch drops what a full destination
# ring cannot take (drop_ring_full), and an unlimited sender outruns the test's reader
RING = 1 << 20


def _send_all(g: Guest, frames: list[bytes], errors: list[BaseException]) -> None:
    try:
        for f in frames:
            g.send(f, timeout=TIMEOUT * 3)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def _frames(src: Guest, dst: Guest, n: int, size: int = 1000) -> list[bytes]:
    return [eth(dst.mac, src.mac, i.to_bytes(4, "big") * (size // 4))[:size] for i in range(n)]


def _through(src: Guest, dst: Guest, frames: list[bytes]) -> float:
    errors: list[BaseException] = []
    t0 = time.monotonic()
    sender = threading.Thread(target=_send_all, args=(src, frames, errors))
    sender.start()
    got = dst.expect(len(frames), timeout=TIMEOUT * 3)
    took = time.monotonic() - t0
    sender.join(TIMEOUT)
    assert not errors, errors
    want = hashlib.sha256(b"".join(frames)).hexdigest()
    assert hashlib.sha256(b"".join(got)).hexdigest() == want
    return took


def test_limited_port_waits_others_do_not(switch, guests) -> None:
    sw: Switch = switch()
    a, b = guests(sw, 1, ring=RING), guests(sw, 2, ring=RING)
    sw.set_port_rate(a.port, 20_000, 10_000)  # 2 MB/s
    took = _through(a, b, _frames(a, b, 300))  # 300 kB
    assert took >= 0.8 * (300_000 - 20_000) / 2_000_000
    st = sw.port_stats(a.port)
    assert st.rx_frames == 300 and st.rate_limited > 0 and st.rate_delay_usec > 0
    # b -> a: b's port has no limit (and a's limit is on what a sends, not receives)
    _through(b, a, _frames(b, a, 300))
    assert sw.port_stats(b.port).rate_limited == 0
    assert sw.port_stats(a.port).rate_limited == st.rate_limited


def test_live_change_releases_and_sets_a_limit(switch, guests) -> None:
    sw: Switch = switch()
    a, b = guests(sw, 1, ring=RING), guests(sw, 2, ring=RING)
    sw.set_port_rate(a.port, 1000, 10_000_000)  # 1 kB per 10 s
    frames = _frames(a, b, 100)
    errors: list[BaseException] = []
    sender = threading.Thread(target=_send_all, args=(a, frames, errors))
    sender.start()
    first = b.expect(1)
    wait_for(lambda: sw.port_stats(a.port).rate_limited == 1, what="the port to wait")
    sw.set_port_rate(a.port, 0, 0)  # unlimited, live
    rest = b.expect(99, timeout=TIMEOUT * 3)
    sender.join(TIMEOUT)
    assert not errors, errors
    assert first + rest == frames
    sw.set_port_rate(a.port, 10_000, 10_000)  # 1 MB/s, live again
    took = _through(a, b, _frames(a, b, 200))
    assert took >= 0.8 * (200_000 - 10_000) / 1_000_000
    assert sw.port_stats(a.port).rate_limited > 1


def test_a_held_frame_is_charged_once(switch, guests) -> None:
    """A frame held for a full destination stays in its source ring and is looked at
    again in every round of the hold: it takes its credit once, in the round it goes.
    One interval (60 s) of credit for exactly 20 frames: all 20 cross however many
    rounds the holds last, the 21st waits for the refill."""
    sw: Switch = switch(hold=30.0)
    a, b = guests(sw, 1, ring=RING), guests(sw, 2, ring=8192)  # b: a handful of frames
    for g, other in ((a, b), (b, a)):  # learn both MACs: a -> b is unicast (holdable)
        g.send(eth(BCAST, g.mac, b"hello"))
        other.expect(1)
    frames = _frames(a, b, 30)
    sw.set_port_rate(a.port, 20 * len(frames[0]), 60_000_000)
    for f in frames:
        a.send(f)
    wait_for(lambda: sw.port_stats(b.port).ring_full_waits >= 1, what="a hold for b")
    assert b.expect(20) == frames[:20]  # b drains its ring a few frames at a time
    wait_for(lambda: sw.port_stats(a.port).rate_limited == 1, what="a to wait for credit")
    assert b.quiet() and sw.port_stats(a.port).rx_frames == 21  # + the hello
    assert sw.port_stats(b.port).drop_ring_full == 0
