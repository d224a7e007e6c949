"""Helpers for the fuzzing tests: run scripts/fuzz.sh and read its summary line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ_SH = ROOT / "scripts" / "fuzz.sh"
SUMMARY = re.compile(r"^fuzz: (\d+) targets, (\d+) runs, (\d+) crashes$", re.M)
ALL_TARGETS = ("frame", "layout", "ring", "pump", "xs_wire")


@dataclass
class FuzzRun:
    returncode: int
    output: str
    targets: int
    runs: int
    crashes: int


def run_fuzz_sh(seconds: int, targets: tuple[str, ...] = ALL_TARGETS) -> FuzzRun:
    env = dict(os.environ, PYTHON=sys.executable, FUZZ_TARGETS=" ".join(targets))
    p = subprocess.run(
        [str(FUZZ_SH), str(seconds)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120 + 4 * seconds * len(targets),
    )
    out = p.stdout + p.stderr
    found = SUMMARY.findall(p.stdout)
    assert len(found) == 1, f"expected exactly one summary line:\n{out}"
    n, m, k = (int(x) for x in found[0])
    return FuzzRun(p.returncode, out, n, m, k)


def need_clang() -> None:
    if shutil.which(os.environ.get("CC_FUZZ", "clang")) is None:
        pytest.skip("clang is not installed (scripts/setup.sh installs it): no libFuzzer")


def need_atheris() -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.skip("atheris is not installed (pip install -e '.[test]')")
