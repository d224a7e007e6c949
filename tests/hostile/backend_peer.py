"""A hostile ncd backend: a (driver) domain that runs no ncd and maps the frontend's vchan.

:class:`HostileBackend` is a command set for tests/domproc.py, run as the backend domain
of one device (``ncctl attach FE --backend THIS``). On tests/xenbind (grant maps, event
channels) and libxenstore it does what ncd's backend does — writes its ``feature-*``
keys and InitWait, maps the control page and rings the frontend published in
``queue-0``, binds the event channel, sets ``cli_live``, writes Connected — and then
whatever the test asks: raw records into the ring the frontend reads (left), indices,
live flag, states.
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
    SMALL_OFFSET,
    eth_frame,
    record,
)
from tests.xenbind.evtchn import Evtchn
from tests.xenbind.gnttab import Gnttab
from tests.xenbind.mapping import Mapping


def _pages(order: int) -> int:
    return 1 << (order - 12) if order >= 12 else 0


class HostileBackend:
    """Backend of device ``devid`` of domain ``frontend``; see the module doc."""

    def __init__(self, frontend: str, devid: str = "0") -> None:
        self.xs = XenStore()
        self.fe = int(frontend)
        me = int(self.xs.read("domid"))
        self.dir = f"/local/domain/{me}/backend/ncvif/{self.fe}/{int(devid)}"
        self.fe_dir = f"/local/domain/{self.fe}/device/ncvif/{int(devid)}"
        self.gt = Gnttab()
        self.ev = Evtchn()
        self.ctrl: Mapping | None = None
        self.left: tuple[Mapping, int] | None = None  # the ring we write: pages, offset
        self.left_order = 0
        self.maps: list[Mapping] = []
        self.port: int | None = None

    # ---- xenstore ---------------------------------------------------------------------
    def cmd_state(self, state: str) -> dict[str, Any]:
        self.xs.write(f"{self.dir}/state", state)
        return {}

    def cmd_flap(self, times: str) -> dict[str, Any]:
        """Connected -> InitWait -> Connected, ``times`` times, as fast as xenstored goes."""
        for _ in range(int(times)):
            for st in ("2", "4"):
                self.xs.write(f"{self.dir}/state", st)
        return {}

    def cmd_write(self, key: str, value: str) -> dict[str, Any]:
        self.xs.write(f"{self.dir}/{key}", value)
        return {}

    def cmd_frontend_state(self) -> dict[str, Any]:
        return {"state": self.xs.read_or_none(f"{self.fe_dir}/state")}

    def cmd_init_wait(self) -> dict[str, Any]:
        """Drop any mapping; good features; Closed, then InitWait (the frontend starts over)."""
        self._release()
        for k, v in GOOD_FEATURES.items():
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
        for m in [*self.maps, *([self.ctrl] if self.ctrl else [])]:
            if not m.released:
                m.unmap()
        self.maps, self.ctrl, self.left = [], None, None
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
        assert self.port is not None
        self.ev.notify(self.port)
        return {}

    def cmd_send(self, hexdata: str) -> dict[str, Any]:
        """Raw bytes into the ring the frontend reads (waiting for room), notify."""
        data = bytes.fromhex(hexdata)
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
        self._set(LEFT_PROD, prod + len(data))
        return self.cmd_notify()

    def cmd_frames(self, count: str) -> dict[str, Any]:
        one = record(eth_frame(b"\x02\0\0\0\0\x02")).hex()
        for _ in range(int(count)):
            self.cmd_send(one)
        return {}

    def cmd_set_index(self, which: str, value: str) -> dict[str, Any]:
        off = {"left_prod": LEFT_PROD, "right_cons": 8}[which]
        v = self._idx(off) + int(value, 0) if value[0] in "+-" else int(value, 0)
        self._set(off, v)
        return self.cmd_notify()

    def cmd_poke(self, offset: str, data: str) -> dict[str, Any]:
        assert self.ctrl is not None, "connect first"
        self.ctrl.write(int(offset), bytes.fromhex(data))
        return self.cmd_notify()

    def close(self) -> None:
        self._release()
        self.gt.close()
        self.ev.close()
        self.xs.close()
