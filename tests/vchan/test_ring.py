"""Ring I/O of ncd's vchan without Xen: both ends in this process (local pairs).

The control page and rings live in ordinary memory, notifications go to eventfds;
the code under test is the same ring code the Xen channels use.
"""

import asyncio
import errno
import hashlib
import os
import select
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncd.vchan import VchanError, local_pair
from ncd.vchan._lib import ffi, lib
from ncd.vchan.channel import grants_needed, local_client, local_server

# struct vchan_interface offsets (xen/io/libxenvchan.h)
LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD = 0, 4, 8, 12
LEFT_ORDER, RIGHT_ORDER = 16, 18
CLI_LIVE, SRV_LIVE, CLI_NOTIFY, SRV_NOTIFY = 20, 21, 22, 23
GRANTS = 24


def u32(page, off):
    return struct.unpack_from("<I", page, off)[0]


def put32(page, off, val):
    struct.pack_into("<I", page, off, val & 0xFFFFFFFF)


def put16(page, off, val):
    struct.pack_into("<H", page, off, val & 0xFFFF)


def readable(fd):
    return bool(select.select([fd], [], [], 0)[0])


@pytest.mark.parametrize(
    "read_min,write_min,orders,grants",
    [
        (0, 0, (10, 11), 1),
        (1024, 2048, (10, 11), 1),
        (2048, 1024, (11, 10), 1),
        (4096, 1024, (12, 11), 2),
        (1024, 65536, (11, 16), 17),
        (131072, 131072, (17, 17), 65),
        (1 << 20, 1 << 20, (20, 20), 513),
        (5000, 3, (13, 11), 3),
    ],
)
def test_orders_match_libxenvchan(read_min, write_min, orders, grants):
    srv, cli = local_pair(read_min, write_min)
    try:
        page = srv.shared_page()
        assert struct.unpack_from("<HH", page, LEFT_ORDER) == orders
        assert srv.read_size == cli.write_size == 1 << orders[0]
        assert srv.write_size == cli.read_size == 1 << orders[1]
        assert grants_needed(read_min, write_min) == grants
        assert page[CLI_LIVE] == b"\x01" and page[SRV_LIVE] == b"\x01"
    finally:
        cli.close()
        srv.close()


def test_too_big_ring_rejected():
    with pytest.raises(VchanError) as ei:
        local_pair((1 << 20) + 1, 1024)
    assert ei.value.errno == errno.EINVAL
    assert "maximum" in str(ei.value)


def test_server_waits_for_client_then_open():
    srv = local_server(1024, 2048)
    try:
        assert srv.is_open() == 2
        assert srv.write(b"early") == 5  # libxenvchan lets the server write early
        cli = local_client(srv)
        assert srv.is_open() == 1 and cli.is_open() == 1
        assert cli.read(100) == b"early"
        cli.close()
        assert srv.is_open() == 0
    finally:
        srv.close()


def test_full_and_empty(pair):
    srv, cli = pair
    size = cli.write_size  # 4096: client writes left = server's read ring
    assert cli.buffer_space() == size
    assert srv.data_ready() == 0
    assert cli.write(os.urandom(size + 100)) == size
    assert cli.buffer_space() == 0
    assert cli.write(b"x") == 0
    assert cli.stats()["ring_full_waits"] >= 1
    assert srv.data_ready() == size
    assert len(srv.read(size * 2)) == size
    assert srv.read(10) == b""
    assert cli.buffer_space() == size
    assert cli.unconsumed() == 0


def test_wrap_data_and_iov(pair):
    srv, cli = pair
    size = cli.write_size
    first = os.urandom(size - 100)
    assert cli.write(first) == len(first)
    assert srv.read(size) == first
    data = os.urandom(1000)  # crosses the end of the ring
    assert cli.write(data) == 1000
    iov = ffi.new("struct iovec[2]")
    cnt = lib.ncd_vchan_read_iov(srv._h, iov, 4096)
    assert cnt == 2
    assert (iov[0].iov_len, iov[1].iov_len) == (100, 900)
    got = bytes(ffi.buffer(iov[0].iov_base, 100)) + bytes(ffi.buffer(iov[1].iov_base, 900))
    assert got == data
    lib.ncd_vchan_read_commit(srv._h, 10**9)  # clamped to what read_iov handed out
    assert srv.data_ready() == 0
    assert cli.buffer_space() == size


