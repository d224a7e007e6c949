"""The daemon's control socket: JSON requests over a root-only Unix socket.

Wire format: one JSON object per line each way. A request is
``{"op": NAME, ...arguments}``; the reply is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "one line"}``. Several requests may share a
connection. Lines are limited to :data:`MAX_LINE` bytes.

Access: the socket is created mode 0600 (bound under umask 0177, so it is
never reachable by others even for an instant) and every connection's peer
credentials (``SO_PEERCRED``) are checked against the allowed uids (root).

Operations the daemons serve (the handler implements them; ncctl uses them):

* ``list``  -> ``{"vifs": [{"domid", "devid", "state", "ifname", "mac", "mtu",
  "bridge"}, ...]}``
* ``stats`` -> :meth:`ncd.metrics.Metrics.snapshot`
* ``ping``  -> ``{"role": "backend"|"frontend", "pid": N}``
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

log = logging.getLogger("ncd.control")

MAX_LINE = 64 * 1024
SOCKET_NAME = "ncd.sock"
DEFAULT_RUNTIME_DIR = "/run/ncd"

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


def default_socket_path() -> Path:
    """``$NCD_RUNTIME_DIR/ncd.sock``, else ``/run/ncd/ncd.sock``."""
    return Path(os.environ.get("NCD_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR) / SOCKET_NAME


class ControlError(Exception):
    """A request failed; the message is one line meant for the operator."""


class DaemonNotRunning(ControlError):
    """Nothing listens on the control socket."""


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def _bind(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # stale, from a daemon that died
        else:
            raise ControlError(f"another daemon is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


class ControlServer:
    """Serves ``handler(op, args)`` on a Unix socket until :meth:`close`."""

    def __init__(
        self, path: str | os.PathLike[str], handler: Handler, allowed_uids: Collection[int] = (0,)
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self._allowed = frozenset(allowed_uids)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.rejected = 0

    async def start(self) -> ControlServer:
        sock = _bind(self.path)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        return self

    async def __aenter__(self) -> ControlServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            if uid not in self._allowed:
                self.rejected += 1
                log.warning("control: refused connection from uid %d", uid)
                await self._send(writer, {"ok": False, "error": "permission denied (root only)"})
                return
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return  # client closed
                except asyncio.LimitOverrunError:
                    await self._send(
                        writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
                    )
                    return
                await self._send(writer, await self._dispatch(line))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": 'request must be an object with a string "op"'}
        op = req.pop("op")
        try:
            return {"ok": True, "result": await self._handler(op, req)}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control: %s failed", op)
            return {"ok": False, "error": f"internal error in {op}: {exc}"}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        await writer.drain()


class ControlClient:
    """Blocking client (for ncctl): ``call(op, **args)`` returns the result."""

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> None:
        self.path = Path(path) if path is not None else default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                raise DaemonNotRunning(
                    f"ncd daemon not running (nothing listens on {self.path})"
                ) from None
            except PermissionError:
                sock.close()
                raise ControlError(f"permission denied on {self.path} (root only)") from None
            except OSError as exc:
                sock.close()
                raise ControlError(f"{self.path}: {exc.strerror or exc}") from None
            self._sock = sock
        return self._sock

    def call(self, op: str, **args: Any) -> Any:
        sock = self._connect()
        try:
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            while b"\n" not in self._buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ControlError(f"daemon closed the connection during {op}")
                self._buf += chunk
                if len(self._buf) > 64 * MAX_LINE:
                    raise ControlError(f"reply to {op} too long")
        except TimeoutError:
            raise ControlError(f"daemon did not answer {op} within {self.timeout:g}s") from None
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise ControlError(f"daemon closed the connection during {op}") from None
            raise
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            raise ControlError(f"daemon sent a reply that is not JSON to {op}") from None
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ControlError(f"daemon sent a malformed reply to {op}")
        if not reply["ok"]:
            raise ControlError(str(reply.get("error", "unknown error")))
        return reply.get("result")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
