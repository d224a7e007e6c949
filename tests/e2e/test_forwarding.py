"""Forwarding on xensim (design notes, "Forwarding"; issue 10), real daemons and traffic.

* Switch: dom0 ``ncd backend``, guests 1 and 2 ``ncd frontend``, both vifs attached
  ``--switch sw0``: no TAP in dom0 for them; ping and 64 MB TCP (sha256) both ways
  guest <-> guest; the (origin, destination) accounting moved by at least what was sent.
* Spoofing: guest 2 sends with another MAC: nothing arrives, ``spoofed_source`` rises;
  its own MAC again: traffic again. With ``--ip`` a wrong IPv4 source is dropped too.
* Nested chain: test_forwarding_chain.py (a world of its own, four domains).

After each scenario: every daemon's tracker holds exactly the pages its vifs mapped (=
what the hypervisor counts as mapped by that domain), and once the vifs are detached and
the daemons stopped, nothing is mapped any more.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import PY, Net
from tests.simworld import SimWorld

MB64 = 64 << 20
MAC = {1: "00:16:3e:0a:00:01", 2: "00:16:3e:0a:00:02", 3: "00:16:3e:0a:00:03"}
SPOOF_MAC = "00:16:3e:0a:00:99"


def gip(g: int) -> str:
    return f"198.18.10.{g}"


def vif_stats(net: Net, domid: int, guest: int, devid: int = 0) -> dict[str, Any]:
    for v in net.stats(domid)["vifs"]:
        if (v["domid"], v["devid"]) == (guest, devid):
            return dict(v)
    raise AssertionError(f"vif {guest}/{devid} missing from dom{domid}'s stats")


def forwarded(net: Net, domid: int, switch: str) -> dict[tuple[int, int], tuple[int, int]]:
    for sw in net.stats(domid).get("switches", []):
        if sw["name"] == switch:
            return {(f["origin"], f["destination"]): (f["frames"], f["bytes"])
                    for f in sw["forwarded"]}
    return {}


def scrape_forwarded(net: Net, domid: int) -> dict[tuple[str, int, int], float]:
    """ncd_forwarded_bytes_total from the daemon's Prometheus endpoint."""
    code = ("import urllib.request;print(urllib.request.urlopen("
            f"'http://127.0.0.1:{net.metrics_port}/metrics',timeout=5).read().decode())")
    text = net.sim.run(domid, [PY, "-c", code]).stdout
    out = {}
    for m in re.finditer(r'^ncd_forwarded_bytes_total\{([^}]*)\} (\S+)$', text, re.M):
        lab = {k: v.strip('"') for k, v in (kv.split("=", 1) for kv in m.group(1).split(","))}
        out[(lab["switch"], int(lab["origin"]), int(lab["destination"]))] = float(m.group(2))
    return out


def check_tracker(net: Net, domids: list[int]) -> None:
    """Each daemon's tracker = the pages its vifs mapped = what the hypervisor says."""
    broker = net.broker_stats()
    for d in domids:
        st = net.stats(d)
        vif_pages = sum(v["tracked_foreign_pages"] for v in st["vifs"])
        assert st["tracker_entries"] == vif_pages, (d, st["tracker_entries"], vif_pages)
        assert broker[d]["mapped_pages"] == vif_pages, (d, broker[d], vif_pages)


def check_nothing_mapped(net: Net) -> None:
    def clean() -> bool:
        return all(s["mapped_pages"] == 0 for s in net.broker_stats().values())

    net.wait(clean, 10, "no mapping left in any domain")


def transfer_ok(net: Net, src: int, dst: int, ip: str, nbytes: int, port: int) -> None:
    sent, got = net.transfer(src, dst, ip, nbytes, port=port, timeout=180)
    assert got["bytes"] == nbytes and got["sha256"] == sent["sha256"], (sent, got)


# ---------------------------------------------------------------- switch + spoofing


