"""Vifs in Open vSwitch bridges (``bridge`` naming an OVS bridge, vif-openvswitch's
``NAME.TAG`` / ``NAME.TAG:TRUNK`` syntax) on xensim, with a private Open vSwitch on its
userspace datapath (``datapath_type=netdev``: this kernel has no openvswitch module):
its own ovsdb-server and database in the test's directory, ovs-vswitchd inside dom0's
network namespace (where the backend's TAPs are), never the system's.

Two guests on one OVS bridge ping and move data (TCP, sha256); the ports' external-ids
are vif-openvswitch's; a ``kill -9`` leaves the ports, which the restarted daemon adopts;
detach removes a port, and so does the next start for a crashed daemon's stale TAP.
Guests on VLAN 10 reach each other and not the guest on VLAN 20 (which reaches dom0's
VLAN 20 port); the daemon's stop removes every port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ncd import tap as tapmod
from tests.e2e.harness import Net
from tests.needs import require_root
from tests.netns import in_netns
from tests.ovsdaemons import Ovs, have_ovs
from tests.simworld import SimWorld

from .test_forwarding import transfer_ok

UUID = "5f1b6b0e-3c1e-4d7a-9a55-0d6c1f2e7a01"


@pytest.fixture
def sim3(tmp_path: Path) -> Iterator[SimWorld]:
    require_root("a xensim world: network namespaces")
    w = SimWorld(tmp_path / "world", domains=3)
    try:
        yield w
    finally:
        w.down()


def _ovs(sim: SimWorld, tmp_path: Path) -> Iterator[Ovs]:
    require_root("a xensim world: network namespaces")
    if not have_ovs():
        pytest.skip("needs Open vSwitch (Debian's openvswitch-switch; scripts/setup.sh)")
    o = Ovs(tmp_path / "ovs", sim.world.netns(0))
    try:
        o.vsctl("add-br", "ovsbr0", "--", "set", "Bridge", "ovsbr0", "datapath_type=netdev")
        yield o
    finally:
        o.close()


@pytest.fixture
def ovs2(sim: SimWorld, tmp_path: Path) -> Iterator[Ovs]:
    yield from _ovs(sim, tmp_path)


@pytest.fixture
def ovs3(sim3: SimWorld, tmp_path: Path) -> Iterator[Ovs]:
    yield from _ovs(sim3, tmp_path)


def _backend(net: Net, o: Ovs, tmp_path: Path) -> None:
    cfg = tmp_path / "ncd.toml"
    cfg.write_text(f'[backend]\novs_db = "{o.db}"\n')
    net.start(0, "backend", "--config", str(cfg))


def _mac(g: int) -> str:
    return f"00:16:3e:0e:00:0{g}"


def _up(net: Net, guests: dict[int, str], subnet: str) -> None:
    """Frontends in ``guests``, attached to the bridge each names; connected, addressed
    ``subnet``.G/24."""
    for g, bridge in guests.items():
        net.start(g, "frontend")
        net.attach(g, 0, _mac(g), bridge=bridge)
    for g in guests:
        net.wait_connected(g, 0)
        net.addr(g, "nc0", f"{subnet}.{g}/24")


def test_two_guests_on_an_ovs_bridge(sim: SimWorld, ovs2: Ovs, net: Net, tmp_path: Path) -> None:
    o = ovs2
    # what libxl leaves for guest 1: its vm node (guest 2 has only its name, as on xensim)
    for path, value in (
        ("/local/domain/1/vm", f"/vm/{UUID}"),
        (f"/vm/{UUID}/uuid", UUID),
        (f"/vm/{UUID}/name", "web1"),
    ):
        sim.run(0, ["xenstore-write", path, value])
    _backend(net, o, tmp_path)
    _up(net, {1: "ovsbr0", 2: "ovsbr0"}, "198.18.30")
    assert {"ncvif1.0", "ncvif2.0"} <= o.ports()
    assert o.vsctl("port-to-br", "ncvif1.0") == "ovsbr0"
    assert "master" not in net.ip(0, "-o", "link", "show", "ncvif1.0")  # no Linux bridge
    ids1 = o.vsctl("get", "Interface", "ncvif1.0", "external_ids")
    assert ids1 == (f'{{attached-mac="{_mac(1)}", xen-vm-name=web1, xen-vm-uuid="{UUID}"}}'), ids1
    ids2 = o.vsctl("get", "Interface", "ncvif2.0", "external_ids")
    assert ids2 == f'{{attached-mac="{_mac(2)}", xen-vm-name=domU2}}', ids2
    assert o.vsctl("get", "Port", "ncvif1.0", "tag") == "[]"
    with in_netns(sim.world.netns(1)):  # the userspace datapath: no offloads (ncd.ovs)
        assert not tapmod.active_features("nc0")["tx-tcp-segmentation"]

    net.wait(lambda: net.ping_ok(1, "198.18.30.2", count=1), 20, "guest 1 -> guest 2 via OVS")
    assert net.ping_ok(2, "198.18.30.1", count=3)
    transfer_ok(net, 1, 2, "198.18.30.2", 8 << 20, 5701)
    transfer_ok(net, 2, 1, "198.18.30.1", 8 << 20, 5702)

    # kill -9: the TAPs and their ports outlive the daemon; the restarted one re-adds them
    backend = net.daemons[0]
    net.kill9(backend)
    backend = net.restart(backend)
    net.wait_connected(1, 0, timeout=30)
    net.wait_connected(2, 0, timeout=30)
    net.wait(lambda: net.ping_ok(1, "198.18.30.2", count=1), 20, "guest 1 -> 2 after restart")
    assert o.vsctl("port-to-br", "ncvif2.0") == "ovsbr0"

    net.ncctl("detach", "2", "0")
    net.wait(lambda: net.vif(0, 2, 0) is None, 15, "vif 2/0 released")
    assert "ncvif2.0" not in o.ports() and "ncvif2.0" not in net.links(0)
    assert "ncvif1.0" in o.ports()

    # a crashed daemon's vif removed meanwhile: its stale TAP and its port go at the start
    net.kill9(backend)
    sim.run(0, ["xenstore-rm", "/local/domain/0/backend/ncvif/1/0"])
    assert "ncvif1.0" in o.ports()
    backend = net.restart(backend)
    net.wait(lambda: "ncvif1.0" not in o.ports(), 15, "the stale TAP's OVS port removed")
    assert "removed stale ncvif1.0" in backend.log_text()
    assert "ncvif1.0" not in net.links(0)
    assert o.ports() == {"ovsbr0"}, o.ports()  # nothing of ncd's left in the database


def test_vlans_separate_guests(sim3: SimWorld, ovs3: Ovs, tmp_path: Path) -> None:
    o = ovs3
    net = Net(sim3, tmp_path)
    try:
        # dom0's own port on VLAN 20 (an OVS internal port: a TAP in dom0's namespace)
        o.vsctl(*"add-port ovsbr0 vl20 tag=20 -- set Interface vl20 type=internal".split())
        net.ip(0, "link", "set", "vl20", "up")
        net.addr(0, "vl20", "198.18.31.254/24")
        _backend(net, o, tmp_path)
        _up(net, {1: "ovsbr0.10", 2: "ovsbr0.10", 3: "ovsbr0.20:30:40"}, "198.18.31")
        assert o.vsctl("get", "Port", "ncvif1.0", "tag") == "10"
        assert o.vsctl("get", "Port", "ncvif3.0", "tag") == "20"
        assert o.vsctl("get", "Port", "ncvif3.0", "trunks") == "[30, 40]"

        net.wait(lambda: net.ping_ok(1, "198.18.31.2", count=1), 20, "guest 1 -> 2 on VLAN 10")
        net.wait(lambda: net.ping_ok(3, "198.18.31.254", count=1), 20, "guest 3 -> dom0 VLAN 20")
        transfer_ok(net, 1, 2, "198.18.31.2", 4 << 20, 5711)
        for src, dst in ((1, "198.18.31.3"), (3, "198.18.31.1"), (1, "198.18.31.254")):
            r = net.ping(src, dst, count=3, wait=1)
            assert r.returncode != 0, f"guest {src} reached {dst} across VLANs: {r.stdout}"
        for d in net.daemons:
            assert net.stop(d) == 0, d.log_text()
        assert o.ports() == {"ovsbr0", "vl20"}, o.ports()
    finally:
        net.close()