def test_write_iov_partial_commit(pair):
    srv, cli = pair
    iov = ffi.new("struct iovec[2]")
    assert lib.ncd_vchan_write_iov(srv._h, iov, 300) == 1
    assert iov[0].iov_len == 300
    ffi.memmove(iov[0].iov_base, b"A" * 300, 300)
    lib.ncd_vchan_write_commit(srv._h, 120)  # only 120 of the 300 are published
    assert cli.data_ready() == 120
    assert cli.read(1000) == b"A" * 120
    lib.ncd_vchan_write_commit(srv._h, 50)  # the rest of the window is still ours
    assert cli.read(1000) == b"A" * 50
    lib.ncd_vchan_write_commit(srv._h, 10**6)  # clamped to the 130 bytes left
    assert cli.read(1000) == b"A" * 130
    lib.ncd_vchan_write_commit(srv._h, 50)  # window used up: ignored
    assert cli.data_ready() == 0


def test_read_iov_partial_commits(pair):
    srv, cli = pair
    assert cli.write(b"0123456789") == 10
    iov = ffi.new("struct iovec[2]")
    assert lib.ncd_vchan_read_iov(srv._h, iov, 100) == 1
    lib.ncd_vchan_read_commit(srv._h, 4)
    assert cli.buffer_space() == cli.write_size - 6
    lib.ncd_vchan_read_commit(srv._h, 100)  # clamped to the 6 left
    assert cli.buffer_space() == cli.write_size
    assert srv.data_ready() == 0


def test_stream_write_ends_the_iov_window(pair):
    """vchan.h: write() is a write_iov + commit of its own, so a window handed out
    before is gone; a late commit publishes nothing (the fuzz_ring finding
    corpus/ring/regress-commit-after-write: before the restructure it published
    prod past a full ring)."""
    srv, cli = pair
    size = cli.write_size
    iov = ffi.new("struct iovec[2]")
    assert lib.ncd_vchan_write_iov(cli._h, iov, size) == 1
    lib.ncd_vchan_write_commit(cli._h, 2)  # 2 of the window published, size - 2 left
    assert cli.write(os.urandom(size)) == size - 2  # ring full
    page = srv.shared_page()
    prod = u32(page, LEFT_PROD)
    lib.ncd_vchan_write_commit(cli._h, 2)
    assert u32(page, LEFT_PROD) == prod  # nothing published
    assert u32(page, LEFT_PROD) - u32(page, LEFT_CONS) == size
    assert cli.buffer_space() == 0 and cli.unconsumed() == size
    assert cli.close_reason is None and srv.data_ready() == size


def test_stream_read_ends_the_iov_window(pair):
    srv, cli = pair
    assert cli.write(b"0123456789") == 10
    iov = ffi.new("struct iovec[2]")
    assert lib.ncd_vchan_read_iov(srv._h, iov, 100) == 1
    lib.ncd_vchan_read_commit(srv._h, 4)
    assert srv.read(100) == b"456789"
    page = srv.shared_page()
    lib.ncd_vchan_read_commit(srv._h, 6)  # the window ended with read(): ignored
    assert u32(page, LEFT_CONS) == u32(page, LEFT_PROD)
    assert srv.data_ready() == 0 and srv.close_reason is None
    assert cli.buffer_space() == cli.write_size


