"""Multi-queue vifs on xensim (docs/protocol.md, "Multi-queue"): the netif keys and one
vchan per queue in xenstore, flows spread over the queues by the kernel's flow hash, every
frame of one flow on one queue (a TCP flow's bytes intact, a UDP flow's sequence numbers
in order), per-queue counters in ``ncctl stats`` and the metrics, a peer without the keys
or with bad ones, and one failing queue taking the whole vif down.

dom0 runs ``ncd backend --max-queues 2``; guest 1 ``ncd frontend --max-queues 2`` (a
real multi-queue vif); guest 2 runs no daemon: the test writes its frontend keys
(an old or hostile frontend)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from ncd import queues
from tests.domproc import DomProc
from tests.e2e.harness import PY, Net
from tests.hostile.peer import GOOD_FEATURES

BE = "/local/domain/0/backend/ncvif"
FE1 = "/local/domain/1/device/ncvif/0"
FE2 = "/local/domain/2/device/ncvif/0"
DOM0_IP, GUEST_IP = "198.18.1.1", "198.18.1.2"
FLOWS = 24  # all on one queue by chance: 2 in 2**24
FLOW_BYTES = 2 << 20
STRAY = 6  # frames one flow's measurement may see on another queue (ARP, a late ACK)

pytestmark = pytest.mark.skipif(queues.cpus() < 2, reason="a frontend takes one queue per CPU")


@pytest.fixture(scope="module")
def net(sim_module, tmp_path_factory) -> Iterator[Net]:
    logs = tmp_path_factory.mktemp("logs")
    n = Net(sim_module, logs)
    try:
        cfg = logs / "ncd.toml"  # guest 2's failures go through a short backoff
        cfg.write_text("[channel]\nreconnect_delay = 0.1\nreconnect_delay_max = 0.5\n")
        n.start(0, "backend", "--config", str(cfg), "--max-queues", "2")
        n.start(1, "frontend", "--max-queues", "2")
        n.attach(1, 0, "00:16:3e:00:01:00")
        n.wait_connected(1, 0)
        n.addr(0, "ncvif1.0", f"{DOM0_IP}/24")
        n.addr(1, "nc0", f"{GUEST_IP}/24")
        assert n.ping_ok(1, DOM0_IP)
        yield n
    finally:
        n.close()


@pytest.fixture
def helpers(net: Net) -> Iterator[dict[int, DomProc]]:
    procs = {d: DomProc.python(net.sim, d, "tests.e2e.flows:Flows") for d in (0, 1)}
    try:
        yield procs
    finally:
        for p in procs.values():
            p.kill()
            p.close()


def _read(net: Net, path: str) -> str | None:
    r = net.sim.run(0, ["xenstore-read", path], check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def _queues(net: Net, domid: int) -> list[dict[str, int]]:
    for v in net.stats(domid)["vifs"]:
        if v["domid"] == 1 and v["devid"] == 0:
            return list(v["queues"])
    raise AssertionError(f"vif 1/0 missing from dom{domid}'s stats")


def _settled(net: Net) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    """The guest's and dom0's per-queue counters once every frame one side sent has been
    counted by the other (frames still in a ring are not yet), queue by queue."""

    def both() -> tuple[list[dict[str, int]], list[dict[str, int]]] | None:
        fe, be = _queues(net, 1), _queues(net, 0)
        sent = [(q["frames_tx"], q["frames_rx"]) for q in fe]
        if sent == [(q["frames_rx"], q["frames_tx"]) for q in be]:
            return fe, be
        return None

    return net.wait(both, 10, "both ends counting the same frames per queue")


def _delta(after: list[dict[str, int]], before: list[dict[str, int]], key: str) -> list[int]:
    return [a[key] - b[key] for a, b in zip(after, before, strict=True)]


def _one_queue(deltas: list[int], what: str) -> int:
    """The queue that carried (nearly) all of a flow's frames."""
    q = max(range(len(deltas)), key=lambda i: deltas[i])
    others = [d for i, d in enumerate(deltas) if i != q]
    assert deltas[q] >= 10 and all(d <= STRAY for d in others), f"{what}: {deltas}"
    return q


def test_xenstore_has_the_netif_keys_and_a_vchan_per_queue(net: Net) -> None:
    assert _read(net, f"{BE}/1/0/{queues.KEY_MAX_QUEUES}") == "2"
    assert _read(net, f"{FE1}/{queues.KEY_NUM_QUEUES}") == "2"
    for q in (0, 1):
        assert (_read(net, f"{FE1}/queue-{q}/ring-ref") or "").isdigit()
        assert (_read(net, f"{FE1}/queue-{q}/event-channel") or "").isdigit()
    assert _read(net, f"{FE1}/queue-2/ring-ref") is None
    for d in (0, 1):
        assert net.vif(d, 1, 0)["queues"] == 2  # type: ignore[index]
        assert len(_queues(net, d)) == 2


