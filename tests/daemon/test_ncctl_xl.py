"""ncctl in xl's words: DOMAIN names, VIFSPEC, detach by MAC, list --xl, help texts."""

from __future__ import annotations

import argparse

import pytest

from ncd import ncctl
from tests.daemon.test_ncctl import Daemon, run

BE1 = "/local/domain/0/backend/ncvif/1/0"


def keys(tree, path):  # type: ignore[no-untyped-def]
    c = tree.conn(0)
    return {k: c.read_bytes(f"{path}/{k}").decode() for k in c.directory(path)}


def test_attach_by_name_with_a_vifspec(tree) -> None:  # type: ignore[no-untyped-def]
    rc, out, err = run(
        [
            "attach",
            "domU1",
            "mac=00:16:3E:00:00:01,bridge=xenbr0,rate=100Mb/s",
            "ip=198.18.0.1 198.18.0.2,vifname=web0,mtu=9000,model=e1000",
        ],
        tree,
    )
    assert rc == 0
    assert err == "ncctl: note: model=e1000 ignored (only an emulated NIC has a model)\n"
    assert out == (
        "attached domain 1 devid 0 mac 00:16:3e:00:00:01 mtu 9000 bridge xenbr0 "
        "ip 198.18.0.1,198.18.0.2 rate 625000 bytes per 50000 us (web0)\n"
    )
    assert keys(tree, BE1) == {
        "frontend": "/local/domain/1/device/ncvif/0",
        "frontend-id": "1",
        "online": "1",
        "state": "1",
        "mac": "00:16:3e:00:00:01",
        "mtu": "9000",
        "handle": "0",
        "bridge": "xenbr0",
        "ip": "198.18.0.1 198.18.0.2",
        "rate": "625000,50000",
        "vifname": "web0",
    }
    assert keys(tree, "/local/domain/1/device/ncvif/0")["mtu"] == "9000"
    # a TAP name is one vif's
    rc, _, err = run(["attach", "domU2", "vifname=web0"], tree)
    assert (rc, err) == (1, "ncctl: error: vifname web0 is taken by domain 1 devid 0\n")


def test_flags_and_vifspec_mix_but_never_overlap(tree) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(
        [
            "attach",
            "1",
            "bridge=br0",
            "--mac",
            "00:16:3e:00:00:05",
            "--rate",
            "1MB/s@20ms",
            "--devid",
            "4",
        ],
        tree,
    )
    assert rc == 0 and "devid 4 mac 00:16:3e:00:00:05" in out
    assert keys(tree, "/local/domain/0/backend/ncvif/1/4")["rate"] == "20000,20000"
    before = dict(tree.nodes)
    for argv, msg in [
        (
            ["mac=00:16:3e:00:00:06", "--mac", "00:16:3e:00:00:07"],
            "mac: given both as --mac and in the vifspec",
        ),
        (["devid=5", "--devid", "5"], "devid: given both as --devid and in the vifspec"),
        (["trunk", "--trunk"], "trunk: given both as --trunk and in the vifspec"),
        (
            ["switch=sw0", "--bridge", "br0"],
            "switch: a vif is a switch port or a TAP in a bridge, not both",
        ),
        (["switch=sw0", "--vifname", "v0"], "vifname: a switch port has no TAP to name"),
        (["colour=red"], "vifspec: unknown key 'colour'"),
        (["rate=100Mb"], "vifspec: rate: invalid rate '100Mb'"),
    ]:
        rc, out, err = run(["attach", "1", *argv], tree)
        assert (rc, out) == (1, "")
        assert err.startswith(f"ncctl: error: {msg}"), err
    assert tree.nodes == before


def test_domain_names_resolve_as_xl_does(tree) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(["attach", "guest9"], tree)
    assert (rc, err) == (1, "ncctl: error: domain 'guest9': no domain of that name\n")
    tree.conn(0).write("/local/domain/2/name", "domU1")
    rc, _, err = run(["attach", "domU1"], tree)
    assert (rc, err) == (
        1,
        "ncctl: error: domain 'domU1': ambiguous, domains 1, 2 have that name\n",
    )
    tree.conn(0).write("/local/domain/2/name", "drv")
    # backend= by name: the entries go under domain 2's backend directory
    rc, out, err = run(["attach", "domU1", "backend=drv,mac=00:16:3e:00:00:01"], tree)
    assert (rc, err) == (0, "")
    assert out.endswith("backend 2 (ncvif1.0)\n")
    assert keys(tree, "/local/domain/1/device/ncvif/0")["backend-id"] == "2"
    rc, _, err = run(["attach", "domU1", "--backend", "nobody"], tree)
    assert err == "ncctl: error: backend 'nobody': no domain of that name\n"


