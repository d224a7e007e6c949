"""A hostile ncd backend: a (driver) domain that runs no ncd and maps the frontend's vchan.

:class:`HostileBackend` is a command set for tests/domproc.py, run as the backend domain
of one device (``ncctl attach FE --backend THIS``). On tests/xenbind (grant maps, event
channels) and libxenstore it does what ncd's backend does — writes its ``feature-*``
keys and InitWait, maps the control page and rings the frontend published in
``queue-0``, binds the event channel, sets ``cli_live``, writes Connected — and then
whatever the test asks: raw records into the ring the frontend reads (left), indices of
either ring, a thread rewriting the shared page, notification storms, its port closed,
its mappings dropped, states flapped, its directory removed or filled with garbage.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from ncd.xen.errors import XenError
from ncd.xen.xenstore import XenStore
from tests.hostile.peer import (
    CLI_LIVE,
    GOOD_FEATURES,
    GRANTS,
    LARGE_OFFSET,
    LEFT_CONS,
    LEFT_ORDER,
    LEFT_PROD,
    RIGHT_CONS,
    RIGHT_PROD,
    SMALL_OFFSET,
    Scribbler,
    eth_frame,
    record,
)
from tests.xenbind._lib import lib
from tests.xenbind.evtchn import Evtchn
from tests.xenbind.gnttab import Gnttab
from tests.xenbind.mapping import Mapping

_INDEX = {  # the backend owns left_prod and right_cons; the other two are the frontend's
    "left_cons": LEFT_CONS,
    "left_prod": LEFT_PROD,
    "right_cons": RIGHT_CONS,
    "right_prod": RIGHT_PROD,
}


def _pages(order: int) -> int:
    return 1 << (order - 12) if order >= 12 else 0


class HostileBackend:
    """Backend of device ``devid`` of domain ``frontend``; see the module doc."""

    def __init__(self, frontend: str, devid: str = "0") -> None:
        self.xs = XenStore()
        self.fe = int(frontend)
        self.me = int(self.xs.read("domid"))
        self.gt = Gnttab()
        self.ev = Evtchn()
        self.ctrl: Mapping | None = None
        self.left: tuple[Mapping, int] | None = None  # the ring we write: pages, offset
        self.left_order = 0
        self.maps: list[Mapping] = []
        self.port: int | None = None
        self._scribbler = Scribbler()
        self.cmd_device(devid)

    # ---- xenstore ---------------------------------------------------------------------
    def cmd_device(self, devid: str) -> dict[str, Any]:
        """Be the backend of device ``devid`` of the same frontend from now on (whatever
        was mapped for the previous one is dropped first)."""
        self._release()
        self.dir = f"/local/domain/{self.me}/backend/ncvif/{self.fe}/{int(devid)}"
        self.fe_dir = f"/local/domain/{self.fe}/device/ncvif/{int(devid)}"
        return {}

    def cmd_state(self, state: str) -> dict[str, Any]:
        self.xs.write(f"{self.dir}/state", state)
        return {}

    def cmd_flap(self, seconds: str, *states: str) -> dict[str, Any]:
        """Write ``states`` in turn (default InitWait, Connected) for ``seconds``, as
        fast as xenstored goes."""
        end, writes = time.monotonic() + float(seconds), 0
        while time.monotonic() < end:
            for st in states or ("2", "4"):
                self.xs.write(f"{self.dir}/state", st)
                writes += 1
        return {"writes": writes}

    def cmd_rm_dir(self) -> dict[str, Any]:
        """Remove this device's whole backend directory (state, features, everything)."""
        self.xs.rm(self.dir, missing_ok=True)
        return {}

    def cmd_write(self, key: str, value: str) -> dict[str, Any]:
        self.xs.write(f"{self.dir}/{key}", value)
        return {}

    def cmd_frontend_state(self) -> dict[str, Any]:
        return {"state": self.xs.read_or_none(f"{self.fe_dir}/state")}

    def cmd_init_wait(self, *keys: str) -> dict[str, Any]:
        """Drop any mapping; good features; Closed, then InitWait (the frontend starts
        over). ``keys`` (``key=value``, ``key=`` removes it; ``value`` may be ``xN:C``,
        C repeated N times) override the good ones: hostile negotiation values."""
        self._release()
        values: dict[str, str | None] = dict(GOOD_FEATURES)
        for kv in keys:
            k, v = kv.split("=", 1)
            if v.startswith("x") and ":" in v:
                n, c = v[1:].split(":", 1)
                v = c * int(n)
            values[k] = v or None
        for k, v in values.items():
            if v is None:
                self.xs.rm(f"{self.dir}/{k}", missing_ok=True)
            else:
                self.xs.write(f"{self.dir}/{k}", v)
        self.xs.write(f"{self.dir}/state", "6")
        self.xs.write(f"{self.dir}/state", "2")
        return {}

    def cmd_closed(self) -> dict[str, Any]:
        """Stop: unmap everything, state Closed (the frontend closes too and waits)."""
        self._release()
        self.xs.write(f"{self.dir}/state", "6")
        return {}

    def _release(self) -> None:
        self.cmd_unmap()
        if self.port is not None:
            self.ev.unbind(self.port)
            self.port = None

    # ---- connect ------------------------------------------------------------------------
    def cmd_connect(self, timeout: str = "10") -> dict[str, Any]:
        """Wait for the frontend's vchan, map it as a client does, write Connected. A
        vchan that cannot be mapped (a stale entry the frontend is replacing) is retried
        until ``timeout``."""
        q = f"{self.fe_dir}/queue-0"
        deadline = time.monotonic() + float(timeout)
        while True:
            ref = self.xs.read_or_none(f"{q}/ring-ref")
            port = self.xs.read_or_none(f"{q}/event-channel")
            if ref and port and self.xs.read_or_none(f"{self.fe_dir}/state") in ("3", "4"):
                try:
                    return self._map(int(ref), int(port))
                except XenError:
                    self._release()
                    if time.monotonic() > deadline:
                        raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"the frontend published no vchan in {q} within {timeout}s")
            time.sleep(0.02)

    def _map(self, ref: int, port: int) -> dict[str, Any]:
        self.ctrl = self.gt.map_grant_ref(self.fe, ref)
        lo, ro = struct.unpack("<HH", self.ctrl.read(LEFT_ORDER, 4))
        lp, rp = _pages(lo), _pages(ro)
        refs = list(struct.unpack(f"<{lp + rp}I", self.ctrl.read(GRANTS, 4 * (lp + rp))))
        if lp:
            left = self.gt.map_domain_grant_refs(self.fe, refs[:lp])
            self.maps.append(left)
            self.left = (left, 0)
        else:
            self.left = (self.ctrl, SMALL_OFFSET if lo == 10 else LARGE_OFFSET)
        if rp:
            self.maps.append(self.gt.map_domain_grant_refs(self.fe, refs[lp:], writable=False))
        self.left_order = lo
        self.port = self.ev.bind_interdomain(self.fe, port)
        self.ctrl.write(CLI_LIVE, b"\x01")
        self.ev.notify(self.port)
        self.xs.write(f"{self.dir}/state", "4")
        return {"orders": [lo, ro]}

    # ---- the left ring (ours to write) ------------------------------------------------------
    def _idx(self, off: int) -> int:
        assert self.ctrl is not None, "connect first"
        return int(struct.unpack("<I", self.ctrl.read(off, 4))[0])

    def _set(self, off: int, value: int) -> None:
        assert self.ctrl is not None, "connect first"
        self.ctrl.write(off, struct.pack("<I", value & 0xFFFFFFFF))

    def cmd_notify(self) -> dict[str, Any]:
        if self.port is not None:  # a closed port notifies nobody
            self.ev.notify(self.port)
        return {}

    def cmd_send(self, hexdata: str, notify: str = "1") -> dict[str, Any]:
        """Raw bytes into the ring the frontend reads (waiting for room), published;
        notified unless ``notify`` is 0."""
        self._ring_write(bytes.fromhex(hexdata), publish=True)
        return self.cmd_notify() if notify == "1" else {}

    def cmd_stage(self, hexdata: str) -> dict[str, Any]:
        """Raw bytes into the ring at our producer index, not published (for a thread
        that then rewrites the index)."""
        self._ring_write(bytes.fromhex(hexdata), publish=False)
        return {}

    def _ring_write(self, data: bytes, publish: bool) -> None:
        assert self.left is not None, "connect first"
        pages, base = self.left
        size = 1 << self.left_order
        deadline = time.monotonic() + 5
        prod = self._idx(LEFT_PROD)
        while size - ((prod - self._idx(LEFT_CONS)) & 0xFFFFFFFF) < len(data):
            if time.monotonic() > deadline:
                raise TimeoutError("the frontend does not consume the ring")
            time.sleep(0.001)
        pos = prod % size
        first = min(len(data), size - pos)
        pages.write(base + pos, data[:first])
        if first < len(data):
            pages.write(base, data[first:])
        if publish:
            self._set(LEFT_PROD, prod + len(data))

    def cmd_frames(self, count: str, notify: str = "1") -> dict[str, Any]:
        """``count`` minimum valid frames (``notify`` 0: published, never notified)."""
        one = record(eth_frame(b"\x02\0\0\0\0\x02")).hex()
        for _ in range(int(count)):
            self.cmd_send(one, notify)
        return {}

    def cmd_flood(self, seconds: str) -> dict[str, Any]:
        """Minimum valid records, as many as the ring takes, for ``seconds``."""
        assert self.left is not None, "connect first"
        one = record(eth_frame(b"\x02\0\0\0\0\x02"))
        size = 1 << self.left_order
        batch = one * (min(size, 8192) // len(one))
        end, sent = time.monotonic() + float(seconds), 0
        while time.monotonic() < end:
            self._ring_write(batch, publish=True)  # waits for room
            self.cmd_notify()
            sent += len(batch) // len(one)
        return {"frames": sent}

    def cmd_set_index(self, which: str, value: str) -> dict[str, Any]:
        """Set an index of the shared page to ``value`` (``+N``/``-N``: relative to
        itself; ``prod+N``/``prod-N`` for ``right_cons``: relative to the frontend's
        producer of that ring), notify."""
        off = _INDEX[which]
        if value.startswith("prod"):
            v = self._idx(RIGHT_PROD) + int(value[4:], 0)
        elif value[0] in "+-":
            v = self._idx(off) + int(value, 0)
        else:
            v = int(value, 0)
        self._set(off, v)
        self.cmd_notify()
        return {"value": v & 0xFFFFFFFF}

    def cmd_indices(self) -> dict[str, Any]:
        return {k: self._idx(off) for k, off in _INDEX.items()}

    # ---- a thread rewriting the page -------------------------------------------------------
    def cmd_scribble(self, offset: str, width: str, *values: str) -> dict[str, Any]:
        """A thread writing ``values`` in turn at ``offset`` (``width`` 1 or 4 bytes;
        ``+N``: the word there now plus N) until :meth:`cmd_stop`, notifying the
        frontend every 64 rounds."""
        self._stop_thread()
        off = int(offset)
        now = self._idx(off) if width == "4" else 0
        ints = [now + int(v, 0) if v[0] in "+-" else int(v, 0) for v in values]
        blobs = [
            struct.pack("<I", v & 0xFFFFFFFF) if width == "4" else bytes([v & 0xFF]) for v in ints
        ]
        assert self.ctrl is not None, "connect first"
        self._scribbler.start(self.ctrl, off, blobs, self.cmd_notify)
        return {}

    def cmd_stop(self) -> dict[str, Any]:
        return {"rounds": self._stop_thread()}

    def _stop_thread(self) -> int:
        return self._scribbler.stop()

    # ---- the event channel and the mappings ------------------------------------------------
    def cmd_storm(self, seconds: str) -> dict[str, Any]:
        """Notify as fast as the event channel takes it for ``seconds``."""
        assert self.port is not None, "connect first"
        h, port, notify = self.ev._handle("notify"), self.port, lib.xenevtchn_notify
        count, start = 0, time.monotonic()
        while time.monotonic() - start < float(seconds):
            for _ in range(1000):
                notify(h, port)
            count += 1000
        return {"count": count, "seconds": time.monotonic() - start}

    def cmd_close_port(self) -> dict[str, Any]:
        """Close our end of the event channel, everything else as it is."""
        assert self.port is not None, "connect first"
        self.ev.unbind(self.port)
        self.port = None
        return {}

    def cmd_unmap(self) -> dict[str, Any]:
        """Unmap the control page and the rings, state and port as they are."""
        self._stop_thread()
        for m in [*self.maps, *([self.ctrl] if self.ctrl else [])]:
            if not m.released:
                m.unmap()
        self.maps, self.ctrl, self.left = [], None, None
        return {}

    def cmd_poke(self, offset: str, data: str) -> dict[str, Any]:
        assert self.ctrl is not None, "connect first"
        self.ctrl.write(int(offset), bytes.fromhex(data))
        return self.cmd_notify()

    def close(self) -> None:
        self._release()
        self.gt.close()
        self.ev.close()
        self.xs.close()
