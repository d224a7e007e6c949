"""Command set (tests/domproc.py) for many TCP flows and one sequenced UDP flow in a domain.

``tcp_serve HOST PORT``: a server thread reads every connection to its end and keeps
{bytes, sha256} per client port; ``tcp_results`` answers them. ``tcp_send HOST PORT
BYTES``: one connection (a new source port, so a new flow), answers {sport, bytes,
sha256}. ``udp_listen HOST PORT`` then ``udp_recv SECONDS``: the sequence numbers that
arrived (until SECONDS of silence). ``udp_send HOST PORT COUNT``: COUNT datagrams from
one socket (one flow), each starting with its 4-byte big-endian sequence number.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from typing import Any

from tests.e2e.xfer import CHUNK

UDP_SIZE = 200


class Flows:
    def __init__(self) -> None:
        self.srv: socket.socket | None = None
        self.udp: socket.socket | None = None
        self.results: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    # ---- TCP -------------------------------------------------------------------------
    def cmd_tcp_serve(self, host: str, port: str) -> dict[str, Any]:
        self.srv = socket.create_server((host, int(port)), backlog=64)
        threading.Thread(target=self._accept, args=(self.srv,), daemon=True).start()
        return {}

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                conn, peer = srv.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn, peer[1]), daemon=True).start()

    def _read(self, conn: socket.socket, sport: int) -> None:
        h, n = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(CHUNK):
                h.update(chunk)
                n += len(chunk)
        with self._lock:
            self.results[sport] = {"bytes": n, "sha256": h.hexdigest()}

    def cmd_tcp_results(self) -> dict[str, Any]:
        with self._lock:
            return {"flows": {str(k): v for k, v in self.results.items()}}

    def cmd_tcp_send(self, host: str, port: str, total: str) -> dict[str, Any]:
        data = os.urandom(int(total))
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            sport = conn.getsockname()[1]
            conn.sendall(data)
        return {"sport": sport, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    # ---- UDP -------------------------------------------------------------------------
    def cmd_udp_listen(self, host: str, port: str) -> dict[str, Any]:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.udp.bind((host, int(port)))
        return {}

    def cmd_udp_recv(self, silence: str) -> dict[str, Any]:
        assert self.udp is not None, "udp_listen first"
        self.udp.settimeout(float(silence))
        seqs: list[int] = []
        while True:
            try:
                data = self.udp.recv(65536)
            except TimeoutError:
                break
            seqs.append(struct.unpack_from(">I", data)[0])
        return {"seqs": seqs}

    def cmd_udp_send(self, host: str, port: str, count: str) -> dict[str, Any]:
        pad = bytes(UDP_SIZE - 4)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, int(port)))
            for i in range(int(count)):
                while True:
                    try:
                        s.send(struct.pack(">I", i) + pad)
                        break
                    except BlockingIOError:  # pragma: no cover - a full qdisc
                        time.sleep(0.001)
                if i % 64 == 63:
                    time.sleep(0.0005)  # no burst the receiving socket cannot take
            sport = s.getsockname()[1]
        return {"sport": sport, "count": int(count)}

    def close(self) -> None:
        for s in (self.srv, self.udp):
            if s is not None:
                s.close()
