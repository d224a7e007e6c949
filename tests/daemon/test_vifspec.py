"""xl's vifspec and rate, as libxlu parses them (tools/libs/util/libxlu_vif.c, xl_parse.c)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncd import vifspec
from ncd.parse import BadEntry
from ncd.vifspec import Rate, VifOptions, parse_rate, parse_vifspec


@pytest.mark.parametrize(
    "text,bytes_,usec",
    [
        # the man page's examples
        ("10Mb/s", 62500, 50000),
        ("250KB/s", 12500, 50000),
        ("1MB/s@20ms", 20000, 20000),
        # every unit, the default 50 ms interval
        ("100Mb/s", 625000, 50000),
        ("1B/s", 0, 50000),  # 1 * 50000 // 1000000: libxl's integer arithmetic
        ("20B/s", 1, 50000),
        ("8b/s", 0, 50000),  # 1 byte/s
        ("80b/s", 0, 50000),
        ("160b/s", 1, 50000),
        ("3KB/s", 150, 50000),
        ("3Kb/s", 18, 50000),  # 3000 // 8 = 375 bytes/s, * 0.05 = 18.75 -> 18
        ("7MB/s", 350000, 50000),
        ("7Mb/s", 43750, 50000),
        ("2GB/s", 100_000_000, 50000),
        ("1Gb/s", 6_250_000, 50000),
        ("4294967295B/s", 214748364, 50000),
        # intervals: s, ms, us, m, u, and no unit (seconds)
        ("1MB/s@1s", 1_000_000, 1_000_000),
        ("1MB/s@2", 2_000_000, 2_000_000),
        ("1MB/s@20m", 20000, 20000),
        ("1MB/s@500us", 500, 500),
        ("1MB/s@500u", 500, 500),
        ("100Mb/s@10ms", 125000, 10000),
        ("1B/s@4294s", 4294, 4_294_000_000),
    ],
)
def test_rate_as_xl(text: str, bytes_: int, usec: int) -> None:
    r = parse_rate("rate", text)
    assert r == Rate(bytes_, usec)
    assert r.entry == f"{bytes_},{usec}"


@pytest.mark.parametrize(
    "text,why",
    [
        ("", "no rate specified"),
        ("@20ms", "no rate specified"),
        ("100Mb", "invalid rate '100Mb'"),
        ("100mb/s", "invalid rate"),  # xl's units are upper case, bits a lower-case b
        ("100MiB/s", "invalid rate"),
        ("100 Mb/s", "invalid rate"),
        ("-1Mb/s", "invalid rate"),
        ("0x10Mb/s", "invalid rate"),
        ("1.5Mb/s", "invalid rate"),
        ("0Mb/s", "rate 0 out of range 1..4294967295"),
        ("4294967296B/s", "rate 4294967296 out of range"),
        ("010Mb/s", "rate 010 has a leading 0 (xl would read it as octal)"),
        ("1Mb/s@", "invalid replenishment interval ''"),
        ("1Mb/s@ms", "invalid replenishment interval 'ms'"),
        ("1Mb/s@20ns", "invalid replenishment interval '20ns'"),
        ("1Mb/s@20ms@1s", "invalid replenishment interval"),
        ("1Mb/s@0ms", "interval 0 out of range"),
        ("1Mb/s@05ms", "interval 05 has a leading 0"),
        ("1Mb/s@4295s", "interval 4295000000 us out of range 1..4294967295"),
        ("4294967295GB/s@4294967295us", "rate overflow"),
    ],
)
def test_rate_errors_name_the_key(text: str, why: str) -> None:
    with pytest.raises(BadEntry) as e:
        parse_rate("rate", text)
    assert str(e.value).startswith("rate: ")
    assert why in str(e.value)


def test_every_key() -> None:
    o = parse_vifspec(
        [
            "mac=00:16:3E:74:3D:76,bridge=xenbr0,ip=198.18.0.1 2001:db8::1,rate=1MB/s@20ms,"
            "vifname=vif-web,mtu=9000,backend=drv1,devid=3,trunk"
        ]
    )
    assert o == VifOptions(
        mac="00:16:3e:74:3d:76",
        bridge="xenbr0",
        ips=("198.18.0.1", "2001:db8::1"),
        rate=Rate(20000, 20000),
        vifname="vif-web",
        mtu=9000,
        backend="drv1",
        devid=3,
        trunk=True,
    )
    assert o.given() == {
        "mac",
        "bridge",
        "ip",
        "rate",
        "vifname",
        "mtu",
        "backend",
        "devid",
        "trunk",
    }
    assert parse_vifspec(["switch=sw0", "trunk=0"]) == VifOptions(switch="sw0", trunk=False)
    assert parse_vifspec(["backend=7"]).backend == "7"


def test_tokens_as_xl_splits_them() -> None:
    # strtok on ',': empty items vanish, leading spaces go; several words are one list
    assert parse_vifspec(["", " mac=00:16:3e:00:00:01,, bridge=br0", "mtu=1400,"]) == (
        VifOptions(mac="00:16:3e:00:00:01", bridge="br0", mtu=1400)
    )
    assert parse_vifspec([]) == VifOptions()


def test_ignored_keys_leave_a_note() -> None:
    o = parse_vifspec(["type=vif,model=e1000,accel=x,script=/etc/xen/scripts/vif-bridge"])
    assert o == VifOptions()
    assert o.notes == (
        "type=vif: an ncvif is always a paravirtual device",
        "model=e1000 ignored (only an emulated NIC has a model)",
        "accel ignored (xl: not supported)",
    )
    assert parse_vifspec(["script=vif-bridge"]).notes == ()


@pytest.mark.parametrize(
    "spec,msg",
    [
        (
            "colour=red",
            "vifspec: unknown key 'colour' (ncd knows mac, bridge, ip, rate, "
            "vifname, mtu, backend, devid, switch, trunk, type, model, accel, script)",
        ),
        ("MAC=00:16:3e:00:00:01", "vifspec: unknown key 'MAC'"),
        ("mac", "vifspec: mac: needs a value (mac=...)"),
        ("bridge=", "vifspec: bridge: empty value"),
        ("mac=00:16:3e:00:00:01,mac=00:16:3e:00:00:02", "vifspec: mac: given twice"),
        ("mac=01:16:3e:00:00:01", "vifspec: mac: 01:16:3e:00:00:01 is a multicast address"),
        ("mac=00:16:3e:00:00", "vifspec: mac: not a MAC address"),
        ("bridge=a-bridge-name-too-long", "vifspec: bridge: not an interface name"),
        ("vifname=a/b", "vifspec: vifname: not an interface name"),
        ("vifname=ncvif3.0", "vifspec: vifname: ncvif3.0 has the form of ncd's own TAP names"),
        ("ip=198.18.0.300", "vifspec: ip: not an IPv4 or IPv6 address: '198.18.0.300'"),
        ("ip=224.0.0.1", "vifspec: ip: 224.0.0.1 cannot be a vif's own address"),
        ("rate=100Mbit/s", "vifspec: rate: invalid rate '100Mbit/s'"),
        ("mtu=67", "vifspec: mtu: 67 out of range 68..65521"),
        ("mtu=0x600", "vifspec: mtu: not a decimal number"),
        ("devid=65536", "vifspec: devid: 65536 out of range 0..65535"),
        ("devid=-1", "vifspec: devid: not a decimal number"),
        ("backend=32752", "vifspec: backend: 32752 out of range 0..32751"),
        ("switch=sw.0", "vifspec: switch: not a switch name"),
        ("trunk=yes", "vifspec: trunk: expected 0 or 1, got 'yes'"),
        (
            "switch=sw0,bridge=br0",
            "switch: a vif is a switch port or a TAP in a bridge, not both",
        ),
        ("switch=sw0,vifname=v0", "vifname: a switch port has no TAP to name"),
        ("type=ioemu", "vifspec: type: ioemu is an emulated NIC"),
        ("type=pv", "vifspec: type: 'pv' is not vif or ioemu"),
        ("script=vif-route", "vifspec: script: ncd runs no hotplug script"),
        ("gatewaydev=eth0", "vifspec: gatewaydev: vif-route's gateway device"),
        ("netdev=eth0", "vifspec: netdev: vif-route's gateway device"),
        ("forwarddev=eth0", "vifspec: forwarddev: COLO is not supported by ncd"),
        ("colo_compare_out=x", "vifspec: colo_compare_out: COLO is not supported by ncd"),
    ],
)
def test_errors_name_the_key(spec: str, msg: str) -> None:
    with pytest.raises(BadEntry) as e:
        parse_vifspec([spec])
    assert str(e.value).startswith(msg)


def test_macs_in_xens_oui() -> None:
    for mac in (vifspec.random_mac(), vifspec.stable_mac("guest1", 0)):
        assert mac.startswith("00:16:3e:")
        assert int(mac.split(":")[3], 16) < 0x80  # libxl clears the top bit of byte 4
    assert vifspec.stable_mac("guest1", 0) == vifspec.stable_mac("guest1", 0)
    assert vifspec.stable_mac("guest1", 0) != vifspec.stable_mac("guest1", 1)
    assert vifspec.stable_mac("guest1", 0) != vifspec.stable_mac("guest2", 0)


_ALPHABET = st.sampled_from(list("mac=bridge,ip rate@/sKMGBbu0123456789:.-_ fx\x00\u0663"))


@given(st.lists(st.text(_ALPHABET, max_size=30), max_size=3))
def test_any_text_parses_or_is_refused_naming_a_key(words: list[str]) -> None:
    try:
        o = parse_vifspec(words)
    except BadEntry as e:
        assert str(e).split(":")[0] in ("vifspec", "switch", "vifname"), str(e)
    else:
        assert o.checked() is o


@given(st.text(_ALPHABET, max_size=30))
def test_any_rate_text_parses_or_is_refused(text: str) -> None:
    try:
        r = parse_rate("rate", text)
    except BadEntry as e:
        assert str(e).startswith("rate: ")
    else:
        assert 0 <= r.bytes_per_interval < 2**64 and 0 < r.interval_usecs < 2**32
        assert r.entry == f"{r.bytes_per_interval},{r.interval_usecs}"
