"""Grants and event channels exhausted at attach (xensim's limits, as Linux gntalloc's
``limit`` and libxl's ``max_event_channels`` set them on Xen).

A guest whose second device would pass its domain's limit: that device fails with an
error naming the limit, the first keeps its TCP traffic intact, nothing leaks, and
detaching the failed device gives everything back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Net
from tests.needs import require_root
from tests.simworld import SimWorld

BE, FE = "198.18.1.1", "198.18.1.2"
# one vif of the frontend shares 1 + 2 * 32 pages (ring_bytes 131072 each way): a
# second one passes 100; each vif binds one port per domain: a second one passes 1
LIMITS = {
    "grants": (["--gntalloc-limit", "100"], r"gntalloc", "shared_pages"),
    "evtchns": (["--max-evtchn-port", "1"], r"event channel", "ports"),
}


@pytest.fixture(params=sorted(LIMITS))
def limited(request, tmp_path) -> Iterator[tuple[Net, str, str]]:
    require_root("a xensim world: network namespaces")
    args, named, resource = LIMITS[request.param]
    sim = SimWorld(tmp_path / "world", domains=1, broker_args=args)
    net = Net(sim, tmp_path)
    try:
        net.start(0, "backend")
        net.start(1, "frontend")
        net.attach(1, 0, "00:16:3e:00:01:00")
        net.wait_connected(1, 0)
        net.addr(0, "ncvif1.0", f"{BE}/24")
        net.addr(1, "nc0", f"{FE}/24")
        yield net, named, resource
    finally:
        net.close()
        sim.down()


def test_exhausted_at_attach_fails_that_device_only(limited: tuple[Net, str, str]) -> None:
    net, named, resource = limited
    base = net.broker_stats()
    net.attach(1, 1, "00:16:3e:00:01:01")
    vif = net.wait(
        lambda: (v := net.vif(1, 1, 1)) and v["failures"] and v,
        15,
        "the second device failing in the frontend",
    )
    assert vif["state"] != "Connected"
    assert named in (vif["last_error"] or ""), vif["last_error"]
    assert "No space left on device" in vif["last_error"]
    fe = net.daemons[1].log_text()
    assert "vif 1/1: failed (setup_failed)" in fe and named in fe
    assert sum(net.stats(1)["handshake_failures"].values()) >= 1
    # the first device is untouched
    sent, got = net.transfer(1, 0, BE, 2 << 20)
    assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
    assert net.vif(0, 1, 0)["state"] == "Connected"
    # the failed attempts hold nothing (they retry, each unwinding what it took)
    assert net.broker_stats()[1][resource] == base[1][resource]
    net.ncctl("detach", "1", "1")
    net.wait(
        lambda: net.vif(1, 1, 1) is None and net.vif(0, 1, 1) is None,
        15,
        "the failed device detached",
    )
    assert net.broker_stats() == base
    assert all(d.alive() for d in net.daemons)
