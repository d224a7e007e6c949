"""A vif's connected channel as a port of an in-daemon switch (no TAP, no pump).

The vif's counterpart of :class:`.datapath.Datapath`: the same questions (``done_fd``,
``ended``, ``counters``, ``undo_steps``) answered for a switch port. Teardown order is
the contract of docs/forwarding.md: ``remove_port()`` returns once the switch thread can
no longer touch the rings, and only then is the vchan closed (unmapped / ungranted);
:meth:`undo_steps` hands the vif both steps so that its undo stack runs them in that
order. When the switch stops the port on its own (peer closed, bad record), the
registry calls :meth:`_stopped`: ``done_fd`` becomes readable and ``ended`` names the
reason, so the vif takes its normal link-lost path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from ncd.features import Negotiated
from ncd.metrics import VifCounters
from ncd.switch import PortState, PortStats
from ncd.vchan.channel import Vchan

from .switches import SwitchRegistry
from .undo import Undo


def port_counters(s: PortStats, tracked: int = 0) -> VifCounters:
    """A port's counters as a vif's: tx = left the switch to the peer, rx = from it."""
    return VifCounters(
        frames_tx=s.tx_frames,
        frames_rx=s.rx_frames,
        bytes_tx=s.tx_bytes,
        bytes_rx=s.rx_bytes,
        drops={
            "spoofed_source": s.spoofed_source,
            "ring_full": s.drop_ring_full,
            "bad_record_from_peer": s.bad_record,
            "bad_ring_from_peer": s.bad_ring,
            "offload_not_negotiated": s.drop_offload,
            "too_big_for_port": s.drop_too_big,
            "grant_copy_failed": s.drop_copy_failed,
            "fd_write_error": s.drop_fd_write,
            "filtered_same_port": s.filtered_same_port,
            "no_destination": s.no_destination,
        },
        notifications_spurious=s.notify_spurious,
        tracked_foreign_pages=tracked,
    )


class SwitchLink:
    """``vchan`` as port ``port`` of switch ``switch``; close() removes, then closes."""

    def __init__(self, registry: SwitchRegistry, switch: str, vchan: Vchan,
                 negotiated: Negotiated) -> None:
        self.registry = registry
        self.switch = switch
        self.vchan = vchan
        self.negotiated = negotiated
        self.port = -1
        self._tracked = vchan.tracked_pages
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._why: str | None = None
        self._final: PortStats | None = None
        self._lock = threading.Lock()  # removal vs the metrics thread's reads

    @classmethod
    def open(cls, registry: SwitchRegistry, switch: str, vchan: Vchan, negotiated: Negotiated,
             *, label: str, domid: int, mac: str, trunk: bool,
             ips: Iterable[str] = ()) -> SwitchLink:
        """Add ``vchan`` to ``switch``; on failure the vchan is closed."""
        link = cls(registry, switch, vchan, negotiated)
        try:
            link.port = registry.add_vchan(switch, vchan, label=label, domid=domid, mac=mac,
                                           trunk=trunk, negotiated=negotiated, ips=ips,
                                           on_stop=link._stopped)
        except BaseException:
            os.close(link._efd)
            vchan.close()
            raise
        return link

    def _stopped(self, state: PortState, reason: str) -> None:
        self._why = f"{state.name.lower()}: {reason}" if reason else state.name.lower()
        os.eventfd_write(self._efd, 1)

    def done_fd(self) -> int:
        return self._efd

    def ended(self) -> str | None:
        """Why the switch stopped this port on its own, or None while it is up."""
        return None if self._final is not None else self._why

    @property
    def tracked_pages(self) -> int:
        return 0 if self._final is not None else self._tracked

    def stats(self) -> PortStats:
        with self._lock:
            if self._final is not None:
                return self._final
            got = self.registry.port_stats(self.switch, self.port)
            return got if got is not None else PortStats()

    def counters(self) -> VifCounters:
        return port_counters(self.stats(), self.tracked_pages)

    def final_counters(self) -> VifCounters:
        return port_counters(self._final or PortStats())

    def remove_port(self) -> None:
        """Out of the switch (returns once its thread cannot touch the rings)."""
        with self._lock:
            if self._final is None:
                self._final = self.registry.remove_port(self.switch, self.port)

    def close_vchan(self) -> None:
        """Only after :meth:`remove_port`: unmaps / ungrants the rings."""
        self.remove_port()  # never unmap under a running port, whoever calls
        self.vchan.close()
        if self._efd >= 0:
            fd, self._efd = self._efd, -1
            os.close(fd)

    def undo_steps(self) -> list[tuple[str, Undo]]:
        """In acquisition order: the vif's undo stack runs them last first, so the port
        is removed before the vchan closes."""
        return [("vchan", self.close_vchan), (f"port of switch {self.switch}", self.remove_port)]

    def close(self) -> VifCounters:
        self.remove_port()
        self.close_vchan()
        return self.final_counters()
