"""bench/bench_switch.py in its tiny mode (1 round, 1-second iperf3, 10 pings): one run
produces every row of both tables with numbers, the ratios and the targets (about 30-45 s
on two shared cores; the subprocess is bounded at 120 s)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.needs import ROOT, require_root

pytestmark = pytest.mark.bench

PATHS = ["switch memcpy", "switch grant", "bridge", "chain memcpy", "chain grant", "one hop"]
ROWS = ["TCP A -> B, 1 stream (Gbit/s)", "TCP B -> A, 1 stream (Gbit/s)",
        "TCP F -> dom0, 1 stream (Gbit/s)", "TCP dom0 -> F, 1 stream (Gbit/s)"]
NUM = r"[\d,]+(?:\.\d+)?"


def test_bench_switch_tiny(tmp_path: Path) -> None:
    require_root("the benchmark makes a xensim world")
    out = tmp_path / "res.json"
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_switch.py"), "--rounds", "1",
         "--seconds", "1", "--pings", "10", "--dir", str(tmp_path / "world"),
         "--netns-prefix", f"ncbt{os.getpid()}-", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = r.stdout
    for label in ROWS:  # median rows: three paths, three ratios
        assert re.search(rf"^\| {re.escape(label)} \|( {NUM} \|){{3}}( {NUM}x \|){{3}}$",
                         text, re.M), (label, text)
    rtt = re.findall(rf"^\| ping RTT p(?:50|99) \(us\) \|( {NUM} \|){{3}}( {NUM}x \|){{3}}$",
                     text, re.M)
    assert len(rtt) == 4, text  # p50, p99 for each of the two tables
    for p in PATHS:  # the per-round table
        assert re.search(rf"^\| {p} \|( {NUM} \|){{4}} {NUM} / {NUM} \|$", text, re.M), (p, text)
    assert len(re.findall(r"^\* .*: [\d.]+x — (met|\*\*not met\*\*)$", text, re.M)) == 10, text
    res = json.loads(out.read_text())
    for p in PATHS:
        for k, v in res["summary"]["medians"][p].items():
            assert math.isfinite(v) and v > 0, (p, k, v)
    assert res["counters"]["switch grant"]["grant_copy_calls"] > 0, res["counters"]
    assert res["counters"]["switch memcpy"]["grant_copy_calls"] == 0, res["counters"]
    print(f"\nbench_switch tiny mode: {took:.1f} s")
