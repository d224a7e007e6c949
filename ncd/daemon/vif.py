"""One attached interface: xenbus handshake + TAP + datapath, with one cleanup path.

A :class:`Vif` is a task. Everything that can change its situation (a xenstore
watch under its own or its peer's directory, the pump thread ending, the
machine's retry timer, a stop request) only *pokes* it; on each poke it re-reads what it needs
(level-triggered, so lost or coalesced events do not matter) and feeds the
:class:`~ncd.xenbus.XenbusMachine`, then performs the actions the machine
returns. Role specifics (which keys, which TAP, map or grant) live in the
subclasses in :mod:`.backend` and :mod:`.frontend`.

Lifecycle: load entries (validated) -> TAP -> publish features -> handshake ->
Connected (datapath up) ... -> Disconnect / ReleaseDevice. :meth:`_teardown`
is the single place that releases the datapath, the TAP, the watches, the
metrics registration and timers; it runs whatever way the task ends.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ncd import layout
from ncd import tap as tapmod
from ncd.config import Config
from ncd.metrics import Metrics, VifCounters
from ncd.vchan.framing import (
    ETH_MAX,
    FEATURE_KEYS,
    KEY_MAX_FRAME,
    KEY_PROTOCOL,
    KEY_VNET_HDR,
    Features,
    Negotiated,
    advertise,
    negotiate,
)
from ncd.vchan.pump import PumpStats
from ncd.xen.aio import Watch
from ncd.xen.xenstore import WatchEvent, XenStore
from ncd.xenbus import (
    Action,
    Backoff,
    Disconnect,
    Fail,
    FailKind,
    ReleaseDevice,
    Role,
    SetState,
    Setup,
    XenbusMachine,
    XenbusState,
)

from . import netlink
from .datapath import Datapath, add_stats

log = logging.getLogger("ncd.vif")

OUR_FEATURES = Features.ALL
PEER_KEYS = (KEY_PROTOCOL, KEY_VNET_HDR, KEY_MAX_FRAME, *FEATURE_KEYS)


@dataclass
class VifContext:
    """What every vif of one daemon shares."""

    xs: XenStore
    domid: int  # this daemon's domain
    config: Config
    metrics: Metrics


class _Poke:
    def __init__(self, why: str) -> None:
        self.why = why


def read_peer_keys(xs: XenStore, base: str) -> dict[str, str]:
    """The peer's negotiation keys under ``base`` (untrusted; absent keys left out)."""
    out: dict[str, str] = {}
    for key in PEER_KEYS:
        raw = layout.read_optional(xs, f"{base}/{key}")
        if raw is None:
            continue
        if len(raw) > 16 or not raw.isascii():
            raise ValueError(f"{base}/{key}: malformed value {raw[:32]!r}")
        out[key] = raw.decode("ascii")
    return out


def negotiate_with(xs: XenStore, peer_dir: str) -> Negotiated:
    return negotiate(OUR_FEATURES, ETH_MAX, read_peer_keys(xs, peer_dir))


