"""Faults in the daemon's own domain: its TAP deleted or renamed, its bridge removed,
the peer daemon stopped (SIGSTOP) for 10 s.

After each: the vif carries TCP traffic intact again (or never stopped), the backend
logged what happened, and nothing leaked once the device is detached (TAPs, grants,
mappings, ports, and the daemons' fds and threads back to where they were).
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Net, proc_usage

BE, FE = "198.18.1.1", "198.18.1.2"
MAC = "00:16:3e:00:01:00"
PORTS = itertools.count(5301)  # a fresh port per transfer: earlier receivers still listen


@pytest.fixture(scope="module")
def net(sim_module, tmp_path_factory) -> Iterator[Net]:
    """One world for the module: every test attaches, breaks and detaches its device."""
    n = Net(sim_module, tmp_path_factory.mktemp("logs"))
    try:
        n.start(0, "backend")
        n.start(1, "frontend")
        _attach(n)  # warm-up: what the first vif loads stays loaded
        n.ncctl("detach", "1", "0")
        n.wait(lambda: n.vif(0, 1, 0) is None and n.vif(1, 1, 0) is None, 15, "warm-up done")
        yield n
    finally:
        n.close()


def _attach(net: Net, bridge: str | None = None) -> None:
    net.attach(1, 0, MAC, bridge=bridge)
    net.wait_connected(1, 0)
    _addresses(net, "ncvif1.0" if bridge is None else bridge)


def _addresses(net: Net, dom0_if: str) -> None:
    net.addr(0, dom0_if, f"{BE}/24")
    net.addr(1, "nc0", f"{FE}/24")


def _traffic_ok(net: Net, nbytes: int = 2 << 20) -> None:
    sent, got = net.transfer(1, 0, BE, nbytes, port=next(PORTS), timeout=60)
    assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
    assert net.ping_ok(1, BE, count=2)


def _usage(net: Net) -> list[dict[str, int]]:
    """fds and threads of each daemon (after the control connections of waits closed)."""
    time.sleep(0.3)
    return [{k: v for k, v in proc_usage(d.pid).items() if k != "rss_kb"} for d in net.daemons]


def _detach_leaves_nothing(net: Net, usage: list[dict[str, int]]) -> None:
    net.ncctl("detach", "1", "0")
    net.wait(
        lambda: net.vif(0, 1, 0) is None and net.vif(1, 1, 0) is None, 15, "the device detached"
    )
    assert not {ln for ln in net.links(0) if ln.startswith("ncvif")}
    assert not {ln for ln in net.links(1) if ln not in ("lo",)}, net.links(1)
    for domid, s in net.broker_stats().items():
        assert (s["grants"], s["mappings"], s["ports"]) == (0, 0, 0), (domid, s)
    net.wait(
        lambda: _usage(net) == usage, 10, f"daemon fds and threads back to {usage}: {_usage(net)}"
    )
    assert all(d.alive() for d in net.daemons)


@pytest.mark.parametrize("side", [0, 1], ids=["backend-tap", "frontend-tap"])
def test_tap_deleted_under_the_daemon(net: Net, side: int) -> None:
    usage = _usage(net)
    _attach(net)
    name = "ncvif1.0" if side == 0 else "nc0"
    net.ip(side, "link", "del", name)
    d = net.daemons[side]
    net.wait(
        lambda: f"vif 1/0: {name} was deleted under the daemon: creating it again" in d.log_text(),
        20,
        "the daemon re-creating its TAP",
        d,
    )
    net.wait(lambda: name in net.links(side), 10, f"{name} back")
    net.wait_connected(1, 0, timeout=20)
    _addresses(net, "ncvif1.0")
    _traffic_ok(net)
    _detach_leaves_nothing(net, usage)


def test_tap_renamed_under_the_daemon(net: Net) -> None:
    """A renamed TAP is the same device: traffic carries on; detach removes it."""
    usage = _usage(net)
    _attach(net)
    net.ip(1, "link", "set", "nc0", "down")
    net.ip(1, "link", "set", "nc0", "name", "renamed0")
    net.ip(1, "link", "set", "renamed0", "up")
    net.addr(1, "renamed0", f"{FE}/24")
    _traffic_ok(net)
    assert net.vif(0, 1, 0)["state"] == "Connected"
    _detach_leaves_nothing(net, usage)
    assert "renamed0" not in net.links(1)


def test_bridge_removed_under_the_backend(net: Net) -> None:
    """The bridge a vif is enslaved to is deleted: the vif stays up (its TAP just
    leaves the bridge); with the bridge back and the TAP re-enslaved, traffic flows."""
    net.ip(0, "link", "add", "ncbr0", "type", "bridge")
    net.ip(0, "link", "set", "ncbr0", "up")
    usage = _usage(net)
    _attach(net, bridge="ncbr0")
    _traffic_ok(net)
    net.ip(0, "link", "del", "ncbr0")
    assert all(d.alive() for d in net.daemons)
    assert net.vif(0, 1, 0)["state"] == "Connected"
    net.ip(0, "link", "add", "ncbr0", "type", "bridge")
    net.ip(0, "link", "set", "ncbr0", "up")
    net.ip(0, "link", "set", "ncvif1.0", "master", "ncbr0")
    _addresses(net, "ncbr0")
    _traffic_ok(net)
    _detach_leaves_nothing(net, usage)
    net.ip(0, "link", "del", "ncbr0")


@pytest.mark.parametrize("side", [0, 1], ids=["backend-stopped", "frontend-stopped"])
def test_peer_daemon_stopped_for_10s(net: Net, side: int) -> None:
    """SIGSTOP one daemon for 10 s while the other sends: the channel survives (ring
    full, the sender waits); after SIGCONT traffic is intact, nothing reconnected."""
    usage = _usage(net)
    _attach(net)
    failures = [sum(net.stats(d)["handshake_failures"].values()) for d in (0, 1)]
    d = net.daemons[side]
    d.proc.send_signal(signal.SIGSTOP)
    try:
        net.ping(1 - side and 1, BE, count=5, wait=1, interval=0.2)  # into a stopped peer
        time.sleep(10)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    _traffic_ok(net)
    assert [sum(net.stats(d)["handshake_failures"].values()) for d in (0, 1)] == failures
    assert net.vif(0, 1, 0)["connected_for"] >= 10
    _detach_leaves_nothing(net, usage)
