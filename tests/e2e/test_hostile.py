"""A hostile frontend (the test, writing as guest 2) feeds the backend bad xenstore values,
one key at a time: each fails only that device into Closed, with a logged reason and a
counter; the backend and guest 1's traffic carry on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Net

FE2 = "/local/domain/2/device/ncvif/0"
GOOD = {
    "protocol-version": "1",
    "feature-vnet-hdr": "1",
    "max-frame": "65664",
    "feature-csum": "1",
    "feature-gso-tcpv4": "1",
    "feature-gso-tcpv6": "1",
    "feature-gso-udp-l4": "0",
}
Q = "queue-0"
# (name, keys written before state 4 (or with their own state), what the reason names)
CASES = [
    ("state-out-of-range", {"state": "9"}, "state"),
    ("state-not-a-number", {"state": "abc"}, "state"),
    ("state-signed", {"state": "+4"}, "state"),
    ("state-reconfiguring", {"state": "7"}, "state"),
    ("state-initwait-from-frontend", {"state": "2"}, "InitWait"),
    ("ring-ref-missing", {}, "ring-ref"),
    ("ring-ref-zero", {f"{Q}/ring-ref": "0", f"{Q}/event-channel": "5"}, "ring-ref"),
    ("ring-ref-junk", {f"{Q}/ring-ref": "12ab", f"{Q}/event-channel": "5"}, "ring-ref"),
    ("ring-ref-huge", {f"{Q}/ring-ref": "99999999999", f"{Q}/event-channel": "5"}, "ring-ref"),
    ("ring-ref-not-granted", {f"{Q}/ring-ref": "4000", f"{Q}/event-channel": "5"}, "setup"),
    ("event-channel-zero", {f"{Q}/ring-ref": "8", f"{Q}/event-channel": "0"}, "event-channel"),
    ("event-channel-junk", {f"{Q}/ring-ref": "8", f"{Q}/event-channel": "x1"}, "event-channel"),
    ("event-channel-huge", {f"{Q}/ring-ref": "8", f"{Q}/event-channel": "9999999"},
     "event-channel"),
    ("protocol-version", {"protocol-version": "2"}, "protocol-version"),
    ("feature-vnet-hdr", {"feature-vnet-hdr": "0"}, "feature-vnet-hdr"),
    ("feature-csum", {"feature-csum": "yes"}, "feature-csum"),
    ("max-frame-small", {"max-frame": "1"}, "max-frame"),
    ("max-frame-junk", {"max-frame": "64k"}, "max-frame"),
]


@pytest.fixture(scope="module")
def net(sim_module, tmp_path_factory) -> Iterator[Net]:
    logs = tmp_path_factory.mktemp("logs")
    n = Net(sim_module, logs)
    try:
        # each case is a failure the frontend caused, and the frontend's next try goes
        # through the backend's backoff (ncd/xenbus.py): keep it short for 18 cases
        cfg = logs / "ncd.toml"
        cfg.write_text("[channel]\nreconnect_delay = 0.1\nreconnect_delay_max = 0.5\n")
        n.start(0, "backend", "--config", str(cfg))
        n.start(1, "frontend")
        n.attach(1, 0, "00:16:3e:00:01:00")
        n.attach(2, 0, "00:16:3e:00:02:00")  # guest 2 runs no daemon: the test is its frontend
        n.wait_connected(1, 0)
        n.addr(0, "ncvif1.0", "198.18.1.1/24")
        n.addr(1, "nc0", "198.18.1.2/24")
        yield n
    finally:
        n.close()


def _as_guest2(net: Net, *cmd: str) -> None:
    net.sim.run(2, list(cmd))


def _failures(net: Net) -> int:
    return sum(net.stats(0)["handshake_failures"].values())


@pytest.mark.parametrize(("name", "bad", "named"), CASES, ids=[c[0] for c in CASES])
def test_bad_frontend_value_fails_only_that_device(net: Net, name: str, bad: dict[str, str],
                                                   named: str) -> None:
    # back to a clean start: good keys, no vchan entry, Initialising -> backend InitWait
    _as_guest2(net, "xenstore-rm", f"{FE2}/{Q}")
    args = [x for k, v in GOOD.items() for x in (f"{FE2}/{k}", v)]
    _as_guest2(net, "xenstore-write", *args, f"{FE2}/state", "1")
    net.wait_state(0, 2, 0, "InitWait")
    before = _failures(net)

    writes = dict(bad)
    state = writes.pop("state", "4")
    if writes:
        pairs = [x for k, v in writes.items() for x in (f"{FE2}/{k}", v)]
        _as_guest2(net, "xenstore-write", *pairs)
    _as_guest2(net, "xenstore-write", f"{FE2}/state", state)

    vif = net.wait_state(0, 2, 0, "Closed")
    net.wait(lambda: _failures(net) > before, 5, "handshake failure counted")
    assert named in (vif["last_error"] or ""), vif["last_error"]
    assert "ncvif2.0" in net.links(0)  # the device stays, Closed, ready for a good retry
    # everybody else is fine
    assert all(d.alive() for d in net.daemons)
    assert net.vif(0, 1, 0)["state"] == "Connected"
    assert net.ping_ok(1, "198.18.1.1", count=2)
