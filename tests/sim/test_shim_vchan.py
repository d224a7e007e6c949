"""Debian's libxenvchan and vchan-socket-proxy, unmodified, on xensim's shims.

Everything runs with the simulator's environment alone (LD_LIBRARY_PATH, no
LD_PRELOAD): vchan-socket-proxy's client mode gets its three libxenctrl calls from
xensim's libxenctrl.so.4.17.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sim.conftest import ROOT, build_c, wait_for
from tests.vchan.simhelp import MiB, Sink, Source, peer

PROXY = Path("/usr/lib/xen-4.17/bin/vchan-socket-proxy")
NODE = "/local/domain/1/data/vchan-test"

pytestmark = pytest.mark.skipif(not PROXY.exists(), reason="xen-utils-4.17 not installed")


@pytest.fixture(scope="module")
def vchan_client(tmp_path_factory):
    return build_c(ROOT / "cext/xensim/tests/vchan_client.c",
                   tmp_path_factory.mktemp("vbin") / "vchan_client", "-lxenvchan")


class Echo:
    """A Unix socket echo server: the proxy's far end in dom1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sessions = 0
        self.closed = 0
        self.echoed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.sessions += 1
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)
                    self.echoed += len(data)
            self.closed += 1

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def wait_for_server(sim) -> None:
    """Wait until libxenvchan's server has published its vchan under NODE.

    vchan-socket-proxy's server keeps that one vchan for all its sessions.
    """

    def ready() -> bool:
        r = sim.run(0, ["xenstore-read", f"{NODE}/ring-ref", f"{NODE}/event-channel"], check=False)
        return r.returncode == 0

    wait_for(ready, timeout=10, what="vchan server in xenstore")


@pytest.fixture
def proxy_server(sim, tmp_path):
    echo = Echo(tmp_path / "echo.sock")
    srv = sim.popen(
        1,
        [str(PROXY), "-m", "server", "2", NODE, str(echo.path)],
        stderr=open(tmp_path / "proxy.err", "wb"),
    )
    try:
        wait_for_server(sim)
        yield echo, srv
    finally:
        srv.terminate()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        echo.close()


