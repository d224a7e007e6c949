"""A hostile backend against the running frontend: the records it writes into the ring
the frontend reads (docs/protocol.md, "Validation by the receiver").

The frontend runs with a 64 KiB ring so that a record larger than the ring is still
within the negotiated maximum frame (with the default 128 KiB ring it cannot be). After
three good frames (which are delivered), each bad record closes the device:
``link_lost``, "bad record from peer (length N): RULE", ``bad_record_from_peer`` + 1;
plus everything tests/hostile/backend_world.py checks.
"""

from __future__ import annotations

import pytest

from tests.hostile.backend_world import Front
from tests.hostile.peer import bad_records

FRONTEND_ARGS = ("--ring-bytes", "65536")

RECORDS = bad_records(b"\x02\0\0\0\0\x02", over_ring=65600)


@pytest.mark.parametrize("data,rule", [c[1:] for c in RECORDS], ids=[c[0] for c in RECORDS])
def test_bad_record_from_the_backend(front: Front, data: bytes, rule: str) -> None:
    front.fresh_device()
    st = front.vif_stats()
    bad, frames = st["drops"]["bad_record_from_peer"], st["frames_rx"]
    front.attack("link_lost", rule, "frames 3", f"send {data.hex()}")
    st = front.vif_stats()  # the device's counters, kept across its reconnect
    assert st["drops"]["bad_record_from_peer"] == bad + 1
    assert st["frames_rx"] >= frames + 3


def test_flood_of_minimum_frames(front: Front) -> None:
    """Minimum valid records (28 bytes) as fast as the backend writes them, 3 s: no
    protocol violation, so nothing closes; every frame is delivered to the TAP or
    dropped and counted (a TAP nobody reads refuses some), the good transfer intact."""
    front.fresh_device()
    front.net.ip(1, "link", "set", front.tap, "up")
    before = front.vif_stats()
    with front.good_traffic():
        sent = front.hostile.call("flood 3")["frames"]
    assert sent > 1000, sent

    def accounted(st: dict) -> int:
        return st["frames_rx"] + sum(st["drops"].values())

    front.net.wait(
        lambda: accounted(front.vif_stats()) >= accounted(before) + sent,
        20,
        f"all {sent} flooded frames accounted for",
        front.frontend,
    )
    st = front.vif_stats()
    assert st["state"] == "Connected"
    assert st["drops"]["bad_record_from_peer"] == before["drops"]["bad_record_from_peer"]
    front.recover()
