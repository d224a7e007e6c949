"""A hostile frontend against the running backend: ring indices, records, floods and
event channels on a connected vchan.

Fatal cases (an index or a record the protocol forbids) must close only the hostile vif,
with one log line naming the rule and a counter (``bad_record_from_peer`` for records,
``ncd_handshake_failures_total{kind="link_lost"}`` for all); the others (wrap-around,
floods, a peer that never notifies) must not close anything and must lose no frame.
Every case: the backend stays up, bounded and idle, the good guest's TCP transfer
arrives intact, and the hostile vif takes a good offer afterwards.
"""

from __future__ import annotations

import pytest

from tests.hostile.peer import RIGHT_PROD, bad_records, eth_frame, record
from tests.hostile.world import HOSTILE_MAC, Arena

MAC = bytes(int(x, 16) for x in HOSTILE_MAC.split(":"))
FRAME = record(eth_frame(MAC, 0))  # 28 bytes, what "frames N" writes


def _connect(arena: Arena, *offer: str) -> None:
    arena.reset()
    arena.peer.call(" ".join(("offer", *(offer or ("12", "12")))))
    arena.wait_connected()
    arena.peer.call("wait_client")


def _fatal(arena: Arena, rule: str, *attack: str) -> str:
    """Run the attack commands on a connected vchan; the vif must fail on ``rule``."""
    before, mark = arena.failures(), arena.log_mark()
    with arena.good_traffic():
        for line in attack:
            arena.peer.call(line)
        line = arena.expect_failure(mark, before, "link_lost", rule)
        arena.peer.call("stop")
    return line  # the caller's recover() checks the backend once the attack stopped


# ---- records --------------------------------------------------------------------------
RECORDS = bad_records(MAC, over_ring=5000)


@pytest.mark.parametrize("data,rule", [c[1:] for c in RECORDS], ids=[c[0] for c in RECORDS])
def test_bad_record_closes_the_vif(arena: Arena, data: bytes, rule: str) -> None:
    _connect(arena)
    bad = arena.vif_stats()["drops"]["bad_record_from_peer"]
    frames = arena.vif_stats()["frames_rx"]
    # good frames first: every record before the bad one is delivered
    _fatal(arena, rule, "frames 3", f"send {data.hex()}")
    st = arena.vif_stats()
    assert st["drops"]["bad_record_from_peer"] > bad
    assert st["frames_rx"] >= frames + 3
    arena.recover()


def test_flood_of_minimum_frames(arena: Arena) -> None:
    """24-byte records as fast as the guest can write them (64 KiB ring): nothing closes,
    every frame is delivered or counted, the good guest's transfer is intact."""
    _connect(arena, "12", "16")
    before = arena.vif_stats()
    with arena.good_traffic():
        sent = arena.peer.call("flood 3")["frames"]
    assert sent > 1000

    def settled() -> bool:
        st = arena.vif_stats()
        return st["frames_rx"] + sum(st["drops"].values()) >= (
            before["frames_rx"] + sum(before["drops"].values()) + sent
        )

    arena.net.wait(settled, 20, f"all {sent} flooded frames accounted for", arena.backend)
    st = arena.vif_stats()
    assert st["state"] == "Connected"
    assert st["drops"]["bad_record_from_peer"] == before["drops"]["bad_record_from_peer"]
    arena.check_survived()


# ---- indices ------------------------------------------------------------------------------
def test_producer_beyond_the_ring(arena: Arena) -> None:
    _connect(arena)
    _fatal(arena, "producer index", "frames 2", "set_index right_prod +8192")
    arena.recover()


def _consumed_but(arena: Arena, left: int) -> None:
    """Wait until the backend consumed all the guest published but ``left`` bytes: it
    has seen the producer index (the moves below go behind what it saw)."""

    def caught_up() -> bool:
        idx = arena.peer.call("peek")
        return (idx["right_prod"] - idx["right_cons"]) & 0xFFFFFFFF == left

    arena.net.wait(caught_up, 10, f"the backend consumed all but {left} bytes", arena.backend)


def test_producer_moving_backwards_behind_the_consumer(arena: Arena) -> None:
    """prod moved 8 bytes behind cons once the backend consumed everything: the one
    notification that comes with it is enough (the late EOI looks at the ring for every
    event it takes, a storm or not)."""
    _connect(arena)
    arena.peer.call("frames 4")
    _consumed_but(arena, 0)
    _fatal(arena, "producer index moved back behind the consumer", "set_index right_prod -8")
    arena.recover()


