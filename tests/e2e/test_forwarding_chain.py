"""The nested chain of the design notes on xensim: dom0 (``ncd backend``, bridge br0 with
dom0's address) <- domain 1 (``ncd driver --uplink-switch up``) <- domain 2 (the same)
<- domain 3 (``ncd frontend``). Domain 3 pings dom0's bridge address and moves 64 MB
TCP (sha256) both ways; ``kill -9`` of domain 2's daemon and a restart: traffic resumes
by itself within 5 s of the restart. Run in both copy modes of the driver domains'
switch (``[switch.up] forward_copy``). Trackers consistent throughout, nothing mapped at
the end. (Its own module: the world has four domains, the other module's three.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import Net
from tests.simworld import SimWorld

from .test_forwarding import MAC, MB64, check_nothing_mapped, check_tracker, forwarded, transfer_ok


@pytest.fixture(params=["memcpy", "grant"])
def chain(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Net]:
    """The chain, its driver domains' switch "up" in each copy mode ([switch.up])."""
    cfg = tmp_path / "driver.toml"
    cfg.write_text(f'[switch.up]\nforward_copy = "{request.param}"\n')
    sim = SimWorld(tmp_path / "world", domains=3)
    n = Net(sim, tmp_path)
    try:
        n.ip(0, "link", "add", "br0", "type", "bridge")
        n.ip(0, "link", "set", "br0", "up")
        n.addr(0, "br0", "198.18.12.1/24")
        n.start(0, "backend")
        for d in (1, 2):
            n.start(d, "driver", "--uplink-switch", "up", "--config", str(cfg))
        n.start(3, "frontend")
        n.ncctl("attach", "1", "--devid", "0", "--mac", MAC[1], "--bridge", "br0", "--trunk")
        n.ncctl("attach", "2", "--devid", "0", "--mac", MAC[2], "--backend", "1",
                "--switch", "up", "--trunk")
        n.ncctl("attach", "3", "--devid", "0", "--mac", MAC[3], "--backend", "2",
                "--switch", "up")
        for be, fe in ((0, 1), (1, 2), (2, 3)):
            n.wait_state(be, fe, 0, timeout=15)
            n.wait_state(fe, fe, 0, timeout=15)
        n.addr(3, "nc0", "198.18.12.3/24")
        yield n
    finally:
        n.close()
        sim.down()


def test_nested_chain(chain: Net) -> None:
    n = chain
    assert "ncvif1.0" in n.links(0)
    assert not {link for link in n.links(1) | n.links(2) if link.startswith("nc")}
    n.wait(lambda: n.ping_ok(3, "198.18.12.1", count=1), 10, "domain 3 -> dom0 br0")
    r = n.ping(3, "198.18.12.1", count=5)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
    transfer_ok(n, 3, 0, "198.18.12.1", MB64, 5501)
    transfer_ok(n, 0, 3, "198.18.12.3", MB64, 5502)
    # each driver domain accounts the bytes to the domain whose pages they were in (the
    # tracker's answer: its downstream peer's mapped ring, its upstream's granted one)
    for d, down, up in ((2, 3, 1), (1, 2, 0)):
        acct = forwarded(n, d, "up")
        assert acct[(down, up)][1] >= MB64 and acct[(up, down)][1] >= MB64, (d, acct)
        sw = next(s for s in n.stats(d)["switches"] if s["name"] == "up")
        copy = sw["forward_copy"]
        assert (sw["grant_copy_calls"] > 0) == (copy == "grant"), sw
    check_tracker(n, [0, 1, 2, 3])

    # kill -9 domain 2's daemon, restart it: traffic resumes by itself within 5 s
    d2 = next(d for d in n.daemons if d.domid == 2)
    n.kill9(d2)
    time.sleep(1)
    n.restart(d2)
    t0 = time.monotonic()
    n.wait(lambda: n.ping_ok(3, "198.18.12.1", count=1), 5, "traffic after the restart")
    print(f"\ntraffic resumed {time.monotonic() - t0:.2f}s after domain 2's restart")
    transfer_ok(n, 3, 0, "198.18.12.1", 8 << 20, 5503)
    n.wait(lambda: _tracker_consistent(n, [0, 1, 2, 3]), 10, "trackers consistent")

    n.ncctl("detach", "3", "0", "--backend", "2")
    n.wait(lambda: n.vif(2, 3, 0) is None, 10, "vif 3/0 gone in domain 2")
    check_tracker(n, [0, 1, 2, 3])
    # SIGTERM with vifs 1/0 and 2/0 attached: ports removed, switches destroyed, Closed
    alive = [d for d in n.daemons if d.alive()]
    for d in alive:
        assert n.stop(d) == 0, d.log_text()
    for be, fe in ((0, 1), (1, 2)):
        path = f"/local/domain/{be}/backend/ncvif/{fe}/0/state"
        assert n.sim.run(0, ["xenstore-read", path]).stdout.strip() == "6", path
    for d in alive:
        if d.role == "driver":
            text = d.log_text()
            assert "switch up destroyed" in text and "left (port" in text, text
    check_nothing_mapped(n)


def _tracker_consistent(net: Net, domids: list[int]) -> bool:
    try:
        check_tracker(net, domids)
    except AssertionError:
        return False
    return True


def test_driver_without_uplink_switch_uses_taps(tmp_path: Any) -> None:
    """``ncd driver`` alone: both roles in one process, a TAP each (nc0 for the device
    it fronts, ncvif2.0 for the vif it backs), one control socket listing both."""
    sim = SimWorld(tmp_path / "world", domains=2)
    n = Net(sim, tmp_path)
    try:
        n.start(0, "backend")
        drv = n.start(1, "driver")
        n.start(2, "frontend")
        n.ncctl("attach", "1", "--devid", "0", "--mac", MAC[1])
        n.ncctl("attach", "2", "--devid", "0", "--mac", MAC[2], "--backend", "1")
        for be, fe in ((0, 1), (1, 2)):
            n.wait_state(be, fe, 0, timeout=15)
            n.wait_state(fe, fe, 0, timeout=15)
        assert {"nc0", "ncvif2.0"} <= n.links(1)
        listed = {(v["domid"], v["devid"]): v for v in n.vifs(1)}
        assert listed[(1, 0)]["role"] == "frontend" and listed[(1, 0)]["ifname"] == "nc0"
        assert listed[(2, 0)]["role"] == "backend" and listed[(2, 0)]["ifname"] == "ncvif2.0"
        n.addr(0, "ncvif1.0", "198.18.15.1/24")
        n.addr(1, "nc0", "198.18.15.2/24")
        n.addr(1, "ncvif2.0", "198.18.16.1/24")
        n.addr(2, "nc0", "198.18.16.2/24")
        assert n.wait(lambda: n.ping_ok(1, "198.18.15.1", count=1), 10, "driver -> dom0")
        assert n.wait(lambda: n.ping_ok(2, "198.18.16.1", count=1), 10, "guest -> driver")
        for d in reversed(n.daemons):
            assert n.stop(d) == 0, d.log_text()
        assert not {"nc0", "ncvif2.0"} & n.links(1)
        assert "released (nc0 removed)" in drv.log_text()
        check_nothing_mapped(n)
    finally:
        n.close()
        sim.down()
