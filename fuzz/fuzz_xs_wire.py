#!/usr/bin/env python3
"""atheris target: xensim's xenstored wire parser (xensim/xenstored/wire.py) and what
consumes it: the connection framing (connection.read_message) and the dispatcher.

Input: byte 0 picks the connection's domain (even: dom0, privileged; odd: dom1), the
rest is what that client writes to its xenstored socket.

Asserts (an uncaught exception = crash):

* framing: read_message() splits the stream exactly like an independent reference
  (16-byte native ``type, req_id, tx_id, len`` header, ``len <= 4096``): the same
  messages, then ProtocolViolation for ``len > 4096`` or IncompleteReadError with the
  unread tail; ``Message.pack()`` reproduces each message's bytes;
* payload helpers: ``strings``/``count_strings`` agree with a reference split,
  ``onearg`` accepts exactly one trailing NUL, ``encode(decode(b)) == b`` for any
  bytes, ``atoi`` equals the C library's ``atoi`` wherever C's is defined, and
  ``perms.parse_one`` reads a permission entry (``r5``, ``b0x10``...) exactly like
  Xen's own ``xs_strings_to_perms`` (libxenstore, called through ctypes);
* dispatch: every request either succeeds or raises XsError (never another
  exception); every byte the server sends back is a well-formed stream of messages
  (``len <= 4096``), the reply echoes ``req_id``/``tx_id`` and is the request's type
  or ERROR with a known error name, watch events carry path and token;
* the tree stays consistent (children exist, parents list them, quota counts match).

INTRODUCE is answered without dispatching (it binds real sockets; the process tests
cover it).
"""

from __future__ import annotations

import asyncio
import ctypes
import struct
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["xensim.xenstored"]):
    from xensim.xenstored import perms, wire
    from xensim.xenstored.connection import Connection, ProtocolViolation, read_message
    from xensim.xenstored.handlers import dispatch
    from xensim.xenstored.server import Domain, XenstoreServer

HDR = struct.Struct("=IIII")
LIBC = ctypes.CDLL(None)
LIBC.atoi.argtypes = [ctypes.c_char_p]
LIBC.atoi.restype = ctypes.c_int


class XsPermissions(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint), ("perms", ctypes.c_int)]


# Xen's own parser of permission strings (libxenstore, installed by scripts/setup.sh)
XENSTORE = ctypes.CDLL("libxenstore.so.4")
XENSTORE.xs_strings_to_perms.argtypes = [
    ctypes.POINTER(XsPermissions),
    ctypes.c_uint,
    ctypes.c_char_p,
]
XENSTORE.xs_strings_to_perms.restype = ctypes.c_bool
LOOP = asyncio.new_event_loop()
ERROR_PAYLOADS = {n.encode() + b"\0" for n in wire.ERROR_NAMES}


def ref_split(data: bytes) -> tuple[list[tuple[int, int, int, bytes, bytes]], str, int]:
    """Reference framing: (messages as (type, req, tx, payload, raw), end, offset)."""
    msgs = []
    off = 0
    while True:
        if len(data) - off < 16:
            return msgs, "eof", off
        t, r, x, n = HDR.unpack_from(data, off)
        if n > 4096:
            return msgs, "violation", off
        if len(data) - off - 16 < n:
            return msgs, "eof", off
        msgs.append((t, r, x, data[off + 16 : off + 16 + n], data[off : off + 16 + n]))
        off += 16 + n


class Writer:
    """What a connection's StreamWriter needs, keeping what the server sends."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    class transport:  # noqa: N801
        @staticmethod
        def get_write_buffer_size() -> int:
            return 0


async def frame(data: bytes) -> tuple[list[wire.Message], str, bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    msgs = []
    while True:
        try:
            msgs.append(await read_message(reader))
        except asyncio.IncompleteReadError as e:
            return msgs, "eof", e.partial
        except ProtocolViolation:
            return msgs, "violation", b""


def check_helpers(payload: bytes) -> None:
    parts = payload.split(b"\0")[:-1]
    assert wire.strings(payload) == parts
    assert wire.count_strings(payload) == len(parts)
    try:
        arg = wire.onearg(payload)
    except wire.XsError as e:
        assert e.name == "EINVAL"
        assert not (payload.endswith(b"\0") and payload.count(b"\0") == 1)
    else:
        assert payload.endswith(b"\0") and payload.count(b"\0") == 1
        assert wire.encode(arg) == payload[:-1]
    for s in parts + [payload]:
        assert wire.encode(wire.decode(s)) == s
    for s in parts[:4]:
        v = wire.atoi(wire.decode(s))
        assert -(2**31) <= v <= 2**31 - 1
        if -(2**31) < v < 2**31 - 1:  # not clamped: C's atoi is defined and must agree
            c = LIBC.atoi(s)
            assert v == c, (s, v, c)
        if s[:1] in (b"n", b"r", b"w", b"b"):
            check_perm(s)


def xen_perm(raw: bytes) -> tuple[int, int] | None:
    """libxenstore's xs_strings_to_perms on one entry: (domid, flags), None if refused."""
    out = XsPermissions()
    if not XENSTORE.xs_strings_to_perms(ctypes.byref(out), 1, raw):
        return None
    return out.id, out.perms


