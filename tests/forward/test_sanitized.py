"""The switch tests again, against the ``-fsanitize=address,undefined`` build of
ncd._hotpath (tests/vchan/sanitize.py builds it): learning, drops, checksums and above
all port removal under load, where a copy touching a removed port's freed ring memory
aborts the process with an ASan report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vchan.sanitize import sanitized_env

HERE = Path(__file__).resolve().parent


def run_sanitized(args: list[str], cwd: Path, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NCD_SANITIZE"}
    env.update(sanitized_env())
    env.update(extra)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-n", "0", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    reports = [
        ln
        for ln in proc.stderr.splitlines()
        if "SUMMARY:" in ln or "ERROR: AddressSanitizer" in ln or "runtime error" in ln
    ]
    tail = "\n".join(reports) + "\n" + proc.stdout[-2000:] + proc.stderr[-1000:]
    assert proc.returncode == 0, tail
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, tail
    assert " passed" in proc.stdout, tail
    return proc.stdout


@pytest.mark.slow
def test_switch_under_asan_ubsan(tmp_path: Path) -> None:
    """Also the holds for full destinations: a held source whose destination is removed
    must never reach the freed port again."""
    out = run_sanitized(
        [str(HERE / "test_switch_local.py"), str(HERE / "test_switch_hold.py")], tmp_path
    )
    assert "failed" not in out


@pytest.mark.slow
def test_offload_fixups_and_pump_lock_under_asan_ubsan(tmp_path: Path) -> None:
    """Software GSO, checksum completion and the malformed-header cases (every header
    field from the peer read through the bounds-checked accessor), and the pump's
    source lock (the shared anti-spoofing unit)."""
    out = run_sanitized(
        [str(HERE / "test_switch_offload.py"), str(HERE.parent / "vchan" / "test_pump_lock.py")],
        tmp_path,
    )
    assert "failed" not in out


@pytest.mark.slow
def test_port_removal_under_load_asan_repeated(tmp_path: Path) -> None:
    test = str(HERE / "test_switch_local.py") + "::test_remove_port_under_load_while_frames_flow"
    out = run_sanitized([test], tmp_path, NCD_SWITCH_REMOVAL_ROUNDS="300")
    assert "1 passed" in out


@pytest.mark.slow
def test_switch_on_xensim_under_asan_ubsan(tmp_path: Path) -> None:
    """Grant-copy and memcpy modes between mapped and granted rings, vifs removed and
    unmapped under a flood, and TSO frames segmented into a mapped port without offloads
    (grant copies out of the switch's arena); the domain agents inherit the sanitized
    build through the environment."""
    out = run_sanitized(
        [str(HERE / "test_switch_sim.py"), "-k", "combination or removed or tso_segmented"],
        tmp_path,
    )
    assert "6 passed" in out


@pytest.mark.slow
def test_rate_limit_under_asan_ubsan(tmp_path: Path) -> None:
    """The rate limit's credit in the pump and on switch ports: frames waiting in the
    ring for a refill, live changes from another thread (cext/forward/credit.c)."""
    out = run_sanitized(
        [str(HERE / "test_switch_rate.py"), str(HERE.parent / "vchan" / "test_pump_rate.py")],
        tmp_path,
    )
    assert "7 passed" in out
