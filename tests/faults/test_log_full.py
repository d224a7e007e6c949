"""A full disk for logs: the daemon's stderr on a filesystem with no space left.

The sink (ncd/logsink.py) on its own: records it cannot write are counted, never
raise, print nothing, and the first record written after a loss is preceded by one
line saying how many were lost and why. Then the backend on xensim with its stderr
on a small tmpfs this test mounts and fills: traffic keeps passing (ping and a TCP
transfer with its sha256), ``ncd_log_records_lost_total`` moves, the backend stays
idle, and once the space is freed the "lost N log records" line appears with N the
counter's value.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ncd.logsink import LogSink
from tests.e2e.harness import PY, Net
from tests.hostile.world import IDLE_CPU, cpu_share
from tests.needs import require_root
from tests.simworld import SimWorld

BE, FE = "198.18.1.1", "198.18.1.2"
MAC, MAC2 = "00:16:3e:00:01:00", "00:16:3e:00:01:01"
PORTS = itertools.count(5401)
LOSS_LINE = re.compile(
    r"WARNING lost (\d+) log records?: writing the log failed with ENOSPC "
    r"\(No space left on device\)$",
    re.M,
)


# ---- the sink on its own ----------------------------------------------------------------
def _logger(sink: LogSink) -> logging.Logger:
    lg = logging.getLogger(f"test.logsink.{id(sink)}")
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    lg.handlers[:] = [sink]
    sink.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return lg


def test_sink_on_dev_full_counts_and_stays_quiet(capfd) -> None:
    """Every write fails with ENOSPC: each record is one failed write, counted; no
    exception, no traceback on stderr (what logging.StreamHandler would print)."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = LogSink(fd)
        lg = _logger(sink)
        for i in range(5):
            lg.warning("record %d", i)
        assert sink.lost == 5
    finally:
        os.close(fd)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_sink_reports_the_loss_once_writing_works(tmp_path: Path) -> None:
    """The fd points at /dev/full, then (dup2) at a file: the first record written after
    the loss is preceded by the one line that counts the lost records and names errno."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = LogSink(fd)
        lg = _logger(sink)
        lg.info("lost 1")
        lg.info("lost 2")
        lg.info("lost 3")
        good = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
        os.dup2(good, fd)
        os.close(good)
        lg.info("back")
        lg.info("and on")
    finally:
        os.close(fd)
    assert (tmp_path / "log").read_text().splitlines() == [
        "WARNING lost 3 log records: writing the log failed with ENOSPC (No space left on device)",
        "INFO back",
        "INFO and on",
    ]
    assert sink.lost == 3


# ---- the backend with its log on a full tmpfs -----------------------------------------
class SmallFs:
    """A tmpfs of ``size`` mounted at ``path`` for the test, and a file that fills it."""

    def __init__(self, path: Path, size: str = "1m") -> None:
        self.path = path
        path.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "ncd-test-logs", str(path)],
            check=True,
        )
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write until ENOSPC: the only space left is the tails of pages already used."""
        chunk = b"\0" * 65536
        with open(self.filler, "ab", buffering=0) as fh:
            while True:
                try:
                    fh.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink()

    def remove(self) -> None:
        subprocess.run(["umount", str(self.path)], check=True)
        self.path.rmdir()


@pytest.fixture
def full_log(tmp_path) -> Iterator[tuple[Net, SmallFs]]:
    require_root("a xensim world: network namespaces; a tmpfs mount")
    with contextlib.ExitStack() as undo:  # unwinds in reverse: daemons, tmpfs, world
        sim = SimWorld(tmp_path / "world", domains=1)
        undo.callback(sim.down)
        fs = SmallFs(tmp_path / "logs")
        undo.callback(fs.remove)
        net = Net(sim, fs.path)
        undo.callback(net.close)  # the daemons hold their logs open on the tmpfs
        net.start(0, "backend")
        net.start(1, "frontend")
        net.attach(1, 0, MAC)
        net.wait_connected(1, 0)
        net.addr(0, "ncvif1.0", f"{BE}/24")
        net.addr(1, "nc0", f"{FE}/24")
        yield net, fs


def _lost(net: Net) -> int:
    """ncd_log_records_lost_total, scraped from the backend's metrics endpoint."""
    code = (
        "import urllib.request;print(urllib.request.urlopen("
        f"'http://127.0.0.1:{net.metrics_port}/metrics',timeout=5).read().decode())"
    )
    text = net.sim.run(0, [PY, "-c", code]).stdout
    m = re.search(r"^ncd_log_records_lost_total (\S+)$", text, re.M)
    assert m, "no ncd_log_records_lost_total in the backend's metrics"
    return int(float(m.group(1)))


def _churn(net: Net) -> None:
    """Attach and detach a second vif: a handful of backend log lines."""
    net.attach(1, 1, MAC2)
    net.wait_connected(1, 1)
    net.ncctl("detach", "1", "1")
    net.wait(lambda: net.vif(0, 1, 1) is None and net.vif(1, 1, 1) is None, 15, "vif 1/1 gone")


def _traffic_ok(net: Net) -> None:
    sent, got = net.transfer(1, 0, BE, 2 << 20, port=next(PORTS), timeout=60)
    assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
    assert net.ping_ok(1, BE, count=2)


def test_full_disk_for_logs(full_log: tuple[Net, SmallFs]) -> None:
    net, fs = full_log
    backend = net.daemons[0]
    assert _lost(net) == 0
    fs.fill()
    # the log file's last page still takes a few lines: churn until the writes fail
    for _ in range(20):
        _churn(net)
        if _lost(net) > 0:
            break
    first = _lost(net)
    assert first > 0, "the backend's log writes never failed on the full tmpfs"
    _churn(net)  # while full, every record is one failed write, counted
    lost = _lost(net)
    assert lost > first
    assert backend.alive()
    _traffic_ok(net)
    assert net.vif(0, 1, 0)["state"] == "Connected"
    share = cpu_share(backend.pid, 1.0)
    assert share < IDLE_CPU, f"the backend spins with its log full: {share:.0%} of a core"

    fs.free()
    _churn(net)
    m = net.wait(lambda: LOSS_LINE.search(backend.log_text()), 10, "the lost-records line", backend)
    assert int(m.group(1)) == _lost(net) >= lost
    assert len(LOSS_LINE.findall(backend.log_text())) == 1
    _traffic_ok(net)
