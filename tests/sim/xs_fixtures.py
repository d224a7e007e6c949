"""Run xensim's xenstored for a test, and talk to it as any domain.

from tests.sim.xs_fixtures import xenstored  # noqa: F401  (pytest fixture)

def test_x(xenstored):
    xenstored.introduce(1)
    subprocess.run(["xenstore-write", "x", "1"], env=xenstored.env(1), check=True)
    with xenstored.client(0) as xs:
        assert xs.read("/local/domain/1/x") == b"1"
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xensim import paths
from xensim.xenstored.client import XsClient, wait_for_socket

REPO = Path(__file__).resolve().parents[2]


class XenstoredProcess:
    """``python -m xensim.xenstored --dir WORLD`` as a subprocess, stopped by SIGTERM."""

    def __init__(self, world: Path, verbose: bool = False) -> None:
        self.world = Path(world)
        self.world.mkdir(parents=True, exist_ok=True)
        self.log_path = self.world / "xenstored.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "xensim.xenstored", "--dir", str(self.world)]
        if verbose:
            cmd.append("-v")
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_socket(self.socket(0), timeout=15)
        except BaseException:
            self.stop()
            raise

    def socket(self, domid: int) -> Path:
        return paths.xenstored_socket(self.world, domid)

    def env(self, domid: int) -> dict[str, str]:
        """Environment for Xen's libxenstore clients acting as ``domid``."""
        env = dict(os.environ)
        env[paths.ENV_XENSTORED] = str(self.socket(domid))
        return env

    def client(self, domid: int = 0) -> XsClient:
        return XsClient.connect(self.socket(domid))

    def introduce(self, domid: int) -> None:
        with self.client(0) as xs:
            xs.introduce(domid)
        wait_for_socket(self.socket(domid), timeout=5)

    def release(self, domid: int) -> None:
        with self.client(0) as xs:
            xs.release(domid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(name="xenstored")
def xenstored_fixture(tmp_path: Path) -> Iterator[XenstoredProcess]:
    """A fresh xenstored on a temporary world directory (dom0's socket ready)."""
    xsd = XenstoredProcess(tmp_path / "world")
    try:
        yield xsd
    finally:
        xsd.stop()
