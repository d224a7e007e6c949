"""bench/bench_scale.py in its tiny mode (3 guests, 2 busy, 1 round of 1 s): every vif
reaches Connected on both ends (the watch saw both ``state`` nodes at 4), the RSS
figures come from live daemons, and iperf3 moved bytes through one and through two
vifs at once. Speed is not checked (about 10-20 s on two shared cores; bounded at 180 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import ROOT, require_root

pytestmark = pytest.mark.bench


def test_bench_scale_tiny(tmp_path: Path) -> None:
    require_root("the benchmark makes a xensim world")
    out = tmp_path / "scale.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_scale.py"),
            "--guests",
            "3",
            "--busy",
            "2",
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["guests"] == 3 and res["busy"] == 2
    lat = res["attach"]["latencies_s"]
    assert len(lat) == 3 and all(x > 0 for x in lat), lat
    assert res["attach"]["p99_s"] == max(lat)
    assert all(res["attach"]["cpu_s"][k] >= 0 for k in ("backend", "xenstored", "frontends"))
    assert res["backend"]["connected_mb"]["Rss"] > 5, res["backend"]
    assert len(res["frontend"]["rss_mb"]) == 3 and min(res["frontend"]["rss_mb"]) > 5
    assert res["frontend"]["after_traffic_rss_median_mb"] > 5
    # the scrape was served (bench_scale checks the body) and brought prometheus_client
    assert res["frontend"]["scraped_rss_mb"] > res["frontend"]["rss_mb"][0]
    t = res["throughput"]
    assert len(t["one_gbit"]) == 1 and len(t["busy_gbit"]) == 1
    assert len(t["busy_per_vif_gbit"][0]) == 2 and min(t["busy_per_vif_gbit"][0]) > 0, t
    assert t["bytes"] > 1_000_000, t  # iperf3's receiver count, over all three runs
    assert [x[0] for x in res["targets"]] == [
        "attach -> Connected p99 < 1 s",
        "2 busy vifs >= 0.9x one busy vif",
        "backend RSS <= 0.5 MB per vif",
        "frontend RSS <= 20 MB (median)",
    ]
    assert "| backend RSS per vif (MB; PSS per vif) |" in r.stdout
