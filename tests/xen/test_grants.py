"""gntshr in a domU, gnttab in dom0, on xensim: data both ways, read-only, lifetimes, copy."""

from __future__ import annotations

import errno

import pytest


@pytest.fixture
def pair(peer):
    """(dom0, dom1) agents with grant handles open."""
    d0, d1 = peer(0), peer(1)
    d0.run("gt = Gnttab()")
    d1.run("gs = Gntshr()")
    return d0, d1


def test_share_and_map_data_crosses_both_ways(pair):
    d0, d1 = pair
    refs = d1.run("""
        s = gs.share_pages(0, 3)
        with s.view() as v:
            for i in range(3):
                v[i * PAGE_SIZE:i * PAGE_SIZE + 6] = b'page%d!' % i
        result = s.refs
    """)
    assert len(refs) == 3 and len(set(refs)) == 3
    got = d0.run(f"""
        m = gt.map_domain_grant_refs(1, {refs})
        with m.view() as v:
            result = [bytes(v[i * PAGE_SIZE:i * PAGE_SIZE + 6]).decode() for i in range(3)]
            v[PAGE_SIZE * 2 + 100:PAGE_SIZE * 2 + 105] = b'dom0!'
    """)
    assert got == ["page0!", "page1!", "page2!"]
    assert d1.run("result = s.read(PAGE_SIZE * 2 + 100, 5).decode()") == "dom0!"
    # the same pages, mapped one by one and with per-ref domids, see the same memory
    assert d0.run(f"""
        one = gt.map_grant_ref(1, {refs[1]})
        many = gt.map_grant_refs([1, 1], [{refs[2]}, {refs[0]}])
        result = [one.read(0, 6).decode(), many.read(0, 6).decode(),
                  many.read(PAGE_SIZE, 6).decode(), many.npages]
        one.write(0, b'PAGE1')
        one.unmap(); many.unmap(); m.unmap()
    """) == ["page1!", "page2!", "page0!", 2]
    assert d1.run("result = s.read(PAGE_SIZE, 6).decode(); s.unshare()") == "PAGE1!"
    assert d0.alive() and d1.alive()


def test_readonly_grant_and_mapping(pair):
    d0, d1 = pair
    (ref,) = d1.run(
        "s = gs.share_pages(0, 1, writable=False); s.write(0, b'ro data'); result = s.refs"
    )
    err = d0.error(f"gt.map_grant_ref(1, {ref}, writable=True)")
    assert err.type == "XenError" and err.errno
    assert err.call == f"xengnttab_map_grant_ref(domid=1, ref={ref})"
    assert err.message.startswith(f"[Errno {err.errno}] xengnttab_map_grant_ref(domid=1")
    assert d0.run(
        f"m = gt.map_grant_ref(1, {ref}, writable=False); "
        "result = [m.readonly, m.read(0, 7).decode()]"
    ) == [True, "ro data"]
    err = d0.error("with m.view() as v: v[0] = 65")
    assert err.type == "TypeError" and "read-only" in err.message
    err = d0.error("with m.view() as v: memoryview(v)[0:2] = b'xx'")
    assert err.type == "TypeError"
    err = d0.error("m.write(0, b'xx')")
    assert err.type == "TypeError"
    assert d0.run("result = [m.view().obj, m.read(0, 7).decode()]") == [None, "ro data"]
    assert d0.alive()
    assert d1.run("result = s.read(0, 7).decode()") == "ro data"


def test_use_after_unmap_raises_and_views_pin_the_mapping(pair):
    d0, d1 = pair
    (ref,) = d1.run("s = gs.share_pages(0, 1); result = s.refs")
    d0.run(f"m = gt.map_grant_ref(1, {ref}); v = m.view(); w = v[10:20]; del v")
    err = d0.error("m.unmap()")
    assert err.type == "BufferError" and "still alive" in err.message
    d0.run("w[0] = 0x55")  # still mapped and usable
    assert d1.run("result = s.read(10, 1)[0]") == 0x55
    err = d0.error("gt.close()")  # closing the handle needs the same
    assert err.type == "BufferError"
    d0.run("w.release(); m.unmap()")
    for code in ("m.view()", "m.read(0, 1)", "m.write(0, b'x')", "m.address"):
        err = d0.error(code)
        assert err.type == "MappingReleasedError" and "unmapped" in err.message
    err = d0.error("w[0]")
    assert err.type == "ValueError"  # the released view refuses too
    d0.run("gt.close()")
    err = d0.error(f"gt.map_grant_ref(1, {ref})")
    assert err.errno == errno.EBADF and err.call == f"xengnttab_map_grant_ref(domid=1, ref={ref})"
    assert d0.alive()
    # the sharer's side follows the same rules
    d1.run("v = s.view()")
    assert d1.error("s.unshare()").type == "BufferError"
    d1.run("v.release(); s.unshare()")
    assert d1.error("s.read(0, 1)").type == "MappingReleasedError"


