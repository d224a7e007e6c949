"""ncctl: attach/detach against an in-memory store and the simulator, list/stats over
a real control socket."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import threading

import pytest

from ncd import layout, ncctl, parse
from ncd.control import ControlError, ControlServer


def run(argv, tree=None, socket=None):
    out, err = io.StringIO(), io.StringIO()
    if socket is not None:
        argv = ["--socket", str(socket), *argv]
    rc = ncctl.main(argv, store_factory=(lambda: tree.conn(0)) if tree else None, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_attach(tree):
    rc, out, err = run(
        ["attach", "1", "--mac", "00:16:3e:12:34:56", "--mtu", "9000", "--bridge", "br0"], tree
    )
    assert (rc, err) == (0, "")
    assert out == (
        "attached domain 1 devid 0 mac 00:16:3e:12:34:56 mtu 9000 bridge br0 (ncvif1.0)\n"
    )
    c = tree.conn(0)
    assert c.read_bytes("/local/domain/0/backend/ncvif/1/0/bridge") == b"br0"
    rc, out, _ = run(["attach", "1"], tree)
    assert rc == 0 and "devid 1 mac 00:16:3e:" in out
    mac = c.read_bytes("/local/domain/1/device/ncvif/1/mac").decode()
    assert parse.mac("mac", mac).startswith("00:16:3e:")


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["attach", "9"], "ncctl: error: domain 9 does not exist\n"),
        (["attach", "1", "--devid", "0"], "ncctl: error: domain 1 already has ncvif devid 0\n"),
        (
            ["attach", "1", "--mac", "zz:16:3e:12:34:56"],
            "ncctl: error: mac: not a MAC address (xx:xx:xx:xx:xx:xx): 'zz:16:3e:12:34:56'\n",
        ),
        (
            ["attach", "1", "--mac", "01:00:5e:00:00:01"],
            "ncctl: error: mac: 01:00:5e:00:00:01 is a multicast address\n",
        ),
        (["attach", "1", "--mtu", "50"], "ncctl: error: mtu: 50 out of range 68..65521\n"),
        (["detach", "1", "7"], "ncctl: error: domain 1 has no ncvif devid 7\n"),
    ],
)
def test_errors_are_one_line(tree, argv, msg):
    assert run(["attach", "1"], tree)[0] == 0
    before = dict(tree.nodes)
    rc, out, err = run(argv, tree)
    assert (rc, out, err) == (1, "", msg)
    assert tree.nodes == before


def test_usage_error_exit_2(tree, capsys):
    with pytest.raises(SystemExit) as e:
        ncctl.main(["attach", "1", "--devid", "x"], store_factory=lambda: tree.conn(0))
    assert e.value.code == 2
    assert "devid: not a decimal number" in capsys.readouterr().err


def test_detach_with_daemon_down_removes_entries(tree, tmp_path):
    run(["attach", "1"], tree)
    rc, out, err = run(["detach", "1", "0"], tree, socket=tmp_path / "none.sock")
    assert (rc, err) == (0, "")
    assert out == "detached domain 1 devid 0: removed (backend daemon not running)\n"
    assert layout.list_backend_devices(tree.conn(0), 0) == []
    assert layout.list_frontend_devices(tree.conn(0), 1) == []


def test_detach_of_a_device_whose_backend_directory_is_gone(tree, tmp_path):
    """The backend's domain was destroyed (or a hostile backend removed its directory):
    the frontend's directory is all that is left, and detach removes it."""
    run(["attach", "1"], tree)
    tree.conn(0).rm("/local/domain/0/backend/ncvif/1/0")
    rc, out, err = run(["detach", "1", "0"], tree, socket=tmp_path / "none.sock")
    assert (rc, err) == (0, "")
    assert out == (
        "detached domain 1 devid 0: removed "
        "(its backend directory /local/domain/0/backend/ncvif/1/0 was already gone)\n"
    )
    assert layout.list_frontend_devices(tree.conn(0), 1) == []
    rc, out, err = run(["detach", "1", "0"], tree, socket=tmp_path / "none.sock")
    assert (rc, out) == (1, "")
    assert "domain 1 has no ncvif devid 0" in err


