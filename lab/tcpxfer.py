"""TCP transfer with a checksum, run inside the lab images (stdlib only).

``tcpxfer.py recv PORT``            accept one connection, print ``SHA256 BYTES SECS``
``tcpxfer.py send HOST PORT FILE``  send FILE (connecting as soon as the receiver listens,
                                    up to 90 s), half-close, wait for the receiver to
                                    close, print ``SHA256 BYTES SECS`` (SECS from connect)
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time


def recv(port: int, timeout: float = 240) -> int:
    with socket.create_server(("0.0.0.0", port)) as srv:
        srv.settimeout(timeout)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(timeout)
            h, n, t0 = hashlib.sha256(), 0, time.monotonic()
            while chunk := conn.recv(1 << 16):
                h.update(chunk)
                n += len(chunk)
            print(h.hexdigest(), n, round(time.monotonic() - t0, 3))
    return 0


def connect(host: str, port: int, timeout: float, wait: float = 90) -> socket.socket:
    """Connect, retrying while nobody listens yet (the receiver, started first, may
    still be starting Python in a slow guest)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def send(host: str, port: int, path: str, timeout: float = 240) -> int:
    with open(path, "rb") as f:
        data = f.read()
    with connect(host, port, timeout) as s:
        t0 = time.monotonic()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the receiver closes once it has read everything
    print(hashlib.sha256(data).hexdigest(), len(data), round(time.monotonic() - t0, 3))
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["recv"] and len(a) == 2:
        sys.exit(recv(int(a[1])))
    if a[:1] == ["send"] and len(a) == 4:
        sys.exit(send(a[1], int(a[2]), a[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
