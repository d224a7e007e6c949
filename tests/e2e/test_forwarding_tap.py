"""A declared switch with a TAP in a bridge (``[switch.NAME] tap = ..., bridge = ...``),
in both copy modes: the TAP exists from the start; guests 1 and 2 on the switch reach
each other and dom0's bridge address (ping, TCP with sha256); in grant mode the
hypervisor did the copies; SIGTERM removes the ports, the TAP and the switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import Net

from .test_forwarding import check_nothing_mapped, check_tracker, forwarded, transfer_ok

CONFIG = """
[switch.sw1]
tap = "ncsw1"
bridge = "ncbr1"
forward_copy = "{copy}"
ageing = 60
"""


def _switch(net: Net, name: str) -> dict:  # type: ignore[type-arg]
    return next(s for s in net.stats(0)["switches"] if s["name"] == name)


@pytest.mark.parametrize("copy", ["memcpy", "grant"])
def test_declared_switch_tap_in_a_bridge(net: Net, tmp_path: Path, copy: str) -> None:
    cfg = tmp_path / "ncd.toml"
    cfg.write_text(CONFIG.format(copy=copy))
    net.ip(0, "link", "add", "ncbr1", "type", "bridge")
    try:
        net.ip(0, "link", "set", "ncbr1", "up")
        net.addr(0, "ncbr1", "198.18.13.1/24")
        d0 = net.start(0, "backend", "--config", str(cfg))
        assert "ncsw1" in net.links(0)
        assert "master ncbr1" in net.ip(0, "-o", "link", "show", "ncsw1")
        assert _switch(net, "sw1")["forward_copy"] == copy
        for g in (1, 2):
            net.start(g, "frontend")
            net.ncctl("attach", str(g), "--devid", "0", "--mac", f"00:16:3e:0d:00:0{g}",
                      "--switch", "sw1", "--ip", f"198.18.13.{g + 1}")
        for g in (1, 2):
            net.wait_connected(g, 0)
            net.addr(g, "nc0", f"198.18.13.{g + 1}/24")
        net.wait(lambda: net.ping_ok(1, "198.18.13.1", count=1), 10, "guest 1 -> dom0 bridge")
        net.wait(lambda: net.ping_ok(1, "198.18.13.3", count=1), 10, "guest 1 -> guest 2")
        transfer_ok(net, 1, 0, "198.18.13.1", 16 << 20, 5601)
        transfer_ok(net, 0, 1, "198.18.13.2", 16 << 20, 5602)
        transfer_ok(net, 1, 2, "198.18.13.3", 16 << 20, 5603)
        acct = forwarded(net, 0, "sw1")
        assert acct[(1, 0)][1] >= 16 << 20 and acct[(0, 1)][1] >= 16 << 20, acct  # TAP: dom0
        assert acct[(1, 2)][1] >= 16 << 20, acct
        calls = _switch(net, "sw1")["grant_copy_calls"]
        assert (calls > 0) if copy == "grant" else (calls == 0), calls
        check_tracker(net, [0, 1, 2])
        for d in net.daemons:  # the backend first: with both vifs attached
            assert net.stop(d) == 0, d.log_text()
        assert "ncsw1" not in net.links(0)
        text = d0.log_text()
        assert "switch sw1 destroyed" in text and "ports still attached" not in text, text
        check_nothing_mapped(net)
    finally:
        net.ip(0, "link", "del", "ncbr1")