class Daemon:
    """A control socket in a background event loop, answering like a backend daemon."""

    def __init__(self, path, replies):
        self.path, self.replies = path, replies
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handler(self, op, args):
        if op not in self.replies:
            raise ControlError(f"unknown operation {op!r}")
        return self.replies[op]

    def __enter__(self):
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            # lets in the test's own uid (root's, the default, when run as root)
            ControlServer(self.path, self.handler, (os.geteuid(),)).start(), self.loop
        ).result(5)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def detach_args(**kw):
    return argparse.Namespace(
        **{"domid": 1, "devid": 0, "backend": 0, "force": False, "timeout": 1.0, **kw}
    )


def test_detach_waits_for_backend_closed(tree, tmp_path):
    run(["attach", "1"], tree)
    c = tree.conn(0)
    c.write("/local/domain/0/backend/ncvif/1/0/state", "4")
    sock = tmp_path / "ncd.sock"
    now = [0.0]
    seen = []

    def sleep(dt):  # the "backend" reacts while ncctl waits
        now[0] += dt
        seen.append(c.read_bytes("/local/domain/0/backend/ncvif/1/0/state"))
        if len(seen) == 3:
            c.write("/local/domain/0/backend/ncvif/1/0/state", "6")

    with Daemon(sock, {"ping": {"role": "backend"}}):
        out = io.StringIO()
        ncctl.cmd_detach(detach_args(), c, out, str(sock), clock=lambda: now[0], sleep=sleep)
    assert seen[0] == b"5"  # ncctl asked for Closing first
    assert out.getvalue() == "detached domain 1 devid 0: closed\n"
    assert layout.list_backend_devices(c, 0) == []


def test_detach_timeout_needs_force(tree, tmp_path):
    run(["attach", "1"], tree)
    c = tree.conn(0)
    c.write("/local/domain/0/backend/ncvif/1/0/state", "4")
    sock = tmp_path / "ncd.sock"
    now = [0.0]

    def sleep(dt):
        now[0] += dt

    with Daemon(sock, {"ping": {}}):
        with pytest.raises(
            ncctl.CliError,
            match=r"did not close domain 1 devid 0 within 1s "
            r"\(state Closing\); retry, or use --force",
        ):
            ncctl.cmd_detach(
                detach_args(), c, io.StringIO(), str(sock), clock=lambda: now[0], sleep=sleep
            )
        assert layout.list_backend_devices(c, 0) == [(1, 0)]  # left for the daemon
        out = io.StringIO()
        ncctl.cmd_detach(
            detach_args(force=True), c, out, str(sock), clock=lambda: now[0], sleep=sleep
        )
    assert out.getvalue() == "detached domain 1 devid 0: removed by force\n"
    assert layout.list_backend_devices(c, 0) == []


LIST = {
    "vifs": [
        {
            "domid": 1,
            "devid": 0,
            "state": "Connected",
            "ifname": "ncvif1.0",
            "mac": "00:16:3e:00:00:01",
            "mtu": 1500,
            "bridge": "xenbr0",
        },
        {
            "domid": 2,
            "devid": 3,
            "state": "InitWait",
            "ifname": "ncvif2.3",
            "mac": "00:16:3e:00:00:02",
            "mtu": 9000,
            "bridge": None,
        },
    ]
}
STATS = {
    "vifs": [
        {
            "domid": 1,
            "devid": 0,
            "state": "Connected",
            "frames_tx": 10,
            "frames_rx": 20,
            "bytes_tx": 1000,
            "bytes_rx": 2000,
            "drops": {"bad_record": 1, "tap_full": 2},
            "ring_full_waits": 5,
            "notifications_sent": 6,
            "notifications_received": 7,
            "tracked_foreign_pages": 0,
            "rate_limited_frames": 8,
        }
    ],
    "handshake_failures": {"ill_timed": 0, "link_lost": 2},
}


