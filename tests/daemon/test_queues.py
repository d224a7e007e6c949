"""Multi-queue negotiation (ncd/queues.py): the frontend's choice from the backend's
(untrusted) maximum, the backend's check of the frontend's (untrusted) request, the keys
each writes; the ``[channel] max_queues`` option; per-queue counters and their metric."""

from __future__ import annotations

import re

import pytest

from ncd import queues
from ncd.config import ConfigError, load_config
from ncd.metrics import Metrics, QueueCounters, VifCounters, sum_queues
from ncd.parse import BadEntry
from ncd.xenbus import XenbusState
from tests.daemon.memstore import MemStore

KEY = "backend/ncvif/1/0/multi-queue-max-queues"


@pytest.mark.parametrize(
    ("raw", "own", "cpus", "want"),
    [
        (None, 4, 4, 1),  # an old backend: one queue
        (b"4", 4, 4, 4),
        (b"8", 2, 4, 2),  # our limit
        (b"8", 8, 2, 2),  # our CPUs
        (b"1", 8, 8, 1),  # the backend's
        (b"65535", 3, 8, 3),  # a big host's backend offers many
    ],
)
def test_frontend_takes_the_least_of_the_three(raw, own, cpus, want) -> None:
    assert queues.frontend_count(raw, own, cpus, KEY) == (want, None)


@pytest.mark.parametrize(
    "raw",
    [
        b"0",
        b"",
        b"two",
        b"+2",
        b"-1",
        b" 2",
        b"2\n",
        b"65536",
        b"99999999999",
        "٣".encode(),
        b"\xff",
    ],
)
def test_frontend_reads_a_bad_backend_maximum_as_one_queue_naming_the_key(raw) -> None:
    n, why = queues.frontend_count(raw, 4, 4, KEY)
    assert n == 1
    assert why is not None and why.startswith(KEY) and "one queue" in why


@pytest.mark.parametrize(("raw", "want"), [(None, 1), (b"1", 1), (b"2", 2), (b"4", 4)])
def test_backend_connects_what_the_frontend_asked_within_its_maximum(raw, want) -> None:
    assert queues.backend_count(raw, 4, "fe/multi-queue-num-queues") == want


@pytest.mark.parametrize("raw", [b"0", b"5", b"17", b"x", b"", b"+2", b"99999999999"])
def test_backend_refuses_a_bad_request_naming_the_key(raw) -> None:
    with pytest.raises(BadEntry, match="^fe/multi-queue-num-queues: "):
        queues.backend_count(raw, 4, "fe/multi-queue-num-queues")


def test_advertise_bounds() -> None:
    assert queues.advertise(1) == {queues.KEY_MAX_QUEUES: "1"}
    assert queues.advertise(queues.QUEUES_MAX) == {queues.KEY_MAX_QUEUES: "16"}
    for bad in (0, queues.QUEUES_MAX + 1):
        with pytest.raises(ValueError):
            queues.advertise(bad)


def test_the_frontend_key_is_there_for_two_queues_and_gone_for_one() -> None:
    mem = MemStore()
    mem.add_domain(1)
    xs = mem.conn(0)
    base = "/local/domain/1/device/ncvif/0"
    xs.mkdir(base)
    queues.publish_num(xs, base, 2)
    assert queues.read_frontend_num(xs, base) == b"2"
    queues.publish_num(xs, base, 1)  # one queue: today's layout, no key
    assert queues.read_frontend_num(xs, base) is None
    queues.publish_num(xs, base, 1)  # idempotent
    assert queues.read_frontend_num(xs, base) is None


def test_stale_queue_directories_beyond_the_count_go() -> None:
    mem = MemStore()
    mem.add_domain(1)
    xs = mem.conn(0)
    base = "/local/domain/1/device/ncvif/0"
    for q in range(3):
        xs.write(f"{base}/queue-{q}/ring-ref", "8")  # a killed daemon's three queues
    xs.write(f"{base}/queue-x/ring-ref", "8")  # not a queue directory: not ours to judge
    queues.publish_num(xs, base, 1)
    assert sorted(xs.directory(base)) == ["queue-0", "queue-x"]


def test_cpus_is_what_this_process_may_use() -> None:
    import os

    assert queues.cpus() == len(os.sched_getaffinity(0))


def test_config_max_queues(tmp_path) -> None:
    cfg = tmp_path / "ncd.toml"
    cfg.write_text("")
    assert 1 <= load_config(cfg).channel.max_queues <= queues.QUEUES_MAX
    cfg.write_text("[channel]\nmax_queues = 4\n")
    assert load_config(cfg).channel.max_queues == 4
    for bad in ("0", "17", '"2"', "true"):
        cfg.write_text(f"[channel]\nmax_queues = {bad}\n")
        with pytest.raises(ConfigError, match="channel.max_queues"):
            load_config(cfg)
    assert load_config(None, {"channel.max_queues": 1}).channel.max_queues == 1


def test_queue_counters_add_queue_by_queue() -> None:
    a = (QueueCounters(1, 2, 3, 4), QueueCounters(5, 6, 7, 8))
    b = (QueueCounters(10, 10, 10, 10),)
    assert sum_queues(a, b) == (QueueCounters(11, 12, 13, 14), QueueCounters(5, 6, 7, 8))
    v = VifCounters(frames_tx=6, queues=a).plus(VifCounters(frames_tx=10, queues=b))
    assert v.frames_tx == 16 and v.queues == sum_queues(a, b)


def test_the_queue_label_in_the_metrics() -> None:
    m = Metrics("backend", "0")
    qs = (QueueCounters(3, 4, 300, 400), QueueCounters(5, 6, 500, 600))
    m.add_vif(
        1,
        0,
        lambda: VifCounters(frames_tx=8, frames_rx=10, queues=qs),
        lambda: XenbusState.CONNECTED,
    )
    text = m.render().decode()
    pattern = (
        r'^ncd_vif_queue_frames_total\{devid="0",direction="(\w+)",domid="1",'
        r'queue="(\d)"\} (\S+)$'
    )
    got = {(q, d): float(v) for d, q, v in re.findall(pattern, text, re.M)}
    assert got == {("0", "tx"): 3, ("0", "rx"): 4, ("1", "tx"): 5, ("1", "rx"): 6}
    assert 'ncd_vif_queue_bytes_total{devid="0",direction="rx",domid="1",queue="1"} 600.0' in text
    snap = m.snapshot()["vifs"][0]
    assert snap["queues"][1] == {"frames_tx": 5, "frames_rx": 6, "bytes_tx": 500, "bytes_rx": 600}
