"""The foreign-page tracker on xensim: a vchan between two domains registers exactly the
pages its mapping side (the client) mapped, and a frame sitting in a mapped ring page is
classified foreign with its origin (domid, gref): granting that page onward fails with
EPERM (Netchannel2 rule), a grant copy from the origin's grant to a third domain works.

dom1 serves the vchan (grants), dom0 maps it (like ncd's backend), dom2 is the third domain.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from tests.simworld import SimWorld
from tests.xen.peers import Peer

PATH = "/local/domain/1/data/trk"
SRV_READ, SRV_WRITE = 8192, 16384  # left ring: 2 pages, right ring: 4 pages
MAPPED = 1 + 2 + 4
FILL = 4000  # puts the frame across the first and second right-ring pages
FRAME_LEN = 200

SERVER = f"""
from ncd.vchan.channel import VchanServer
from ncd.vchan._lib import ffi, lib
from ncd.xen.xenstore import XenStore
xs = XenStore()
v = VchanServer.create(xs, 0, {PATH!r}, {SRV_READ}, {SRV_WRITE})
page = ffi.cast("uint32_t *", lib.ncd_vchan_shared_page(v._handle()))
result = {{"ctrl": v.gref, "grants": [int(page[6 + i]) for i in range(6)],
          "tracked": v.tracked_pages}}
"""

CLIENT = f"""
import ctypes, time
from ncd.vchan.channel import VchanClient
from ncd.vchan._lib import ffi, lib
from ncd.xen.xenstore import XenStore
xs = XenStore()
v = VchanClient.connect(xs, 1, {PATH!r})
trk = lib.ncd_tracker_process()

def classify(addr, n):
    segs = ffi.new("struct ncd_mem_origin[]", 8)
    k = lib.ncd_tracker_classify_range(ffi.NULL, ffi.cast("void *", addr), n, segs, 8)
    return [[s.foreign, s.domid, s.gref, s.offset, s.len] for s in segs[0:k]]

def wait_data(n):
    deadline = time.monotonic() + 10
    while v.data_ready() < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return v.data_ready()

ctrl_addr = int(ffi.cast("uintptr_t", lib.ncd_vchan_shared_page(v._handle())))
result = {{"tracked": v.tracked_pages, "total": int(lib.ncd_tracker_count(trk)),
          "ctrl": classify(ctrl_addr + 20, 4)}}
"""

GRANT_EXISTING = """
g = ctypes.CDLL("libxengnttab.so.1", use_errno=True)
g.xengntshr_open.restype = ctypes.c_void_p
g.xengntshr_open.argtypes = [ctypes.c_void_p, ctypes.c_uint]
g.xengntshr_close.argtypes = [ctypes.c_void_p]
g.xensim_grant_existing.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32,
                                    ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]
g.xensim_end_grant.argtypes = [ctypes.c_void_p, ctypes.c_uint32]

def grant_existing(addr, domid):
    xgs = g.xengntshr_open(None, 0)
    ref = ctypes.c_uint32()
    ctypes.set_errno(0)
    rc = g.xensim_grant_existing(xgs, addr, domid, 0, ctypes.byref(ref))
    en = ctypes.get_errno()
    if rc == 0:
        g.xensim_end_grant(xgs, ref.value)
    g.xengntshr_close(xgs)
    return [rc, en]
"""


@pytest.fixture
def doms(sim: SimWorld) -> Iterator[dict[int, Peer]]:
    ps = {d: Peer(sim, d) for d in (1, 0, 2)}
    try:
        yield ps
    finally:
        for p in ps.values():
            p.close()


def test_vchan_client_tracks_its_mapped_pages_and_forwards_by_copy(doms: dict[int, Peer]) -> None:
    srv, cli, third = doms[1], doms[0], doms[2]
    s = srv.run(SERVER)
    assert s["tracked"] == 0  # the granting side maps nothing foreign
    left, right = s["grants"][:2], s["grants"][2:]

    c = cli.run(CLIENT)
    assert c["tracked"] == MAPPED and c["total"] == MAPPED
    # the control page is foreign: dom1's page under the gref published in xenstore
    assert c["ctrl"] == [[1, 1, s["ctrl"], 20, 4]]

    # every mapped page is registered with its own gref, ctxt = this vchan
    entries = cli.run("""