def test_detach_by_name_and_mac(tree, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "none.sock"
    run(["attach", "domU1", "mac=00:16:3e:00:00:01"], tree)
    run(["attach", "domU1", "mac=00:16:3e:00:00:02"], tree)
    rc, _, err = run(["detach", "domU1", "00:16:3e:00:00:09"], tree, socket=sock)
    assert (rc, err) == (1, "ncctl: error: domain 1 has no ncvif with mac 00:16:3e:00:00:09\n")
    rc, out, err = run(["detach", "domU1", "00:16:3E:00:00:02"], tree, socket=sock)
    assert (rc, err) == (0, "")
    assert out == "detached domain 1 devid 1: removed (backend daemon not running)\n"
    rc, out, _ = run(["detach", "domU1", "0"], tree, socket=sock)
    assert out == "detached domain 1 devid 0: removed (backend daemon not running)\n"
    assert tree.conn(0).directory("/local/domain/0/backend/ncvif") == []


def test_list_xl_columns(tree, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run(["attach", "domU1", "mac=00:16:3e:00:00:01"], tree)
    run(["attach", "domU2", "mac=00:16:3e:00:00:02"], tree)
    fe = tree.conn(1)  # what the frontend writes: state and its vchan
    fe.write("/local/domain/1/device/ncvif/0/state", "4")
    fe.write("/local/domain/1/device/ncvif/0/queue-0/ring-ref", "8")
    fe.write("/local/domain/1/device/ncvif/0/queue-0/event-channel", "5")
    tree.conn(2).write("/local/domain/2/device/ncvif/0/queue-0/ring-ref", "0x10")  # hostile
    sock = tmp_path / "ncd.sock"
    vifs = {"vifs": [{"domid": 1, "devid": 0, "state": "Connected", "ifname": "ncvif1.0"}]}
    with Daemon(sock, {"list": vifs}):
        rc, out, err = run(["list", "--xl"], tree, socket=sock)
    assert (rc, err) == (0, "")
    rows = [r.split() for r in out.splitlines()]
    assert rows[0] == [
        "Dom",
        "Idx",
        "BE",
        "Mac",
        "Addr.",
        "handle",
        "state",
        "evt-ch",
        "ring-ref",
        "BE-path",
        "STATE",
        "IFNAME",
    ]
    assert rows[1] == [
        "1",
        "0",
        "0",
        "00:16:3e:00:00:01",
        "0",
        "4",
        "5",
        "8",
        BE1,
        "Connected",
        "ncvif1.0",
    ]
    assert rows[2] == [
        "2",
        "0",
        "0",
        "00:16:3e:00:00:02",
        "0",
        "1",
        "-1",
        "?",
        "/local/domain/0/backend/ncvif/2/0",
        "-",
        "-",
    ]
    rc, out, _ = run(["list", "--xl", "domU2"], tree, socket=tmp_path / "none.sock")
    assert rc == 0 and [r.split()[0] for r in out.splitlines()] == ["Dom", "2"]
    rc, out, err = run(["list", "domU2"], tree, socket=tmp_path / "none.sock")
    assert (rc, out, err) == (1, "", "ncctl: error: DOMAIN and --backend are for list --xl\n")
    rc, out, err = run(["list", "--xl", "--json"], tree, socket=tmp_path / "none.sock")
    assert (rc, out) == (1, "") and err.startswith("ncctl: error: list: --xl prints")


def _actions(p: argparse.ArgumentParser):  # type: ignore[no-untyped-def]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                yield from _actions(sp)
        elif not isinstance(a, argparse._HelpAction):
            yield p.prog, a


def test_every_option_has_help() -> None:
    missing = [f"{prog} {a.dest}" for prog, a in _actions(ncctl.build_parser()) if not a.help]
    assert missing == []


@pytest.mark.parametrize("cmd", ["attach", "detach", "list"])
def test_help_names_xl(cmd: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        ncctl.main([cmd, "--help"])
    assert "DOMAIN" in capsys.readouterr().out
