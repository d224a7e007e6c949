"""A hostile backend against the running frontend: the ring indices it owns.

The frontend serves the vchan: it reads the left ring (the backend's ``left_prod``) and
writes the right one (the backend's ``right_cons``). Every index the backend owns is
validated against the frontend's private copy of its own; a bad one closes that
device with one log line naming the rule and a counter. Every case also checks what
tests/hostile/backend_world.py says (the good device's transfer intact, the frontend
up, bounded and idle, its grants back, the device re-attachable).
"""

from __future__ import annotations

import pytest

from tests.hostile.backend_world import Front
from tests.hostile.peer import LEFT_PROD, RIGHT_CONS, eth_frame, record

PRODUCER_RULE = "read ring: producer index is more than the ring size ahead"
CONSUMER_RULE = "write ring: consumer index is outside the written range"
RING = 131072  # the frontend's ring_bytes (ncd/config.py's default)
REC = len(record(eth_frame(b"\x02\0\0\0\0\x02")))  # what backend_peer's ``frames`` send

# a producer behind the consumer wraps past the ring size; one behind the highest seen but
# ahead of the consumer has a rule of its own: either names the producer index
BACKWARDS_RULE = "read ring: producer index"
PRODUCERS = [
    ("beyond-the-ring-by-one", f"+{RING + 1}", PRODUCER_RULE),
    ("far-beyond-the-ring", "+0x10000000", PRODUCER_RULE),
    ("moving-backwards", f"-{REC}", BACKWARDS_RULE),  # behind the 3 frames consumed
    ("wrapped-around-2-32", "0xfffffff0", BACKWARDS_RULE),  # wrapped, behind the consumer
]


@pytest.mark.parametrize("value,rule", [c[1:] for c in PRODUCERS], ids=[c[0] for c in PRODUCERS])
def test_bad_producer_index_from_the_backend(front: Front, value: str, rule: str) -> None:
    front.fresh_device()
    front.hostile.call("frames 3")
    front.net.wait(lambda: front.vif_stats()["frames_rx"] >= 3, 10, "3 frames", front.frontend)
    front.attack("link_lost", rule, f"set_index left_prod {value}")


def test_producer_changing_between_reads(front: Front) -> None:
    """XSA-155: a thread flips ``left_prod`` between a valid record's end and far
    beyond the ring. The frontend reads the index once per check into private memory:
    whatever it read first, the bad value closes the device and no copy goes outside
    the ring (an ASan build would abort on one)."""
    front.fresh_device()
    one = record(eth_frame(b"\x02\0\0\0\0\x02"))
    front.hostile.call(f"stage {one.hex()}")
    front.attack(
        "link_lost", BACKWARDS_RULE, f"scribble {LEFT_PROD} 4 +{len(one)} +0x10000000", "stop"
    )


CONSUMERS = [
    ("ahead-of-the-producer", "prod+0x40"),
    ("behind-by-more-than-the-ring", f"prod-{RING + 1}"),
]


@pytest.mark.parametrize("value", [c[1] for c in CONSUMERS], ids=[c[0] for c in CONSUMERS])
def test_bad_consumer_index_from_the_backend(front: Front, value: str) -> None:
    """``right_cons`` is the backend's: a consumer that runs ahead of what the
    frontend produced, or so far behind that the frontend would overwrite unread data,
    closes the device at the frontend's next write (frames out of its TAP)."""
    front.fresh_device()
    before, mark = front.failures(), front.log_mark()
    with front.good_traffic():
        front.hostile.call(f"set_index right_cons {value}")
        front.tap_frames(3)
        front.expect_failure(mark, before, "link_lost", CONSUMER_RULE)
    front.recover()


def test_consumer_changing_between_reads(front: Front) -> None:
    """XSA-155 on the other ring: a thread flips ``right_cons`` between a valid value
    and half the index space away while the frontend writes frames out of its TAP;
    read once per check, the bad value closes the device."""
    front.fresh_device()
    before, mark = front.failures(), front.log_mark()
    with front.good_traffic():
        front.hostile.call(f"scribble {RIGHT_CONS} 4 +0 +0x80000000")

        def writes_until_caught() -> bool:  # each write reads the index once
            front.tap_frames(5)
            return "failed (link_lost)" in front.log_since(mark)

        front.net.wait(writes_until_caught, 20, "the frontend reading a bad right_cons")
        front.expect_failure(mark, before, "link_lost", CONSUMER_RULE)
        front.hostile.call("stop")
    front.recover()


def test_frontends_own_indices_scribbled(front: Front) -> None:
    """The backend writes the indices the frontend owns (``left_cons``,
    ``right_prod``): the frontend keeps private copies, so nothing changes for it; its
    next publish puts its own value back, frames keep arriving, no failure."""
    front.fresh_device()
    before = front.failures()
    with front.good_traffic():
        front.hostile.call("set_index left_cons -0x10")
        front.hostile.call("set_index right_prod +0x10")
        front.hostile.call("frames 5")
        front.net.wait(lambda: front.vif_stats()["frames_rx"] >= 5, 10, "5 frames", front.frontend)
        front.tap_frames(2)
        front.net.wait(
            lambda: (i := front.hostile.call("indices"))["left_cons"] == i["left_prod"],
            10,
            "the frontend's own consumer index put back",
        )
    assert front.vif()["state"] == "Connected"
    assert front.failures() == before
    front.recover()


def test_producer_moving_backwards_ahead_of_the_consumer(front: Front) -> None:
    """Three records and the first 20 bytes of a fourth, sent at once: the frontend
    delivers the three and waits for the rest. ``left_prod`` then moves back 8 bytes,
    still ahead of the frontend's consumer index, so the ring still looks valid: only
    the reader's memory of the highest producer it saw (cext/vchan) catches it."""
    front.fresh_device()
    one = record(eth_frame(b"\x02\0\0\0\0\x02"))
    frames = front.vif_stats()["frames_rx"]
    front.hostile.call(f"send {(one * 3 + one[:20]).hex()}")
    front.net.wait(
        lambda: front.vif_stats()["frames_rx"] >= frames + 3, 10, "3 frames", front.frontend
    )
    front.net.wait(
        lambda: (i := front.hostile.call("indices"))["left_prod"] - i["left_cons"] == 20,
        10,
        "the frontend consumed all but the partial record",
    )
    front.attack("link_lost", "producer index moved backwards", "set_index left_prod -8")
