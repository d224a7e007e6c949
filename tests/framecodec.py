"""Reference codec of ncd's frame record format, version 1 (docs/protocol.md).

Pure Python, no I/O, test-only: the daemon parses records in C (cext/pump, cext/switch),
which implements the same rules; tests hold the two against each other. A record on
the vchan byte stream is::

    le32 rec_len | virtio_net_hdr (10 bytes, little-endian) | Ethernet frame

where ``rec_len`` counts the vnet header and the frame. What a receiver accepts
(:class:`~ncd.features.Features`) is negotiated in :mod:`ncd.features`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ncd.features import ETH_MAX, ETH_MIN, Features

REC_LEN_SIZE = 4
VNET_HDR_SIZE = 10
REC_HDR_SIZE = REC_LEN_SIZE + VNET_HDR_SIZE
REC_LEN_MIN = VNET_HDR_SIZE + ETH_MIN
REC_LEN_MAX = VNET_HDR_SIZE + ETH_MAX

F_NEEDS_CSUM = 0x01
F_DATA_VALID = 0x02
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

_VNET = struct.Struct("<BBHHHH")
_LEN = struct.Struct("<I")


class Err(enum.IntEnum):
    """Parser verdicts; the values are the C ``enum ncd_frame_err``."""

    OK = 0
    SHORT = 1
    TOO_LONG = 2
    OVER_RING = 3
    BAD_FLAGS = 4
    BAD_GSO = 5
    BAD_CSUM = 6
    BAD_HDR_LEN = 7
    INCOMPLETE = 8


class FrameError(ValueError):
    """A record that breaks the format; ``code`` says which rule."""

    def __init__(self, code: Err, detail: str = "") -> None:
        super().__init__(f"{code.name}: {detail}" if detail else code.name)
        self.code = code


@dataclass(frozen=True)
class VnetHdr:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _VNET.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                          self.csum_start, self.csum_offset)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> VnetHdr:
        return cls(*_VNET.unpack(bytes(raw[:VNET_HDR_SIZE])))


def check_len(rec_len: int, max_frame: int = ETH_MAX, ring_size: int = 0) -> Err:
    """Rules for a length read from the stream (``ncd_frame_check_len``)."""
    if rec_len < REC_LEN_MIN:
        return Err.SHORT
    if rec_len > VNET_HDR_SIZE + min(max_frame, ETH_MAX):
        return Err.TOO_LONG
    if ring_size and rec_len + REC_LEN_SIZE > ring_size:
        return Err.OVER_RING
    return Err.OK


def check_vnet(h: VnetHdr, frame_len: int, features: Features | int) -> Err:
    """Rules for the vnet header of a frame of ``frame_len`` bytes (``ncd_frame_check_vnet``)."""
    gso = h.gso_type & ~GSO_ECN
    if h.flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
        return Err.BAD_FLAGS
    if h.flags and not features & Features.CSUM:
        return Err.BAD_FLAGS
    if h.flags & F_NEEDS_CSUM and h.csum_start + h.csum_offset + 2 > frame_len:
        return Err.BAD_CSUM
    if gso == GSO_NONE:
        return Err.BAD_GSO if h.gso_type & GSO_ECN else Err.OK
    need = {GSO_TCPV4: Features.GSO_TCPV4, GSO_TCPV6: Features.GSO_TCPV6,
            GSO_UDP_L4: Features.GSO_UDP_L4}.get(gso)
    if need is None or not features & need:
        return Err.BAD_GSO
    if not h.flags & F_NEEDS_CSUM or h.gso_size == 0:
        return Err.BAD_GSO
    if h.hdr_len > frame_len:
        return Err.BAD_HDR_LEN
    return Err.OK


def encode(frame: bytes, vnet: VnetHdr | None = None) -> bytes:
    """One record: length, vnet header, frame."""
    if not ETH_MIN <= len(frame) <= ETH_MAX:
        raise FrameError(Err.SHORT if len(frame) < ETH_MIN else Err.TOO_LONG,
                         f"frame of {len(frame)} bytes")
    return _LEN.pack(VNET_HDR_SIZE + len(frame)) + (vnet or VnetHdr()).pack() + frame


def parse(buf: bytes, max_frame: int = ETH_MAX, features: Features | int = Features.ALL,
          ring_size: int = 0) -> tuple[Err, list[tuple[VnetHdr, bytes]], int]:
    """Walk a stream of records like ``ncd_frame_parse``: (verdict, records, bytes consumed).

    The verdict is OK when ``buf`` ends on a record boundary, INCOMPLETE when it ends
    inside one, else the first rule broken (the records before it are returned).
    """
    off, out = 0, []
    view = memoryview(buf)
    while off < len(buf):
        if len(buf) - off < REC_LEN_SIZE:
            return Err.INCOMPLETE, out, off
        (rec_len,) = _LEN.unpack_from(buf, off)
        err = check_len(rec_len, max_frame, ring_size)
        if err:
            return err, out, off
        if len(buf) - off - REC_LEN_SIZE < rec_len:
            return Err.INCOMPLETE, out, off
        h = VnetHdr.unpack(view[off + REC_LEN_SIZE:off + REC_HDR_SIZE])
        err = check_vnet(h, rec_len - VNET_HDR_SIZE, features)
        if err:
            return err, out, off
        out.append((h, bytes(view[off + REC_HDR_SIZE:off + REC_LEN_SIZE + rec_len])))
        off += REC_LEN_SIZE + rec_len
    return Err.OK, out, off


class Decoder:
    """Incremental decoder: feed stream bytes, get whole frames; a bad record raises."""

    def __init__(self, max_frame: int = ETH_MAX, features: Features | int = Features.ALL,
                 ring_size: int = 0) -> None:
        self.max_frame, self.features, self.ring_size = max_frame, features, ring_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[VnetHdr, bytes]]:
        self._buf += data
        err, recs, used = parse(bytes(self._buf), self.max_frame, self.features, self.ring_size)
        del self._buf[:used]
        yield from recs
        if err not in (Err.OK, Err.INCOMPLETE):
            raise FrameError(err)

    @property
    def pending(self) -> int:
        return len(self._buf)
