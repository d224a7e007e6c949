"""A hostile backend against the running frontend: the control page fields it can
write (``cli_live``, both notify bytes, and the frontend's own ``srv_live``).

The live flag is validated (0, 1 or 2; a client never goes back to 2) and latched once
the peer is seen gone; notify bits are hints (a wrong one costs wakeups, never the
channel); the frontend never takes its own flag back from the page. Every case also
checks what tests/hostile/backend_world.py says.
"""

from __future__ import annotations

import pytest

from tests.hostile.backend_world import Front
from tests.hostile.peer import CLI_LIVE, CLI_NOTIFY, SRV_LIVE, SRV_NOTIFY

LIVE = [
    ("cli-live-9", "09", "live flag out of range"),
    ("cli-live-back-to-2", "02", "cli_live went back to 2"),
]


@pytest.mark.parametrize("value,rule", [c[1:] for c in LIVE], ids=[c[0] for c in LIVE])
def test_bad_client_live_flag(front: Front, value: str, rule: str) -> None:
    front.fresh_device()
    front.attack("link_lost", rule, f"poke {CLI_LIVE} {value}")


def test_client_live_flag_flipping(front: Front) -> None:
    """``cli_live`` rewritten 1/0/1/2 by a thread: the frontend sees the peer go (0,
    "peer closed the vchan", latched) or a bad value (2, "cli_live went back to 2"),
    whichever it reads first, and closes the device; it never flips back to Connected
    on its own."""
    front.fresh_device()
    rule = "(peer closed the vchan|cli_live went back to 2)"
    front.attack("link_lost", rule, f"scribble {CLI_LIVE} 1 1 0 1 2", "stop")


def _frames_both_ways(front: Front, count: int) -> None:
    """``count`` frames from the backend (all must arrive) and out of the device's TAP."""
    before = front.vif_stats()["frames_rx"]
    front.hostile.call(f"frames {count}")
    front.tap_frames(count)
    front.hostile.call("frames 1")  # a notified frame after the scribbling flushes the rest
    front.net.wait(
        lambda: front.vif_stats()["frames_rx"] >= before + count + 1,
        10,
        f"all {count + 1} frames from the backend",
        front.frontend,
    )


@pytest.mark.parametrize("offset", [SRV_NOTIFY, CLI_NOTIFY], ids=["srv-notify", "cli-notify"])
def test_notify_bits_flipping(front: Front, offset: int) -> None:
    """A thread flipping a notify byte through every value while frames flow both
    ways: spurious or missed wakeups, never a closed channel; once it stops, every
    frame has arrived and the frontend is idle."""
    front.fresh_device()
    before = front.failures()
    with front.good_traffic():
        front.hostile.call(f"scribble {offset} 1 0 1 2 3 0xff")
        _frames_both_ways(front, 100)
        front.hostile.call("stop")
    assert front.vif()["state"] == "Connected"
    assert front.failures() == before
    front.recover()


def test_server_live_flag_scribbled(front: Front) -> None:
    """``srv_live`` is the frontend's own flag: a thread rewriting it 0/2/0xff changes
    nothing for the frontend (it never reads its own flag back); frames flow."""
    front.fresh_device()
    before = front.failures()
    with front.good_traffic():
        front.hostile.call(f"scribble {SRV_LIVE} 1 0 2 0xff 1")
        _frames_both_ways(front, 50)
        front.hostile.call("stop")
    assert front.vif()["state"] == "Connected"
    assert front.failures() == before
    front.recover()
