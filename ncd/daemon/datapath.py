"""One connected channel of a vif: a vchan and the C frame pump moving frames to a TAP.

The frontend serves the vchan (grants + publishes ``queue-0``), the backend maps
it. Frames never pass through Python: :class:`Datapath` only starts the pump,
reads its counters and stops it. Stop order is fixed here, once: pump first
(joins the thread), then the vchan (unmaps or ungrants, unbinds the port,
removes the xenstore entry on the server side).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, NamedTuple

from ncd import tap as tapmod
from ncd.features import Negotiated, tun_offload_flags
from ncd.metrics import VifCounters
from ncd.vchan.channel import Vchan, VchanClient, VchanServer
from ncd.vchan.pump import FramePump, PumpState, PumpStats

from .undo import Undo


def add_stats(a: PumpStats, b: PumpStats) -> PumpStats:
    da, db = asdict(a), asdict(b)
    return PumpStats(**{f.name: da[f.name] + db[f.name] for f in fields(PumpStats)})


def pump_counters(s: PumpStats, tracked: int = 0) -> VifCounters:
    """A pump's counters as a vif's (tx = fd -> ring = sent to the peer)."""
    return VifCounters(
        frames_tx=s.tx_frames,
        frames_rx=s.rx_frames,
        bytes_tx=s.tx_bytes,
        bytes_rx=s.rx_bytes,
        drops=s.drops(),
        ring_full_waits=s.ring_full_waits,
        notifications_sent=s.notify_sent,
        notifications_received=s.notify_recv,
        notifications_spurious=s.notify_spurious,
        tracked_foreign_pages=tracked,
    )


class SourceLock(NamedTuple):
    """Anti-spoofing for frames a guest sends (the same rule on a TAP vif's pump and on
    a switch port): only ``mac`` as source, and with ``ips`` only those addresses in
    ARP, IPv4 and IPv6 (neighbour discovery included); ``trunk`` lifts the lock."""

    mac: str
    trunk: bool = False
    ips: tuple[str, ...] = ()


class Datapath:
    """A vchan with a pump running on ``tap``; close() releases both."""

    def __init__(self, vchan: Vchan, pump: FramePump, negotiated: Negotiated) -> None:
        self.vchan = vchan
        self.pump = pump
        self.negotiated = negotiated
        self._final: PumpStats | None = None
        # Foreign pages mapped for this channel, read from the tracker now (mapping is
        # done once at connect), so the metrics thread never touches the C handle.
        self._tracked = vchan.tracked_pages

    @classmethod
    def _start(cls, vchan: Vchan, tap: tapmod.Tap, neg: Negotiated,
               lock: SourceLock | None = None) -> Datapath:
        try:
            tap.set_offloads(tun_offload_flags(neg.tx_features))  # exactly what was negotiated
            if lock is None:
                pump = FramePump.start(vchan, tap.fileno(), neg)
            else:
                pump = FramePump.start(vchan, tap.fileno(), neg, mac=lock.mac,
                                       trunk=lock.trunk, ips=lock.ips)
        except BaseException:
            vchan.close()
            raise
        return cls(vchan, pump, neg)

    @classmethod
    def serve(
        cls, xs: Any, peer: int, path: str, ring_bytes: int, tap: tapmod.Tap, neg: Negotiated
    ) -> Datapath:
        """Frontend: grant a vchan for ``peer``, publish it at ``path``, pump."""
        vchan = VchanServer.create(xs, peer, path, ring_bytes, ring_bytes)
        return cls._start(vchan, tap, neg)

    @classmethod
    def connect(cls, xs: Any, peer: int, path: str, tap: tapmod.Tap, neg: Negotiated,
                lock: SourceLock) -> Datapath:
        """Backend: read (untrusted) ``path``/ring-ref, event-channel, map, pump; frames
        from the guest must pass ``lock`` (anti-spoofing)."""
        vchan = VchanClient.connect(xs, peer, path)
        return cls._start(vchan, tap, neg, lock)

    def done_fd(self) -> int:
        return self.pump.done_fd()

    def ended(self) -> str | None:
        """Why the pump thread ended on its own, or None while it runs."""
        if self._final is not None:
            return None
        state = self.pump.state
        if state == PumpState.RUNNING:
            return None
        return f"{state.name.lower()}: {self.pump.reason}"

    @property
    def tracked_pages(self) -> int:
        """Pages of the peer in the foreign-page tracker for this channel (0 once closed)."""
        return 0 if self._final is not None else self._tracked

    def stats(self) -> PumpStats:
        return self._final if self._final is not None else self.pump.stats()

    def counters(self) -> VifCounters:
        return pump_counters(self.stats(), self.tracked_pages)

    def final_counters(self) -> VifCounters:
        return pump_counters(self.close())

    def undo_steps(self) -> list[tuple[str, Undo]]:
        """What the vif's undo stack runs to take this channel down (pump, then vchan)."""
        return [("datapath", self.close)]

    def close(self) -> PumpStats:
        """Stop the pump, release the vchan; returns the final counters. Idempotent."""
        if self._final is None:
            self.pump.stop()
            self._final = self.pump.stats()
            self.pump.close()
            self.vchan.close()
        return self._final
