"""The xenstore wire format, as in ``xen/io/xs_wire.h``.

Every message is a 16-byte header ``struct xsd_sockmsg {type, req_id, tx_id, len}``
(native-endian uint32s) followed by ``len`` bytes of payload, ``len <= 4096``.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct("=IIII")
HEADER_SIZE = HEADER.size
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX
ABS_PATH_MAX = 3072  # XENSTORE_ABS_PATH_MAX
REL_PATH_MAX = 2048  # XENSTORE_REL_PATH_MAX


class Op(IntEnum):
    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


TYPE_COUNT = 23  # XS_TYPE_COUNT in Xen 4.17

# The xsd_errors table, in its order (the first entry is the fallback).
ERROR_NAMES: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)


class XsError(Exception):
    """A request failed; ``name`` is the error string sent on the wire."""

    def __init__(self, name: str, detail: str = "") -> None:
        if name not in ERROR_NAMES:
            name = "EINVAL"
        super().__init__(f"{name}{': ' + detail if detail else ''}")
        self.name = name
        self.errno: int = getattr(errno, name)


@dataclass(frozen=True)
class Header:
    type: int
    req_id: int
    tx_id: int
    length: int

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        t, r, x, n = HEADER.unpack(raw)
        return cls(t, r, x, n)


@dataclass(frozen=True)
class Message:
    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def pack(self) -> bytes:
        if len(self.payload) > PAYLOAD_MAX:
            raise ValueError("payload exceeds XENSTORE_PAYLOAD_MAX")
        return HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload)) + self.payload


def pack(type_: int, payload: bytes, req_id: int = 0, tx_id: int = 0) -> bytes:
    return Message(type_, req_id, tx_id, payload).pack()


def error_payload(name: str) -> bytes:
    return name.encode() + b"\0"


def strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of a payload; bytes after the last NUL are ignored."""
    parts = payload.split(b"\0")
    return parts[:-1]


def count_strings(payload: bytes) -> int:
    return payload.count(b"\0")


def onearg(payload: bytes) -> str:
    """The payload must be exactly one string with its NUL at the end (Xen's onearg)."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise XsError("EINVAL", "expected one NUL-terminated argument")
    return decode(payload[:-1])


def decode(raw: bytes) -> str:
    """Paths and tokens are ASCII in practice; undecodable bytes stay distinguishable."""
    return raw.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def atoi(text: str) -> int:
    """C atoi(): optional sign and leading decimal digits, else 0 (Xen parses domids so)."""
    s = text.lstrip(" \t\n\r\f\v")
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    digits = ""
    for ch in s:
        if not ch.isdigit() or not ch.isascii():
            break
        digits += ch
    value = sign * int(digits) if digits else 0
    # int in C; clamp like a 32-bit wrap would not matter for our range checks
    return max(min(value, 2**31 - 1), -(2**31))
