"""The rate limit's credit arithmetic (cext/forward/credit.c) in C, under ASan/UBSan:
refill, exhaustion, a frame larger than the credit, live changes, the u64 edges and the
long-run rate of a late-woken backlogged sender, with a clock the test drives
(tests/forward/c/credit_test.c)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
C = Path(__file__).with_name("c")
SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_credit_arithmetic_in_c(tmp_path: Path) -> None:
    exe = tmp_path / "credit_test"
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
            str(C / "credit_test.c"),
            str(ROOT / "cext" / "forward" / "credit.c"),
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
