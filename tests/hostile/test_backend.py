"""A hostile backend against the running frontend: the handshake, its xenstore
directory, and the backend going away with the vchan mapped.

Guest 1 runs ``ncd frontend`` with devid 0 backed by ``ncd backend`` in dom0 (the good
one) and, one per case, devid N backed by domain 2, where the test's
:class:`tests.hostile.backend_peer.HostileBackend` maps the frontend's vchan and then
misbehaves (tests/hostile/backend_world.py; the ring, record, control page and event
channel attacks are in the other ``test_backend_*.py``). Every case: the frontend stays
up, bounded and idle afterwards; the attacked device ends not Connected with one log
line naming the rule and a counter (or, for the harmless cases, stays Connected);
devid 0 carries a TCP transfer intact meanwhile; guest 1's grants and ports go back to
the good device's alone once the hostile backend closes; the device reconnects once the
backend starts over.
"""

from __future__ import annotations

import re
import time

import pytest

from ncd.ratelog import BURST, EVERY
from tests.hostile.backend_world import Front


def test_bad_backend_state(front: Front) -> None:
    front.fresh_device()
    front.attack("bad_state", "state", "state 9")


FLAPS = [("4-1-4", "1 4"), ("4-6-2-4", "6 2 4"), ("bad-state-9-2", "9 2")]
FLAP_S = 2.0
RECONNECT_DELAY = 1.0  # [channel] reconnect_delay's default (ncd/config.py)


@pytest.mark.parametrize("states", [c[1] for c in FLAPS], ids=[c[0] for c in FLAPS])
def test_backend_states_flapping(front: Front, states: str) -> None:
    """The backend cycles its state through ``states`` for FLAP_S seconds as fast as
    xenstored takes it, with the vchan mapped: the frontend follows or lags (its
    re-setups wait for the backoff: ``channel_setups`` bounded), never crashes or
    spins, and writes a bounded number of lines about the device (watch events
    coalesced, the backoff, and the per-vif rate limit of ncd/ratelog.py: a burst,
    then one per EVERY seconds); it serves a fresh vchan when the backend starts over."""
    front.fresh_device()
    mark, setups = front.log_mark(), front.vif_stats()["channel_setups"]
    with front.good_traffic():
        t0 = time.monotonic()
        flap = front.hostile.call(f"flap {FLAP_S} {states}", timeout=FLAP_S + 30)
        setups = front.vif_stats()["channel_setups"] - setups
        elapsed = time.monotonic() - t0
    assert flap["writes"] >= 100, flap  # a flap worth the name, even on a loaded machine
    # at most one setup per reconnect_delay (1 s by default, doubling), not one per flap
    assert setups <= 2 + elapsed / RECONNECT_DELAY, (setups, flap)
    lines = re.findall(rf"^.*vif 1/{front.devid}: .*$", front.log_since(mark), re.M)
    assert len(lines) <= BURST + elapsed / EVERY + 6, lines
    if "9" in states.split():
        assert any("failed (bad_state)" in ln for ln in lines), lines
    front.recover()


def _backend_gone(front: Front) -> None:
    """The hostile backend can no longer write (its directory, or its domain, is gone)
    and the device stays closed: guest 1 holds the good device's grants and ports
    alone, the frontend is well, and a new device is served (:meth:`Front.recover`)."""
    assert front.peer is not None
    front.peer.close()
    front.peer = None
    front.net.wait(
        lambda: front.guest_resources() == front.base,
        10,
        f"guest 1 back to the good device's grants and ports {front.base}",
        front.frontend,
    )
    front.check_survived()
    front.fresh_device()
    front.recover()


def test_backend_directory_removed_mid_handshake(front: Front) -> None:
    """The backend's directory (state, features) disappears after its InitWait, while
    the frontend serves the vchan it has not mapped yet: the frontend fails the device
    (``bad_state``, the directory named), gives its vchan back, and serves the next
    device."""
    front.fresh_device(connect=False)
    before, mark = front.failures(), front.log_mark()
    with front.good_traffic():
        front.hostile.call("init_wait")
        front.net.wait_state(1, 1, front.devid, "Connected")  # its vchan served
        front.hostile.call("rm_dir")
        front.expect_failure(mark, before, "bad_state", "the backend's directory [^ ]+ is gone")
    _backend_gone(front)


