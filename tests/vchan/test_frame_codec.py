"""Record codec: the Python reference (tests/framecodec.py) and the C parser agree,
round-trip, and reject every malformed length or vnet header (negotiation:
tests/daemon/test_features.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncd.features import PROTOCOL_VERSION, Features
from ncd.vchan._lib import ffi, lib
from tests import framecodec as fr

ALL = int(Features.ALL)


def c_parse(buf: bytes, max_frame: int = fr.ETH_MAX, features: int = ALL,
            ring_size: int = 0) -> tuple[int, int, int]:
    records = ffi.new("uint32_t *")
    consumed = ffi.new("size_t *")
    src = ffi.from_buffer("uint8_t[]", buf) if buf else ffi.NULL
    err = lib.ncd_frame_parse(src, len(buf), max_frame, features, ring_size, records, consumed)
    return err, records[0], consumed[0]


def c_encode(frame: bytes, vnet: bytes) -> bytes:
    out = ffi.new("uint8_t[]", len(frame) + fr.REC_HDR_SIZE + 8)
    n = lib.ncd_frame_encode(out, len(out), ffi.from_buffer("uint8_t[]", vnet),
                             ffi.from_buffer("uint8_t[]", frame), len(frame))
    return bytes(ffi.buffer(out, n))


def record(rec_len: int, vnet: bytes = bytes(10), body: bytes | None = None) -> bytes:
    frame = body if body is not None else bytes(max(rec_len - 10, 0))
    return struct.pack("<I", rec_len) + vnet + frame


def test_constants_match_c() -> None:
    assert lib.NCD_PROTOCOL_VERSION == PROTOCOL_VERSION
    assert lib.NCD_REC_LEN_MIN == fr.REC_LEN_MIN == 24
    assert lib.NCD_ETH_MAX == fr.ETH_MAX
    assert lib.NCD_REC_HDR_SIZE == fr.REC_HDR_SIZE == 14
    for name, bit in Features.__members__.items():
        if name not in ("NONE",):
            assert getattr(lib, f"NCD_FEAT_{name}") == int(bit)
    for e in fr.Err:
        assert getattr(lib, f"NCD_FRAME_{e.name}") == int(e)


def test_layout_is_le32_len_then_vnet_then_frame() -> None:
    h = fr.VnetHdr(flags=1, gso_type=fr.GSO_TCPV4, hdr_len=54, gso_size=1448, csum_start=34,
                   csum_offset=16)
    rec = fr.encode(b"E" * 100, h)
    assert rec[:4] == (110).to_bytes(4, "little")
    assert rec[4:14] == bytes([1, 1, 54, 0, 0xA8, 0x05, 34, 0, 16, 0])
    assert rec[14:] == b"E" * 100


vnet_valid = st.one_of(
    st.just(fr.VnetHdr()),
    st.builds(fr.VnetHdr, flags=st.just(fr.F_DATA_VALID)),
)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.binary(min_size=14, max_size=3000), min_size=0, max_size=8),
       vnet=vnet_valid)
def test_roundtrip_python_and_c(frames: list[bytes], vnet: fr.VnetHdr) -> None:
    stream = b"".join(fr.encode(f, vnet) for f in frames)
    assert stream == b"".join(c_encode(f, vnet.pack()) for f in frames)
    err, recs, used = fr.parse(stream)
    assert err == fr.Err.OK and used == len(stream)
    assert [body for _, body in recs] == frames and all(h == vnet for h, _ in recs)
    assert c_parse(stream) == (0, len(frames), len(stream))
    # every strict prefix that cuts a record is INCOMPLETE, never an error
    if stream:
        cut = len(stream) - 1
        assert fr.parse(stream[:cut])[0] == fr.Err.INCOMPLETE
        assert c_parse(stream[:cut])[0] == fr.Err.INCOMPLETE


def test_big_gso_frame_roundtrips() -> None:
    h = fr.VnetHdr(flags=fr.F_NEEDS_CSUM, gso_type=fr.GSO_TCPV6, hdr_len=74, gso_size=1428,
                   csum_start=54, csum_offset=16)
    frame = bytes(range(256)) * 256 + b"\x01" * (fr.ETH_MAX - 65536)
    rec = fr.encode(frame, h)
    assert c_parse(rec) == (0, 1, len(rec))
    assert fr.parse(rec)[1] == [(h, frame)]


@pytest.mark.parametrize("rec_len,max_frame,ring,expect", [
    (0, fr.ETH_MAX, 0, fr.Err.SHORT),
    (10, fr.ETH_MAX, 0, fr.Err.SHORT),
    (23, fr.ETH_MAX, 0, fr.Err.SHORT),
    (24, fr.ETH_MAX, 0, fr.Err.OK),
    (fr.REC_LEN_MAX, fr.ETH_MAX, 0, fr.Err.OK),
    (fr.REC_LEN_MAX + 1, fr.ETH_MAX, 0, fr.Err.TOO_LONG),
    (0xFFFFFFFF, fr.ETH_MAX, 0, fr.Err.TOO_LONG),
    (0x80000018, fr.ETH_MAX, 0, fr.Err.TOO_LONG),
    (1528, 1518, 0, fr.Err.OK),
    (1529, 1518, 0, fr.Err.TOO_LONG),
    (1020, fr.ETH_MAX, 1024, fr.Err.OK),
    (1021, fr.ETH_MAX, 1024, fr.Err.OVER_RING),
    (65532, fr.ETH_MAX, 65536, fr.Err.OK),
    (65533, fr.ETH_MAX, 65536, fr.Err.OVER_RING),
])
def test_length_rules(rec_len: int, max_frame: int, ring: int, expect: fr.Err) -> None:
    assert fr.check_len(rec_len, max_frame, ring) == expect
    body_len = min(max(rec_len - 10, 0), 70000)
    buf = record(rec_len, body=bytes(body_len))
    err, _, used = c_parse(buf, max_frame, ALL, ring)
    if expect == fr.Err.OK:
        assert (err, used) == (0, len(buf))
    else:
        assert (err, used) == (int(expect), 0)
        assert fr.parse(buf, max_frame, ALL, ring)[0] == expect


def test_bad_record_after_good_ones_reports_position() -> None:
    good = fr.encode(b"x" * 60)
    buf = good + good + record(5)
    assert c_parse(buf) == (int(fr.Err.SHORT), 2, 2 * len(good))
    err, recs, used = fr.parse(buf)
    assert (err, len(recs), used) == (fr.Err.SHORT, 2, 2 * len(good))


@pytest.mark.parametrize("h,frame_len,features,expect", [
    (fr.VnetHdr(flags=0x04), 60, ALL, fr.Err.BAD_FLAGS),
    (fr.VnetHdr(flags=0x80), 60, ALL, fr.Err.BAD_FLAGS),
    (fr.VnetHdr(flags=fr.F_DATA_VALID), 60, 0, fr.Err.BAD_FLAGS),
    (fr.VnetHdr(flags=1, csum_start=40, csum_offset=18), 60, ALL, fr.Err.OK),
    (fr.VnetHdr(flags=1, csum_start=40, csum_offset=19), 60, ALL, fr.Err.BAD_CSUM),
    (fr.VnetHdr(flags=1, csum_start=0xFFFF, csum_offset=0xFFFF), 60, ALL, fr.Err.BAD_CSUM),
    (fr.VnetHdr(gso_type=fr.GSO_ECN), 60, ALL, fr.Err.BAD_GSO),
    (fr.VnetHdr(gso_type=3), 60, ALL, fr.Err.BAD_GSO),  # UFO: not in version 1
    (fr.VnetHdr(gso_type=2), 60, ALL, fr.Err.BAD_GSO),
    (fr.VnetHdr(flags=1, gso_type=1, gso_size=1448, hdr_len=54, csum_start=34,
                csum_offset=16), 3000, ALL, fr.Err.OK),
    (fr.VnetHdr(flags=1, gso_type=1 | fr.GSO_ECN, gso_size=1448, hdr_len=54, csum_start=34,
                csum_offset=16), 3000, ALL, fr.Err.OK),
    (fr.VnetHdr(flags=1, gso_type=1, gso_size=1448, hdr_len=54, csum_start=34,
                csum_offset=16), 3000, int(Features.CSUM), fr.Err.BAD_GSO),
    (fr.VnetHdr(flags=1, gso_type=4, gso_size=1448, hdr_len=74, csum_start=54,
                csum_offset=16), 3000, int(Features.CSUM | Features.GSO_TCPV4),
     fr.Err.BAD_GSO),
    (fr.VnetHdr(flags=1, gso_type=5, gso_size=1000, hdr_len=42, csum_start=34,
                csum_offset=6), 3000, ALL, fr.Err.OK),
    (fr.VnetHdr(flags=0, gso_type=1, gso_size=1448, hdr_len=54), 3000, ALL, fr.Err.BAD_GSO),
    (fr.VnetHdr(flags=1, gso_type=1, gso_size=0, hdr_len=54, csum_start=34, csum_offset=16),
     3000, ALL, fr.Err.BAD_GSO),
    (fr.VnetHdr(flags=1, gso_type=1, gso_size=1448, hdr_len=3001, csum_start=34,
                csum_offset=16), 3000, ALL, fr.Err.BAD_HDR_LEN),
])
def test_vnet_rules(h: fr.VnetHdr, frame_len: int, features: int, expect: fr.Err) -> None:
    assert fr.check_vnet(h, frame_len, features) == expect
    buf = record(10 + frame_len, h.pack())
    err, n, used = c_parse(buf, fr.ETH_MAX, features, 0)
    assert err == int(expect)
    assert (n, used) == ((1, len(buf)) if expect == fr.Err.OK else (0, 0))


def test_encode_rejects_out_of_range_frames() -> None:
    with pytest.raises(fr.FrameError):
        fr.encode(b"x" * 13)
    with pytest.raises(fr.FrameError):
        fr.encode(b"x" * (fr.ETH_MAX + 1))
    assert c_encode(b"x" * 13, bytes(10)) == b""


def test_decoder_incremental_and_raises_on_bad_record() -> None:
    frames = [bytes([i]) * (14 + 37 * i) for i in range(20)]
    stream = b"".join(fr.encode(f) for f in frames)
    dec = fr.Decoder()
    got = []
    for i in range(0, len(stream), 7):
        got.extend(body for _, body in dec.feed(stream[i:i + 7]))
    assert got == frames and dec.pending == 0
    with pytest.raises(fr.FrameError) as exc:
        list(dec.feed(record(fr.REC_LEN_MAX + 1)))
    assert exc.value.code == fr.Err.TOO_LONG


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=400), st.integers(14, fr.ETH_MAX), st.integers(0, 31),
       st.sampled_from([0, 64, 1024, 4096]))
def test_fuzz_c_parser_matches_reference(buf: bytes, max_frame: int, features: int,
                                         ring: int) -> None:
    features &= ALL
    err, recs, used = fr.parse(buf, max_frame, features, ring)
    assert c_parse(buf, max_frame, features, ring) == (int(err), len(recs), used)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.binary(min_size=10, max_size=10),
                          st.binary(max_size=120)), max_size=6))
def test_fuzz_c_parser_structured(parts: list[tuple[int, bytes, bytes]]) -> None:
    # plausible records with hostile lengths and headers: still exactly the reference verdict
    buf = b"".join(struct.pack("<I", n % 160 if n & 1 else n) + h + b for n, h, b in parts)
    err, recs, used = fr.parse(buf, 1518, ALL, 2048)
    assert c_parse(buf, 1518, ALL, 2048) == (int(err), len(recs), used)
