"""Full destinations (docs/forwarding.md, "Full destinations"): a unicast frame between
two vchan ports whose destination ring is full waits in its source ring, holding that
source only, until the destination has room or the hold's bound expires (then it is
dropped and counted, and the destination counts as stuck until it has room again).

The switch runs on local vchan pairs; the test plays the guests. Bounds are either long
(30 s: the test releases the destination long before) or short with the test waiting
for the outcome, never for a duration: nothing here depends on how fast the host is.
"""

from __future__ import annotations

import hashlib
import struct

from ncd.switch import PortState

from .helpers import BCAST, Guest, eth, wait_for


def _learn(*gs: Guest) -> None:
    """Every guest says hello (broadcast), so later frames between them are unicast."""
    for g in gs:
        g.send(eth(BCAST, g.mac, b"hello"))
    for g in gs:
        wait_for(lambda g=g: (g.poll(), len(g.got) >= len(gs) - 1)[1], what="hellos")
        g.got.clear()


def _frames(src: Guest, dst: Guest, n: int, size: int = 1000) -> list[bytes]:
    return [eth(dst.mac, src.mac, struct.pack(">I", i) + bytes([i % 251]) * size) for i in range(n)]


def test_full_destination_that_drains_loses_no_unicast_frame(switch, guests) -> None:
    sw = switch(hold=30.0)
    a = guests(sw, 1, ring=256 * 1024)
    b = guests(sw, 2, ring=8192)  # a handful of 1 KB frames fill it
    _learn(a, b)
    frames = _frames(a, b, 200)
    for f in frames:  # 200 KB: fits a's ring, not b's
        a.send(f)
    # b's ring is full and the switch holds a's next frame instead of dropping it
    wait_for(lambda: sw.port_stats(b.port).ring_full_waits >= 1, what="a hold for b")
    assert sw.port_stats(b.port).drop_ring_full == 0
    wait_for(lambda: (b.poll(), len(b.got) >= len(frames))[1], what="b to drain everything")
    assert hashlib.sha256(b"".join(b.got)).digest() == hashlib.sha256(b"".join(frames)).digest()
    sa, sb = sw.port_stats(a.port), sw.port_stats(b.port)
    assert sb.drop_ring_full == 0 and sb.tx_frames == len(frames) + 1  # + a's hello
    assert sa.rx_frames == len(frames) + 1  # a held frame is counted once, when it goes
    assert sw.accounting()[(1, 2)] == (sb.tx_frames, sb.tx_bytes)


def test_other_ports_keep_forwarding_while_one_destination_is_stuck_full(switch, guests) -> None:
    sw = switch(hold=30.0)
    a = guests(sw, 1, ring=256 * 1024)
    stuck = guests(sw, 2, ring=8192)  # does not read until the end
    c = guests(sw, 3, ring=256 * 1024)
    d = guests(sw, 4, ring=256 * 1024)
    _learn(a, stuck, c, d)
    held = _frames(a, stuck, 40)
    for f in held:
        a.send(f)
    wait_for(lambda: sw.port_stats(stuck.port).ring_full_waits >= 1, what="a held for stuck")
    # c <-> d: thousands of frames both ways cross while a waits for stuck
    cd, dc = _frames(c, d, 1500, 600), _frames(d, c, 1500, 600)
    for x, y in zip(cd, dc, strict=True):
        c.send(x)
        d.send(y)
        c.poll(), d.poll()
    wait_for(
        lambda: (c.poll(), d.poll(), len(d.got) >= len(cd) and len(c.got) >= len(dc))[-1],
        what="c and d to get each other's frames",
    )
    assert hashlib.sha256(b"".join(d.got)).digest() == hashlib.sha256(b"".join(cd)).digest()
    assert hashlib.sha256(b"".join(c.got)).digest() == hashlib.sha256(b"".join(dc)).digest()
    # a is still held: nothing of its was dropped, and the stuck guest drains it all now
    assert sw.port_stats(stuck.port).drop_ring_full == 0
    wait_for(lambda: (stuck.poll(), len(stuck.got) >= len(held))[1], what="stuck to drain")
    assert stuck.got == held
    assert sw.port_stats(stuck.port).drop_ring_full == 0


