"""A hostile frontend against the running backend: bad control pages and grants.

Each case offers a vchan whose control page (or grant list) is wrong; the backend must
refuse it at setup (one log line naming the rule, ``ncd_handshake_failures_total``), stay
up and idle, keep the good guest's TCP transfer intact, and take a good offer afterwards.
Cases after connect flip the live flags and notify bits under the running channel.
"""

from __future__ import annotations

import pytest

from tests.hostile.peer import CLI_NOTIFY, SRV_LIVE, SRV_NOTIFY
from tests.hostile.world import Arena

# (id, offer arguments, the rule the log line must name)
SETUP_CASES = [
    ("order-below-range", "9 12", "outside"),
    ("order-above-range", "12 21", "outside"),
    ("orders-0xffff", "0xffff 0xffff", "outside"),
    ("equal-small-orders-1024", "10 10", "both rings have in-page order"),
    ("equal-small-orders-2048", "11 11", "both rings have in-page order"),
    ("grants-do-not-fit-before-small-ring", "20 10", "do not fit"),
    ("orders-need-more-grants-than-offered", "20 20", "mapping"),
    ("orders-inconsistent-with-grant-count", "12 16 grants=short", "mapping"),
    ("grant-refs-not-granted", "12 12 grants=ungranted", "mapping"),
    ("ring-granted-to-another-domain", "12 12 grants=otherdom", "mapping"),
    ("write-ring-read-only", "12 12 grants=readonly", "mapping"),
    ("control-page-granted-to-another-domain", "12 12 ctrl=otherdom", "control page"),
    ("control-page-read-only", "12 12 ctrl=readonly", "control page"),
]


@pytest.mark.parametrize(
    ("offer", "rule"), [c[1:] for c in SETUP_CASES], ids=[c[0] for c in SETUP_CASES]
)
def test_bad_control_page_refused(arena: Arena, offer: str, rule: str) -> None:
    arena.reset()
    before, mark = arena.failures(), arena.log_mark()
    with arena.good_traffic():
        arena.peer.call(f"offer {offer}")
        arena.expect_failure(mark, before, "setup_failed", rule)
    assert arena.vif_stats()["tracked_foreign_pages"] == 0  # nothing stays mapped
    arena.recover()


def _connected(arena: Arena) -> None:
    arena.reset()
    arena.peer.call("offer 12 12")
    arena.wait_connected()
    arena.peer.call("wait_client")


@pytest.mark.parametrize(
    ("value", "rule"),
    [("0x02", "srv_live"), ("0xfe", "live flag")],
    ids=["srv-live-2", "srv-live-0xfe"],
)
def test_bad_live_flag_closes(arena: Arena, value: str, rule: str) -> None:
    _connected(arena)
    before, mark = arena.failures(), arena.log_mark()
    with arena.good_traffic():
        arena.peer.call(f"poke {SRV_LIVE} {int(value, 0):02x}")
        arena.peer.call("notify")
        arena.expect_failure(mark, before, "link_lost", rule)
    arena.recover()


def test_live_flag_flipping(arena: Arena) -> None:
    """srv_live rewritten 1/0/2 by a thread: the backend sees the peer go (or a bad
    value) and closes; it never flips back to Connected on its own reading."""
    _connected(arena)
    before, mark = arena.failures(), arena.log_mark()
    with arena.good_traffic():
        arena.peer.call(f"scribble {SRV_LIVE} 1 1 0 1 2")
        arena.expect_failure(mark, before, "link_lost", "live")
        arena.peer.call("stop")
    arena.recover()


def test_notify_bits_flipping(arena: Arena) -> None:
    """Notify bits are hints: a thread flipping both bytes through every value while
    frames flow costs the backend spurious or missed wakeups, never the channel; once
    the thread stops, the channel still carries frames and the backend is idle."""
    _connected(arena)
    before = arena.vif_stats()["frames_rx"]
    with arena.good_traffic():
        arena.peer.call(f"scribble {CLI_NOTIFY} 1 0 1 2 3 0xff")
        arena.peer.call("frames 200")
        arena.peer.call("stop")
        arena.peer.call(f"scribble {SRV_NOTIFY} 1 0 1 2 3 0xff")
        arena.peer.call("frames 200")
        arena.peer.call("stop")
    arena.peer.call("frames 1")  # a notified frame after the attack: it flushes the rest
    arena.net.wait(
        lambda: arena.vif_stats()["frames_rx"] >= before + 401,
        10,
        "every frame sent under flipping notify bits",
        arena.backend,
    )
    assert arena.vif()["state"] == "Connected"
    assert arena.vif_stats()["drops"]["bad_record_from_peer"] == 0
    arena.check_survived()