def test_tcp_flows_spread_over_the_queues_each_on_one(
    net: Net, helpers: dict[int, DomProc]
) -> None:
    helpers[0].call(f"tcp_serve {DOM0_IP} 5401")
    used: dict[int, int] = {}
    sent: dict[str, str] = {}
    for i in range(FLOWS):
        fe0, be0 = _settled(net)
        r = helpers[1].call(f"tcp_send {DOM0_IP} 5401 {FLOW_BYTES}", timeout=60)
        sent[str(r["sport"])] = r["sha256"]
        net.wait(
            lambda r=r: str(r["sport"]) in helpers[0].call("tcp_results")["flows"],
            10,
            f"flow {i} read to its end in dom0",
        )
        fe1, be1 = _settled(net)
        # guest -> dom0: the guest kernel chose the queue, the backend got them there
        q = _one_queue(_delta(fe1, fe0, "frames_tx"), f"flow {i} data from the guest")
        assert _delta(be1, be0, "frames_rx") == _delta(fe1, fe0, "frames_tx")
        # dom0 -> guest, its ACKs: dom0's kernel keeps them on one queue too
        _one_queue(_delta(be1, be0, "frames_tx"), f"flow {i} ACKs from dom0")
        used[q] = used.get(q, 0) + 1
    assert set(used) == {0, 1}, f"{FLOWS} flows all on one queue: {used}"
    got = helpers[0].call("tcp_results")["flows"]
    for sport, sha in sent.items():
        assert got[sport] == {"bytes": FLOW_BYTES, "sha256": sha}


def _tap_tx_dropped(net: Net, domid: int, ifname: str) -> int:
    """Frames the kernel dropped on their way out of TAP ``ifname`` (its queue was full:
    the daemon reading it was slow), before ncd saw them."""
    return int(net.sim.run(domid, ["cat", f"/sys/class/net/{ifname}/statistics/tx_dropped"]).stdout)


def test_a_udp_flow_stays_on_one_queue_in_order(net: Net, helpers: dict[int, DomProc]) -> None:
    helpers[0].call(f"udp_listen {DOM0_IP} 5402")
    helpers[0].send("udp_recv 2")
    fe0, dropped0 = _queues(net, 1), _tap_tx_dropped(net, 1, "nc0")
    count = 20000
    helpers[1].call(f"udp_send {DOM0_IP} 5402 {count}", timeout=60)
    seqs = helpers[0].reply(30, "the datagrams")["seqs"]
    fe1, dropped = _queues(net, 1), _tap_tx_dropped(net, 1, "nc0") - dropped0
    assert len(seqs) >= count // 2, f"only {len(seqs)} of {count} arrived"
    assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False)), "reordered or duplicated"
    deltas = _delta(fe1, fe0, "frames_tx")
    q = _one_queue(deltas, "the UDP flow")
    # every datagram the guest's kernel let into the TAP went to the peer on queue q (on
    # a busy machine the kernel drops a few when the frontend reads the TAP late)
    assert deltas[q] >= count - dropped, (deltas, dropped)


