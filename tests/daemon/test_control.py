"""Control socket: JSON round trips, root-only access, stale sockets; asyncio and uvloop."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import uvloop

from ncd.control import ControlClient, ControlError, ControlServer, DaemonNotRunning

NOBODY = 65534
SYSTEM_PY = "/usr/bin/python3"  # runnable by nobody, unlike a venv under /root
# the uid the servers below let in: the test's own (root's, the default, when run as root)
SELF = (os.geteuid(),)


@pytest.fixture
def sockdir():
    # world-traversable (unlike pytest's tmp_path) so that the uid check itself is tested
    d = Path(tempfile.mkdtemp(prefix="ncd-ctl-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    def runner(coro):
        if request.param == "uvloop":
            return uvloop.run(coro)
        return asyncio.run(coro)

    return runner


async def handler(op, args):
    if op == "list":
        return {"vifs": [{"domid": 1, "devid": 0, "state": "Connected"}]}
    if op == "echo":
        return args
    if op == "boom":
        raise RuntimeError("kaput")
    raise ControlError(f"unknown operation {op!r}")


def raw_exchange(path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(data)
        out = b""
        while not out.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_round_trips(run, sockdir):
    path = sockdir / "run" / "ncd.sock"

    async def main():
        async with ControlServer(path, handler, SELF):
            st = path.stat()
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600

            def client_side():
                with ControlClient(path) as c:
                    assert c.call("list")["vifs"][0]["state"] == "Connected"
                    assert c.call("echo", a=1, b=[2, "x"]) == {"a": 1, "b": [2, "x"]}
                    with pytest.raises(ControlError, match="unknown operation 'nope'"):
                        c.call("nope")
                    with pytest.raises(ControlError, match="internal error in boom: kaput"):
                        c.call("boom")
                    assert c.call("echo", again=True) == {"again": True}  # same connection
                assert json.loads(raw_exchange(path, b"not json\n")) == {
                    "ok": False,
                    "error": "request is not JSON",
                }
                assert 'string "op"' in json.loads(raw_exchange(path, b"[1]\n"))["error"]
                big = b'{"op":"echo","x":"' + b"a" * 70000 + b'"}\n'
                assert "longer than" in json.loads(raw_exchange(path, big))["error"]

            await asyncio.to_thread(client_side)
        assert not path.exists()

    run(main())


def test_daemon_not_running(sockdir):
    with pytest.raises(DaemonNotRunning, match="ncd daemon not running"):
        ControlClient(sockdir / "ncd.sock").call("list")
    # a stale socket file (daemon killed) reads the same
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sockdir / "ncd.sock"))
    s.close()
    with pytest.raises(DaemonNotRunning):
        ControlClient(sockdir / "ncd.sock").call("list")


def test_stale_socket_replaced_live_one_refused(run, sockdir):
    path = sockdir / "ncd.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()

    async def main():
        async with ControlServer(path, handler, SELF):
            with pytest.raises(ControlError, match="another daemon is listening"):
                await ControlServer(path, handler, SELF).start()
            assert (await asyncio.to_thread(ControlClient(path).call, "echo", n=1)) == {"n": 1}
        (sockdir / "file").write_text("x")
        with pytest.raises(ControlError, match="exists and is not a socket"):
            await ControlServer(sockdir / "file", handler).start()

    run(main())


CHILD = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.settimeout(5)
print(s.recv(4096).decode().strip())  # a refused peer is told at once, before any request
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PY, os.X_OK),
    reason="needs root to switch uid, and /usr/bin/python3",
)
def test_non_root_is_refused_twice_over(run, sockdir):
    path = sockdir / "ncd.sock"

    def as_nobody() -> str:
        out = subprocess.run(
            [SYSTEM_PY, "-I", "-c", CHILD, str(path)],
            user=NOBODY,
            group=NOBODY,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    async def main():
        async with ControlServer(path, handler) as srv:
            # 1. the file mode keeps others out
            assert await asyncio.to_thread(as_nobody) == "EACCES"
            # 2. even if the mode were loosened, SO_PEERCRED refuses the uid
            path.chmod(0o666)
            reply = json.loads(await asyncio.to_thread(as_nobody))
            assert reply == {"ok": False, "error": "permission denied (root only)"}
            assert srv.rejected == 1

    run(main())
