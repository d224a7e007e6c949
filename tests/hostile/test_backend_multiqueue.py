"""A hostile backend that offers two queues (``multi-queue-max-queues`` 2), maps queue 0
and writes a bad record into it, against the running frontend: one queue's fatal error
takes the whole vif down through its one teardown (both queues' grants and event
channels given back), in one log line naming the queue; the good device carries on
(tests/hostile/backend_world.py checks the rest)."""

from __future__ import annotations

from ncd import queues
from tests.hostile.backend_world import Front
from tests.hostile.peer import eth_frame, record

TCP = eth_frame(b"\x02\0\0\0\0\x02", 40, ethertype=0x0800)


def _read(front: Front, path: str) -> str | None:
    r = front.net.sim.run(0, ["xenstore-read", path], check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def test_one_queue_failing_takes_the_whole_vif_down(front: Front) -> None:
    front.fresh_device(connect=False)
    front.connect(f"{queues.KEY_MAX_QUEUES}=2")
    fe_dir = f"/local/domain/1/device/ncvif/{front.devid}"
    assert _read(front, f"{fe_dir}/{queues.KEY_NUM_QUEUES}") == "2"
    assert (_read(front, f"{fe_dir}/queue-1/ring-ref") or "").isdigit()
    assert front.vif()["queues"] == 2  # type: ignore[index]
    held = front.guest_resources()
    assert held["ports"] == front.base["ports"] + 2  # one event channel per queue
    bad = record(TCP, rec_len=0)
    line = front.attack("link_lost", "queue 0: bad_peer: [^\n]*record shorter", f"send {bad.hex()}")
    assert "queue 0" in line
    # front.attack -> recover(): back to the good device's grants and ports, so queue 1
    # (never mapped by this backend) went down with queue 0
