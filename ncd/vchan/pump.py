"""FramePump: the C frame pump thread (cext/pump) between a frame fd and a vchan.

Python only starts it, reads its counters and stops it; frames never pass through
Python. Stop the pump before closing the vchan it runs on::

    pump = FramePump.start(vchan, tap_fd, negotiated)
    ...
    pump.stop()          # joins the thread; the vchan stays usable
    vchan.close()

``done_fd()`` becomes readable when the thread ends on its own (peer closed, bad
record, fd failure): watch it with ``loop.add_reader`` and read ``state``/``reason``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from ncd.features import ETH_MAX, Features, Negotiated

from ._lib import ffi, lib

ERRLEN = 256
LOCK_MAX_IPS: int = lib.NCD_LOCK_MAX_IPS
SPIN_MAX_USEC: int = lib.NCD_PUMP_SPIN_MAX_USEC
SPIN_USEC = 0  # the default spin before sleeping: none (config [channel] spin_us)


class PumpState(enum.IntEnum):
    RUNNING = 0
    STOPPED = 1
    PEER_CLOSED = 2
    BAD_PEER = 3
    FD_ERROR = 4
    INTERNAL = 5


class PumpError(OSError):
    """ncd_pump_start refused (bad config, no resources)."""


@dataclass(frozen=True)
class PumpStats:
    """Counters of one pump (see cext/pump/pump.h); tx = fd -> ring, rx = ring -> fd."""

    tx_frames: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    drop_too_big: int = 0
    drop_tx_short: int = 0
    drop_tx_offload: int = 0
    drop_tx_truncated: int = 0
    drop_fd_write: int = 0
    drop_tap_not_ready: int = 0
    bad_record: int = 0
    ring_full_waits: int = 0
    fd_full_waits: int = 0
    notify_recv: int = 0
    notify_sent: int = 0
    wakeups: int = 0
    tx_batches: int = 0
    rx_batches: int = 0
    spoofed_source: int = 0
    notify_spurious: int = 0  # events that carried no work (late EOI)
    rate_limited: int = 0  # rx frames that waited for the rate limit's refill
    rate_delay_usec: int = 0  # microseconds they waited
    spins_won: int = 0  # sleeps avoided: work came while the pump spun
    spins_missed: int = 0  # spins that found nothing (a sleep followed)

    def drops(self) -> dict[str, int]:
        """Drops by reason, for metrics (``bad_record`` counts records from the peer)."""
        return {
            "too_big_for_ring": self.drop_too_big,
            "tx_short": self.drop_tx_short,
            "tx_offload_not_negotiated": self.drop_tx_offload,
            "tx_truncated": self.drop_tx_truncated,
            "fd_write_error": self.drop_fd_write,
            "tap_not_ready": self.drop_tap_not_ready,
            "bad_record_from_peer": self.bad_record,
            "spoofed_source": self.spoofed_source,
        }


def mac_bytes(mac: str | bytes) -> bytes:
    """A MAC as 6 bytes, from bytes or ``aa:bb:cc:dd:ee:ff``; ValueError otherwise."""
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(mac)}")
        return mac
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"bad MAC {mac!r}")
    return bytes(int(p, 16) for p in parts)


def fill_lock(lock: Any, mac: str | bytes | None, trunk: bool, ips: Iterable[str]) -> None:
    """Fill a ``struct ncd_lock`` (cext/forward/antispoof.h): enabled when a MAC is given
    or ``trunk``; ``ips`` (IPv4/IPv6, up to LOCK_MAX_IPS per family) lock the source
    addresses of that family."""
    addrs = [ipaddress.ip_address(a) for a in ips]
    four = [a.packed for a in addrs if a.version == 4]
    six = [a.packed for a in addrs if a.version == 6]
    if len(four) > LOCK_MAX_IPS or len(six) > LOCK_MAX_IPS:
        raise ValueError(f"at most {LOCK_MAX_IPS} addresses per family")
    if mac is None and not trunk:
        if four or six:
            raise ValueError("a source lock with addresses needs the MAC (or trunk)")
        lock.enabled = 0
        return
    m = mac_bytes(mac) if mac is not None else b"\0" * 6
    if not trunk and m[0] & 1:
        raise ValueError("a group MAC cannot be locked")
    lock.enabled = 1
    lock.trunk = int(trunk)
    lock.mac = list(m)
    lock.n_ipv4, lock.n_ipv6 = len(four), len(six)
    for i, a in enumerate(four):
        lock.ipv4[i] = list(a)
    for i, a in enumerate(six):
        lock.ipv6[i] = list(a)


def _vchan_handle(vchan: Any) -> Any:
    """Accept a ncd.vchan.Vchan or a raw ``struct ncd_vchan *``."""
    get = getattr(vchan, "_handle", None)
    return get() if callable(get) else vchan


class FramePump:
    """One running pump thread; created by :meth:`start`."""

    def __init__(self, handle: Any, vchan: Any, fd: int) -> None:
        self._p: Any = handle
        self._vchan = vchan  # keep the vchan (and its memory) alive while the thread runs
        self.fd = fd

    @classmethod
    def start(cls, vchan: Any, fd: int, negotiated: Negotiated | None = None, *,
              read_ring_size: int = 0, write_ring_size: int = 0, batch: int = 0,
              mac: str | bytes | None = None, trunk: bool = False,
              ips: Iterable[str] = (), rate: tuple[int, int] = (0, 0),
              spin_usec: int = SPIN_USEC) -> FramePump:
        """Start moving frames between ``fd`` and ``vchan``.

        ``fd`` must be packet-mode (a TAP with IFF_VNET_HDR, a SOCK_SEQPACKET socket);
        it is made non-blocking and never closed by the pump. Without ``negotiated``
        every feature and the largest frame are allowed both ways (tests, benchmarks).
        Ring sizes of 0 are taken from the vchan.

        Source lock (anti-spoofing on frames from the peer, ring -> fd; the same check
        as a switch port's): ``mac`` is the only source MAC the peer may send with,
        ``ips`` its addresses (a family without any is not checked), ``trunk`` lifts
        the MAC/address checks (a group source is still refused). Default: no lock.
        Violations are dropped and counted (``spoofed_source``).

        ``rate`` = (bytes, usec): a credit of ``bytes`` per ``usec`` on frames from the
        peer (ring -> fd, what a guest transmits), as netback's ``rate``; either 0 (the
        default): unlimited. Change it live with :meth:`set_rate`.

        ``spin_usec``: before sleeping, the thread spins up to this long for the next
        frame, but only while the peer keeps it busy (a stream, or an answer that comes
        within the spin); 0 = sleep at once. At most ``SPIN_MAX_USEC``.
        """
        neg = negotiated or Negotiated(Features.ALL, Features.ALL, ETH_MAX)
        cfg = ffi.new("struct ncd_pump_config *", {
            "fd": fd,
            "max_frame": neg.max_frame,
            "rx_features": int(neg.rx_features),
            "tx_features": int(neg.tx_features),
            "read_ring_size": read_ring_size,
            "write_ring_size": write_ring_size,
            "batch": batch,
            "rate_bytes": rate[0],
            "rate_usec": rate[1],
            "spin_usec": spin_usec,
        })
        fill_lock(cfg.lock, mac, trunk, ips)
        out = ffi.new("struct ncd_pump **")
        err = ffi.new("char[]", ERRLEN)
        if lib.ncd_pump_start(out, _vchan_handle(vchan), cfg, err, ERRLEN) < 0:
            raise PumpError(ffi.errno, ffi.string(err).decode(errors="replace"))
        return cls(out[0], vchan, fd)

    def _handle(self) -> Any:
        if self._p is None:
            raise ValueError("pump is closed")
        return self._p

    @property
    def state(self) -> PumpState:
        return PumpState(lib.ncd_pump_state(self._handle()))

    @property
    def reason(self) -> str:
        return ffi.string(lib.ncd_pump_reason(self._handle())).decode(errors="replace")

    def done_fd(self) -> int:
        """An eventfd, readable once the thread ended on its own."""
        return int(lib.ncd_pump_done_fd(self._handle()))

    def stats(self) -> PumpStats:
        s = ffi.new("struct ncd_pump_stats *")
        lib.ncd_pump_get_stats(self._handle(), s)
        return PumpStats(**{f.name: int(getattr(s, f.name)) for f in fields(PumpStats)})

    def set_rate(self, nbytes: int, usec: int) -> None:
        """A new rate limit (``nbytes`` per ``usec``; 0 = unlimited), applied by the
        running thread at once (woken for it)."""
        lib.ncd_pump_set_rate(self._handle(), nbytes, usec)

    def stop(self) -> None:
        """Wake and join the thread (idempotent); the vchan stays intact."""
        if self._p is not None:
            lib.ncd_pump_stop(self._p)

    def close(self) -> None:
        """Stop and free. Counters are gone afterwards: read them first."""
        p, self._p = self._p, None
        if p is not None:
            lib.ncd_pump_free(p)
        self._vchan = None

    def __enter__(self) -> FramePump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_p", None) is not None:
            self.close()
