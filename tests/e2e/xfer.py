"""TCP transfer helper run inside a domain: ``python -m tests.e2e.xfer recv|send ...``.

recv HOST PORT            prints "ready", then one JSON line {bytes, sha256, seconds}
send HOST PORT BYTES [MBPS]
                          sends BYTES random bytes (paced to MBPS megabytes/s if given),
                          prints {bytes, sha256, seconds}
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time

CHUNK = 1 << 20


def recv(host: str, port: int) -> None:
    with socket.create_server((host, port)) as srv:
        print("ready", flush=True)
        conn, _ = srv.accept()
        h, n, t0 = hashlib.sha256(), 0, time.monotonic()
        with conn:
            while chunk := conn.recv(CHUNK):
                h.update(chunk)
                n += len(chunk)
    print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "seconds": time.monotonic() - t0}),
          flush=True)


def send(host: str, port: int, total: int, mbps: float = 0.0) -> None:
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
    print(json.dumps({"bytes": sent, "sha256": h.hexdigest(), "seconds": time.monotonic() - t0}),
          flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["recv"]:
        recv(argv[1], int(argv[2]))
    elif argv[:1] == ["send"]:
        send(argv[1], int(argv[2]), int(argv[3]), float(argv[4]) if len(argv) > 4 else 0.0)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
