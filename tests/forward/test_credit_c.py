"""The rate limit's credit arithmetic (cext/forward/credit.c) in C, under ASan/UBSan:
refill, exhaustion, a frame larger than the credit, live changes, the u64 edges and the
long-run rate of a late-woken backlogged sender, with a clock the test drives
(tests/forward/c/credit_test.c); and the answer predictor (cext/forward/answer.h,
tests/forward/c/answer_test.c)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
C = Path(__file__).with_name("c")
SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def _run_c(tmp_path: Path, name: str, sources: list[Path]) -> None:
    exe = tmp_path / name
    build = subprocess.run(
        [
            "gcc",
            "-std=gnu11",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            *SAN,
            f"-I{ROOT / 'cext' / 'forward'}",
            *map(str, sources),
            "-lpthread",
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "runtime error" not in run.stderr and "AddressSanitizer" not in run.stderr
    assert run.stdout.startswith("ok "), run.stdout


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_credit_arithmetic_in_c(tmp_path: Path) -> None:
    _run_c(tmp_path, "credit_test", [C / "credit_test.c", ROOT / "cext" / "forward" / "credit.c"])


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_answer_predictor_in_c(tmp_path: Path) -> None:
    """cext/forward/answer.h (when the switch and the pump spin for an answer):
    tests/forward/c/answer_test.c."""
    _run_c(tmp_path, "answer_test", [C / "answer_test.c"])