def test_list_and_stats(tmp_path):
    sock = tmp_path / "ncd.sock"
    with Daemon(sock, {"list": LIST, "stats": STATS}):
        rc, out, err = run(["list"], socket=sock)
        assert (rc, err) == (0, "")
        lines = out.splitlines()
        assert lines[0].split() == ["DOMID", "DEVID", "STATE", "IFNAME", "MAC", "MTU", "BRIDGE"]
        assert lines[1].split() == [
            "1",
            "0",
            "Connected",
            "ncvif1.0",
            "00:16:3e:00:00:01",
            "1500",
            "xenbr0",
        ]
        assert lines[2].split()[-1] == "-"
        rc, out, _ = run(["list", "--json"], socket=sock)
        assert json.loads(out) == LIST
        rc, out, _ = run(["stats"], socket=sock)
        assert out.splitlines()[1].split() == [
            "1",
            "0",
            "Connected",
            "10",
            "1000",
            "20",
            "2000",
            "3",
            "5",
            "6",
            "7",
            "8",
        ]
        assert out.splitlines()[2] == "handshake failures: link_lost 2"
        assert json.loads(run(["stats", "--json"], socket=sock)[1]) == STATS


def test_list_with_daemon_down(tmp_path):
    rc, out, err = run(["list"], socket=tmp_path / "ncd.sock")
    assert rc == 1 and out == ""
    assert err == f"ncctl: error: ncd daemon not running (nothing listens on {tmp_path}/ncd.sock)\n"


# ------------------------------------------------------------ on the simulator


def test_attach_detach_on_the_simulator(sim):
    py = [sys.executable, "-m", "ncd.ncctl"]
    r = sim.run(0, [*py, "attach", "1", "--mac", "00:16:3e:aa:00:01", "--bridge", "xenbr0"])
    assert r.stdout == (
        "attached domain 1 devid 0 mac 00:16:3e:aa:00:01 mtu 1500 bridge xenbr0 (ncvif1.0)\n"
    )
    be = "/local/domain/0/backend/ncvif/1/0"
    fe = "/local/domain/1/device/ncvif/0"
    # the frontend domain reads both dirs (as libxl's permissions allow)...
    assert sim.run(1, ["xenstore-read", f"{be}/state", f"{fe}/mac"]).stdout.split() == [
        "1",
        "00:16:3e:aa:00:01",
    ]
    assert sim.run(0, ["xenstore-ls", "-p", be]).stdout.count("n0,r1") >= 1
    # ...writes its own, but not the backend's
    sim.run(1, ["xenstore-write", f"{fe}/state", "4"])
    assert sim.run(1, ["xenstore-write", f"{be}/state", "4"], check=False).returncode != 0
    # another guest sees nothing
    assert sim.run(2, ["xenstore-read", f"{be}/state"], check=False).returncode != 0
    assert sim.run(2, ["xenstore-read", f"{fe}/mac"], check=False).returncode != 0
    # duplicate, unknown domain: one line, exit 1
    r = sim.run(0, [*py, "attach", "1", "--devid", "0"], check=False)
    assert (r.returncode, r.stderr) == (1, "ncctl: error: domain 1 already has ncvif devid 0\n")
    r = sim.run(0, [*py, "attach", "7"], check=False)
    assert (r.returncode, r.stderr) == (1, "ncctl: error: domain 7 does not exist\n")
    # detach with no daemon running: entries gone
    r = sim.run(0, [*py, "detach", "1", "0"])
    assert r.stdout == "detached domain 1 devid 0: removed (backend daemon not running)\n"
    assert sim.run(0, ["xenstore-exists", be], check=False).returncode != 0
    assert sim.run(0, ["xenstore-exists", fe], check=False).returncode != 0


