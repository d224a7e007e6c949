"""A hostile frontend against the running backend: the xenbus handshake.

The device directory removed mid-handshake, states flapping 4 -> 1 -> 4, a second
frontend process claiming the same device, the guest destroyed with its vchan mapped.
Every case: the backend stays up, bounded and idle, maps at most one vchan for the
device, the good guest's TCP transfer arrives intact, and the device is re-attachable.
"""

from __future__ import annotations

from tests.hostile.world import HOSTILE_MAC, Arena


def _connect(arena: Arena) -> None:
    arena.reset()
    arena.peer.call("offer 12 12")
    arena.wait_connected()
    arena.peer.call("wait_client")


def _one_vchan_at_most(arena: Arena) -> None:
    """dom0 maps no more than the good vif's and one hostile vchan (ctrl + 2 rings)."""
    now, base = arena.dom0_resources(), arena.dom0_base
    assert now["mapped_pages"] <= base["mapped_pages"] + 3, (now, base)
    assert now["ports"] <= base["ports"] + 1, (now, base)


def test_device_directory_removed_mid_handshake(arena: Arena) -> None:
    arena.reset()
    mark = arena.log_mark()
    with arena.good_traffic():
        arena.peer.call("offer 12 12 state=3")  # published, Initialised, then gone
        arena.peer.call("rm_dir")
        arena.wait_log(mark, r"vif 2/0: the frontend's directory \S+ is gone: releasing the device")
    arena.net.wait(
        lambda: (v := arena.vif()) is None or v["state"] != "Connected",
        10,
        "the vif without a frontend not Connected",
        arena.backend,
    )
    _one_vchan_at_most(arena)
    arena.check_survived()
    # re-attachable: the toolstack removes and re-adds the device
    arena.net.ncctl("detach", "2", "0")
    arena.net.wait(lambda: arena.vif() is None, 10, "vif 2/0 released", arena.backend)
    arena.net.attach(2, 0, HOSTILE_MAC)
    arena.net.wait_state(0, 2, 0, "InitWait")
    arena.recover()


def test_states_flapping(arena: Arena) -> None:
    """4 -> 1 -> 4 two hundred times with the vchan offered: the backend follows or
    lags, never maps two vchans, and ends Connected to the one that is published."""
    _connect(arena)
    with arena.good_traffic():
        arena.peer.call("flap 200")
        _one_vchan_at_most(arena)
    arena.wait_connected()
    arena.recover()


def test_second_frontend_claims_the_device(arena: Arena) -> None:
    """Another process of the guest publishes its own vchan for the connected device:
    the backend keeps the first until the state machine says otherwise (never two),
    then serves whichever vchan is published when the frontend reconnects."""
    _connect(arena)
    rival = arena.hostile(2)
    try:
        with arena.good_traffic():
            rival.call("offer 12 12")  # state is already 4: a level, no edge
            _one_vchan_at_most(arena)
            before = arena.vif_stats()["frames_rx"]
            arena.peer.call("frames 3")  # the first claimant still owns the channel
            arena.net.wait(
                lambda: arena.vif_stats()["frames_rx"] >= before + 3,
                10,
                "frames of the first claimant",
                arena.backend,
            )
            rival.call("reset")  # the rival reinitialises the device: state 1 ...
            arena.net.wait_state(0, 2, 0, "InitWait")
            rival.call("offer 12 12")  # ... and connects its own vchan
            arena.wait_connected()
            _one_vchan_at_most(arena)
            before = arena.vif_stats()["frames_rx"]
            rival.call("frames 3")
            arena.net.wait(
                lambda: arena.vif_stats()["frames_rx"] >= before + 3,
                10,
                "frames of the rival",
                arena.backend,
            )
        arena.check_survived()
    finally:
        rival.close()
    arena.recover()


def test_guest_destroyed_with_vchan_mapped(arena: Arena) -> None:
    """A third guest connects a vchan and is destroyed (xl destroy) while the backend
    has it mapped: the backend releases that vif (TAP removed, mappings and port
    gone) and nothing else."""
    world = arena.net.sim.world
    base = arena.dom0_resources()
    dom = world.create_domain()
    arena.net.quiet_ipv6(dom)
    arena.net.attach(dom, 0, "00:16:3e:00:03:00")
    arena.net.wait_state(0, dom, 0, "InitWait")
    peer = arena.hostile(dom)
    peer.call("reset")
    peer.call("offer 12 12")
    arena.net.wait_state(0, dom, 0, "Connected")
    peer.call("wait_client")
    mark = arena.log_mark()
    with arena.good_traffic():
        world.destroy(dom)
        arena.net.wait(
            lambda: arena.net.vif(0, dom, 0) is None, 15, f"vif {dom}/0 released", arena.backend
        )
    arena.wait_log(mark, rf"domain {dom} is gone")
    assert f"ncvif{dom}.0" not in arena.net.links(0)
    arena.net.wait(
        lambda: arena.dom0_resources() == base,
        10,
        f"dom0 back to {base}",
        arena.backend,
    )
    arena.check_survived()
