"""One attached interface: xenbus handshake + TAP + datapath, with one cleanup path.

A :class:`Vif` is a task and a thin adapter (aioquic style) around the
:class:`~ncd.xenbus.XenbusMachine`, which decides everything, retries and their
backoff included. Everything that can change the vif's situation (a xenstore
watch under its own or its peer's directory, the pump thread ending, the
machine's timer, a stop request) only *pokes* it; on each poke it re-reads what
it needs (level-triggered, so lost or coalesced events do not matter), feeds the
machine, performs the actions it returns, and sets one loop timer at the
machine's next deadline. Role specifics (which keys, which TAP settings, map or
grant) live in the subclasses in :mod:`.backend` and :mod:`.frontend`.

Lifecycle: load entries (validated) -> TAP (multi-queue) -> publish features (and the
queue keys, :mod:`ncd.queues`) -> handshake -> Connected (datapath up: one vchan and
pump per queue) ... -> Disconnect / ReleaseDevice. Every acquisition
pushes its undo onto an :class:`~.undo.UndoStack` (mirage-net-xen's Cleanup):
the channel's (pump reader, datapath) on ``_channel``, closed by Disconnect;
the device's (TAP, then the channel) on ``_device``, closed by ReleaseDevice or
a failed setup; the task's (watches, metrics, timer, then the device) on
``_life``. :meth:`_teardown` closes ``_life``: one call, idempotent, the same
whether the task ends normally, on an error or cancelled (as xen-netback's
single teardown doubles as its error unwind).
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ncd import layout
from ncd import tap as tapmod
from ncd.config import Config
from ncd.features import ETH_MAX, Features, advertise, usable
from ncd.metrics import Metrics, VifCounters
from ncd.ratelog import RateLog
from ncd.xen.aio import Watch, run_in_transaction
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
from .deadline import DeadlineTimer
from .switches import SwitchRegistry
from .undo import Undo, UndoStack

log = logging.getLogger("ncd.vif")

# Watch events that change nothing (a peer writing its directory over and over) are
# coalesced, as the late EOI of the event channel (cext/vchan/vchan_eoi.c): after
# IDLE_FREE wakeups in a row that led to no action, the peer's watch is dropped for
# IDLE_FIRST seconds, doubling up to IDLE_MAX, so xenstored sends none of the writes
# meanwhile; set again, it fires once at once and the level is read again. A wakeup
# that acts resets it: an honest peer's state changes are followed at once.
IDLE_FREE = 4
IDLE_FIRST = 0.005
IDLE_MAX = 0.1

OUR_FEATURES = Features.ALL  # what we would accept; what this kernel's TAP allows is advertised
# A switch port has no TAP of its own: it accepts what a vchan record may carry (the
# switch drops, per destination, what that destination did not negotiate: drop_offload)
SWITCH_PORT_FEATURES = Features.ALL


@dataclass
class VifContext:
    """What every vif of one daemon shares."""

    xs: XenStore
    domid: int  # this daemon's domain
    config: Config
    metrics: Metrics
    switches: SwitchRegistry | None = None  # the daemon's switches (backend, driver)
    uplink_switch: str | None = None  # `ncd driver --uplink-switch`: fronted devices join it


class Channel(Protocol):
    """A connected channel: a vchan pumped to a TAP (:class:`.datapath.Datapath`) or a
    vchan that is a switch port (:class:`.switchport.SwitchLink`)."""

    def done_fd(self) -> int: ...
    def ended(self) -> str | None: ...
    def counters(self) -> VifCounters: ...
    def final_counters(self) -> VifCounters: ...
    def undo_steps(self) -> list[tuple[str, Undo]]: ...


@dataclass(frozen=True)
class TapSettings:
    """How a role configures its TAP (see :func:`ncd.tap.configure`)."""

    mac: str | None = None
    mtu: int | None = None
    bridge: str | None = None


class _Poke:
    def __init__(self, why: str) -> None:
        self.why = why


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
        self.datapath: Channel | None = None
        self.features = Features.NONE  # what we advertised (and so accept)
        self.queues = 0  # queues (channels) of the current connection, 0 while down
        self.loaded = False
        self.failures = 0
        self.last_error: str | None = None
        self.created = time.time()
        self.connected_since: float | None = None
        self._acc = VifCounters()  # of the channels before the current one
        self._peer_raw: bytes | None = None
        self._peer_seen = False
        self._stop = False
        self._timer = DeadlineTimer(lambda: self.poke("timer"))  # at machine.get_timer()
        self._life = UndoStack(self.name)
        self._device = UndoStack(self.name)
        self._channel = UndoStack(self.name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plog = RateLog(log, self.name)  # the lines the peer causes
        self._acted = False  # the last wakeup led to an action
        self._idle = 0  # wakeups in a row that led to none
        self._coalesced = 0  # watch events folded into a later look
        self._backoffs = 0  # times the peer's watch was dropped for a while
        self._setups = 0  # channels brought up
        self._peer_watch: Watch | None = None

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
    def _tap_settings(self) -> TapSettings:
        """MAC / MTU / bridge of our TAP, from the entries :meth:`_load` read."""

    @abc.abstractmethod
    def _setup(self, tap: tapmod.Tap | None) -> Channel:
        """The connected channel: pumped to ``tap``, or (``tap`` None) a switch port."""

    @property
    def switch(self) -> str | None:
        """The switch this vif is a port of (no TAP then), from the loaded entries."""
        return None

    def _tap_offloads(self) -> bool:
        """Whether what our TAP is plugged into takes offloaded frames (checksum, GSO)."""
        return True

    def _queue_keys(self) -> dict[str, str]:
        """Multi-queue keys published with the features (the backend's maximum)."""
        return {}

    def _queue_limit(self) -> int:
        """The most queues this end takes: ``[channel] max_queues``; one for a switch
        port (the switch has one ring per port) or a TAP without ``IFF_MULTI_QUEUE``."""
        if self.switch is not None or self.tap is None or not self.tap.multi_queue:
            return 1
        return self.ctx.config.channel.max_queues

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
        own = VifCounters(
            watch_events_coalesced=self._coalesced,
            watch_backoffs=self._backoffs,
            channel_setups=self._setups,
        )
        return self._acc.plus(own if dp is None else own.plus(dp.counters()))

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
            "queues": self.queues,
            **self.describe(),
        }

    async def run(self) -> None:
        """The vif's whole life; returns once the device is released or stopped."""
        self._loop = asyncio.get_running_loop()
        try:
            self._acquire()
            while not self.machine.released:
                if self._stop:
                    await self._apply(self.machine.close())
                    break
                self._acted = False
                try:
                    if not self.loaded:
                        await self._try_load()
                    else:
                        await self._reconcile()
                except Exception as exc:  # keep the daemon and the device going
                    log.exception("%s: internal error", self.name)
                    await self._internal_error(exc)
                if self.machine.released:
                    break
                self._timer.set(self.machine.get_timer())
                await self._next_event()
        finally:
            await self._teardown()

    def _acquire(self) -> None:
        """What the task holds for its whole life, each with its undo on ``_life``."""
        for path in (self.own_dir, self.peer_dir):
            w = Watch(self.xs, path, self.events)  # type: ignore[arg-type]
            w.start()
            self._life.push(f"watch on {path}", w.close)
        self._peer_watch = w
        self.ctx.metrics.add_vif(self.guest, self.devid, self.counters, lambda: self.state)
        self._life.push("metrics", lambda: self.ctx.metrics.remove_vif(self.guest, self.devid))
        self._life.push("retry timer", self._timer.cancel)
        self._life.push("suppressed log lines", self._plog.flush)
        self._life.push("device", self._device.close)

    async def _teardown(self) -> None:
        """Release everything the vif holds (channel, TAP, timer, metrics, watches)."""
        await self._life.close()

    # ---- the loop --------------------------------------------------------------------
    async def _next_event(self) -> None:
        self._idle = 0 if self._acted else self._idle + 1
        ev = await self.events.get()
        w = self._peer_watch
        if self._idle > IDLE_FREE and isinstance(ev, WatchEvent) and w and not self._stop:
            self._backoffs += 1
            w.close()
            await asyncio.sleep(min(IDLE_FIRST * 2 ** (self._idle - IDLE_FREE - 1), IDLE_MAX))
            try:
                w.start()  # fires at once: the next look reads the level
            except OSError as exc:  # the store is going away: the daemon reports that
                log.warning("%s: cannot watch %s again: %s", self.name, w.path, exc)
        seen = 0
        while True:
            if isinstance(ev, WatchEvent):
                self._on_watch(ev.path)
                seen += 1
            if self.events.empty():
                break
            ev = self.events.get_nowait()
        self._coalesced += max(seen - 1, 0)

    def _on_watch(self, path: str) -> None:
        """A watch fired for ``path`` (the level is re-read anyway; roles may note edges)."""
        del path

    async def _try_load(self) -> None:
        await self._apply(self._timer_expired())  # an unloaded device retries on any wakeup
        if layout.read_optional(self.xs, self.own_dir) is None:
            await self._apply(self.machine.device_removed())
            return
        try:
            self._load()
            if not self._device:
                if self.switch is None:
                    await self._open_tap()
                else:  # a switch port: the channel is all the device holds
                    self._device.push("channel", self._channel.close)
            await self._publish_features()
        except (layout.BadEntry, OSError, ValueError) as exc:
            await self._device.close()
            await self._fail_locally(f"cannot set the device up: {exc}")
            await self._write_state(XenbusState.CLOSED)
            return
        self.loaded = True
        log.info("%s: %s ready, starting the handshake", self.name, self.ifname)
        raw = self._read_peer_state()
        self._peer_raw, self._peer_seen = raw, True
        acts = self.machine.peer_changed(raw, self._now())  # before start: only remembered
        if self.machine.state == XenbusState.UNKNOWN:
            acts += self.machine.start()
        await self._apply(acts)

    async def _reconcile(self) -> None:
        await self._apply(self._observe())
        if self.machine.released:
            return
        raw = self._read_peer_state()
        if not self._peer_seen or raw != self._peer_raw:
            self._peer_raw, self._peer_seen = raw, True
            await self._apply(self.machine.peer_changed(raw, self._now()))
        if self.datapath is not None:
            why = self.datapath.ended()
            if why is not None:
                await self._apply(self.machine.link_lost(why, self._now()))
        acts = self._timer_expired()
        if acts:
            self._plog.info("%s: retrying the handshake", self.name)
            await self._apply(acts)

    async def _internal_error(self, exc: Exception) -> None:
        """Drop the channel, count, and let the retry timer start over."""
        await self._channel.close()
        acts: list[Action] = []
        if self.machine.state not in (XenbusState.UNKNOWN, XenbusState.CLOSED):
            acts = self.machine.link_lost(f"internal error: {exc}", self._now())
        if acts:
            await self._apply(acts)
        else:
            await self._fail_locally(f"internal error: {exc}")

    def _read_peer_state(self) -> bytes | None:
        return layout.read_peer(self.xs, f"{self.peer_dir}/state")

    # ---- time: the machine's clock is the loop's -----------------------------------
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _timer_expired(self) -> list[Action]:
        """The machine's answer once our loop timer fired (now: never before the deadline)."""
        at = self._timer.expired()
        return [] if at is None else self.machine.handle_timer(max(at, self._now()))

    # ---- actions ---------------------------------------------------------------------
    async def _apply(self, actions: Sequence[Action]) -> None:
        if actions:
            self._acted = True
        for act in actions:
            if isinstance(act, SetState):
                await self._write_state(act.state)
                if act.state == XenbusState.CONNECTED:
                    self.connected_since = time.time()
                    many = f", {self.queues} queues" if self.queues > 1 else ""
                    self._plog.info(
                        "%s: connected (%s <-> dom%d%s)", self.name, self.ifname, self.peer,
                        many,
                    )
                elif act.state in (XenbusState.CLOSING, XenbusState.CLOSED):
                    self.connected_since = None
            elif isinstance(act, Setup):
                await self._apply(await self._do_setup())
            elif isinstance(act, Disconnect):
                await self._channel.close()
            elif isinstance(act, ReleaseDevice):
                await self._release()
            elif isinstance(act, Fail):
                self._failed(act)

    async def _do_setup(self) -> list[Action]:
        assert self._loop is not None
        assert self.tap is not None or self.switch is not None
        try:
            try:
                dp = self._setup(self.tap)
            except OSError as exc:
                if exc.errno != errno.EBADFD or self.tap is None:
                    raise
                await self._replace_deleted_tap()
                dp = self._setup(self.tap)
        except (OSError, ValueError) as exc:
            return self.machine.setup_failed(str(exc), self._now())
        self.datapath = dp
        self._setups += 1
        why: list[str | None] = []  # why it ended, read before the teardown steps run
        self._channel.push("channel counters", lambda: self._close_datapath(dp, why))
        for what, undo in dp.undo_steps():  # e.g. vchan, then switch port: removed first
            self._channel.push(what, undo)
        self._channel.push("channel state", lambda: why.append(dp.ended()))
        fd, loop = dp.done_fd(), self._loop
        loop.add_reader(fd, self.poke, "pump")
        self._channel.push("pump reader", lambda: loop.remove_reader(fd))
        acts = self.machine.setup_done(self._now())
        if not self.machine.channel_up:  # overtaken by a Disconnect
            await self._channel.close()
        return acts

    def _close_datapath(self, dp: Channel, ended: list[str | None]) -> None:
        self.datapath = None
        self.queues = 0
        why = ended[0] if ended else None
        self._acc = self._acc.plus(dp.final_counters())
        if why is None:  # an orderly disconnect; a channel that ended on its own is
            self._plog.info("%s: channel down", self.name)  # logged once, as the failure

    async def _release(self) -> None:
        had_tap, had_device = self.tap is not None, bool(self._device)
        await self._device.close()
        if had_tap:
            log.info("%s: released (%s removed)", self.name, self.ifname)
        elif had_device:
            log.info("%s: released (port of switch %s)", self.name, self.switch)

    def _failed(self, fail: Fail) -> None:
        self.failures += 1
        self.last_error = fail.reason
        at = self.machine.get_timer()
        retry = f"; retry in {at - self._now():.3g}s" if at is not None else ""
        self._plog.warning("%s: failed (%s): %s%s", self.name, fail.kind.label, fail.reason, retry)
        self.ctx.metrics.handshake_failed(fail.kind.label)

    async def _fail_locally(self, reason: str) -> None:
        """A failure of our own setup (entries, TAP, internal error): retried."""
        await self._apply(self.machine.local_failure(reason, FailKind.SETUP_FAILED, self._now()))

    # ---- xenstore / TAP helpers ------------------------------------------------------
    async def _write_state(self, state: XenbusState) -> None:
        """Write our ``state`` key, unless our directory is gone (never resurrect it)."""
        base = self.own_dir

        def txn(t: Any) -> None:
            if layout.read_optional(t, base) is not None:
                t.write(f"{base}/state", str(int(state)))

        try:
            await run_in_transaction(self.xs, txn)
        except OSError as exc:
            log.warning("%s: cannot write state %s: %s", self.name, state.label, exc)

    async def _publish_features(self) -> None:
        if self.tap is not None and not self._tap_offloads():
            self.features = Features.NONE
        elif self.tap is not None:
            self.features = usable(OUR_FEATURES, self.tap.accepts_offloads)
        else:
            self.features = SWITCH_PORT_FEATURES
        keys = {**advertise(self.features, ETH_MAX), **self._queue_keys()}
        base = self.own_dir

        def txn(t: Any) -> None:
            if layout.read_optional(t, base) is None:
                raise OSError(errno.ENOENT, f"{base} vanished")
            for k, v in keys.items():
                t.write(f"{base}/{k}", v)

        await run_in_transaction(self.xs, txn)

    async def _open_tap(self) -> None:
        """Our persistent TAP, configured as the role says; its undo (on ``_device``)
        removes it, and closes the channel first."""
        settings = self._tap_settings()
        tap = open_persistent_tap(self.ifname)
        self.tap = tap
        self._device.push(f"TAP {tap.name}", lambda: self._close_tap(tap))
        self._device.push("channel", self._channel.close)
        try:
            await netlink.configure(
                tap.name, mac=settings.mac, mtu=settings.mtu, bridge=settings.bridge
            )
        except BaseException:
            await self._device.close()  # the error unwind is the teardown: TAP removed
            raise

    async def _replace_deleted_tap(self) -> None:
        """Our TAP was deleted under us (``ip link del``: its fd is EBADFD for good):
        drop it and create it again, so the retried setup has a device to pump."""
        log.warning("%s: %s was deleted under the daemon: creating it again", self.name,
                    self.ifname)
        await self._device.close()
        await self._open_tap()

    async def _close_tap(self, tap: tapmod.Tap) -> None:
        self.tap = None
        try:
            tap.set_persist(False)
        except OSError as exc:
            log.debug("%s: TUNSETPERSIST 0 on %s: %s", self.name, tap.name, exc)
        tap.close()
        await netlink.delete(tap.name)


def open_persistent_tap(name: str) -> tapmod.Tap:
    """Create (or re-attach to) a persistent TAP: it outlives a crashed daemon with its
    addresses and bridge port, and the restarted daemon picks it up; a clean release
    removes it. It is multi-queue (``IFF_MULTI_QUEUE``), unless it exists without (left
    by a daemon that made single-queue TAPs: then the vif takes one queue)."""
    try:
        tap = tapmod.open_tap(name, multi_queue=True)
    except tapmod.TapError as exc:
        if exc.errno != errno.EINVAL:
            raise
        tap = tapmod.open_tap(name)
        log.info("%s exists without IFF_MULTI_QUEUE: one queue until it is re-created", name)
    try:
        tap.set_persist(True)
    except BaseException:
        tap.close()
        raise
    return tap
