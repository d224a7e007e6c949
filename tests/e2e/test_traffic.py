"""dom0 + two guests on xensim, real daemons and TAPs: ping, TCP with sha256, a bridge,
and the counters (control socket, metrics endpoint) against the traffic sent."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ncd import tap as tapmod
from tests.e2e.harness import MACS, PY, Net, dom0_ip, guest_ip, two_guests
from tests.netns import in_netns

BIG = 256 << 20


@pytest.fixture(scope="module")
def net(sim_module, tmp_path_factory) -> Iterator[Net]:
    with two_guests(sim_module, tmp_path_factory.mktemp("logs")) as n:
        yield n


def test_taps_exist_with_the_toolstack_settings(net: Net) -> None:
    assert {"ncvif1.0", "ncvif2.0"} <= net.links(0)
    for g in (1, 2):
        with in_netns(net.sim.world.netns(g)):
            info = tapmod.link_info("nc0")
            feats = tapmod.active_features("nc0")
        assert info.mac == MACS[g] and info.mtu == 1500 and info.up
        assert feats["tx-tcp-segmentation"], "TSO negotiated end to end"


@pytest.mark.parametrize("g", [1, 2])
def test_ping_both_ways(net: Net, g: int) -> None:
    r = net.ping(g, dom0_ip(g), count=5)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0% packet loss" in r.stdout
    r = net.ping(0, guest_ip(g), count=5)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout


def test_tcp_256mb_each_way_guest1(net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    sent, got = net.transfer(1, 0, dom0_ip(1), BIG, port=5301)
    up = time.monotonic() - t0
    assert got["bytes"] == BIG and got["sha256"] == sent["sha256"]
    t0 = time.monotonic()
    sent, got = net.transfer(0, 1, guest_ip(1), BIG, port=5302)
    down = time.monotonic() - t0
    assert got["bytes"] == BIG and got["sha256"] == sent["sha256"]
    with capsys.disabled():
        print(f"\n256 MB guest->dom0 {up:.2f}s, dom0->guest {down:.2f}s (incl. helper start-up)")


def test_tcp_each_way_guest2(net: Net) -> None:
    for src, dst, ip in ((2, 0, dom0_ip(2)), (0, 2, guest_ip(2))):
        sent, got = net.transfer(src, dst, ip, 32 << 20, port=5303)
        assert got["bytes"] == 32 << 20 and got["sha256"] == sent["sha256"]


def test_guest_to_guest_through_a_bridge_in_dom0(net: Net) -> None:
    net.ip(0, "link", "add", "ncbr0", "type", "bridge")
    try:
        net.ip(0, "link", "set", "ncbr0", "up")
        for g in (1, 2):
            net.ncctl("attach", str(g), "--devid", "1", "--mac", f"00:16:3e:00:0{g}:01",
                      "--bridge", "ncbr0")
        for g in (1, 2):
            net.wait_connected(g, 1)
            net.addr(g, "nc1", f"198.18.3.{g}/24")
            with in_netns(net.sim.world.netns(0)):
                info = tapmod.link_info(f"ncvif{g}.1")
            assert info.master == "ncbr0" and info.up
        for a, b in ((1, 2), (2, 1)):
            r = net.ping(a, f"198.18.3.{b}", count=5)
            assert r.returncode == 0, r.stdout + r.stderr
        sent, got = net.transfer(1, 2, "198.18.3.2", 32 << 20, port=5304)
        assert got["bytes"] == 32 << 20 and got["sha256"] == sent["sha256"]
    finally:
        for g in (1, 2):
            net.ncctl("detach", str(g), "1", "--force", check=False)
        net.ip(0, "link", "del", "ncbr0")
    for g in (1, 2):
        net.wait(lambda g=g: net.vif(0, g, 1) is None, 10, f"vif {g}/1 gone in dom0")
    assert not {"ncvif1.1", "ncvif2.1"} & net.links(0)


def _scrape(net: Net, domid: int) -> dict[tuple[str, str], float]:
    code = ("import urllib.request;print(urllib.request.urlopen("
            f"'http://127.0.0.1:{net.metrics_port}/metrics',timeout=5).read().decode())")
    text = net.sim.run(domid, [PY, "-c", code]).stdout
    out = {}
    for m in re.finditer(r'^(ncd_vif_(?:frames|bytes)_total)\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(kv.split("=", 1) for kv in m.group(2).split(","))
        if labels['domid'] == '"1"' and labels['devid'] == '"0"':
            out[(m.group(1), labels["direction"].strip('"'))] = float(m.group(3))
    return out


def _vif_stats(net: Net, domid: int) -> dict[str, int]:
    for v in net.stats(domid)["vifs"]:
        if v["domid"] == 1 and v["devid"] == 0:
            return v
    raise AssertionError("vif 1/0 missing from stats")


def test_metrics_and_ncctl_agree_with_the_traffic(net: Net) -> None:
    net.ping(1, dom0_ip(1), count=1)  # ARP settled
    time.sleep(0.3)
    be0, fe0 = _vif_stats(net, 0), _vif_stats(net, 1)
    n, size = 40, 1000
    r = net.ping(1, dom0_ip(1), count=n, interval=0.01, size=size)
    assert r.returncode == 0, r.stdout
    time.sleep(0.3)
    be1, fe1 = _vif_stats(net, 0), _vif_stats(net, 1)
    frame = size + 8 + 20 + 14  # ICMP + IPv4 + Ethernet
    d_rx = be1["frames_rx"] - be0["frames_rx"]
    assert n <= d_rx <= n + 4
    assert be1["bytes_rx"] - be0["bytes_rx"] >= n * frame
    assert n <= be1["frames_tx"] - be0["frames_tx"] <= n + 4
    assert fe1["frames_tx"] - fe0["frames_tx"] == d_rx
    # what one end sent is what the other received, frame for frame and byte for byte
    assert fe1["frames_tx"] == be1["frames_rx"] and fe1["bytes_tx"] == be1["bytes_rx"]
    assert fe1["frames_rx"] == be1["frames_tx"] and fe1["bytes_rx"] == be1["bytes_tx"]
    # the Prometheus endpoint shows the same numbers as ncctl stats
    scraped = _scrape(net, 0)
    assert scraped[("ncd_vif_frames_total", "rx")] == be1["frames_rx"]
    assert scraped[("ncd_vif_frames_total", "tx")] == be1["frames_tx"]
    assert scraped[("ncd_vif_bytes_total", "rx")] == be1["bytes_rx"]
    assert scraped[("ncd_vif_bytes_total", "tx")] == be1["bytes_tx"]
    # ncctl list --json
    listed = json.loads(net.ncctl("list", "--json").stdout)
    mine = [v for v in listed["vifs"] if v["domid"] == 1 and v["devid"] == 0]
    assert mine and mine[0]["state"] == "Connected" and mine[0]["ifname"] == "ncvif1.0"
    assert mine[0]["mac"] == MACS[1] and mine[0]["peer"] == 1


UDP_RECV = """
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10)
print("ready", flush=True)
got = b""
while len(got) < int(sys.argv[3]):
    got += s.recv(65535)
