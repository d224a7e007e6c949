"""Event channels on xensim: binding rules, notify/pending/unmask semantics, unbind."""

from __future__ import annotations

from tests.sim.conftest import wait_for


def _pair(d1, d2):
    p1 = d1.ok("unbound 2")[0]
    p2 = d2.ok(f"bind 1 {p1}")[0]
    return p1, p2


def test_bind_marks_binder_pending_once(hv_world, hv_dom):
    d1, d2 = hv_dom(1), hv_dom(2)
    p1, p2 = _pair(d1, d2)
    assert d2.ok("pending 1000") == [p2]  # Xen sets the binder's port pending
    assert d2.ok("pending 100") == ["none"]
    assert d1.ok("pending 100") == ["none"]
    st = hv_world.ctl.stats()
    assert st[1]["ports"] == 1 and st[2]["ports"] == 1


def test_notify_coalesces_while_pending_and_is_not_lost(hv_world, hv_dom):
    d1, d2 = hv_dom(1), hv_dom(2)
    p1, p2 = _pair(d1, d2)
    assert d2.ok("pending 1000") == [p2]
    d2.ok(f"unmask {p2}")
    for _ in range(5):
        d1.ok(f"notify {p1}")
    assert d2.ok("pending 1000") == [p2]  # five notifies, one event
    assert d2.ok("pending 100") == ["none"]  # masked after delivery
    d1.ok(f"notify {p1}")  # arrives while masked: kept
    assert d2.ok("pending 100") == ["none"]
    d2.ok(f"unmask {p2}")
    assert d2.ok("pending 1000") == [p2]  # re-delivered after unmask
    d2.ok(f"unmask {p2}")
    assert d2.ok("pending 100") == ["none"]  # and only once
    # the other direction
    d2.ok(f"notify {p2}")
    assert d1.ok("pending 1000") == [p1]


def test_bind_rules(hv_world, hv_dom):
    d1, d2, d0 = hv_dom(1), hv_dom(2), hv_dom(0)
    p1 = d1.ok("unbound 2")[0]
    assert d0.err(f"bind 1 {p1}") == "EINVAL"  # allocated for dom2, not dom0
    assert d2.err("bind 1 77") == "EINVAL"  # no such port
    assert d2.err(f"bind 9 {p1}") == "ESRCH"  # no such domain
    d2.ok(f"bind 1 {p1}")
    assert d0.err(f"bind 1 {p1}") == "EINVAL"  # already bound
    other = hv_dom(2)
    assert other.err(f"bind 1 {p1}") == "EINVAL"
    assert d1.err("notify 999") == "ENOTCONN"  # not bound by this handle
    assert d1.err("unbind 999") == "ENOTCONN"


def test_unbind_leaves_peer_unbound_and_rebindable(hv_world, hv_dom):
    d1, d2 = hv_dom(1), hv_dom(2)
    p1, p2 = _pair(d1, d2)
    d2.ok(f"unbind {p2}")
    assert hv_world.ctl.stats()[2]["ports"] == 0
    assert hv_world.ctl.stats()[1]["ports"] == 1
    d1.ok(f"notify {p1}")  # to an unbound port: dropped
    # dom1's port is unbound again (remote dom2): dom2 can bind it anew
    p2b = d2.ok(f"bind 1 {p1}")[0]
    assert d2.ok("pending 1000") == [p2b]
    d2.ok(f"unmask {p2b}")
    d1.ok(f"notify {p1}")
    assert d2.ok("pending 1000") == [p2b]


def test_closing_handle_unbinds_everything(hv_world, hv_dom):
    d1, d2 = hv_dom(1), hv_dom(2)
    p1, p2 = _pair(d1, d2)
    d1.ok("unbound 0")
    assert hv_world.ctl.stats()[1]["ports"] == 2
    d1.ok("close evtchn")  # the broker sees the connection close asynchronously
    wait_for(lambda: hv_world.ctl.stats()[1]["ports"] == 0, what="dom1's ports released")
    assert hv_world.ctl.stats()[2]["ports"] == 1
    # dom2's end is now unbound with remote dom1: dom1 may bind to it again
    d1.ok(f"bind 2 {p2}")


def test_handles_are_thread_safe(hv_world, hv_dom):
    """8 threads hammer one gnttab handle (map/unmap) and one evtchn handle (notify)."""
    d1, d2 = hv_dom(1), hv_dom(2)
    reg, ref = d1.ok("share 2 1 0")
    d1.ok(f"write {reg} 0 S")
    p1 = d1.ok("unbound 2")[0]
    p2 = d2.ok(f"bind 1 {p1}")[0]
    assert d2.ok(f"stress 8 200 1 {ref} {p2}", timeout=60) == ["0"]
    assert d1.ok("pending 1000") == [p1]  # 1600 notifies: delivered, coalesced
    st = hv_world.ctl.stats()
    assert st[2]["mappings"] == 0 and st[2]["mapped_pages"] == 0
    assert st[1]["grants"] == 1
