"""Quotas, malformed packets and hostile clients; Xen's own test-xenstore suite."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sim.xs_fixtures import XenstoredProcess, xenstored_fixture  # noqa: F401
from xensim.xenstored.client import XsClient
from xensim.xenstored.connection import Connection
from xensim.xenstored.handlers import dispatch
from xensim.xenstored.server import XenstoreServer
from xensim.xenstored.wire import HEADER, Message, Op, XsError

TEST_XENSTORE = Path("/usr/lib/xen-4.17/bin/test-xenstore")


def guest(x: XenstoredProcess, domid: int) -> None:
    with x.client(0) as c:
        c.mkdir(f"/local/domain/{domid}")
        c.set_perms(f"/local/domain/{domid}", ["n0", f"r{domid}"])
        c.mkdir(f"/local/domain/{domid}/data")
        c.set_perms(f"/local/domain/{domid}/data", [f"n{domid}"])
    x.introduce(domid)


def err(fn, *args) -> str:  # noqa: ANN001
    with pytest.raises(XsError) as ei:
        fn(*args)
    return ei.value.name


# -- quotas -------------------------------------------------------------------------------


def count_nodes(c: XsClient, path: str) -> int:
    return 1 + sum(count_nodes(c, f"{path}/{k}") for k in c.directory(path))


def test_node_quota(xenstored: XenstoredProcess) -> None:
    guest(xenstored, 1)
    with xenstored.client(1) as g:
        # nested, so that no directory node reaches the node size quota first
        with pytest.raises(XsError) as ei:
            for i in range(1100):
                g.write(f"data/d{i // 30}/n{i % 30}", "")
        assert ei.value.name == "ENOSPC"
        with xenstored.client(0) as c:
            assert count_nodes(c, "/local/domain/1/data") == 1000  # all owned by dom1
        assert not g.exists(f"data/d{i // 30}/n{i % 30}")  # the failed write left nothing
        assert err(g.mkdir, "data/more") == "ENOSPC"
        g.rm("data/d0/n0")  # removing frees quota
        g.write("data/again", "")
    with xenstored.client(0) as c:  # dom0 has no quota
        for i in range(1100):
            c.write(f"/big/d{i // 30}/n{i % 30}", "")
        assert count_nodes(c, "/big") == 1 + 37 + 1100


def test_node_size_and_perm_quotas(xenstored: XenstoredProcess) -> None:
    guest(xenstored, 1)
    with xenstored.client(1) as g:
        g.write("data/ok", "x" * 1900)
        assert err(g.write, "data/big", "x" * 2048) == "ENOSPC"
        assert not g.exists("data/big")
        assert err(g.set_perms, "data/ok", ["n1", "r2", "r3", "r4", "r5", "r6"]) == "ENOSPC"
        g.set_perms("data/ok", ["n1", "r2", "r3", "r4", "r5"])
    with xenstored.client(0) as c:
        c.write("/local/domain/1/data/dom0big", "y" * 4000)
        assert c.read("/local/domain/1/data/dom0big") == b"y" * 4000


def test_watch_and_transaction_quotas(xenstored: XenstoredProcess) -> None:
    guest(xenstored, 1)
    with xenstored.client(1) as g:
        for i in range(128):
            g.watch("data", f"t{i}")
        assert err(g.watch, "data", "one-too-many") == "E2BIG"
        assert err(g.watch, "data", "t0") == "EEXIST"
        g.unwatch("data", "t0")
        g.watch("data", "t-new")
        assert err(g.unwatch, "data", "nope") == "ENOENT"
        txs = [g.transaction_start() for _ in range(10)]
        assert err(g.transaction_start) == "ENOSPC"
        g.transaction_end(txs[0], commit=False)
        g.transaction_start()
    with xenstored.client(0) as c:
        for i in range(200):
            c.watch("/", f"w{i}")
        for _ in range(20):
            c.transaction_start()


# -- malformed packets ---------------------------------------------------------------------


class Raw:
    def __init__(self, path: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(5)
        self.s.connect(str(path))

    def send(self, type_: int, payload: bytes, req_id: int = 7, tx_id: int = 0) -> None:
        self.s.sendall(HEADER.pack(type_, req_id, tx_id, len(payload)) + payload)

    def recv(self) -> Message | None:
        hdr = b""
        while len(hdr) < 16:
            chunk = self.s.recv(16 - len(hdr))
            if not chunk:
                return None
            hdr += chunk
        t, r, x, n = HEADER.unpack(hdr)
        body = b""
        while len(body) < n:
            chunk = self.s.recv(n - len(body))
            assert chunk
            body += chunk
        return Message(t, r, x, body)

    def error(self, type_: int, payload: bytes, tx_id: int = 0) -> str:
        self.send(type_, payload, req_id=42, tx_id=tx_id)
        m = self.recv()
        assert m is not None and m.type == Op.ERROR and m.req_id == 42 and m.tx_id == tx_id
        return m.payload.rstrip(b"\0").decode()

    def closed(self) -> bool:
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.s.close()


def assert_serving(x: XenstoredProcess) -> None:
    with x.client(0) as c:
        c.write("/alive", "yes")
        assert c.read("/alive") == b"yes"
    assert x.alive()


def test_malformed_requests_get_errors(xenstored: XenstoredProcess) -> None:
    x = xenstored
    r = Raw(x.socket(0))
    try:
        assert r.error(99, b"") == "ENOSYS"
        assert r.error(20, b"") == "ENOSYS"  # XS_RESTRICT, removed
        assert r.error(Op.WATCH_EVENT, b"a\0b\0") == "ENOSYS"
        assert r.error(Op.ERROR, b"") == "ENOSYS"
        assert r.error(0xFFFF, b"") == "ENOSYS"
        assert r.error(Op.READ, b"/tool") == "EINVAL"  # no NUL
        assert r.error(Op.READ, b"") == "EINVAL"
        assert r.error(Op.READ, b"/tool\0extra\0") == "EINVAL"
        assert r.error(Op.WRITE, b"no-nul") == "EINVAL"
        for bad in (b"//a", b"/a/", b"/a b", b"/a\xff", b"@x", b"/" + b"a" * 3100):
            assert r.error(Op.WRITE, bad + b"\0v") == "EINVAL", bad
        assert r.error(Op.READ, b"/tool", tx_id=1234) == "ENOENT"
        assert r.error(Op.TRANSACTION_END, b"T\0") == "ENOENT"
        assert r.error(Op.TRANSACTION_END, b"X\0", tx_id=0) == "EINVAL"
        assert r.error(Op.SET_PERMS, b"/tool\0") == "EINVAL"
        assert r.error(Op.SET_PERMS, b"/tool\0x0\0") == "EINVAL"
        assert r.error(Op.SET_PERMS, b"/tool\0r\0") == "EINVAL"
        assert r.error(Op.WATCH, b"/tool\0") == "EINVAL"
        assert r.error(Op.DIRECTORY_PART, b"/tool\0") == "EINVAL"
        assert r.error(Op.INTRODUCE, b"5\0") == "EINVAL"
        assert r.error(Op.INTRODUCE, b"0\0 0\0 1\0") == "EINVAL"
        assert r.error(Op.RELEASE, b"33\0") == "ENOENT"
        assert r.error(Op.RM, b"/\0") == "EINVAL"
        assert r.error(Op.RM, b"/no/such/parent\0") == "ENOENT"
        # a full-size payload is fine; the reply keeps req_id/tx_id
        r.send(Op.WRITE, b"/big\0" + b"v" * (4096 - 5), req_id=9)
        m = r.recv()
        assert m is not None and (m.type, m.req_id, m.payload) == (Op.WRITE, 9, b"OK\0")
    finally:
        r.close()
    assert_serving(x)


def test_protocol_violations_close_only_that_connection(xenstored: XenstoredProcess) -> None:
    x = xenstored
    bystander = x.client(0)
    try:
        bystander.watch("/w", "tok")
        assert bystander.read_watch(5) == ("/w", "tok")
        # too long a payload: the connection is dropped (as xenstored does)
        r = Raw(x.socket(0))
        r.s.sendall(HEADER.pack(Op.WRITE, 1, 0, 4097) + b"x" * 100)
        assert r.closed()
        r.close()
        # garbage
        r = Raw(x.socket(0))
        r.s.sendall(os.urandom(8) + b"\xff" * 8 + os.urandom(64))
        assert r.closed()
        r.close()
        # half a header, then hang up
        r = Raw(x.socket(0))
        r.s.sendall(b"\x02\x00\x00")
        r.close()
        # half a payload, then stall while others are served
        staller = Raw(x.socket(0))
        staller.s.sendall(HEADER.pack(Op.WRITE, 1, 0, 100) + b"/w/x\0")
        t0 = time.monotonic()
        with x.client(0) as c:
            for i in range(50):
                c.write("/w/y", str(i))
        assert time.monotonic() - t0 < 5
        assert bystander.read_watch(5) == ("/w/y", "tok")
        staller.s.sendall(b"v" * 95)  # completes: it is served too
        m = staller.recv()
        assert m is not None and m.payload == b"OK\0"
        staller.close()
        # a client that never reads its events does not block anyone
        silent = XsClient.connect(x.socket(0))
        silent.watch("/w", "silent")
        with x.client(0) as c:
            for i in range(300):
                c.write("/w/z", "x" * 1000 + str(i))
        silent.close()
        assert_serving(x)
    finally:
        bystander.close()
    assert "Traceback" not in x.log()


def test_domu_gets_errors_not_crashes(xenstored: XenstoredProcess) -> None:
    x = xenstored
    guest(x, 1)
    r = Raw(x.socket(1))
    try:
        assert r.error(Op.INTRODUCE, b"2\0 0\0 1\0") == "EACCES"
        assert r.error(Op.CONTROL, b"print\0hi\0") == "EACCES"
        assert r.error(Op.SET_PERMS, b"@releaseDomain\0b1\0") == "EACCES"
        assert r.error(Op.SET_PERMS, b"@bogus\0b1\0") == "EINVAL"
        assert r.error(Op.READ, b"/local/domain/1/" + b"a" * 2049 + b"\0") == "EINVAL"
        r.send(Op.READ, b"/local/domain/1/" + b"a" * 2048 + b"\0")
        m = r.recv()
        assert m is not None and m.payload == b"ENOENT\0"  # valid path; home readable
    finally:
        r.close()
    assert_serving(x)


# -- in-process fuzzing of the dispatcher ---------------------------------------------------


class _NullWriter:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    class transport:  # noqa: N801
        @staticmethod
        def get_write_buffer_size() -> int:
            return 0


_pieces = st.sampled_from(
    [
        b"/",
        b"/local",
        b"/local/domain/1",
        b"a",
        b"@introduceDomain",
        b"T",
        b"F",
        b"n0",
        b"b1",
        b"r2",
        b"0",
        b"1",
        b"4096",
        b"-1",
        b"//",
        b"\xff",
        b"",
        b"x" * 3000,
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    ops=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=30),
            st.lists(_pieces, max_size=4).map(lambda p: b"\0".join(p)),
            st.booleans(),
            st.sampled_from([0, 1]),
            st.sampled_from([0, 1, 2]),
        ),
        max_size=25,
    )
)
def test_dispatch_never_fails_other_than_xs_errors(ops: list) -> None:
    server = XenstoreServer(Path("/nonexistent-world"))
    conns = {d: Connection(d, _NullWriter()) for d in (0, 1)}  # type: ignore[arg-type]
    for type_, payload, nul, domid, tx in ops:
        if type_ in (Op.INTRODUCE, Op.RELEASE):
            continue  # these open/close real sockets; covered by the process tests
        if nul:
            payload += b"\0"
        try:
            dispatch(server, conns[domid], Message(type_, 1, tx, payload))
        except XsError:
            pass
    # the tree stays consistent: every child listed exists, every node's parent lists it
    nodes = server.store.nodes
    for path, node in nodes.items():
        for c in node.children:
            assert (f"/{c}" if path == "/" else f"{path}/{c}") in nodes
        if path != "/":
            parent = path.rsplit("/", 1)[0] or "/"
            assert path.rsplit("/", 1)[1] in nodes[parent].children
    counts = {}
    for node in nodes.values():
        counts[node.owner] = counts.get(node.owner, 0) + 1
    assert {k: v for k, v in server.store.counts.items() if v} == counts


# -- Xen's own test suite ------------------------------------------------------------------


@pytest.mark.skipif(not TEST_XENSTORE.exists(), reason="xen-utils test-xenstore missing")
def test_xen_test_xenstore_suite(xenstored: XenstoredProcess) -> None:
    env = xenstored.env(0)
    r = subprocess.run([str(TEST_XENSTORE)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "failed" not in r.stdout
    assert "ta err" in r.stdout  # the last test ran
    r = subprocess.run(
        [str(TEST_XENSTORE), "-r", "5", "-i", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert_serving(xenstored)
