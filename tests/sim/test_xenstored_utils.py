"""xensim's xenstored driven by Debian's unmodified xenstore-utils (libxenstore.so.4)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import have
from tests.sim.xs_fixtures import XenstoredProcess, xenstored_fixture  # noqa: F401
from xensim.xenstored.wire import XsError

pytestmark = pytest.mark.skipif(not have("xenstore-read"), reason="xenstore-utils missing")


def xs(x: XenstoredProcess, domid: int, *argv: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), env=x.env(domid), capture_output=True, text=True, timeout=20)
    if ok:
        assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r


def error(x: XenstoredProcess, domid: int, op: str, *args: object) -> str | None:
    """The xenstore error name a request gets (None if it succeeds)."""
    with x.client(domid) as c:
        try:
            getattr(c, op)(*args)
        except XsError as e:
            return e.name
    return None


def make_guest(x: XenstoredProcess, domid: int) -> None:
    """What the toolstack does: home owned by dom0, readable by the guest; data owned by it."""
    home = f"/local/domain/{domid}"
    xs(x, 0, "xenstore-write", home, "")
    xs(x, 0, "xenstore-chmod", home, "n0", f"r{domid}")
    xs(x, 0, "xenstore-write", f"{home}/name", f"guest{domid}")  # inherits n0 r<domid>
    xs(x, 0, "xenstore-write", f"{home}/data", "")
    xs(x, 0, "xenstore-chmod", f"{home}/data", f"n{domid}")
    x.introduce(domid)


def test_dom0_basic_commands(xenstored: XenstoredProcess) -> None:
    x = xenstored
    xs(x, 0, "xenstore-write", "/a/b/c", "hello", "/a/d", "world")
    assert xs(x, 0, "xenstore-read", "/a/b/c").stdout == "hello\n"
    assert xs(x, 0, "xenstore-read", "/a/b").stdout == "\n"  # parent made with empty value
    assert xs(x, 0, "xenstore-list", "/a").stdout.split() == ["b", "d"]
    ls = xs(x, 0, "xenstore-ls", "-f", "/a").stdout.splitlines()
    assert ls == ['/a/b = ""', '/a/b/c = "hello"', '/a/d = "world"']
    assert xs(x, 0, "xenstore-exists", "/a/b/c").returncode == 0
    assert xs(x, 0, "xenstore-exists", "/a/zz", ok=False).returncode != 0
    xs(x, 0, "xenstore-rm", "/a/b")
    assert xs(x, 0, "xenstore-exists", "/a/b/c", ok=False).returncode != 0
    assert xs(x, 0, "xenstore-list", "/a").stdout.split() == ["d"]
    assert xs(x, 0, "xenstore-read", "/a/b", ok=False).returncode != 0
    assert error(x, 0, "read", "/a/b") == "ENOENT"
    # the initial tree, as Xen's xenstored makes it
    assert "xenstored" in xs(x, 0, "xenstore-list", "/tool").stdout.split()
    assert xs(x, 0, "xenstore-ls", "-p", "/local").stdout.startswith("domain")


def test_relative_paths_resolve_to_home(xenstored: XenstoredProcess) -> None:
    x = xenstored
    make_guest(x, 3)
    xs(x, 3, "xenstore-write", "data/key", "v3")
    assert xs(x, 0, "xenstore-read", "/local/domain/3/data/key").stdout == "v3\n"
    assert xs(x, 3, "xenstore-read", "data/key").stdout == "v3\n"
    assert xs(x, 3, "xenstore-list", "data").stdout.split() == ["key"]
    xs(x, 3, "xenstore-rm", "data/key")
    assert xs(x, 3, "xenstore-exists", "data/key", ok=False).returncode != 0
    # dom0 too has a home
    xs(x, 0, "xenstore-write", "rel", "0")
    assert xs(x, 0, "xenstore-read", "/local/domain/0/rel").stdout == "0\n"
    with x.client(3) as c:
        assert c.get_domain_path(3) == "/local/domain/3"
        assert c.get_domain_path(7) == "/local/domain/7"


def test_domu_cannot_touch_another_home(xenstored: XenstoredProcess) -> None:
    x = xenstored
    make_guest(x, 1)
    make_guest(x, 2)
    xs(x, 2, "xenstore-write", "data/secret", "s2")
    assert xs(x, 1, "xenstore-read", "/local/domain/2/data/secret", ok=False).returncode
    assert error(x, 1, "read", "/local/domain/2/data/secret") == "EACCES"
    assert xs(x, 1, "xenstore-write", "/local/domain/2/data/secret", "evil", ok=False).returncode
    assert error(x, 1, "write", "/local/domain/2/data/secret", "evil") == "EACCES"
    assert xs(x, 1, "xenstore-write", "/local/domain/2/newnode", "evil", ok=False).returncode
    assert xs(x, 1, "xenstore-rm", "/local/domain/2/data", ok=False).returncode
    assert error(x, 1, "rm", "/local/domain/2/data") == "EACCES"
    # no information leak: a missing node under an unreadable one is EACCES too
    assert error(x, 1, "read", "/local/domain/2/data/nothing") == "EACCES"
    assert error(x, 2, "read", "data/nothing") == "ENOENT"
    assert xs(x, 2, "xenstore-read", "/local/domain/2/data/secret").stdout == "s2\n"
    # a domU cannot write its dom0-owned home, only read it
    assert xs(x, 1, "xenstore-read", "/local/domain/1/name").stdout == "guest1\n"
    assert xs(x, 1, "xenstore-write", "/local/domain/1/name", "x", ok=False).returncode != 0
    # nor the root
    assert xs(x, 1, "xenstore-write", "/evil", "x", ok=False).returncode != 0
    # dom0 can do anything
    assert xs(x, 0, "xenstore-read", "/local/domain/2/data/secret").stdout == "s2\n"
    assert xs(x, 2, "xenstore-read", "data/secret").stdout == "s2\n"
    # a node the guest creates is owned by it, with the parent's other entries
    assert xs(x, 0, "xenstore-ls", "-p", "/local/domain/2/data").stdout.split()[-1] == "(n2)"


def test_destroyed_domain_paths_are_eacces_for_its_driver_domain(
    xenstored: XenstoredProcess,
) -> None:
    """As Xen 4.17's xenstored (docs/lab.md): once domain 2's home is removed, domain 1
    (which backed its vif) reading there gets EACCES, the nearest existing ancestor
    being /local/domain (n0); dom0 gets ENOENT; a missing node in domain 1's own home
    stays ENOENT."""
    x = xenstored
    make_guest(x, 1)
    make_guest(x, 2)
    dev = "/local/domain/2/device/ncvif/0"
    xs(x, 0, "xenstore-write", dev, "")
    xs(x, 0, "xenstore-chmod", dev, "n2", "r1")  # libxl's frontend perms
    xs(x, 0, "xenstore-write", f"{dev}/state", "4")
    assert xs(x, 1, "xenstore-read", f"{dev}/state").stdout == "4\n"
    x.release(2)
    xs(x, 0, "xenstore-rm", "/local/domain/2")
    for path in (f"{dev}/state", dev, "/local/domain/2"):
        assert error(x, 1, "read", path) == "EACCES", path
        assert error(x, 0, "read", path) == "ENOENT", path
    assert error(x, 1, "read", "/local/domain/1/nothing") == "ENOENT"


def test_chmod_grants_and_owner_rules(xenstored: XenstoredProcess) -> None:
    x = xenstored
    make_guest(x, 1)
    make_guest(x, 2)
    xs(x, 2, "xenstore-write", "data/shared", "hi")
    assert xs(x, 1, "xenstore-read", "/local/domain/2/data/shared", ok=False).returncode
    # the owner grants read to dom1
    xs(x, 2, "xenstore-chmod", "data/shared", "n2", "r1")
    assert xs(x, 1, "xenstore-read", "/local/domain/2/data/shared").stdout == "hi\n"
    assert xs(x, 1, "xenstore-write", "/local/domain/2/data/shared", "x", ok=False).returncode
    # then write
    xs(x, 2, "xenstore-chmod", "data/shared", "n2", "b1")
    xs(x, 1, "xenstore-write", "/local/domain/2/data/shared", "from1")
    assert xs(x, 2, "xenstore-read", "data/shared").stdout == "from1\n"
    # a non-owner with write access may not change permissions
    r = xs(x, 1, "xenstore-chmod", "/local/domain/2/data/shared", "b1", ok=False)
    assert r.returncode != 0
    # the owner may not give the node away; dom0 may
    with x.client(2) as c:
        with pytest.raises(XsError) as ei:
            c.set_perms("/local/domain/2/data/shared", ["n1"])
        assert ei.value.name == "EPERM"
    xs(x, 0, "xenstore-chmod", "/local/domain/2/data/shared", "n1")
    assert xs(x, 1, "xenstore-read", "/local/domain/2/data/shared").stdout == "from1\n"
    assert xs(x, 2, "xenstore-read", "data/shared", ok=False).returncode
    with x.client(0) as c:
        assert c.get_perms("/local/domain/2/data/shared") == ["n1"]


class WatchProc:
    """xenstore-watch as a subprocess; events are read from its stdout."""

    def __init__(self, x: XenstoredProcess, domid: int, path: str) -> None:
        self.p = subprocess.Popen(
            ["xenstore-watch", path],
            env=x.env(domid),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.next() == path  # fires once on registration

    def next(self, timeout: float = 5.0) -> str | None:
        import select

        assert self.p.stdout is not None
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            return None
        return self.p.stdout.readline().strip()

    def stop(self) -> None:
        self.p.kill()
        self.p.wait()


def test_watch_fires_across_domains_where_permitted(xenstored: XenstoredProcess) -> None:
    x = xenstored
    make_guest(x, 1)
    make_guest(x, 2)
    xs(x, 2, "xenstore-write", "data/pub", "0", "data/priv", "0")
    xs(x, 2, "xenstore-chmod", "data/pub", "n2", "r1")
    w = WatchProc(x, 1, "/local/domain/2/data")
    try:
        xs(x, 2, "xenstore-write", "data/priv", "1")  # dom1 may not read it: no event
        xs(x, 2, "xenstore-write", "data/pub", "1")
        assert w.next() == "/local/domain/2/data/pub"
        assert w.next(timeout=0.5) is None
        xs(x, 0, "xenstore-write", "/local/domain/2/data/pub/sub", "x")  # inherits r1
        assert w.next() == "/local/domain/2/data/pub/sub"
        xs(x, 2, "xenstore-rm", "data/pub")
        # as in xenstored: removed children only fire watches set exactly on them
        assert w.next() == "/local/domain/2/data/pub"
        assert w.next(timeout=0.5) is None
    finally:
        w.stop()


def test_relative_watch_reports_relative_paths(xenstored: XenstoredProcess) -> None:
    x = xenstored
    make_guest(x, 1)
    w = WatchProc(x, 1, "data")
    try:
        xs(x, 0, "xenstore-write", "/local/domain/1/data/k", "v")
        assert w.next() == "data/k"
    finally:
        w.stop()


def test_introduce_and_release_domain_watches(xenstored: XenstoredProcess) -> None:
    x = xenstored
    with x.client(0) as c:
        c.watch("@introduceDomain", "intro")
        c.watch("@releaseDomain", "rel")
        assert c.read_watch(5) == ("@introduceDomain", "intro")
        assert c.read_watch(5) == ("@releaseDomain", "rel")
        assert not c.is_domain_introduced(4)
        make_guest(x, 4)
        assert c.read_watch(5) == ("@introduceDomain", "intro")
        assert c.is_domain_introduced(4)
        assert x.socket(4).exists()
        xs(x, 4, "xenstore-write", "data/mine", "1")
        c.write("/granted", "")
        c.set_perms("/granted", ["n0", "r4", "b3"])
        x.release(4)
        assert c.read_watch(5) == ("@releaseDomain", "rel")
        assert not c.is_domain_introduced(4)
        assert not x.socket(4).exists()
        # nodes the released domain owned are gone, dom0's stay
        assert not c.exists("/local/domain/4/data")
        assert c.read("/local/domain/4/name") == b"guest4"
        # grants to it are forgotten: a new domain 4 would not inherit them
        assert c.get_perms("/granted") == ["n0", "b3"]
    # an unprivileged domain only gets them when the special node's perms allow it
    make_guest(x, 5)
    with x.client(5) as g:
        g.watch("@releaseDomain", "r5")
        assert g.read_watch(5) == ("@releaseDomain", "r5")  # the initial event, always
        make_guest(x, 7)
        x.release(7)
        with pytest.raises(TimeoutError):
            g.read_watch(0.3)
        with x.client(0) as c:
            c.set_perms("@releaseDomain", ["n0", "r5"])
        g.watch("@releaseDomain", "r5b")
        assert g.read_watch(5) == ("@releaseDomain", "r5b")
        make_guest(x, 6)
        x.release(6)
        events = {g.read_watch(5), g.read_watch(5)}
        assert events == {("@releaseDomain", "r5"), ("@releaseDomain", "r5b")}


def test_domu_cannot_use_privileged_requests(xenstored: XenstoredProcess) -> None:
    x = xenstored
    make_guest(x, 1)
    with x.client(1) as c:
        for call in (
            lambda: c.introduce(9),
            lambda: c.release(1),
            lambda: c.is_domain_introduced(1),
        ):
            with pytest.raises(Exception) as ei:
                call()
            assert getattr(ei.value, "name", "") == "EACCES"


def test_sigterm_removes_sockets(tmp_path) -> None:
    x = XenstoredProcess(tmp_path / "w")
    try:
        x.introduce(1)
        assert x.socket(0).exists() and x.socket(1).exists()
    finally:
        assert x.stop() == 0
    assert not x.socket(0).exists() and not x.socket(1).exists()
    assert "xenstored stopped" in x.log()


def test_big_directory_uses_directory_part(xenstored: XenstoredProcess) -> None:
    x = xenstored
    with x.client(0) as c:
        tx = c.transaction_start()
        names = [f"child-with-a-rather-long-name-{i:04d}" for i in range(300)]
        for n in names:
            c.write(f"/big/{n}", "", tx)
        c.transaction_end(tx)
    listed = xs(x, 0, "xenstore-list", "/big").stdout.split()
    assert listed == names  # > 4096 bytes: libxenstore fell back to DIRECTORY_PART
    assert sum(len(n) + 1 for n in names) > 4096


def test_watch_process_is_fast_enough(xenstored: XenstoredProcess) -> None:
    """Sanity: a write->watch round trip across domains is quick (not a benchmark)."""
    x = xenstored
    make_guest(x, 1)
    with x.client(0) as c, x.client(1) as g:
        g.watch("data", "t")
        assert g.read_watch(5) == ("data", "t")
        t0 = time.monotonic()
        for i in range(200):
            c.write("/local/domain/1/data/k", str(i))
            assert g.read_watch(5) == ("data/k", "t")
        assert time.monotonic() - t0 < 5
