"""Network namespaces for simulated domains (thin wrappers over iproute2's `ip netns`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

NETNS_RUN = Path("/run/netns")


def exists(name: str) -> bool:
    return (NETNS_RUN / name).exists()


def create(name: str) -> None:
    """Create namespace `name` with its loopback up. Fails if it already exists."""
    if exists(name):
        raise FileExistsError(
            f"network namespace {name} already exists: another world uses this prefix "
            "(`ncd-sim up --netns-prefix P` for a second world) or a stale one is left "
            "(`ncd-sim down --dir DIR`)"
        )
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")


def pids(name: str) -> list[int]:
    if not exists(name):
        return []
    out = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


def kill_all(name: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in the namespace and wait until none is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids(name) if p != os.getpid()]
        if not left:
            return
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {left} in netns {name} did not die")
        time.sleep(0.02)


def delete(name: str) -> None:
    if exists(name):
        kill_all(name)
        _ip("netns", "delete", name)


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
