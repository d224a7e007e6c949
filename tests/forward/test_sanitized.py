"""The switch tests again, against the ``-fsanitize=address,undefined`` build of
ncd._hotpath (tests/vchan/sanitize.py builds it): learning, drops, checksums and above
all port removal under load, where a copy touching a removed port's freed ring memory
aborts the process with an ASan report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vchan.sanitize import run_sanitized

HERE = Path(__file__).resolve().parent


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
