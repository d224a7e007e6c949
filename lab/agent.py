"""The lab's command agent, run inside the images (stdlib only, no ncd imports).

``agent.py serve-serial DEV``   dom0: read requests from a serial port, run each in a
                                thread (``sh -c``, own process group, timeout), print
                                framed results.
``agent.py serve-xenstore``     guest: the same over the guest's own xenstore
                                ``data/lab/`` directory (libxenstore via ctypes).
``agent.py guest-exec DOMID TIMEOUT CMD``   dom0: run CMD in guest DOMID through its
                                xenstore agent; prints its stdout/stderr, exits with
                                its exit code.
``agent.py guest-wait DOMID TIMEOUT``       dom0: wait until the guest's agent is up.

Frames on the serial line (one per line, base64 JSON so kernel noise cannot split
them)::

    host -> dom0   Q <b64 {"id", "cmd", "timeout"}>
    dom0 -> host   @@NCDLAB@@ HELLO
                   @@NCDLAB@@ R <b64 {"id", "rc", "out", "err", "secs", "timed_out"}>

Guest results go to ``data/lab/res/<id>/<k>`` in chunks (xenstore values are small),
then ``data/lab/res/<id>/n`` = number of chunks, written last.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from typing import Any

MARK = "@@NCDLAB@@"
OUTPUT_CAP = 256 * 1024  # serial results keep the tail of each stream
GUEST_OUTPUT_CAP = 24 * 1024  # guest results go through xenstore: keep them small
CHUNK = 1500  # below the C xenstored's default entry-size quota (2048)
TIMEOUT_RC = 124


def encode(obj: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def decode(text: str) -> dict[str, Any]:
    obj = json.loads(base64.b64decode(text.strip(), validate=True))
    if not isinstance(obj, dict):
        raise ValueError("frame is not a JSON object")
    return obj


def request_line(req_id: str, cmd: str, timeout: float) -> bytes:
    return f"Q {encode({'id': req_id, 'cmd': cmd, 'timeout': timeout})}\n".encode()


def parse_frame(line: str) -> tuple[str, dict[str, Any] | None] | None:
    """('HELLO', None) or ('R', result) for a frame line, None for anything else."""
    i = line.find(MARK)
    if i < 0:
        return None
    parts = line[i + len(MARK) :].split()
    if parts[:1] == ["HELLO"]:
        return ("HELLO", None)
    if len(parts) == 2 and parts[0] == "R":
        try:
            return ("R", decode(parts[1]))
        except (ValueError, json.JSONDecodeError):
            return None
    return None


def run_command(cmd: str, timeout: float, cap: int) -> dict[str, Any]:
    t0 = time.monotonic()
    p = subprocess.Popen(
        ["/bin/sh", "-c", cmd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
    rc = TIMEOUT_RC if timed_out else p.returncode
    return {
        "rc": rc,
        "timed_out": timed_out,
        "secs": round(time.monotonic() - t0, 3),
        "out": out[-cap:].decode(errors="replace"),
        "err": err[-cap:].decode(errors="replace"),
    }


# ---------------------------------------------------------------- dom0: serial


def serve_serial(dev: str) -> None:
    fd = os.open(dev, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = termios.B115200
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    lock = threading.Lock()

    def send(text: str) -> None:
        data = f"\n{MARK} {text}\n".encode()
        with lock:
            while data:
                data = data[os.write(fd, data) :]

    def handle(req: dict[str, Any]) -> None:
        res = run_command(str(req["cmd"]), float(req.get("timeout", 60)), OUTPUT_CAP)
        res["id"] = req["id"]
        send(f"R {encode(res)}")

    send("HELLO")
    buf = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            time.sleep(0.1)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace").strip()
            if text.startswith("Q "):
                try:
                    req = decode(text[2:])
                except (ValueError, json.JSONDecodeError):
                    send(f"R {encode({'id': None, 'rc': -1, 'err': 'bad request'})}")
                    continue
                threading.Thread(target=handle, args=(req,), daemon=True).start()
            elif text == "HELLO?":
                send("HELLO")


# ---------------------------------------------------------------- xenstore (ctypes)


class XS:
    """The few libxenstore calls the agent needs (paths relative to the domain's home)."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libxenstore.so.4", use_errno=True)
        self.libc = ctypes.CDLL(None)
        lib = self.lib
        lib.xs_open.restype = ctypes.c_void_p
        lib.xs_open.argtypes = [ctypes.c_ulong]
        lib.xs_close.argtypes = [ctypes.c_void_p]
        lib.xs_read.restype = ctypes.c_void_p
        lib.xs_read.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_uint),
        ]
        lib.xs_write.restype = ctypes.c_bool
        lib.xs_write.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
        lib.xs_rm.restype = ctypes.c_bool
        lib.xs_rm.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p]
        lib.xs_directory.restype = ctypes.POINTER(ctypes.c_char_p)
        lib.xs_directory.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_uint),
        ]
        self.libc.free.argtypes = [ctypes.c_void_p]
        self.h = lib.xs_open(0)
        if not self.h:
            raise OSError(ctypes.get_errno(), "xs_open")

    def close(self) -> None:
        if self.h:
            self.lib.xs_close(self.h)
            self.h = None

    def read(self, path: str) -> bytes | None:
        n = ctypes.c_uint()
        p = self.lib.xs_read(self.h, 0, path.encode(), ctypes.byref(n))
        if not p:
            return None
        try:
            return ctypes.string_at(p, n.value)
        finally:
            self.libc.free(p)

    def write(self, path: str, value: bytes) -> None:
        if not self.lib.xs_write(self.h, 0, path.encode(), value, len(value)):
            raise OSError(ctypes.get_errno(), f"xs_write {path}")

    def rm(self, path: str) -> None:
        self.lib.xs_rm(self.h, 0, path.encode())

    def ls(self, path: str) -> list[str]:
        n = ctypes.c_uint()
        p = self.lib.xs_directory(self.h, 0, path.encode(), ctypes.byref(n))
        if not p:
            return []
        try:
            return [p[i].decode() for i in range(n.value)]
        finally:
            self.libc.free(ctypes.cast(p, ctypes.c_void_p))


