"""Metrics: values from vif sources, scraped over real HTTP on loopback."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ncd.metrics import Metrics, MetricsServer, VifCounters, serve_metrics
from ncd.xenbus import XenbusState


def K(name: str, labels: tuple) -> tuple[str, frozenset]:
    return name, frozenset(labels)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


@pytest.fixture
def metrics():
    m = Metrics("backend", "0.1.0")
    state = {"n": 0}

    def counters():
        state["n"] += 1
        return VifCounters(
            frames_tx=10 * state["n"],
            frames_rx=7,
            bytes_tx=15000,
            bytes_rx=9000,
            drops={"bad_record": 2, "tap_full": 1},
            ring_full_waits=4,
            notifications_sent=11,
            notifications_received=12,
            tracked_foreign_pages=3,
            rate_limited_frames=5,
            rate_delay_usec=1_500_000,
            rate_bytes=625_000,
            rate_usec=50_000,
            spins_won=30,
            spins_missed=2,
        )

    m.add_vif(1, 0, counters, lambda: XenbusState.CONNECTED)
    m.add_vif(2, 1, VifCounters, lambda: XenbusState.INIT_WAIT)
    return m


def test_scrape_over_http(metrics):
    with MetricsServer(metrics, "127.0.0.1", 0) as srv:
        assert srv.port > 0
        got = scrape(srv.port)
        v = (("domid", "1"), ("devid", "0"))
        assert got[K("ncd_vif_frames_total", (*v, ("direction", "tx")))] == 10
        assert got[K("ncd_vif_frames_total", (*v, ("direction", "rx")))] == 7
        assert got[K("ncd_vif_bytes_total", (*v, ("direction", "tx")))] == 15000
        assert got[K("ncd_vif_drops_total", (*v, ("reason", "bad_record")))] == 2
        assert got[K("ncd_vif_ring_full_waits_total", v)] == 4
        assert got[K("ncd_vif_notifications_total", (*v, ("direction", "received")))] == 12
        assert got[K("ncd_vif_tracked_foreign_pages", v)] == 3
        assert got[K("ncd_vif_pump_spins_total", (*v, ("result", "won")))] == 30
        assert got[K("ncd_vif_pump_spins_total", (*v, ("result", "missed")))] == 2
        assert got[K("ncd_vif_rate_limited_frames_total", v)] == 5
        assert got[K("ncd_vif_rate_delay_seconds_total", v)] == 1.5
        assert got[K("ncd_vif_rate_limit_bytes_per_second", v)] == 12.5e6  # 100 Mbit/s
        assert got[K("ncd_vif_rate_limit_bytes_per_second", (("domid", "2"), ("devid", "1")))] == 0
        assert got[K("ncd_vif_state", v)] == 4
        assert got[K("ncd_vifs", (("state", "Connected"),))] == 1
        assert got[K("ncd_vifs", (("state", "InitWait"),))] == 1
        assert got[K("ncd_vifs", (("state", "Closed"),))] == 0
        assert got[K("ncd_handshake_failures_total", (("kind", "ill_timed"),))] == 0
        assert got[K("ncd_build_info", (("role", "backend"), ("version", "0.1.0")))] == 1
        # sources are read at scrape time
        assert scrape(srv.port)[K("ncd_vif_frames_total", (*v, ("direction", "tx")))] == 20
        metrics.handshake_failed("link_lost")
        metrics.remove_vif(1, 0)
        got = scrape(srv.port)
        assert got[K("ncd_handshake_failures_total", (("kind", "link_lost"),))] == 1
        assert not any(k[0].startswith("ncd_vif_") and ("domid", "1") in k[1] for k in got)
        assert got[K("ncd_vif_state", (("domid", "2"), ("devid", "1")))] == 2
        assert got[K("ncd_vifs", (("state", "Connected"),))] == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1)


def test_snapshot_for_control_socket(metrics):
    snap = metrics.snapshot()
    assert snap["vifs"][0]["domid"] == 1 and snap["vifs"][0]["state"] == "Connected"
    assert snap["vifs"][0]["drops"] == {"bad_record": 2, "tap_full": 1}
    assert snap["vifs"][1]["frames_tx"] == 0
    assert snap["handshake_failures"]["setup_failed"] == 0


def test_misuse_is_refused(metrics):
    with pytest.raises(ValueError, match="already registered"):
        metrics.add_vif(1, 0, VifCounters, lambda: XenbusState.CLOSED)
    with pytest.raises(ValueError, match="unknown handshake failure kind"):
        metrics.handshake_failed("whatever")
    metrics.add_vif(3, 0, lambda: VifCounters(drops={"Bad Reason!": 1}), lambda: XenbusState.CLOSED)
    with pytest.raises(ValueError, match="not a label value"):
        metrics.render()


def test_disabled_and_port_in_use(metrics):
    assert serve_metrics(metrics, False, "127.0.0.1", 0) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"metrics endpoint 127.0.0.1:{port}"):
            serve_metrics(metrics, True, "127.0.0.1", port)


def test_rate_counters_add_up_across_channels_and_the_limit_is_the_current_one():
    old = VifCounters(rate_limited_frames=2, rate_delay_usec=10, rate_bytes=1, rate_usec=1)
    new = VifCounters(
        rate_limited_frames=3, rate_delay_usec=5, rate_bytes=625_000, rate_usec=50_000
    )
    both = old.plus(new)
    assert (both.rate_limited_frames, both.rate_delay_usec) == (5, 15)
    assert (both.rate_bytes, both.rate_usec) == (625_000, 50_000)
    assert both.rate_bytes_per_second == 12.5e6
    assert VifCounters().rate_bytes_per_second == 0
