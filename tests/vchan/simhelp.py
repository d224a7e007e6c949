"""Helpers for the vchan tests on xensim: driven peers, ncd-vchan processes, streams."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
# the real binary: /usr/bin/vchan-socket-proxy is a wrapper that insists on a hypervisor
VSP = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"


def vchan_path(domid: int, name: str) -> str:
    return f"/local/domain/{domid}/data/{name}"


def ncd_vchan_argv(mode: str, peer: int, path: str, *opts: str) -> list[str]:
    return [sys.executable, "-m", "ncd.tools.ncd_vchan", mode, str(peer), path, *opts]


class Peer:
    """tests.vchan.simdriver running as a domain; call("cmd args") -> dict."""

    def __init__(self, sim, domid: int, env_extra: dict[str, str] | None = None) -> None:
        self.domid = domid
        env = sim.env(domid)
        env.update(env_extra or {})
        self.proc = subprocess.Popen(
            sim.argv(domid, [sys.executable, "-m", "tests.vchan.simdriver"]), env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def call(self, line: str, check: bool = True) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"dom{self.domid} driver died on {line!r} "
                               f"(rc {self.proc.wait(timeout=10)})")
        res = json.loads(out)
        if check and not res["ok"]:
            raise AssertionError(f"dom{self.domid} {line!r}: {res}")
        return res

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()


@contextlib.contextmanager
def peers(sim, *domids: int, env_extra: dict[str, str] | None = None) -> Iterator[list[Peer]]:
    ps: list[Peer] = []
    try:
        for d in domids:
            ps.append(Peer(sim, d, env_extra))
        yield ps
    finally:
        for p in ps:
            p.stop()


def stream_chunks(seed: int, total: int, chunk: int = MiB) -> Iterator[bytes]:
    """A deterministic pseudo-random stream, chunk by chunk (every chunk differs)."""
    base = random.Random(seed).randbytes(chunk)
    sent = 0
    i = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield (i.to_bytes(8, "little") + base[8:])[:n]
        sent += n
        i += 1


def stream_digest(seed: int, total: int) -> str:
    h = hashlib.sha256()
    for c in stream_chunks(seed, total):
        h.update(c)
    return h.hexdigest()


class Sink(threading.Thread):
    """Reads a file object / fd to EOF (or `expect` bytes) hashing it; sets `done`."""

    def __init__(self, read, expect: int) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.expect = expect
        self.count = 0
        self.h = hashlib.sha256()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while True:
                b = self.read(MiB)
                if not b:
                    return
                self.h.update(b)
                self.count += len(b)
                if self.count >= self.expect:
                    self.done.set()
        finally:
            self.done.set()

    @property
    def digest(self) -> str:
        return self.h.hexdigest()


class Source(threading.Thread):
    """Writes stream(seed, total) with `write`, then waits for `until` and calls `finish`."""

    def __init__(self, write, finish, seed: int, total: int,
                 until: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.write, self.finish = write, finish
        self.seed, self.total, self.until = seed, total, until
        self.h = hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for c in stream_chunks(self.seed, self.total):
                self.h.update(c)
                self.write(c)
            if self.until is not None:
                self.until.wait(timeout=600)
        except BaseException as exc:  # the test reports it
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                self.finish()

    @property
    def digest(self) -> str:
        return self.h.hexdigest()


def kill_proc(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=10)
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


def write_fd_all(fd: int):
    def w(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return w


def vsp_client_popen(sim, domid: int, args: list[str], **kw):
    """vchan-socket-proxy in client mode, unmodified, with the domain's environment alone
    (xensim's libxenctrl.so.4.17 provides the calls its client mode makes)."""
    return subprocess.Popen(sim.argv(domid, [VSP, "-m", "client", *args]), env=sim.env(domid),
                            **kw)
