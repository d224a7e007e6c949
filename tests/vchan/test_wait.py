"""Blocking waits with a bounded spin (cext/vchan/vchan_wait.c) on local pairs.

The waits release the GIL, so a second Python thread plays the peer.
"""

import errno
import struct
import threading
import time

import pytest

from ncd.vchan import VchanError

LEFT_PROD = 4  # struct vchan_interface: left.prod (client -> server ring)


def later(delay, fn, *args):
    t = threading.Timer(delay, fn, args)
    t.start()
    return t


def test_ready_data_returns_at_once(pair):
    srv, cli = pair
    assert cli.write(b"x" * 100) == 100
    assert srv.wait_data(100, timeout=0) == 100
    assert srv.wait_data(1) == 100
    assert srv.read(100) == b"x" * 100


@pytest.mark.parametrize("spin_us", [0, 20_000])
def test_timeout_returns_zero(pair, spin_us):
    srv, _cli = pair
    t0 = time.monotonic()
    assert srv.wait_data(1, spin_us=spin_us, timeout=0.15) == 0
    dt = time.monotonic() - t0
    assert 0.14 <= dt < 2.0


def test_sleeping_waiter_is_woken_by_a_notification(pair):
    srv, cli = pair
    recv0 = srv.stats()["notify_recv"]
    t = later(0.05, cli.write, b"hello")
    assert srv.wait_data(5, spin_us=0, timeout=5) == 5
    t.join()
    assert srv.read(5) == b"hello"
    assert srv.stats()["notify_recv"] > recv0  # it slept and the event woke it


def test_spinning_waiter_costs_the_peer_no_notification(pair):
    srv, cli = pair
    cli.wait_data(1, timeout=0)  # nothing there; make sure no request is pending
    page = cli.shared_page()
    page[22] = b"\x00"  # cli_notify: clear the client's standing requests of the server
    page[23] = b"\x00"  # srv_notify: the same for the server's view
    sent0 = cli.stats()["notify_sent"]
    t = later(0.02, cli.write, b"spun")
    assert srv.wait_data(4, spin_us=2_000_000, timeout=5) == 4
    t.join()
    assert srv.read(4) == b"spun"
    assert cli.stats()["notify_sent"] == sent0  # the writer saw no request: no event


def test_wait_for_more_than_is_there(pair):
    srv, cli = pair
    cli.write(b"ab")
    t = later(0.05, cli.write, b"cd")
    assert srv.wait_data(4, spin_us=100, timeout=5) == 4
    t.join()
    assert srv.read(4) == b"abcd"


def test_wait_space_until_the_peer_consumes(pair):
    srv, cli = pair
    assert srv.write_size == 8192
    assert srv.write(b"z" * 8192) == 8192
    assert srv.wait_space(1, timeout=0.05) == 0
    t = later(0.05, cli.read, 3000)
    assert srv.wait_space(3000, spin_us=50, timeout=5) == 3000
    t.join()


def test_more_than_the_ring_is_einval(pair):
    srv, _cli = pair
    with pytest.raises(VchanError) as ei:
        srv.wait_data(4097)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(VchanError) as ei:
        srv.wait_space(8193)
    assert ei.value.errno == errno.EINVAL


def test_peer_close_leaves_enough_data(pair):
    srv, cli = pair
    cli.write(b"tail")
    cli.close()
    assert srv.wait_data(4, timeout=1) == 4
    with pytest.raises(VchanError) as ei:
        srv.wait_data(5, timeout=1)
    assert ei.value.errno == errno.EPIPE
    with pytest.raises(VchanError) as ei:
        srv.wait_space(1, timeout=1)
    assert ei.value.errno == errno.EPIPE


@pytest.mark.parametrize("spin_us", [0, 5_000_000])
def test_peer_close_wakes_a_waiter(pair, spin_us):
    srv, cli = pair
    t = later(0.05, cli.close)
    t0 = time.monotonic()
    with pytest.raises(VchanError) as ei:
        srv.wait_data(1, spin_us=spin_us, timeout=10)
    t.join()
    assert ei.value.errno == errno.EPIPE
    assert time.monotonic() - t0 < 2.0  # seen while spinning too, not after the budget


def test_hostile_index_while_waiting(pair):
    srv, cli = pair
    page = cli.shared_page()
    t = later(0.05, struct.pack_into, "<I", page, LEFT_PROD, 1 << 31)
    with pytest.raises(VchanError) as ei:
        srv.wait_data(1, spin_us=1000, timeout=5)
    t.join()
    assert ei.value.errno == errno.EPROTO
    assert srv.close_reason is not None and "producer index" in srv.close_reason
    assert srv.stats()["bad_peer"] == 1
