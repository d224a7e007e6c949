"""scripts/fuzz.sh reports a crash: non-zero exit, the summary counts it, the crashing
input is kept and its path printed (a crash planted with FUZZ_SELFTEST=1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fuzz.conftest import FUZZ_SH, ROOT, SUMMARY, need_clang


def test_planted_crash_is_reported_and_kept(tmp_path: Path) -> None:
    need_clang()
    crashes = tmp_path / "crashes"
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        FUZZ_TARGETS="frame",
        FUZZ_SELFTEST="1",
        FUZZ_OUT=str(tmp_path / "out"),
        FUZZ_CRASHES=str(crashes),
    )
    p = subprocess.run(
        [str(FUZZ_SH), "20"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    found = SUMMARY.findall(p.stdout)
    assert len(found) == 1 and found[0][0] == "1" and found[0][2] == "1", out
    kept = re.findall(r"crashing input kept: (\S+)", p.stdout)
    assert len(kept) == 1, out
    path = Path(kept[0])
    assert path.parent == crashes and path.name.startswith("frame-crash-"), out
    data = path.read_bytes()
    assert data[6:7] == b"X"  # the planted trigger
    assert "planted crash" in out


def test_usage_error() -> None:
    p = subprocess.run([str(FUZZ_SH), "soon"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "usage" in p.stderr
