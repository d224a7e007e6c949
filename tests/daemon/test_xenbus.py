"""The xenbus state machine, alone and as two peers wired through a fake bus."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncd.xenbus import (
    FAIL_KINDS,
    Backoff,
    BadPeerState,
    Disconnect,
    Fail,
    FailKind,
    ReleaseDevice,
    Role,
    SetState,
    Setup,
    XenbusMachine,
    XenbusState,
    parse_state,
)

S = XenbusState
T0 = 100.0  # the clock when a failure happens (time is an input of the machine)


class Link:
    """Two machines; SetState actions become the other side's peer_changed event.

    Setup actions are completed (or failed) when `pump` runs, as a daemon
    would after mapping/publishing the vchan. Every action is recorded.
    """

    def __init__(self) -> None:
        self.be = XenbusMachine(Role.BACKEND)
        self.fe = XenbusMachine(Role.FRONTEND)
        self.log: dict[str, list] = {"be": [], "fe": []}
        self.queue: deque = deque()
        self.setup_ok = True
        self.channel = {"be": False, "fe": False}

    def feed(self, side: str, actions: list) -> None:
        for a in actions:
            self.log[side].append(a)
            other = "fe" if side == "be" else "be"
            if isinstance(a, SetState):
                self.queue.append((other, "peer", str(int(a.state))))
            elif isinstance(a, Setup):
                self.queue.append((side, "setup", None))
            elif isinstance(a, Disconnect):
                self.channel[side] = False

    def machine(self, side: str) -> XenbusMachine:
        return self.be if side == "be" else self.fe

    def pump(self, limit: int = 100) -> None:
        n = 0
        while self.queue:
            n += 1
            assert n < limit, "handshake does not converge"
            side, kind, arg = self.queue.popleft()
            m = self.machine(side)
            if kind == "peer":
                self.feed(side, m.peer_changed(arg))
            elif kind == "setup":
                if self.setup_ok:
                    acts = m.setup_done()
                    if m.channel_up:
                        self.channel[side] = True
                    self.feed(side, acts)
                else:
                    self.feed(side, m.setup_failed("bad ring-ref", now=T0))

    def start(self) -> None:
        self.feed("be", self.be.start())
        self.feed("fe", self.fe.start())
        self.pump()


def states(link: Link) -> tuple[XenbusState, XenbusState]:
    return link.be.state, link.fe.state


# ------------------------------------------------------------ parse_state


@pytest.mark.parametrize(
    "raw,want",
    [
        (b"1", S.INITIALISING),
        ("4", S.CONNECTED),
        (b"6", S.CLOSED),
        (b"0", S.UNKNOWN),
        (None, S.UNKNOWN),
        (b"04", S.CONNECTED),
    ],
)
def test_parse_state_accepts(raw, want):
    assert parse_state(raw) is want


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b"7", "Reconfiguring"),
        (b"8", "Reconfigured"),
        (b"9", "out of range"),
        (b"-1", "not a xenbus"),
        (b"", "not a xenbus"),
        (b"4\x00", "not a xenbus"),
        (b" 4", "not a xenbus"),
        (b"\xff", "not ASCII"),
        (b"123", "not a xenbus"),
        ("\u0664", "not a xenbus"),
    ],
)
def test_parse_state_rejects(raw, needle):
    with pytest.raises(BadPeerState, match=needle):
        parse_state(raw)


# ------------------------------------------------------------ full handshakes


def test_handshake_reaches_connected_both_sides():
    link = Link()
    link.start()
    assert states(link) == (S.CONNECTED, S.CONNECTED)
    assert link.channel == {"be": True, "fe": True}
    # order of our own writes, as netback/netfront do them
    assert [a.state for a in link.log["be"] if isinstance(a, SetState)] == [
        S.INIT_WAIT,
        S.CONNECTED,
    ]
    assert [a.state for a in link.log["fe"] if isinstance(a, SetState)] == [
        S.INITIALISING,
        S.CONNECTED,
    ]
    # the frontend (vchan server) set up before the backend mapped
    assert sum(isinstance(a, Setup) for a in link.log["fe"]) == 1
    assert sum(isinstance(a, Setup) for a in link.log["be"]) == 1


def test_frontend_started_first_also_connects():
    link = Link()
    link.feed("fe", link.fe.start())
    link.pump()
    assert link.fe.state == S.INITIALISING and not link.fe.setting_up
    link.feed("be", link.be.peer_changed(b"1"))  # backend daemon reads fe state, then starts
    link.feed("be", link.be.start())
    link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED)


def test_frontend_sees_initwait_before_start():
    fe = XenbusMachine(Role.FRONTEND)
    assert fe.peer_changed(b"2") == []
    assert fe.start() == [SetState(S.INITIALISING), Setup()]


def test_detach_by_toolstack_releases_both_sides():
    link = Link()
    link.start()
    # ncctl detach: online=0, backend state=5 written by the toolstack
    link.feed("be", link.be.toolstack_close())
    link.queue.append(("fe", "peer", "5"))
    link.pump()
    assert states(link) == (S.CLOSED, S.CLOSED)
    assert ReleaseDevice() in link.log["be"]
    assert link.channel == {"be": False, "fe": False}
    # then ncctl removes the frontend dir
    acts = link.fe.device_removed()
    assert acts == [ReleaseDevice()]


def test_frontend_restart_reconnects_with_device_online():
    link = Link()
    link.start()
    link.feed("fe", link.fe.close())  # SIGTERM in the guest
    link.pump()
    assert states(link) == (S.CLOSED, S.CLOSED)
    assert ReleaseDevice() in link.log["fe"]
    assert ReleaseDevice() not in link.log["be"]  # online=1: the device stays
    # the guest daemon starts again: a new machine, same xenstore
    link.fe = XenbusMachine(Role.FRONTEND)
    link.fe.peer_changed(str(int(link.be.state)))
    link.feed("fe", link.fe.start())
    link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED)
    assert link.channel == {"be": True, "fe": True}


def test_backend_restart_makes_frontend_reconnect():
    link = Link()
    link.start()
    # backend daemon dies (no clean close): its mapping goes, the frontend's
    # channel reports the peer gone; then the backend starts again: a fresh machine
    link.feed("fe", link.fe.link_lost("client unmapped", now=T0))
    link.queue.clear()  # nobody reads the frontend's Closed: the backend is dead
    link.be = XenbusMachine(Role.BACKEND)
    link.be.peer_changed(str(int(link.fe.state)))
    link.feed("be", link.be.start())
    link.pump()
    # the backend's InitWait goes through the frontend's backoff: held until its timer
    assert states(link) == (S.INIT_WAIT, S.CLOSED) and link.fe.held
    link.feed("fe", link.fe.handle_timer(T0 + 1.0))
    link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED)
    fe_setups = [a for a in link.log["fe"] if isinstance(a, Setup)]
    assert len(fe_setups) == 2  # the frontend published a fresh channel
    assert Disconnect() in link.log["fe"]


def test_frontend_ignores_initwait_while_connected():
    # as netfront: only a lost link (-> Closed) makes the frontend reconnect
    link = Link()
    link.start()
    assert link.fe.peer_changed(b"2") == []
    assert link.fe.state == S.CONNECTED and link.fe.channel_up


def test_link_lost_then_restart_recovers():
    link = Link()
    link.start()
    link.feed("be", link.be.link_lost("peer unmapped", now=T0))
    link.pump()
    assert states(link) == (S.CLOSED, S.CLOSED)
    assert Fail("link lost: peer unmapped", FailKind.LINK_LOST) in link.log["be"]
    # the frontend's Initialising waits for the backend's backoff, then it reconnects
    link.feed("fe", link.fe.restart())
    link.pump()
    assert states(link) == (S.CLOSED, S.INITIALISING) and link.be.held
    link.feed("be", link.be.handle_timer(T0 + 1.0))
    link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED)


def test_backend_restart_from_closed_reconnects_frontend():
    link = Link()
    link.start()
    link.feed("fe", link.fe.link_lost("bad index", now=T0))
    link.pump()
    assert states(link) == (S.CLOSED, S.CLOSED)
    link.feed("be", link.be.restart())
    link.pump()
    assert states(link) == (S.INIT_WAIT, S.CLOSED)  # the frontend waits for its backoff
    link.feed("fe", link.fe.handle_timer(T0 + 1.0))
    link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED)


def test_setup_failure_fails_into_closed():
    link = Link()
    link.setup_ok = False
    link.start()
    assert link.fe.state == S.CLOSED
    assert link.be.state == S.INIT_WAIT  # nothing was up: it waits for the frontend
    fails = [a for a in link.log["fe"] if isinstance(a, Fail)]
    assert fails == [Fail("setup failed: bad ring-ref", FailKind.SETUP_FAILED)]
    link.setup_ok = True
    link.feed("fe", link.fe.restart())  # the daemon's retry after its backoff
    link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED)


def test_backend_setup_failure_closes():
    be = XenbusMachine(Role.BACKEND)
    be.start()
    assert be.peer_changed(b"4") == [Setup()]
    assert be.setup_failed("ring-ref 99999 not mappable", now=T0) == [
        Disconnect(),
        SetState(S.CLOSED),
        Fail("setup failed: ring-ref 99999 not mappable", FailKind.SETUP_FAILED),
    ]
    assert be.setup_failed("again", now=T0) == []  # nothing outstanding any more


def test_frontend_vanishing_releases_backend():
    link = Link()
    link.start()
    acts = link.be.peer_changed(None)  # frontend dir removed (domain destroyed)
    assert acts == [Disconnect(), SetState(S.CLOSED), ReleaseDevice()]


# ------------------------------------------------------------ rejections


@pytest.mark.parametrize("raw", [b"7", b"8", b"99", b"x", b"-3", b""])
def test_bad_peer_value_fails_connected_backend(raw):
    link = Link()
    link.start()
    acts = link.be.peer_changed(raw)
    assert acts[0] == Disconnect()
    assert SetState(S.CLOSED) in acts
    assert isinstance(acts[-1], Fail) and "state" in acts[-1].reason
    assert link.be.state == S.CLOSED and not link.be.channel_up


def test_frontend_writing_initwait_is_rejected():
    be = XenbusMachine(Role.BACKEND)
    be.start()
    acts = be.peer_changed(b"2")
    assert acts[-1] == Fail("frontend state InitWait (2) while InitWait")
    assert be.state == S.CLOSED


def test_stale_backend_connected_is_ignored_until_backend_restarts():
    # frontend daemon restarted while the backend still says Connected: not a failure
    link = Link()
    link.start()
    link.fe = XenbusMachine(Role.FRONTEND)
    link.fe.peer_changed(b"4")
    link.feed("fe", link.fe.start())
    assert link.fe.peer_changed(b"4") == []  # the watch fires once on registration
    link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED)
    assert not link.fe.failures and not link.be.failures


def test_backend_start_maps_an_already_published_frontend():
    be = XenbusMachine(Role.BACKEND)
    be.peer_changed(b"4")
    assert be.start() == [SetState(S.INIT_WAIT), Setup()]
    assert be.setup_done() == [SetState(S.CONNECTED)]


def test_backend_initialised_is_rejected_by_frontend():
    fe = XenbusMachine(Role.FRONTEND)
    fe.start()
    assert isinstance(fe.peer_changed(b"3")[-1], Fail)


def test_frontend_initialised_while_connected_is_rejected():
    link = Link()
    link.start()
    acts = link.be.peer_changed(b"3")
    assert isinstance(acts[-1], Fail) and link.be.state == S.CLOSED


def test_bad_value_before_start_closes():
    be = XenbusMachine(Role.BACKEND)
    acts = be.peer_changed(b"12")
    assert acts == [SetState(S.CLOSED), Fail("state: 12 is out of range 0..6", FailKind.BAD_STATE)]


def test_events_before_start_are_misuse():
    m = XenbusMachine(Role.FRONTEND)
    with pytest.raises(RuntimeError):
        m.setup_done()
    m.start()
    with pytest.raises(RuntimeError):
        m.start()


def test_setup_done_after_disconnect_is_ignored():
    link = Link()
    link.feed("be", link.be.start())
    link.feed("fe", link.fe.start())
    # fe got Setup pending once it sees InitWait
    link.feed("fe", link.fe.peer_changed(b"2"))
    assert link.fe.setting_up
    link.fe.peer_changed(b"5")  # backend closes before setup finished
    assert link.fe.setup_done() == []
    assert link.fe.state == S.CLOSED


# ------------------------------------------------------------ properties


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["be", "fe"]),
        st.sampled_from(
            ["peer", "done", "failed", "lost", "restart", "close", "toolstack", "removed"]
        ),
        st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", None]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_random_event_sequences_keep_invariants(events):
    ms = {"be": XenbusMachine(Role.BACKEND), "fe": XenbusMachine(Role.FRONTEND)}
    for m in ms.values():
        m.start()
    for side, ev, raw in events:
        m = ms[side]
        before_up = m.channel_up or m.setting_up
        if ev == "peer":
            acts = m.peer_changed(raw)
        elif ev == "done":
            acts = m.setup_done()
        elif ev == "failed":
            acts = m.setup_failed("x", now=T0)
        elif ev == "lost":
            acts = m.link_lost("x", now=T0)
        elif ev == "restart":
            acts = m.restart()
        elif ev == "close":
            acts = m.close()
        elif ev == "toolstack":
            acts = m.toolstack_close() if side == "be" else m.close()
        else:
            acts = m.device_removed()
        # our state is always a state we may write
        assert m.state in (S.INITIALISING, S.INIT_WAIT, S.CONNECTED, S.CLOSING, S.CLOSED)
        # a failure always leaves the device Closed with nothing running
        if any(isinstance(a, Fail) for a in acts):
            assert all(isinstance(a.kind, FailKind) for a in acts if isinstance(a, Fail))
            assert m.state == S.CLOSED and not m.channel_up and not m.setting_up
        # Connected only with the channel up
        if m.state == S.CONNECTED:
            assert m.channel_up
        # Disconnect only if something was up; Setup never while something is up
        if Disconnect() in acts:
            assert before_up
        if Setup() in acts:
            assert not (m.channel_up and m.setting_up)
        # at most one release, and nothing after it
        assert sum(isinstance(a, ReleaseDevice) for a in acts) <= 1
        if m.released:
            assert m.peer_changed(b"4") == []


def test_own_state_watch_detects_toolstack_detach():
    link = Link()
    link.start()
    # our own write reads back: nothing to do
    assert link.be.own_state_changed(b"4") == []
    # the toolstack wrote Closing: the backend tears down and waits for the frontend
    acts = link.be.own_state_changed(b"5")
    assert acts == [Disconnect()]
    assert link.be.state == S.CLOSING and not link.be.online
    link.queue.append(("fe", "peer", "5"))
    link.pump()
    assert states(link) == (S.CLOSED, S.CLOSED)
    assert link.log["be"][-1] == ReleaseDevice()


def test_own_state_key_removed_releases():
    fe = XenbusMachine(Role.FRONTEND)
    fe.start()
    assert fe.own_state_changed(None) == [ReleaseDevice()]  # no write into a removed dir
    assert fe.own_state_changed(b"1") == []


class RacyLink(Link):
    """Like Link, but as xenstore really behaves: a watch event carries no value, the
    reader reads the *current* one (so events coalesce), and events and setup
    completions are delivered in any order chosen by `rnd`."""

    def __init__(self, rnd) -> None:
        super().__init__()
        self.rnd = rnd

    def feed(self, side: str, actions: list) -> None:
        for a in actions:
            self.log[side].append(a)
            other = "fe" if side == "be" else "be"
            if isinstance(a, SetState):
                self.queue.append((other, "watch", None))
            elif isinstance(a, Setup):
                self.queue.append((side, "setup", None))
            elif isinstance(a, Disconnect):
                self.channel[side] = False

    def pump(self, limit: int = 300) -> None:
        n = 0
        while self.queue:
            n += 1
            assert n < limit, "handshake does not converge"
            i = self.rnd.randrange(len(self.queue))
            side, kind, _ = self.queue[i]
            del self.queue[i]
            m = self.machine(side)
            if kind == "watch":
                other = self.fe if side == "be" else self.be
                self.feed(side, m.peer_changed(str(int(other.state))))
            else:
                acts = m.setup_done()
                if m.channel_up:
                    self.channel[side] = True
                self.feed(side, acts)


@settings(max_examples=400, deadline=None)
@given(
    st.randoms(use_true_random=False),
    st.sampled_from(["clean", "fe_restart", "be_crash", "be_lost", "fe_lost"]),
)
def test_handshake_converges_under_any_delivery_order(rnd, scenario):
    """Watches and setups race in any order: both sides end Connected, no livelock."""
    link = RacyLink(rnd)
    link.feed("be", link.be.start())
    link.feed("fe", link.fe.start())
    link.queue.extend([("be", "watch", None), ("fe", "watch", None)])  # first firing
    link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED)
    if scenario == "fe_restart":
        link.feed("fe", link.fe.close())
        link.pump()
        link.fe = XenbusMachine(Role.FRONTEND)
        link.fe.peer_changed(str(int(link.be.state)))
        link.feed("fe", link.fe.start())
        link.queue.append(("fe", "watch", None))
    elif scenario == "be_crash":
        link.feed("fe", link.fe.link_lost("client gone", now=T0))
        link.queue.clear()
        link.be = XenbusMachine(Role.BACKEND)
        link.be.peer_changed(str(int(link.fe.state)))
        link.feed("be", link.be.start())
        link.queue.append(("be", "watch", None))
    elif scenario in ("be_lost", "fe_lost"):
        side = scenario[:2]
        link.feed(side, link.machine(side).link_lost("x", now=T0))
        link.pump()
        link.feed(side, link.machine(side).restart())
    link.pump()
    for side in ("be", "fe"):  # a side held by its backoff resumes once its timer fired
        link.feed(side, link.machine(side).handle_timer(T0 + 60))
        link.pump()
    assert states(link) == (S.CONNECTED, S.CONNECTED), (scenario, link.log)
    assert link.channel == {"be": True, "fe": True}
    expected = {"be_crash": ["link lost: client gone"], "fe_lost": ["link lost: x"]}
    assert link.fe.failures == expected.get(scenario, [])
    assert link.be.failures == (["link lost: x"] if scenario == "be_lost" else [])


# ------------------------------------------------------------ time: retry timer and backoff


def connected_frontend(backoff: Backoff | None = None) -> XenbusMachine:
    fe = XenbusMachine(Role.FRONTEND, backoff=backoff)
    fe.start()
    fe.peer_changed(b"2")
    fe.setup_done()
    assert fe.state == S.CONNECTED
    return fe


def test_fail_kinds_say_whether_they_retry():
    assert {k for k in FailKind if k.retry} == {FailKind.SETUP_FAILED, FailKind.LINK_LOST}
    assert FAIL_KINDS == ("bad_state", "ill_timed", "setup_failed", "link_lost")


def test_no_timer_until_a_retrying_failure():
    fe = connected_frontend()
    assert fe.get_timer() is None
    assert fe.handle_timer(T0 + 1e6) == []


def test_lost_link_restarts_once_the_backoff_passed():
    fe = connected_frontend(Backoff(first=1.0, cap=30.0))
    fe.link_lost("peer gone", now=T0)
    assert fe.state == S.CLOSED and fe.get_timer() == T0 + 1.0
    assert fe.handle_timer(T0 + 0.999) == []  # not yet: nothing happens, still armed
    assert fe.get_timer() == T0 + 1.0
    # the backend still says InitWait: restarting grants and publishes again
    assert fe.handle_timer(T0 + 1.0) == [SetState(S.INITIALISING), Setup()]
    assert fe.get_timer() is None
    assert fe.handle_timer(T0 + 2.0) == []  # fires once


def test_backoff_doubles_up_to_its_cap_and_resets_once_connected():
    be = XenbusMachine(Role.BACKEND, backoff=Backoff(first=1.0, cap=4.0))
    be.start()
    now, delays = T0, []
    assert be.peer_changed(b"4") == [Setup()]  # the frontend's published channel
    for _ in range(4):
        be.setup_failed("not mappable", now=now)
        deadline = be.get_timer()
        assert deadline is not None
        delays.append(deadline - now)
        now = deadline
        # the published frontend is mapped again
        assert be.handle_timer(now) == [SetState(S.INIT_WAIT), Setup()]
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert be.setup_done() == [SetState(S.CONNECTED)]
    be.link_lost("again", now=now)
    assert be.get_timer() == now + 1.0  # back to the first delay


def test_a_failure_while_armed_keeps_the_first_deadline():
    be = XenbusMachine(Role.BACKEND, backoff=Backoff(first=2.0, cap=8.0))
    be.start()
    be.peer_changed(b"4")
    be.setup_failed("unmappable", now=T0)
    assert be.get_timer() == T0 + 2.0
    assert be.local_failure("internal error: x", FailKind.SETUP_FAILED, now=T0 + 1) == [
        Fail("internal error: x", FailKind.SETUP_FAILED)
    ]
    assert be.get_timer() == T0 + 2.0
    assert be.backoff.upcoming == 4.0  # one delay taken, not two


@pytest.mark.parametrize("raw", [b"x", b"2"])  # bad_state, ill_timed (InitWait from a frontend)
def test_peer_nonsense_is_not_retried(raw):
    be = XenbusMachine(Role.BACKEND)
    be.start()
    acts = be.peer_changed(raw)
    assert isinstance(acts[-1], Fail) and not acts[-1].kind.retry
    assert be.get_timer() is None


def test_local_failure_before_start_arms_the_timer_without_starting():
    fe = XenbusMachine(Role.FRONTEND)
    assert fe.local_failure("cannot set up: ENOENT", FailKind.SETUP_FAILED, now=T0) == [
        Fail("cannot set up: ENOENT", FailKind.SETUP_FAILED)
    ]
    assert fe.state == S.UNKNOWN and fe.get_timer() == T0 + 1.0
    assert fe.handle_timer(T0 + 1.0) == []  # its owner loads the device again, then start()
    assert fe.get_timer() is None and fe.state == S.UNKNOWN
    assert fe.start() == [SetState(S.INITIALISING)]


def test_release_disarms_the_timer():
    be = XenbusMachine(Role.BACKEND)
    be.start()
    be.peer_changed(b"4")
    be.setup_failed("x", now=T0)
    assert be.get_timer() is not None
    assert ReleaseDevice() in be.close()
    assert be.get_timer() is None
    assert be.local_failure("late", FailKind.SETUP_FAILED, now=T0) == []


def test_offline_backend_does_not_restart_on_its_timer():
    be = XenbusMachine(Role.BACKEND)
    be.start()
    be.peer_changed(b"4")
    be.setup_failed("x", now=T0)
    be.online = False  # the toolstack wrote online=0 but the frontend is not Closed yet
    assert be.handle_timer(T0 + 1.0) == []
    assert be.state == S.CLOSED


def test_retrying_failure_needs_the_time():
    fe = connected_frontend()
    with pytest.raises(TypeError):
        fe._fail("x", FailKind.LINK_LOST)  # a retrying kind without now= is a bug


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["lost", "failed", "restart", "timer", "peer"]),
                          st.floats(0, 50)), max_size=30))
def test_timer_is_never_due_before_a_failure_plus_its_delay(steps):
    fe = XenbusMachine(Role.FRONTEND, backoff=Backoff(first=1.0, cap=8.0))
    fe.start()
    now = 0.0
    for ev, dt in steps:
        now += dt
        armed = fe.get_timer()
        if ev == "lost":
            fe.link_lost("x", now=now)
        elif ev == "failed":
            fe.setup_failed("x", now=now)
        elif ev == "restart":
            fe.restart()
        elif ev == "peer":
            fe.peer_changed(b"2")
        else:
            fe.handle_timer(now)
        t = fe.get_timer()
        if armed is not None and ev not in ("timer", "restart"):  # restart: the retry
            assert t == armed  # a later failure never moves an armed deadline
        if t is not None and t != armed:
            assert now + 1.0 <= t <= now + 8.0


# ------------------------------------------------------------ the peer goes through the backoff


def flap(
    m: XenbusMachine, states_: list[bytes], seconds: float, setup_ok: bool, step: float = 0.001
) -> list[float]:
    """Feed the peer's states in turn every ``step`` for ``seconds`` (the timer fired
    when due, setups completed or failed at once, as a daemon would); the times of
    the setups started."""
    now, setups, i = T0, [], 0
    while now < T0 + seconds:
        acts = m.peer_changed(states_[i % len(states_)], now=now)
        at = m.get_timer()
        if at is not None and at <= now:
            acts += m.handle_timer(now)
        i += 1
        for a in acts:
            if isinstance(a, Setup):
                setups.append(now)
                if setup_ok:
                    m.setup_done(now=now)
                else:
                    m.setup_failed("control page refused", now=now)
        now += step
    return setups


def test_frontend_flapping_with_refused_pages_waits_for_the_backoff():
    be = XenbusMachine(Role.BACKEND, backoff=Backoff(first=0.5, cap=2.0))
    be.start()
    setups = flap(be, [b"1", b"4"], 10.0, setup_ok=False)  # 10,000 state writes
    # one at once, then one per delay: 0.5, 1, 2, 2, 2 ...
    assert 4 <= len(setups) <= 1 + 10.0 / 0.5
    gaps = [b - a for a, b in zip(setups, setups[1:], strict=False)]
    assert all(g >= 0.5 for g in gaps), gaps
    assert min(gaps[2:]) >= 2.0  # at the cap
    # the frontend behaves: a valid page connects within the cap
    start = T0 + 10.0
    ok = flap_until_connected(be, start)
    assert ok - start <= 2.0 + 0.01


def flap_until_connected(be: XenbusMachine, now: float) -> float:
    """The frontend writes Initialising then Connected once, with a good page; the
    timer fires when due. When the backend is Connected."""
    acts = [*be.peer_changed(b"1", now=now), *be.peer_changed(b"4", now=now)]
    while True:
        if Setup() in acts:
            be.setup_done(now=now)
        if be.state == S.CONNECTED:
            return now
        at = be.get_timer()
        assert at is not None, be.state
        now = max(now, at)
        acts = be.handle_timer(now)


def test_frontend_flapping_with_good_pages_sets_up_once_per_delay():
    be = XenbusMachine(Role.BACKEND, backoff=Backoff(first=0.5, cap=2.0))
    be.start()
    setups = flap(be, [b"1", b"4"], 10.0, setup_ok=True)
    assert len(setups) <= 1 + 10.0 / 0.5  # was one per two writes: 5,000
    gaps = [b - a for a, b in zip(setups, setups[1:], strict=False)]
    assert all(g >= 0.5 for g in gaps), gaps


def test_a_stable_channel_reconnects_at_once_after_the_peer_restarts():
    be = XenbusMachine(Role.BACKEND, backoff=Backoff(first=1.0, cap=4.0))
    be.start()
    assert be.peer_changed(b"4", now=T0) == [Setup()]
    be.setup_done(now=T0)
    # up for longer than the cap: the frontend's restart is not a flap
    assert be.peer_changed(b"1", now=T0 + 4.0) == [Disconnect(), SetState(S.INIT_WAIT)]
    assert not be.held
    assert be.peer_changed(b"4", now=T0 + 4.1) == [Setup()]


def test_a_short_lived_channel_holds_the_next_setup():
    be = XenbusMachine(Role.BACKEND, backoff=Backoff(first=1.0, cap=4.0))
    be.start()
    be.peer_changed(b"4", now=T0)
    be.setup_done(now=T0)
    assert be.peer_changed(b"1", now=T0 + 0.1) == [Disconnect(), SetState(S.INIT_WAIT)]
    assert be.held and be.get_timer() == T0 + 1.1
    assert be.peer_changed(b"4", now=T0 + 0.2) == []  # remembered, not acted on
    assert be.handle_timer(T0 + 1.1) == [Setup()]


def test_peer_nonsense_with_the_time_holds_the_device():
    be = XenbusMachine(Role.BACKEND, backoff=Backoff(first=1.0, cap=4.0))
    be.start()
    acts = be.peer_changed(b"x", now=T0)
    assert isinstance(acts[-1], Fail) and acts[-1].kind is FailKind.BAD_STATE
    assert be.get_timer() == T0 + 1.0
    assert be.peer_changed(b"1", now=T0 + 0.5) == []  # held: stays Closed
    assert be.state == S.CLOSED
    assert be.handle_timer(T0 + 1.0) == [SetState(S.INIT_WAIT)]


def test_backend_flapping_its_state_bounds_the_frontends_setups():
    fe = XenbusMachine(Role.FRONTEND, backoff=Backoff(first=0.5, cap=2.0))
    fe.start()
    setups = flap(fe, [b"2", b"6"], 10.0, setup_ok=True)  # InitWait, Closed, InitWait...
    assert 2 <= len(setups) <= 1 + 10.0 / 0.5
    gaps = [b - a for a, b in zip(setups, setups[1:], strict=False)]
    assert all(g >= 0.5 for g in gaps), gaps
