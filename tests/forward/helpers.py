"""Test side of the switch: guests at the far end of local vchan pairs, frame builders."""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable

from ncd.features import Negotiated
from ncd.switch import Switch, parse_mac
from ncd.vchan.channel import Vchan, local_pair
from tests import framecodec as fr

TIMEOUT = 10.0
BCAST = "ff:ff:ff:ff:ff:ff"


def mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def eth(dst: str, src: str, payload: bytes, ethertype: int = 0x88B5) -> bytes:
    """An Ethernet frame (0x88B5: IEEE local experimental ethertype)."""
    return parse_mac(dst) + parse_mac(src) + struct.pack(">H", ethertype) + payload


def wait_for(pred: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class Guest:
    """The far end of one switch port: the switch holds `port_end`, the test `far`."""

    def __init__(self, sw: Switch, domid: int, ring: int = 64 * 1024, *, trunk: bool = False,
                 ips: tuple[str, ...] = (), switch_is_server: bool = True,
                 negotiated: Negotiated | None = None) -> None:
        srv, cli = local_pair(ring, ring)
        self.port_end: Vchan = srv if switch_is_server else cli
        self.far: Vchan = cli if switch_is_server else srv
        self.domid, self.mac = domid, mac(domid)
        self.sw = sw
        self.port = sw.add_vchan(self.port_end, domid=domid, mac=self.mac, trunk=trunk,
                                 ips=ips, negotiated=negotiated)
        self.dec = fr.Decoder()
        self.got: list[bytes] = []
        self.digest = hashlib.sha256()
        self.nbytes = 0
        self.removed = False

    def send(self, frame: bytes, vnet: fr.VnetHdr | None = None, timeout: float = TIMEOUT) -> None:
        self.send_raw(fr.encode(frame, vnet), timeout)

    def send_raw(self, data: bytes, timeout: float = TIMEOUT) -> None:
        """Write bytes into the ring the switch reads, whatever they are."""
        view, deadline = memoryview(data), time.monotonic() + timeout
        while view:
            n = self.far.write(view)
            view = view[n:]
            if view:
                if time.monotonic() > deadline:
                    raise AssertionError(f"dom{self.domid}: ring stayed full")
                time.sleep(0.0005)

    def try_send(self, frame: bytes) -> bool:
        """Write a whole record if it fits now."""
        rec = fr.encode(frame)
        if self.far.buffer_space() < len(rec):
            return False
        assert self.far.write(rec) == len(rec)
        return True

    def poll(self, keep: bool = True) -> int:
        """Read what arrived; returns the number of new frames."""
        n = 0
        while True:
            data = self.far.read(1 << 20)
            if not data:
                return n
            for _h, f in self.dec.feed(data):
                n += 1
                self.digest.update(f)
                self.nbytes += len(f)
                if keep:
                    self.got.append(f)

    def expect(self, count: int, timeout: float = TIMEOUT) -> list[bytes]:
        wait_for(lambda: (self.poll(), len(self.got) >= count)[1], timeout,
                 f"dom{self.domid} to receive {count} frames (has {len(self.got)})")
        out, self.got = self.got[:count], self.got[count:]
        return out

    def quiet(self, wait: float = 0.1) -> bool:
        """Nothing arrives within `wait` seconds."""
        time.sleep(wait)
        self.poll()
        return not self.got

    def remove(self) -> None:
        if not self.removed:
            self.sw.remove_port(self.port)
            self.removed = True

    def close(self) -> None:
        self.remove()
        self.port_end.close()
        self.far.close()