def test_map_errors_name_the_call(pair):
    d0, d1 = pair
    err = d0.error("gt.map_grant_ref(1, 8)")  # never granted
    assert err.type == "XenError" and err.errno
    assert err.call == "xengnttab_map_grant_ref(domid=1, ref=8)"
    assert "xengnttab_map_grant_ref(domid=1, ref=8)" in err.message
    (ref,) = d1.run("s = gs.share_pages(0, 1); result = s.refs")
    err = d0.error(f"gt.map_grant_refs([1, 1], [{ref}, 999999])")
    assert err.type == "XenError" and err.call.startswith("xengnttab_map_grant_refs(")
    err = d0.error(f"gt.map_grant_ref(7, {ref})")  # no such domain
    assert err.type == "XenError" and err.errno
    # a failed multi-map left nothing mapped: the good ref still maps fine
    assert d0.run(f"m = gt.map_grant_ref(1, {ref}); result = m.npages; m.unmap()") == 1


def test_only_the_grantee_may_map(peer):
    d1, d2 = peer(1), peer(2)
    (ref,) = d1.run("gs = Gntshr(); s = gs.share_pages(0, 1); result = s.refs")
    err = d2.error(f"gt = Gnttab(); gt.map_grant_ref(1, {ref})")
    assert err.type == "XenError" and err.errno
    assert err.call == f"xengnttab_map_grant_ref(domid=1, ref={ref})"


def test_unmap_notify_observed_by_the_peer(peer):
    d0, d1 = peer(0), peer(1)
    port1, ref = d1.run("""
        ev = Evtchn(); gs = Gntshr()
        port = ev.bind_unbound_port(0)
        s = gs.share_pages(0, 1)
        s.write(0, b'\\x01' * 64)
        result = [port, s.refs[0]]
    """)
    assert (
        d0.run(f"""
        ev = Evtchn(); gt = Gnttab()
        port = ev.bind_interdomain(1, {port1})
        m = gt.map_grant_ref_notify(1, {ref}, notify_offset=33, notify_port=port)
        result = m.read(33, 1).hex()
    """)
        == "01"
    )
    d1.submit("""
        async def main():
            aev = AsyncEvtchn(ev)
            try:
                return await aev.wait(port, timeout=20)
            finally:
                aev.close()
        result = [asyncio.run(main()), s.read(32, 3).hex()]
    """)
    d0.run("m.unmap()")
    count, around = d1.result()
    assert count >= 1
    assert around == "010001"  # exactly the notify byte was cleared


def test_unmap_notify_fires_when_the_mapper_dies(peer):
    d0, d1 = peer(0), peer(1)
    port1, ref = d1.run("""
        ev = Evtchn(); gs = Gntshr()
        port = ev.bind_unbound_port(0)
        s = gs.share_pages(0, 1); s.write(0, b'\\x01' * 16)
        result = [port, s.refs[0]]
    """)
    d0.run(f"""
        ev = Evtchn(); gt = Gnttab()
        port = ev.bind_interdomain(1, {port1})
        m = gt.map_grant_ref_notify(1, {ref}, notify_offset=5, notify_port=port)
    """)
    d1.submit("""
        async def main():
            aev = AsyncEvtchn(ev)
            try:
                return await aev.wait(port, timeout=20)
            finally:
                aev.close()
        result = [asyncio.run(main()), s.read(5, 1)[0]]
    """)
    d0.proc.kill()
    d0.proc.wait()
    count, byte = d1.result()
    assert count >= 1 and byte == 0


