"""bench/run in its tiny mode (``--seconds 1 --rounds 1 --only tcp1 --json``): the JSON
has every path's TCP result with the bytes iperf3 counted at the receiver, the ratios
and the targets; RESULTS.md gets the suite's block and the plot is a PNG. Speed is not
checked (about 10-20 s on two shared cores; bounded at 180 s)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.needs import ROOT, require_root

pytestmark = pytest.mark.bench

PATHS = ("ncd", "veth", "naive")
PNG = b"\x89PNG\r\n\x1a\n"


def test_bench_run_tiny(tmp_path: Path) -> None:
    require_root("the suite makes a xensim world and namespaces")
    out = tmp_path / "out"
    r = subprocess.run(
        [
            str(ROOT / "bench" / "run"),
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--only",
            "tcp1",
            "--json",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(ROOT),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert [run["group"] for run in res["runs"]] == ["net"]
    run = res["runs"][0]
    for key in ("machine", "command", "git", "date", "load_before", "load_after"):
        assert run[key], (key, run)
    assert set(res["scenarios"]) == {"net"}
    tcp = res["scenarios"]["net"]["tests"]["tcp1"]
    assert set(tcp) >= {"rounds", "moved", "median", "ncd_over_veth", "ncd_over_naive"}
    for p in PATHS:
        assert len(tcp["rounds"][p]) == 1 and tcp["rounds"][p][0] > 0, (p, tcp)
        # at least 1 MB really crossed each path in its second (iperf3's receiver count)
        assert tcp["moved"][p][0]["bytes"] > 1_000_000, (p, tcp["moved"])
    assert tcp["ncd_over_naive"] == tcp["median"]["ncd"] / tcp["median"]["naive"]
    targets = {t[0]: t for t in res["scenarios"]["net"]["targets"]}
    assert set(targets) == {"tcp1: ncd >= 0.8x veth", "tcp1: ncd >= 10x the naive floor"}
    text = (out / "RESULTS.md").read_text()
    block = text.split("<!-- bench/run:net -->")[1].split("<!-- /bench/run:net -->")[0]
    assert "| TCP guest -> dom0, 1 stream (Gbit/s) |" in block, block
    assert f"git {run['git']}" in block and "load average" in block, block
    assert [Path(p).name for p in res["plots"]] == ["net_throughput.png"]
    assert (out / "plots" / "net_throughput.png").read_bytes().startswith(PNG)