def test_xenstore_unreachable_is_one_line(tmp_path):
    env = {**os.environ, "XENSTORED_PATH": str(tmp_path / "no-xenstored.sock")}
    r = subprocess.run(
        [sys.executable, "-m", "ncd.ncctl", "attach", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("ncctl: error: cannot connect to xenstore: ")
    assert r.stderr.count("\n") == 1


def test_attach_switch_trunk_ip(tree):
    rc, out, err = run(
        ["attach", "1", "--mac", "00:16:3e:00:00:01", "--switch", "sw0", "--trunk",
         "--ip", "198.18.0.2,2001:db8::0:2"], tree,
    )
    assert (rc, err) == (0, "")
    assert out == ("attached domain 1 devid 0 mac 00:16:3e:00:00:01 mtu 1500 trunk "
                   "ip 198.18.0.2,2001:db8::2 (port of switch sw0)\n")
    base = "/local/domain/0/backend/ncvif/1/0"
    c = tree.conn(0)
    assert c.read_bytes(f"{base}/switch") == b"sw0"
    assert c.read_bytes(f"{base}/trunk") == b"1"
    assert c.read_bytes(f"{base}/ip") == b"198.18.0.2 2001:db8::2"  # libxl: space-separated
    view = layout.read_backend(c, 0, 1, 0)
    assert (view.switch, view.trunk, view.ips, view.bridge) == (
        "sw0", True, ("198.18.0.2", "2001:db8::2"), None)
    # a plain vif has none of them
    assert run(["attach", "2", "--mac", "00:16:3e:00:00:02"], tree)[0] == 0
    view = layout.read_backend(c, 0, 2, 0)
    assert (view.switch, view.trunk, view.ips) == (None, False, ())


def test_attach_with_another_backend_domain(tree):
    rc, out, _ = run(["attach", "2", "--backend", "1", "--switch", "up"], tree)
    assert rc == 0 and out.endswith(" backend 1 (port of switch up)\n")
    c = tree.conn(0)
    assert c.read_bytes("/local/domain/1/backend/ncvif/2/0/switch") == b"up"
    assert c.read_bytes("/local/domain/2/device/ncvif/0/backend-id") == b"1"
    assert c.read_bytes("/local/domain/2/device/ncvif/0/backend") == (
        b"/local/domain/1/backend/ncvif/2/0")


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--switch", "sw.0"], "not a switch name: 'sw.0'"),
        (["--switch", "a" * 16], "not a switch name"),
        (["--ip", "198.18.0.300"], "not an IPv4 or IPv6 address: '198.18.0.300'"),
        (["--ip", "224.0.0.1"], "224.0.0.1 cannot be a vif's own address"),
        (["--ip", ",".join(f"198.18.0.{i}" for i in range(1, 18))], "17 addresses (at most 16)"),
        (["--bridge", "br0", "--switch", "sw0"], "not allowed with argument"),
    ],
)
def test_attach_forwarding_usage_errors(tree, capsys, argv, msg):
    before = dict(tree.nodes)
    with pytest.raises(SystemExit) as e:
        ncctl.main(["attach", "1", *argv], store_factory=lambda: tree.conn(0))
    assert e.value.code == 2
    assert msg in capsys.readouterr().err
    assert tree.nodes == before


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("switch", "../x", "switch: not a switch name"),
        ("trunk", "yes", "trunk: expected 0 or 1"),
        ("ip", "198.18.0.1 ::g", "ip: not an IPv4 or IPv6 address: '::g'"),
        ("ip", "0.0.0.0", "ip: 0.0.0.0 cannot be a vif's own address"),
    ],
)
def test_backend_reads_hostile_forwarding_keys(tree, key, value, msg):
    # the backend entry is dom0's, but a driver domain backs vifs from entries the
    # toolstack wrote: every value is parsed, a bad one names its key
    assert run(["attach", "1", "--switch", "sw0"], tree)[0] == 0
    c = tree.conn(0)
    c.write(f"/local/domain/0/backend/ncvif/1/0/{key}", value)
    with pytest.raises(parse.BadEntry, match=msg.replace("(", r"\(")):
        layout.read_backend(c, 0, 1, 0)
