"""A declared switch with a TAP in a bridge (``[switch.NAME] tap = ..., bridge = ...``):
the TAP exists from the start, a guest on the switch reaches dom0's bridge address
(ping, TCP with sha256), and SIGTERM removes the TAP with the switch."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import Net

from .test_forwarding import check_nothing_mapped, check_tracker, transfer_ok

CONFIG = """
[switch.sw1]
tap = "ncsw1"
bridge = "ncbr1"
forward_copy = "memcpy"
ageing = 60
"""


def test_declared_switch_tap_in_a_bridge(net: Net, tmp_path: Path) -> None:
    cfg = tmp_path / "ncd.toml"
    cfg.write_text(CONFIG)
    net.ip(0, "link", "add", "ncbr1", "type", "bridge")
    try:
        net.ip(0, "link", "set", "ncbr1", "up")
        net.addr(0, "ncbr1", "198.18.13.1/24")
        d0 = net.start(0, "backend", "--config", str(cfg))
        assert "ncsw1" in net.links(0)
        assert "master ncbr1" in net.ip(0, "-o", "link", "show", "ncsw1")
        net.start(1, "frontend")
        net.ncctl("attach", "1", "--devid", "0", "--mac", "00:16:3e:0d:00:01", "--switch", "sw1")
        net.wait_connected(1, 0)
        net.addr(1, "nc0", "198.18.13.2/24")
        net.wait(lambda: net.ping_ok(1, "198.18.13.1", count=1), 10, "guest -> dom0 bridge")
        transfer_ok(net, 1, 0, "198.18.13.1", 16 << 20, 5601)
        transfer_ok(net, 0, 1, "198.18.13.2", 16 << 20, 5602)
        check_tracker(net, [0, 1])
        for d in reversed(net.daemons):
            assert net.stop(d) == 0, d.log_text()
        assert "ncsw1" not in net.links(0)
        assert "switch sw1 destroyed" in d0.log_text()
        check_nothing_mapped(net)
    finally:
        net.ip(0, "link", "del", "ncbr1")
