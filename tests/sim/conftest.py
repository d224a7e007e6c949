"""Fixtures for the hypervisor broker and shim tests (all named hv_*).

``hv_world``: a broker (only; no xenstored, no netns) on a temp world with
dom0, dom1, dom2.  ``hv_dom(domid)``: a helper process (cext/xensim/tests/
xsim_helper.c, linked against Debian's libs, run on the shims) acting as that
domain, driven one command line at a time (a :class:`tests.domproc.DomProc`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.buildlock import once_per_run
from tests.domproc import DomProc
from xensim import paths, shimlibs
from xensim.broker.control import BrokerControl, wait_for_broker

ROOT = Path(__file__).resolve().parents[2]
HELPER_SRC = ROOT / "cext/xensim/tests/xsim_helper.c"


def _shims_stale() -> bool:
    lib = paths.shim_lib_dir()
    outs = [lib / s for s in shimlibs.SHIMS]
    if not all(o.exists() for o in outs):
        return True
    newest = max(p.stat().st_mtime for p in (ROOT / "cext/xensim").glob("*.[ch]"))
    return any(o.stat().st_mtime < newest for o in outs)


@pytest.fixture(scope="session")
def hv_shims() -> Path:
    """The shim libraries, (re)built in place when missing or older than their sources
    (by one process of the run: tests/buildlock.py)."""
    if _shims_stale():
        once_per_run(
            "xensim-shims",
            lambda: shimlibs.build(paths.shim_lib_dir()),
            fresh=lambda: not _shims_stale(),
        )
    return paths.shim_lib_dir()


def build_c(src: Path, out: Path, *flags: str) -> Path:
    """Compile one C test program (warnings are errors); ``flags`` go last (libraries)."""
    subprocess.run(
        [
            "gcc",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-std=gnu11",
            "-o",
            str(out),
            str(src),
            *flags,
        ],
        check=True,
    )
    return out


@pytest.fixture(scope="session")
def hv_helper(tmp_path_factory: pytest.TempPathFactory, hv_shims: Path) -> Path:
    return build_c(
        HELPER_SRC,
        tmp_path_factory.mktemp("hvbin") / "xsim_helper",
        "-pthread",
        "-lxengnttab",
        "-lxenevtchn",
        "-lxenctrl",
        "-ldl",
    )


class HvBroker:
    """A broker process on its own world directory."""

    def __init__(self, world: Path, *flags: str) -> None:
        self.world = world
        self.log = world.parent / f"{world.name}-broker.log"
        self._logf = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xensim.broker", "--dir", str(world), *flags],
            stderr=self._logf,
            cwd=ROOT,
        )
        try:
            wait_for_broker(world)
        except BaseException:
            self.stop()
            raise
        self.ctl = BrokerControl(world)

    def stop(self) -> int:
        with contextlib.suppress(Exception):
            self.ctl.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class HvDom(DomProc):
    """The C helper acting as one domain (replies of words: ``ok ...`` / ``err ...``)."""

    def __init__(
        self, helper: Path, world: Path, domid: int, errlog: Path, nofile: int | None = None
    ) -> None:
        self.domid = domid

        def limit_fds() -> None:  # e.g. Linux's default soft RLIMIT_NOFILE of 1024
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        super().__init__(
            [str(helper)],
            {**os.environ, **paths.domain_env(world, domid)},
            name=f"d{domid}",
            words=True,
            errlog=errlog,
            timeout=10.0,
            preexec_fn=limit_fds if nofile is not None else None,
        )


@pytest.fixture
def hv_world(tmp_path: Path, hv_shims: Path) -> Iterator[HvBroker]:
    """Broker with dom0, dom1, dom2; checks on teardown that it exits cleanly."""
    b = HvBroker(tmp_path / "world")
    try:
        b.ctl.create_domain(1)
        b.ctl.create_domain(2)
        yield b
    finally:
        rc = b.stop()
    assert rc == 0, b.log_text()
    assert not list((tmp_path / "world").rglob("*.sock")), "broker left sockets behind"


@pytest.fixture
def hv_dom(hv_world: HvBroker, hv_helper: Path, tmp_path: Path) -> Iterator[Callable[..., HvDom]]:
    doms: list[HvDom] = []

    def make(domid: int, nofile: int | None = None) -> HvDom:
        d = HvDom(
            hv_helper, hv_world.world, domid, tmp_path / f"dom{domid}-{len(doms)}.err", nofile
        )
        doms.append(d)
        return d

    try:
        yield make
    finally:
        for d in doms:
            d.close()


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def zero_stats(ctl: BrokerControl, domids: tuple[int, ...] = (1, 2), conns: bool = True) -> bool:
    """True when the domains hold no grants, mappings, ports (and connections)."""
    st = ctl.stats()
    keys = ("grants", "shared_pages", "mappings", "mapped_pages", "ports")
    keys += ("connections",) if conns else ()
    return all(st[d][k] == 0 for d in domids if d in st for k in keys)