def test_indices_wrap_past_2_32():
    srv, cli = local_pair(1 << 20, 1 << 20)
    try:
        iov = ffi.new("struct iovec[2]")
        size = 1 << 20
        total = 0
        target = (1 << 32) - 3 * size - 12345
        while total < target:  # advance both indices without copying
            step = min(size, target - total)
            assert lib.ncd_vchan_write_iov(cli._h, iov, step) >= 1
            lib.ncd_vchan_write_commit(cli._h, step)
            assert lib.ncd_vchan_read_iov(srv._h, iov, step) >= 1
            lib.ncd_vchan_read_commit(srv._h, step)
            total += step
        h_in, h_out = hashlib.sha256(), hashlib.sha256()
        for _ in range(8):  # 8 MiB across the 2^32 boundary, real data
            blob = os.urandom(size - 7)
            h_in.update(blob)
            assert cli.write(blob) == len(blob)
            h_out.update(srv.read(size))
        assert h_in.digest() == h_out.digest()
        assert u32(srv.shared_page(), LEFT_PROD) < size * 16  # wrapped
        assert srv.close_reason is None and cli.close_reason is None
    finally:
        cli.close()
        srv.close()


def test_notify_only_when_asked(pair):
    srv, cli = pair
    page = srv.shared_page()
    assert page[SRV_NOTIFY][0] == 1  # VCHAN_NOTIFY_WRITE, set by the client at connect
    fd = cli.fileno()
    while readable(fd):
        cli.wait()
    sent = srv.stats()["notify_sent"]
    assert srv.write(b"one") == 3  # the client asked at connect: notify
    assert srv.stats()["notify_sent"] == sent + 1
    assert readable(fd)
    cli.wait()
    assert cli.stats()["notify_recv"] == 1
    assert srv.write(b"two") == 3  # nobody asked again: no notify
    assert srv.stats()["notify_sent"] == sent + 1
    assert not readable(fd)
    assert cli.read(100) == b"onetwo"  # drained: asks to be told about more
    assert page[SRV_NOTIFY][0] & 1
    assert srv.write(b"3") == 1
    assert readable(fd)


def test_peer_close_keeps_data_readable(pair):
    srv, cli = pair
    assert cli.write(b"last words") == 10
    cli.close()
    assert srv.is_open() == 0
    assert srv.read(100) == b"last words"
    with pytest.raises(VchanError) as ei:
        srv.write(b"x")
    assert ei.value.errno == errno.EPIPE
    assert srv.close_reason is None


def test_server_close_seen_by_client(pair):
    srv, cli = pair
    assert srv.write(b"bye") == 3
    srv.close()
    assert cli.is_open() == 0
    assert cli.read(10) == b"bye"
    with pytest.raises(VchanError) as ei:
        cli.write(b"x")
    assert ei.value.errno == errno.EPIPE


# ---- hostile peers --------------------------------------------------------------


def expect_bad(v, reason_part):
    assert v.close_reason is not None and reason_part in v.close_reason
    assert v.stats()["bad_peer"] == 1
    assert v.is_open() == 0
    with pytest.raises(VchanError) as ei:
        v.read(10)
    assert ei.value.errno == errno.EPROTO
    with pytest.raises(VchanError) as ei:
        v.write(b"x")
    assert ei.value.errno == errno.EPROTO


@pytest.mark.parametrize("delta", [4097, 1 << 31, 0xFFFFFFFF])
def test_hostile_prod_beyond_ring(pair, delta):
    srv, cli = pair
    page = cli.shared_page()
    put32(page, LEFT_PROD, delta)  # client "produced" more than the ring holds
    with pytest.raises(VchanError) as ei:
        srv.data_ready()
    assert ei.value.errno == errno.EPROTO
    expect_bad(srv, "producer index")
    assert page[SRV_LIVE] == b"\x00"  # the server closed its side
    assert cli.is_open() == 0


