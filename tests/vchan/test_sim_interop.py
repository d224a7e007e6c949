"""256 MiB each way over xensim: ncd<->ncd, ncd<->Debian's vchan-socket-proxy (both roles).

``NCD_VCHAN_TEST_MB`` shrinks the transfers for quick local runs (default 256).
"""

import os
import socket
import subprocess
import time

import pytest

from .simhelp import (
    VSP,
    MiB,
    Sink,
    Source,
    kill_proc,
    ncd_vchan_argv,
    vchan_path,
    vsp_client_popen,
)

TOTAL = int(os.environ.get("NCD_VCHAN_TEST_MB", "256")) * MiB
TIMEOUT = 600

needs_vsp = pytest.mark.skipif(not os.path.exists(VSP),
                               reason="vchan-socket-proxy not installed")

SIZES = [
    pytest.param(1024, 2048, id="orders-10-11"),
    pytest.param(256 * 1024, 128 * 1024, id="multipage-256k-128k"),
]


def spawn(sim, domid, argv, tmp_path, name):
    err = open(tmp_path / f"{name}.err", "wb")  # noqa: SIM115 - closed by the caller
    p = sim.popen(domid, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    p.errfile = err
    return p


def errtext(tmp_path, name):
    path = tmp_path / f"{name}.err"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def join_all(threads, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
        assert not t.is_alive(), f"{t} did not finish"


def wait_path(path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("rd,wr", SIZES)
def test_ncd_to_ncd(sim, tmp_path, rd, wr):
    path = vchan_path(1, "interop")
    srv = spawn(sim, 1, ncd_vchan_argv("server", 2, path, "--read-size", str(rd),
                                       "--write-size", str(wr)), tmp_path, "srv")
    cli = spawn(sim, 2, ncd_vchan_argv("client", 1, path), tmp_path, "cli")
    try:
        to_srv = Sink(srv.stdout.read1, TOTAL)  # client -> server
        to_cli = Sink(cli.stdout.read1, TOTAL)  # server -> client
        from_srv = Source(srv.stdin.write, srv.stdin.close, 1, TOTAL, until=to_srv.done)
        from_cli = Source(cli.stdin.write, cli.stdin.close, 2, TOTAL, until=to_cli.done)
        threads = [to_srv, to_cli, from_srv, from_cli]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        join_all(threads)
        elapsed = time.monotonic() - t0
        assert srv.wait(timeout=30) == 0, errtext(tmp_path, "srv")
        assert cli.wait(timeout=30) == 0, errtext(tmp_path, "cli")
        assert from_srv.error is None and from_cli.error is None
        assert to_cli.count == TOTAL and to_srv.count == TOTAL
        assert to_cli.digest == from_srv.digest
        assert to_srv.digest == from_cli.digest
        print(f"ncd<->ncd {rd}/{wr}: {2 * TOTAL / MiB / elapsed:.0f} MiB/s both ways")
    finally:
        kill_proc(srv)
        kill_proc(cli)


@pytest.mark.slow
@needs_vsp
@pytest.mark.parametrize("rd,wr", SIZES)
def test_ncd_server_vsp_client(sim, tmp_path, rd, wr):
    path = vchan_path(1, "interop")
    sock_path = str(tmp_path / "vsp.sock")
    srv = spawn(sim, 1, ncd_vchan_argv("server", 2, path, "--read-size", str(rd),
                                       "--write-size", str(wr)), tmp_path, "srv")
    vsp = vsp_client_popen(sim, 2, ["1", path, sock_path],
                           stderr=open(tmp_path / "vsp.err", "wb"))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        wait_path(sock_path)
        s.connect(sock_path)
        to_srv = Sink(srv.stdout.read1, TOTAL)
        to_sock = Sink(s.recv, TOTAL)
        from_srv = Source(srv.stdin.write, srv.stdin.close, 11, TOTAL, until=to_srv.done)
        # vchan-socket-proxy drops the vchan's tail once its socket input ends: only
        # half-close after everything arrived
        from_sock = Source(s.sendall, lambda: s.shutdown(socket.SHUT_WR), 12, TOTAL,
                           until=to_sock.done)
        threads = [to_srv, to_sock, from_srv, from_sock]
        for t in threads:
            t.start()
        join_all(threads)
        assert srv.wait(timeout=30) == 0, errtext(tmp_path, "srv")
        assert from_srv.error is None and from_sock.error is None
        assert to_sock.count == TOTAL and to_srv.count == TOTAL, errtext(tmp_path, "vsp")
        assert to_sock.digest == from_srv.digest
        assert to_srv.digest == from_sock.digest
    finally:
        s.close()
        kill_proc(srv)
        kill_proc(vsp)


@pytest.mark.slow
@needs_vsp
def test_vsp_server_ncd_client(sim, tmp_path):
    path = vchan_path(1, "interop")
    sock_path = str(tmp_path / "svc.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(4)
    listener.settimeout(60)
    vsp = spawn(sim, 1, [VSP, "-m", "server", "2", path, sock_path],
                tmp_path, "vsp")
    cli = spawn(sim, 2, ncd_vchan_argv("client", 1, path), tmp_path, "cli")
    conn = None
    try:
        conn, _ = listener.accept()  # vchan-socket-proxy connects once the client is there
        to_cli = Sink(cli.stdout.read1, TOTAL)
        to_svc = Sink(conn.recv, TOTAL)
        from_cli = Source(cli.stdin.write, cli.stdin.close, 21, TOTAL, until=to_cli.done)
        c = conn
        from_svc = Source(c.sendall, lambda: c.shutdown(socket.SHUT_WR), 22, TOTAL,
                          until=to_svc.done)
        threads = [to_cli, to_svc, from_cli, from_svc]
        for t in threads:
            t.start()
        join_all(threads)
        assert cli.wait(timeout=30) == 0, errtext(tmp_path, "cli")
        assert from_cli.error is None and from_svc.error is None
        assert to_cli.count == TOTAL and to_svc.count == TOTAL, errtext(tmp_path, "vsp")
        assert to_cli.digest == from_svc.digest
        assert to_svc.digest == from_cli.digest
    finally:
        if conn is not None:
            conn.close()
        listener.close()
        kill_proc(cli)
        kill_proc(vsp)
