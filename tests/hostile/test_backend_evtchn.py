"""A hostile backend against the running frontend: the event channel.

A notification storm costs the frontend at most MAX_CPU of a core (the late EOI of
cext/vchan/vchan_eoi.c, as tests/e2e/test_storms.py measures it for the backend); a
backend that never notifies leaves the frontend asleep (no polling) and loses
nothing; a backend that closes its port under the frontend costs it nothing either.
None of them is a protocol violation: the device stays Connected. Every case also
checks what tests/hostile/backend_world.py says.
"""

from __future__ import annotations

import os

from tests.hostile.backend_world import Front
from tests.hostile.world import IDLE_CPU, IDLE_WINDOW, cpu_seconds, cpu_share

MAX_CPU = 0.10  # of one core, the whole frontend process, the good device's traffic included
STORM_S = 4.0


def test_notification_storm_costs_the_frontend_little(front: Front) -> None:
    front.fresh_device()
    before = front.vif_stats()
    with front.good_traffic():
        cpu0 = cpu_seconds(front.frontend.pid)
        storm = front.hostile.call(f"storm {STORM_S}", timeout=STORM_S + 30)
        cpu = cpu_seconds(front.frontend.pid) - cpu0
    count, elapsed = storm["count"], storm["seconds"]
    after = front.vif_stats()
    share = cpu / elapsed
    print(f"storm: {count} notifies in {elapsed:.2f}s, frontend CPU {cpu:.3f}s ({share:.1%})")
    assert count >= 100_000, storm  # a storm worth the name
    received = after["notifications_received"] - before["notifications_received"]
    spurious = after["notifications_spurious"] - before["notifications_spurious"]
    # the frontend took a few hundred of them, all recognised as carrying no work
    assert 0 < received < count / 100, (received, count)
    assert spurious >= received * 0.9, (spurious, received)
    if os.environ.get("NCD_HOSTILE_SANITIZE") != "1":  # the sanitizers cost their own
        assert share <= MAX_CPU, f"frontend at {share:.1%} of a core during {count} notifies"
    assert front.vif()["state"] == "Connected"  # a storm is no protocol error
    front.recover()


def test_backend_that_never_notifies(front: Front) -> None:
    """50 frames published without a notification: the frontend sleeps (idle, no
    polling), and the frames arrive with the next notification."""
    front.fresh_device()
    before = front.vif_stats()["frames_rx"]
    with front.good_traffic():
        front.hostile.call("frames 50 0")
    share = cpu_share(front.frontend.pid, IDLE_WINDOW)
    assert share < IDLE_CPU, f"the frontend polls an unnotified ring: {share:.0%} of a core"
    front.hostile.call("notify")
    front.net.wait(
        lambda: front.vif_stats()["frames_rx"] >= before + 50,
        10,
        "the 50 unnotified frames",
        front.frontend,
    )
    assert front.vif()["state"] == "Connected"
    front.recover()


def test_port_closed_under_the_frontend(front: Front) -> None:
    """The backend closes its end of the event channel and stays mapped: the
    frontend's notifications go nowhere (as on Xen), it neither crashes nor spins,
    and frames out of its TAP still go into the ring; the device is re-attachable."""
    front.fresh_device()
    before = front.vif_stats()
    with front.good_traffic():
        front.hostile.call("close_port")
        front.tap_frames(5)
        front.hostile.call("frames 3 0")  # into the ring, nobody to notify
    front.net.wait(
        lambda: front.vif_stats()["frames_tx"] >= before["frames_tx"] + 5,
        10,
        "the TAP's frames written into the ring",
        front.frontend,
    )
    assert front.frontend.alive()
    front.recover()
