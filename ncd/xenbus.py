"""The xenbus handshake of one ncvif device, as a state machine that does no I/O.

aioquic style: the caller feeds events (the peer's ``state`` key changed, local
setup finished, the link was lost, the daemon shuts down...) and gets back a
list of actions to perform (write our ``state`` key, set the channel up, tear
it down, release the device). Nothing here reads xenstore or touches a TAP.

The transitions follow Linux's netback/netfront (drivers/net/xen-netback/
xenbus.c, drivers/net/xen-netfront.c) with ncd's roles: the frontend is the
vchan *server* (it grants and publishes, as netfront does), the backend maps.

Backend::

    start            -> InitWait                     (features published)
    fe Initialising  -> InitWait  (from Closed: reconnect, if the device is online)
    fe Connected     -> Setup (map the frontend's vchan); setup_done -> Connected
    fe Closing       -> Disconnect, Closing
    fe Closed        -> Disconnect, Closed; + ReleaseDevice if online=0 (detach)
                        (in InitWait with nothing up and online: keep waiting)
    fe gone/Unknown  -> Disconnect, Closed, ReleaseDevice

Frontend::

    start            -> Initialising; be InitWait -> Setup (grant + publish)
    setup_done       -> Connected
    be InitWait while Closed (backend restarted; our channel saw link_lost)
                     -> Initialising, Setup   (reconnect)
    be Closing/Closed-> Disconnect, Closed   (ignored while Initialising, not set up:
                        it is left over from before the backend re-probes)
    be InitWait while Connected -> ignored, as netfront (a real backend restart
                        shows up as link_lost first)
    device removed   -> Disconnect, Closed, ReleaseDevice

A peer state that is out of range, unused by the peer's role, or impossible in
the current local state is rejected: the device fails into Closed and a
:class:`Fail` action carries the reason and a :class:`FailKind`, for the caller
to log and count. Time is an input too, as in aioquic: a failure whose kind
retries arms a timer (:class:`Backoff`: ``[channel] reconnect_delay`` doubling
up to ``reconnect_delay_max``, back to the start once Connected); the caller
asks :meth:`XenbusMachine.get_timer` for the deadline and calls
:meth:`XenbusMachine.handle_timer` once it passed, which restarts a Closed
device. With that, any interleaving of watch events and setup completions
converges to Connected on both sides (property-tested in
tests/daemon/test_xenbus.py).

The peer goes through the same backoff (a hostile peer must not buy a setup per
xenstore write): while the timer is armed, peer events move no Closed device and
start no setup, they are only remembered; the timer then restarts or resumes the
handshake. Every failure with the time known arms it (peer nonsense too: its next
chance comes after the delay), and so does the peer tearing down a channel that
was up for less than the backoff's cap (a peer flapping its state with good
pages): at most one setup per delay, however fast the peer writes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ncd.parse import BadEntry, uint


class XenbusState(enum.IntEnum):
    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    XenbusState.UNKNOWN: "Unknown",
    XenbusState.INITIALISING: "Initialising",
    XenbusState.INIT_WAIT: "InitWait",
    XenbusState.INITIALISED: "Initialised",
    XenbusState.CONNECTED: "Connected",
    XenbusState.CLOSING: "Closing",
    XenbusState.CLOSED: "Closed",
    XenbusState.RECONFIGURING: "Reconfiguring",
    XenbusState.RECONFIGURED: "Reconfigured",
}


class Role(enum.Enum):
    BACKEND = "backend"
    FRONTEND = "frontend"


class BadPeerState(ValueError):
    """A peer's ``state`` value that is not a xenbus state ncd accepts."""


def parse_state(raw: bytes | str | None) -> XenbusState:
    """Parse a peer's ``state`` value (untrusted). ``None`` (key absent) is Unknown.

    Accepts exactly the decimal digits of a state 0..6 as xenstore carries them;
    anything else (7/8 Reconfiguring, signs, spaces, NULs, huge numbers) raises
    :class:`BadPeerState` naming the value.
    """
    if raw is None:
        return XenbusState.UNKNOWN
    try:
        value = uint("state", raw, 0, 99, max_digits=2, what="a xenbus state number")
    except BadEntry as exc:
        raise BadPeerState(str(exc)) from None
    if value > XenbusState.CLOSED:
        if value in (XenbusState.RECONFIGURING, XenbusState.RECONFIGURED):
            raise BadPeerState(f"state: {XenbusState(value).label} ({value}) is not supported")
        raise BadPeerState(f"state: {value} is out of range 0..6")
    return XenbusState(value)


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class SetState:
    """Write our own ``state`` key."""

    state: XenbusState


