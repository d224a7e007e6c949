"""Grant tables on xensim: sharing, mapping rules, read-only, onward granting, grant copy."""

from __future__ import annotations

import os

import pytest

from tests.sim.conftest import wait_for, zero_stats

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3


def test_share_map_bytes_cross_both_ways(hv_world, hv_dom):
    d1, d2 = hv_dom(1), hv_dom(2)
    reg, ref_a, ref_b = d1.ok("share 2 2 1")
    d1.ok(f"write {reg} 0 from-dom1")
    d1.ok(f"write {reg} 4096 page-two")
    m = d2.ok(f"mapdom 1 rw {ref_a} 2")[0]
    assert d2.ok(f"read {m} 0 9") == ["from-dom1"]
    assert d2.ok(f"read {m} 4096 8") == ["page-two"]
    d2.ok(f"write {m} 100 from-dom2")  # shared memory: no copy, the granter sees it
    assert d1.ok(f"read {reg} 100 9") == ["from-dom2"]
    st = hv_world.ctl.stats()
    assert st[1]["grants"] == 2 and st[1]["shared_pages"] == 2
    assert st[2]["mappings"] == 1 and st[2]["mapped_pages"] == 2
    assert int(ref_b) != int(ref_a) and int(ref_a) >= 8  # Linux reserves refs 0..7
    d2.ok(f"unmap {m}")
    d1.ok(f"unshare {reg} 2")
    st = hv_world.ctl.stats()
    assert st[1]["grants"] == 0 and st[2]["mappings"] == 0


def test_map_grant_refs_per_ref_domids(hv_world, hv_dom):
    d1, d2, d0 = hv_dom(1), hv_dom(2), hv_dom(0)
    r1, ref1 = d1.ok("share 0 1 1")
    r2, ref2 = d2.ok("share 0 1 0")
    d1.ok(f"write {r1} 0 one")
    d2.ok(f"write {r2} 0 two")
    m = d0.ok(f"maprefs r 1:{ref1} 2:{ref2}")[0]
    assert d0.ok(f"read {m} 0 3") == ["one"]
    assert d0.ok(f"read {m} 4096 3") == ["two"]


def test_map_grant_not_made_to_you_fails(hv_world, hv_dom):
    d1, d2, d0 = hv_dom(1), hv_dom(2), hv_dom(0)
    _, ref = d1.ok("share 2 1 1")
    # dom0 is not the grantee: Xen says GNTST_general_error, gntdev makes it EINVAL
    assert d0.err(f"map 1 {ref} r") == "EINVAL"
    assert "status -1" in d0.stderr()
    assert d2.err(f"map 1 {int(ref) + 100} r") == "EINVAL"  # unused entry
    assert d2.err("map 1 99999999 r") == "EINVAL"  # beyond the table
    assert "status -3" in d2.stderr()  # GNTST_bad_gntref
    assert d2.err(f"map 7 {ref} r") == "EINVAL"  # no such domain
    assert "status -2" in d2.stderr()  # GNTST_bad_domain
    assert hv_world.ctl.stats()[0]["mappings"] == 0
    assert hv_world.ctl.stats()[2]["mappings"] == 0


def test_read_only_grant_stays_read_only(hv_world, hv_dom):
    d1, d2 = hv_dom(1), hv_dom(2)
    reg, ref = d1.ok("share 2 1 0")
    d1.ok(f"write {reg} 0 secret")
    assert d2.err(f"map 1 {ref} rw") == "EINVAL"  # write-pin of a r/o grant
    m = d2.ok(f"map 1 {ref} r")[0]
    assert d2.ok(f"read {m} 0 6") == ["secret"]
    assert d2.ok(f"trywrite {m} 0") == ["signal", "11"]  # SIGSEGV
    assert d2.err(f"mprotect_rw {m}") == "EACCES"  # O_RDONLY file: never writable
    assert d1.ok(f"read {reg} 0 6") == ["secret"]


def test_no_onward_granting_of_foreign_pages(hv_world, hv_dom):
    d1, d2 = hv_dom(1), hv_dom(2)
    reg, ref = d1.ok("share 2 1 1")
    d1.ok(f"write {reg} 0 origin")
    m = d2.ok(f"map 1 {ref} rw")[0]
    # dom2 has dom1's page mapped, writable even: it still may not grant it on.
    assert d2.err(f"grant_existing {m} 0 0 0") == "EPERM"
    assert d2.err(f"grant_existing {m} 123 1 1") == "EPERM"
    # dom2's own page: granting it again (to dom0) works and maps fine there.
    own = d2.ok("share 1 1 1")[0]
    d2.ok(f"write {own} 0 dom2page")
    new_ref = d2.ok(f"grant_existing {own} 0 0 0")[0]
    d0 = hv_dom(0)
    m0 = d0.ok(f"map 2 {new_ref} r")[0]
    assert d0.ok(f"read {m0} 0 8") == ["dom2page"]
    # dom1 granting its own page again works too.
    assert d1.ok(f"grant_existing {reg} 0 0 1")
    assert hv_world.ctl.stats()[2]["grants"] == 2


