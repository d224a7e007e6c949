"""systemd's notify protocol (sd_notify(3)) with no dependency: READY, STATUS, WATCHDOG.

Messages are datagrams of ``KEY=VALUE`` lines sent to ``$NOTIFY_SOCKET`` (a
filesystem path, or an abstract socket written ``@name``). Without
``NOTIFY_SOCKET`` (not started by systemd with Type=notify) every call is a
no-op, so the daemon can call them unconditionally. A send never blocks and never
raises: a manager that does not read (its queue full) or is gone costs the message,
with one warning until a send succeeds again, never the daemon's event loop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("ncd.sdnotify")


class SdNotifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if raw.startswith("@"):
            self._addr = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._addr = raw
        self._watchdog_usec = 0
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_usec = int(usec)
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None if off."""
        if not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2e6

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased); False if there is no socket or
        the message could not be sent."""
        if self._addr is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise ValueError(f"sd_notify {key}: value contains a newline")
            lines.append(f"{key.upper()}={text}")
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self._addr)
        except OSError as exc:  # EAGAIN: not reading; ECONNREFUSED/ENOENT: gone
            if not self._failing:
                log.warning("sd_notify: %s (messages dropped until one gets through)", exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"ready": 1, "mainpid": os.getpid()}
        if status is not None:
            fields["status"] = status
        return self.notify(**fields)

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {"stopping": 1}
        if status is not None:
            fields["status"] = status
        return self.notify(**fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