@dataclass(frozen=True)
class Setup:
    """Bring the channel up: frontend grants + publishes its vchan; backend maps it.

    Report the outcome with :meth:`XenbusMachine.setup_done` or ``setup_failed``.
    """


@dataclass(frozen=True)
class Disconnect:
    """Tear the channel down (stop the pump, close the vchan); keep the TAP."""


@dataclass(frozen=True)
class ReleaseDevice:
    """The device is finished: remove the TAP, forget the device."""


class FailKind(enum.Enum):
    """Why a device failed: ``label`` is its metrics label, ``retry`` whether the
    machine always arms its retry timer (the failure must say when it happened). A
    peer that wrote nonsense arms it when the time is known: its next state change
    is followed once the delay passed, not at once."""

    BAD_STATE = ("bad_state", False)  # the peer's state key is not a state
    ILL_TIMED = ("ill_timed", False)  # a peer state impossible in ours
    SETUP_FAILED = ("setup_failed", True)  # mapping/granting, or the device's own setup
    LINK_LOST = ("link_lost", True)  # the channel died under us

    def __init__(self, label: str, retry: bool) -> None:
        self.label = label
        self.retry = retry


FAIL_KINDS = tuple(kind.label for kind in FailKind)  # the bounded metrics labels


@dataclass(frozen=True)
class Fail:
    """The device failed: log ``reason``, count ``kind``. State is already Closed
    (or was never more than Initialising)."""

    reason: str
    kind: FailKind = FailKind.ILL_TIMED


Action = SetState | Setup | Disconnect | ReleaseDevice | Fail


# ---------------------------------------------------------------- machine


@dataclass
class Backoff:
    """Delays between retries: ``first``, doubling up to ``cap``; :meth:`reset` once
    the device connected."""

    first: float = 1.0
    cap: float = 30.0
    upcoming: float = field(init=False)

    def __post_init__(self) -> None:
        self.upcoming = self.first

    def take(self) -> float:
        delay = self.upcoming
        self.upcoming = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.upcoming = self.first