@pytest.mark.parametrize("start", [0, 0xFFFFFFF0], ids=["from-0", "across-2^32"])
@pytest.mark.parametrize(
    "back,reason",
    [(4, "producer index moved backwards"), (40, "moved back behind the consumer index")],
    ids=["behind-seen", "behind-cons"],
)
def test_hostile_prod_moving_backwards(start, back, reason):
    """A producer seen at P and later behind P is fatal: ahead of our cons (bytes taken
    back, a record cut short) or behind it; with the indices crossing 2^32 as well."""
    srv = local_server(4096, 8192)
    page = srv.shared_page()
    for off in (RIGHT_CONS, RIGHT_PROD):  # the client reads the right ring from start on
        put32(page, off, start)
    cli = local_client(srv)
    try:
        put32(page, RIGHT_PROD, start + 32)  # the peer (the server's side) published 32
        assert cli.data_ready() == 32
        assert cli.data_ready() == 32  # the same producer again is no move
        assert len(cli.read(24)) == 24
        assert u32(page, RIGHT_CONS) == (start + 24) & 0xFFFFFFFF
        put32(page, RIGHT_PROD, start + 32 - back)
        with pytest.raises(VchanError) as ei:
            cli.data_ready()
        assert ei.value.errno == errno.EPROTO
        expect_bad(cli, reason)
        assert page[CLI_LIVE] == b"\x00"  # the client closed its side
    finally:
        cli.close()
        srv.close()


def test_prod_moving_forward_after_a_look_is_accepted(pair):
    """The rule does not bite an honest writer: every look sees prod at or after the last."""
    srv, cli = pair
    for n in (10, 0, 4000, 96):
        assert cli.write(b"x" * n) == n
        assert srv.data_ready() == n
        assert srv.read(n) == b"x" * n
    assert srv.close_reason is None


def test_hostile_cons_beyond_written(pair):
    srv, cli = pair
    assert srv.write(b"abc") == 3
    put32(cli.shared_page(), RIGHT_CONS, 1000)  # consumed more than was written
    with pytest.raises(VchanError):
        srv.write(b"more")
    expect_bad(srv, "consumer index")


def test_hostile_own_index_scribbled_is_ignored(pair):
    srv, cli = pair
    page = srv.shared_page()
    assert cli.write(b"hello") == 5
    put32(page, LEFT_CONS, 0xDEADBEEF)  # the peer scribbles *our* index
    assert srv.read(10) == b"hello"  # we keep our private copy
    assert u32(page, LEFT_CONS) == 5
    assert srv.close_reason is None


@pytest.mark.parametrize("value", [3, 7, 0xFF])
def test_hostile_cli_live(pair, value):
    srv, cli = pair
    cli.shared_page()[CLI_LIVE] = bytes([value])
    assert srv.is_open() == 0
    expect_bad(srv, "live flag")


def test_hostile_srv_live_two(pair):
    srv, cli = pair
    srv.shared_page()[SRV_LIVE] = b"\x02"
    assert cli.is_open() == 0
    expect_bad(cli, "srv_live")


def test_closed_peer_cannot_reopen(pair):
    srv, cli = pair
    page = srv.shared_page()
    page[CLI_LIVE] = b"\x00"
    assert srv.is_open() == 0
    page[CLI_LIVE] = b"\x01"
    assert srv.is_open() == 0
    page[CLI_LIVE] = b"\x02"
    assert srv.is_open() == 0


def test_cli_live_back_to_two_is_hostile(pair):
    srv, cli = pair
    assert srv.is_open() == 1
    srv.shared_page()[CLI_LIVE] = b"\x02"
    assert srv.is_open() == 0
    assert "went back to 2" in srv.close_reason


@pytest.mark.parametrize(
    "left,right,msg",
    [
        (9, 11, "orders"),
        (21, 12, "orders"),
        (12, 0xFFFF, "orders"),
        (0, 0, "orders"),
        (10, 10, "both rings"),
        (11, 11, "both rings"),
        (20, 10, "do not fit"),  # 256 grants cannot fit before the ring at 1024
        (20, 11, None),  # 256 grants fit before 2048 (but are not ours: no such grant)
    ],
)
def test_hostile_orders_rejected_at_connect(left, right, msg):
    srv = local_server(65536, 65536)
    try:
        page = srv.shared_page()
        put16(page, LEFT_ORDER, left)
        put16(page, RIGHT_ORDER, right)
        with pytest.raises(VchanError) as ei:
            local_client(srv)
        if msg:
            assert msg in str(ei.value)
            assert ei.value.errno == errno.EPROTO
    finally:
        srv.close()


