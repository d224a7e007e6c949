"""Debian's libxenvchan and vchan-socket-proxy, unmodified, on xensim's shims.

vchan-socket-proxy's *client* mode also needs libxenctrl (xc_interface_open,
/dev/xen/privcmd), which xensim does not simulate, so the client side here is
cext/xensim/tests/vchan_client.c on Debian's libxenvchan.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.sim.conftest import ROOT, wait_for

PROXY = Path("/usr/lib/xen-4.17/bin/vchan-socket-proxy")
NODE = "/local/domain/1/data/vchan-test"

pytestmark = pytest.mark.skipif(not PROXY.exists(), reason="xen-utils-4.17 not installed")


@pytest.fixture(scope="module")
def vchan_client(tmp_path_factory):
    out = tmp_path_factory.mktemp("vbin") / "vchan_client"
    subprocess.run(
        [
            "gcc",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-std=gnu11",
            "-o",
            str(out),
            str(ROOT / "cext/xensim/tests/vchan_client.c"),
            "-lxenvchan",
        ],
        check=True,
    )
    return out


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
