"""Switch: the C learning L2 switch (cext/switch) between vchan and TAP ports.

Python creates it, adds and removes ports, reads counters; frames never pass through
Python (one C thread per switch moves them, see docs/forwarding.md)::

    sw = Switch(copy="memcpy")                       # or copy="grant" (forward_copy)
    a = sw.add_vchan(vif_vchan, domid=5, mac="00:16:3e:00:00:05")
    b = sw.add_vchan(uplink_vchan, domid=0, mac="00:16:3e:00:00:01", trunk=True)
    t = sw.add_tap(tap_fd, mac=..., trunk=True)
    sw.port_stats(a).spoofed_source
    sw.accounting()                                  # {(origin, dest): (frames, bytes)}
    sw.remove_port(a)    # returns once the thread can no longer touch a's rings
    vif_vchan.close()    # only now: unmaps the guest's pages
    sw.close()

``events_fd()`` becomes readable when a port stopped on its own (peer closed, bad
record, fd error): read it (8 bytes), then look at :meth:`port_state` and
:meth:`port_reason`, and log the reason.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from ncd.features import ETH_MAX, Features, Negotiated
from ncd.vchan._lib import ffi, lib
from ncd.vchan.pump import mac_bytes as parse_mac  # one MAC parser: the pump's locks

ERRLEN = 256
MAX_PORTS: int = lib.NCD_SWITCH_MAX_PORTS
MAX_IPS: int = lib.NCD_SWITCH_MAX_IPS
DOMID_SELF: int = lib.NCD_DOMID_SELF
DEFAULT_AGEING_S = lib.NCD_SWITCH_DEFAULT_AGEING_MS / 1000
DEFAULT_HOLD_S = lib.NCD_SWITCH_DEFAULT_HOLD_MS / 1000


class CopyMode(enum.IntEnum):
    MEMCPY = 0
    GRANT = 1


class PortKind(enum.IntEnum):
    MAPPED = 1   # a vchan we map (a vif we back): the guest's pages, in the tracker
    GRANTED = 2  # a vchan we grant (a device we front): our own pages
    TAP = 3


class PortState(enum.IntEnum):
    UP = 0
    REMOVED = 1
    PEER_CLOSED = 2
    BAD_PEER = 3
    FD_ERROR = 4
    UNTRACKED = 5


class SwitchError(OSError):
    """A switch call was refused (bad config, no resources)."""


@dataclass(frozen=True)
class PortStats:
    """Counters of one port (cext/switch/switch.h): rx entered the switch, tx left it."""

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    flooded: int = 0
    spoofed_source: int = 0
    filtered_same_port: int = 0
    no_destination: int = 0
    bad_record: int = 0
    drop_ring_full: int = 0
    drop_offload: int = 0
    drop_too_big: int = 0
    drop_copy_failed: int = 0
    drop_fd_write: int = 0
    grant_copy_segs: int = 0
    batches: int = 0
    mac_moves: int = 0
    bad_ring: int = 0
    offload_fixed: int = 0
    gso_segments: int = 0
    drop_bad_headers: int = 0
    notify_spurious: int = 0  # events that carried no work (late EOI)
    ring_full_waits: int = 0
    rate_limited: int = 0  # rx frames that waited for the rate limit's refill
    rate_delay_usec: int = 0  # microseconds they waited


@dataclass(frozen=True)
class SwitchInfo:
    rounds: int
    wakeups: int
    grant_copy_calls: int
    grant_copy_segs: int
    fdb_entries: int
    ports: int
    copy_mode: CopyMode
    spins_won: int = 0  # sleeps avoided: the spin before sleeping found work


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _vchan_handle(vchan: Any) -> Any:
    get = getattr(vchan, "_handle", None)
    return get() if callable(get) else vchan


def _copy_mode(copy: str | CopyMode) -> CopyMode:
    if isinstance(copy, CopyMode):
        return copy
    try:
        return CopyMode[copy.upper()]
    except KeyError:
        raise ValueError(f"forward_copy must be 'memcpy' or 'grant', got {copy!r}") from None


def _hold_ms(hold: float | None) -> int:
    """The C config's hold_ms: None = the default (NCD_SWITCH_DEFAULT_HOLD_MS), 0 = never
    hold (a full destination drops at once), else seconds (at least 1 ms)."""
    if hold is None:
        return 0
    if hold < 0:
        raise ValueError(f"hold must be >= 0 seconds, got {hold!r}")
    return 0xFFFFFFFF if hold == 0 else min(0xFFFFFFFE, max(1, round(hold * 1000)))


class Switch:
    """One learning switch and its C thread.

    ``hold``: how long (seconds) a unicast frame between two vchan ports may wait in
    its source ring for room in a full destination ring before it is dropped and
    counted (docs/forwarding.md, "Full destinations"); only that source waits. None:
    DEFAULT_HOLD_S (NCD_SWITCH_DEFAULT_HOLD_MS); 0: never wait.
    """

    def __init__(self, copy: str | CopyMode = "memcpy", *, ageing: float = DEFAULT_AGEING_S,
                 batch: int = 0, manual_clock: bool = False, self_domid: int = 0,
                 hold: float | None = None) -> None:
        cfg = ffi.new("struct ncd_switch_config *", {
            "copy_mode": int(_copy_mode(copy)),
            "ageing_ms": max(1, int(ageing * 1000)),
            "batch": batch,
            "manual_clock": int(manual_clock),
            "self_domid": self_domid,
            "hold_ms": _hold_ms(hold),
        })
        out = ffi.new("struct ncd_switch **")
        err = ffi.new("char[]", ERRLEN)
        if lib.ncd_switch_create(out, cfg, err, ERRLEN) < 0:
            raise SwitchError(ffi.errno, ffi.string(err).decode(errors="replace"))
        self._sw: Any = out[0]
        self._keep: dict[int, Any] = {}  # port -> vchan: alive while the thread may use it
        self._reported: set[int] = set()

    def _h(self) -> Any:
        if self._sw is None:
            raise ValueError("switch is closed")
        return self._sw

    # -- ports -------------------------------------------------------------------------
    def _add(self, vchan: Any, fd: int, domid: int, mac: str | bytes, trunk: bool,
             negotiated: Negotiated | None, ips: Iterable[str],
             rate: tuple[int, int] = (0, 0)) -> int:
        neg = negotiated or Negotiated(Features.ALL, Features.ALL, ETH_MAX)
        v4 = [ipaddress.ip_address(a) for a in ips]
        four = [a.packed for a in v4 if a.version == 4]
        six = [a.packed for a in v4 if a.version == 6]
        if len(four) > MAX_IPS or len(six) > MAX_IPS:
            raise ValueError(f"at most {MAX_IPS} addresses per family")
        pc = ffi.new("struct ncd_switch_port_config *")
        pc.vchan = _vchan_handle(vchan) if vchan is not None else ffi.NULL
        pc.fd = fd
        pc.domid = domid
        pc.mac = list(parse_mac(mac))
        pc.trunk = int(trunk)
        pc.max_frame = neg.max_frame
        # what the port's peer may send us / what it accepts from us
        pc.rx_features = int(neg.rx_features)
        pc.tx_features = int(neg.tx_features)
        pc.n_ipv4, pc.n_ipv6 = len(four), len(six)
        for i, a in enumerate(four):
            pc.ipv4[i] = list(a)
        for i, a in enumerate(six):
            pc.ipv6[i] = list(a)
        pc.rate_bytes, pc.rate_usec = rate
        err = ffi.new("char[]", ERRLEN)
        port = lib.ncd_switch_add_port(self._h(), pc, err, ERRLEN)
        if port < 0:
            raise SwitchError(ffi.errno, ffi.string(err).decode(errors="replace"))
        self._keep[port] = vchan
        return int(port)

    def add_vchan(self, vchan: Any, *, domid: int, mac: str | bytes = b"\0" * 6,
                  trunk: bool = False, negotiated: Negotiated | None = None,
                  ips: Iterable[str] = (), rate: tuple[int, int] = (0, 0)) -> int:
        """A vchan port (mapped or granted, found from the tracker); returns its id.

        ``domid`` is the domain on the other side; ``mac``/``ips`` what it may send
        with unless ``trunk``; ``rate`` = (bytes, usec) limits what it sends (0 =
        unlimited; :meth:`set_port_rate`). Keep the vchan open until
        :meth:`remove_port` returned.
        """
        return self._add(vchan, -1, domid, mac, trunk, negotiated, ips, rate)

    def add_tap(self, fd: int, *, domid: int = DOMID_SELF, mac: str | bytes = b"\0" * 6,
                trunk: bool = True, negotiated: Negotiated | None = None,
                ips: Iterable[str] = ()) -> int:
        """A packet-mode fd port (TAP with IFF_VNET_HDR, SOCK_SEQPACKET); made
        non-blocking, never closed by the switch."""
        return self._add(None, fd, domid, mac, trunk, negotiated, ips)

    def remove_port(self, port: int) -> PortStats:
        """Remove a port; on return the switch thread no longer touches its vchan or
        fd (close them now). Returns the port's last counters."""
        st = ffi.new("struct ncd_switch_port_stats *")
        if lib.ncd_switch_remove_port(self._h(), port, st) < 0:
            raise SwitchError(ffi.errno, f"no port {port}")
        self._keep.pop(port, None)
        self._reported.discard(port)
        return _stats(st)

    def set_port_rate(self, port: int, nbytes: int, usec: int) -> None:
        """A vchan port's new rate limit (0 = unlimited), applied live."""
        if lib.ncd_switch_port_set_rate(self._h(), port, nbytes, usec) < 0:
            raise SwitchError(ffi.errno, f"no port {port}")

    def ports(self) -> list[int]:
        return sorted(self._keep)

    def port_stats(self, port: int) -> PortStats:
        st = ffi.new("struct ncd_switch_port_stats *")
        if lib.ncd_switch_port_stats(self._h(), port, st) < 0:
            raise SwitchError(ffi.errno, f"no port {port}")
        return _stats(st)

    def port_state(self, port: int) -> PortState:
        s = lib.ncd_switch_port_state(self._h(), port)
        if s < 0:
            raise SwitchError(2, f"no port {port}")
        return PortState(s)

    def port_kind(self, port: int) -> PortKind:
        k = lib.ncd_switch_port_kind(self._h(), port)
        if k < 0:
            raise SwitchError(2, f"no port {port}")
        return PortKind(k)

    def port_reason(self, port: int) -> str:
        buf = ffi.new("char[]", 256)
        lib.ncd_switch_port_reason(self._h(), port, buf, 256)
        return ffi.string(buf).decode(errors="replace")

    # -- tables -------------------------------------------------------------------------
    def accounting(self) -> dict[tuple[int, int], tuple[int, int]]:
        """{(origin domid, destination domid): (frames, bytes)} of forwarded frames."""
        n = lib.NCD_SWITCH_ACCT_SIZE
        out = ffi.new("struct ncd_switch_acct[]", n)
        k = lib.ncd_switch_accounting(self._h(), out, n)
        return {(int(e.origin), int(e.dest)): (int(e.frames), int(e.bytes)) for e in out[0:k]}

    def fdb(self) -> dict[str, tuple[int, float]]:
        """{MAC: (port, age in seconds)} of learned entries not yet aged out."""
        n = lib.NCD_SWITCH_FDB_SIZE
        out = ffi.new("struct ncd_switch_fdb_entry[]", n)
        k = lib.ncd_switch_fdb(self._h(), out, n)
        return {format_mac(bytes(e.mac)): (int(e.port), e.age_ms / 1000) for e in out[0:k]}

    def info(self) -> SwitchInfo:
        i = ffi.new("struct ncd_switch_info *")
        lib.ncd_switch_get_info(self._h(), i)
        return SwitchInfo(int(i.rounds), int(i.wakeups), int(i.grant_copy_calls),
                          int(i.grant_copy_segs), int(i.fdb_entries), int(i.ports),
                          CopyMode(i.copy_mode), int(i.spins_won))

    # -- clock (manual_clock=True: tests drive ageing) -------------------------------------
    @property
    def time(self) -> float:
        return int(lib.ncd_switch_time(self._h())) / 1000

    def set_time(self, seconds: float) -> None:
        lib.ncd_switch_set_time(self._h(), int(seconds * 1000))

    def events_fd(self) -> int:
        return int(lib.ncd_switch_events_fd(self._h()))

    def drain_events(self) -> None:
        try:
            os.read(self.events_fd(), 8)
        except BlockingIOError:
            pass

    def stopped_ports(self) -> list[tuple[int, PortState, str]]:
        """Ports that stopped on their own and were not reported yet: (port, state,
        reason), for the daemon to log and to close those channels. Call it when
        :meth:`events_fd` is readable (it drains the eventfd)."""
        self.drain_events()
        out = []
        for port in self.ports():
            if port in self._reported:
                continue
            state = self.port_state(port)
            if state != PortState.UP:
                self._reported.add(port)
                out.append((port, state, self.port_reason(port)))
        return out

    def close(self) -> None:
        """Stop the thread and free the switch (the ports' vchans/fds stay open)."""
        sw, self._sw = self._sw, None
        if sw is not None:
            lib.ncd_switch_destroy(sw)
        self._keep.clear()

    def __enter__(self) -> Switch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_sw", None) is not None:
            self.close()


def _stats(st: Any) -> PortStats:
    return PortStats(**{f.name: int(getattr(st, f.name)) for f in fields(PortStats)})
