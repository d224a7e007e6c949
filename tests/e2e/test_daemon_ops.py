"""The daemon as systemd runs it: configuration errors name the key, sd_notify READY /
STATUS / WATCHDOG / STOPPING, exit 0 on SIGTERM."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.harness import PY, ROOT, Net


def _ncd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "ncd.daemon.main", *args], capture_output=True, text=True,
                          timeout=30, cwd=str(ROOT))


@pytest.mark.parametrize(("toml", "named"), [
    ("[channel]\nring_bytes = 1000\n", "channel.ring_bytes"),
    ("[metrics]\nport = 70000\n", "metrics.port"),
    ("[frontend]\nifname = \"x\"\n", "frontend.ifname"),
    ("[nosuch]\n", "[nosuch]"),
    ("[daemon]\nlog_level = \"loud\"\n", "daemon.log_level"),
])
def test_bad_configuration_is_rejected_naming_the_key(tmp_path: Path, toml: str,
                                                      named: str) -> None:
    cfg = tmp_path / "ncd.toml"
    cfg.write_text(toml)
    r = _ncd("backend", "--config", str(cfg))
    assert r.returncode == 2
    assert named in r.stderr and str(cfg) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_config_file_and_bad_flag(tmp_path: Path) -> None:
    r = _ncd("frontend", "--config", str(tmp_path / "absent.toml"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = _ncd("backend", "--ring-bytes", "12345")
    assert r.returncode == 2 and "channel.ring_bytes" in r.stderr


def _messages(sock: socket.socket, until: str, timeout: float) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in out[-1]:
            break
    return out


def test_sd_notify_ready_status_watchdog_stopping(net: Net, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        fe = net.start(1, "frontend", env=env)
        msgs = _messages(sock, "WATCHDOG=1", 5)
        assert any("READY=1" in m for m in msgs), msgs
        assert any("WATCHDOG=1" in m for m in msgs), msgs
        net.start(0, "backend")
        net.attach(1, 0, "00:16:3e:00:01:00")
        net.wait_connected(1, 0)
        msgs = _messages(sock, "STATUS=1 of 1 vifs connected", 5)
        assert any("STATUS=1 of 1 vifs connected" in m for m in msgs), msgs
        pings = sum(m.count("WATCHDOG=1") for m in _messages(sock, "never", 1.0))
        assert pings >= 3, "WATCHDOG every WATCHDOG_USEC/2"
        assert net.stop(fe) == 0
        msgs = _messages(sock, "STOPPING=1", 3)
        assert any("STOPPING=1" in m for m in msgs), msgs
    assert "nc0" not in net.links(1)
