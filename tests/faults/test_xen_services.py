"""kill -9 of xensim's xenstored and of its hypervisor broker under running daemons.

xenstored: fatal by design. The daemons notice within a probe interval (a watch alone
never would), log ``xenstore connection lost``, close every vif (TAPs removed, grants
and mappings released) and exit 1, so that systemd (``Restart=on-failure``) restarts
them once xenstored is back.

The broker (the hypervisor): the data path needs no hypervisor call once a channel is
up (mapped pages, event channels signalled directly), as on Xen; the daemons stay up,
the connected vif keeps its TCP traffic intact, a new attach fails with an error naming
the call, and SIGTERM still exits 0 with the TAPs removed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Net

BE, FE = "198.18.1.1", "198.18.1.2"


@pytest.fixture
def net(sim, tmp_path) -> Iterator[Net]:
    n = Net(sim, tmp_path)
    try:
        n.start(0, "backend")
        n.start(1, "frontend")
        n.attach(1, 0, "00:16:3e:00:01:00")
        n.wait_connected(1, 0)
        n.addr(0, "ncvif1.0", f"{BE}/24")
        n.addr(1, "nc0", f"{FE}/24")
        assert n.ping_ok(1, BE, count=2)
        yield n
    finally:
        n.close()


def _kill9(net: Net, daemon: str) -> None:
    os.kill(net.sim.world.state.pids[daemon], signal.SIGKILL)


def test_xenstored_killed_daemons_exit_for_a_restart(net: Net) -> None:
    _kill9(net, "xenstored")
    for d in net.daemons:
        rc = d.proc.wait(30)
        assert rc == 1, f"{d.role} exited {rc}:\n{d.log_text()[-2000:]}"
        log = d.log_text()
        assert "xenstore connection lost" in log, log[-2000:]
        assert "stopping: closing 1 vifs" in log
    assert "ncvif1.0" not in net.links(0)
    assert "nc0" not in net.links(1)
    # the hypervisor side is clean: no grant, mapping or port of either daemon left
    for domid, s in net.broker_stats().items():
        assert (s["grants"], s["mappings"], s["ports"]) == (0, 0, 0), (domid, s)


def test_broker_killed_connected_vif_keeps_working(net: Net) -> None:
    _kill9(net, "broker")
    sent, got = net.transfer(1, 0, BE, 4 << 20)
    assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
    assert net.ping_ok(1, BE, count=3)
    assert all(d.alive() for d in net.daemons)
    # what needs the hypervisor fails, named, and the daemon carries on
    net.attach(1, 1, "00:16:3e:00:01:01")
    net.wait(
        lambda: "vif 1/1: failed" in net.daemons[1].log_text(),
        15,
        "the frontend reporting the failed attach",
    )
    assert all(d.alive() for d in net.daemons)
    assert net.vif(1, 1, 0)["state"] == "Connected"
    for d in net.daemons:
        assert net.stop(d) == 0
    assert "ncvif1.0" not in net.links(0)
    assert "nc0" not in net.links(1)