class Vif(abc.ABC):
    """One device of one daemon; subclasses fill in the role."""

    role: Role

    def __init__(self, ctx: VifContext, guest: int, devid: int) -> None:
        self.ctx = ctx
        self.xs = ctx.xs
        self.guest = guest  # the frontend domain (labels and list on both sides)
        self.devid = devid
        channel = ctx.config.channel
        self.machine = XenbusMachine(
            self.role, backoff=Backoff(channel.reconnect_delay, channel.reconnect_delay_max)
        )
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.tap: tapmod.Tap | None = None
        self.datapath: Datapath | None = None
        self.loaded = False
        self.failures = 0
        self.last_error: str | None = None
        self.created = time.time()
        self.connected_since: float | None = None
        self._acc = PumpStats()
        self._watches: list[Watch] = []
        self._peer_raw: bytes | None = None
        self._peer_seen = False
        self._stop = False
        self._timer: asyncio.TimerHandle | None = None  # a loop timer at _timer_at
        self._timer_at: float | None = None  # the machine's deadline the timer is set for
        self._done_fd: int | None = None
        self._metrics_added = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- role hooks ------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def peer(self) -> int:
        """The other end's domid."""

    @property
    @abc.abstractmethod
    def own_dir(self) -> str: ...

    @property
    @abc.abstractmethod
    def peer_dir(self) -> str: ...

    @property
    @abc.abstractmethod
    def ifname(self) -> str: ...

    @abc.abstractmethod
    def _load(self) -> None:
        """Read and validate this device's entries (raise layout.BadEntry)."""

    @abc.abstractmethod
    def _open_tap(self) -> tapmod.Tap: ...

    @abc.abstractmethod
    def _setup(self, tap: tapmod.Tap) -> Datapath: ...

    @abc.abstractmethod
    def _observe(self) -> list[Action]:
        """Role-specific checks of our own directory (removed, online, toolstack close)."""

    def describe(self) -> dict[str, Any]:
        """Role-specific fields for ``ncctl list``."""
        return {}

    # ---- public ----------------------------------------------------------------------
    @property
    def key(self) -> tuple[int, int]:
        return (self.guest, self.devid)

    @property
    def name(self) -> str:
        return f"vif {self.guest}/{self.devid}"

    @property
    def state(self) -> XenbusState:
        st = self.machine.state
        if st == XenbusState.UNKNOWN:
            return XenbusState.CLOSED if self.failures else XenbusState.INITIALISING
        return st

    def poke(self, why: str = "poke") -> None:
        self.events.put_nowait(_Poke(why))

    def request_stop(self) -> None:
        self._stop = True
        self.poke("stop")

    def counters(self) -> VifCounters:
        dp = self.datapath
        s = self._acc if dp is None else add_stats(self._acc, dp.stats())
        return VifCounters(
            frames_tx=s.tx_frames,
            frames_rx=s.rx_frames,
            bytes_tx=s.tx_bytes,
            bytes_rx=s.rx_bytes,
            drops=s.drops(),
            ring_full_waits=s.ring_full_waits,
            notifications_sent=s.notify_sent,
            notifications_received=s.notify_recv,
            tracked_foreign_pages=0 if dp is None else dp.tracked_pages,
        )

    def info(self) -> dict[str, Any]:
        now = time.time()
        return {
            "domid": self.guest,
            "devid": self.devid,
            "role": self.role.value,
            "state": self.state.label,
            "ifname": self.ifname,
            "peer": self.peer,
            "uptime": round(now - self.created, 1),
            "connected_for": (
                round(now - self.connected_since, 1) if self.connected_since else None
            ),
            "failures": self.failures,
            "last_error": self.last_error,
            **self.describe(),
        }

    async def run(self) -> None:
        """The vif's whole life; returns once the device is released or stopped."""
        self._loop = asyncio.get_running_loop()
        try:
            for path in (self.own_dir, self.peer_dir):
                w = Watch(self.xs, path, self.events)  # type: ignore[arg-type]
                self._watches.append(w)
                w.start()
            self.ctx.metrics.add_vif(self.guest, self.devid, self.counters, lambda: self.state)
            self._metrics_added = True
            while not self.machine.released:
                if self._stop:
                    self._apply(self.machine.close())
                    break
                try:
                    if not self.loaded:
                        self._try_load()
                    else:
                        self._reconcile()
                except Exception as exc:  # keep the daemon and the device going
                    log.exception("%s: internal error", self.name)
                    self._internal_error(exc)
                if self.machine.released:
                    break
                self._set_timer()
                await self._next_event()
        finally:
            self._teardown()

    # ---- the loop --------------------------------------------------------------------
    async def _next_event(self) -> None:
        ev = await self.events.get()
        while True:
            if isinstance(ev, WatchEvent):
                self._on_watch(ev.path)
            if self.events.empty():
                break
            ev = self.events.get_nowait()

    def _on_watch(self, path: str) -> None:
        """A watch fired for ``path`` (the level is re-read anyway; roles may note edges)."""
        del path

    def _try_load(self) -> None:
        self._apply(self._timer_expired())  # an unloaded device retries on every wakeup
        if layout.read_optional(self.xs, self.own_dir) is None:
            self._apply(self.machine.device_removed())
            return
        try:
            self._load()
            if self.tap is None:
                self.tap = self._open_tap()
            self._publish_features()
        except (layout.BadEntry, OSError, ValueError) as exc:
            self._close_tap()
            self._fail_locally(f"cannot set the device up: {exc}")
            self._write_state(XenbusState.CLOSED)
            return
        self.loaded = True
        log.info("%s: %s ready, starting the handshake", self.name, self.ifname)
        raw = self._read_peer_state()
        self._peer_raw, self._peer_seen = raw, True
        acts = self.machine.peer_changed(raw)  # before start: only remembered (or a Fail)
        if self.machine.state == XenbusState.UNKNOWN:
            acts += self.machine.start()
        self._apply(acts)

    def _reconcile(self) -> None:
        self._apply(self._observe())
        if self.machine.released:
            return
        raw = self._read_peer_state()
        if not self._peer_seen or raw != self._peer_raw:
            self._peer_raw, self._peer_seen = raw, True
            self._apply(self.machine.peer_changed(raw))
        if self.datapath is not None:
            why = self.datapath.ended()
            if why is not None:
                self._apply(self.machine.link_lost(why, self._now()))
        acts = self._timer_expired()
        if acts:
            log.info("%s: retrying the handshake", self.name)
            self._apply(acts)

    def _internal_error(self, exc: Exception) -> None:
        """Drop the channel, count, and let the retry timer start over."""
        self._disconnect()
        acts: list[Action] = []
        if self.machine.state not in (XenbusState.UNKNOWN, XenbusState.CLOSED):
            acts = self.machine.link_lost(f"internal error: {exc}", self._now())
        if acts:
            self._apply(acts)
        else:
            self._fail_locally(f"internal error: {exc}")

    def _read_peer_state(self) -> bytes | None:
        return layout.read_optional(self.xs, f"{self.peer_dir}/state")

    # ---- time: the machine's retry timer on the event loop (aioquic's adapter) ------
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _set_timer(self) -> None:
        """Keep one loop timer at the machine's next deadline; it pokes the vif."""
        at = self.machine.get_timer()
        if at == self._timer_at:
            return
        self._cancel_timer()
        assert self._loop is not None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_at(at, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.poke("timer")

    def _timer_expired(self) -> list[Action]:
        """The machine's answer once our loop timer fired (never before its deadline:
        the loop may run a timer a little early)."""
        at = self._timer_at
        if at is None or self._timer is not None:
            return []
        self._timer_at = None
        return self.machine.handle_timer(max(at, self._now()))

    def _cancel_timer(self) -> None:
        timer, self._timer, self._timer_at = self._timer, None, None
        if timer is not None:
            timer.cancel()

    # ---- actions ---------------------------------------------------------------------
    def _apply(self, actions: Sequence[Action]) -> None:
        for act in actions:
            if isinstance(act, SetState):
                self._write_state(act.state)
                if act.state == XenbusState.CONNECTED:
                    self.connected_since = time.time()
                    log.info("%s: connected (%s <-> dom%d)", self.name, self.ifname, self.peer)
                elif act.state in (XenbusState.CLOSING, XenbusState.CLOSED):
                    self.connected_since = None
            elif isinstance(act, Setup):
                self._apply(self._do_setup())
            elif isinstance(act, Disconnect):
                self._disconnect()
            elif isinstance(act, ReleaseDevice):
                self._release()
            elif isinstance(act, Fail):
                self._failed(act)

    def _do_setup(self) -> list[Action]:
        assert self.tap is not None
        try:
            dp = self._setup(self.tap)
        except (OSError, ValueError) as exc:
            return self.machine.setup_failed(str(exc), self._now())
        self.datapath = dp
        self._done_fd = dp.done_fd()
        asyncio.get_running_loop().add_reader(self._done_fd, self.poke, "pump")
        acts = self.machine.setup_done()
        if not self.machine.channel_up:  # overtaken by a Disconnect
            self._disconnect()
        return acts

    def _disconnect(self) -> None:
        dp, self.datapath = self.datapath, None
        if self._done_fd is not None and self._loop is not None:
            self._loop.remove_reader(self._done_fd)
            self._done_fd = None
        if dp is not None:
            why = dp.ended()
            self._acc = add_stats(self._acc, dp.close())
            log.info("%s: channel down%s", self.name, f" ({why})" if why else "")

    def _release(self) -> None:
        had_tap = self.tap is not None
        self._disconnect()
        self._close_tap()
        if had_tap:
            log.info("%s: released (%s removed)", self.name, self.ifname)

    def _failed(self, fail: Fail) -> None:
        self.failures += 1
        self.last_error = fail.reason
        at = self.machine.get_timer()
        retry = f"; retry in {at - self._now():.3g}s" if fail.kind.retry and at is not None else ""
        log.warning("%s: failed (%s): %s%s", self.name, fail.kind.label, fail.reason, retry)
        self.ctx.metrics.handshake_failed(fail.kind.label)

    def _fail_locally(self, reason: str) -> None:
        """A failure of our own setup (entries, TAP, internal error): retried."""
        self._apply(self.machine.local_failure(reason, FailKind.SETUP_FAILED, self._now()))

    # ---- xenstore / TAP helpers ------------------------------------------------------
    def _write_state(self, state: XenbusState) -> None:
        """Write our ``state`` key, unless our directory is gone (never resurrect it)."""
        base = self.own_dir

        def txn(t: Any) -> None:
            if layout.read_optional(t, base) is not None:
                t.write(f"{base}/state", str(int(state)))

        try:
            self.xs.run_in_transaction(txn)
        except OSError as exc:
            log.warning("%s: cannot write state %s: %s", self.name, state.label, exc)

    def _publish_features(self) -> None:
        keys = advertise(OUR_FEATURES, ETH_MAX)
        base = self.own_dir

        def txn(t: Any) -> None:
            if layout.read_optional(t, base) is None:
                raise OSError(errno.ENOENT, f"{base} vanished")
            for k, v in keys.items():
                t.write(f"{base}/{k}", v)

        self.xs.run_in_transaction(txn)

    def _close_tap(self) -> None:
        tap, self.tap = self.tap, None
        if tap is None:
            return
        name = tap.name
        try:
            tap.set_persist(False)
        except OSError as exc:
            log.debug("%s: TUNSETPERSIST 0 on %s: %s", self.name, name, exc)
        tap.close()
        try:
            netlink.delete(name)
        except OSError as exc:
            log.warning("%s: removing %s: %s", self.name, name, exc)

    def _teardown(self) -> None:
        self._cancel_timer()
        self._release()
        for w in self._watches:
            w.close()
        self._watches.clear()
        if self._metrics_added:
            self.ctx.metrics.remove_vif(self.guest, self.devid)
            self._metrics_added = False


def open_persistent_tap(name: str) -> tapmod.Tap:
    """Create (or re-attach to) a persistent TAP: it outlives a crashed daemon with its
    addresses and bridge port, and the restarted daemon picks it up; a clean release
    removes it."""
    tap = tapmod.open_tap(name)
    try:
        tap.set_persist(True)
    except BaseException:
        tap.close()
        raise
    return tap