def test_per_queue_metrics_match_the_stats(net: Net) -> None:
    assert net.ping_ok(1, DOM0_IP)
    code = (
        "import urllib.request;print(urllib.request.urlopen("
        f"'http://127.0.0.1:{net.metrics_port}/metrics',timeout=5).read().decode())"
    )
    text = net.sim.run(0, [PY, "-c", code]).stdout
    stats = _queues(net, 0)
    scraped: dict[tuple[str, str], float] = {}
    for m in re.finditer(r"^ncd_vif_queue_frames_total\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(kv.split("=", 1) for kv in m.group(1).split(","))
        if labels["domid"] == '"1"' and labels["devid"] == '"0"':
            scraped[(labels["queue"].strip('"'), labels["direction"].strip('"'))] = float(
                m.group(2)
            )
    assert set(scraped) == {(q, d) for q in ("0", "1") for d in ("tx", "rx")}
    # the scrape came after the stats: counters only grow, by the few frames in between
    for q in (0, 1):
        for d in ("tx", "rx"):
            assert 0 <= scraped[(str(q), d)] - stats[q][f"frames_{d}"] <= STRAY
    total = next(v for v in net.stats(0)["vifs"] if (v["domid"], v["devid"]) == (1, 0))
    assert sum(x["frames_rx"] for x in total["queues"]) == total["frames_rx"]


def _guest2(net: Net, keys: dict[str, str], state: str) -> None:
    """Guest 2's frontend entries, as an old or hostile frontend writes them."""
    net.sim.run(2, ["xenstore-rm", f"{FE2}/queue-0"], check=False)
    net.sim.run(2, ["xenstore-rm", f"{FE2}/{queues.KEY_NUM_QUEUES}"], check=False)
    pairs = [x for k, v in {**GOOD_FEATURES, **keys}.items() for x in (f"{FE2}/{k}", v)]
    net.sim.run(2, ["xenstore-write", *pairs, f"{FE2}/state", state])


@pytest.mark.parametrize("bad", ["0", "3", "17", "two", "99999999999", "+2"])
def test_a_bad_num_queues_refuses_that_setup_naming_the_key(net: Net, bad: str) -> None:
    if net.vif(0, 2, 0) is None:
        net.attach(2, 0, "00:16:3e:00:02:00")
    _guest2(net, {}, "1")
    net.wait_state(0, 2, 0, "InitWait")
    before = sum(net.stats(0)["handshake_failures"].values())
    _guest2(net, {queues.KEY_NUM_QUEUES: bad}, "4")
    vif = net.wait_state(0, 2, 0, "Closed")
    assert f"{FE2}/{queues.KEY_NUM_QUEUES}" in (vif["last_error"] or ""), vif["last_error"]
    net.wait(
        lambda: sum(net.stats(0)["handshake_failures"].values()) > before, 5, "the failure counted"
    )
    assert all(d.alive() for d in net.daemons)
    assert net.vif(0, 1, 0)["state"] == "Connected"  # type: ignore[index]
    assert net.ping_ok(1, DOM0_IP, count=2)


def test_a_frontend_without_the_key_gets_one_queue_at_queue_0(net: Net) -> None:
    """An old frontend writes no multi-queue-num-queues: the backend maps queue-0 only
    (here it is not granted, so the setup fails on queue-0's ring-ref, nothing else)."""
    if net.vif(0, 2, 0) is None:
        net.attach(2, 0, "00:16:3e:00:02:00")
    _guest2(net, {}, "1")
    net.wait_state(0, 2, 0, "InitWait")
    _guest2(net, {"queue-0/ring-ref": "4000", "queue-0/event-channel": "5"}, "4")
    vif = net.wait_state(0, 2, 0, "Closed")
    err = vif["last_error"] or ""
    assert queues.KEY_NUM_QUEUES not in err and "queue-1" not in err, err


@pytest.mark.parametrize(
    ("devid", "args"), [(1, ["--switch", "mq"]), (2, ["--rate", "10Mb/s"])], ids=["switch", "rate"]
)
def test_switch_ports_and_rate_limited_vifs_offer_one_queue(
    net: Net, devid: int, args: list[str]
) -> None:
    """A switch port has one ring per port; a vif limited when it is picked up keeps its
    limit whole on one queue: each offers multi-queue-max-queues 1, the others 2."""
    net.ncctl("attach", "2", "--devid", str(devid), "--mac", f"00:16:3e:00:02:0{devid}", *args)
    key = f"{BE}/2/{devid}/{queues.KEY_MAX_QUEUES}"
    try:
        assert net.wait(lambda: _read(net, key), 10, f"{key} written") == "1"
        assert _read(net, f"{BE}/1/0/{queues.KEY_MAX_QUEUES}") == "2"
    finally:
        net.ncctl("detach", "2", str(devid), "--force", check=False)
        net.wait(lambda: net.vif(0, 2, devid) is None, 10, f"vif 2/{devid} gone")


def _restart_frontend(net: Net) -> None:
    """Guest 1's daemon killed -9 and started again: a fresh setup reads the keys anew
    (the TAP, persistent, is picked up again)."""
    fe = next(d for d in net.daemons if d.domid == 1 and d.alive())
    net.kill9(fe)
    net.restart(fe)
    net.wait_connected(1, 0, timeout=20)


def test_a_backend_without_the_key_gets_one_queue_at_queue_0(net: Net) -> None:
    """An old backend writes no multi-queue-max-queues: the guest takes one queue, writes
    no multi-queue-num-queues and publishes queue-0 alone (the killed daemon's queue-1
    removed); traffic flows. With the key back, two queues again."""
    key = f"{BE}/1/0/{queues.KEY_MAX_QUEUES}"
    net.sim.run(0, ["xenstore-rm", key])
    try:
        _restart_frontend(net)
        for d in (0, 1):
            assert net.vif(d, 1, 0)["queues"] == 1  # type: ignore[index]
        assert _read(net, f"{FE1}/{queues.KEY_NUM_QUEUES}") is None
        assert (_read(net, f"{FE1}/queue-0/ring-ref") or "").isdigit()
        assert _read(net, f"{FE1}/queue-1/ring-ref") is None
        assert net.ping_ok(1, DOM0_IP)
        assert len(_queues(net, 1)) == 1
    finally:
        net.sim.run(0, ["xenstore-write", key, "2"])
    _restart_frontend(net)
    assert net.vif(1, 1, 0)["queues"] == 2  # type: ignore[index]
    assert net.ping_ok(1, DOM0_IP)
