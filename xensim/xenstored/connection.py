"""One client connection: framing, per-connection state, output with a bound.

Each connection is served by its own asyncio task, so a client that sends half a
packet, stalls, or floods only ever blocks itself.

Output is written once per event-loop iteration: the reply to a request at once
(:meth:`Connection.flush` after it), the watch events other requests fire for this
connection gathered meanwhile (a transaction's commit fires one per node it wrote).
Each write wakes the reading process; with 64 guests attaching, one write per
event was half of this daemon's time (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from .transactions import Transaction
from .watches import WatchList
from .wire import HEADER_SIZE, PAYLOAD_MAX, Header, Message, Op, XsError, pack

log = logging.getLogger("xensim.xenstored")

# A client that does not read its replies/events gets disconnected past this.
MAX_PENDING_OUTPUT = 4 * 1024 * 1024

_ids = itertools.count(1)


class ProtocolViolation(Exception):
    """The peer broke the framing rules; the connection is dropped."""


@dataclass(eq=False)
class Connection:
    domid: int
    writer: asyncio.StreamWriter
    id: int = field(default_factory=lambda: next(_ids))
    watches: WatchList = field(default_factory=WatchList)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    next_tx: int = 1
    closed: bool = False
    _out: list[bytes] = field(default_factory=list)

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    def __str__(self) -> str:
        return f"conn{self.id}(dom{self.domid})"

    def send(self, message: bytes) -> None:
        """Queue ``message``; it is written by :meth:`flush`, at the latest in the loop's
        next iteration."""
        if self.closed:
            return
        self._out.append(message)
        if len(self._out) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a harness driving the handlers): write it now
                self.flush()

    def flush(self) -> None:
        """Write what :meth:`send` queued, in one write."""
        if self.closed or not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        try:
            self.writer.write(data)
        except (ConnectionError, RuntimeError) as e:  # gone (uvloop: "the handler is closed")
            log.debug("%s: %s", self, e)
            self.close()
            return
        if self.writer.transport.get_write_buffer_size() > MAX_PENDING_OUTPUT:
            log.warning("%s: not reading its output, disconnecting", self)
            self.close()

    def send_event(self, path: str, token: str) -> None:
        payload = path.encode("utf-8", "surrogateescape") + b"\0"
        payload += token.encode("utf-8", "surrogateescape") + b"\0"
        if len(payload) > PAYLOAD_MAX:
            return  # xenstored drops over-long events too
        self.send(pack(Op.WATCH_EVENT, payload))

    def allocate_tx_id(self) -> int:
        while self.next_tx == 0 or self.next_tx in self.transactions:
            self.next_tx = (self.next_tx + 1) & 0xFFFFFFFF
        tx_id = self.next_tx
        self.next_tx = (self.next_tx + 1) & 0xFFFFFFFF
        return tx_id

    def forget(self) -> None:
        self.watches.clear()
        self.transactions.clear()
        self._out.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.flush()  # what was queued goes before the close (the transport still sends it)
        if self.closed:  # flush found it not reading
            return
        self.closed = True
        self.forget()
        self.writer.close()


async def read_message(reader: asyncio.StreamReader) -> Message:
    """Read one request; raises IncompleteReadError at EOF, ProtocolViolation on bad framing."""
    hdr = Header.unpack(await reader.readexactly(HEADER_SIZE))
    if hdr.length > PAYLOAD_MAX:
        raise ProtocolViolation(f"payload length {hdr.length} > {PAYLOAD_MAX}")
    payload = await reader.readexactly(hdr.length) if hdr.length else b""
    return Message(hdr.type, hdr.req_id, hdr.tx_id, payload)


def reply(request: Message, payload: bytes, type_: int | None = None) -> bytes:
    if len(payload) > PAYLOAD_MAX:
        return error_reply(request, XsError("E2BIG"))
    return pack(request.type if type_ is None else type_, payload, request.req_id, request.tx_id)


def error_reply(request: Message, err: XsError) -> bytes:
    return pack(Op.ERROR, err.name.encode() + b"\0", request.req_id, request.tx_id)