def check_perm(raw: bytes) -> None:
    """perms.parse_one reads one SET_PERMS entry exactly like Xen's libxenstore."""
    xen = xen_perm(raw)
    want = None if xen is None else xen[0]
    try:
        got = perms.parse_one(wire.decode(raw))
    except wire.XsError as e:
        assert e.name == "EINVAL"
        assert want is None, f"perm {raw!r} refused, Xen reads domid {want}"
    else:
        assert want is not None, f"perm {raw!r} accepted as {got}, Xen refuses it"
        assert got.domid == want, f"perm {raw!r}: domid {got.domid}, Xen's {want}"
        assert xen is not None and got.flags == xen[1]


def check_output(out: bytes, req: wire.Message | None) -> None:
    """A reply (if req) followed by watch events, all well formed."""
    msgs, end, off = ref_split(out)
    assert end == "eof" and off == len(out), "server sent a malformed stream"
    for i, (t, r, x, payload, _raw) in enumerate(msgs):
        assert len(payload) <= wire.PAYLOAD_MAX
        if i == 0 and req is not None:
            assert (r, x) == (req.req_id, req.tx_id)
            assert t in (req.type, wire.Op.ERROR), (t, req.type)
            if t == wire.Op.ERROR:
                assert payload in ERROR_PAYLOADS, payload
        else:
            assert t == wire.Op.WATCH_EVENT, t
            assert payload.count(b"\0") >= 2 and payload.endswith(b"\0")


def check_tree(server: XenstoreServer) -> None:
    nodes = server.store.nodes
    for path, node in nodes.items():
        for c in node.children:
            assert (f"/{c}" if path == "/" else f"{path}/{c}") in nodes
        if path != "/":
            parent = path.rsplit("/", 1)[0] or "/"
            assert path.rsplit("/", 1)[1] in nodes[parent].children
    counts: dict[int, int] = {}
    for node in nodes.values():
        counts[node.owner] = counts.get(node.owner, 0) + 1
    assert {k: v for k, v in server.store.counts.items() if v} == counts


def test_one_input(data: bytes) -> None:
    if not data:
        return
    domid = data[0] & 1
    stream = data[1:]
    msgs, end, tail = LOOP.run_until_complete(frame(stream))
    ref, ref_end, ref_off = ref_split(stream)
    assert [(m.type, m.req_id, m.tx_id, m.payload) for m in msgs] == [r[:4] for r in ref]
    assert end == ref_end, (end, ref_end)
    if end == "eof":  # the unread tail: a partial header, or the payload after a header
        rest = stream[ref_off:]
        assert tail == (rest[16:] if len(rest) >= 16 else rest)
    for m, r in zip(msgs, ref, strict=True):
        assert m.pack() == r[4]
        check_helpers(m.payload)

    server = XenstoreServer(Path("/nonexistent/fuzz-world"))
    writers = {d: Writer() for d in (0, 1)}
    conns = {d: Connection(d, writers[d]) for d in (0, 1)}  # type: ignore[arg-type]
    for d in (0, 1):  # both domains "introduced", without sockets
        server.domains[d] = Domain(d, Path(f"/nonexistent/fuzz-world/{d}"), connections={conns[d]})
    conn, w = conns[domid], writers[domid]
    for m in msgs:
        if conn.closed:
            break
        w.out.clear()
        if m.type == wire.Op.INTRODUCE:
            conn.send(wire.pack(wire.Op.ERROR, b"EACCES\0", m.req_id, m.tx_id))
        else:
            try:
                result = dispatch(server, conn, m)
            except wire.XsError as e:
                assert e.name in wire.ERROR_NAMES
                conn.send(wire.pack(wire.Op.ERROR, e.name.encode() + b"\0", m.req_id, m.tx_id))
            else:
                # events fired during dispatch went out first; the reply follows them
                events = bytes(w.out)
                w.out.clear()
                conn.send(result.reply)
                for path, token in result.after:
                    conn.send_event(path, token)
                check_output(events, None)
        check_output(bytes(w.out), m)
    check_output(bytes(writers[1 - domid].out), None)
    check_tree(server)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
