"""libxenctrl's xc_domain_getinfo on xensim: dom0 sees the live domains, a domU gets EPERM."""

from __future__ import annotations

import socket
import threading

from tests.sim.conftest import wait_for
from xensim import paths
from xensim.broker.proto import MAGIC, MAX_MSG, Kind, Op, pack_req, unpack_rsp


def test_getinfo_from_dom0_lists_domains(hv_world, hv_dom):
    d0 = hv_dom(0)
    assert d0.ok("getinfo 0 64") == ["3", "0:live", "1:live", "2:live"]
    assert d0.ok("getinfo 1 1") == ["1", "1:live"]
    assert d0.ok("getinfo 2 8") == ["1", "2:live"]
    # none at or beyond first_domid: libxc returns -1/ESRCH (its first domctl failed)
    assert d0.err("getinfo 3 8") == "ESRCH"
    hv_world.ctl.create_domain(7)
    assert d0.ok("getinfo 3 8") == ["1", "7:live"]


def test_getinfo_from_domu_is_eperm(hv_world, hv_dom):
    d1 = hv_dom(1)
    assert d1.err("getinfo 0 8") == "EPERM"
    assert d1.err("getinfo 1 1") == "EPERM"


def test_getinfo_reports_dying_then_gone(hv_world, hv_dom):
    """While a destroy waits for a domain's last handle, getinfo shows it dying."""
    d0 = hv_dom(0)
    # a handle of dom2 held by this (the requesting, hence spared) process
    held = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    held.connect(str(paths.hypervisor_socket(hv_world.world, 2)))
    held.send(pack_req(Op.HELLO, (MAGIC, Kind.GNTTAB)))
    assert unpack_rsp(held.recv(MAX_MSG))[0] == 0
    done = threading.Event()
    t = threading.Thread(target=lambda: (hv_world.ctl.destroy_domain(2), done.set()))
    t.start()
    try:
        wait_for(lambda: d0.ok("getinfo 2 1") == ["1", "2:dying"], what="dom2 dying")
        assert not done.is_set()
    finally:
        held.close()
        t.join(10)
    assert done.is_set()
    assert d0.err("getinfo 2 1") == "ESRCH"
    assert d0.ok("getinfo 0 8") == ["2", "0:live", "1:live"]
