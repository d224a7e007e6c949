"""Host side of the dom0 agent's serial channel: send commands, collect framed results.

A reader thread splits the COM2 byte stream into lines, keeps every line in a
transcript file and hands result frames to whoever waits for that request id, so
several commands (e.g. a vchan server in dom0 and its client in the guest) can be in
flight at once.
"""

from __future__ import annotations

import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.agent import TIMEOUT_RC, parse_frame, request_line


class LabError(RuntimeError):
    """A lab step failed; the message says which and why."""


@dataclass
class Result:
    cmd: str
    rc: int
    out: str
    err: str
    secs: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self, what: str = "") -> Result:
        if self.rc != 0:
            raise LabError(
                f"{what or self.cmd!r} failed (rc={self.rc}"
                f"{', timed out' if self.timed_out else ''}):\n"
                f"--- stdout ---\n{self.out[-3000:]}\n--- stderr ---\n"
                f"{self.err[-3000:]}"
            )
        return self


class Console:
    def __init__(self, sock: socket.socket, transcript: Path) -> None:
        self.sock = sock
        self.transcript = transcript.open("a", buffering=1)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.results: dict[str, dict[str, Any]] = {}
        self.hello = False
        self.closed = False
        self.next_id = 0
        self.reader = threading.Thread(target=self._read, name="lab-console", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self.cond:
                    self.closed = True
                    self.cond.notify_all()
                return
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                frame = parse_frame(line)
                if frame is None:
                    if line.strip():
                        self.transcript.write(line + "\n")
                    continue
                kind, body = frame
                with self.cond:
                    if kind == "HELLO":
                        self.hello = True
                    elif body is not None and body.get("id") is not None:
                        self.results[str(body["id"])] = body
                    self.cond.notify_all()

    def wait_hello(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.hello and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 5.0))
                if not self.hello:
                    try:
                        self.sock.sendall(b"HELLO?\n")
                    except OSError:
                        pass
            return self.hello

    def submit(self, cmd: str, timeout: float = 60.0) -> str:
        with self.lock:
            self.next_id += 1
            req_id = str(self.next_id)
        self.transcript.write(f"### dom0 [{req_id}] $ {cmd}\n")
        self.sock.sendall(request_line(req_id, cmd, timeout))
        return req_id

    def wait(self, req_id: str, cmd: str, timeout: float) -> Result:
        deadline = time.monotonic() + timeout + 30  # the agent enforces `timeout` itself
        with self.cond:
            while req_id not in self.results:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    why = "connection closed" if self.closed else "no answer"
                    return Result(cmd, TIMEOUT_RC, "", f"lab console: {why}", timeout, True)
                self.cond.wait(min(left, 1.0))
            body = self.results.pop(req_id)
        res = Result(
            cmd,
            int(body.get("rc", -1)),
            str(body.get("out", "")),
            str(body.get("err", "")),
            float(body.get("secs", 0.0)),
            bool(body.get("timed_out", False)),
        )
        self.transcript.write(
            f"### [{req_id}] rc={res.rc} {res.secs}s\n{res.out}"
            f"{'--- stderr ---' + chr(10) + res.err if res.err else ''}\n"
        )
        return res

    def run(self, cmd: str, timeout: float = 60.0) -> Result:
        """Run ``sh -c cmd`` in dom0."""
        return self.wait(self.submit(cmd, timeout), cmd, timeout)

    def guest_cmd(self, domid: int, cmd: str, timeout: float = 60.0) -> str:
        """The dom0 command that runs ``cmd`` in guest ``domid`` through its agent."""
        return f"python3 /lab/agent.py guest-exec {domid} {timeout:g} {shlex.quote(cmd)}"

    def guest(self, domid: int, cmd: str, timeout: float = 60.0) -> Result:
        """Run ``sh -c cmd`` in the guest (through dom0 and xenstore)."""
        self.transcript.write(f"### guest{domid} $ {cmd}\n")
        return self.run(self.guest_cmd(domid, cmd, timeout), timeout + 20)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.transcript.close()