def test_hold_expires_then_drops_and_counts_and_the_source_moves_on(switch, guests) -> None:
    sw = switch(hold=0.05)
    a = guests(sw, 1, ring=256 * 1024)
    b = guests(sw, 2, ring=8192)  # never reads (until the end)
    c = guests(sw, 3, ring=256 * 1024)
    _learn(a, b, c)
    base = sw.port_stats(b.port).tx_frames  # the hellos
    to_b = _frames(a, b, 50)
    for f in to_b:
        a.send(f)
    after = eth(c.mac, a.mac, b"behind the frames for b")
    a.send(after)
    # the hold for b expires once; b is then stuck: the rest for b drop at once and
    # a's frame for c, behind them in a's ring, goes through
    assert c.expect(1) == [after]
    sb = sw.port_stats(b.port)
    assert sb.ring_full_waits == 1
    fitted = sb.tx_frames - base
    assert sb.drop_ring_full > 0 and fitted + sb.drop_ring_full == len(to_b)
    b.poll()
    assert b.got == to_b[:fitted]  # what fitted, in order
    # b drained: it has room again, so it is not stuck any more and gets a's next frame
    b.got.clear()
    f = eth(b.mac, a.mac, b"now you read")
    a.send(f)
    assert b.expect(1) == [f]


def test_no_hold_drops_at_once(switch, guests) -> None:
    sw = switch(hold=0)
    a = guests(sw, 1, ring=256 * 1024)
    b = guests(sw, 2, ring=8192)
    c = guests(sw, 3, ring=256 * 1024)
    _learn(a, b, c)
    base = sw.port_stats(b.port).tx_frames
    to_b = _frames(a, b, 50)
    for f in to_b:
        a.send(f)
    a.send(eth(c.mac, a.mac, b"last"))
    c.expect(1)
    sb = sw.port_stats(b.port)
    assert sb.drop_ring_full > 0 and sb.tx_frames - base + sb.drop_ring_full == len(to_b)
    assert sb.ring_full_waits == 0


def test_removing_the_full_destination_releases_the_held_source(switch, guests) -> None:
    sw = switch(hold=30.0)
    a = guests(sw, 1, ring=256 * 1024)
    b = guests(sw, 2, ring=8192)
    c = guests(sw, 3, ring=256 * 1024)
    _learn(a, b, c)
    for f in _frames(a, b, 40):
        a.send(f)
    wait_for(lambda: sw.port_stats(b.port).ring_full_waits >= 1, what="a held for b")
    b.remove()
    # b's MAC is forgotten with its port: a's remaining frames for it are unknown
    # unicast now, flooded to c; a's own frame for c follows them
    last = eth(c.mac, a.mac, b"after the removal")
    a.send(last)
    wait_for(lambda: (c.poll(), bool(c.got) and c.got[-1] == last)[1], what="a to move on")


def test_a_destination_that_fails_while_held_releases_the_source(switch, guests) -> None:
    """The held-for guest closes its end: its port stops, a's frames go on (flooded to
    c, the only other port), and the switch goes back to sleep instead of looking at
    the gone hold for ever."""
    sw = switch(hold=30.0)
    a = guests(sw, 1, ring=256 * 1024)
    b = guests(sw, 2, ring=8192)
    c = guests(sw, 3, ring=256 * 1024)
    _learn(a, b, c)
    for f in _frames(a, b, 40):
        a.send(f)
    wait_for(lambda: sw.port_stats(b.port).ring_full_waits >= 1, what="a held for b")
    b.far.close()
    wait_for(lambda: sw.port_state(b.port) == PortState.PEER_CLOSED, what="b's port to stop")
    last = eth(c.mac, a.mac, b"after b closed")
    a.send(last)
    wait_for(lambda: (c.poll(), bool(c.got) and c.got[-1] == last)[1], what="a to move on")
    # idle again: the thread sleeps (a round per wake-up, at most one per second idle)
    # rather than spinning on the gone hold (millions of rounds)
    c.got.clear()
    r0 = sw.info().rounds
    assert c.quiet(0.5)
    assert sw.info().rounds - r0 < 100