VALUES = [
    ("protocol-version-2", "protocol-version=2", "protocol-version"),
    ("protocol-version-garbage", "protocol-version=v1;rm", "protocol-version"),
    ("protocol-version-missing", "protocol-version=", "protocol-version"),
    ("protocol-version-oversized", "protocol-version=x1900:1", "protocol-version"),
    ("vnet-hdr-0", "feature-vnet-hdr=0", "feature-vnet-hdr"),
    ("vnet-hdr-missing", "feature-vnet-hdr=", "feature-vnet-hdr"),
    ("feature-csum-garbage", "feature-csum=yes", "feature-csum"),
    ("feature-gso-oversized", "feature-gso-tcpv4=x1900:1", "feature-gso-tcpv4"),
    ("max-frame-0", "max-frame=0", "max-frame"),
    ("max-frame-13", "max-frame=13", "max-frame"),
    ("max-frame-huge", "max-frame=99999999", "max-frame"),
    ("max-frame-negative", "max-frame=-1", "max-frame"),
    ("max-frame-hex", "max-frame=0x100", "max-frame"),
]


@pytest.mark.parametrize("key,rule", [c[1:] for c in VALUES], ids=[c[0] for c in VALUES])
def test_hostile_value_in_the_backend_directory(front: Front, key: str, rule: str) -> None:
    """The negotiation keys the frontend reads from the backend's directory: a bad one
    fails the setup naming the key (retried on the frontend's backoff, never a
    vchan served on it)."""
    front.fresh_device(connect=False)
    before, mark = front.failures(), front.log_mark()
    with front.good_traffic():
        front.hostile.call(f"init_wait {key}")
        front.expect_failure(mark, before, "setup_failed", rule)
    front.recover()


def test_backend_mac_and_mtu_keys_are_not_read(front: Front) -> None:
    """``mac`` and ``mtu`` are the toolstack's, in the frontend's own directory: garbage
    under the backend's names changes nothing, the TAP has the toolstack's MAC."""
    front.fresh_device(connect=False)
    front.connect("mac=zz:zz:zz", "mtu=x1900:9")
    mac = f"00:16:3e:00:01:{front.devid:02x}"
    assert f"link/ether {mac}" in front.net.ip(1, "link", "show", front.tap)
    front.recover()


def test_backend_unmaps_while_connected(front: Front) -> None:
    """The backend unmaps the control page and rings, state and port unchanged: the
    pages are the frontend's own grants, so nothing changes for it; frames out of its
    TAP still go into the ring until it is full; it gives the grants back on close."""
    front.fresh_device()
    before = front.vif_stats()["frames_tx"]
    with front.good_traffic():
        front.hostile.call("unmap")
        front.tap_frames(5)
        front.net.wait(
            lambda: front.vif_stats()["frames_tx"] >= before + 5,
            10,
            "the TAP's frames written into the ring",
            front.frontend,
        )
    assert front.vif()["state"] == "Connected"
    front.recover()


def test_backend_domain_destroyed_while_connected(front: Front) -> None:
    """A driver domain (dom N) backs a device, maps its vchan and is destroyed (xl
    destroy): its backend directory goes with it; the frontend closes the device,
    gives its grants and port back, and serves the next backend."""
    world = front.net.sim.world
    dom = world.create_domain()
    front.net.quiet_ipv6(dom)
    front.fresh_device(backend=dom)
    before, mark = front.failures(), front.log_mark()
    with front.good_traffic():
        front.tap_frames(3)
        world.destroy(dom)
        front.expect_failure(mark, before, "bad_state", "the backend's directory [^ ]+ is gone")
    _backend_gone(front)
