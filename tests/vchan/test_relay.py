"""The ncd-vchan relay loop on an in-memory pair: EOF and peer-close semantics."""

import hashlib
import os
import threading

from ncd.vchan import local_pair
from ncd.vchan.relay import relay


def pump_client(cli, data, expect_out):
    """Client side: send data, read expect_out bytes; returns the bytes read."""
    got = bytearray()
    view = memoryview(data)
    while view or len(got) < expect_out:
        if view:
            view = view[cli.write(view):]
        got += cli.read(1 << 20)
    return bytes(got)


def test_relay_stdin_eof_waits_for_consumption():
    srv, cli = local_pair(8192, 65536)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    payload = os.urandom(5 << 20)
    t = threading.Thread(target=relay, args=(srv, in_r, out_w))
    t.start()
    try:
        writer = threading.Thread(target=lambda: (os.write(in_w, payload), os.close(in_w)))
        writer.start()
        got = bytearray()
        while len(got) < len(payload):
            got += cli.read(1 << 20)
        writer.join()
        t.join(timeout=30)
        assert not t.is_alive()
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert srv.unconsumed() == 0
    finally:
        t.join(timeout=5)
        for fd in (in_r, out_r, out_w):
            os.close(fd)
        cli.close()
        srv.close()


def test_relay_peer_close_drains_ring():
    srv, cli = local_pair(65536, 8192)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    payload = os.urandom(3 << 20)
    got = bytearray()

    def collect():
        while True:
            b = os.read(out_r, 1 << 20)
            if not b:
                return
            got.extend(b)

    reader = threading.Thread(target=collect)
    reader.start()
    t = threading.Thread(target=relay, args=(srv, in_r, out_w))
    t.start()
    try:
        pump_client(cli, payload, 0)
        cli.close()  # with data possibly still in the ring
        t.join(timeout=30)
        assert not t.is_alive()
        os.close(out_w)
        out_w = -1
        reader.join(timeout=30)
        assert bytes(got) == payload
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)
        srv.close()
