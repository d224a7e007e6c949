"""Channel state the C side records and Python reads: the peer's live flag once seen
gone stays gone (compare-and-swap), failed notifications are counted, and the reason
for closing a hostile channel reaches Python (exceptions, the pump's reason) while
nothing is printed on stderr."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time

import pytest

from ncd.vchan import VchanError, local_pair
from ncd.vchan.channel import local_server
from ncd.vchan.pump import FramePump, PumpState

from .simhelp import peers, vchan_path

LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD = 0, 4, 8, 12
CLI_LIVE, SRV_LIVE = 20, 21


def put32(page, off: int, v: int) -> None:
    page[off : off + 4] = struct.pack("<I", v & 0xFFFFFFFF)


# ---- peer_seen: GONE is final ----------------------------------------------------


def test_gone_before_the_client_came_is_never_overwritten() -> None:
    srv = local_server(4096, 4096)
    try:
        page = srv.shared_page()
        assert srv.is_open() == 2  # NOT_SEEN
        page[CLI_LIVE] = b"\x00"
        assert srv.is_open() == 0  # GONE
        for live in (b"\x01", b"\x02", b"\x01"):
            page[CLI_LIVE] = live
            assert srv.is_open() == 0
        assert srv.close_reason is None  # a latched close, not a hostile value
    finally:
        srv.close()


def test_gone_after_live_is_never_overwritten(pair) -> None:
    srv, cli = pair
    page = srv.shared_page()
    assert srv.is_open() == 1 and cli.is_open() == 1  # LIVE on both ends
    page[CLI_LIVE] = b"\x00"
    assert srv.is_open() == 0
    page[CLI_LIVE] = b"\x01"  # the client "comes back": it does not
    assert srv.is_open() == 0
    with pytest.raises(VchanError) as ei:
        srv.write(b"x")
    assert ei.value.errno == errno.EPIPE
    page[SRV_LIVE] = b"\x00"
    assert cli.is_open() == 0
    page[SRV_LIVE] = b"\x01"
    assert cli.is_open() == 0


def _look(srv, start: threading.Barrier, reopened: list[bool]) -> None:
    start.wait()
    zero = False
    for _ in range(2000):
        r = srv.is_open()
        if zero and r != 0:
            reopened.append(True)
        zero = zero or r == 0


def test_gone_stored_while_other_threads_see_live() -> None:
    """Threads look at the live flag (NOT_SEEN -> LIVE) while it drops to 0: whatever
    the interleaving, once a look returned 0 every later look returns 0."""
    for _ in range(50):
        srv = local_server(4096, 4096)
        page = srv.shared_page()
        page[CLI_LIVE] = b"\x01"  # as a client does at connect; nobody has looked yet
        start = threading.Barrier(3)
        reopened: list[bool] = []
        threads = [threading.Thread(target=_look, args=(srv, start, reopened)) for _ in range(2)]
        for t in threads:
            t.start()
        start.wait()
        page[CLI_LIVE] = b"\x00"
        assert srv.is_open() == 0
        page[CLI_LIVE] = b"\x01"
        for t in threads:
            t.join()
        assert not reopened
        assert srv.is_open() == 0
        srv.close()


# ---- failed notifications are counted ----------------------------------------------


def test_failed_notify_is_counted_local(pair) -> None:
    srv, cli = pair
    before = srv.stats()
    assert before["notify_failed"] == 0
    # the client's eventfd (the server notifies it) becomes a read-only fd: EBADF
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        os.dup2(null, cli.fileno())
    finally:
        os.close(null)
    assert srv.write(b"data") == 4  # the client asked at connect: a notify, which fails
    after = srv.stats()
    assert after["notify_failed"] == 1
    assert after["notify_sent"] == before["notify_sent"]
    assert cli.read(4) == b"data"  # the data went through all the same


def test_failed_notify_is_counted_xensim(sim) -> None:
    path = vchan_path(1, "notifyfail")
    with peers(sim, 1, 2) as (srv, cli):
        srv.call(f"server 2 {path} 4096 4096")
        cli.call(f"connect 1 {path}")
        assert srv.call("wait_open 5")["open"] == 1
        assert srv.call("status")["stats"]["notify_failed"] == 0
        assert srv.call("break_evtchn")["broken"] >= 1
        assert srv.call("write 100 2")["left"] == 0  # the client asked: a notify
        stats = srv.call("status")["stats"]
        assert stats["notify_failed"] >= 1
        assert cli.call("read 100 5")["got"] == 100  # the data is in the ring


# ---- reasons reach Python, nothing goes to stderr --------------------------------


def test_hostile_reason_in_the_exception_not_on_stderr(pair, capfd) -> None:
    srv, cli = pair
    put32(srv.shared_page(), LEFT_PROD, 0x7FFFFFFF)
    with pytest.raises(VchanError) as ei:
        srv.read(10)
    assert ei.value.errno == errno.EPROTO
    assert "hostile peer: read ring: producer index" in str(ei.value)
    assert "producer index" in srv.close_reason
    with pytest.raises(VchanError) as ei:
        srv.write(b"x")  # poisoned for good, same reason
    assert "producer index" in str(ei.value)
    assert capfd.readouterr().err == ""


def test_pump_reason_names_the_vchan_reason_not_on_stderr(capfd) -> None:
    srv, cli = local_pair(65536, 65536)
    app, mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pump = FramePump.start(srv, mine.fileno())
    try:
        put32(srv.shared_page(), LEFT_PROD, 0x7FFFFFFF)  # the client "produced" too much
        os.write(srv.fileno(), struct.pack("=Q", 1))  # an event for the pump, as a notify
        assert select.select([pump.done_fd()], [], [], 10)[0], "pump did not stop"
        deadline = time.monotonic() + 5
        while pump.state == PumpState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pump.state == PumpState.BAD_PEER
        assert "producer index" in pump.reason
        assert pump.reason.count("producer index") == 1
    finally:
        pump.close()
        cli.close()
        srv.close()
        app.close()
        mine.close()
    assert capfd.readouterr().err == ""
