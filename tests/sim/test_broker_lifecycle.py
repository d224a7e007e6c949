"""Unmap notifications and domain lifecycle on xensim: release on close, crash, destroy."""

from __future__ import annotations

import os

import pytest

from tests.sim.conftest import wait_for, zero_stats
from xensim.broker.control import BrokerControl, BrokerError


def _notify_setup(hv_dom):
    """dom1 shares a page with a notify byte + port; dom2 maps it with its own notify."""
    d1, d2 = hv_dom(1), hv_dom(2)
    p1 = d1.ok("unbound 2")[0]
    p2 = d2.ok(f"bind 1 {p1}")[0]
    assert d2.ok("pending 1000") == [p2]
    d2.ok(f"unmask {p2}")
    reg, ref = d1.ok(f"share_notify 2 1 100 {p1}")
    d1.ok(f"fill {reg} 0 4096 255")
    m = d2.ok(f"map_notify 1 {ref} rw 200 {p2}")[0]
    return d1, d2, p1, p2, reg, m


def test_unshare_fires_notify(hv_world, hv_dom):
    d1, d2, p1, p2, reg, m = _notify_setup(hv_dom)
    assert d2.ok(f"byte {m} 100") == ["255"]
    d1.ok(f"unshare {reg} 1")
    assert d2.ok(f"byte {m} 100") == ["0"]  # cleared in the page dom2 still maps
    assert d2.ok(f"byte {m} 101") == ["255"]  # and only that byte
    assert d2.ok("pending 1000") == [p2]
    # the grant lingers while dom2 maps it, and goes when dom2 unmaps
    assert hv_world.ctl.stats()[1]["grants"] == 1
    d2.ok(f"unmap {m}")
    wait_for(lambda: hv_world.ctl.stats()[1]["grants"] == 0, what="grant freed")


def test_unmap_fires_notify(hv_world, hv_dom):
    d1, d2, p1, p2, reg, m = _notify_setup(hv_dom)
    d2.ok(f"unmap {m}")
    assert d1.ok(f"byte {reg} 200") == ["0"]
    assert d1.ok(f"byte {reg} 100") == ["255"]
    assert d1.ok("pending 1000") == [p1]


def test_kill_9_fires_notify_of_mapping(hv_world, hv_dom):
    d1, d2, p1, p2, reg, m = _notify_setup(hv_dom)
    d2.kill()
    wait_for(lambda: hv_world.ctl.stats()[2]["connections"] == 0, what="dom2 gone")
    assert d1.ok(f"byte {reg} 200") == ["0"]
    # the event went out on dom2's port although its evtchn handle died too
    assert d1.ok("pending 1000") == [p1]
    st = hv_world.ctl.stats()
    assert st[2]["ports"] == 0 and st[2]["mappings"] == 0 and st[1]["ports"] == 1


def test_kill_9_fires_notify_of_share(hv_world, hv_dom):
    d1, d2, p1, p2, reg, m = _notify_setup(hv_dom)
    d1.kill()
    assert d2.ok("pending 2000") == [p2]
    assert d2.ok(f"byte {m} 100") == ["0"]
    wait_for(lambda: hv_world.ctl.stats()[1]["connections"] == 0, what="dom1 gone")
    # dom2 still maps the dead process's page; the grant goes when it unmaps
    assert hv_world.ctl.stats()[1]["grants"] == 1
    d2.ok(f"unmap {m}")
    assert zero_stats(hv_world.ctl, (1,))


def test_destroy_domain_kills_and_frees_everything(hv_world, hv_dom):
    d1, d2, p1, p2, reg, m = _notify_setup(hv_dom)
    extra = hv_dom(2)  # a second process of dom2, holding a share and a port
    extra.ok("share 1 3 1")
    extra.ok("unbound 1")
    pids = {d2.pid, extra.pid}
    st = hv_world.ctl.stats()
    assert st[2]["connections"] == 4 and st[2]["ports"] == 2 and st[2]["grants"] == 3
    assert hv_world.ctl.destroy_domain(2) == 2
    for d in (d2, extra):
        assert d.proc.wait(5) == -9  # SIGKILLed
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert hv_world.ctl.list_domains() == [0, 1]
    assert 2 not in hv_world.ctl.stats()
    assert not (hv_world.world / "dom2" / "hypervisor.sock").exists()
    # the peer saw its mapping's notify: byte cleared + event
    assert d1.ok(f"byte {reg} 200") == ["0"]
    assert d1.ok("pending 1000") == [p1]
    d1.ok(f"unshare {reg} 1")
    d1.ok(f"unbind {p1}")
    assert zero_stats(hv_world.ctl, (1,), conns=False)
    # a new dom2 can be created again, and works
    hv_world.ctl.create_domain(2)
    d2b = hv_dom(2)
    assert d2b.ok("unbound 1") == ["1"]


def test_control_only_from_dom0_and_errors(hv_world, hv_dom):
    import socket

    from xensim import paths
    from xensim.broker.proto import MAGIC, Kind, Op, pack_req, unpack_rsp

    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(str(paths.hypervisor_socket(hv_world.world, 1)))
        s.send(pack_req(Op.HELLO, (MAGIC, Kind.CONTROL)))
        assert unpack_rsp(s.recv(4096))[0] == 0
        s.send(pack_req(Op.CREATE_DOMAIN, (5,)))
        assert unpack_rsp(s.recv(4096))[0] == 1  # EPERM
        s.send(pack_req(Op.DESTROY_DOMAIN, (2,)))
        assert unpack_rsp(s.recv(4096))[0] == 1
    finally:
        s.close()
    with pytest.raises(BrokerError) as e:
        hv_world.ctl.create_domain(1)
    assert e.value.errno == 17  # EEXIST
    with pytest.raises(BrokerError) as e:
        hv_world.ctl.destroy_domain(9)
    assert e.value.errno == 3  # ESRCH
    with pytest.raises(BrokerError):
        hv_world.ctl.destroy_domain(0)
    assert hv_world.ctl.list_domains() == [0, 1, 2]


def test_no_broker_gives_clear_errors(tmp_path, hv_helper):
    from tests.sim.conftest import HvDom

    d = HvDom(hv_helper, tmp_path / "nowhere", 1, tmp_path / "err")
    try:
        assert d.err("open gnttab") == "ENOENT"
        assert "could not open simulated hypervisor" in d.stderr()
        (tmp_path / "nowhere" / "dom1").mkdir(parents=True)
        import socket

        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(str(tmp_path / "nowhere" / "dom1" / "hypervisor.sock"))
        s.close()  # a dead socket file: nobody listening
        assert d.err("open evtchn") == "ECONNREFUSED"
    finally:
        d.close()
    env_less = HvDom.__new__(HvDom)
    del env_less
    with pytest.raises(OSError):
        BrokerControl(tmp_path / "nowhere", timeout=1)
