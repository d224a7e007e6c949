"""xensim's xenstored against what the real one answered in the lab.

``lab/xen-facts.json`` holds what ``lab/xsprobe.py`` saw as a PV guest on Xen 4.17's C
xenstored (recorded by the lab); here the same probe runs as a guest of xensim and
every answer (success, value, errno) must be the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_xensim_xenstore_answers_like_real_xen(sim):
    golden = json.loads((REPO / "lab" / "xen-facts.json").read_text())["probes"]
    res = sim.run(1, [sys.executable, str(REPO / "lab" / "xsprobe.py"), "1"])
    got = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [g["probe"] for g in got] == [g["probe"] for g in golden]
    diffs = []
    for real, mine in zip(golden, got, strict=True):
        if real["probe"].startswith("read own name"):
            assert mine["ok"]
            continue
        if real != mine:
            diffs.append(f"{real['probe']}: real Xen {real}, xensim {mine}")
    assert not diffs, "\n".join(diffs)
