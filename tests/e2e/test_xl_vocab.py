"""xl's vocabulary on xensim: ``ncctl attach NAME VIFSPEC`` with a bridge and a rate,
``list --xl``, ``detach NAME MAC``; and declared vifs (``[[vif]]``) that follow a domain
name through a destroy and a re-create (new domid) without any ncctl call."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.harness import Net

MAC = "00:16:3e:00:00:01"


def _xs(net: Net, path: str) -> str | None:
    r = net.sim.run(0, ["xenstore-read", path], check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def _new_guest(net: Net, name: str) -> int:
    domid = net.sim.world.create_domain(name)
    net.quiet_ipv6(domid)
    return domid


def test_attach_by_name_with_an_xl_vifspec(net: Net) -> None:
    net.ip(0, "link", "add", "xenbr0", "type", "bridge")
    net.ip(0, "link", "set", "xenbr0", "up")
    net.addr(0, "xenbr0", "198.18.5.1/24")
    g = _new_guest(net, "guest1")
    net.start(0, "backend")
    net.start(g, "frontend")
    out = net.ncctl("attach", "guest1", f"mac={MAC.upper()},bridge=xenbr0,rate=100Mb/s").stdout
    assert out == (
        f"attached domain {g} devid 0 mac {MAC} mtu 1500 bridge xenbr0 "
        f"rate 625000 bytes per 50000 us (ncvif{g}.0)\n"
    )
    be = f"/local/domain/0/backend/ncvif/{g}/0"
    assert _xs(net, f"{be}/rate") == "625000,50000"  # libxl's "bytes,usec"
    assert _xs(net, f"{be}/bridge") == "xenbr0"
    net.wait_connected(g, 0, timeout=30)
    assert "master xenbr0" in net.ip(0, "-o", "link", "show", f"ncvif{g}.0")
    net.addr(g, "nc0", "198.18.5.2/24")
    assert net.ping_ok(g, "198.18.5.1")

    rows = net.ncctl("list", "--xl", "guest1").stdout.splitlines()
    assert rows[0].split() == [
        "Dom",
        "Idx",
        "BE",
        "Mac",
        "Addr.",
        "handle",
        "state",
        "evt-ch",
        "ring-ref",
        "BE-path",
        "STATE",
        "IFNAME",
    ]
    cols = rows[1].split()
    assert cols[:6] == [str(g), "0", "0", MAC, "0", "4"]  # frontend Connected
    evtch, ring_ref = int(cols[6]), int(cols[7])
    assert evtch > 0 and ring_ref > 0  # the vchan the frontend published
    assert _xs(net, f"/local/domain/{g}/device/ncvif/0/queue-0/ring-ref") == str(ring_ref)
    assert cols[8:] == [be, "Connected", f"ncvif{g}.0"]

    bad = net.ncctl("attach", "guest1", "mac=00:16:3e:00:00:02,colour=red", check=False)
    assert (bad.returncode, bad.stderr) == (
        1,
        "ncctl: error: vifspec: unknown key 'colour' (ncd knows mac, bridge, ip, rate, "
        "vifname, mtu, backend, devid, switch, trunk, type, model, accel, script)\n",
    )
    bad = net.ncctl("attach", "nosuchguest", check=False)
    assert bad.stderr == "ncctl: error: domain 'nosuchguest': no domain of that name\n"

    out = net.ncctl("detach", "guest1", MAC, "--timeout", "30").stdout
    assert out == f"detached domain {g} devid 0: closed\n"
    assert _xs(net, be) is None
    net.wait(lambda: f"ncvif{g}.0" not in net.links(0), 30, "TAP removed")


DECLARED = """
[[vif]]
domain = "guest1"
spec = "mac=00:16:3e:00:00:31,vifname=gst1,rate=100Mb/s"
"""


def _declared_up(net: Net, g: int) -> None:
    """guest ``g``'s declared vif Connected and passing traffic (ping both ways)."""
    net.start(g, "frontend")
    net.wait_connected(g, 0, timeout=30)
    assert _xs(net, f"/local/domain/0/backend/ncvif/{g}/0/vifname") == "gst1"
    assert _xs(net, f"/local/domain/0/backend/ncvif/{g}/0/rate") == "625000,50000"
    assert _xs(net, f"/local/domain/{g}/device/ncvif/0/mac") == "00:16:3e:00:00:31"
    net.addr(0, "gst1", "198.18.6.1/24")
    net.addr(g, "nc0", "198.18.6.2/24")
    assert net.ping_ok(g, "198.18.6.1")
    assert net.ping_ok(0, "198.18.6.2")


def test_declared_vif_follows_its_domain_name(net: Net, tmp_path: Path) -> None:
    conf = tmp_path / "ncd.toml"
    conf.write_text(DECLARED)
    first = _new_guest(net, "guest1")  # exists before the daemon starts
    be = net.start(0, "backend", "--config", str(conf))
    _declared_up(net, first)
    assert re.search(rf"declared vif 'guest1' devid 0 \(domain {first}\): attached", be.log_text())

    net.sim.world.destroy(first)
    net.wait(
        lambda: _xs(net, f"/local/domain/0/backend/ncvif/{first}") is None,
        30,
        "the old domain's backend entries removed",
    )
    net.wait(
        lambda: net.vif(0, first, 0) is None and "gst1" not in net.links(0),
        30,
        "the old vif and its TAP gone",
    )

    second = _new_guest(net, "guest1")  # a reboot: same name, new domid
    assert second != first
    _declared_up(net, second)
    assert _xs(net, f"/local/domain/0/backend/ncvif/{first}") is None
    assert [(v["domid"], v["devid"]) for v in net.vifs(0)] == [(second, 0)]
    # no ncctl: every attach came from the daemon's own declaration
    assert re.search(rf"declared vif 'guest1' devid 0 \(domain {second}\): attached", be.log_text())
    # domains of other names got nothing
    assert _xs(net, "/local/domain/0/backend/ncvif/1") is None