def test_data_through_vchan_socket_proxy(sim, proxy_server, vchan_client):
    echo, srv = proxy_server
    nbytes = 4 * 1024 * 1024
    for i in range(2):  # the proxy serves subsequent connections
        wait_for(lambda i=i: echo.closed == i, what="previous session over")
        r = sim.run(2, [str(vchan_client), "1", NODE, str(nbytes)], check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["ok", str(nbytes)]
    wait_for(lambda: echo.closed == 2, what="proxy closed both sessions")
    assert echo.echoed == 2 * nbytes
    assert srv.poll() is None


def test_peer_kill_9_closes_the_vchan(sim, proxy_server, vchan_client):
    echo, srv = proxy_server
    cli = sim.popen(
        2,
        [str(vchan_client), "1", NODE, "100000", "hold"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert cli.stdout.readline().split() == [b"ok", b"100000"]
        assert cli.stdout.readline().strip() == b"holding"
        assert echo.closed == 0
        os.kill(cli.pid, 9)
        cli.wait(5)
        # gntdev's unmap notify (byte cleared + event) tells the proxy its peer died
        wait_for(lambda: echo.closed == 1, timeout=10, what="proxy noticed the dead peer")
        assert srv.poll() is None
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait()
        cli.stdout.close()
        cli.stderr.close()
    # and it serves the next client
    r = sim.run(2, [str(vchan_client), "1", NODE, "50000"], check=False, timeout=60)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- issue 2 interop


def vsp_path(domid: int) -> str:
    return f"/local/domain/{domid}/data/vsp"


@contextlib.contextmanager
def vsp_pair(sim, tmp_path: Path, server_dom: int, client_dom: int) -> Iterator[dict]:
    """vchan-socket-proxy server (socket mode, echo service behind it) in server_dom and
    client (socket mode, listening on a Unix socket) in client_dom, both unmodified."""
    echo = Echo(tmp_path / "echo.sock")
    node = vsp_path(server_dom)
    front = tmp_path / "front.sock"
    procs: list[subprocess.Popen] = []
    errs = []
    try:
        for dom, argv, name in (
            (server_dom, ["-m", "server", str(client_dom), node, str(echo.path)], "server"),
            (client_dom, ["-m", "client", str(server_dom), node, str(front)], "client"),
        ):
            err = open(tmp_path / f"vsp-{name}.err", "wb")  # noqa: SIM115
            errs.append(err)
            procs.append(sim.popen(dom, [str(PROXY), *argv], stderr=err))
            if name == "server":
                wait_for(lambda: sim.run(0, ["xenstore-exists", f"{node}/ring-ref"],
                                         check=False).returncode == 0,
                         timeout=10, what="vchan server in xenstore")
        wait_for(front.exists, timeout=10, what="client's Unix socket")
        yield {"echo": echo, "server": procs[0], "client": procs[1], "front": front,
               "errs": lambda: {n: (tmp_path / f"vsp-{n}.err").read_text(errors="replace")
                                for n in ("server", "client")}}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for e in errs:
            e.close()
        echo.close()


def echo_through(front: Path, total: int, seed: int) -> tuple[str, str, int, float]:
    """Send `total` bytes into the client's socket, read the echo; (sent, got) sha256."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(front))
    try:
        sink = Sink(s.recv, total)
        # vchan-socket-proxy drops what is still in the ring once its socket input
        # ends: half-close only after the whole echo arrived
        src = Source(s.sendall, lambda: s.shutdown(socket.SHUT_WR), seed, total,
                     until=sink.done)
        t0 = time.monotonic()
        sink.start()
        src.start()
        src.join(120)
        sink.join(120)
        elapsed = time.monotonic() - t0
        assert not src.is_alive() and not sink.is_alive(), "transfer stuck"
        assert src.error is None, src.error
        return src.digest, sink.digest, sink.count, elapsed
    finally:
        s.close()


@pytest.mark.parametrize(
    "server_dom,client_dom",
    [pytest.param(1, 0, id="server-domU-client-dom0"),
     pytest.param(0, 1, id="server-dom0-client-domU")],
)
def test_vsp_both_ends_unmodified_64mb_each_way(sim, tmp_path, server_dom, client_dom):
    """Issue 2: Debian's vchan-socket-proxy in two simulated domains, 64 MB each way."""
    total = 64 * MiB
    with vsp_pair(sim, tmp_path, server_dom, client_dom) as pair:
        sent, got, count, elapsed = echo_through(pair["front"], total, seed=server_dom + 40)
        assert count == total, pair["errs"]()
        assert got == sent
        echo = pair["echo"]
        wait_for(lambda: echo.closed == 1, timeout=20, what="echo session over")
        assert echo.echoed == total  # every byte crossed the vchan both ways
        assert pair["server"].poll() is None  # the server keeps serving
        print(f"vsp d{client_dom}->d{server_dom} echo: {2 * total / MiB / elapsed:.0f} MiB/s")


# ------------------------------------------------------------ domain destroy + vchan


class XsWatch:
    """Debian's xenstore-watch in dom0, lines read with a timeout."""

    def __init__(self, sim, path: str) -> None:
        self.proc = sim.popen(0, ["xenstore-watch", path], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
        self.buf = b""

    def line(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.parametrize("victim", ["server", "client"])
def test_destroy_domain_of_one_vsp_end(sim, tmp_path, victim):
    """`ncd-sim destroy` of the domain running one end: the other end sees the vchan
    close, @releaseDomain fires, nothing of the dead domain is left in the broker."""
    server_dom, client_dom = 1, 2
    dead, alive = (server_dom, client_dom) if victim == "server" else (client_dom, server_dom)
    watch = XsWatch(sim, "@releaseDomain")
    try:
        assert watch.line(10) == "@releaseDomain"  # fired once when set, as in Xen
        with vsp_pair(sim, tmp_path, server_dom, client_dom) as pair:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(pair["front"]))
            s.settimeout(20)
            try:
                s.sendall(b"before destroy\n")
                got = b""
                while len(got) < 15:
                    got += s.recv(100)
                assert got == b"before destroy\n"
                echo = pair["echo"]
                with sim.world.broker() as ctl:
                    st = ctl.stats()
                assert st[server_dom]["shared_pages"] > 0 and st[client_dom]["mapped_pages"] > 0
                r = subprocess.run([sys.executable, "-m", "xensim", "destroy", "--dir",
                                    str(sim.dir), str(dead)], capture_output=True, text=True,
                                   timeout=60, cwd=ROOT)
                assert r.returncode == 0, r.stderr
                assert pair[victim].wait(10) == -9  # the dead domain's processes are gone
                if victim == "server":
                    # the client proxy saw the vchan close: it ends our socket session
                    assert s.recv(100) == b""
                    assert pair["client"].poll() is None
                else:
                    # the server proxy saw the vchan close: it ends the echo session
                    # and keeps running (waiting for the next client)
                    wait_for(lambda: echo.closed == 1, timeout=20, what="server saw close")
                    time.sleep(0.2)
                    assert pair["server"].poll() is None
            finally:
                s.close()
            assert watch.line(10) == "@releaseDomain"
            with sim.world.broker() as ctl:
                st = ctl.stats()
                assert dead not in st and dead not in ctl.list_domains()
                if victim == "server":
                    # the client proxy unmapped the dead domain's pages
                    wait_for(lambda: ctl.stats()[alive]["mapped_pages"] == 0,
                             what="survivor unmapped")
            assert sim.run(0, ["xenstore-exists", f"/local/domain/{dead}"],
                           check=False).returncode != 0
    finally:
        watch.close()


# ------------------------------------------------------------ 1 MiB rings each way


def test_vchan_with_1mib_rings_each_way(sim):
    """256-page rings (share_pages(256) used to abort in free(fds)): ncd's VchanServer in
    dom1, its client in dom2, data both ways, the broker sees every page."""
    path = "/local/domain/1/data/big"
    a, b = peer(sim, 1), peer(sim, 2)
    try:
        r = a.call(f"server 2 {path} {MiB} {MiB}")
        assert r["rd"] == MiB and r["wr"] == MiB
        r = b.call(f"connect 1 {path}")
        assert r["rd"] == MiB and r["wr"] == MiB
        assert a.call("wait_open 10")["open"] == 1
        with sim.world.broker() as ctl:
            st = ctl.stats()
        # two 256-page rings + the control page, granted by dom1 and mapped by dom2
        assert st[1]["shared_pages"] >= 513 and st[2]["mapped_pages"] >= 513
        for _ in range(3):  # fill each ring completely, both ways
            assert a.call(f"write {MiB}")["left"] == 0
            r = b.call(f"read {MiB}")
            assert r["got"] == MiB and r["ok_data"]
            assert b.call(f"write {MiB}")["left"] == 0
            r = a.call(f"read {MiB}")
            assert r["got"] == MiB and r["ok_data"]
        b.call("close")
        a.call("close")
        with sim.world.broker() as ctl:
            st = ctl.stats()
        assert st[1]["shared_pages"] == 0 and st[2]["mapped_pages"] == 0
    finally:
        a.close()
        b.close()
