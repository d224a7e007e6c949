"""ncd.parse: the one parser of untrusted xenstore values; hostile inputs are refused
with a BadEntry naming the key, never another exception and never a wrong value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncd import parse
from ncd.parse import DOMID_MAX, BadEntry
from ncd.vchan import xsentry

PARSERS = [
    lambda r: parse.uint("k", r, 0, 100),
    lambda r: parse.domid("k", r),
    lambda r: parse.devid("k", r),
    lambda r: parse.mtu("k", r),
    lambda r: parse.gref("k", r),
    lambda r: parse.evtchn_port("k", r),
    lambda r: parse.flag("k", r),
    lambda r: parse.optional_flag("k", r),
    lambda r: parse.mac("k", r),
    lambda r: parse.ifname("k", r),
    lambda r: parse.exact("k", r, "/a/b"),
    lambda r: parse.rate("k", r),
]


@given(st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=40)),
       st.sampled_from(PARSERS))
def test_parsers_only_raise_badentry_naming_the_key(raw, parser):
    try:
        parser(raw)
    except BadEntry as exc:
        assert str(exc).startswith("k: ")


@given(st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_uint_round_trips_with_leading_zeros(n, zeros):
    raw = "0" * zeros + str(n)
    if len(raw) <= parse.UINT_DIGITS:
        assert parse.uint("k", raw, 0, 2**32 - 1) == n
        assert parse.uint("k", raw.encode(), 0, 2**32 - 1) == n


@given(st.text(min_size=1, max_size=12))
def test_uint_accepts_exactly_ascii_digits(raw):
    ok = raw.isascii() and raw.isdigit() and len(raw) <= parse.UINT_DIGITS
    try:
        got = parse.uint("k", raw, 0, 10**10)
    except BadEntry:
        assert not ok
    else:
        assert ok and got == int(raw)


@pytest.mark.parametrize("raw", [
    "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() and int() accept it
    "1\u0663", "\uff11",  # FULLWIDTH DIGIT ONE
    "\u00b2",  # SUPERSCRIPT TWO: isdigit() but not int()
    "1\u0663".encode(), "+1", "-1", " 1", "1 ", "1\n", "1\x00", "0x10", "1_000", "1e3", "",
    "12345678901",  # more digits than any uint32 needs
])
def test_uint_refuses(raw):
    with pytest.raises(BadEntry, match="^k: "):
        parse.uint("k", raw, 0, 2**40)


def test_uint_bounds_and_messages():
    assert parse.uint("k", b"100", 0, 100) == 100
    with pytest.raises(BadEntry, match="k: 101 out of range 0..100"):
        parse.uint("k", b"101", 0, 100)
    with pytest.raises(BadEntry, match="k: missing"):
        parse.uint("k", None, 0, 1)
    with pytest.raises(BadEntry, match=r"k: value too long \(4097 bytes\)"):
        parse.text("k", b"1" * 4097)
    with pytest.raises(BadEntry, match="k: not a state: '1x'"):
        parse.uint("k", "1x", 0, 9, what="a state")


def test_domid_max_is_below_the_first_reserved_domid():
    # xen/include/public/xen.h: DOMID_FIRST_RESERVED 0x7FF0 (DOMID_SELF ...) is no domain
    assert DOMID_MAX == 0x7FEF == parse.DOMID_FIRST_RESERVED - 1
    assert parse.domid("k", str(DOMID_MAX)) == DOMID_MAX
    for reserved in ("32752", "32753", "65535"):
        with pytest.raises(BadEntry, match="out of range 0..32751"):
            parse.domid("k", reserved)


def test_flags():
    assert parse.flag("k", b"1") is True and parse.flag("k", "0") is False
    assert parse.optional_flag("k", None) is False
    for bad in (b"", b"yes", b"01", b"1 ", b"\xd9\xa1"):
        with pytest.raises(BadEntry, match="^k: "):
            parse.flag("k", bad)
    with pytest.raises(BadEntry, match="k: missing"):
        parse.flag("k", None)


def test_mac():
    assert parse.mac("k", b"00:16:3E:AA:bb:01") == "00:16:3e:aa:bb:01"
    for bad, needle in ((b"01:16:3e:aa:bb:01", "multicast"), (b"00:00:00:00:00:00", "zero"),
                        (b"00:16:3e:aa:bb", "not a MAC"), (b"00-16-3e-aa-bb-01", "not a MAC"),
                        ("00:16:3e:aa:bb:\u0661\u0661", "not ASCII")):
        with pytest.raises(BadEntry, match=needle):
            parse.mac("k", bad)


def test_grant_ref_and_port_ranges():
    assert parse.gref("k", str(2**32 - 1)) == 2**32 - 1
    assert parse.evtchn_port("k", str(2**17 - 1)) == 2**17 - 1
    for fn, bad in ((parse.gref, "0"), (parse.gref, str(2**32)), (parse.evtchn_port, "0"),
                    (parse.evtchn_port, str(2**17))):
        with pytest.raises(BadEntry, match="out of range"):
            fn("k", bad)


class _Store:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def read(self, path: str) -> str:
        return self.values[path]


def test_the_vchan_entry_reads_through_parse():
    ok = _Store({"q/ring-ref": "8", "q/event-channel": "5", "domid": "3"})
    assert xsentry.read_entry(ok, "q") == (8, 5)  # type: ignore[arg-type]
    assert xsentry.own_domid(ok) == 3  # type: ignore[arg-type]
    bad = _Store({"q/ring-ref": "\u0668", "q/event-channel": "5", "domid": "32752"})
    with pytest.raises(BadEntry, match="q/ring-ref: not a decimal number"):
        xsentry.read_entry(bad, "q")  # type: ignore[arg-type]
    with pytest.raises(BadEntry, match="domid: 32752 out of range"):
        xsentry.own_domid(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (None, parse.Rate(0, 0)),  # no key: unlimited, as libxl writes none
        (b"625000,50000", parse.Rate(625_000, 50_000)),  # xl's rate=100Mb/s
        ("0,0", parse.Rate(0, 0)),
        (b"18446744073709551615,4294967295", parse.Rate(2**64 - 1, 2**32 - 1)),
        (b"00012,0005", parse.Rate(12, 5)),  # strtoul takes leading zeros
    ],
)
def test_rate_accepts_libxl_values(raw, want):
    got = parse.rate("backend/ncvif/1/0/rate", raw)
    assert got == want
    assert got.unlimited == (want.bytes == 0 or want.usec == 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"625000", b"625000,", b",50000", b"625000;50000", b"625000,50000,1",
        b" 625000,50000", b"625000,50000\n", b"+625000,50000", b"-1,50000", b"0x10,5",
        b"625000,50000ms", b"1.5,50000", "\u0663,5", b"18446744073709551616,1",
        b"1,4294967296", b"1" * 21 + b",1", b"\xff,1",
    ],
)
def test_rate_refuses_anything_else_naming_the_key(raw):
    with pytest.raises(BadEntry, match="^backend/ncvif/1/0/rate: "):
        parse.rate("backend/ncvif/1/0/rate", raw)


def test_rate_reads_as_an_operator_would():
    assert parse.Rate(625_000, 50_000).bits_per_second() == 100e6
    assert str(parse.Rate(625_000, 50_000)) == "625000,50000 (100 Mbit/s)"
    assert str(parse.UNLIMITED) == "unlimited"
