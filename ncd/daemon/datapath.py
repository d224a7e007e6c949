"""One connected channel of a vif: per queue, a vchan and the C frame pump moving frames
between it and that queue's TAP fd.

The frontend serves the vchans (grants + publishes ``queue-<N>``), the backend maps
them (:mod:`ncd.queues` says how many). Queue 0 pumps the vif's own TAP fd; queues
1.. each open one more queue of the (``IFF_MULTI_QUEUE``) TAP, held as long as the
channel. Frames never pass through Python: :class:`Datapath` only starts the pumps,
reads their counters and stops them. Stop order is fixed here, once, per queue: pump
first (joins the thread), then the vchan (unmaps or ungrants, unbinds the port,
removes the xenstore entry on the server side), then the queue's TAP fd. One queue
whose pump ends takes the whole channel down (:meth:`Datapath.ended`), as one fatal
error of a queue takes netback's vif down.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple

from ncd import tap as tapmod
from ncd.features import Negotiated, tun_offload_flags
from ncd.metrics import QueueCounters, VifCounters
from ncd.parse import UNLIMITED, Rate
from ncd.vchan.channel import Vchan, VchanClient, VchanServer
from ncd.vchan.pump import SPIN_USEC, FramePump, PumpState, PumpStats

from .undo import Undo


def add_stats(a: PumpStats, b: PumpStats) -> PumpStats:
    da, db = asdict(a), asdict(b)
    return PumpStats(**{f.name: da[f.name] + db[f.name] for f in fields(PumpStats)})


def pump_counters(s: PumpStats, tracked: int = 0, rate: Rate = UNLIMITED) -> VifCounters:
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
        rate_limited_frames=s.rate_limited,
        rate_delay_usec=s.rate_delay_usec,
        spins_won=s.spins_won,
        spins_missed=s.spins_missed,
        rate_bytes=rate.bytes,
        rate_usec=rate.usec,
        queues=(QueueCounters(s.tx_frames, s.rx_frames, s.tx_bytes, s.rx_bytes),),
    )


class SourceLock(NamedTuple):
    """Anti-spoofing for frames a guest sends (the same rule on a TAP vif's pump and on
    a switch port): only ``mac`` as source, and with ``ips`` only those addresses in
    ARP, IPv4 and IPv6 (neighbour discovery included); ``trunk`` lifts the lock."""

    mac: str
    trunk: bool = False
    ips: tuple[str, ...] = ()


@dataclass
class Queue:
    """One queue of a channel: its vchan, the pump on it, and the TAP fd it pumps
    (``own_tap``: a queue fd this channel opened and closes; None for the vif's TAP)."""

    index: int
    vchan: Vchan
    pump: FramePump
    own_tap: tapmod.Tap | None = None

    def close(self) -> PumpStats:
        """Pump, then vchan, then the queue's TAP fd; returns the final counters."""
        self.pump.stop()
        final = self.pump.stats()
        self.pump.close()
        self.vchan.close()
        if self.own_tap is not None:
            self.own_tap.close()
        return final


class Datapath:
    """A vchan per queue with a pump each on the TAP's queues; close() releases all."""

    def __init__(self, queues: list[Queue], negotiated: Negotiated,
                 rate: Rate = UNLIMITED) -> None:
        self.queues = queues
        self.negotiated = negotiated
        self.rate = rate  # in effect on frames from the peer (the vif's, all queues)
        self._final: list[PumpStats] | None = None
        self.short_of: str | None = None  # why fewer queues than asked were opened
        # Foreign pages mapped for this channel, read from the tracker now (mapping is
        # done once at connect), so the metrics thread never touches the C handle.
        self._tracked = sum(q.vchan.tracked_pages for q in queues)
        # one fd readable once any pump ended (the pump's own with a single queue)
        self._poll: select.epoll | None = None
        if len(queues) > 1:
            self._poll = select.epoll()
            for q in queues:
                self._poll.register(q.pump.done_fd(), select.EPOLLIN)

    @classmethod
    def _open(cls, n: int, tap: tapmod.Tap, neg: Negotiated, vchan_for: Callable[[int], Vchan],
              lock: SourceLock | None = None, rate: Rate = UNLIMITED,
              at_least: int | None = None, spin_us: int = SPIN_USEC) -> Datapath:
        """Queues 0..n-1: each its vchan (``vchan_for(i)``), TAP fd and pump; on any
        failure the queues opened so far are closed again (the one unwind). With
        ``at_least``, a queue from that index on whose TAP fd or vchan cannot be had
        (grants or event channels exhausted) ends the list there instead, as netfront
        goes on with the queues it could create: ``short_of`` says why. ``spin_us``:
        each pump's spin before sleeping (config ``[channel] spin_us``)."""
        tap.set_offloads(tun_offload_flags(neg.tx_features))  # exactly what was negotiated
        locked = {} if lock is None else {"mac": lock.mac, "trunk": lock.trunk, "ips": lock.ips}
        queues: list[Queue] = []
        short_of: str | None = None
        try:
            for i in range(n):
                with contextlib.ExitStack() as undo:  # this queue's pieces, until its pump runs
                    try:
                        own = tap.open_queue() if i else None
                        if own is not None:
                            undo.callback(own.close)
                        vchan = vchan_for(i)
                    except OSError as exc:
                        if at_least is None or i < at_least:
                            raise
                        short_of = str(exc)
                        break
                    undo.callback(vchan.close)
                    pump = FramePump.start(vchan, (own or tap).fileno(), neg, rate=rate,
                                           spin_usec=spin_us, **locked)
                    undo.pop_all()
                queues.append(Queue(i, vchan, pump, own))
            dp = cls(queues, neg, rate)
            dp.short_of = short_of
            return dp
        except BaseException:
            for q in reversed(queues):
                q.close()
            raise

    @classmethod
    def serve(cls, xs: Any, peer: int, paths: list[str], ring_bytes: int, tap: tapmod.Tap,
              neg: Negotiated, spin_us: int = SPIN_USEC) -> Datapath:
        """Frontend: per queue, grant a vchan for ``peer``, publish it at ``paths[i]``,
        pump; fewer queues (at least one) when the domain's grants or event channels
        run out (``short_of``)."""
        return cls._open(len(paths), tap, neg, lambda i: VchanServer.create(
            xs, peer, paths[i], ring_bytes, ring_bytes), at_least=1, spin_us=spin_us)

    @classmethod
    def connect(cls, xs: Any, peer: int, paths: list[str], tap: tapmod.Tap, neg: Negotiated,
                lock: SourceLock, rate: Rate = UNLIMITED, spin_us: int = SPIN_USEC) -> Datapath:
        """Backend: per queue, read (untrusted) ``paths[i]``/ring-ref, event-channel, map,
        pump; frames from the guest must pass ``lock`` (anti-spoofing) and ``rate`` (each
        queue's own credit, as netback gives every queue the vif's credit)."""
        return cls._open(len(paths), tap, neg,
                         lambda i: VchanClient.connect(xs, peer, paths[i]), lock, rate,
                         spin_us=spin_us)

    def set_rate(self, rate: Rate) -> None:
        """A new rate limit on frames from the peer, applied live by every queue's pump
        (each queue its own credit, as netback's xen_net_rate_changed does)."""
        if self._final is None:
            for q in self.queues:
                q.pump.set_rate(rate.bytes, rate.usec)
            self.rate = rate

    def done_fd(self) -> int:
        return self._poll.fileno() if self._poll is not None else self.queues[0].pump.done_fd()

    def ended(self) -> str | None:
        """Why a pump thread ended on its own (the first queue's that did), or None while
        they all run."""
        if self._final is not None:
            return None
        for q in self.queues:
            state = q.pump.state
            if state != PumpState.RUNNING:
                why = f"{state.name.lower()}: {q.pump.reason}"
                return why if len(self.queues) == 1 else f"queue {q.index}: {why}"
        return None

    @property
    def tracked_pages(self) -> int:
        """Pages of the peer in the foreign-page tracker for this channel (0 once closed)."""
        return 0 if self._final is not None else self._tracked

    def stats(self) -> list[PumpStats]:
        """Each queue's pump counters, in queue order."""
        if self._final is not None:
            return self._final
        return [q.pump.stats() for q in self.queues]

    def counters(self) -> VifCounters:
        return self._counters(self.stats(), self.tracked_pages, self.rate)

    def final_counters(self) -> VifCounters:
        return self._counters(self.close())

    @staticmethod
    def _counters(stats: list[PumpStats], tracked: int = 0,
                  rate: Rate = UNLIMITED) -> VifCounters:
        out = VifCounters()
        for s in stats:
            out = out.plus(pump_counters(s))
        queues = tuple(q for s in stats for q in pump_counters(s).queues)  # one per queue
        return replace(out, tracked_foreign_pages=tracked, rate_bytes=rate.bytes,
                       rate_usec=rate.usec, queues=queues)

    def undo_steps(self) -> list[tuple[str, Undo]]:
        """What the vif's undo stack runs to take this channel down (per queue: pump,
        vchan, queue fd)."""
        return [("datapath", self.close)]

    def close(self) -> list[PumpStats]:
        """Stop the pumps, release the vchans and queue fds; returns the final counters.
        Idempotent."""
        if self._final is None:
            self._final = [q.close() for q in self.queues]
            if self._poll is not None:
                self._poll.close()
        return self._final