@pytest.fixture(scope="module")
def swnet(sim_module: SimWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(sim_module, tmp_path_factory.mktemp("logs"))
    try:
        n.start(0, "backend")
        for g in (1, 2):
            n.start(g, "frontend")
        n.ncctl("attach", "1", "--devid", "0", "--mac", MAC[1], "--switch", "sw0")
        n.ncctl("attach", "2", "--devid", "0", "--mac", MAC[2], "--switch", "sw0")
        for g in (1, 2):
            n.wait_connected(g, 0)
            n.addr(g, "nc0", f"{gip(g)}/24")
        yield n
        for g in (1, 2):
            n.ncctl("detach", str(g), "0", check=False)
        for g in (1, 2):
            n.wait(lambda g=g: n.vif(0, g, 0) is None, 10, f"vif {g}/0 gone in dom0")
        check_tracker(n, [0, 1, 2])
        for d in n.daemons:
            assert n.stop(d) == 0, d.log_text()
        check_nothing_mapped(n)
        log0 = n.daemons[0].log_text()
        assert "switch sw0 destroyed" in log0, log0
    finally:
        n.close()


def test_switch_ports_have_no_tap(swnet: Net) -> None:
    assert not {"ncvif1.0", "ncvif2.0"} & swnet.links(0)
    listed = {(v["domid"], v["devid"]): v for v in swnet.vifs(0)}
    for g in (1, 2):
        assert listed[(g, 0)]["ifname"] == "switch:sw0"
        assert listed[(g, 0)]["switch"] == "sw0"
    out = swnet.ncctl("list").stdout
    assert "switch:sw0" in out, out
    check_tracker(swnet, [0, 1, 2])


def test_switch_ping_both_ways(swnet: Net) -> None:
    for a, b in ((1, 2), (2, 1)):
        r = swnet.ping(a, gip(b), count=5)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr


def test_switch_tcp_64mb_both_ways_and_accounting(swnet: Net) -> None:
    before = forwarded(swnet, 0, "sw0")
    transfer_ok(swnet, 1, 2, gip(2), MB64, 5401)
    transfer_ok(swnet, 2, 1, gip(1), MB64, 5402)
    after = forwarded(swnet, 0, "sw0")
    for pair in ((1, 2), (2, 1)):
        f0, b0 = before.get(pair, (0, 0))
        f1, b1 = after[pair]
        assert b1 - b0 >= MB64, (pair, before, after)
        assert f1 > f0
    out = swnet.ncctl("stats").stdout
    assert "switch sw0" in out, out
    scraped = scrape_forwarded(swnet, 0)
    for pair in ((1, 2), (2, 1)):
        assert scraped[("sw0", *pair)] >= after[pair][1]
    check_tracker(swnet, [0, 1, 2])


def _spoofed(net: Net, guest: int) -> int:
    return int(vif_stats(net, 0, guest)["drops"]["spoofed_source"])


def test_spoofed_mac_is_dropped_and_counted(swnet: Net) -> None:
    assert swnet.ping_ok(2, gip(1))
    base = _spoofed(swnet, 2)
    to1 = vif_stats(swnet, 0, 1)["frames_tx"]
    swnet.ip(2, "link", "set", "nc0", "address", SPOOF_MAC)
    try:  # a static neighbour: the echo requests themselves leave with SPOOF_MAC
        swnet.ip(2, "neigh", "replace", gip(1), "lladdr", MAC[1], "dev", "nc0",
                 "nud", "permanent")
        r = swnet.ping(2, gip(1), count=4, wait=1)
        assert r.returncode != 0 and " 100% packet loss" in r.stdout, r.stdout
        assert _spoofed(swnet, 2) >= base + 4
        assert vif_stats(swnet, 0, 1)["frames_tx"] == to1, "a spoofed frame reached guest 1"
    finally:
        swnet.ip(2, "link", "set", "nc0", "address", MAC[2])
    swnet.ip(2, "neigh", "flush", "dev", "nc0")
    swnet.ip(1, "neigh", "flush", "dev", "nc0")
    swnet.wait(lambda: swnet.ping_ok(2, gip(1), count=1), 10, "traffic with the own MAC")


def test_wrong_ipv4_source_dropped_with_ip(swnet: Net) -> None:
    swnet.ncctl("attach", "2", "--devid", "1", "--mac", "00:16:3e:0a:01:02", "--switch", "sw0",
                "--ip", "198.18.11.2")
    swnet.ncctl("attach", "1", "--devid", "1", "--mac", "00:16:3e:0a:01:01", "--switch", "sw0")
    try:
        for g in (1, 2):
            swnet.wait_connected(g, 1)
        swnet.addr(1, "nc1", "198.18.11.1/24")
        swnet.addr(2, "nc1", "198.18.11.2/24")
        assert swnet.wait(lambda: swnet.ping_ok(2, "198.18.11.1", count=1), 10, "ping on nc1")
        base = int(vif_stats(swnet, 0, 2, 1)["drops"]["spoofed_source"])
        swnet.addr(2, "nc1", "198.18.11.99/24")
        r = swnet.sim.run(2, ["ping", "-q", "-c", "3", "-i", "0.1", "-W", "1", "-I",
                              "198.18.11.99", "198.18.11.1"], check=False)
        assert r.returncode != 0, r.stdout
        assert int(vif_stats(swnet, 0, 2, 1)["drops"]["spoofed_source"]) >= base + 3
        swnet.ip(2, "addr", "del", "198.18.11.99/24", "dev", "nc1")
        assert swnet.ping_ok(2, "198.18.11.1", count=2)
    finally:
        for g in (1, 2):
            swnet.ncctl("detach", str(g), "1", check=False)
    for g in (1, 2):
        swnet.wait(lambda g=g: swnet.vif(0, g, 1) is None, 10, f"vif {g}/1 gone in dom0")
    check_tracker(swnet, [0, 1, 2])


def test_spoofed_mac_dropped_on_a_tap_vif_too(swnet: Net) -> None:
    # the same lock on a vif served by the TAP pump (no switch): guest 1's frames reach
    # dom0's ncvif1.2 only with guest 1's own MAC
    mac = "00:16:3e:0a:02:01"
    swnet.ncctl("attach", "1", "--devid", "2", "--mac", mac)
    try:
        swnet.wait_connected(1, 2)
        swnet.addr(0, "ncvif1.2", "198.18.12.1/24")
        swnet.addr(1, "nc2", "198.18.12.2/24")
        assert swnet.wait(lambda: swnet.ping_ok(1, "198.18.12.1", count=1), 10, "ping on nc2")
        base = int(vif_stats(swnet, 0, 1, 2)["drops"]["spoofed_source"])
        swnet.ip(1, "link", "set", "nc2", "address", SPOOF_MAC)
        try:
            swnet.ip(1, "neigh", "replace", "198.18.12.1", "lladdr", "00:16:3e:0a:02:99",
                     "dev", "nc2", "nud", "permanent")
            r = swnet.ping(1, "198.18.12.1", count=4, wait=1)
            assert r.returncode != 0 and " 100% packet loss" in r.stdout, r.stdout
            assert int(vif_stats(swnet, 0, 1, 2)["drops"]["spoofed_source"]) >= base + 4
        finally:
            swnet.ip(1, "link", "set", "nc2", "address", mac)
            swnet.ip(1, "neigh", "flush", "dev", "nc2")
        assert swnet.wait(lambda: swnet.ping_ok(1, "198.18.12.1", count=1), 10,
                          "traffic with the own MAC")
    finally:
        swnet.ncctl("detach", "1", "2", check=False)
    swnet.wait(lambda: swnet.vif(0, 1, 2) is None, 10, "vif 1/2 gone in dom0")
    check_tracker(swnet, [0, 1, 2])
