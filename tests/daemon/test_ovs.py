"""Open vSwitch bridges without a switch: vif-openvswitch's ``bridge`` syntax (parse), the
columns and argv ncd.ovs hands ovs-vsctl, how a bridge is told Linux from OVS, and the
errors naming the command (against the real ovs-vsctl where installed)."""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncd import layout, ovs, parse
from ncd.config import ConfigError, load_config
from ncd.parse import BadEntry
from tests.conftest import have
from tests.daemon.memstore import MemStore


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("xenbr0", ("xenbr0", None, ())),
        ("br.10", ("br", 10, ())),
        ("br.0", ("br", 0, ())),
        ("br.10:20:30", ("br", 10, (20, 30))),
        ("br:30:20:30", ("br", None, (20, 30))),
        ("br.4095:4095", ("br", 4095, (4095,))),
    ],
)
def test_ovs_bridge_syntax(value: str, want: tuple[object, ...]) -> None:
    assert parse.ovs_bridge("bridge", value) == want
    assert parse.bridge("bridge", value) == value


@pytest.mark.parametrize(
    "value",
    [
        "br.4096",
        "br:1:4096",
        "br.",
        "br:",
        "br::1",
        "br.1.2",
        ".10",
        "br.-1",
        "br.10:x",
        "a" * 16 + ".1",
        "br/x.1",
        "br 1",
    ],
)
def test_bad_ovs_bridges_name_the_key(value: str) -> None:
    with pytest.raises(BadEntry, match="^backend/x/bridge: "):
        parse.ovs_bridge("backend/x/bridge", value)


def test_bridge_takes_linux_names_that_are_not_ovs_syntax(installed: None) -> None:
    assert parse.bridge("bridge", "my.br") == "my.br"  # a Linux bridge may have a dot
    with pytest.raises(BadEntry, match="^bridge: "):
        parse.bridge("bridge", "br.10:x")
    assert parse.bridge("bridge", "br.5000") == "br.5000"  # a Linux name; no OVS port:
    assert _port_for("br.5000", None, FakeVsctl(bridges={"br": ""})) is None  # Linux says


@given(st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=40)))
def test_bridge_parsers_raise_only_bad_entry(raw: bytes | str | None) -> None:
    for fn in (parse.bridge, parse.ovs_bridge):
        try:
            fn("k", raw)
        except BadEntry as exc:
            assert str(exc).startswith("k: ")


def test_port_columns_and_argv() -> None:
    assert ovs.PortSpec("br").columns() == []
    assert ovs.PortSpec("br", 10, (20, 30)).columns() == ["tag=10", "trunks=20,30"]
    assert ovs.Vsctl().argv("show") == ["ovs-vsctl", "--timeout=10", "show"]
    assert ovs.Vsctl("unix:/x/db.sock", 3).argv("show") == [
        "ovs-vsctl",
        "--db=unix:/x/db.sock",
        "--timeout=3",
        "show",
    ]


@dataclass(frozen=True)
class FakeVsctl(ovs.Vsctl):
    """Answers br-exists / datapath_type from ``bridges``; ``down``: every call fails."""

    db: str = "unix:/fake"
    bridges: dict[str, str] = field(default_factory=dict)  # name -> datapath_type
    down: bool = False
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
        self.calls.append(args)
        if self.down:
            raise ovs.OvsError(errno.EIO, f"{' '.join(self.argv(*args))}: connection failed")
        if args[0] == "br-exists":
            assert ok == (0, 2)
            return (0 if args[1] in self.bridges else 2), ""
        assert args[:3] == ("--if-exists", "get", "Bridge"), args
        return 0, f'"{self.bridges.get(args[3], "")}"\n'


def _port_for(bridge: str, kind: str | None, vsctl: ovs.Vsctl) -> ovs.PortSpec | None:
    return asyncio.run(ovs.port_for(bridge, kind, vsctl))


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ovs, "installed", lambda: True)


def test_a_linux_bridge_wins_and_ovs_is_not_asked(installed: None) -> None:
    v = FakeVsctl(bridges={"xenbr0": ""})
    assert _port_for("xenbr0", "bridge", v) is None
    assert v.calls == []


def test_ovs_bridges_and_their_datapath(installed: None) -> None:
    v = FakeVsctl(bridges={"ovsbr0": "netdev", "br1": ""})
    assert _port_for("ovsbr0.10:20", "tun", v) == ovs.PortSpec("ovsbr0", 10, (20,), True)
    assert _port_for("br1", "openvswitch", v) == ovs.PortSpec("br1", None, (), False)
    assert _port_for("br1.7", None, v) == ovs.PortSpec("br1", 7, (), False)


