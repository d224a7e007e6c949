"""Helpers for the vchan tests on xensim: driven peers, ncd-vchan processes, streams."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.domproc import DomProc

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
# the real binary: /usr/bin/vchan-socket-proxy is a wrapper that insists on a hypervisor
VSP = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"


def vchan_path(domid: int, name: str) -> str:
    return f"/local/domain/{domid}/data/{name}"


def ncd_vchan_argv(mode: str, peer: int, path: str, *opts: str) -> list[str]:
    return [sys.executable, "-m", "ncd.tools.ncd_vchan", mode, str(peer), path, *opts]


def peer(sim, domid: int, env_extra: dict[str, str] | None = None,
         spec: str = "tests.vchan.simdriver:Driver") -> DomProc:
    """A vchan command set (tests.vchan.simdriver) running as ``domid``;
    ``call("cmd args")`` -> dict."""
    return DomProc.python(sim, domid, spec, env_extra=env_extra, timeout=60)


@contextlib.contextmanager
def peers(sim, *domids: int, env_extra: dict[str, str] | None = None,
          spec: str = "tests.vchan.simdriver:Driver") -> Iterator[list[DomProc]]:
    ps: list[DomProc] = []
    try:
        for d in domids:
            ps.append(peer(sim, d, env_extra, spec))
        yield ps
    finally:
        for p in ps:
            p.close()


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
