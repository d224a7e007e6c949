"""bench/soak.py for two minutes, as CI runs it: mixed traffic checked end to end, churn
and restarts, resources bounded (the soak's own verdict), the PNG written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import ROOT, require_root

pytestmark = pytest.mark.bench


def test_soak_two_minutes(tmp_path: Path) -> None:
    require_root("the soak makes a xensim world")
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--minutes",
            "2",
            "--sample-seconds",
            "5",
            "--churn-every",
            "20",
            "--restart-every",
            "40",
            "--png",
            str(png),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=str(ROOT),
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Result: **PASS**" in r.stdout
    res = json.loads(out.read_text())
    t = res["totals"]
    assert t["failures"] == []
    assert t["tcp_bad"] == 0 and t["tcp_transfers"] >= 10 and t["tcp_bytes"] > 0
    assert t["udp_corrupt"] == 0 and t["udp_duplicate"] == 0 and t["udp_received"] > 0
    assert t["churns"] >= 3 and t["restarts"] >= 2
    assert len(res["samples"]) >= 6 and all(g["bounded"] for g in res["growth"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