h = v._handle()
wr = ffi.new("struct iovec[2]")
lib.ncd_vchan_write_iov(h, wr, 8192)
result = classify(int(ffi.cast("uintptr_t", wr[0].iov_base)), 8192)
""")
    assert entries == [[1, 1, left[0], 0, 4096], [1, 1, left[1], 0, 4096]]
    assert cli.run("result = int(lib.ncd_tracker_count_ctxt(trk, v._handle()))") == MAPPED

    # a frame in the read ring, across the first two right-ring pages
    srv.run(f"result = v.write(b'f' * {FILL})")
    assert cli.run(f"result = wait_data({FILL})") == FILL
    assert cli.run(f"result = len(v.read({FILL}))") == FILL
    frame = bytes((i * 7 + 3) & 0xFF for i in range(FRAME_LEN))
    assert srv.run(f"result = v.write(bytes.fromhex({frame.hex()!r}))") == FRAME_LEN
    assert cli.run(f"result = wait_data({FRAME_LEN})") == FRAME_LEN
    got = cli.run(f"""
iov = ffi.new("struct iovec[2]")
assert lib.ncd_vchan_read_iov(v._handle(), iov, {FRAME_LEN}) == 1
frame_addr = int(ffi.cast("uintptr_t", iov[0].iov_base))
assert iov[0].iov_len == {FRAME_LEN}
result = {{"segs": classify(frame_addr, {FRAME_LEN}),
          "bytes": bytes(ffi.buffer(iov[0].iov_base, {FRAME_LEN})).hex()}}
""")
    assert bytes.fromhex(got["bytes"]) == frame
    # (a) foreign, from dom1, under the two right-ring grants, at the right offsets
    first = 4096 - FILL
    assert got["segs"] == [[1, 1, right[0], FILL, first], [1, 1, right[1], 0, FRAME_LEN - first]]

    # (b) granting the page onward to dom2 is refused: it is dom1's page
    cli.run(GRANT_EXISTING)
    assert cli.run("result = grant_existing(frame_addr, 2)") == [-1, errno.EPERM]
    # ...while a page dom0 owns is local to the tracker and may be granted again
    own = cli.run("""
own = Gntshr().share_pages(1, 1, True)
result = [classify(own.address, 16), grant_existing(own.address, 2)]
own.unshare()
""")
    assert own == [[[0, 0, 0, 0, 16]], [0, 0]]

    # (c) grant copy from the origin's (domid, gref) into a page dom2 granted to dom0
    dst_ref = third.run("sp = Gntshr().share_pages(0, 1, True); result = sp.refs[0]")
    statuses = cli.run(f"""
gt = Gnttab()
segs = classify(frame_addr, {FRAME_LEN})
copies, done = [], 0
for foreign, dom, gref, off, n in segs:
    assert foreign
    copies.append(CopySegment(GrantRef(dom, gref, off), GrantRef(2, {dst_ref}, done), n))
    done += n
result = [int(x) for x in gt.grant_copy(copies)]
gt.close()
lib.ncd_vchan_read_commit(v._handle(), {FRAME_LEN})
""")
    assert statuses == [0, 0]
    assert bytes.fromhex(third.run(f"result = sp.read(0, {FRAME_LEN}).hex()")) == frame

    # closing the vchan unregisters every page
    assert cli.run("v.close(); result = [v.tracked_pages, int(lib.ncd_tracker_count(trk))]") == [
        0, 0]
    srv.run("v.close(); result = 0")
    third.run("sp.unshare(); result = 0")


def test_in_page_rings_track_only_the_control_page(doms: dict[int, Peer]) -> None:
    srv, cli = doms[1], doms[0]
    srv.run(f"""
from ncd.vchan.channel import VchanServer
from ncd.xen.xenstore import XenStore
xs = XenStore()
v = VchanServer.create(xs, 0, {PATH!r}, 1024, 2048)
result = 0
""")
    c = cli.run(f"""
from ncd.vchan.channel import VchanClient
from ncd.vchan._lib import lib
from ncd.xen.xenstore import XenStore
v = VchanClient.connect(XenStore(), 1, {PATH!r})
result = [v.tracked_pages, int(lib.ncd_tracker_count(lib.ncd_tracker_process()))]
v.close()
result.append(int(lib.ncd_tracker_count(lib.ncd_tracker_process())))
""")
    assert c == [1, 1, 0]
    srv.run("v.close(); result = 0")
