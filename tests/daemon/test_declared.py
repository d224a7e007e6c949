"""Declared vifs: ``[[vif]]`` in the config (devids as libxl numbers them, errors naming
the table), and one reconcile pass against an in-memory xenstore: attach by name, once
per domain, a new domid of the same name again, ambiguous names and its own domain
refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ncd import layout, vifspec
from ncd.config import ConfigError, load_config
from ncd.daemon.declared import DeclaredVifs
from ncd.vifspec import Rate


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "ncd.toml"
    p.write_text(text)
    return load_config(p)


def vif(domain: str, spec: str) -> str:
    return f'[[vif]]\ndomain = "{domain}"\nspec = "{spec}"\n'


def test_vif_tables_and_devids(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        vif("web", "bridge=xenbr0,rate=100Mb/s")
        + vif("db", "")
        + vif("web", "devid=2,mac=00:16:3e:00:00:07")
        + vif("web", "switch=sw0"),
    )
    got = [(v.domain, v.devid, v.mac) for v in cfg.vifs]
    assert got == [
        ("web", 3, vifspec.stable_mac("web", 3)),  # after the highest given, as libxl
        ("web", 2, "00:16:3e:00:00:07"),
        ("web", 4, vifspec.stable_mac("web", 4)),
        ("db", 0, vifspec.stable_mac("db", 0)),
    ]
    assert cfg.vifs[0].options.rate == Rate(625000, 50000)
    assert cfg.vifs[0].spec == "bridge=xenbr0,rate=100Mb/s"
    assert load(tmp_path, "").vifs == ()


@pytest.mark.parametrize(
    "text,msg",
    [
        (vif("web", "colour=red"), "vif[0]: vifspec: unknown key 'colour'"),
        (vif("web", "") + vif("web", "rate=1Mb"), "vif[1]: vifspec: rate: invalid rate '1Mb'"),
        (
            vif("web", "backend=0"),
            "vif[0].spec: backend: a declared vif's backend is the daemon that declares it",
        ),
        (vif("web", "devid=1") + vif("web", "devid=1"), "vif: domain 'web' has devid 1 twice"),
        (vif("7", ""), "vif[0].domain: '7' is not a domain name"),
        (vif("", ""), "vif[0].domain: '' is not a domain name"),
        ('[[vif]]\ndomain = "web"\n', "vif[0].spec: expected a string"),
        ('[[vif]]\ndomain = "web"\nspec = ""\nmac = "x"\n', "unknown key vif[0].mac"),
        ('[vif]\ndomain = "web"\n', "vif: expected [[vif]] tables"),
    ],
)
def test_bad_vif_tables_name_the_key(tmp_path: Path, text: str, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert msg in str(e.value), str(e.value)


def declared(tmp_path: Path, tree, text: str) -> DeclaredVifs:  # type: ignore[no-untyped-def]
    return DeclaredVifs(tree.conn(0), 0, load(tmp_path, text).vifs)


def test_reconcile_attaches_by_name_once_per_domain(tmp_path: Path, tree, caplog) -> None:  # type: ignore[no-untyped-def]
    d = declared(
        tmp_path, tree, vif("domU1", "mac=00:16:3e:00:00:31,rate=1MB/s@20ms") + vif("nobody", "")
    )
    c = tree.conn(0)
    d.reconcile()
    assert layout.list_backend_devices(c, 0) == [(1, 0)]
    view = layout.read_backend(c, 0, 1, 0)
    assert view.mac == "00:16:3e:00:00:31" and view.online
    assert c.read_bytes("/local/domain/0/backend/ncvif/1/0/rate") == b"20000,20000"
    before = dict(tree.nodes)
    d.reconcile()
    assert tree.nodes == before  # nothing twice
    # a daemon restarted (a new DeclaredVifs) finds it there and leaves it
    again = declared(tmp_path, tree, vif("domU1", "mac=00:16:3e:00:00:32"))
    with caplog.at_level(logging.INFO, "ncd.declared"):
        again.reconcile()
    assert tree.nodes == before and again.handled == {(1, 0)}
    assert [r.getMessage() for r in caplog.records] == [
        "declared vif 'domU1' devid 0 (domain 1): already attached"
    ]
    # the operator detaches it: it stays detached while that domain lives
    layout.remove_entries(c, 0, 1, 0)
    d.reconcile()
    assert layout.list_backend_devices(c, 0) == []
    # domain 1 goes, a new one of that name comes (a reboot): attached again
    c.rm("/local/domain/1")
    tree.add_domain(3)
    c.write("/local/domain/3/name", "domU1")
    d.reconcile()
    assert layout.list_backend_devices(c, 0) == [(3, 0)]
    assert d.handled == {(3, 0)}


def test_reconcile_refuses_ambiguous_names_and_itself(tmp_path: Path, tree, caplog) -> None:  # type: ignore[no-untyped-def]
    c = tree.conn(0)
    c.write("/local/domain/2/name", "domU1")
    d = declared(tmp_path, tree, vif("domU1", "") + vif("Domain-0", ""))
    with caplog.at_level(logging.INFO, "ncd.declared"):
        d.reconcile()
        d.reconcile()
    assert layout.list_backend_devices(c, 0) == []
    msgs = [r.getMessage() for r in caplog.records]
    assert (
        msgs.count("declared vif for 'domU1': domains 1, 2 share that name; attaching to none") == 1
    )
    assert (
        msgs.count(
            "declared vif 'Domain-0' devid 0 (domain 0): that is this daemon's own "
            "domain; not attached"
        )
        == 1
    )
    c.write("/local/domain/2/name", "domU2")
    d.reconcile()
    assert layout.list_backend_devices(c, 0) == [(1, 0)]
    assert layout.read_backend(c, 0, 1, 0).mac == vifspec.stable_mac("domU1", 0)


def test_reconcile_without_the_right_to_list_domains(tmp_path: Path, tree, caplog) -> None:  # type: ignore[no-untyped-def]
    # a driver domain (here domain 2) may not list /local/domain: one warning, no crash
    d = DeclaredVifs(tree.conn(2), 2, load(tmp_path, vif("domU1", "")).vifs)
    tree.conn(0).set_perms("/local/domain", [layout.Perm(0, "n")])
    with caplog.at_level(logging.WARNING, "ncd.declared"):
        d.reconcile()
        d.reconcile()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and msgs[0].startswith("declared vifs: cannot list the domains: ")
    assert "Permission denied" in msgs[0]
