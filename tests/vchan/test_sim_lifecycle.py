"""vchan lifecycle on xensim: xenstore entry, peer close (clean and kill -9) in both roles,
no leaks over 1,000 open/close cycles, the gntalloc grant limit."""

import errno
import os
import subprocess
import time

import pytest

from ncd.vchan.channel import DEFAULT_RING, GNTALLOC_LIMIT, grants_needed

from .simhelp import (
    VSP,
    kill_proc,
    ncd_vchan_argv,
    peers,
    vchan_path,
    vsp_client_popen,
)


def broker_counts(sim, domids=(1, 2)):
    stats = sim.world.broker().stats()
    keys = ("grants", "shared_pages", "mappings", "mapped_pages", "ports")
    return {d: {k: stats.get(d, stats.get(str(d), {})).get(k) for k in keys} for d in domids}


def test_xenstore_entry_perms_and_removal(sim):
    path = vchan_path(1, "entry")
    with peers(sim, 1) as (a,):
        res = a.call(f"server 2 {path} 4096 8192")
        ls = sim.run(0, ["xenstore-ls", "-p", path]).stdout
        # libxenvchan 4.17: owner = server (no access for others), peer may read
        assert f'ring-ref = "{res["gref"]}"' in ls and f'event-channel = "{res["port"]}"' in ls
        for line in ls.splitlines():
            assert "(n1,r2)" in line, ls
        # the peer can read, a third domain cannot
        assert sim.run(2, ["xenstore-read", f"{path}/ring-ref"]).stdout.strip() == str(res["gref"])
        a.call("close")
        assert sim.run(0, ["xenstore-exists", path], check=False).returncode != 0


def start_pair(sim, tmp_path):
    path = vchan_path(1, "life")
    srv = sim.popen(1, ncd_vchan_argv("server", 2, path), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=open(tmp_path / "srv.err", "wb"))
    cli = sim.popen(2, ncd_vchan_argv("client", 1, path), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=open(tmp_path / "cli.err", "wb"))
    # prove both directions work before anything closes
    srv.stdin.write(b"ping-from-server\n")
    srv.stdin.flush()
    cli.stdin.write(b"ping-from-client\n")
    cli.stdin.flush()
    assert cli.stdout.readline() == b"ping-from-server\n"
    assert srv.stdout.readline() == b"ping-from-client\n"
    return srv, cli


@pytest.mark.parametrize("how", ["clean", "kill9"])
@pytest.mark.parametrize("victim", ["server", "client"])
def test_peer_close_seen(sim, tmp_path, victim, how):
    srv, cli = start_pair(sim, tmp_path)
    dying, survivor = (srv, cli) if victim == "server" else (cli, srv)
    try:
        dying.stdin.write(b"last words\n")
        dying.stdin.flush()
        if how == "clean":
            dying.stdin.close()  # stdin EOF: waits until consumed, then closes
            assert dying.wait(timeout=20) == 0
        else:
            assert survivor.stdout.readline() == b"last words\n"
            dying.kill()
            dying.wait(timeout=20)
        t0 = time.monotonic()
        rc = survivor.wait(timeout=20)  # the survivor sees the close and exits 0
        assert rc == 0, (tmp_path / ("srv.err" if survivor is srv else "cli.err")).read_text()
        assert time.monotonic() - t0 < 20
        if how == "clean":
            assert survivor.stdout.read() == b"last words\n"
    finally:
        kill_proc(srv)
        kill_proc(cli)


@pytest.mark.skipif(not os.path.exists(VSP), reason="no vchan-socket-proxy")
def test_ncd_server_sees_vsp_client_killed(sim, tmp_path):
    path = vchan_path(1, "life")
    srv = sim.popen(1, ncd_vchan_argv("server", 2, path), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=open(tmp_path / "srv.err", "wb"))
    vsp = vsp_client_popen(sim, 2, ["1", path, "-"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        vsp.stdin.write(b"hello\n")
        vsp.stdin.flush()
        assert srv.stdout.readline() == b"hello\n"
        vsp.kill()
        vsp.wait(timeout=10)
        assert srv.wait(timeout=20) == 0
    finally:
        kill_proc(srv)
        kill_proc(vsp)


@pytest.mark.slow
def test_no_leaks_after_1000_cycles(sim):
    path = vchan_path(1, "cycle")
    with peers(sim, 1, 2) as (a, b):
        def cycle(i):
            rd, wr = ((1024, 2048), (4096, 8192), (2048, 65536))[i % 3]
            a.call(f"server 2 {path} {rd} {wr}")
            b.call(f"connect 1 {path}")
            assert a.call("wait_open 5")["open"] == 1
            assert b.call("write 1000")["left"] == 0
            r = a.call("read 1000")
            assert r["got"] == 1000 and r["ok_data"]
            first, second = (a, b) if i % 2 else (b, a)
            first.call("close")
            second.call("close")

        cycle(0)  # warm up: connections, lazily created state
        base = broker_counts(sim)
        for i in range(1, 1001):
            cycle(i)
        assert broker_counts(sim) == base
        assert sim.run(0, ["xenstore-exists", path], check=False).returncode != 0


def test_grant_limit_fails_cleanly(sim):
    per_vchan = grants_needed(DEFAULT_RING, DEFAULT_RING)
    fit = GNTALLOC_LIMIT // per_vchan
    assert (per_vchan, fit) == (65, 15)  # documented in cext/vchan/vchan.h
    with peers(sim, 1) as (a,):
        base = broker_counts(sim, (1,))
        for i in range(fit):
            a.call(f"server_extra 2 {vchan_path(1, f'lim{i}')} {DEFAULT_RING} {DEFAULT_RING}")
        res = a.call(f"server_extra 2 {vchan_path(1, 'limX')} {DEFAULT_RING} {DEFAULT_RING}",
                     check=False)
        assert not res["ok"]
        assert res["errno"] == errno.ENOSPC
        assert "gntalloc" in res["error"] and "65 grants" in res["error"]
        a.call("close_extra")
        assert broker_counts(sim, (1,)) == base
