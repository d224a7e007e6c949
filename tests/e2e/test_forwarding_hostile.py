"""A hostile guest on a switch port: guest 2 (the test, no daemon) serves a vchan and
writes a record longer than the negotiated maximum. Only that port stops: dom0 logs the
recorded reason in one line, counts it (``bad_record_from_peer``,
``ncd_switch_port_stops_total``), closes that vif's channel (it goes back to its
handshake), and guest 1 on the same switch keeps its traffic."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.harness import PY, ROOT, Net

from .test_forwarding import check_tracker

FE2 = "/local/domain/2/device/ncvif/0"
HOSTILE = f"""
import struct, sys, time
from ncd.vchan.channel import VchanServer
from ncd.xen.xenstore import XenStore
xs = XenStore()
for k, v in {{"protocol-version": "1", "feature-vnet-hdr": "1", "max-frame": "1514",
             "feature-csum": "0", "feature-gso-tcpv4": "0", "feature-gso-tcpv6": "0",
             "feature-gso-udp-l4": "0"}}.items():
    xs.write("{FE2}/" + k, v)
v = VchanServer.create(xs, 0, "{FE2}/queue-0", 65536, 65536)
xs.write("{FE2}/state", "4")
deadline = time.monotonic() + 10
while v.is_open() == 2 and time.monotonic() < deadline:
    time.sleep(0.02)
print("connected" if v.is_open() == 1 else "no client", flush=True)
v.write(struct.pack("<I", 300000) + bytes(64))
print("sent", flush=True)
sys.stdin.read()  # stay until the test is done
"""
CONFIG = '[switch.sw0]\ntap = "ncsw0"\n'


def test_bad_record_stops_only_that_port(net: Net, tmp_path: Path) -> None:
    cfg = tmp_path / "ncd.toml"
    cfg.write_text(CONFIG)
    d0 = net.start(0, "backend", "--config", str(cfg))
    net.addr(0, "ncsw0", "198.18.14.1/24")
    net.start(1, "frontend")
    net.ncctl("attach", "1", "--devid", "0", "--mac", "00:16:3e:0e:00:01", "--switch", "sw0")
    net.ncctl("attach", "2", "--devid", "0", "--mac", "00:16:3e:0e:00:02", "--switch", "sw0")
    net.wait_connected(1, 0)
    net.addr(1, "nc0", "198.18.14.2/24")
    net.wait(lambda: net.ping_ok(1, "198.18.14.1", count=1), 10, "guest 1 -> dom0")
    net.wait_state(0, 2, 0, "InitWait")

    guest2 = net.sim.popen(2, [PY, "-c", HOSTILE], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        assert guest2.stdout is not None
        assert guest2.stdout.readline().strip() == "connected"
        assert guest2.stdout.readline().strip() == "sent"
        lines = net.wait(
            lambda: [ln for ln in d0.log_text().splitlines()
                     if "switch sw0: vif 2/0" in ln and "stopped" in ln],
            10, "the stopped port logged")
        assert len(lines) == 1, lines
        assert re.search(r"stopped: bad_peer: .*300000", lines[0]), lines[0]
        net.wait(lambda: "vif 2/0: failed (link_lost)" in d0.log_text(), 10, "channel closed")

        def bad_records() -> int:
            for v in net.stats(0)["vifs"]:
                if (v["domid"], v["devid"]) == (2, 0):
                    return int(v["drops"].get("bad_record_from_peer", 0))
            return 0

        net.wait(lambda: bad_records() >= 1, 5, "bad record counted")
        sw = next(s for s in net.stats(0)["switches"] if s["name"] == "sw0")
        assert sw["port_stops"].get("bad_peer") == 1, sw
        # the rest carries on
        assert net.vif(0, 1, 0)["state"] == "Connected"
        r = net.ping(1, "198.18.14.1", count=5)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
        assert all(d.alive() for d in net.daemons)
    finally:
        guest2.kill()
        guest2.wait()
    net.ncctl("detach", "2", "0", "--force", check=False)
    net.ncctl("detach", "1", "0", check=False)
    net.wait(lambda: net.vif(0, 1, 0) is None and net.vif(0, 2, 0) is None, 10, "vifs gone")
    check_tracker(net, [0, 1])
