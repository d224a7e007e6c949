#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ (valid and near-valid inputs).

Run from anywhere: ``python3 fuzz/make_corpus.py``. Deterministic; the output is
checked in, so only rerun it after changing an input format (see fuzz/README.md).
Files named ``regress-*`` are crash reproducers kept by hand: never removed here.
"""

from __future__ import annotations

import struct
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"

# ---- frame: le32 max_frame, features, ring selector, 2 reserved, then records ----

FEAT_CSUM, FEAT_TCP4, FEAT_TCP6, FEAT_UDP = 1, 2, 4, 8


def vnet(
    flags: int = 0, gso: int = 0, hdr_len: int = 0, gso_size: int = 0, cs: int = 0, co: int = 0
) -> bytes:
    return struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, cs, co)


def rec(frame_len: int, hdr: bytes = b"", fill: int = 0xAB) -> bytes:
    hdr = hdr or vnet()
    return struct.pack("<I", 10 + frame_len) + hdr + bytes([fill]) * frame_len


def frame_in(records: bytes, max_frame: int = 1518, feat: int = 0, ring: int = 0) -> bytes:
    return struct.pack("<IBBxx", max_frame, feat, ring) + records


FRAME = {
    "min": frame_in(rec(14)),
    "eth60": frame_in(rec(60)),
    "three": frame_in(rec(14) + rec(60) + rec(1514)),
    "csum": frame_in(rec(54, vnet(1, 0, 0, 0, 34, 16)), feat=FEAT_CSUM),
    "data_valid": frame_in(rec(54, vnet(2)), feat=FEAT_CSUM),
    "tso4": frame_in(rec(9000, vnet(1, 1, 54, 1448, 34, 16)), 65664, FEAT_CSUM | FEAT_TCP4),
    "tso6_ecn": frame_in(rec(3000, vnet(1, 0x84, 74, 1428, 54, 16)), 65664, 0x0F),
    "uso": frame_in(rec(3000, vnet(1, 5, 42, 1400, 34, 6)), 65664, FEAT_CSUM | FEAT_UDP),
    "max": frame_in(rec(65664), 65664, 0, 0),
    "ring_fit": frame_in(rec(1020 - 14), 1518, 0, 1),  # 4 + rec_len == 1024 ring: fits
    # near-valid: one rule broken each
    "bad_short": frame_in(rec(13)),
    "bad_too_long": frame_in(rec(1519)),
    "bad_over_ring": frame_in(rec(1021 - 14), 1518, 0, 1),
    "bad_flags": frame_in(rec(60, vnet(4)), feat=0x0F),
    "bad_flags_unneg": frame_in(rec(60, vnet(1, 0, 0, 0, 0, 0))),
    "bad_csum": frame_in(rec(60, vnet(1, 0, 0, 0, 50, 9)), feat=FEAT_CSUM),
    "bad_gso_unneg": frame_in(rec(3000, vnet(1, 4, 74, 1428, 54, 16)), 65664, FEAT_CSUM),
    "bad_gso_ecn_alone": frame_in(rec(60, vnet(0, 0x80)), feat=0x0F),
    "bad_gso_size0": frame_in(rec(3000, vnet(1, 1, 54, 0, 34, 16)), 65664, 0x0F),
    "bad_gso_ufo": frame_in(rec(3000, vnet(1, 3, 42, 1400, 34, 6)), 65664, 0x0F),
    "bad_hdr_len": frame_in(rec(100, vnet(1, 1, 101, 50, 34, 16)), 65664, 0x0F),
    "incomplete": frame_in(rec(60) + rec(60)[:30]),
    "incomplete_len": frame_in(rec(60) + b"\x20\x00"),
    "huge_max_frame": frame_in(rec(65665), 0xFFFFFFFF, 0xFF, 0),
}

# ---- layout: read_min selector, write_min selector, then XOR over the page ----


def sel(size: int) -> int:
    return 0 if size == 0 else size.bit_length() - 1  # 1 << (b % 21) == size


def xor_at(off: int, data: bytes) -> bytes:
    return bytes(off) + data


LAYOUT = {
    "inpage_10_11": bytes([0, 0]),
    "inpage_11_10": bytes([sel(2048), sel(1024)]),
    "pages_1_1": bytes([sel(4096), sel(4096)]),
    "pages_16_1": bytes([sel(65536), sel(4096)]),
    "mixed_11_16": bytes([sel(2048), sel(65536)]),
    "max_256_256": bytes([sel(1 << 20), sel(1 << 20)]),
    # near-valid: orders one past the limits, both in-page the same, grants off by one
    "order_9": bytes([0, 0]) + xor_at(16, struct.pack("<H", 10 ^ 9)),
    "order_21": bytes([sel(4096), sel(4096)]) + xor_at(16, struct.pack("<H", 12 ^ 21)),
    "both_10": bytes([0, 0]) + xor_at(18, struct.pack("<H", 11 ^ 10)),
    "both_11": bytes([0, 0]) + xor_at(16, struct.pack("<H", 10 ^ 11)),
    "grants_overflow_inpage": bytes([sel(1024), sel(1 << 20)])
    + xor_at(16, struct.pack("<H", 11 ^ 10)),
    "grant_ref_bad": bytes([sel(65536), sel(65536)]) + xor_at(24 + 4 * 3, b"\x01"),
    "orders_swapped": bytes([sel(4096), sel(8192)])
    + xor_at(16, struct.pack("<HH", 12 ^ 13, 13 ^ 12)),
    "live_garbage": bytes([0, 0]) + xor_at(20, b"\x07\x05"),
    "indices_hostile": bytes([0, 0]) + xor_at(0, struct.pack("<IIII", 5000, 1, 0x80000000, 7)),
}

# ---- ring: role, read_min sel, write_min sel, le32 x, le32 y, then ops ----
# ops (opcode % 20): 0 prod=cons+u32, 1 prod=cons+size+i8, 2 cons=prod-u32,
# 3 cons=prod-size-i8, 4 bytes(u16 off, u8 len, data), 5 live(u8), 6 notify(u8, u8),
# 7 page byte(u16 off, u8), 8 read(u16), 9 read_iov(u16 max, u16 c1, u16 c2),
# 10 read_commit(u16), 11 write(u16), 12 write_iov(u16 max, u16 c1, u16 c2),
# 13 write_commit(u16), 14 data_ready, 15 buffer_space, 16 is_open, 17 unconsumed,
# 18 wait_data(u16), 19 wait_space(u16)


def ring_in(
    role: int = 0, rsel: int = 0, wsel: int = 0, x: int = 0, y: int = 0, ops: bytes = b""
) -> bytes:
    return struct.pack("<BBBII", role, rsel, wsel, x, y) + ops


def u16(v: int) -> bytes:
    return struct.pack("<H", v & 0xFFFF)


def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def i8(v: int) -> bytes:
    return struct.pack("<b", v)


PEER_DATA = b"\x04" + u16(0) + bytes([16]) + bytes(range(16)) + b"\x00" + u32(16)
RING = {
    "client_read": ring_in(0, 0, 0, 0, 0, PEER_DATA + b"\x08" + u16(100) + b"\x0e"),
    "client_read_iov": ring_in(
        0, 12, 12, 0, 0, PEER_DATA + b"\x09" + u16(8) + u16(4) + u16(4) + b"\x0a" + u16(9)
    ),
    "client_write": ring_in(0, 0, 0, 0, 0, b"\x0b" + u16(3000) + b"\x0f" + b"\x11"),
    "client_write_iov": ring_in(
        0, 13, 13, 0, 0, b"\x0c" + u16(5000) + u16(4000) + u16(2000) + b"\x03" + i8(0) + b"\x0f"
    ),
    "wrap_32bit": ring_in(
        0,
        12,
        12,
        0xFFFFFFF0,
        0xFFFFFFF8,
        b"\x00"
        + u32(64)
        + b"\x08"
        + u16(64)
        + b"\x0b"
        + u16(64)
        + b"\x02"
        + u32(0)
        + b"\x0b"
        + u16(64),
    ),
    "ring_wrap": ring_in(
        0,
        0,
        0,
        1000,
        2000,
        b"\x00"
        + u32(100)
        + b"\x09"
        + u16(200)
        + u16(100)
        + u16(0xFFFF)
        + b"\x0c"
        + u16(1024)
        + u16(1024)
        + u16(0xFFFF),
    ),
    "prod_edge_ok": ring_in(0, 0, 0, 0, 0, b"\x01" + i8(0) + b"\x08" + u16(5000)),
    "prod_edge_bad": ring_in(
        0, 0, 0, 0, 0, b"\x01" + i8(1) + b"\x08" + u16(5000) + b"\x08" + u16(1)
    ),
    "cons_edge_bad": ring_in(0, 0, 0, 0, 0, b"\x03" + i8(-1) + b"\x0b" + u16(10)),
    "cons_ahead": ring_in(0, 12, 12, 0, 0, b"\x02" + u32(0xFFFFFFFF) + b"\x13" + u16(1)),
    "live_closed": ring_in(0, 0, 0, 0, 0, b"\x05\x00\x0b" + u16(10) + b"\x10\x12" + u16(1)),
    "live_garbage": ring_in(0, 0, 0, 0, 0, b"\x05\x09\x10\x0e"),
    "server_live2": ring_in(1, 0, 0, 0, 0, b"\x05\x02\x10\x0b" + u16(1)),
    "server_waiting": ring_in(3, 0, 0, 0, 0, b"\x10\x0b" + u16(5) + b"\x05\x01\x10\x05\x02\x10"),
    "server_read": ring_in(1, 14, 14, 0, 0, PEER_DATA + b"\x08" + u16(16) + b"\x0e"),
    "server_write_full": ring_in(
        1, 0, 0, 0, 0, b"\x0b" + u16(4000) + b"\x0b" + u16(1) + b"\x13" + u16(10)
    ),
    "scribble_orders": ring_in(
        0,
        12,
        12,
        0,
        0,
        b"\x07" + u16(16) + b"\x14\x07" + u16(18) + b"\x0a" + PEER_DATA + b"\x08" + u16(100),
    ),
    "scribble_own_cons": ring_in(
        0, 0, 0, 0, 0, PEER_DATA + b"\x07" + u16(8) + b"\x99\x08" + u16(4)
    ),
    "wait": ring_in(
        0, 0, 0, 0, 0, b"\x12" + u16(1) + PEER_DATA + b"\x12" + u16(8) + b"\x13" + u16(2000)
    ),
}

# ---- pump: features, max_frame sel, ring sel (1 << (10 + b % 7)), le16 start, stream ----


def pump_in(stream: bytes, feat: int = 0, mf: int = 0, ring_sel: int = 3, start: int = 0) -> bytes:
    return struct.pack("<BBBH", feat, mf, ring_sel, start) + stream


PUMP = {
    "one": pump_in(rec(60)),
    "many_wrap": pump_in(b"".join(rec(60 + i, fill=i) for i in range(40)), start=8000),
    "len_wraps": pump_in(rec(100) + rec(200), ring_sel=0, start=1022),
    "hdr_wraps": pump_in(rec(100) + rec(200), ring_sel=0, start=1016),
    "big_frames": pump_in(rec(9000) + rec(1514) + rec(9000), 0, 1, 6, 30000),
    "csum": pump_in(rec(54, vnet(1, 0, 0, 0, 34, 16)) * 3, FEAT_CSUM),
    "tso": pump_in(rec(3000, vnet(1, 1, 54, 1448, 34, 16)), 0x0F, 1, 4, 100),
    "longer_than_ring": pump_in(b"".join(rec(500, fill=i) for i in range(10)), ring_sel=0),
    "bad_after_good": pump_in(rec(60) + rec(60) + rec(1519)),
    "bad_flags": pump_in(rec(60) + rec(60, vnet(1, 0, 0, 0, 0, 0))),
    "bad_over_ring": pump_in(rec(60) + rec(1100), 0, 1, 0),
    "incomplete": pump_in(rec(60) + rec(60)[:40]),
    "incomplete_len": pump_in(rec(60) + b"\x40\x00"),
}

# ---- xs_wire: domid byte, then the client's byte stream ----


def xs(type_: int, payload: bytes, req_id: int = 1, tx_id: int = 0) -> bytes:
    return struct.pack("=IIII", type_, req_id, tx_id, len(payload)) + payload


READ, DIRECTORY, GET_PERMS, WATCH, UNWATCH, TX_START, TX_END = 2, 1, 3, 4, 5, 6, 7
GET_DOMAIN_PATH, WRITE, MKDIR, RM, SET_PERMS, IS_INTRODUCED = 10, 11, 12, 13, 14, 17
RESUME, SET_TARGET, RESET_WATCHES, DIRECTORY_PART, CONTROL, RELEASE = 18, 19, 21, 22, 0, 9

XS = {
    "read": b"\x00" + xs(READ, b"/local\0"),
    "write_read": b"\x00" + xs(WRITE, b"/a/b\0value") + xs(READ, b"/a/b\0", 2),
    "mkdir_dir_rm": b"\x00"
    + xs(MKDIR, b"/x/y\0")
    + xs(DIRECTORY, b"/x\0", 2)
    + xs(DIRECTORY_PART, b"/x\x000\0", 3)
    + xs(RM, b"/x\0", 4),
    "perms": b"\x00"
    + xs(MKDIR, b"/p\0")
    + xs(SET_PERMS, b"/p\0n0\0r1\0", 2)
    + xs(GET_PERMS, b"/p\0", 3),
    "watch": b"\x00"
    + xs(WATCH, b"/w\0tok\0")
    + xs(WRITE, b"/w/k\0v", 2)
    + xs(UNWATCH, b"/w\0tok\0", 3)
    + xs(RESET_WATCHES, b"", 4),
    "transaction": b"\x00"
    + xs(TX_START, b"\0")
    + xs(WRITE, b"/t\0v", 2, 1)
    + xs(TX_END, b"T\0", 3, 1),
    "domu_home": b"\x01"
    + xs(GET_DOMAIN_PATH, b"1\0")
    + xs(WRITE, b"data/k\0v", 2)
    + xs(READ, b"/local/domain/0\0", 3),
    "domu_priv": b"\x01" + xs(CONTROL, b"print\0hi\0") + xs(RELEASE, b"2\0", 2),
    "dom0_control": b"\x00"
    + xs(CONTROL, b"help\0")
    + xs(IS_INTRODUCED, b"1\0", 2)
    + xs(RESUME, b"1\0", 3)
    + xs(SET_TARGET, b"1\x000\0", 4),
    "atoi": b"\x00"
    + xs(GET_DOMAIN_PATH, b"  -12abc\0")
    + xs(GET_DOMAIN_PATH, b"+7\0", 2)
    + xs(GET_DOMAIN_PATH, b"99999999999\0", 3),
    "max_payload": b"\x00" + xs(WRITE, b"/big\0" + b"v" * 4091),
    "over_payload": b"\x00" + struct.pack("=IIII", WRITE, 1, 0, 4097) + b"/big\0",
    "partial_header": b"\x00" + xs(READ, b"/\0")[:10],
    "partial_payload": b"\x00" + xs(READ, b"/local/domain\0")[:20],
    "unknown_type": b"\x00" + xs(99, b"x\0") + xs(20, b"", 2),
    "bad_tx": b"\x01" + xs(READ, b"/\0", 1, 77),
    "non_utf8": b"\x00" + xs(WRITE, b"/\xff\xfe\0\xc3(") + xs(WATCH, b"\xed\xa0\x80\0t\0", 2),
    "perm_forms": b"\x00"
    + xs(MKDIR, b"/p\0")
    + xs(SET_PERMS, b"/p\0n0\0r0x10\0b010\0w+3\0r-1\0", 2),
    "release_self": b"\x00" + xs(RELEASE, b"1\0") + xs(READ, b"/\0", 2),
}


def main() -> None:
    targets = (
        ("frame", FRAME),
        ("layout", LAYOUT),
        ("ring", RING),
        ("pump", PUMP),
        ("xs_wire", XS),
    )
    for target, seeds in targets:
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("seed-*"):
            old.unlink()
        for name, data in seeds.items():
            (d / f"seed-{name}").write_bytes(data)
        print(f"{d}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
