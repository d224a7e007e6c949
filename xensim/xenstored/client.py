"""A small synchronous xenstore wire client over a Unix socket.

Used by tests and by ``ncd-sim up`` to write the toolstack's entries and to
introduce/release domains through dom0's socket. One request at a time; watch
events that arrive meanwhile are queued and returned by :meth:`read_watch`.

    with XsClient.connect(xenstored_socket(world, 0)) as xs:
        xs.introduce(1)
        xs.write("/local/domain/1/name", "guest1")
        xs.set_perms("/local/domain/1", ["n0", "r1"])
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from types import TracebackType

from .wire import HEADER_SIZE, PAYLOAD_MAX, Header, Message, Op, XsError, pack


class XsClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.events: deque[tuple[str, str]] = deque()
        self._req_id = 0

    @classmethod
    def connect(cls, path: str | os.PathLike[str], timeout: float = 10.0) -> XsClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> XsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- framing -----------------------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("xenstored closed the connection")
            buf += chunk
        return bytes(buf)

    def recv_message(self) -> Message:
        hdr = Header.unpack(self._recv_exact(HEADER_SIZE))
        if hdr.length > PAYLOAD_MAX:
            raise ConnectionError(f"reply payload length {hdr.length} too large")
        payload = self._recv_exact(hdr.length) if hdr.length else b""
        return Message(hdr.type, hdr.req_id, hdr.tx_id, payload)

    def request(self, type_: int, payload: bytes, tx_id: int = 0) -> bytes:
        """Send one request and return the reply payload; error replies raise XsError."""
        self._req_id = (self._req_id + 1) & 0xFFFFFFFF
        req_id = self._req_id
        self.sock.sendall(pack(type_, payload, req_id, tx_id))
        while True:
            msg = self.recv_message()
            if msg.type == Op.WATCH_EVENT:
                self.events.append(_event(msg.payload))
                continue
            if msg.req_id != req_id:
                raise ConnectionError(f"reply for request {msg.req_id}, expected {req_id}")
            if msg.type == Op.ERROR:
                raise XsError(msg.payload.rstrip(b"\0").decode(errors="replace"))
            if msg.type != type_:
                raise ConnectionError(f"reply of type {msg.type} to request type {type_}")
            return msg.payload

    # -- operations --------------------------------------------------------------------------

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.request(Op.READ, _z(path), tx)

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        self.request(Op.WRITE, _z(path) + data, tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.request(Op.MKDIR, _z(path), tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self.request(Op.RM, _z(path), tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        return _strings(self.request(Op.DIRECTORY, _z(path), tx))

    def exists(self, path: str, tx: int = 0) -> bool:
        try:
            self.read(path, tx)
        except XsError as e:
            if e.name == "ENOENT":
                return False
            raise
        return True

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        return _strings(self.request(Op.GET_PERMS, _z(path), tx))

    def set_perms(self, path: str, perms: list[str], tx: int = 0) -> None:
        self.request(Op.SET_PERMS, _z(path) + b"".join(_z(p) for p in perms), tx)

    def get_domain_path(self, domid: int) -> str:
        return _strings(self.request(Op.GET_DOMAIN_PATH, _z(str(domid))))[0]

    def introduce(self, domid: int, mfn: int = 0, port: int = 1) -> None:
        """XS_INTRODUCE (dom0 only): xenstored opens the domain's socket."""
        self.request(Op.INTRODUCE, _z(str(domid)) + _z(str(mfn)) + _z(str(port)))

    def release(self, domid: int) -> None:
        self.request(Op.RELEASE, _z(str(domid)))

    def is_domain_introduced(self, domid: int) -> bool:
        return self.request(Op.IS_DOMAIN_INTRODUCED, _z(str(domid))) == b"T\0"

    def transaction_start(self) -> int:
        return int(_strings(self.request(Op.TRANSACTION_START, b"\0"))[0])

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        self.request(Op.TRANSACTION_END, b"T\0" if commit else b"F\0", tx)

    def watch(self, path: str, token: str) -> None:
        self.request(Op.WATCH, _z(path) + _z(token))

    def unwatch(self, path: str, token: str) -> None:
        self.request(Op.UNWATCH, _z(path) + _z(token))

    def read_watch(self, timeout: float | None = None) -> tuple[str, str]:
        """Next (path, token) watch event; socket.timeout if none arrives in time."""
        if self.events:
            return self.events.popleft()
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                msg = self.recv_message()
                if msg.type == Op.WATCH_EVENT:
                    return _event(msg.payload)
                raise ConnectionError(f"unexpected message type {msg.type} between requests")
        finally:
            self.sock.settimeout(old)


def _z(text: str) -> bytes:
    return text.encode() + b"\0"


def _strings(payload: bytes) -> list[str]:
    return [s.decode(errors="surrogateescape") for s in payload.split(b"\0")[:-1]]


def _event(payload: bytes) -> tuple[str, str]:
    parts = _strings(payload)
    if len(parts) < 2:
        raise ConnectionError("malformed watch event")
    return parts[0], parts[1]


def wait_for_socket(path: str | os.PathLike[str], timeout: float = 10.0) -> None:
    """Wait until ``path`` accepts connections (xenstored's readiness signal)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with XsClient.connect(path, timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"xenstored not ready on {path}") from None
            time.sleep(0.02)


__all__ = ["XsClient", "XsError", "wait_for_socket"]