def test_grant_copy_statuses(pair):
    d0, d1 = pair
    refs = d1.run("""
        s = gs.share_pages(0, 2)
        s.write(0, bytes(range(256)) * 16)
        ro = gs.share_pages(0, 1, writable=False)
        result = s.refs + ro.refs
    """)
    r0, r1, rro = refs
    statuses = d0.run(f"""
        dst = bytearray(64)
        segs = [
            CopySegment(GrantRef(1, {r0}, 16), dst, 32),            # grant -> local
            CopySegment(b'from dom0 via copy', GrantRef(1, {r1}, 100), 18),  # local -> grant
            CopySegment(GrantRef(1, 999999), dst, 8),                # bogus ref
            CopySegment(b'nope', GrantRef(1, {rro}), 4),             # write a read-only grant
            CopySegment(GrantRef(7, {r0}), dst, 4),                  # no such domain
        ]
        st = gt.grant_copy(segs)
        result = [[s.name if isinstance(s, GrantStatus) else s for s in st], dst[:32].hex()]
    """)
    names, copied = statuses
    assert names[:3] == ["okay", "okay", "bad_gntref"]
    assert names[3] in ("permission_denied", "general_error")
    assert names[4] in ("bad_domain", "bad_gntref")
    assert copied == bytes(range(16, 48)).hex()
    assert d1.run("result = s.read(PAGE_SIZE + 100, 18).decode()") == "from dom0 via copy"
    # as with Linux gntdev, a grant offset + length beyond the page fails the whole call
    err = d0.error(f"gt.grant_copy([CopySegment(GrantRef(1, {r0}, 4090), dst, 16)])")
    assert err.type == "XenError" and err.errno == errno.EINVAL
    assert err.call == "xengnttab_grant_copy(1 segments)"
    err = d0.error(f"gt.grant_copy([CopySegment(GrantRef(1, {r0}), b'readonly', 8)])")
    assert err.type in ("TypeError", "BufferError")  # a local destination must be writable
    err = d0.error(f"gt.grant_copy([CopySegment(GrantRef(1, {r0}), bytearray(4), 8)])")
    assert err.type == "ValueError" and "shorter" in err.message


def test_gntshr_errors_name_the_call(peer):
    d1 = peer(1)
    err = d1.error("gs = Gntshr(); gs.close(); gs.share_pages(0, 1)")
    assert err.errno == errno.EBADF
    assert err.call == "xengntshr_share_pages(domid=0, count=1, writable=True)"


def test_share_page_notify_observed_by_the_mapper(peer):
    d0, d1 = peer(0), peer(1)
    port0 = d0.run("ev = Evtchn(); gt = Gnttab(); port = ev.bind_unbound_port(1); result = port")
    ref = d1.run(f"""
        ev = Evtchn(); gs = Gntshr()
        port = ev.bind_interdomain(0, {port0})
        s = gs.share_page_notify(0, notify_offset=100, notify_port=port)
        s.write(96, b'\\x07' * 8)
        result = s.refs[0]
    """)
    assert d0.run(f"m = gt.map_grant_ref(1, {ref}); result = m.read(96, 8).hex()") == "07" * 8
    d0.submit("""
        async def main():
            aev = AsyncEvtchn(ev)
            try:
                return await aev.wait(port, timeout=20)
            finally:
                aev.close()
        result = [asyncio.run(main()), m.read(96, 8).hex()]
    """)
    d1.run("s.unshare()")
    count, data = d0.result()
    assert count >= 1
    assert data == "07070707" + "00" + "070707"
    d0.run("m.unmap()")


def test_set_max_grants(pair):
    # Linux's gntdev dropped SET_MAX_GRANTS (libxengnttab treats ENOTTY as success), and
    # xensim follows: the call is accepted and mapping works as before.
    d0, d1 = pair
    refs = d1.run("s = gs.share_pages(0, 2); result = s.refs")
    assert (
        d0.run(f"""
        small = Gnttab(max_grants=64)
        m = small.map_domain_grant_refs(1, {refs})
        result = m.npages
        m.unmap(); small.close()
    """)
        == 2
    )
    err = d0.error("Gnttab(max_grants=-1)")
    assert err.type == "ValueError"