def test_producer_moving_backwards_ahead_of_the_consumer(arena: Arena) -> None:
    """Three records and the first 20 bytes of a fourth, published at once: the backend
    delivers the three and waits for the rest. prod then moves back 8 bytes, still ahead
    of cons: behind the producer index the backend saw, fatal on that one notification."""
    _connect(arena)
    frames = arena.vif_stats()["frames_rx"]
    arena.peer.call(f"send {(FRAME * 3 + FRAME[:20]).hex()}")
    _consumed_but(arena, 20)
    assert arena.vif_stats()["frames_rx"] == frames + 3
    _fatal(arena, "producer index moved backwards", "set_index right_prod -8")
    arena.recover()


def test_producer_changing_between_reads(arena: Arena) -> None:
    """A thread rewrites prod between a plausible value and one far beyond the ring
    (XSA-155): the backend reads it once per check and closes on the bad one."""
    _connect(arena)
    prod = arena.peer.call("peek")["right_prod"]
    _fatal(arena, "producer index", f"scribble {RIGHT_PROD} 4 {prod} {prod + 0x10000}")
    arena.recover()


def test_consumer_index_of_our_ring_tampered(arena: Arena) -> None:
    """The guest moves the consumer index of the ring the backend writes: caught at the
    backend's next write (frames dom0 sends to the guest: ARP for 198.18.2.2)."""
    _connect(arena)
    arena.net.addr(0, "ncvif2.0", "198.18.2.1/24")
    try:
        _fatal(arena, "consumer index", "set_index left_cons +0x12345678")
    finally:
        arena.net.ip(0, "addr", "flush", "dev", "ncvif2.0")
    arena.recover()


def _ping_hostile(arena: Arena) -> None:
    arena.net.ping(0, "198.18.2.2", count=2, wait=1, interval=0.2)


def test_indices_wrapping_around_2_32(arena: Arena) -> None:
    """Indices start 256 bytes below 2^32: records across the wrap are delivered, the
    channel stays up (free-running u32 indices are the protocol, not an attack)."""
    _connect(arena, "12", "12", "cons=0xffffff00")
    before = arena.vif_stats()["frames_rx"]
    with arena.good_traffic():
        arena.peer.call("frames 200")  # 200 * 28 bytes: over the wrap, round the ring
    arena.net.wait(
        lambda: arena.vif_stats()["frames_rx"] >= before + 200,
        10,
        "200 frames across the wrap",
        arena.backend,
    )
    assert arena.peer.call("peek")["right_cons"] < 0x10000  # it did wrap
    assert arena.vif()["state"] == "Connected"
    arena.check_survived()


# ---- event channels ---------------------------------------------------------------------------
def test_peer_that_never_notifies(arena: Arena) -> None:
    """Frames published without a notification: the backend sleeps (does not poll the
    ring), loses nothing, and delivers them with the next notified frame."""
    _connect(arena)
    before = arena.vif_stats()["frames_rx"]
    with arena.good_traffic():
        arena.peer.call("frames 50 0 0")
    arena.check_survived()  # idle while frames wait: no polling loop
    arena.peer.call("frames 1")
    arena.net.wait(
        lambda: arena.vif_stats()["frames_rx"] >= before + 51,
        10,
        "the unnotified frames, after one notification",
        arena.backend,
    )
    assert arena.vif()["state"] == "Connected"


def test_port_closed_under_the_backend(arena: Arena) -> None:
    """The guest unbinds its end of the event channel: the backend's notifications go
    nowhere (as on Xen), it neither crashes nor spins, and takes a good offer after."""
    _connect(arena)
    arena.net.addr(0, "ncvif2.0", "198.18.2.1/24")
    try:
        with arena.good_traffic():
            arena.peer.call("close_port")
            _ping_hostile(arena)  # the backend writes and notifies a closed port
    finally:
        arena.net.ip(0, "addr", "flush", "dev", "ncvif2.0")
    arena.recover()


# ---- grants withdrawn ---------------------------------------------------------------------------
def test_grants_withdrawn_while_mapped(arena: Arena) -> None:
    """The guest ungrants the control page and rings the backend has mapped (a grant
    in use stays valid until unmapped, as in Xen): the backend keeps its mapping,
    survives, and releases it when the guest closes."""
    _connect(arena)
    with arena.good_traffic():
        arena.peer.call("unshare")
        _ping_hostile(arena)
    arena.recover()  # reset: state 1, the backend unmaps; dom0 back to its baseline
