"""The pump's bounded adaptive spin (cext/pump/pump.c, spin()): a busy exchange is
caught by spinning instead of a sleep, and an idle pump sleeps at once and costs nothing.

Both ends on an in-memory vchan pair (tests/vchan/test_pump_local.py's fixture)."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from ncd import config
from ncd.vchan.channel import local_pair
from ncd.vchan.pump import SPIN_MAX_USEC, SPIN_USEC, FramePump, PumpError, PumpStats
from tests.vchan.test_pump_local import End, frame, make_pair, settled, vnet  # noqa: F401

EXCHANGES = 2000
SPIN = 150  # microseconds: what an operator who turns the spin on would set
TICK = os.sysconf("SC_CLK_TCK")


def pump_cpu_ticks() -> int:
    """utime + stime of this process's ncd-pump threads (/proc/self/task/*/stat)."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "ncd-pump":
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        total += int(fields[11]) + int(fields[12])
    return total


def rx_settled(end: End, n: int) -> PumpStats:
    """The pump's counters once it has counted ``n`` frames delivered (a counter moves
    right after the send it counts)."""
    deadline = time.monotonic() + 10
    while (s := end.stats()).rx_frames < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return s


def exchange(a: End, b: End, n: int) -> None:
    """n request/response pairs, a -> b and back, each echo checked."""
    for i in range(n):
        f = frame(64 + i % 1400, i)
        a.app.send(vnet(i) + f)
        got = b.app.recv(70000)
        assert got == vnet(i) + f
        b.app.send(got)
        assert a.app.recv(70000) == got


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the pump spins only with 2+ CPUs")
def test_request_response_is_caught_by_spinning(make_pair) -> None:  # noqa: F811
    a, b = make_pair(start=False)
    a.start(spin_usec=SPIN)
    b.start(spin_usec=SPIN)
    exchange(a, b, EXCHANGES)
    sa, sb = settled(a, b, EXCHANGES, EXCHANGES)
    assert sa.tx_frames == sb.rx_frames == sb.tx_frames == sa.rx_frames == EXCHANGES
    # each echo is back within microseconds: the pumps spin for it instead of
    # sleeping (and being woken by a notification) for most of them
    assert sa.spins_won + sb.spins_won > 0, (sa, sb)
    assert sum(sa.drops().values()) == sum(sb.drops().values()) == 0


def test_an_idle_pump_sleeps_at_once(make_pair) -> None:  # noqa: F811
    a, b = make_pair(start=False)
    a.start(spin_usec=SPIN)
    b.start(spin_usec=SPIN)
    exchange(a, b, 200)
    settled(a, b, 200, 200)
    time.sleep(0.5)  # the last spin after the traffic (at most 150 us) is over
    before = (a.stats(), b.stats(), pump_cpu_ticks())
    time.sleep(2.0)
    after = (a.stats(), b.stats(), pump_cpu_ticks())
    for s0, s1 in zip(before[:2], after[:2], strict=True):
        assert s1.spins_won == s0.spins_won, (s0, s1)
        assert s1.wakeups == s0.wakeups, (s0, s1)  # asleep in poll() the whole time
    assert after[2] - before[2] <= 1, f"idle pumps used {(after[2] - before[2]) / TICK:.2f} s CPU"


def test_spin_zero_never_spins(make_pair) -> None:  # noqa: F811
    a, b = make_pair(start=False)
    a.start(spin_usec=0)
    b.start(spin_usec=0)
    exchange(a, b, 500)
    sa, sb = settled(a, b, 500, 500)
    assert sa.spins_won == sb.spins_won == 0
    assert sa.wakeups > 0 and sb.wakeups > 0  # every wait was a sleep


def test_spin_bounds_are_the_configs() -> None:
    assert config.SPIN_MAX_US == SPIN_MAX_USEC
    assert config.ChannelSection().spin_us == SPIN_USEC
    srv, cli = local_pair(65536, 65536)
    a = End(srv)
    try:
        with pytest.raises(PumpError, match="spin_usec 10001 above 10000"):
            FramePump.start(srv, a.pump_sock.fileno(), spin_usec=SPIN_MAX_USEC + 1)
    finally:
        a.close()
        cli.close()


def test_a_peer_trickling_bytes_buys_no_spinning(make_pair) -> None:  # noqa: F811
    """A peer that moves its index a byte at a time (each write notifies a sleeping
    pump) must not keep the pump spinning: only a complete record ends a spin, and a
    spin that finds nothing holds the next one off for at least 16 wake-ups."""
    a, b = make_pair(start=False)
    a.start(spin_usec=SPIN)
    for i in range(300):  # first a quick stream: the pump's waits are short, it spins
        rec = vnet(i) + frame(200, i)
        assert b.vchan.write(struct.pack("<I", len(rec)) + rec) == 4 + len(rec)
        assert a.app.recv(70000) == rec
    warm = rx_settled(a, 300)
    records = 12
    sent = []
    for i in range(records):
        f = frame(1500, i)
        rec = vnet(i) + f
        sent.append(rec)
        for byte in struct.pack("<I", len(rec)) + rec:
            assert b.vchan.write(bytes([byte])) == 1
    got = [a.app.recv(70000) for _ in range(records)]
    assert got == sent
    s = rx_settled(a, 300 + records)
    assert s.rx_frames == 300 + records and s.bad_record == 0
    # a won spin is a complete record; a missed one costs the peer 16 wake-ups
    assert s.spins_won - warm.spins_won <= records, (warm, s)
    assert s.spins_missed - warm.spins_missed <= 1 + (s.wakeups - warm.wakeups) // 16, (warm, s)


def test_no_spinning_on_one_cpu(make_pair) -> None:  # noqa: F811
    """A pump started by a thread that may run on one CPU only never spins (it would
    keep that CPU from the very thread or domain it waits for)."""
    a, b = make_pair(start=False)
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        a.start(spin_usec=SPIN)
        b.start(spin_usec=SPIN)  # the pump threads inherit the one-CPU affinity
    finally:
        os.sched_setaffinity(0, allowed)
    exchange(a, b, 300)
    sa, sb = settled(a, b, 300, 300)
    assert sa.spins_won == sb.spins_won == sa.spins_missed == sb.spins_missed == 0, (sa, sb)