def test_hostile_grant_refs_rejected():
    srv = local_server(65536, 65536)
    try:
        put32(srv.shared_page(), GRANTS + 4 * 3, 0xFFFFFFFF)
        with pytest.raises(VchanError) as ei:
            local_client(srv)
        assert "no such grant" in str(ei.value)
    finally:
        srv.close()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["cw", "sr", "sw", "cr", "poke", "iov"]),
            st.integers(0, 70000),
            st.integers(0, 23),
            st.binary(min_size=1, max_size=4),
        ),
        max_size=40,
    )
)
def test_fuzz_control_page_never_escapes_bounds(ops):
    """Random operations interleaved with garbage in the indices/orders/flags/notify bytes:
    every call returns a sane value or a clean EPROTO/EPIPE; sizes never change."""
    srv, cli = local_pair(2048, 65536)
    sizes = (srv.read_size, srv.write_size)
    try:
        for op, n, off, junk in ops:
            who = srv if op[0] == "s" else cli
            try:
                if op in ("cw", "sw"):
                    got = who.write(b"z" * n)
                    assert 0 <= got <= min(n, who.write_size)
                elif op in ("cr", "sr"):
                    got = len(who.read(n))
                    assert 0 <= got <= min(n, who.read_size)
                elif op == "poke":
                    page = srv.shared_page()
                    junk = junk[: 24 - off]
                    page[off : off + len(junk)] = junk
                else:
                    iov = ffi.new("struct iovec[2]")
                    cnt = lib.ncd_vchan_read_iov(srv._h, iov, n)
                    if cnt > 0:
                        total = sum(iov[i].iov_len for i in range(cnt))
                        assert total <= min(n, srv.read_size)
                        lib.ncd_vchan_read_commit(srv._h, total)
            except VchanError as exc:
                assert exc.errno in (errno.EPROTO, errno.EPIPE)
            for v in (srv, cli):
                v.is_open()
                r = lib.ncd_vchan_data_ready(v._h)
                assert -1 <= r <= v.read_size
        assert (srv.read_size, srv.write_size) == sizes
    finally:
        cli.close()
        srv.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9000), min_size=1, max_size=30), st.integers(1, 9000))
def test_stream_integrity_random_chunks(chunks, read_chunk):
    srv, cli = local_pair(1024, 8192)
    try:
        sent = b"".join(os.urandom(c) for c in chunks)
        pos, got = 0, bytearray()
        while len(got) < len(sent):
            pos += srv.write(memoryview(sent)[pos : pos + 5000])
            got += cli.read(read_chunk)
        assert bytes(got) == sent
    finally:
        cli.close()
        srv.close()


def test_async_transfer_both_ways():
    srv, cli = local_pair(8192, 65536)
    payload_a = os.urandom(3 << 20)
    payload_b = os.urandom(2 << 20)

    async def reader(v, n):
        h, got = hashlib.sha256(), 0
        while got < n:
            chunk = await v.read_async(65536)
            assert chunk
            h.update(chunk)
            got += len(chunk)
        return h.hexdigest()

    async def main():
        results = await asyncio.gather(
            srv.write_all_async(payload_a),
            cli.write_all_async(payload_b),
            reader(cli, len(payload_a)),
            reader(srv, len(payload_b)),
        )
        await srv.drain_async()
        return results[2:]

    try:
        ra, rb = asyncio.run(main())
        assert ra == hashlib.sha256(payload_a).hexdigest()
        assert rb == hashlib.sha256(payload_b).hexdigest()
        assert srv.unconsumed() == 0
    finally:
        cli.close()
        srv.close()


def test_async_read_sees_eof_after_peer_close():
    srv, cli = local_pair(1024, 2048)

    async def main():
        task = asyncio.ensure_future(cli.read_async(100))
        await asyncio.sleep(0.01)
        srv.write(b"tail")
        first = await task
        srv.close()
        return first, await cli.read_async(100)

    try:
        assert asyncio.run(main()) == (b"tail", b"")
    finally:
        cli.close()