print(json.dumps({"bytes": len(got), "sha256": hashlib.sha256(got).hexdigest()}))
"""
UDP_SEND_GSO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, int(sys.argv[3]))  # SOL_UDP, UDP_SEGMENT: one send, one GSO frame
s.sendto(bytes.fromhex(sys.argv[4]), (sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.parametrize("src,dst,ip", [(1, 0, dom0_ip(1)), (0, 1, guest_ip(1))])
def test_udp_gso_frame_crosses_whole(net: Net, src: int, dst: int, ip: str) -> None:
    # Both ends advertise feature-gso-udp-l4 on this kernel (TAP has TUN_F_USO4/6), so the
    # TAP is set to it and a 40-segment UDP_SEGMENT send crosses as one record
    with in_netns(net.sim.world.netns(1)):
        feats = tapmod.active_features("nc0")
    assert feats["tx-udp-segmentation"], "USO negotiated end to end"
    with in_netns(net.sim.world.netns(0)):
        assert tapmod.active_features("ncvif1.0")["tx-udp-segmentation"]
    payload = bytes(range(250)) * 160  # 40 segments of 1000 bytes
    recv = net.sim.popen(dst, [PY, "-c", UDP_RECV, ip, "5310", str(len(payload))],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        before = _vif_stats(net, src)["frames_tx"]
        net.sim.run(src, [PY, "-c", UDP_SEND_GSO, ip, "5310", "1000", payload.hex()])
        got = json.loads(recv.communicate(timeout=30)[0].strip().splitlines()[-1])
    finally:
        recv.kill()
    assert got == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    assert _vif_stats(net, src)["frames_tx"] - before <= 4  # not 40: segmented after the vchan
def _promtool() -> str | None:
    # scripts/setup.sh puts Debian's promtool in .venv/bin
    beside = Path(PY).parent / "promtool"
    return str(beside) if beside.is_file() else shutil.which("promtool")


@pytest.mark.parametrize("domid", [0, 1], ids=["backend", "frontend"])
def test_promtool_check_metrics_on_a_live_scrape(net: Net, domid: int) -> None:
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not installed (scripts/setup.sh extracts Debian's)")
    code = ("import urllib.request;print(urllib.request.urlopen("
            f"'http://127.0.0.1:{net.metrics_port}/metrics',timeout=5).read().decode())")
    text = net.sim.run(domid, [PY, "-c", code]).stdout
    assert "ncd_vif_frames_total{" in text and "ncd_handshake_failures_total{" in text
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        r.stdout + r.stderr
    )
