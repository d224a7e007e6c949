"""Command set (tests/domproc.py) for TCP transfers inside a domain.

``listen HOST PORT`` then ``recv``: accepts one connection and reads it to the end, answers
{bytes, sha256, seconds}. ``send HOST PORT BYTES [MBPS]``: sends BYTES random bytes (paced
to MBPS megabytes/s if given, not 0), answers {bytes, sha256, seconds}.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Any

CHUNK = 1 << 20


class Xfer:
    def __init__(self) -> None:
        self.srv: socket.socket | None = None

    def cmd_listen(self, host: str, port: str) -> dict[str, Any]:
        self.srv = socket.create_server((host, int(port)))
        return {}

    def cmd_recv(self) -> dict[str, Any]:
        assert self.srv is not None, "listen first"
        conn, _ = self.srv.accept()
        h, n, t0 = hashlib.sha256(), 0, time.monotonic()
        with conn:
            while chunk := conn.recv(CHUNK):
                h.update(chunk)
                n += len(chunk)
        return {"bytes": n, "sha256": h.hexdigest(), "seconds": time.monotonic() - t0}

    def cmd_send(self, host: str, port: str, total: str, mbps: str = "0") -> dict[str, Any]:
        return send(host, int(port), int(total), float(mbps))

    def close(self) -> None:
        if self.srv is not None:
            self.srv.close()


def send(host: str, port: int, total: int, mbps: float = 0.0) -> dict[str, Any]:
    view = memoryview(os.urandom(4 * CHUNK))
    h, sent, t0 = hashlib.sha256(), 0, time.monotonic()
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    conn.settimeout(60)
    with conn:
        i = 0
        while sent < total:
            n = min(CHUNK, total - sent)
            off = (i * 7919) % (3 * CHUNK)
            chunk = view[off:off + n]  # off + n <= 4 MiB: always n bytes
            h.update(chunk)
            conn.sendall(chunk)
            sent += n
            i += 1
            if mbps:
                ahead = sent / (mbps * 1e6) - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    return {"bytes": sent, "sha256": h.hexdigest(), "seconds": time.monotonic() - t0}