class XenbusMachine:
    """One device's handshake, for one role."""

    def __init__(
        self, role: Role, *, online: bool = True, backoff: Backoff | None = None
    ) -> None:
        self.role = role
        self.state = XenbusState.UNKNOWN  # our state as last written (UNKNOWN: not started)
        self.peer_state = XenbusState.UNKNOWN  # last peer state accepted
        self.online = online  # backend: the toolstack's ``online`` key
        self.setting_up = False  # a Setup action is outstanding
        self.channel_up = False  # Setup succeeded and no Disconnect since
        self.released = False
        self.failures: list[str] = []
        self.backoff = backoff if backoff is not None else Backoff()
        self._retry_at: float | None = None  # deadline of the retry timer
        self._connected_at: float | None = None  # when setup_done(now=) brought it up

    # -- helpers ---------------------------------------------------------

    def _set(self, state: XenbusState) -> list[Action]:
        if self.state == state:
            return []
        self.state = state
        if state == XenbusState.CONNECTED:
            self.backoff.reset()
        return [SetState(state)]

    def _disconnect(self) -> list[Action]:
        had = self.channel_up or self.setting_up
        self.channel_up = False
        self.setting_up = False
        return [Disconnect()] if had else []

    def _setup(self) -> list[Action]:
        if self.setting_up or self.channel_up or self.held:
            return []  # held: the timer resumes it (handle_timer)
        self.setting_up = True
        return [Setup()]

    def _release(self) -> list[Action]:
        if self.released:
            return []
        self.released = True
        self._retry_at = None
        return [ReleaseDevice()]

    @property
    def held(self) -> bool:
        """The retry timer is armed: peer events start no setup and move no Closed
        device until it fired."""
        return self._retry_at is not None

    def _hold(self, now: float) -> None:
        if self._retry_at is None and not self.released:
            self._retry_at = now + self.backoff.take()

    def _arm_retry(self, kind: FailKind, now: float | None) -> None:
        """A failure arms the timer, unless it is armed already (a retrying kind
        must say when it happened; another one arms it when it does)."""
        if now is None:
            if kind.retry and self._retry_at is None and not self.released:
                raise TypeError(f"xenbus: a {kind.label} failure needs the time (now=)")
            return
        self._hold(now)

    def _peer_teardown(self, now: float | None) -> list[Action]:
        """The peer takes a channel down: one up for less than the backoff's cap is a
        flap, and its re-setup waits for the next delay."""
        up_at, self._connected_at = self._connected_at, None
        if self.channel_up and up_at is not None and now is not None:
            if now - up_at < self.backoff.cap:
                self._hold(now)
        return self._disconnect()

    def _fail(self, reason: str, kind: FailKind, now: float | None = None) -> list[Action]:
        self.failures.append(reason)
        self._connected_at = None
        acts: list[Action] = [*self._disconnect(), *self._set(XenbusState.CLOSED)]
        acts.append(Fail(reason, kind))
        self._arm_retry(kind, now)
        return acts

    def _check_live(self) -> None:
        if self.state == XenbusState.UNKNOWN:
            raise RuntimeError("xenbus: event before start()")

    def _ill_timed(self, peer: XenbusState, now: float | None) -> list[Action]:
        other = "frontend" if self.role is Role.BACKEND else "backend"
        return self._fail(
            f"{other} state {peer.label} ({int(peer)}) while {self.state.label}",
            FailKind.ILL_TIMED,
            now,
        )

    # -- events ----------------------------------------------------------

    def start(self) -> list[Action]:
        """The device exists and its entries were read: begin the handshake."""
        if self.state != XenbusState.UNKNOWN:
            raise RuntimeError("xenbus: start() twice")
        self.released = False
        if self.role is Role.BACKEND:
            # Initialising is transient: the probe (features) is part of going InitWait.
            acts = self._set(XenbusState.INIT_WAIT)
            if self.peer_state == XenbusState.CONNECTED:
                acts += self._setup()  # as netback: a published frontend is mapped
            return acts
        acts = self._set(XenbusState.INITIALISING)
        if self.peer_state == XenbusState.INIT_WAIT:
            acts += self._setup()
        return acts

    def peer_changed(self, raw: bytes | str | None, now: float | None = None) -> list[Action]:
        """The peer's ``state`` key changed (``raw`` as read; None if absent) at ``now``.

        Before :meth:`start`, only remembers the peer state (so a daemon can
        read both sides and then start). Without ``now`` nothing the peer does
        arms the timer (a daemon always passes it; it is for tests of the states).
        """
        if self.released:
            return []
        try:
            peer = parse_state(raw)
        except BadPeerState as exc:
            if self.state == XenbusState.UNKNOWN:
                self.state = XenbusState.CLOSED
                self.failures.append(str(exc))
                return [SetState(XenbusState.CLOSED), Fail(str(exc), FailKind.BAD_STATE)]
            return self._fail(str(exc), FailKind.BAD_STATE, now)
        if self.state == XenbusState.UNKNOWN:
            self.peer_state = peer
            return []
        self.peer_state = peer
        if self.role is Role.BACKEND:
            return self._backend_peer(peer, now)
        return self._frontend_peer(peer, now)

    def setup_done(self, now: float | None = None) -> list[Action]:
        """The Setup action succeeded (at ``now``: the peer tearing this channel down
        before the backoff's cap passed is a flap, see :meth:`_peer_teardown`)."""
        self._check_live()
        if not self.setting_up:
            return []  # a Disconnect overtook it; the caller tears down what it built
        self.setting_up = False
        self.channel_up = True
        self._connected_at = now
        return self._set(XenbusState.CONNECTED)

    def setup_failed(self, reason: str, now: float) -> list[Action]:
        """The Setup action failed (e.g. the peer published bad ring refs)."""
        self._check_live()
        if not self.setting_up:
            return []
        return self._fail(f"setup failed: {reason}", FailKind.SETUP_FAILED, now)

    def link_lost(self, reason: str, now: float) -> list[Action]:
        """The channel died under us (peer crashed, bad ring data): close the device."""
        self._check_live()
        if not (self.channel_up or self.setting_up):
            return []
        return self._fail(f"link lost: {reason}", FailKind.LINK_LOST, now)

    def local_failure(self, reason: str, kind: FailKind, now: float) -> list[Action]:
        """Something outside the handshake failed (the device's entries, its TAP, an
        internal error): report it and, if ``kind`` retries, arm the timer. The
        state is left alone (the caller closed what it opened)."""
        if self.released:
            return []
        self.failures.append(reason)
        self._arm_retry(kind, now)
        return [Fail(reason, kind)]

    # -- time ------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next (same clock as ``now``), or None."""
        return self._retry_at

    def handle_timer(self, now: float) -> list[Action]:
        """The clock reads ``now``: once the retry deadline passed, a Closed device
        starts the handshake again (:meth:`restart`), one waiting for a setup the
        peer asked for while held starts it. A device not started yet has nothing
        to restart: its owner retries loading it whenever it wakes."""
        if self._retry_at is None or now < self._retry_at:
            return []
        self._retry_at = None
        if self.state == XenbusState.UNKNOWN:
            return []
        if self.state == XenbusState.CLOSED:
            return self.restart()
        S = XenbusState
        if self.role is Role.BACKEND:
            ready = self.state == S.INIT_WAIT and self.peer_state == S.CONNECTED
        else:
            ready = self.state == S.INITIALISING and self.peer_state == S.INIT_WAIT
        return self._setup() if ready else []

    def restart(self) -> list[Action]:
        """From Closed, with the device still there, try the handshake again now (the
        timer's action; called directly, the retry happens now and the timer is off)."""
        self._check_live()
        if self.state != XenbusState.CLOSED or self.released:
            return []
        self._retry_at = None
        if self.role is Role.BACKEND:
            if not self.online:
                return []
            acts = self._set(XenbusState.INIT_WAIT)
            if self.peer_state == XenbusState.CONNECTED:
                acts += self._setup()  # as start(): a published frontend is mapped
            return acts
        acts = self._set(XenbusState.INITIALISING)
        if self.peer_state == XenbusState.INIT_WAIT:
            acts += self._setup()
        return acts

    def set_online(self, online: bool) -> list[Action]:
        """Backend: the toolstack's ``online`` key changed. Offline + Closed ends it."""
        self.online = online
        if (
            not online
            and self.state == XenbusState.CLOSED
            and self.peer_state in (XenbusState.CLOSED, XenbusState.UNKNOWN)
        ):
            return self._release()
        return []

    def toolstack_close(self) -> list[Action]:
        """Backend: the toolstack wrote our state Closing (``ncctl detach``)."""
        self._check_live()
        self.online = False
        if self.state == XenbusState.CLOSED:
            return self._release()
        acts = [*self._disconnect()]
        self.state = XenbusState.CLOSING  # already written by the toolstack
        if self.peer_state in (XenbusState.CLOSED, XenbusState.UNKNOWN):
            acts += self._set(XenbusState.CLOSED)
            acts += self._release()
        return acts

    def own_state_changed(self, raw: bytes | str | None) -> list[Action]:
        """Our own ``state`` key changed (a watch fired on it).

        The daemon's own writes read back equal to :attr:`state` and are ignored.
        On the backend, Closing written by someone else is the toolstack's detach
        (libxl writes ``online`` 0 and ``state`` 5): :meth:`toolstack_close`.
        A vanished key means the device directory is gone: :meth:`device_removed`.
        """
        if self.released or self.state == XenbusState.UNKNOWN:
            return []
        if raw is None:
            return self.device_removed()
        try:
            value = parse_state(raw)
        except BadPeerState:
            return []  # only dom0 (the toolstack) or we can write it; nothing to follow
        if value == self.state:
            return []
        if self.role is Role.BACKEND and value == XenbusState.CLOSING:
            return self.toolstack_close()
        return []

    def close(self) -> list[Action]:
        """Local shutdown (SIGTERM): Closing, tear down, Closed, release the TAP."""
        if self.state == XenbusState.UNKNOWN:
            return self._release()
        acts: list[Action] = []
        if self.state != XenbusState.CLOSED:
            acts += self._set(XenbusState.CLOSING)
        acts += self._disconnect()
        acts += self._set(XenbusState.CLOSED)
        acts += self._release()
        return acts

    def device_removed(self) -> list[Action]:
        """Our device directory vanished (detach finished, or --force)."""
        if self.state == XenbusState.UNKNOWN:
            return self._release()
        # no SetState: writing into a removed directory would re-create it
        self.state = XenbusState.CLOSED
        return [*self._disconnect(), *self._release()]

    # -- per role --------------------------------------------------------

    def _backend_peer(self, fe: XenbusState, now: float | None) -> list[Action]:
        S = XenbusState
        me = self.state
        if fe == S.UNKNOWN:
            return [*self._disconnect(), *self._set(S.CLOSED), *self._release()]
        if fe == S.INITIALISING:
            if me == S.INIT_WAIT:
                return []
            if me == S.CONNECTED:  # frontend restarted without closing
                return [*self._peer_teardown(now), *self._set(S.INIT_WAIT)]
            if me == S.CLOSED:
                return self._set(S.INIT_WAIT) if self.online and not self.held else []
            return []  # Closing: the toolstack is removing the device
        if fe == S.INITIALISED:
            if me == S.INIT_WAIT:
                return []  # as netback: wait for Connected
            return self._ill_timed(fe, now)
        if fe == S.CONNECTED:
            if me == S.INIT_WAIT:
                return self._setup()
            if me == S.CONNECTED:
                return []
            if me in (S.CLOSING, S.CLOSED):
                return []  # the frontend has not seen our close yet
            return self._ill_timed(fe, now)
        if fe == S.CLOSING:
            if me == S.CLOSED:
                return []
            return [*self._peer_teardown(now), *self._set(S.CLOSING)]
        if fe == S.CLOSED:
            if me == S.INIT_WAIT and self.online and not self.setting_up:
                return []  # nothing up yet; a closed frontend re-initialises when it sees us
            acts = [*self._peer_teardown(now), *self._set(S.CLOSED)]
            if not self.online:
                acts += self._release()
            return acts
        # InitWait is a backend-only state: a frontend never writes it.
        return self._ill_timed(fe, now)

    def _frontend_peer(self, be: XenbusState, now: float | None) -> list[Action]:
        S = XenbusState
        me = self.state
        if be == S.UNKNOWN:  # backend entries gone: wait for our device dir to go too
            return [*self._peer_teardown(now), *self._set(S.CLOSED)]
        if be == S.INITIALISING:
            return []  # transient on the backend side
        if be == S.INIT_WAIT:
            if me == S.INITIALISING:
                return self._setup()
            if me == S.CLOSED:  # backend (re)started after we closed: reconnect
                return [] if self.held else [*self._set(S.INITIALISING), *self._setup()]
            # Connected: as netfront, ignore. A backend that really restarted lost
            # its mapping, which our channel reports as link_lost (-> Closed, then
            # the reconnect above); reconnecting here too would let the two sides
            # chase each other's resets. Closing: we are shutting down.
            return []
        if be == S.INITIALISED:
            return self._ill_timed(be, now)  # a backend never writes Initialised
        if be == S.CONNECTED:
            if me == S.CONNECTED:
                return []
            if me == S.INITIALISING:
                # setting up: the backend mapped faster than setup_done reached us;
                # not yet: a stale Connected from before our (re)start (e.g. the
                # watch's first firing); the backend restarts when it sees us Initialising
                return []
            if me in (S.CLOSING, S.CLOSED):
                return []  # the backend has not seen our close yet
            return self._ill_timed(be, now)
        # Closing or Closed: as netfront, go straight to Closed.
        if me == S.CLOSED:
            return []
        if me == S.INITIALISING and not self.setting_up:
            return []  # left over from before our start: it re-probes once it sees us
        return [*self._peer_teardown(now), *self._set(S.CLOSED)]