def put_result(xs: XS, base: str, res: dict[str, Any]) -> None:
    blob = encode(res)
    chunks = [blob[i : i + CHUNK] for i in range(0, len(blob), CHUNK)] or [""]
    for k, c in enumerate(chunks):
        xs.write(f"{base}/{k}", c.encode())
    xs.write(f"{base}/n", str(len(chunks)).encode())


def get_result(xs: XS, base: str) -> dict[str, Any] | None:
    n = xs.read(f"{base}/n")
    if n is None:
        return None
    blob = "".join((xs.read(f"{base}/{k}") or b"").decode() for k in range(int(n)))
    return decode(blob)


# ---------------------------------------------------------------- guest: xenstore


def serve_xenstore(poll: float = 0.1) -> None:
    xs = XS()
    xs.write("data/lab/ready", b"1")
    started: set[str] = set()

    def handle(req_id: str, req: dict[str, Any]) -> None:
        res = run_command(str(req["cmd"]), float(req.get("timeout", 60)), GUEST_OUTPUT_CAP)
        w = XS()
        try:
            put_result(w, f"data/lab/res/{req_id}", res)
            w.rm(f"data/lab/req/{req_id}")
        finally:
            w.close()

    while True:
        for req_id in xs.ls("data/lab/req"):
            if req_id in started:
                continue
            raw = xs.read(f"data/lab/req/{req_id}")
            if not raw:
                continue
            started.add(req_id)
            try:
                req = decode(raw.decode())
            except (ValueError, json.JSONDecodeError):
                put_result(xs, f"data/lab/res/{req_id}", {"rc": -1, "err": "bad request"})
                continue
            threading.Thread(target=handle, args=(req_id, req), daemon=True).start()
        time.sleep(poll)


def guest_exec(domid: int, timeout: float, cmd: str) -> int:
    xs = XS()
    home = f"/local/domain/{domid}/data/lab"
    req_id = f"{os.getpid()}x{time.monotonic_ns() % 10**9}"
    xs.write(f"{home}/req/{req_id}", encode({"cmd": cmd, "timeout": timeout}).encode())
    deadline = time.monotonic() + timeout + 15
    res = None
    while time.monotonic() < deadline:
        res = get_result(xs, f"{home}/res/{req_id}")
        if res is not None:
            break
        time.sleep(0.05)
    xs.rm(f"{home}/res/{req_id}")
    if res is None:
        xs.rm(f"{home}/req/{req_id}")
        print(f"agent: guest {domid} did not answer within {timeout + 15:.0f}s", file=sys.stderr)
        return TIMEOUT_RC
    sys.stdout.write(res.get("out", ""))
    sys.stderr.write(res.get("err", ""))
    return int(res.get("rc", -1))


def guest_wait(domid: int, timeout: float) -> int:
    xs = XS()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if xs.read(f"/local/domain/{domid}/data/lab/ready") == b"1":
            return 0
        time.sleep(0.2)
    print(f"agent: guest {domid} agent not up after {timeout:.0f}s", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve-serial"] and len(argv) == 2:
        serve_serial(argv[1])
    elif argv == ["serve-xenstore"]:
        serve_xenstore()
    elif argv[:1] == ["guest-exec"] and len(argv) == 4:
        return guest_exec(int(argv[1]), float(argv[2]), argv[3])
    elif argv[:1] == ["guest-wait"] and len(argv) == 3:
        return guest_wait(int(argv[1]), float(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
