"""sd_notify over a real datagram socket, path and abstract."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from ncd.sdnotify import SdNotifier


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    yield str(path), s
    s.close()


def test_messages_arrive(listener):
    path, s = listener
    n = SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    assert n.enabled and n.watchdog_interval == 5.0
    assert n.ready("2 vifs connected")
    assert s.recv(4096).decode().split("\n") == [
        "READY=1",
        f"MAINPID={os.getpid()}",
        "STATUS=2 vifs connected",
    ]
    n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    n.status("vif 1/0 Connected")
    assert s.recv(4096) == b"STATUS=vif 1/0 Connected"
    n.stopping("closing vifs")
    assert s.recv(4096) == b"STOPPING=1\nSTATUS=closing vifs"
    with pytest.raises(ValueError, match="newline"):
        n.status("a\nb")
    n.close()


def test_abstract_socket():
    name = f"ncd-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(2)
        n = SdNotifier({"NOTIFY_SOCKET": "@" + name})
        n.watchdog()
        assert s.recv(100) == b"WATCHDOG=1"
        n.close()


def test_without_systemd_everything_is_a_noop():
    n = SdNotifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False and n.watchdog() is False


def test_watchdog_for_another_pid_is_ignored(listener):
    path, _ = listener
    n = SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
    n2 = SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "x"})
    assert n2.watchdog_interval is None


def test_a_manager_that_does_not_read_or_is_gone_never_blocks_or_raises(tmp_path, caplog):
    """A full receive queue (the manager not reading) would block a blocking sendto,
    and with it the daemon's event loop; a closed socket raised ECONNREFUSED into
    whatever called status() (it ended the frontend's discovery). Both now drop."""
    path = str(tmp_path / "deaf.sock")
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(path)
    n = SdNotifier({"NOTIFY_SOCKET": path})
    sent: list[bool] = []
    t = threading.Thread(target=lambda: sent.extend(n.watchdog() for _ in range(2000)), daemon=True)
    t.start()  # 2000: far beyond any max_dgram_qlen
    t.join(30)
    assert not t.is_alive(), "sd_notify blocked on a manager that does not read"
    assert sent[0] and not sent[-1]
    deaf.close()
    assert n.status("gone") is False
    warnings = [r for r in caplog.records if r.name == "ncd.sdnotify"]
    assert len(warnings) == 1, warnings
    n.close()