def test_grant_copy_statuses(hv_world, hv_dom):
    d1, d2 = hv_dom(1), hv_dom(2)
    ro, ro_ref = d1.ok("share 2 1 0")
    rw, rw_ref = d1.ok("share 2 1 1")
    other, other_ref = d1.ok("share 0 1 1")  # granted to dom0, not dom2
    d1.ok(f"write {ro} 10 readonly-data")
    local = d2.ok("share 0 1 1")[0]  # dom2's own scratch page
    d2.ok(f"write {local} 0 local-bytes")
    st = d2.ok(
        "copy "
        f"g,1,{ro_ref},10 l,{local},100 13 "  # ok: read a r/o grant
        f"l,{local},0 g,1,{rw_ref},50 11 "  # ok: write a r/w grant
        f"l,{local},0 g,1,{ro_ref},0 5 "  # write to a r/o grant
        f"g,1,{other_ref},0 l,{local},0 4 "  # grant not made to dom2
        f"g,1,99999999,0 l,{local},0 4 "  # ref beyond the table
        f"g,9,{ro_ref},0 l,{local},0 4 "  # no such domain
        f"g,1,{ro_ref},10 g,1,{rw_ref},200 13"  # gref -> gref
    )
    assert [int(s) for s in st] == [
        GNTST_okay,
        GNTST_okay,
        GNTST_general_error,
        GNTST_general_error,
        GNTST_bad_gntref,
        GNTST_bad_domain,
        GNTST_okay,
    ]
    assert d2.ok(f"read {local} 100 13") == ["readonly-data"]
    assert d1.ok(f"read {rw} 50 11") == ["local-bytes"]
    assert d1.ok(f"read {rw} 200 13") == ["readonly-data"]
    assert d1.ok(f"read {ro} 0 5") != ["local"]
    assert d1.ok(f"byte {other} 0") == ["0"]
    # gntdev refuses a gref side crossing its page (EINVAL for the whole call),
    # and local->local copies.
    assert d2.err(f"copy g,1,{ro_ref},4000 l,{local},0 200") == "EINVAL"
    assert d2.err(f"copy l,{local},0 l,{local},8 4") == "EINVAL"


def test_gntalloc_limit_enospc(tmp_path, hv_shims, hv_helper):
    from tests.sim.conftest import HvBroker, HvDom

    b = HvBroker(
        tmp_path / "w", "--gntalloc-limit", "8", "--max-evtchn-port", "3", "--max-grant-frames", "1"
    )
    d = None
    try:
        b.ctl.create_domain(1)
        d = HvDom(hv_helper, b.world, 1, tmp_path / "d1.err")
        d.ok("share 0 5 1")
        assert d.err("share 0 4 1") == "ENOSPC"  # 5 + 4 > 8
        reg = d.ok("share 0 3 1")[0]
        assert d.err("share 0 1 1") == "ENOSPC"
        # Grant table: 1 frame = 512 entries, 8 reserved -> 504 grants.
        for _ in range(504 - 8):
            d.ok(f"grant_existing {reg} 0 0 0")
        assert d.err(f"grant_existing {reg} 0 0 0") == "ENOSPC"
        # Event channels: ports 1..3.
        assert [d.ok("unbound 0")[0] for _ in range(3)] == ["1", "2", "3"]
        assert d.err("unbound 0") == "ENOSPC"
        assert b.ctl.stats()[1]["grants"] == 504
    finally:
        if d is not None:
            d.close()
        wait_for(lambda: zero_stats(b.ctl, (1,)), what="dom1 released")
        assert b.stop() == 0


def test_batches_beyond_one_message_of_fds(hv_world, hv_dom):
    """300 pages: the fds come in a reply plus continuation messages (200 per message)."""
    d1, d2 = hv_dom(1), hv_dom(2)
    reg, *refs = d1.ok("share 2 300 1")
    assert [int(r) for r in refs] == list(range(int(refs[0]), int(refs[0]) + 300))
    d1.ok(f"write {reg} {299 * 4096} last-page")
    d1.ok(f"write {reg} {200 * 4096} page-200")
    m = d2.ok(f"mapdom 1 r {refs[0]} 300")[0]
    assert d2.ok(f"read {m} {299 * 4096} 9") == ["last-page"]
    assert d2.ok(f"read {m} {200 * 4096} 8") == ["page-200"]
    assert hv_world.ctl.stats()[2]["mapped_pages"] == 300
    d2.ok(f"unmap {m}")
    d1.ok(f"unshare {reg} 300")
    st = hv_world.ctl.stats()
    assert st[1]["grants"] == 0 and st[2]["mapped_pages"] == 0


@pytest.mark.parametrize("pages", [256, 1024])
def test_share_and_map_many_pages_in_one_call(hv_world, hv_dom, pages):
    """Regression: share_pages(256) used to corrupt the heap (free(fds) abort), and any
    call beyond RLIMIT_NOFILE's 1024 descriptors failed with EPROTO.  Both helpers run
    with Linux's default soft limit of 1024 open files; every page carries data both ways."""
    d1, d2 = hv_dom(1, nofile=1024), hv_dom(2, nofile=1024)
    reg, *refs = d1.ok(f"share 2 {pages} 1")
    assert len(refs) == pages and len(set(refs)) == pages
    assert [int(r) for r in refs] == list(range(int(refs[0]), int(refs[0]) + pages))
    for i in range(pages):
        d1.ok(f"write {reg} {i * 4096} d1-page-{i:04d}")
    m = d2.ok(f"mapdom 1 rw {refs[0]} {pages}")[0]
    st = hv_world.ctl.stats()
    assert st[1]["shared_pages"] == pages and st[2]["mapped_pages"] == pages
    for i in range(pages):
        assert d2.ok(f"read {m} {i * 4096} 12") == [f"d1-page-{i:04d}"]
        d2.ok(f"write {m} {i * 4096 + 2048} d2-page-{i:04d}")
    for i in range(pages):
        assert d1.ok(f"read {reg} {i * 4096 + 2048} 12") == [f"d2-page-{i:04d}"]
    # no page descriptor stays open: each was closed right after its mmap
    for d in (d1, d2):
        assert len(os.listdir(f"/proc/{d.pid}/fd")) < 16
    # the handles still work afterwards (no leftover continuation messages)
    d2.ok(f"unmap {m}")
    d1.ok(f"unshare {reg} {pages}")
    assert zero_stats(hv_world.ctl, conns=False)
