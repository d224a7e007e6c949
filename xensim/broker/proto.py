"""Python mirror of ``cext/xensim/proto.h`` (the shim <-> broker wire protocol).

One AF_UNIX SOCK_SEQPACKET connection per shim handle.  A request is a 32-byte
header (op, count, arg[6]) plus a payload; the reply is a 32-byte header
(err, nfds, count, val[5]) plus a payload, with file descriptors passed by
SCM_RIGHTS (more than ``MAX_FDS_PER_MSG`` are spread over continuation
messages).  Keep in sync with proto.h.
"""

from __future__ import annotations

import enum
import struct

MAGIC = 0x58534D31
PAGE_SIZE = 4096
MAX_MSG = 65536
MAX_FDS_PER_MSG = 200
NONE = 0xFFFFFFFF
DOMID_SELF = 0x7FF0

REQ = struct.Struct("<II6I")
RSP = struct.Struct("<iII5I")
CONT = struct.Struct("<II")
REF = struct.Struct("<II")
COPY_SEG = struct.Struct("<8I")
DOMINFO = struct.Struct("<4I")  # domid, flags, shared_pages, mapped_pages
DOMINFO_DYING = 1 << 0
DOMINFO_SHUTDOWN = 1 << 1

# xen/grant_table.h
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_permission_denied = -8
GNTST_bad_copy_arg = -10
GNTCOPY_source_gref = 1
GNTCOPY_dest_gref = 2


class Op(enum.IntEnum):
    HELLO = 1
    SHARE = 2
    UNSHARE = 3
    GRANT_EXISTING = 4
    END_GRANT = 5
    MAP = 6
    UNMAP = 7
    COPY = 8
    ALLOC_UNBOUND = 9
    BIND_INTERDOMAIN = 10
    UNBIND = 11
    CREATE_DOMAIN = 20
    DESTROY_DOMAIN = 21
    LIST_DOMAINS = 22
    STATS = 23
    DOMAIN_INFO = 24


class Kind(enum.IntEnum):
    GNTTAB = 1
    GNTSHR = 2
    EVTCHN = 3
    CONTROL = 4
    PRIVCMD = 5


CONTROL_OPS = frozenset(
    {Op.CREATE_DOMAIN, Op.DESTROY_DOMAIN, Op.LIST_DOMAINS, Op.STATS, Op.DOMAIN_INFO}
)


def pack_req(op: int, args: tuple[int, ...] = (), count: int = 0, payload: bytes = b"") -> bytes:
    a = list(args) + [0] * (6 - len(args))
    return REQ.pack(op, count, *a) + payload


def unpack_req(msg: bytes) -> tuple[int, int, tuple[int, ...], bytes]:
    if len(msg) < REQ.size:
        raise ValueError(f"short request ({len(msg)} bytes)")
    op, count, *args = REQ.unpack_from(msg)
    return op, count, tuple(args), msg[REQ.size :]


def pack_rsp(
    err: int = 0, vals: tuple[int, ...] = (), count: int = 0, payload: bytes = b"", nfds: int = 0
) -> bytes:
    v = [x & 0xFFFFFFFF for x in vals] + [0] * (5 - len(vals))
    return RSP.pack(err, nfds, count, *v) + payload


def unpack_rsp(msg: bytes) -> tuple[int, int, int, tuple[int, ...], bytes]:
    if len(msg) < RSP.size:
        raise ValueError(f"short reply ({len(msg)} bytes)")
    err, nfds, count, *vals = RSP.unpack_from(msg)
    return err, nfds, count, tuple(vals), msg[RSP.size :]