def test_neither_bridge_is_an_error_naming_the_command(installed: None) -> None:
    with pytest.raises(ovs.OvsError, match=r"bridge nob\.5: neither .*br-exists nob"):
        _port_for("nob.5", None, FakeVsctl())
    assert _port_for("eth0", "", FakeVsctl()) is None  # a NIC: the Linux path says why
    with pytest.raises(
        ovs.OvsError,
        match=r"bridge br0: no Linux bridge, and asking Open "
        r"vSwitch failed: ovs-vsctl --db=unix:/fake",
    ):
        _port_for("br0", None, FakeVsctl(down=True))


def test_without_ovs_vsctl_the_linux_path_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ovs, "installed", lambda: False)
    v = FakeVsctl(bridges={"ovsbr0": ""})
    assert _port_for("ovsbr0.10", None, v) is None
    assert v.calls == []


@pytest.mark.skipif(not have("ovs-vsctl"), reason="needs ovs-vsctl (openvswitch-switch)")
def test_real_vsctl_error_names_the_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = ovs.Vsctl(f"unix:{tmp_path}/none.sock", timeout=5)
    with pytest.raises(ovs.OvsError) as ei:
        asyncio.run(v.add_port(ovs.PortSpec("br", 3), "ncvif1.0", {"attached-mac": "x"}))
    msg = str(ei.value)
    assert (
        f"ovs-vsctl --db=unix:{tmp_path}/none.sock --timeout=5 -- --if-exists del-port "
        "ncvif1.0 -- add-port br ncvif1.0 tag=3 -- set Interface ncvif1.0 "
        'external-ids:"attached-mac"="x": ' in msg
    ), msg
    assert "database connection failed" in msg, msg


def test_config_ovs_db(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "ncd.toml"
    f.write_text('[backend]\novs_db = "unix:/run/o/db.sock"\nbridge = "ovsbr0.10:20"\n')
    cfg = load_config(f)
    assert cfg.backend.ovs_db == "unix:/run/o/db.sock" and cfg.backend.bridge == "ovsbr0.10:20"
    (tmp_path / "empty.toml").write_text("")
    assert load_config(tmp_path / "empty.toml").backend.ovs_db == ""
    f.write_text('[backend]\novs_db = "/run/o/db.sock"\n')
    with pytest.raises(ConfigError, match="backend.ovs_db: '/run/o/db.sock' is not unix:"):
        load_config(f)


def test_attach_entries_take_the_ovs_syntax() -> None:
    """What ncctl attach validates (VifSpec) and the backend reads back (read_backend)."""
    spec = layout.VifSpec(0, 5, 0, "00:16:3e:00:00:05", bridge="ovsbr0.10:20:30")
    assert layout.backend_entries(spec)["bridge"] == "ovsbr0.10:20:30"
    with pytest.raises(BadEntry, match="^bridge: "):
        layout.VifSpec(0, 5, 0, "00:16:3e:00:00:05", bridge="ovsbr0.10:99999")
    xs = MemStore().conn(0)
    base = layout.backend_dir(0, 5, 0)
    for key, value in layout.backend_entries(spec).items():
        xs.write(f"{base}/{key}", value)
    assert layout.read_backend(xs, 0, 5, 0).bridge == "ovsbr0.10:20:30"
    xs.write(f"{base}/bridge", "ovsbr0.10:4096")
    with pytest.raises(BadEntry, match="/bridge: a VLAN id above 4095"):
        layout.read_backend(xs, 0, 5, 0)


def test_a_hung_vsctl_is_killed(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """One that ignores its own --timeout (here: a stand-in that sleeps) is killed."""
    hung = tmp_path / "ovs-vsctl"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    monkeypatch.setattr(ovs, "VSCTL", str(hung))
    with pytest.raises(ovs.OvsError, match=r"ovs-vsctl --timeout=0.2 br-exists b: no answer"):
        asyncio.run(ovs.Vsctl(timeout=0.2).bridge_exists("b"))
    monkeypatch.setattr(ovs, "VSCTL", str(tmp_path / "none"))
    with pytest.raises(ovs.OvsError, match=r"none --timeout=0.2 br-exists b: No such file"):
        asyncio.run(ovs.Vsctl(timeout=0.2).bridge_exists("b"))
